"""The app's files (`involution.app.files`): atomic writes, strict JSON, the lock."""

import json
import math
import os
import subprocess
import sys

import pytest

from involution.app import files, training

pytestmark = pytest.mark.backend_independent


def test_json_is_strict_and_reads_back(tmp_path):
    history = {"model": "m", "epochs": [{"epoch": 1, "loss": math.nan, "val_loss": math.inf, "accuracy": 0.5}]}
    os.makedirs(tmp_path / "m")
    files.atomic_write_json(str(tmp_path / "m" / training.HISTORY_FILE), history)
    text = (tmp_path / "m" / training.HISTORY_FILE).read_text()
    # A strict parser (no NaN, no Infinity) reads it.
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard constant {name}"))
    assert strict["epochs"][0]["loss"] is None and strict["epochs"][0]["val_loss"] is None
    again = training.read_history(str(tmp_path / "m"))
    assert math.isnan(again["epochs"][0]["loss"]) and again["epochs"][0]["accuracy"] == 0.5


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.txt"
    files.atomic_write_text(str(path), "old")
    with pytest.raises(RuntimeError):
        with files.atomic_writer(str(path)) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


HOLD = """
import sys, time
from involution.app.files import FolderLock
FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(files.LockedError, match=str(holder.pid)):
            files.FolderLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The operating system released it with the process.
    lock = files.FolderLock(str(tmp_path)).acquire()
    lock.release()


def test_only_temporaries_of_dead_writers_are_stale(tmp_path):
    names = ["a.json.999999999.tmp", "checkpoint-002.999999999.tmp.keras", f"b.json.{os.getppid()}.tmp",
             "history.json", "model.keras"]
    for name in names:
        (tmp_path / name).write_text("x")
    paths = [str(tmp_path / n) for n in names]
    removed = files.remove_stale_temporaries(paths)
    assert sorted(os.path.basename(p) for p in removed) == sorted(names[:2])
    # Under the folder's lock every temporary file is stale.
    assert files.remove_stale_temporaries(paths, writer_may_run=False) == [paths[2]]
    assert sorted(os.listdir(tmp_path)) == ["history.json", "model.keras"]
