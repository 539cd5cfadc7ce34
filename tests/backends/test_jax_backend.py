"""The JAX fast paths by name: the C++ loops through XLA FFI ("ffi") and the
XLA custom gradient ("xla"). The dispatcher picks one per call (and sends
groups of fewer than 8 channels to the reference), so `test_ops.py` alone
would reach only one of them."""

import functools
import itertools
import shutil

import keras
import numpy as np
import pytest

from tests import numpy_reference as ref
from tests.backend_utils import alternating, apply_case

if keras.backend.backend() != "jax":
    pytest.skip("JAX backend only", allow_module_level=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from involution.backends import jax_backend  # noqa: E402
from involution.ops import involution_apply, involution_apply_reference  # noqa: E402

GRID = alternating(itertools.product([1, 3, 5], [1, 2, 3], [1, 3], [1, 2]), ["channels_last", "channels_first"])
# Where a C++ compiler is found (CI, any development machine), the FFI
# library must build: a silent fallback to XLA would leave it untested.
PATHS = ["ffi", "xla"] if shutil.which("c++") or shutil.which("g++") else ["xla"]




def test_ffi_library_builds_where_a_compiler_exists():
    if "ffi" not in PATHS:
        pytest.skip("no C++ compiler here")
    assert jax_backend._ffi_available()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kernel_size,stride,groups,dilation,data_format", GRID)
def test_values_and_gradients(rng, path, kernel_size, stride, groups, dilation, data_format):
    # 24 channels: 24 or 8 per group, the C++ loops' vector widths; the XLA
    # path has no such cases, 6 channels (6 or 2 per group) also reach it.
    x, kernel = apply_case(rng, kernel_size, stride, groups, 24 if path == "ffi" else 6, data_format)
    args = (kernel_size, stride, dilation, groups, data_format)
    # Compiled, as Keras' steps run them (see `tests.backend_utils.compiled`).
    out = jax.jit(lambda a, b: jax_backend._grouped_apply(a, b, *args, path))(x, kernel)
    np.testing.assert_allclose(np.asarray(out), ref.involution_apply(x, kernel, *args), rtol=1e-5, atol=1e-5)

    weights = jnp.asarray(rng.standard_normal(out.shape).astype("float32"))
    grads = jax.jit(jax.grad(lambda a, b: jnp.sum(jax_backend._grouped_apply(a, b, *args, path) * weights), (0, 1)))(
        x, kernel
    )
    expected = jax.jit(jax.grad(lambda a, b: jnp.sum(involution_apply_reference(a, b, *args) * weights), (0, 1)))(
        x, kernel
    )
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif("ffi" not in PATHS, reason="no C++ compiler here")
@pytest.mark.parametrize("kernel_size,stride,dilation", [(3, 1, 1), (5, 2, 1), (7, 1, 2), (7, 3, 1)])
@pytest.mark.parametrize("channels,groups,dtype", [(16, 1, np.float32), (24, 3, np.float32), (10, 2, np.float64)])
def test_ffi_against_float64_numpy(rng, kernel_size, stride, dilation, channels, groups, dtype):
    # float32 with 8k channels per group takes the vector paths (eight taps
    # reduced together; windows of 9..49 taps leave partial chunks), 5
    # channels per group in float64 the scalar ones, to 1e-10.
    x, kernel = apply_case(rng, kernel_size, stride, groups, channels, dtype=dtype, height=9, width=11)
    upstream = rng.standard_normal(kernel.shape[:3] + (channels,)).astype(dtype)
    args = (groups, kernel_size, stride, dilation)
    # `jax.enable_x64` (the context manager) is newer than the
    # `jax.experimental` one, which later versions removed.
    enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64
    with enable_x64(dtype == np.float64):
        out, pullback = jax.vjp(lambda a, b: jax_backend.fused_involution(a, b, *args), x, kernel)
        grad_x, grad_kernel = pullback(jnp.asarray(upstream))
        assert out.dtype == dtype and grad_kernel.dtype == dtype
    reference_args = (kernel_size, stride, dilation, groups)
    expected_x, expected_kernel = ref.involution_apply_gradients(x, kernel, upstream, *reference_args)
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(out), ref.involution_apply(x, kernel, *reference_args, "channels_last"),
                               **tolerance)
    np.testing.assert_allclose(np.asarray(grad_x), expected_x, **tolerance)
    np.testing.assert_allclose(np.asarray(grad_kernel), expected_kernel, **tolerance)


def recorded_path(monkeypatch, rng, channels, dtype="float32"):
    calls = []
    monkeypatch.setattr(jax_backend, "_grouped_apply", lambda *a: calls.append(a[-1]))
    x, kernel = apply_case(rng, 3, 1, 1, channels)
    # Through the dispatch point, which sends few channels per group to the reference.
    involution_apply(jnp.asarray(x, dtype), jnp.asarray(kernel, dtype), 3, 1, 1, 1, "channels_last")
    return calls


def test_dispatch(rng, monkeypatch):
    assert recorded_path(monkeypatch, rng, 6) == []  # the reference
    assert recorded_path(monkeypatch, rng, 8) == [PATHS[0]]
    assert recorded_path(monkeypatch, rng, 8, "bfloat16") == ["xla"]


def test_environment_variable_disables_the_ffi(rng, monkeypatch):
    monkeypatch.setenv(jax_backend.FFI_ENV, "0")
    jax_backend._ffi_available.cache_clear()
    try:
        assert not jax_backend._ffi_available()
        assert recorded_path(monkeypatch, rng, 8) == ["xla"]
    finally:
        monkeypatch.delenv(jax_backend.FFI_ENV)
        jax_backend._ffi_available.cache_clear()


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_tiled_max_pool_gives_ties_derivative_as_keras_does(rng, data_format):
    from involution.ops import pool

    # After a ReLU most 2x2 tiles of a sparse map tie at zero, and some
    # positive values repeat: the first maximum takes the derivative.
    x = np.maximum(rng.normal(size=(2, 7, 6, 3)), 0).astype("float32")
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = x[0, 1, 0, 0] = 2.0
    x = ref.from_channels_last(x, data_format)
    weights = jnp.asarray(rng.normal(size=pool(x, 2, 2, "max", data_format, "reference").shape), "float32")

    def loss(inputs, implementation):
        return jnp.sum(pool(inputs, 2, 2, "max", data_format, implementation) * weights)

    for order in range(2):
        grads = {}
        for implementation in ("fast", "reference"):
            fn = functools.partial(loss, implementation=implementation)
            grad = jax.grad(fn)
            if order:  # forward over reverse: the pool is piecewise linear, so zero
                grad = lambda inputs, g=grad: jax.jvp(g, (inputs,), (jnp.ones_like(inputs),))[1]  # noqa: E731
            grads[implementation] = np.asarray(jax.jit(grad)(jnp.asarray(x)))
        np.testing.assert_array_equal(grads["fast"], grads["reference"])
    np.testing.assert_array_equal(np.asarray(pool(x, (2, 2), (2, 2), "max", data_format, "fast")),
                                  np.asarray(pool(x, 2, 2, "max", data_format, "reference")))
    assert jax_backend.pool_reason(x, 2, 2, "max", data_format) is None
    assert "overlap" in jax_backend.pool_reason(x, 3, 2, "max", data_format)
