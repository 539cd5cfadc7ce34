"""`involution.convolution.PortableConv2D` against Keras' layer and NumPy."""

import keras
import numpy as np
import pytest

from involution.convolution import PortableConv2D as Conv2D
from involution import ops as involution_ops


def assert_matches_keras_channels_last(x, **options):
    # The same weights convolve the same map in either layout; Keras'
    # channels-last layer is the reference (TensorFlow's CPU convolution
    # runs channels-last everywhere).
    reference = keras.layers.Conv2D(4, data_format="channels_last", bias_initializer="random_normal", **options)
    expected = keras.ops.convert_to_numpy(reference(x))
    layer = Conv2D(4, data_format="channels_first", **options)
    layer.build((None, x.shape[3], x.shape[1], x.shape[2]))
    layer.set_weights(reference.get_weights())
    outputs = keras.ops.convert_to_numpy(layer(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(outputs, expected.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [dict(kernel_size=1), dict(kernel_size=3, strides=2, padding="same"),
                                     dict(kernel_size=3, dilation_rate=2, padding="valid")])
def test_channels_first_matches_keras_channels_last(rng, options):
    assert_matches_keras_channels_last(rng.standard_normal((2, 9, 8, 5)).astype("float32"), **options)


@pytest.mark.parametrize("strides", [1, 2])
def test_transposed_path_matches_keras_channels_last(rng, monkeypatch, strides):
    # The path for CPUs whose TensorFlow convolves channels-last maps only,
    # taken here on every backend; widths equal to the filters included.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the transposed kernel is TensorFlow's")
    from involution.backends import tensorflow_backend

    monkeypatch.setattr(tensorflow_backend, "channels_first_conv_runs", lambda: False)
    x = rng.standard_normal((2, 7, 4 * strides, 5)).astype("float32")
    assert_matches_keras_channels_last(x, kernel_size=3, strides=strides, padding="same")


def test_one_by_one_matches_numpy(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    layer = Conv2D(6, 1, data_format="channels_first", bias_initializer="random_normal")
    outputs = keras.ops.convert_to_numpy(layer(x.astype("float32")))
    kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
    expected = np.einsum("bchw,cf->bfhw", x, kernel[0, 0]) + bias[:, None, None]
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


def test_config_round_trip():
    layer = Conv2D(4, 3, strides=2, data_format="channels_first", name="conv")
    restored = Conv2D.from_config(layer.get_config())
    assert type(restored) is Conv2D and restored.get_config() == layer.get_config()
