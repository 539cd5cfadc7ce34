"""Files the app writes: atomic replacement, strict JSON, a run's lock.

Every file is written under a temporary name carrying the writer's pid
(`<name>.<pid>.tmp`, or `<stem>.<pid>.tmp.keras` and `<stem>.<pid>.tmp.weights.h5`
for Keras' files, whose suffixes Keras insists on) and renamed over the final name, so that a kill
leaves either the old file or the new one. A temporary name whose writer
no longer runs is stale, and the next start deletes it.
"""

import contextlib
import errno
import json
import math
import os
import re

_TEMPORARY = re.compile(r"\.(\d+)\.tmp(\.keras|\.weights\.h5)?$")


def temporary_name(path):
    if path.endswith(".keras"):
        return f"{path[: -len('.keras')]}.{os.getpid()}.tmp.keras"
    return f"{path}.{os.getpid()}.tmp"


@contextlib.contextmanager
def atomic_writer(path, mode="w"):
    """A file object whose contents replace `path` when the block ends well."""
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def atomic_write_text(path, text):
    with atomic_writer(path) as f:
        f.write(text)


def _finite(value):
    """`value` with every NaN or infinity replaced by None (JSON's null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def atomic_write_json(path, data):
    """Writes strict JSON: a NaN or infinite number is written as null."""
    atomic_write_text(path, json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def atomic_save_model(model, path):
    tmp = temporary_name(path)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def is_temporary(name):
    return _TEMPORARY.search(name) is not None


def _running(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(paths, writer_may_run=True):
    """Deletes the temporary files among `paths` whose writer is gone.

    Args:
        paths: candidate file paths.
        writer_may_run: False where no other process can be writing (the
            caller holds the folder's lock): every temporary file goes.

    Returns:
        The paths deleted.
    """
    removed = []
    for path in paths:
        match = _TEMPORARY.search(os.path.basename(path))
        if not match or (writer_may_run and _running(int(match.group(1)))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed.append(path)
    return removed


class LockedError(RuntimeError):
    """Another process holds the lock."""


class FolderLock:
    """An exclusive lock on a folder, held while the process runs.

    `fcntl.flock` on `<folder>/.lock`: the operating system releases it
    when the process ends, however it ends, so a killed run never leaves a
    lock behind. The holder's pid is written in the file for the message
    that a second process gets.
    """

    NAME = ".lock"

    def __init__(self, folder):
        self.path = os.path.join(folder, self.NAME)
        self._fd = None

    def acquire(self):
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockedError(holder) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
