"""The zoo's networks build the same model in both data formats."""

import keras
import numpy as np
import pytest

from involution import models

# (name, channels-last input shape, builder arguments): small versions so
# that both layouts run quickly.
CASES = [
    ("invnet", (16, 16, 3), dict(widths=(16, 32), blocks=(1, 1), stem_width=16, stem_groups=2, group_channels=8)),
    ("invnet", (16, 16, 3), dict(widths=(16,), blocks=(1,), kernel_size=3, stem_width=16, stem_groups=2,
                                 group_channels=8, hidden_units=8, normalization="layer", stem_stride=1)),
    ("attention_net", (16, 16, 3), dict(widths=(16,), blocks=(1,), stem_width=16, stem_groups=2)),
    ("invnet_depthwise", (16, 16, 3), dict(widths=(16, 32), blocks=(1, 1), stem_width=16)),
    ("invnet_conv", (16, 16, 3), dict(widths=(8, 8), blocks=(1, 1), stem_width=8)),
    ("resnet8", (16, 16, 3), dict(widths=(4, 8, 8))),
    ("rednet26_cifar_tiny", (16, 16, 3), dict(width=8)),
    ("rednet26", (32, 32, 3), dict(width=8)),
]


def _first(shape):
    return (shape[2], shape[0], shape[1])


@pytest.mark.parametrize("name, shape, kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_channels_first_builds_the_same_network(name, shape, kwargs, rng):
    last = models.create_model(name, input_shape=shape, num_classes=5, data_format="channels_last", **kwargs)
    first = models.create_model(name, input_shape=_first(shape), num_classes=5, data_format="channels_first",
                                **kwargs)
    assert first.count_params() == last.count_params()
    # Equal weights: a channels-first 1x1 convolution holds the channels-last
    # Dense kernel with two unit axes in front.
    weights = last.get_weights()
    first.set_weights([np.reshape(w, v.shape) for w, v in zip(weights, first.weights)])
    x = rng.uniform(0, 1, (2, *shape)).astype("float32")
    for training in (False, True):
        expected = keras.ops.convert_to_numpy(last(x, training=training))
        got = keras.ops.convert_to_numpy(first(np.transpose(x, (0, 3, 1, 2)), training=training))
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)


def test_rednet_config_keeps_the_data_format():
    model = models.RedNet(26, num_classes=3, width=8, input_shape=(3, 32, 32), stem="cifar",
                          data_format="channels_first")
    clone = models.RedNet.from_config(model.get_config())
    assert clone.data_format == "channels_first" and clone.input_shape == (None, 3, 32, 32)
