"""The JAX custom-gradient path by name (the dispatcher sends groups of fewer
than 8 channels to the reference, so `test_ops.py` alone would not reach it)."""

import itertools

import keras
import numpy as np
import pytest

from tests import numpy_reference as ref

if keras.backend.backend() != "jax":
    pytest.skip("JAX backend only", allow_module_level=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from involution.backends import jax_backend  # noqa: E402
from involution.ops import involution_apply_reference  # noqa: E402

GRID = list(itertools.product([1, 3, 5], [1, 2, 3], [1, 3], [1, 2], ["channels_last", "channels_first"]))


@pytest.mark.parametrize("kernel_size,stride,groups,dilation,data_format", GRID)
def test_values_and_gradients(rng, kernel_size, stride, groups, dilation, data_format):
    height, width, channels = 7, 8, 6
    out_h, out_w = -(-height // stride), -(-width // stride)
    x = rng.standard_normal((2, height, width, channels)).astype("float32")
    kernel = rng.standard_normal((2, out_h, out_w, groups * kernel_size**2)).astype("float32")
    if data_format == "channels_first":
        x, kernel = x.transpose(0, 3, 1, 2), kernel.transpose(0, 3, 1, 2)
    args = (kernel_size, stride, dilation, groups, data_format)
    out = jax_backend._grouped_apply(jnp.asarray(x), jnp.asarray(kernel), *args)
    np.testing.assert_allclose(np.asarray(out), ref.involution_apply(x, kernel, *args), rtol=1e-5, atol=1e-5)

    weights = jnp.asarray(rng.standard_normal(out.shape).astype("float32"))
    grads = jax.grad(lambda a, b: jnp.sum(jax_backend._grouped_apply(a, b, *args) * weights), (0, 1))(x, kernel)
    expected = jax.grad(lambda a, b: jnp.sum(involution_apply_reference(a, b, *args) * weights), (0, 1))(x, kernel)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_small_groups_take_the_reference(rng, monkeypatch):
    calls = []
    monkeypatch.setattr(jax_backend, "_grouped_apply", lambda *a: calls.append(a))
    x = rng.standard_normal((1, 5, 5, 6)).astype("float32")
    kernel = rng.standard_normal((1, 5, 5, 9)).astype("float32")
    jax_backend.involution_apply(jnp.asarray(x), jnp.asarray(kernel), 3, 1, 1, 1, "channels_last")
    assert not calls
    x = rng.standard_normal((1, 5, 5, 8)).astype("float32")
    jax_backend.involution_apply(jnp.asarray(x), jnp.asarray(kernel), 3, 1, 1, 1, "channels_last")
    assert len(calls) == 1
