"""`involution evaluate` and `involution predict` on presets and tiny data."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from involution import models
from involution.app import inference
from involution.app.data import DataError, load_dataset
from tests import synthetic_data as synth


def _classifier():
    """A model that tells the synthetic classes apart by colour, with
    weights set by hand: class c's logit is the mean of channel c."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("logits").set_weights([np.eye(3, dtype="float32") * 10, np.zeros(3, "float32")])
    return model


@pytest.fixture
def preset(tmp_path):
    return models.save_preset(_classifier(), str(tmp_path / "preset"), {
        "test_accuracy": 0.75, "test_images": 12, "class_names": list(synth.CLASSES), "preprocessing": "pixels / 255",
    })


def test_evaluate_measures_the_accuracy_it_reports(tmp_path, preset):
    tree = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=12)
    # Spoil four test images: a class-2 colour in class 0's folder.
    images = sorted(os.listdir(os.path.join(tree, "test", "airplane")))[:4]
    for name in images:
        Image.fromarray(np.full((32, 32, 3), (0, 0, 255), np.uint8)).save(os.path.join(tree, "test", "airplane", name))
    result = inference.evaluate(preset, data=tree, cache_dir=str(tmp_path / "cache"), batch_size=5, progress=False)
    dataset = load_dataset(tree, cache_dir=str(tmp_path / "cache"), progress=False)
    expected = np.mean(dataset.x_test.astype(np.float64).mean(axis=(1, 2)).argmax(-1) == dataset.y_test)
    assert result["images"] == 12 and result["accuracy"] == expected == 8 / 12
    assert result["metadata_accuracy"] == 0.75
    limited = inference.evaluate(preset, data=tree, limit=5, cache_dir=str(tmp_path / "cache"), progress=False)
    assert limited["images"] == 5


def test_evaluate_refuses_data_the_preset_was_not_made_for(tmp_path, preset):
    tree = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=6)
    metadata_path = os.path.join(preset, "metadata.json")
    metadata = json.load(open(metadata_path))
    json.dump(dict(metadata, class_names=["cat", "dog", "frog"]), open(metadata_path, "w"))
    with pytest.raises(inference.InferenceError, match="The preset's classes are cat, dog, frog; the data's are"):
        inference.evaluate(preset, data=tree, cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(inference.InferenceError, match="must be one of"):
        inference.evaluate(str(tmp_path / "nowhere"), data=tree, cache_dir=str(tmp_path / "cache"))


def test_predict_ranks_the_classes(tmp_path, preset):
    paths = []
    for index, colour in enumerate([(250, 10, 10), (10, 10, 250)]):
        path = str(tmp_path / f"image{index}.png")
        # Another size than the preset's: resized.
        Image.fromarray(np.full((48, 40, 3), colour, np.uint8)).save(path)
        paths.append(path)
    results = inference.predict(preset, paths, top=2)
    assert [r["image"] for r in results] == paths
    assert [t["class"] for t in results[0]["top"]] == ["airplane", "automobile"]
    assert results[1]["top"][0]["class"] == "bird" and results[1]["top"][0]["index"] == 2
    means = np.array([250, 10, 10]) / 255.0 * 10
    expected = np.exp(means - means.max()) / np.exp(means - means.max()).sum()
    np.testing.assert_allclose([t["probability"] for t in results[0]["top"]], np.sort(expected)[::-1][:2], rtol=1e-4, atol=1e-6)
    assert len(inference.predict(preset, paths[:1], top=10)[0]["top"]) == 3

    with open(tmp_path / "broken.png", "wb") as f:
        f.write(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"Cannot decode image .*broken.png"):
        inference.predict(preset, [str(tmp_path / "broken.png")])
    with pytest.raises(DataError, match=r"The image .*missing.png does not exist"):
        inference.predict(preset, [str(tmp_path / "missing.png")])


# The commands' printing and exit codes; the computations are tested above on every backend.
@pytest.mark.backend_independent
def test_commands_print_and_fail_cleanly(tmp_path, preset):
    tree = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=6)
    image = str(tmp_path / "red.png")
    Image.fromarray(np.full((32, 32, 3), (250, 10, 10), np.uint8)).save(image)
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), INVOLUTION_CACHE=str(tmp_path / "cache"))

    def involution(*args):
        return subprocess.run([sys.executable, "-m", "involution", *args], capture_output=True, text=True, env=env,
                              timeout=600)

    evaluated = involution("evaluate", "--preset", preset, "--data", tree, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == 1.0
    plain = involution("evaluate", "--preset", preset, "--data", tree)
    assert "test accuracy 100.00% (6 of 6 images)" in plain.stdout and "metadata: 75.00% on 12 images" in plain.stdout
    as_json = involution("predict", image, "--preset", preset, "--json")
    assert as_json.returncode == 0, as_json.stderr
    top = json.loads(as_json.stdout)[0]["top"]
    assert [t["class"] for t in top] == ["airplane", "automobile", "bird"]
    predicted = involution("predict", image, image, "--preset", preset, "--top", "1")
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.splitlines() == [f"{image}: airplane {100 * top[0]['probability']:.1f}%"] * 2
    missing = involution("predict", str(tmp_path / "none.png"), "--preset", preset)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    listing = involution("presets")
    assert listing.returncode == 0, listing.stderr
    assert len(listing.stdout.splitlines()) == len(models.list_presets())
    assert all(line.split(":")[0] in models.list_presets() and "test accuracy" in line
               for line in listing.stdout.splitlines())
    unknown = involution("evaluate", "--preset", "no_such_preset", "--data", tree)
    assert unknown.returncode == 2 and "Received: preset='no_such_preset'" in unknown.stderr
