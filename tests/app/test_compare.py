"""End to end: `involution compare` on tiny synthetic data."""

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import keras
import numpy as np
import pytest

from involution import models
from involution.models import registry
from involution.app import compare, training
from involution.app.data import DataError
from tests import synthetic_data as synth

pytestmark = pytest.mark.slow


def tiny_run(tmp_path, source, output="run", **kwargs):
    settings = dict(epochs=2, batch_size=16, seed=7, verbose=0, cache_dir=str(tmp_path / "cache"),
                    log=lambda *a: None)
    settings.update(kwargs)
    return compare.run_compare(data=str(source), output=str(tmp_path / output), **settings)


def assert_artifacts(output, model_names):
    for name in ("report.html", "report.md", "curves.png", "kernels.png", "samples.png", "run.json"):
        assert os.path.getsize(os.path.join(output, name)) > 0, name
    for name in model_names:
        history = json.load(open(os.path.join(output, name, "history.json")))
        assert history["status"] == "finished"
        assert [e["epoch"] for e in history["epochs"]] == [1, 2]
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "time_s"} <= set(history["epochs"][0])
        assert os.path.exists(os.path.join(output, name, "model.keras"))
        assert not [f for f in os.listdir(os.path.join(output, name)) if f.startswith("checkpoint")]
    # No temporary file survives a finished run.
    leftovers = [f for _, _, files in os.walk(output) for f in files if ".tmp" in f]
    assert not leftovers


def assert_html_well_formed(path, expected_images):
    text = open(path, encoding="utf-8").read()
    assert text.startswith("<!DOCTYPE html>")
    root = ET.fromstring(text[len("<!DOCTYPE html>"):])  # raises on malformed markup
    images = [img.get("src") for img in root.iter("img")]
    assert len(images) == expected_images
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in images)
    assert "src=\"curves.png\"" not in text  # self-contained: no links to files


# The data layouts are the loader's concern: one of them trains per backend.
@pytest.mark.parametrize("layout", ["pickled", pytest.param("image_tree", marks=pytest.mark.backend_independent),
                                    pytest.param("tarball", marks=pytest.mark.backend_independent)])
def test_compare_writes_every_artifact(tmp_path, layout):
    if layout == "pickled":
        source = synth.make_pickled_folder(tmp_path / "src")
    else:
        source = synth.make_image_tree(str(tmp_path / "tree"))
        if layout == "tarball":
            source = synth.make_tarball(source, str(tmp_path / "tree.tar.gz"))
    output, histories = tiny_run(tmp_path, source)
    assert_artifacts(output, ["conv", "involution"])
    assert_html_well_formed(os.path.join(output, "report.html"), expected_images=3)
    markdown = open(os.path.join(output, "report.md"), encoding="utf-8").read()
    for needle in ["![Loss and accuracy per epoch](curves.png)", "kernels.png", "samples.png",
                   "| conv |", "| involution |", f"backend | {keras.backend.backend()}",
                   "inv_1 (Involution)", "conv_1 (Conv2D)", "| seed | 7 |"]:
        assert needle in markdown, needle
    reloaded = keras.saving.load_model(os.path.join(output, "involution", "model.keras"))
    assert reloaded.count_params() == histories[1]["parameters"]["total"]


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    source = synth.make_pickled_folder(tmp_path / "src")
    settings = dict(epochs=3, models=("involution",))
    straight_output, straight = tiny_run(tmp_path, source, output="straight", **settings)

    # Kill the run after epoch 2's checkpoint is on disk but before the
    # history that names it is written: the worst moment.
    real_write = training.atomic_write_json
    calls = {"n": 0}

    def dying_write(path, data):
        if path.endswith(training.HISTORY_FILE):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(training, "atomic_write_json", dying_write)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path, source, output="resumed", **settings)
    monkeypatch.setattr(training, "atomic_write_json", real_write)
    partial = training.read_history(str(tmp_path / "resumed" / "involution"))
    assert partial["status"] == "running" and len(partial["epochs"]) == 1

    with pytest.raises(compare.CompareError, match="already holds a run"):
        tiny_run(tmp_path, source, output="resumed", **settings)
    with pytest.raises(compare.CompareError, match=r"settings differ.*seed \(was 7, now 8\)"):
        tiny_run(tmp_path, source, output="resumed", resume=True, seed=8, **settings)

    _, resumed = tiny_run(tmp_path, source, output="resumed", resume=True, **settings)
    assert len(resumed[0]["epochs"]) == 3
    for a, b in zip(straight[0]["epochs"], resumed[0]["epochs"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    w_straight = keras.saving.load_model(os.path.join(straight_output, "involution", "model.keras")).get_weights()
    w_resumed = keras.saving.load_model(str(tmp_path / "resumed" / "involution" / "model.keras")).get_weights()
    for a, b in zip(w_straight, w_resumed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # A finished model is not retrained.
    mtime = os.path.getmtime(tmp_path / "resumed" / "involution" / "model.keras")
    tiny_run(tmp_path, source, output="resumed", resume=True, **settings)
    assert os.path.getmtime(tmp_path / "resumed" / "involution" / "model.keras") == mtime


@keras.saving.register_keras_serializable(package="involution_tests")
class PoisonLayer(keras.layers.Layer):
    """Turns the logits into NaN: a model whose loss is NaN from the start."""

    def call(self, inputs):
        return inputs * float("nan")


def test_nan_loss_stops_that_model_only(tmp_path):
    def nan_model(input_shape=(32, 32, 3), num_classes=10):
        """A model whose loss is NaN."""
        inputs = keras.Input(input_shape)
        x = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
        return keras.Model(inputs, PoisonLayer()(x), name="nan_model")

    models.register_model("nan_test")(nan_model)
    try:
        source = synth.make_pickled_folder(tmp_path / "src")
        output, (bad, good) = tiny_run(tmp_path, source, models=("nan_test", "conv"))
    finally:
        del registry._REGISTRY["nan_test"]
    assert bad["status"] == "nan" and "NaN" in bad["message"]
    assert good["status"] == "finished" and len(good["epochs"]) == 2
    markdown = open(os.path.join(output, "report.md"), encoding="utf-8").read()
    assert "**nan\\_test**: Training stopped at epoch 1: the loss became NaN" in markdown


def test_cli_runs_and_reports_bad_data(tmp_path):
    source = synth.make_image_tree(str(tmp_path / "tree"), train=12, test=6)
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), INVOLUTION_CACHE=str(tmp_path / "cache"))
    run = subprocess.run(
        [sys.executable, "-m", "involution", "compare", "--data", source, "--epochs", "1",
         "--batch-size", "8", "--output", str(tmp_path / "out"), "--models", "involution", "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "involution" in run.stdout and "report.html" in run.stdout
    assert os.path.exists(tmp_path / "out" / "report.html")

    missing = subprocess.run(
        [sys.executable, "-m", "involution", "compare", "--data", str(tmp_path / "nowhere"),
         "--output", str(tmp_path / "out2")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert missing.returncode == 2
    assert "error: The data path does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr

    unknown = subprocess.run(
        [sys.executable, "-m", "involution", "compare", "--data", source, "--models", "resnet",
         "--output", str(tmp_path / "out3")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert unknown.returncode == 2 and "Unknown model 'resnet'" in unknown.stderr


# Bad settings and outputs, locks, leftovers ----------------------------------


def test_bad_outputs_and_settings_are_refused_before_anything_is_written(tmp_path):
    source = synth.make_pickled_folder(tmp_path / "src")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(compare.CompareError, match=r"--output .*a-file is a file"):
        compare.run_compare(data=str(source), output=str(a_file), log=lambda *a: None)
    with pytest.raises(compare.CompareError, match=r"Cannot create the --output folder .*a-file/run"):
        compare.run_compare(data=str(source), output=str(a_file / "run"), log=lambda *a: None)
    for value in (float("nan"), float("inf"), 0.0, -1e-3):
        with pytest.raises(compare.CompareError, match=r"learning_rate must be a positive finite number. Received"):
            compare.run_compare(data=str(source), output=str(tmp_path / "run"), learning_rate=value)
    assert not (tmp_path / "run").exists()


def test_a_run_whose_data_failed_can_be_rerun(tmp_path):
    source = synth.make_pickled_folder(tmp_path / "src")
    with pytest.raises(DataError, match="does not exist"):
        tiny_run(tmp_path, tmp_path / "nowhere", models=("conv",), epochs=1)
    assert not (tmp_path / "run" / compare.RUN_FILE).exists()
    output, [history] = tiny_run(tmp_path, source, models=("conv",), epochs=1)
    assert history["status"] == "finished"


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from involution.app.files import FolderLock
    FolderLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_process_on_one_output_is_refused(tmp_path):
    source = synth.make_pickled_folder(tmp_path / "src")
    output = tmp_path / "run"
    output.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(compare.CompareError, match=rf"Another involution process \(pid {holder.pid}\)"):
            tiny_run(tmp_path, source, models=("conv",), epochs=1)
    finally:
        holder.kill()
        holder.wait()
    assert os.listdir(output) == [".lock"]


def test_temporaries_left_by_a_killed_run_are_removed(tmp_path):
    source = synth.make_pickled_folder(tmp_path / "src")
    stale = [tmp_path / "run" / "run.json.4242.tmp", tmp_path / "run" / "conv" / "checkpoint-001.4242.tmp.keras",
             tmp_path / "run" / "conv" / f"history.json.{os.getpid()}.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-written")
    output, _ = tiny_run(tmp_path, source, models=("conv",), epochs=1)
    assert_no_temporaries(output)


def assert_no_temporaries(output):
    assert not [f for _, _, names in os.walk(output) for f in names if ".tmp" in f]


def test_resumes_report_what_was_done(tmp_path):
    source = synth.make_pickled_folder(tmp_path / "src")
    settings = dict(models=("conv",), log=lambda *a: None)
    _, [straight] = tiny_run(tmp_path, source, output="straight", epochs=3, **settings)
    # Two epochs, then one more in a second invocation: a finished run
    # asked for more epochs continues from its saved state.
    tiny_run(tmp_path, source, output="extended", epochs=2, **settings)
    output, [extended] = tiny_run(tmp_path, source, output="extended", epochs=3, resume=True, **settings)
    assert [e["first_in_process"] for e in extended["epochs"]] == [True, False, True]
    for a, b in zip(straight["epochs"], extended["epochs"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # The time per epoch is the steady epoch's (epoch 2), not a first one.
    from involution.app import report

    assert report.summarize(extended)["epoch_time"] == extended["epochs"][1]["time_s"]
    # Asking a finished 3-epoch run for fewer epochs changes nothing, and
    # the report says 3 of 3.
    _, [again] = tiny_run(tmp_path, source, output="extended", epochs=2, resume=True, **settings)
    assert len(again["epochs"]) == 3
    markdown = open(os.path.join(output, "report.md"), encoding="utf-8").read()
    assert "| 3/3 |" in markdown and "3 epochs, evaluated" in markdown
    assert "2 epochs" not in markdown


def test_progress_counts_the_runs_epochs(tmp_path):
    source = synth.make_pickled_folder(tmp_path / "src")
    lines = []
    tiny_run(tmp_path, source, models=("conv",), epochs=3, verbose=1, log=lines.append)
    epochs = [line for line in lines if "Epoch" in line]
    assert [line.split(":")[0] for line in epochs] == [f"[conv] Epoch {k}/3" for k in (1, 2, 3)]
    assert all("val_accuracy" in line for line in epochs)


def test_report_markdown_escapes_paths_and_names(tmp_path):
    source = synth.make_pickled_folder(tmp_path / "src_*weird*_[x](y)|<b>")
    output, _ = tiny_run(tmp_path, source, output="out_<i>*|", models=("conv",), epochs=1)
    markdown = open(os.path.join(output, "report.md"), encoding="utf-8").read()
    assert "<b>" not in markdown and "<i>" not in markdown
    assert "src\\_\\*weird\\*\\_\\[x\\](y)\\|\\<b\\>" in markdown
    html_text = open(os.path.join(output, "report.html"), encoding="utf-8").read()
    assert "&lt;b&gt;" in html_text and "<b>" not in html_text
