"""The Pallas kernels (JAX) against the float64 NumPy reference.

On a machine without a GPU they run in Pallas' interpret mode on the CPU
(`involution.config.set_pallas_interpret(True)`): forward, both gradients
and second order (reverse over reverse, and forward mode) on every case of
`gpu_cases.CASES`, float16, both data formats, and the primitives'
behaviour under `jax.export` (XLA's form) and `vmap`; and Pallas' Triton
lowering of every kernel for CUDA.
"""

import keras
import numpy as np
import pytest

from tests.kernels import gpu_cases

if keras.backend.backend() != "jax":
    pytest.skip("JAX backend only", allow_module_level=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from involution import config, involution_apply, registry  # noqa: E402
from involution.backends import jax_backend  # noqa: E402

# `jax.enable_x64` (the context manager) is newer than the oldest JAX supported.
enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64


@pytest.fixture(autouse=True)
def interpret_on_the_cpu():
    config.set_pallas_interpret(True)
    with enable_x64(True):
        yield
    config.set_pallas_interpret(None)


def pallas(case):
    kernel_size, stride, dilation, groups = gpu_cases.geometry(case)

    def apply(x, kernel):
        return involution_apply(x, kernel, kernel_size, stride, dilation, groups, "channels_last",
                                implementation="pallas")

    return apply


def check(actual, expected, tolerance=gpu_cases.FLOAT64_TOLERANCE):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, **tolerance)


@pytest.mark.parametrize("case", sorted(gpu_cases.CASES))
def test_values_gradients_and_second_order(rng, case):
    x, kernel, upstream, v, w = gpu_cases.arrays(rng, case)
    expected = gpu_cases.expected(case, x, kernel, upstream, v, w)
    apply = pallas(case)
    out, pullback = jax.vjp(apply, x, kernel)
    check(out, expected["out"])
    grad_x, grad_kernel = pullback(upstream)
    check(grad_x, expected["grad_x"])
    check(grad_kernel, expected["grad_kernel"])

    def gradients(x, kernel, upstream):
        return jax.vjp(apply, x, kernel)[1](upstream)

    # Reverse over reverse: the gradients of sum(grad_x * v) and sum(grad_kernel * w).
    by_kernel, by_upstream = jax.grad(lambda k, u: jnp.sum(gradients(x, k, u)[0] * v), argnums=(0, 1))(
        kernel, upstream)
    check(by_kernel, expected["grad_x_v_by_kernel"])
    check(by_upstream, expected["grad_x_v_by_upstream"])
    by_x, by_upstream = jax.grad(lambda a, u: jnp.sum(gradients(a, kernel, u)[1] * w), argnums=(0, 1))(
        x, upstream)
    check(by_x, expected["grad_kernel_w_by_x"])
    check(by_upstream, expected["grad_kernel_w_by_upstream"])
    # Forward over reverse: the directional derivative of grad_x along the
    # kernel is the input gradient of the direction.
    _, tangent = jax.jvp(lambda k: gradients(x, k, upstream)[0], (kernel,), (w,))
    check(tangent, expected["grad_kernel_w_by_x"])


@pytest.mark.parametrize("case", ["odd-3-per-group", "one-group-stride2-dilation2"])
def test_float16_accumulates_in_float32(rng, case):
    arrays = gpu_cases.arrays(rng, case)
    x, kernel, upstream = (jnp.asarray(a, jnp.float16) for a in arrays[:3])
    out, pullback = jax.vjp(pallas(case), x, kernel)
    grad_x, grad_kernel = pullback(upstream)
    assert out.dtype == grad_x.dtype == grad_kernel.dtype == jnp.float16
    expected = gpu_cases.expected(case, *(a.astype(np.float16).astype(np.float64) for a in arrays))
    check(out, expected["out"], gpu_cases.FLOAT16_TOLERANCE)
    check(grad_x, expected["grad_x"], gpu_cases.FLOAT16_TOLERANCE)
    check(grad_kernel, expected["grad_kernel"], gpu_cases.FLOAT16_TOLERANCE)


def test_channels_first_and_vmap(rng):
    case = "3-per-group-stride2-dilation2"
    x, kernel, upstream, v, w = gpu_cases.arrays(rng, case)
    args = gpu_cases.geometry(case)
    expected = gpu_cases.expected(case, x, kernel, upstream, v, w)["out"]
    out = involution_apply(x.transpose(0, 3, 1, 2), kernel.transpose(0, 3, 1, 2), *args, "channels_first",
                           implementation="pallas")
    check(out, expected.transpose(0, 3, 1, 2))
    # vmap folds the mapped axis into the batch.
    stacked = jax.vmap(pallas(case))(x[:, None], kernel[:, None])
    check(stacked[:, 0], expected)


def test_export_gets_xla_form(rng):
    case = "odd-3-per-group"
    x, kernel, *_ = gpu_cases.arrays(rng, case)
    exported = jax.export.export(jax.jit(pallas(case)))(x, kernel)
    assert "while" not in exported.mlir_module()  # the interpret-mode grid loop
    check(exported.call(x, kernel), gpu_cases.expected(case, x, kernel, *_)["out"])


def test_reasons_and_choice(rng):
    x, kernel = jnp.zeros((1, 5, 5, 16)), jnp.zeros((1, 5, 5, 9))
    arguments = dict(inputs=x, kernel=kernel, kernel_size=3, stride=1, dilation=1, groups=1,
                     data_format="channels_last")
    # "auto" passes over interpret mode.
    assert getattr(registry.choose("apply", "auto", **arguments), "name", None) not in (None, "pallas")
    with pytest.raises(ValueError, match="dtypes differ"):
        registry.choose("apply", "pallas", **dict(arguments, kernel=kernel.astype(jnp.float32)))
    config.set_pallas_interpret(False)
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="INVOLUTION_PALLAS_INTERPRET=1"):
            registry.choose("apply", "pallas", **arguments)
        row = {row["name"]: row for row in registry.explain()}["pallas"]
        assert not row["available"] and "interpret mode is off" in row["reason"]


def test_pallas_path_lowers_to_the_kernels(rng):
    x, kernel = jnp.ones((1, 5, 5, 4)), jnp.ones((1, 5, 5, 9))

    def lowered(path):
        return jax.jit(lambda a, b: jax_backend.fused_involution(a, b, 1, 3, 1, 1, path=path)).lower(
            x, kernel).as_text()

    assert "while" in lowered("pallas") and "while" not in lowered("xla")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kernels_lower_to_triton_for_cuda(dtype):
    """Pallas' Triton lowering of every kernel, for CUDA, with no GPU needed:
    `jax.export` lowers for a platform this machine lacks."""
    from involution.kernels.pallas import involution as pallas_kernels

    def spec(*shape):
        return jax.ShapeDtypeStruct(shape, dtype)

    # RedNet's stride-2 block shape, scaled down: 14x14x64 in, 4 groups, K=7.
    calls = {"apply": (spec(2, 14, 14, 64), spec(2, 7, 7, 196), (2, 7, 7, 64)),
             "input_gradient": (spec(2, 7, 7, 64), spec(2, 7, 7, 196), (2, 14, 14, 64)),
             "correlate": (spec(2, 14, 14, 64), spec(2, 7, 7, 64), (2, 7, 7, 196))}
    # The Triton custom call has no serialization guarantee; lowering is what is checked.
    checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    for kind, (first, second, out_shape) in calls.items():
        def call(a, b, kind=kind, out_shape=out_shape):
            return pallas_kernels.call(kind, a, b, out_shape, groups=4, kernel_size=7, stride=2, dilation=1,
                                       height=14, width=14, interpret=False)

        exported = jax.export.export(jax.jit(call), platforms=["cuda"], disabled_checks=checks)(first, second)
        assert "xla.gpu.triton" in exported.mlir_module(), kind
