"""`RedNetImageClassifier`, backbone-and-task presets, and keras-hub loading them."""

import os

import keras
import numpy as np
import pytest

from involution import models
from involution.models import RedNet, RedNetImageClassifier


def _classifier(data_format="channels_last", **kwargs):
    shape = (32, 32, 3) if data_format == "channels_last" else (3, 32, 32)
    backbone = RedNet(26, include_top=False, input_shape=shape, width=16, stem="cifar_half", data_format=data_format)
    return RedNetImageClassifier(backbone, num_classes=5, **kwargs)


def _inputs(rng, data_format):
    x = rng.uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    return x if data_format == "channels_last" else np.transpose(x, (0, 3, 1, 2))


def test_the_head_is_pooling_and_a_dense_layer(rng):
    model = _classifier()
    x = _inputs(rng, "channels_last")
    features = keras.ops.convert_to_numpy(model.backbone(x, training=False)).astype(np.float64)
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("predictions").get_weights())
    expected = features.mean(axis=(1, 2)) @ kernel + bias
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), expected, rtol=1e-4, atol=1e-5)
    assert model.output_shape == (None, 5)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_a_task_preset_reloads_as_classifier_and_backbone(tmp_path, rng, data_format):
    model = _classifier(data_format, dropout=0.25)
    for weight in model.weights:  # weights other than the initial ones, the head's included
        weight.assign(rng.normal(0, 0.1, weight.shape).astype(weight.dtype))
    folder = models.save_preset(model, str(tmp_path / "task"), {"model": "test"})
    assert sorted(os.listdir(folder)) == ["config.json", "metadata.json", "model.weights.h5", "task.json",
                                          "task.weights.h5"]
    x = _inputs(rng, data_format)
    loaded = models.from_preset(folder)
    assert isinstance(loaded, RedNetImageClassifier) and loaded.dropout == 0.25
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)),
                               keras.ops.convert_to_numpy(model(x, training=False)), rtol=1e-5, atol=1e-6)
    backbone = models.from_preset(folder, include_top=False)
    assert isinstance(backbone, RedNet) and backbone.data_format == data_format
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backbone(x, training=False)),
                               keras.ops.convert_to_numpy(model.backbone(x, training=False)), rtol=1e-5, atol=1e-6)
    # A preset of one model has no backbone to give.
    single = models.save_preset(model.backbone, str(tmp_path / "single"), {})
    with pytest.raises(ValueError, match="stores one model, not a backbone and a task"):
        models.from_preset(single, include_top=False)
    os.remove(os.path.join(folder, "task.weights.h5"))
    with pytest.raises(ValueError, match="both task.json and task.weights.h5 or neither"):
        models.from_preset(folder)


@pytest.mark.backend_independent
@pytest.mark.parametrize("kwargs,match", [
    (dict(num_classes=0), "`num_classes` argument must be a positive integer"),
    (dict(pooling="sum"), "`pooling` argument must be 'avg' or 'max'"),
    (dict(dropout=1.5), "`dropout` argument must be a number in"),
    (dict(activation=len), "`activation` argument must be None or an activation's name"),
    (dict(preprocessor="resize"), "`preprocessor` argument takes keras-hub preprocessors"),
])
def test_bad_arguments_are_named(kwargs, match):
    backbone = RedNet(26, include_top=False, input_shape=(32, 32, 3), width=16, stem="cifar_half")
    with pytest.raises(ValueError, match=match):
        RedNetImageClassifier(backbone, **{"num_classes": 3, **kwargs})
    with pytest.raises(ValueError, match="`backbone` argument must be a keras.Model"):
        RedNetImageClassifier("rednet26", num_classes=3)


@pytest.mark.backend_independent
def test_config_round_trip():
    model = _classifier(pooling="max", activation="softmax", dropout=0.1)
    config = model.get_config()
    clone = RedNetImageClassifier.from_config(config)
    assert {k: v for k, v in clone.get_config().items() if k != "backbone"} == \
        {k: v for k, v in config.items() if k != "backbone"}
    assert clone.backbone.get_config() == model.backbone.get_config()
