"""The apply step against the float64 NumPy reference, on every path."""

import itertools

import keras
import numpy as np
import pytest

from involution import ops as involution_ops
from tests import numpy_reference as ref
from tests.backend_utils import alternating, compiled, gradients


# Every backend Keras runs here has a fast apply path.
IMPLEMENTATIONS = ["reference", "fast"]
GRID = [
    (k, s, g, d, size, data_format)
    for k, s, g, d, data_format, size in alternating(
        itertools.product(
            [1, 3, 5, 7],  # kernel_size
            [1, 2, 3],  # stride
            [1, 3],  # groups of 24 channels: 24 and 8 per group, the fused loops' vector blocks and tails
            [1, 2],  # dilation
            ["channels_last", "channels_first"],
        ),
        [(8, 7), (5, 6), (5, 6), (8, 7)],  # (height, width): even and odd, smaller than K; both per format
    )
]


def random_case(rng, batch, height, width, channels, kernel_size, stride, groups, data_format):
    out_h = involution_ops.output_size(height, stride)
    out_w = involution_ops.output_size(width, stride)
    x = rng.standard_normal((batch, height, width, channels)).astype("float32")
    kernel = rng.standard_normal((batch, out_h, out_w, groups * kernel_size**2)).astype(
        "float32"
    )
    if data_format == "channels_first":
        x, kernel = x.transpose(0, 3, 1, 2), kernel.transpose(0, 3, 1, 2)
    return x, kernel


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "kernel_size,stride,groups,dilation,size,data_format",
    GRID,
    ids=[f"k{k}-s{s}-g{g}-d{d}-{h}x{w}-{f[9:]}" for k, s, g, d, (h, w), f in GRID],
)
def test_apply_matches_numpy(
    rng, implementation, kernel_size, stride, groups, dilation, size, data_format
):
    x, kernel = random_case(rng, 2, *size, 24, kernel_size, stride, groups, data_format)
    out = compiled(
        lambda x, kernel: involution_ops.involution_apply(
            x, kernel, kernel_size, stride, dilation, groups, data_format, implementation=implementation
        )
    )(x, kernel)
    expected = ref.involution_apply(x, kernel, kernel_size, stride, dilation, groups, data_format)
    # float32 sums of at most 49 products of unit normals.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, rtol=1e-5, atol=1e-5)


# (channels, groups) that take the fused loops' vector passes every way: up
# to 64 channels per pass, groups of 8, 16, 24, 32, 48, 64 and 96 channels
# (one, two, three, four, six, eight and twelve vectors), a pass spanning
# several groups, a group spanning passes, and a last, partial pass.
CHANNEL_LAYOUTS = [(48, 6), (16, 1), (32, 1), (64, 1), (96, 2), (128, 4), (192, 2), (80, 10), (72, 3)]


@pytest.mark.parametrize("channels,groups", CHANNEL_LAYOUTS)
@pytest.mark.parametrize("kernel_size,stride", [(3, 2), (5, 1)])
def test_apply_and_gradients_match_numpy_for_every_channel_layout(rng, channels, groups, kernel_size, stride):
    # Three images of six rows: split between two threads, one thread's rows
    # span two images (the input gradient regroups each image's kernel).
    x, kernel = random_case(rng, 3, 6, 5, channels, kernel_size, stride, groups, "channels_last")
    upstream = rng.standard_normal(
        ref.involution_apply(x, kernel, kernel_size, stride, 1, groups, "channels_last").shape
    )

    def apply(x_, k_):
        return involution_ops.involution_apply(x_, k_, kernel_size, stride, 1, groups, "channels_last",
                                               implementation="fast")

    def loss(x_, k_):
        out = apply(x_, k_)
        return keras.ops.sum(out * keras.ops.convert_to_tensor(upstream, out.dtype))

    out = keras.ops.convert_to_numpy(apply(x, kernel))
    _, (grad_x, grad_kernel) = gradients(loss, x, kernel)
    expected = ref.involution_apply(x, kernel, kernel_size, stride, 1, groups, "channels_last")
    expected_x, expected_kernel = ref.involution_apply_gradients(x, kernel, upstream, kernel_size, stride, 1, groups)
    # float32 sums of at most 25 products of unit normals (96 for the kernel's gradient).
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_x, expected_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_kernel, expected_kernel, rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("height", [1, 2, 7, 8, 9, 31, 32, 33])
@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_output_size_is_ceil(height, stride):
    # The smallest count of windows, `stride` apart, that covers the axis.
    assert involution_ops.output_size(height, stride) * stride >= height
    assert (involution_ops.output_size(height, stride) - 1) * stride < height


def finite_difference(fn, arrays, index, eps=1e-3):
    """Central differences of a float64 function w.r.t. arrays[index]."""
    base = [np.asarray(a, np.float64) for a in arrays]
    grad = np.zeros_like(base[index])
    it = np.nditer(base[index], flags=["multi_index"])
    for _ in it:
        plus = [a.copy() for a in base]
        minus = [a.copy() for a in base]
        plus[index][it.multi_index] += eps
        minus[index][it.multi_index] -= eps
        grad[it.multi_index] = (fn(*plus) - fn(*minus)) / (2 * eps)
    return grad


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (1, 2), (2, 2)])
def test_gradients_match_finite_differences(rng, implementation, data_format, stride, dilation):
    kernel_size, groups = 3, 2
    x, kernel = random_case(rng, 1, 5, 6, 4, kernel_size, stride, groups, data_format)
    weights = rng.standard_normal(
        ref.involution_apply(x, kernel, kernel_size, stride, dilation, groups, data_format).shape
    )

    def loss_numpy(x_, k_):
        out = ref.involution_apply(x_, k_, kernel_size, stride, dilation, groups, data_format)
        return float(np.sum(out * weights))

    def loss_backend(x_, k_):
        out = involution_ops.involution_apply(
            x_, k_, kernel_size, stride, dilation, groups, data_format,
            implementation=implementation,
        )
        return keras.ops.sum(out * keras.ops.convert_to_tensor(weights, out.dtype))

    value, (grad_x, grad_kernel) = gradients(loss_backend, x, kernel)
    np.testing.assert_allclose(value, loss_numpy(x, kernel), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grad_x, finite_difference(loss_numpy, [x, kernel], 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        grad_kernel, finite_difference(loss_numpy, [x, kernel], 1), rtol=1e-4, atol=1e-4
    )


def test_bad_implementation_is_rejected():
    x = np.zeros((1, 4, 4, 2), "float32")
    kernel = np.zeros((1, 4, 4, 9), "float32")
    with pytest.raises(ValueError, match="implementation='magic'"):
        involution_ops.involution_apply(x, kernel, 3, implementation="magic")


def test_bad_data_format_is_rejected():
    x = np.zeros((1, 4, 4, 2), "float32")
    kernel = np.zeros((1, 4, 4, 9), "float32")
    with pytest.raises(ValueError, match="data_format='NHWC'"):
        involution_ops.involution_apply(x, kernel, 3, data_format="NHWC")


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("size,stride,height", [(2, 2, 8), (2, 2, 7), (3, 2, 9), (3, 1, 5)])
def test_pool_matches_numpy(rng, mode, data_format, size, stride, height):
    x = rng.normal(size=(2, height, height + 1, 5))
    upstream = rng.normal(size=(2, (height - size) // stride + 1, (height + 1 - size) // stride + 1, 5))
    expected, expected_grad = ref.pool_with_gradient(x, size, stride, mode, upstream)
    weights = ref.from_channels_last(upstream, data_format).astype("float32")

    def weighted_sum(inputs):
        pooled = involution_ops.pool(inputs, size, stride, mode, data_format)
        return keras.ops.sum(pooled * keras.ops.convert_to_tensor(weights))

    inputs = ref.from_channels_last(x, data_format).astype("float32")
    pooled = keras.ops.convert_to_numpy(involution_ops.pool(inputs, size, stride, mode, data_format))
    np.testing.assert_allclose(ref.to_channels_last(pooled, data_format), expected, rtol=1e-6, atol=1e-6)
    _, (grad,) = gradients(weighted_sum, inputs)
    np.testing.assert_allclose(ref.to_channels_last(grad, data_format), expected_grad, rtol=1e-5, atol=1e-6)
