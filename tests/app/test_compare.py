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
    if layout == "pickled":
        assert_presets_match_models(output, histories)


def assert_presets_match_models(output, histories, per_seed=False):
    """Every trained model's preset folder reloads to the same model, with
    metadata that agree with its history."""
    x = np.random.default_rng(3).uniform(0, 1, (3, 32, 32, 3)).astype("float32")
    for history in histories:
        folder = compare.model_folder(output, history["model"], history["seed"], per_seed)
        trained = keras.saving.load_model(os.path.join(folder, "model.keras"))
        preset = models.from_preset(os.path.join(folder, "preset"))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(preset(x, training=False)),
                                   keras.ops.convert_to_numpy(trained(x, training=False)), rtol=1e-6, atol=1e-6)
        metadata = models.preset_metadata(os.path.join(folder, "preset"))
        assert metadata["model"] == history["model"] and metadata["seed"] == history["seed"]
        assert metadata["test_accuracy"] == history["epochs"][-1]["val_accuracy"]
        assert metadata["parameter_count"] == history["parameters"]["total"] == preset.count_params()
        assert metadata["epochs"] == len(history["epochs"]) and metadata["backend"] == keras.backend.backend()
        assert len(metadata["data"]["sha256"]) == 64
        classes = len(metadata["class_names"])
        assert np.asarray(metadata["check"]["logits"]).shape == (models.presets.CHECK_IMAGES, classes)


# Seeds are settings of the app, the same on every backend.
@pytest.mark.backend_independent
def test_seeds_train_every_model_per_seed_and_report_the_spread(tmp_path, monkeypatch):
    source = synth.make_pickled_folder(tmp_path / "src")
    settings = dict(epochs=2, models=("conv", "involution"))
    # Interrupted during the second seed's first model.
    real_train = training.train_model
    calls = {"n": 0}

    def dying_train(name, dataset, config, model_dir, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_train(name, dataset, config, model_dir, **kwargs)

    monkeypatch.setattr(training, "train_model", dying_train)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path, source, seeds=[5, 6], **settings)
    monkeypatch.setattr(training, "train_model", real_train)
    finished = [h["model"] for h in (training.read_history(str(tmp_path / "run" / m / "seed-5"))
                                     for m in ("conv", "involution")) if h and h["status"] == "finished"]
    assert finished == ["conv", "involution"]
    assert not os.path.exists(tmp_path / "run" / "conv" / "seed-6")
    with pytest.raises(compare.CompareError, match=r"per_seed_folders \(was True, now False\)"):
        tiny_run(tmp_path, source, resume=True, seed=5, **settings)

    mtime = os.path.getmtime(tmp_path / "run" / "conv" / "seed-5" / "model.keras")
    output, histories = tiny_run(tmp_path, source, resume=True, seeds=[5, 6], **settings)
    assert os.path.getmtime(tmp_path / "run" / "conv" / "seed-5" / "model.keras") == mtime
    assert [(h["model"], h["seed"]) for h in histories] == [
        ("conv", 5), ("involution", 5), ("conv", 6), ("involution", 6)]
    assert_presets_match_models(output, histories, per_seed=True)

    # Another seed's run of the same model is the same as a run with that seed alone.
    _, alone = tiny_run(tmp_path, source, output="alone", seed=6, **dict(settings, models=("involution",)))
    np.testing.assert_allclose(alone[0]["epochs"][-1]["val_loss"], histories[3]["epochs"][-1]["val_loss"],
                               rtol=1e-5)

    written = json.load(open(os.path.join(output, "summary.json")))
    assert written["settings"]["recipe"] == "example" and written["settings"]["epochs"] == settings["epochs"]
    summary = written["models"]
    conv = summary[0]
    finals = [h["epochs"][-1]["val_accuracy"] for h in histories if h["model"] == "conv"]
    assert conv["model"] == "conv" and conv["seeds"] == [5, 6] and conv["final_accuracy"] == finals
    np.testing.assert_allclose(conv["final_accuracy_mean_std"], [np.mean(finals), np.std(finals, ddof=1)])
    markdown = open(os.path.join(output, "report.md"), encoding="utf-8").read()
    assert "| seeds | 5, 6 |" in markdown and "### conv, seed 6" in markdown
    parameters = histories[0]["parameters"]["total"]
    assert (f"| conv | {parameters:,} | 2 | {100 * np.mean(finals):.2f}% ± {100 * np.std(finals, ddof=1):.2f} |"
            in markdown)
    assert_html_well_formed(os.path.join(output, "report.html"), expected_images=3)

    # A seed added later trains that seed only.
    _, more = tiny_run(tmp_path, source, resume=True, seeds=[5, 6, 7], **dict(settings, models=("involution",)))
    assert [h["seed"] for h in more] == [5, 6, 7]


@pytest.mark.backend_independent
def test_bad_seeds_are_refused(tmp_path):
    source = synth.make_pickled_folder(tmp_path / "src")
    for seeds, message in (([], "non-empty"), ([1, 1], "distinct"), ([-1], "non-negative"), ("42", "list")):
        with pytest.raises(compare.CompareError, match=message):
            tiny_run(tmp_path, source, seeds=seeds)
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("recipe", ["example", "strong"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, recipe):
    source = synth.make_pickled_folder(tmp_path / "src")
    settings = dict(epochs=3, models=("involution",), recipe=recipe)
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

    if recipe == "strong":
        # Its learning-rate schedule spans the epochs.
        with pytest.raises(compare.CompareError, match=r"settings differ.*epochs"):
            tiny_run(tmp_path, source, output="resumed", resume=True, **dict(settings, epochs=4))

    resumed_output, resumed = tiny_run(tmp_path, source, output="resumed", resume=True, **settings)
    assert len(resumed[0]["epochs"]) == 3
    markdown = open(os.path.join(resumed_output, "report.md"), encoding="utf-8").read()
    assert f"| recipe | {recipe} |" in markdown
    assert ("label smoothing 0.1" in markdown) == (recipe == "strong")
    metadata = models.preset_metadata(os.path.join(resumed_output, "involution", "preset"))
    assert metadata["recipe"]["name"] == recipe and metadata["recipe"]["epochs"] == 3
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
    with pytest.raises(compare.CompareError, match=r"Expected one of example, strong. Received: recipe='weak'"):
        compare.run_compare(data=str(source), output=str(tmp_path / "run"), recipe="weak")
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
