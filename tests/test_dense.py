"""`involution.dense.PortableDense` against Keras' layer and a float64 NumPy reference."""

import keras
import numpy as np
import pytest

from involution.dense import PortableDense
from tests.backend_utils import gradients


def numpy_dense_relu(x, kernel, bias, upstream, axis=-1):
    """Output and the gradients of sum(output * upstream), in float64, features on `axis`."""
    x, kernel, bias, upstream = (np.asarray(a, np.float64) for a in (x, kernel, bias, upstream))
    x, upstream = np.moveaxis(x, axis, -1), np.moveaxis(upstream, axis, -1)
    pre = x @ kernel + bias
    masked = np.where(pre > 0, upstream, 0.0)
    flat = masked.reshape(-1, kernel.shape[1])
    grad_x = np.moveaxis(masked @ kernel.T, -1, axis)
    return (np.moveaxis(np.maximum(pre, 0), -1, axis), grad_x, x.reshape(-1, kernel.shape[0]).T @ flat,
            flat.sum(0))


@pytest.mark.parametrize("shape, axis", [((2, 5, 7, 3), -1), ((2, 3, 5, 7), 1), ((6, 4), -1), ((3, 4, 6), 1)])
def test_values_and_gradients_match_numpy(rng, shape, axis):
    units, features = 12, shape[axis]
    layer = PortableDense(units, activation="relu", axis=axis)
    layer.build(shape)
    layer.set_weights([rng.normal(size=(features, units)).astype("float32"),
                       rng.normal(size=(units,)).astype("float32")])
    x = rng.normal(size=shape).astype("float32")
    out_shape = list(shape)
    out_shape[axis] = units
    upstream = rng.normal(size=out_shape).astype("float32")
    kernel, bias = layer.get_weights()
    expected, grad_x, _, _ = numpy_dense_relu(x, kernel, bias, upstream, axis)
    assert layer.compute_output_shape(shape) == tuple(out_shape)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)
    weights = keras.ops.convert_to_tensor(upstream)
    layer_grads = gradients(lambda x_: keras.ops.sum(keras.ops.multiply(layer(x_), weights)), x)[1]
    np.testing.assert_allclose(layer_grads[0], grad_x, rtol=1e-4, atol=1e-4)


def test_last_axis_is_keras_dense(rng):
    x = rng.normal(size=(3, 4, 5)).astype("float32")
    for activation in ("tanh", "relu", None):
        layer, keras_layer = PortableDense(4, activation=activation), keras.layers.Dense(4, activation=activation)
        keras_layer.build(x.shape)
        layer.build(x.shape)
        layer.set_weights(keras_layer.get_weights())
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), keras.ops.convert_to_numpy(keras_layer(x)),
                                   rtol=1e-6)


def test_bad_axis_is_a_keras_style_error():
    with pytest.raises(ValueError, match="Received: axis='1'"):
        PortableDense(4, axis="1")
    with pytest.raises(ValueError, match=r"an axis of the 2D input. Received: axis=3"):
        PortableDense(4, axis=3).build((2, 5))


def test_config_round_trip_and_saved_model(rng, tmp_path):
    layer = PortableDense(5, activation="relu", axis=1, name="stem")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is PortableDense and restored.get_config() == layer.get_config()
    assert restored.axis == 1
    model = keras.Sequential([keras.Input((3, 4, 4)), PortableDense(5, activation="relu", axis=1)])
    x = rng.normal(size=(2, 3, 4, 4)).astype("float32")
    path = tmp_path / "dense.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded.layers[0]) is PortableDense
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(model(x)))


def test_an_earlier_fused_dense_layer_loads(rng):
    """Earlier releases saved `involution>Dense` with an `implementation` argument."""
    config = keras.saving.serialize_keras_object(PortableDense(4, activation="relu"))
    config["class_name"] = config["registered_name"] = "Dense"
    config["registered_name"] = "involution>Dense"
    config["config"].pop("axis")
    config["config"]["implementation"] = "auto"
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, PortableDense) and type(restored).__name__ == "Dense" and restored.axis == -1
    x = rng.normal(size=(2, 3)).astype("float32")
    assert tuple(restored(x).shape) == (2, 4)
