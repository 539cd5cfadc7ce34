"""RedNet: parameter counts against the official ones, features, sizes."""

import keras
import numpy as np
import pytest

from involution import models
from involution.models.rednet import RedNet

# Official parameter counts (millions) of the paper's ImageNet models, and
# this implementation's exact counts (trainable, all weights), as
# docs/results/rednet-parameters.md states them: the trainable ones are
# the reference model's (tests/models/test_rednet_reference.py compares
# RedNet-26 and -50 with it directly).
OFFICIAL = {26: 9.23, 38: 12.39, 50: 15.54, 101: 25.65, 152: 33.99}
COUNTS = {
    26: (9_233_166, 9_264_318),
    38: (12_386_986, 12_430_138),
    50: (15_540_806, 15_595_958),
    101: (25_652_950, 25_762_502),
    152: (33_984_582, 34_142_134),
}


@pytest.mark.parametrize("depth", sorted(OFFICIAL))
def test_parameter_counts_match_official(depth):
    model = models.create_model(f"rednet{depth}")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert (trainable, model.count_params()) == COUNTS[depth]
    assert abs(trainable / 1e6 - OFFICIAL[depth]) / OFFICIAL[depth] < 0.0005
    assert model.output_shape == (None, 1000)


def test_pyramid_outputs_and_any_input_size(rng):
    model = RedNet(26, num_classes=5, width=16)
    features = keras.Model(model.input, model.pyramid_outputs)
    x = rng.uniform(0, 1, (1, 64, 80, 3)).astype("float32")
    maps = {k: keras.ops.convert_to_numpy(v) for k, v in features(x).items()}
    assert maps["stem"].shape == (1, 16, 20, 16)
    assert maps["stage1"].shape == (1, 16, 20, 64)
    assert maps["stage2"].shape == (1, 8, 10, 128)
    assert maps["stage3"].shape == (1, 4, 5, 256)
    assert maps["stage4"].shape == (1, 2, 3, 512)
    assert model(x).shape == (1, 5)
    assert model(rng.uniform(0, 1, (2, 37, 41, 3)).astype("float32")).shape == (2, 5)


def test_cifar_stem_keeps_resolution():
    model = models.create_model("rednet26_cifar")
    shapes = {k: tuple(v.shape) for k, v in model.pyramid_outputs.items()}
    assert shapes["stage1"] == (None, 32, 32, 64)
    assert shapes["stage4"] == (None, 4, 4, 512)


def test_residual_branches_start_at_zero(rng):
    model = RedNet(26, num_classes=5, input_shape=(32, 32, 3), stem="cifar", width=8)
    last_norms = [layer for layer in model.layers if layer.name.startswith("stage") and layer.name.endswith("_3_bn")]
    assert len(last_norms) == sum((1, 2, 4, 1))
    for layer in last_norms:
        assert not np.any(keras.ops.convert_to_numpy(layer.gamma)), layer.name
    other_norms = [layer for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization) and layer not in last_norms]
    assert all(np.all(keras.ops.convert_to_numpy(layer.gamma) == 1) for layer in other_norms)


def test_half_stem_halves_once():
    model = models.create_model("rednet26_cifar_tiny")
    shapes = {k: tuple(v.shape) for k, v in model.pyramid_outputs.items()}
    assert shapes["stem"] == (None, 16, 16, 8)
    assert shapes["stage4"] == (None, 2, 2, 256)


def test_without_top_and_config_round_trip(tmp_path, rng):
    model = RedNet(26, include_top=False, input_shape=(32, 32, 3), stem="cifar", width=8)
    assert model.output_shape == (None, 4, 4, 256)
    clone = RedNet.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    x = rng.uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    path = tmp_path / "rednet.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, RedNet)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: depth=34"):
        RedNet(34)
    with pytest.raises(ValueError, match="Received: stem='tiny'"):
        RedNet(26, stem="tiny")
