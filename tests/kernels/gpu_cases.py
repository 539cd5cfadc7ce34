"""Cases and float64 NumPy expectations shared by the GPU kernels' tests.

The Triton and Pallas kernels run here under their interpreters, which
cost per program and per op: the shapes are small, and still cover odd
sizes, stride 2 with dilation 2, one group, three channels per group and
a 7x7 window.
"""

import numpy as np

from tests import numpy_reference as ref

# (batch, height, width, channels, groups, kernel_size, stride, dilation)
CASES = {
    "odd-3-per-group": (2, 9, 7, 6, 2, 3, 1, 1),
    "one-group-stride2-dilation2": (1, 11, 10, 8, 1, 5, 2, 2),
    "3-per-group-stride2-dilation2": (2, 7, 9, 6, 2, 3, 2, 2),
    "k7-stride2": (1, 11, 10, 32, 4, 7, 2, 1),
}
# float16 storage, float32 accumulation: the error of rounding the inputs
# and the output to float16 (a 2**-11 relative step) over a few dozen terms.
FLOAT16_TOLERANCE = dict(rtol=2e-2, atol=2e-2)
FLOAT64_TOLERANCE = dict(rtol=1e-10, atol=1e-10)


def arrays(rng, case):
    """`(x, kernel, upstream, v, w)`, float64, channels-last: the inputs,
    an output cotangent, and directions for the second-order checks."""
    batch, height, width, channels, groups, kernel_size, stride, _ = CASES[case]
    out_h, out_w = -(-height // stride), -(-width // stride)
    x = rng.standard_normal((batch, height, width, channels))
    kernel = rng.standard_normal((batch, out_h, out_w, groups * kernel_size**2))
    upstream = rng.standard_normal((batch, out_h, out_w, channels))
    return x, kernel, upstream, rng.standard_normal(x.shape), rng.standard_normal(kernel.shape)


def geometry(case):
    """`(kernel_size, stride, dilation, groups)` of `case`."""
    _, _, _, _, groups, kernel_size, stride, dilation = CASES[case]
    return kernel_size, stride, dilation, groups


def expected(case, x, kernel, upstream, v, w):
    """The apply step, its gradients and second-order gradients, float64.

    With `out = A(x, kernel)` and `L = sum(out * upstream)`:
    `grad_x = Gx(upstream, kernel)`, `grad_kernel = Gk(x, upstream)`; and,
    as the three are bilinear and adjoint,
    `d sum(grad_x * v) / d kernel = Gk(v, upstream)`,
    `d sum(grad_x * v) / d upstream = A(v, kernel)`,
    `d sum(grad_kernel * w) / d x = Gx(upstream, w)`,
    `d sum(grad_kernel * w) / d upstream = A(x, w)`.
    """
    kernel_size, stride, dilation, groups = geometry(case)
    args = (kernel_size, stride, dilation, groups)

    def apply(a, b):
        return ref.involution_apply(a, b, *args, "channels_last")

    def gradients(a, b, up):
        return ref.involution_apply_gradients(a, b, up, *args)

    grad_x, grad_kernel = gradients(x, kernel, upstream)
    return {
        "out": apply(x, kernel),
        "grad_x": grad_x,
        "grad_kernel": grad_kernel,
        "grad_x_v_by_kernel": gradients(v, kernel, upstream)[1],
        "grad_x_v_by_upstream": apply(v, kernel),
        "grad_kernel_w_by_x": gradients(x, w, upstream)[0],
        "grad_kernel_w_by_upstream": apply(x, w),
    }
