"""The bindings of the kernel registry, one module per Keras backend.

`involution.registry` declares every kernel and imports its binding, the
module `<backend>_backend`, when that backend runs; the modules never
import the registry or `involution.ops`. For each entry a binding defines
the functions the entry names: `<kernel>_reason(**arguments)` (None, or
why the kernel cannot run these arguments), optionally a preference that
`"auto"` asks too, and the kernel itself, with the semantics of the op's
`keras.ops` reference; plus `available(entry)` (whether it can run on
this machine at all: built, device) and `prepare()`, which builds
compiled kernels ahead of the first call. The C++ sources (the loops in
`*_kernels.h`, the framework bindings in `involution_cpu.cpp`,
`involution_tf.cpp`, `involution_ffi.cpp`) live beside them.
The apply paths share one plan
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


def too_few_channels(inputs, groups, data_format, minimum, faster):
    """Why `"auto"` passes over the C++ loops for this input, or None.

    Their vectors are 8 channels wide: with fewer channels per group (the
    Keras example's 3) they are mostly empty and `faster` wins.
    """
    channels = inputs.shape[-1 if data_format == "channels_last" else 1] // groups
    if channels < minimum:
        return f"fewer than {minimum} channels per group ({channels}): {faster} is faster"
    return None


def pair(value):
    """A pooling size or stride as `(rows, cols)`."""
    return (value, value) if isinstance(value, int) else tuple(value)


def window(padded, row, col, stride, out_h, out_w):
    """The strided view of a padded `(..., H, W)` tensor that one tap reads."""
    return padded[
        ..., row : row + (out_h - 1) * stride + 1 : stride, col : col + (out_w - 1) * stride + 1 : stride
    ]
