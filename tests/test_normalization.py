"""`involution.normalization.FusedBatchNormalization` against NumPy and Keras' own layer."""

import keras
import numpy as np
import pytest

from involution.normalization import FusedBatchNormalization as BatchNormalization
from tests.backend_utils import weight_gradients


def batch_norm_reference(x, gamma, beta, upstream, epsilon):
    """Training-mode batch norm over the last axis (float64) and the
    gradients of `sum(outputs * upstream)` w.r.t. x, gamma and beta."""
    x, upstream = np.asarray(x, np.float64), np.asarray(upstream, np.float64)
    axes = tuple(range(x.ndim - 1))
    mean, variance = x.mean(axes), x.var(axes)
    inverse_std = 1.0 / np.sqrt(variance + epsilon)
    normalized = (x - mean) * inverse_std
    outputs = normalized * gamma + beta
    grad_gamma = (upstream * normalized).sum(axes)
    grad_beta = upstream.sum(axes)
    grad_x = gamma * inverse_std * (upstream - upstream.mean(axes) - normalized * (upstream * normalized).mean(axes))
    return outputs, mean, variance, grad_x, grad_gamma, grad_beta


def _normalized_sum(upstream):
    weights = keras.ops.convert_to_tensor(upstream)
    return lambda _, outputs: keras.ops.sum(outputs * weights)


@pytest.mark.parametrize("shape", [(16, 5, 7, 12), (40, 6)])
def test_training_step_matches_numpy(rng, shape):
    # float32 only: Keras' batch normalization computes in float32 even
    # under a float64 policy, and this layer keeps its behaviour.
    epsilon, momentum, dtype = 1e-3, 0.75, "float32"
    x = rng.normal(2.0, 3.0, shape)
    upstream = rng.normal(size=shape)
    gamma, beta = rng.uniform(0.5, 2.0, shape[-1]), rng.normal(size=shape[-1])
    moving_mean, moving_variance = rng.normal(size=shape[-1]), rng.uniform(0.5, 2.0, shape[-1])
    outputs, mean, variance, grad_x, grad_gamma, grad_beta = batch_norm_reference(x, gamma, beta, upstream, epsilon)

    layer = BatchNormalization(momentum=momentum, epsilon=epsilon, dtype=dtype)
    layer.build(shape)
    # On PyTorch and TensorFlow this is the fused path; on JAX Keras' own code.
    fused = layer._fused_kernel(keras.ops.convert_to_tensor(x.astype(dtype)), None)
    assert (fused is not None) == (keras.backend.backend() in ("torch", "tensorflow"))
    layer.set_weights([gamma, beta, moving_mean, moving_variance])
    tolerance = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x.astype(dtype), training=True)), outputs,
                               **tolerance)
    _, _, new_mean, new_variance = layer.get_weights()
    np.testing.assert_allclose(new_mean, momentum * moving_mean + (1 - momentum) * mean, **tolerance)
    np.testing.assert_allclose(new_variance, momentum * moving_variance + (1 - momentum) * variance, **tolerance)

    inputs = keras.Input(shape[1:], dtype=dtype)
    layer = BatchNormalization(momentum=momentum, epsilon=epsilon, dtype=dtype)
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([gamma, beta, moving_mean, moving_variance])
    grads = weight_gradients(model, _normalized_sum(upstream.astype(dtype)), x.astype(dtype), None)
    np.testing.assert_allclose(grads[0], grad_gamma, **tolerance)
    np.testing.assert_allclose(grads[1], grad_beta, **tolerance)
    # The input's gradient, through an identity dense layer in front: its
    # kernel's gradient is x^T dx.
    probe = keras.Sequential([keras.Input(shape[1:], dtype=dtype),
                              keras.layers.Dense(shape[-1], use_bias=False, kernel_initializer="identity",
                                                 dtype=dtype),
                              BatchNormalization(momentum=momentum, epsilon=epsilon, dtype=dtype)])
    probe.layers[-1].set_weights([gamma, beta, moving_mean, moving_variance])
    kernel_grad = weight_gradients(probe, _normalized_sum(upstream.astype(dtype)), x.astype(dtype), None)[0]
    flat = x.reshape(-1, shape[-1])
    np.testing.assert_allclose(kernel_grad, flat.T @ grad_x.reshape(-1, shape[-1]), **tolerance)


@pytest.mark.parametrize("options", [dict(axis=1), dict(center=False, scale=False), dict(epsilon=1e-5, momentum=0.9)])
def test_matches_keras_layer(rng, options):
    x = rng.normal(1.0, 2.0, (8, 6, 5, 4)).astype("float32")
    ours, theirs = BatchNormalization(**options), keras.layers.BatchNormalization(**options)
    for training in (True, False, True, False):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x, training=training)),
                                   keras.ops.convert_to_numpy(theirs(x, training=training)), rtol=1e-5, atol=1e-5)
    for mine, reference in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


def test_frozen_layer_uses_moving_statistics(rng):
    x = rng.normal(3.0, 2.0, (8, 4, 4, 3)).astype("float32")
    layer = BatchNormalization()
    layer.build(x.shape)
    layer.trainable = False
    # Fresh moving statistics (0, 1): the output is x scaled by 1/sqrt(1 + epsilon).
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x, training=True)), x / np.sqrt(1 + 1e-3),
                               rtol=1e-6)
    np.testing.assert_array_equal(layer.get_weights()[2], np.zeros(3))


def test_mixed_precision(rng):
    keras.config.set_dtype_policy("mixed_float16")
    x = rng.normal(1.0, 2.0, (16, 4, 4, 8)).astype("float32")
    layer = BatchNormalization()
    outputs = layer(keras.ops.cast(x, "float16"), training=True)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float16"
    assert layer.moving_mean.dtype == "float32"
    expected = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs).astype("float32"), expected, rtol=1e-2, atol=1e-2)


def test_config_round_trip():
    layer = BatchNormalization(momentum=0.5, epsilon=1e-5, center=False, name="norm")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is BatchNormalization
    assert restored.get_config() == layer.get_config()


@pytest.mark.parametrize("axis", [1, -1, 2])
def test_layer_normalization_normalises_any_single_axis(rng, axis):
    from involution.normalization import PortableLayerNormalization as LayerNormalization

    x = rng.normal(size=(2, 5, 4, 3)).astype("float32")
    layer = LayerNormalization(axis=axis, epsilon=1e-3)
    layer.build(x.shape)
    layer.gamma.assign(rng.normal(size=layer.gamma.shape).astype("float32"))
    layer.beta.assign(rng.normal(size=layer.beta.shape).astype("float32"))
    # float64 NumPy: normalise along `axis`, then scale and shift per channel.
    x64 = x.astype("float64")
    mean = x64.mean(axis=axis, keepdims=True)
    variance = x64.var(axis=axis, keepdims=True)
    shape = [1] * 4
    shape[axis] = x.shape[axis]
    gamma = keras.ops.convert_to_numpy(layer.gamma).reshape(shape)
    beta = keras.ops.convert_to_numpy(layer.beta).reshape(shape)
    expected = (x64 - mean) / np.sqrt(variance + 1e-3) * gamma + beta
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is LayerNormalization and restored.get_config() == layer.get_config()
