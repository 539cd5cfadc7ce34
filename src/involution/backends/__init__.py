"""Backend-specific fast paths of the involution apply step.

Each module exposes `involution_apply(inputs, kernel, kernel_size, stride,
dilation, groups, data_format)` with the semantics of
`involution.ops.involution_apply_reference`, which is their tested reference.
They share one plan (see `docs/design.md`):

- work in the grouped channels-first layout `(B, G, C/G, H, W)`, where a
  group's kernel broadcasts over its channels without copies and the kernel
  gradient's reduction over channels runs over contiguous planes;
- forward: shift and accumulate, one strided view of the padded input per
  kernel tap;
- a custom gradient that keeps only the input and the kernel (not the
  `K*K` shifted views an autodiff of the forward would store) and computes
  both gradients with the same shift-and-accumulate pattern.
"""


def tap_offsets(kernel_size, dilation):
    """(row, column) offset in the padded input of every kernel tap, in order."""
    return [
        ((t // kernel_size) * dilation, (t % kernel_size) * dilation)
        for t in range(kernel_size * kernel_size)
    ]


def window(padded, row, col, stride, out_h, out_w):
    """The strided view of a padded `(..., H, W)` tensor that one tap reads."""
    return padded[
        ..., row : row + (out_h - 1) * stride + 1 : stride, col : col + (out_w - 1) * stride + 1 : stride
    ]
