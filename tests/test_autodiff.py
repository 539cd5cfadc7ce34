"""Forward-mode and second-order derivatives of the apply step, every path.

Against the float64 NumPy reference: the JVP of the bilinear apply step is
`A(dx, k) + A(x, dk)`; a Hessian-vector product of
`L = sum(A(x, k)**3 * w) / 3` is compared with central differences of
NumPy's own gradient of L. Both the fused paths (8 channels per group) and
the others (3 per group) run, as does the reference path.
"""

import keras
import numpy as np
import pytest

from involution import ops as involution_ops
from tests import numpy_reference as ref

BACKEND = keras.backend.backend()
# (channels, groups, stride): 8 channels per group reach the C++ loops.
CASES = [(16, 2, 1), (16, 2, 2), (6, 2, 1), (6, 2, 2)]
IMPLEMENTATIONS = ["reference", "fast"]


@pytest.fixture(autouse=True)
def _float64_on_jax():
    """JAX computes in float32 unless x64 is on; these checks are float64."""
    if BACKEND != "jax":
        yield
        return
    import jax

    # `jax.enable_x64` (the context manager) is newer than the
    # `jax.experimental` one, which later versions removed.
    enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64
    with enable_x64(True):
        yield


def case(channels, groups, stride, seed=0):
    rng = np.random.default_rng(seed)
    height, width, kernel_size = 5, 6, 3
    out_h, out_w = -(-height // stride), -(-width // stride)
    x = rng.standard_normal((2, height, width, channels))
    kernel = rng.standard_normal((2, out_h, out_w, groups * kernel_size**2))
    weights = rng.standard_normal((2, out_h, out_w, channels))
    return x, kernel, weights, dict(kernel_size=kernel_size, stride=stride, dilation=1, groups=groups)


def numpy_loss_gradient(x, kernel, weights, geometry):
    out = ref.involution_apply(x, kernel, data_format="channels_last", **geometry)
    return ref.involution_apply_gradients(
        x, kernel, out * out * weights, geometry["kernel_size"], geometry["stride"],
        geometry["dilation"], geometry["groups"],
    )


def numpy_hvp(x, kernel, weights, geometry, vx, vk, eps=1e-6):
    plus = numpy_loss_gradient(x + eps * vx, kernel + eps * vk, weights, geometry)
    minus = numpy_loss_gradient(x - eps * vx, kernel - eps * vk, weights, geometry)
    return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]


def apply(x, kernel, geometry, implementation):
    return involution_ops.involution_apply(
        x, kernel, data_format="channels_last", implementation=implementation, **geometry
    )


def float64_tensor(array):
    """The backend's own float64 tensor (some Keras conversions round to
    float32 on JAX unless x64 was on when Keras started)."""
    if BACKEND == "jax":
        import jax.numpy as jnp

        return jnp.asarray(array)
    if BACKEND == "torch":
        import torch

        return torch.tensor(array)
    import tensorflow as tf

    return tf.constant(array)


def backend_hvp(x, kernel, weights, geometry, vx, vk, implementation):
    """H·v of L by the backend's second-order autodiff."""
    def loss(x_, k_):
        out = apply(x_, k_, geometry, implementation)
        return keras.ops.sum(out * out * out * float64_tensor(weights)) / 3

    if BACKEND == "jax":
        import jax

        return jax.jvp(jax.grad(loss, (0, 1)), (x, kernel), (vx, vk))[1]
    if BACKEND == "torch":
        import torch

        xt, kt = (torch.tensor(a, requires_grad=True) for a in (x, kernel))
        gx, gk = torch.autograd.grad(loss(xt, kt), (xt, kt), create_graph=True)
        directional = (gx * torch.tensor(vx)).sum() + (gk * torch.tensor(vk)).sum()
        return torch.autograd.grad(directional, (xt, kt))
    import tensorflow as tf

    xt, kt = tf.constant(x), tf.constant(kernel)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([xt, kt])
        with tf.GradientTape() as inner:
            inner.watch([xt, kt])
            value = loss(xt, kt)
        gx, gk = inner.gradient(value, [xt, kt])
        directional = tf.reduce_sum(gx * vx) + tf.reduce_sum(gk * vk)
    return outer.gradient(directional, [xt, kt])


def backend_jvp(x, kernel, dx, dk, geometry, implementation):
    if BACKEND == "jax":
        import jax

        return jax.jvp(lambda a, b: apply(a, b, geometry, implementation), (x, kernel), (dx, dk))[1]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xt, kt = tf.constant(x), tf.constant(kernel)
        with tf.autodiff.ForwardAccumulator([xt, kt], [tf.constant(dx), tf.constant(dk)]) as accumulator:
            out = apply(xt, kt, geometry, implementation)
        return accumulator.jvp(out)
    pytest.skip("PyTorch custom ops have no forward-mode rule; torch.func.jvp is not a Keras mechanism")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("channels,groups,stride", CASES)
def test_hessian_vector_product_matches_numpy(implementation, channels, groups, stride):
    x, kernel, weights, geometry = case(channels, groups, stride)
    rng = np.random.default_rng(1)
    vx, vk = rng.standard_normal(x.shape), rng.standard_normal(kernel.shape)
    expected = numpy_hvp(x, kernel, weights, geometry, vx, vk)
    got = backend_hvp(x, kernel, weights, geometry, vx, vk, implementation)
    for g, e in zip(got, expected):
        # float64 throughout; L's gradient is quadratic, so central
        # differences are exact but for rounding (about 1e-9 at eps 1e-6).
        np.testing.assert_allclose(keras.ops.convert_to_numpy(g), e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("channels,groups,stride", CASES)
def test_jvp_matches_numpy(implementation, channels, groups, stride):
    x, kernel, _, geometry = case(channels, groups, stride)
    rng = np.random.default_rng(2)
    dx, dk = rng.standard_normal(x.shape), rng.standard_normal(kernel.shape)
    expected = (ref.involution_apply(dx, kernel, data_format="channels_last", **geometry)
                + ref.involution_apply(x, dk, data_format="channels_last", **geometry))
    got = backend_jvp(x, kernel, dx, dk, geometry, implementation)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's two fast paths by name")
@pytest.mark.parametrize("path", ["ffi", "xla"])
def test_jax_paths_second_order(path):
    import jax

    from involution.backends import jax_backend

    x, kernel, weights, geometry = case(16, 2, 2)
    rng = np.random.default_rng(3)
    vx, vk = rng.standard_normal(x.shape), rng.standard_normal(kernel.shape)

    def loss(a, b):
        out = jax_backend._grouped_apply(a, b, 3, 2, 1, 2, "channels_last", path)
        return keras.ops.sum(out * out * out * float64_tensor(weights)) / 3

    got = jax.jvp(jax.grad(loss, (0, 1)), (x, kernel), (vx, vk))[1]
    for g, e in zip(got, numpy_hvp(x, kernel, weights, geometry, vx, vk)):
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-6, atol=1e-6)
    # vmap folds the mapped axis into the batch.
    batched = jax.vmap(lambda a, b: jax_backend._grouped_apply(a, b, 3, 2, 1, 2, "channels_last", path))(
        np.stack([x, 2 * x]), np.stack([kernel, kernel])
    )
    np.testing.assert_allclose(np.asarray(batched[1]),
                               ref.involution_apply(2 * x, kernel, data_format="channels_last", **geometry),
                               rtol=1e-10, atol=1e-10)
