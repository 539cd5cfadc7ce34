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
from involution.models import preprocessing
from involution.untrusted import UntrustedFileError
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
    with pytest.raises(UntrustedFileError, match=r"broken.png: not an image that Pillow recognises"):
        inference.predict(preset, [str(tmp_path / "broken.png")])
    with pytest.raises(UntrustedFileError, match=r"missing.png: the image does not exist"):
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


# ImageNet presets: a crop-and-normalise preprocessing, the shipped 1,000 classes, an image folder.
WNIDS = ["n01440764", "n01443537", "n01484850"]  # classes 0, 1, 2 of ImageNet-1k
SPEC = dict(preprocessing.IMAGENET_PREPROCESSING, resize_short_side=40, center_crop=32)


def _imagenet_classifier(data_format="channels_last"):
    """A backbone-and-task preset model whose class c (c < 3) scores the
    normalised image's mean of channel c, by hand; the 997 others score -100."""
    if data_format == "channels_last":
        inputs = keras.Input((None, None, 3))
        features = keras.layers.Identity()(inputs)
    else:
        # Channels-first images, told apart by the input's shape; channels-last features for the head.
        inputs = keras.Input((3, None, None))
        features = keras.layers.Permute((2, 3, 1))(inputs)
    backbone = keras.Model(inputs, features)
    model = models.RedNetImageClassifier(backbone, num_classes=1000)
    kernel = np.zeros((3, 1000), "float32")
    kernel[:, :3] = np.eye(3) * 10
    bias = np.full(1000, -100.0, "float32")
    bias[:3] = 0
    model.get_layer("predictions").set_weights([kernel, bias])
    return model


@pytest.fixture(params=["channels_last", "channels_first"])
def imagenet_preset(tmp_path, request):
    return models.save_preset(_imagenet_classifier(request.param), str(tmp_path / "imagenet"), {
        "preprocessing": SPEC, "class_names": "imagenet", "test_accuracy": 0.5,
    })


def _photo(path, colour, size=(50, 60), border=None):
    """A photograph of one colour; `border`: another colour outside the centre crop's area."""
    image = np.full((*size, 3), colour, np.uint8)
    if border is not None:
        image[:3], image[-3:], image[:, :4], image[:, -4:] = border, border, border, border
    Image.fromarray(image).save(path, format="JPEG", quality=100)
    return path


def _val_folder(root):
    """ImageNet's validation layout: val/<wnid>/*.JPEG, three images a class,
    one of class 0's coloured as class 2."""
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    for index, wnid in enumerate(WNIDS):
        os.makedirs(os.path.join(root, wnid))
        for k in range(3):
            colour = colours[2] if (index, k) == (0, 0) else colours[index]
            # Borders of another class's colour: cut away by the centre crop.
            _photo(os.path.join(root, wnid, f"ILSVRC2012_val_{index}{k}.JPEG"), colour, border=colours[(index + 1) % 3])
    return root


def test_imagenet_preset_predicts_with_its_preprocessing(tmp_path, imagenet_preset):
    path = _photo(str(tmp_path / "tench.jpg"), (250, 10, 10), size=(70, 50), border=(10, 10, 250))
    result = inference.predict(imagenet_preset, [path], top=5)[0]
    assert [t["class"] for t in result["top"][:3]] == ["tench", "great_white_shark", "goldfish"]
    # The probabilities of the model on the image preprocessed by hand: short side 40 (40 x 56), centre 32 crop.
    image = np.asarray(Image.open(path).convert("RGB").resize((40, 56), Image.Resampling.BILINEAR), np.float64)
    crop = (image[12:44, 4:36] - np.array(SPEC["mean"])) / np.array(SPEC["std"])
    logits = np.full(1000, -100.0)
    logits[:3] = crop.mean(axis=(0, 1)) * 10
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose([t["probability"] for t in result["top"]], np.sort(expected)[::-1][:5],
                               rtol=1e-4, atol=1e-6)


def test_imagenet_preset_evaluates_on_a_val_folder(tmp_path, imagenet_preset):
    folder = _val_folder(str(tmp_path / "val"))
    result = inference.evaluate(imagenet_preset, data=folder, batch_size=4, progress=False)
    assert result["images"] == 9 and result["correct"] == 8 and result["accuracy"] == 8 / 9
    assert result["top5_accuracy"] == 1.0 and result["metadata_accuracy"] == 0.5
    assert inference.evaluate(imagenet_preset, data=folder, limit=4, progress=False)["images"] == 4
    # The same images flat, with a labels file by WordNet id or by index, with or without extensions.
    flat = tmp_path / "flat"
    flat.mkdir()
    lines = ["# image class"]
    for index, wnid in enumerate(WNIDS):
        for name in sorted(os.listdir(os.path.join(folder, wnid))):
            os.link(os.path.join(folder, wnid, name), flat / name)
            lines.append(f"{name} {wnid}" if index else f"{os.path.splitext(name)[0]},{index}")
    (tmp_path / "labels.txt").write_text("\n".join(lines) + "\n")
    flat_result = inference.evaluate(imagenet_preset, data=str(flat), labels=str(tmp_path / "labels.txt"),
                                     progress=False)
    assert (flat_result["correct"], flat_result["images"]) == (8, 9)


def test_imagenet_folders_that_do_not_fit_are_named(tmp_path, imagenet_preset):
    folder = _val_folder(str(tmp_path / "val"))
    os.makedirs(os.path.join(folder, "cats"))
    with pytest.raises(DataError, match="subfolder 'cats' is not a class id of the preset"):
        inference.evaluate(imagenet_preset, data=folder, progress=False)
    with pytest.raises(DataError, match="pass --data FOLDER"):
        inference.evaluate(imagenet_preset, progress=False)
    (tmp_path / "labels.txt").write_text("a.JPEG n99999999\n")
    with pytest.raises(DataError, match=r"line 1: 'n99999999' is neither a class id"):
        inference.evaluate(imagenet_preset, data=str(tmp_path), labels=str(tmp_path / "labels.txt"), progress=False)
    (tmp_path / "labels.txt").write_text("missing.JPEG 3\n")
    with pytest.raises(DataError, match=r"line 1: no image 'missing.JPEG'"):
        inference.evaluate(imagenet_preset, data=str(tmp_path), labels=str(tmp_path / "labels.txt"), progress=False)


@pytest.mark.backend_independent
def test_imagenet_commands(tmp_path):
    preset = models.save_preset(_imagenet_classifier(), str(tmp_path / "imagenet"),
                                {"preprocessing": SPEC, "class_names": "imagenet"})
    folder = _val_folder(str(tmp_path / "val"))
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), INVOLUTION_CACHE=str(tmp_path / "cache"))

    def involution(*args):
        return subprocess.run([sys.executable, "-m", "involution", *args], capture_output=True, text=True, env=env,
                              timeout=600)

    photo = os.path.join(folder, WNIDS[1], sorted(os.listdir(os.path.join(folder, WNIDS[1])))[0])
    predicted = involution("predict", photo, "--preset", preset, "--top", "5")
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(f"{photo}: goldfish ") and predicted.stdout.count("%") == 5
    evaluated = involution("evaluate", "--preset", preset, "--data", folder)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test accuracy 88.89% (8 of 9 images), top-5 100.00%" in evaluated.stdout
    unlabelled = involution("evaluate", "--preset", preset, "--data", str(tmp_path))
    assert unlabelled.returncode == 2 and "subfolder" in unlabelled.stderr and "Traceback" not in unlabelled.stderr
