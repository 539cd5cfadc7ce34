"""Strange and hostile files at every entry point: `predict`, `evaluate`,
`compare --data` and `from_preset` refuse them in one line or read them right.

Each test runs under a deadline, so that a read that blocks fails it.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from involution import models
from involution.app import data, inference
from involution.untrusted import UntrustedFileError
from tests import synthetic_data as synth
from tests.test_untrusted import png_header

pytestmark = pytest.mark.usefixtures("deadline")


def _colour_model():
    """Class c's logit is 10 x the mean of channel c (32x32 inputs, pixels / 255)."""
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    model.get_layer("logits").set_weights([np.eye(3, dtype="float32") * 10, np.zeros(3, "float32")])
    return model


@pytest.fixture
def preset(tmp_path):
    return models.save_preset(_colour_model(), str(tmp_path / "preset"),
                              {"class_names": ["red", "green", "blue"], "preprocessing": "pixels / 255"})


def _edit(folder, name, change):
    path = os.path.join(folder, name)
    value = json.load(open(path))
    change(value)
    with open(path, "w") as f:
        json.dump(value, f)
    return folder


def test_predict_refuses_unreadable_images_and_reads_16_bit_ones_exactly(tmp_path, preset):
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    (tmp_path / "bomb.png").write_bytes(png_header(30000, 30000))
    for name, problem in (("fifo.png", "is a FIFO"), ("zero.png", "a system entry"),
                          ("bomb.png", "more than 67,108,864 pixels")):
        with pytest.raises(UntrustedFileError, match=f"{name}: .*{problem}"):
            inference.predict(preset, [str(tmp_path / name)])
    # A mid-gray picture in 8 and in 16 bits: the same prediction.
    picture = np.full((32, 32), 128, np.uint8)
    picture[:, :8] = 30
    Image.fromarray(picture).save(tmp_path / "gray8.png")
    Image.fromarray(picture.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    eight, sixteen = inference.predict(preset, [str(tmp_path / "gray8.png"), str(tmp_path / "gray16.png")], top=3)
    assert [t["probability"] for t in eight["top"]] == pytest.approx([t["probability"] for t in sixteen["top"]])


def test_evaluate_and_compare_data_refuse_bombs_and_fifos(tmp_path):
    tree = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    (tmp_path / "tree" / "test" / "airplane" / "bomb.png").write_bytes(png_header(30000, 30000))
    with pytest.raises(UntrustedFileError, match="bomb.png: the image has more than"):
        data.load_dataset(tree, cache_dir=str(tmp_path / "cache"), progress=False)
    os.remove(tmp_path / "tree" / "test" / "airplane" / "bomb.png")
    os.mkfifo(tmp_path / "tree" / "train" / "bird" / "fifo.png")
    with pytest.raises(UntrustedFileError, match="fifo.png: the image is a FIFO"):
        data.load_dataset(tree, cache_dir=str(tmp_path / "cache"), progress=False)
    os.symlink("/dev/zero", tmp_path / "zero.tar.gz")
    with pytest.raises(UntrustedFileError, match="zero.tar.gz: the data archive resolves to /dev/zero"):
        data.load_dataset(str(tmp_path / "zero.tar.gz"), cache_dir=str(tmp_path / "cache"), progress=False)


def test_evaluate_on_an_image_folder_refuses_a_bomb(tmp_path):
    from tests.app.test_inference import SPEC, _imagenet_classifier

    folder = models.save_preset(_imagenet_classifier(), str(tmp_path / "imagenet"),
                                {"preprocessing": SPEC, "class_names": "imagenet"})
    os.makedirs(tmp_path / "val" / "n01440764")
    (tmp_path / "val" / "n01440764" / "a.JPEG").write_bytes(png_header(9000, 9000))
    with pytest.raises(UntrustedFileError, match=r"a.JPEG: the image is 9000x9000, more than"):
        inference.evaluate(folder, data=str(tmp_path / "val"), progress=False)


def test_from_preset_validates_files_and_fields(tmp_path, preset):
    config = os.path.join(preset, "config.json")
    original = open(config).read()
    os.remove(config)
    os.symlink("/proc/self/status", config)
    with pytest.raises(UntrustedFileError, match="config.json: the JSON file resolves to /proc/"):
        models.from_preset(preset)
    os.remove(config)
    with open(config, "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UntrustedFileError, match="config.json: the JSON file nests deeper than 64 levels"):
        models.from_preset(preset)
    huge = json.loads(original)
    huge["config"]["layers"][0]["config"]["batch_shape"] = [None, 100000, 100000, 3]
    with open(config, "w") as f:
        json.dump(huge, f)
    with pytest.raises(UntrustedFileError, match=r"config.json: `batch_shape` \[None, 100000, 100000, 3\] is beyond"):
        models.from_preset(preset)
    with open(config, "w") as f:
        f.write(original)
    _edit(preset, "metadata.json", lambda m: m.update(class_names=["red", "green", "blue", "cyan"]))
    with pytest.raises(UntrustedFileError, match="metadata.json: field `class_names` names 4 classes; the model "
                                                 "has 3 outputs"):
        models.from_preset(preset)
    _edit(preset, "metadata.json", lambda m: m.update(class_names=["red", "green", "blue"],
                                                       preprocessing={"center_crop": 3}))
    with pytest.raises(UntrustedFileError, match="metadata.json: field `preprocessing`"):
        models.from_preset(preset)
    _edit(preset, "metadata.json", lambda m: m.update(preprocessing="pixels / 255"))
    weights = os.path.join(preset, "model.weights.h5")
    os.remove(weights)
    os.mkfifo(weights)
    with pytest.raises(UntrustedFileError, match="model.weights.h5: the weights file is a FIFO"):
        models.from_preset(preset)


def _one_line_refusal(done):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    return lines[0]


@pytest.mark.backend_independent
def test_refusals_are_one_line_and_verbose_adds_the_detail(tmp_path):
    from involution import Involution

    image = str(tmp_path / "red.png")
    Image.fromarray(np.full((32, 32, 3), (250, 10, 10), np.uint8)).save(image)
    # A Lambda hidden in a kernel generator.
    inputs = keras.Input((32, 32, 3))
    generator = keras.layers.Lambda(lambda x: keras.ops.zeros_like(x[..., :1]) + keras.ops.ones((9,)))
    features = Involution(channel=3, group_number=1, kernel_size=3, stride=1, reduction_ratio=1,
                             kernel_generator=generator)(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(features))
    hidden = models.save_preset(keras.Model(inputs, outputs), str(tmp_path / "lambda"), {})
    # A Python function as an activation.
    def squash(x):
        return x / 2

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(3, activation=squash)(keras.layers.GlobalAveragePooling2D()(inputs))
    function = models.save_preset(keras.Model(inputs, outputs), str(tmp_path / "function"), {})
    # Weights of another architecture.
    other = models.save_preset(_colour_model(), str(tmp_path / "other"), {})
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs))).save_weights(
        os.path.join(other, "model.weights.h5"))
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    for folder, problem in ((hidden, "config.json: not a Keras model's configuration that loads safely"),
                            (function, "config.json: not a Keras model's configuration that loads safely"),
                            (other, "model.weights.h5: cannot load these weights")):
        command = [sys.executable, "-m", "involution", "predict", image, "--preset", folder]
        line = _one_line_refusal(subprocess.run(command, capture_output=True, text=True, env=env, timeout=300))
        assert problem in line and len(line) < 500, line
        assert not any(word in line for word in ("base64", "bytecode", "'config'", "0.", "array(")), line
        verbose = subprocess.run(command + ["--verbose"], capture_output=True, text=True, env=env, timeout=300)
        assert verbose.returncode == 2 and len(verbose.stderr.strip().splitlines()) > 1
    # compare --data on a FIFO archive: one line too.
    os.mkfifo(tmp_path / "data.tar.gz")
    done = subprocess.run([sys.executable, "-m", "involution", "compare", "--data", str(tmp_path / "data.tar.gz"),
                           "--epochs", "1", "--output", str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert "data.tar.gz: the data archive is a FIFO" in _one_line_refusal(done)
