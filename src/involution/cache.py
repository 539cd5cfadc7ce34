"""Where the package keeps files between runs, and whether to trust them.

One folder, `$INVOLUTION_CACHE` (default `$XDG_CACHE_HOME/involution`, else
`~/.cache/involution`), holds the compiled kernels (`kernels/`) and the
app's decoded data. A compiled kernel is code that the process loads and
runs, so a file or folder that another user could have written is never
used: folders are created private (mode 0700), and `unsafe` names what is
wrong with one that is not the user's own.
"""

import functools
import os
import stat
import tempfile
import warnings

CACHE_ENV = "INVOLUTION_CACHE"


def cache_dir():
    """The package's cache folder (not created)."""
    if os.environ.get(CACHE_ENV):
        return os.path.abspath(os.path.expanduser(os.environ[CACHE_ENV]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "involution")


def make_private_dirs(path):
    """Creates `path` and its missing parents with mode 0700."""
    missing = []
    head = os.path.abspath(path)
    while not os.path.exists(head):
        missing.append(head)
        head = os.path.dirname(head)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # created meanwhile by another process
            pass
    return path


def unsafe(path):
    """Why `path` may hold another user's code, or None where it is the
    user's own: a symbolic link, another owner, or writable by group or
    others (a folder so writable lets them replace what is in it)."""
    try:
        info = os.lstat(path)
    except OSError as error:
        return f"cannot be inspected ({error.strerror or error})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by its group or by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


@functools.lru_cache(maxsize=None)
def _fresh_private_dir(kind):
    return tempfile.mkdtemp(prefix=f"involution-{kind}-")  # mode 0700


def private_dir(folder, reason_to_leave=None):
    """The private folder `folder` (e.g. `<cache>/kernels`), created if needed.

    Where it (or, with `reason_to_leave`, something in it) cannot be
    trusted, a warning says why and a fresh private folder, new for this
    process, is returned instead: whatever was cached is rebuilt there.

    Args:
        folder: the folder's path.
        reason_to_leave: optional callable `folder -> str | None`, the
            caller's own check of the folder's contents.
    """
    try:
        make_private_dirs(folder)
        problem = unsafe(folder)
    except OSError as error:
        problem = f"cannot be created ({error.strerror or error})"
    if problem is None and reason_to_leave is not None:
        problem = reason_to_leave(folder)
    if problem is None:
        return folder
    fresh = _fresh_private_dir(os.path.basename(os.path.normpath(folder)))
    warnings.warn(
        f"involution: not using {folder}: {problem}. Building in the private folder {fresh} instead; "
        f"remove or fix the cache (it must be yours, mode 700), or set {CACHE_ENV}.",
        RuntimeWarning,
        stacklevel=3,
    )
    return fresh
