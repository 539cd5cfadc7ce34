"""Every registry model builds the same network in both data formats, with the same weights."""

import keras
import numpy as np
import pytest

from involution import models

# Small versions, so that both layouts run quickly: (channels-last input
# shape, builder arguments) by name; names not listed build as registered.
SMALL = {
    "conv": ((16, 16, 3), {}),
    "involution": ((16, 16, 3), {}),
    "invnet": ((16, 16, 3), dict(widths=(16, 32), blocks=(1, 1), stem_width=16, stem_groups=2, group_channels=8)),
    "invnet_depthwise": ((16, 16, 3), dict(widths=(16, 32), blocks=(1, 1), stem_width=16)),
    "invnet_conv": ((16, 16, 3), dict(widths=(8, 8), blocks=(1, 1), stem_width=8)),
    "attention_net": ((16, 16, 3), dict(widths=(16,), blocks=(1,), stem_width=16, stem_groups=2)),
    "resnet8": ((16, 16, 3), dict(widths=(4, 8, 8))),
    "rednet26_cifar_tiny": ((16, 16, 3), dict(width=8)),
}
CASES = [(name, *SMALL.get(name, ((32, 32, 3), dict(width=8)))) for name in models.list_models()]
CASES.append(("invnet", (16, 16, 3), dict(widths=(16,), blocks=(1,), kernel_size=3, stem_width=16, stem_groups=2,
                                          group_channels=8, hidden_units=8, normalization="layer", stem_stride=1)))
# The deeper RedNets share RedNet-26's blocks: one backend's pass and one forward call are enough.
DEEP = {"rednet38", "rednet50", "rednet101", "rednet152", "rednet38_cifar", "rednet50_cifar", "rednet101_cifar",
        "rednet152_cifar"}


def _first(shape):
    return (shape[2], shape[0], shape[1])


@pytest.mark.parametrize("name, shape, kwargs", [
    pytest.param(*case, marks=pytest.mark.backend_independent) if case[0] in DEEP else case for case in CASES
], ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_channels_first_takes_the_channels_last_weights(name, shape, kwargs, rng):
    last = models.create_model(name, input_shape=shape, num_classes=5, data_format="channels_last", **kwargs)
    first = models.create_model(name, input_shape=_first(shape), num_classes=5, data_format="channels_first",
                                **kwargs)
    assert [w.shape for w in first.weights] == [w.shape for w in last.weights]
    first.set_weights(last.get_weights())  # as they are: no reshaping between layouts
    x = rng.uniform(0, 1, (2, *shape)).astype("float32")
    for training in (False,) if name in DEEP else (False, True):
        expected = keras.ops.convert_to_numpy(last(x, training=training))
        got = keras.ops.convert_to_numpy(first(np.transpose(x, (0, 3, 1, 2)), training=training))
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)


def test_rednet_config_keeps_the_data_format():
    model = models.RedNet(26, num_classes=3, width=8, input_shape=(3, 32, 32), stem="cifar",
                          data_format="channels_first")
    clone = models.RedNet.from_config(model.get_config())
    assert clone.data_format == "channels_first" and clone.input_shape == (None, 3, 32, 32)
