"""Local self-attention as an involution kernel generator, against NumPy."""

import itertools
import math

import keras
import numpy as np
import pytest

from involution import Involution
from involution.attention import LocalAttentionKernelGenerator, local_attention
from tests import numpy_reference as ref
from tests.backend_utils import gradients


def windowed_attention_numpy(x, wq, wk, relative, kernel_size, stride, dilation, heads):
    """Direct windowed multi-head attention; values are the input's channels (NHWC)."""
    x = np.asarray(x, np.float64)
    batch, height, width, channels = x.shape
    key_dim = wq.shape[-1] // heads
    pooled = ref.average_pool_same(x, stride) if stride > 1 else x
    queries = (pooled @ wq).reshape(pooled.shape[:3] + (heads, key_dim))
    keys = (x @ wk).reshape(batch, height, width, heads, key_dim)
    out_h, out_w = pooled.shape[1:3]
    pad = dilation * (kernel_size - 1) // 2
    per_head = channels // heads
    out = np.zeros((batch, out_h, out_w, channels))
    for i, j in itertools.product(range(out_h), range(out_w)):
        for g in range(heads):
            logits, values = [], []
            for t in range(kernel_size * kernel_size):
                r = i * stride + (t // kernel_size) * dilation - pad
                c = j * stride + (t % kernel_size) * dilation - pad
                if 0 <= r < height and 0 <= c < width:
                    logits.append(np.einsum("bd,bd->b", queries[:, i, j, g], keys[:, r, c, g])
                                  / math.sqrt(key_dim) + relative[g, t])
                    values.append(x[:, r, c, g * per_head : (g + 1) * per_head])
            logits = np.stack(logits, axis=1)
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            out[:, i, j, g * per_head : (g + 1) * per_head] = np.einsum("bt,btc->bc", weights, np.stack(values, 1))
    return out


CASES = [(3, 1, 1, 1), (3, 2, 2, 1), (5, 1, 2, 2), (5, 3, 1, 1), (7, 2, 4, 1)]


@pytest.mark.parametrize("kernel_size,stride,heads,dilation", CASES)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_equals_direct_windowed_attention(rng, kernel_size, stride, heads, dilation, data_format):
    x = rng.standard_normal((2, 7, 8, 8)).astype("float32")
    generator = LocalAttentionKernelGenerator(kernel_size, stride=stride, group_number=heads, key_dim=3,
                                              dilation=dilation, data_format=data_format)
    layer = Involution(group_number=heads, kernel_size=kernel_size, stride=stride, dilation=dilation,
                       kernel_generator=generator, data_format=data_format)
    x_in = x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)
    layer.build(x_in.shape)
    generator.relative_position.assign(rng.standard_normal(generator.relative_position.shape).astype("float32"))
    out = keras.ops.convert_to_numpy(layer(x_in))
    if data_format == "channels_first":
        out = out.transpose(0, 2, 3, 1)
    expected = windowed_attention_numpy(
        x, np.asarray(generator.query.kernel)[0, 0], np.asarray(generator.key.kernel)[0, 0],
        np.asarray(generator.relative_position), kernel_size, stride, dilation, heads,
    )
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_kernels_are_distributions_over_the_image(rng):
    generator = LocalAttentionKernelGenerator(5, group_number=2, key_dim=4)
    kernel = keras.ops.convert_to_numpy(generator(rng.standard_normal((1, 6, 6, 4)).astype("float32")))
    weights = kernel.reshape(1, 6, 6, 2, 25)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    # The corner pixel's window has only 3x3 taps inside the image.
    assert np.count_nonzero(weights[0, 0, 0, 0] > 1e-6) == 9


def test_helper_config_round_trip_and_training(rng):
    inputs = keras.Input((8, 8, 8))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(local_attention(8, heads=2, kernel_size=3)(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    history = model.fit(rng.standard_normal((4, 8, 8, 8)).astype("float32"), np.zeros((4, 2), "float32"), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = rng.standard_normal((2, 8, 8, 8)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_bad_key_dim():
    with pytest.raises(ValueError, match="Received: key_dim=0"):
        LocalAttentionKernelGenerator(3, key_dim=0)


def test_unknown_sizes_match_known_sizes(rng):
    # Unknown sizes take the per-head slicing path (TensorFlow traces
    # `predict` with them unknown), known ones a reshape.
    layer = local_attention(8, heads=2, kernel_size=3, stride=2)
    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, layer(inputs))
    x = rng.standard_normal((2, 7, 9, 8)).astype("float32")
    generator = layer.kernel_generator
    generator.relative_position.assign(rng.standard_normal(generator.relative_position.shape).astype("float32"))
    dynamic = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    static = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(dynamic, static, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the fused correlation is PyTorch's and TensorFlow's")
@pytest.mark.parametrize("kernel_size,stride,heads,dilation", CASES)
@pytest.mark.parametrize("key_dim", [3, 8])
@pytest.mark.parametrize("name", ["cpp", "triton"])
def test_fused_logits_and_gradients_match_reference(rng, kernel_size, stride, heads, dilation, key_dim, name):
    from involution import registry
    from involution.attention import window_logits, window_logits_reference

    out_h, out_w = -(-7 // stride), -(-8 // stride)
    queries = rng.standard_normal((2, out_h, out_w, heads, key_dim))
    keys = rng.standard_normal((2, 7, 8, heads, key_dim))
    entries = {entry.name.split("-")[-1]: entry
               for entry in registry.entries("window_correlation", keras.backend.backend())}
    if name not in entries:
        pytest.skip(f"no {name} window correlation on this backend")
    entry = entries[name]
    reason = registry.availability(entry)
    if reason is not None:
        pytest.skip(reason)
    upstream = rng.standard_normal((2, out_h, out_w, heads, kernel_size**2))

    def logits_and_gradients(logits):
        weights = keras.ops.convert_to_tensor(upstream)
        values = logits(keras.ops.convert_to_tensor(queries), keras.ops.convert_to_tensor(keys), kernel_size,
                        stride, dilation)
        _, grads = gradients(lambda q, k: keras.ops.sum(logits(q, k, kernel_size, stride, dilation) * weights),
                             queries, keys)
        return [keras.ops.convert_to_numpy(values), *grads]

    fused = logits_and_gradients(lambda *args: window_logits(*args, implementation=entry.name)[0])
    expected = logits_and_gradients(window_logits_reference)
    # float64 throughout: the two differ by rounding only.
    for ours, theirs in zip(fused, expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
