"""Backend-specific fast paths, one module per Keras backend.

`involution.ops` is their only caller and chooses between them and the
portable `keras.ops` references (its "Dispatch" section). Each module
exposes what it can run as `<name>_support(...)` predicates (None, or the
reason it cannot), optionally `<name>_preferred(...)` for `"auto"`, the fast
functions themselves (`involution_apply(inputs, kernel, kernel_size, stride,
dilation, groups, data_format)` with the semantics of
`involution.ops.involution_apply_reference`, their tested reference), and
optionally `prepare()`, which builds compiled kernels ahead of the first call.
The modules never import `involution.ops`. The apply paths share one plan
(see `docs/design.md`):

- work in a grouped layout, where a group's kernel broadcasts over its
  channels without copies and the kernel gradient's reduction over channels
  runs over contiguous memory;
- forward: shift and accumulate, one strided view of the padded input per
  kernel tap (or one fused C++ pass);
- gradients that keep only the input and the kernel (not the `K*K` shifted
  views an autodiff of the forward would store), computed with the same
  shift-and-accumulate pattern.
"""

from involution.geometry import padding, tap_offsets  # noqa: F401  (the modules' shared geometry)


def pair(value):
    """A pooling size or stride as `(rows, cols)`."""
    return (value, value) if isinstance(value, int) else tuple(value)


def window(padded, row, col, stride, out_h, out_w):
    """The strided view of a padded `(..., H, W)` tensor that one tap reads."""
    return padded[
        ..., row : row + (out_h - 1) * stride + 1 : stride, col : col + (out_w - 1) * stride + 1 : stride
    ]
