"""`involution.dense.FusedDense` against Keras' layer and a float64 NumPy reference."""

import keras
import numpy as np
import pytest

from involution.dense import FusedDense as Dense
from involution.ops import DENSE_RELU_MAX_FEATURES
from tests.backend_utils import gradients

BACKEND = keras.backend.backend()
# Where the fused op exists; elsewhere "auto" runs Keras' code.
FAST = ("auto", "fast") if BACKEND in ("torch", "tensorflow") else ("auto",)


def numpy_dense_relu(x, kernel, bias, upstream):
    """Output and the gradients of sum(output * upstream), in float64."""
    x, kernel, bias, upstream = (np.asarray(a, np.float64) for a in (x, kernel, bias, upstream))
    pre = x @ kernel + bias
    masked = np.where(pre > 0, upstream, 0.0)
    flat = masked.reshape(-1, kernel.shape[1])
    return (np.maximum(pre, 0), masked @ kernel.T, x.reshape(-1, kernel.shape[0]).T @ flat, flat.sum(0))


def layer_with(units, features, rng, **kwargs):
    layer = Dense(units, activation="relu", **kwargs)
    layer.build((None, features))
    layer.set_weights([rng.normal(size=(features, units)).astype("float32"),
                       rng.normal(size=(units,)).astype("float32")])
    return layer


@pytest.mark.parametrize("implementation", ("reference", *FAST))
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (6, 1), (3, 4, 16)])
def test_values_and_gradients_match_numpy(rng, implementation, shape):
    units = 12
    layer = layer_with(units, shape[-1], rng, implementation=implementation)
    x = rng.normal(size=shape).astype("float32")
    upstream = rng.normal(size=(*shape[:-1], units)).astype("float32")
    kernel, bias = layer.get_weights()

    expected, grad_x, grad_kernel, grad_bias = numpy_dense_relu(x, kernel, bias, upstream)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)
    # Gradients through the op with the weights as inputs (tolerances of
    # float32 sums over up to 70 rows).
    value, grads = gradients(lambda x, kernel, bias: keras.ops.sum(
        keras.ops.multiply(_dense_relu(x, kernel, bias, implementation), upstream)), x, kernel, bias)
    np.testing.assert_allclose(value, np.sum(expected * upstream), rtol=1e-4)
    for grad, reference in zip(grads, (grad_x, grad_kernel, grad_bias)):
        np.testing.assert_allclose(grad, reference, rtol=1e-4, atol=1e-4)


def _dense_relu(x, kernel, bias, implementation):
    from involution.ops import dense_relu

    return dense_relu(x, kernel, bias, implementation)


def test_weight_gradients_through_the_layer_match_keras(rng):
    """The layer's own variables get Keras' gradients (the fused path's
    variables reach the op as tensors)."""
    from tests.backend_utils import weight_gradients

    x = rng.normal(size=(4, 6, 6, 3)).astype("float32")
    y = rng.normal(size=(4, 6, 6, 8)).astype("float32")
    grads = []
    for layer in (layer_with(8, 3, np.random.default_rng(1)),
                  layer_with(8, 3, np.random.default_rng(1), implementation="reference")):
        model = keras.Sequential([keras.Input((6, 6, 3)), layer])
        loss = lambda t, p: keras.ops.mean(keras.ops.square(keras.ops.subtract(t, p)))  # noqa: E731
        grads.append(weight_gradients(model, loss, x, y))
    for fused, reference in zip(*grads):
        np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-6)


def test_other_activations_and_wide_inputs_are_keras_dense(rng):
    x = rng.normal(size=(3, DENSE_RELU_MAX_FEATURES + 1)).astype("float32")
    for layer in (Dense(4, activation="tanh"), Dense(4, activation="relu"), Dense(4)):
        keras_layer = keras.layers.Dense(4, activation=layer.get_config()["activation"])
        keras_layer.build(x.shape)
        layer.build(x.shape)
        layer.set_weights(keras_layer.get_weights())
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), keras.ops.convert_to_numpy(keras_layer(x)),
                                   rtol=1e-6)
    if BACKEND in ("torch", "tensorflow"):
        with pytest.raises(ValueError, match=f"at most {DENSE_RELU_MAX_FEATURES} input features"):
            Dense(4, activation="relu", implementation="fast")(x)
    else:
        with pytest.raises(ValueError, match=f"the '{BACKEND}' backend has no dense kernel"):
            Dense(4, activation="relu", implementation="fast")(x[:, :3])


def test_without_bias(rng):
    x = rng.normal(size=(5, 3)).astype("float32")
    layer = Dense(6, activation="relu", use_bias=False)
    layer.build(x.shape)
    expected = np.maximum(x @ keras.ops.convert_to_numpy(layer.kernel), 0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_saved_model(rng, tmp_path):
    layer = Dense(5, activation="relu", implementation="reference", name="stem")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is Dense and restored.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="Received: implementation='quick'"):
        Dense(5, implementation="quick")
    model = keras.Sequential([keras.Input((4, 4, 3)), Dense(5, activation="relu")])
    x = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    path = tmp_path / "dense.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded.layers[0]) is Dense
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(model(x)))
