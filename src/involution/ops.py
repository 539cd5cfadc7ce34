"""The involution apply step: multiply-add of generated kernels with neighbourhoods.

`involution_apply` is the single dispatch point between the portable
`keras.ops` formulation (the tested reference) and the backend-specific fast
paths. Both take the kernel exactly as the kernel generator produces it, so
the layer never needs to know which one ran.
"""

import functools

import keras
from keras import ops

DATA_FORMATS = ("channels_last", "channels_first")
IMPLEMENTATIONS = ("auto", "reference", "fast")


def output_size(size, stride):
    """Spatial output size of an involution: `ceil(size / stride)`.

    The padding is symmetric, `dilation * (kernel_size - 1) // 2` per side,
    which for odd kernel sizes makes this independent of kernel size and
    dilation. `None` (unknown size) stays `None`.
    """
    if size is None:
        return None
    return -(-size // stride)


def kernel_shape(input_shape, stride, taps, data_format):
    """Shape of the generated kernel, `(B, Ho, Wo, taps)` or `(B, taps, Ho, Wo)`."""
    if data_format == "channels_last":
        batch, height, width, _ = input_shape
        return (batch, output_size(height, stride), output_size(width, stride), taps)
    batch, _, height, width = input_shape
    return (batch, taps, output_size(height, stride), output_size(width, stride))


def standardize_data_format(data_format):
    """Returns a valid data format, defaulting to Keras' image data format."""
    if data_format is None:
        return keras.config.image_data_format()
    if data_format not in DATA_FORMATS:
        raise ValueError(
            "The `data_format` argument must be one of "
            f"{DATA_FORMATS}. Received: data_format={data_format!r}"
        )
    return data_format


def involution_apply(
    inputs,
    kernel,
    kernel_size,
    stride=1,
    dilation=1,
    groups=1,
    data_format=None,
    implementation="auto",
):
    """Applies position-specific, channel-shared kernels to an input.

    For every output pixel `(i, j)` and channel `c` of group
    `g = c // (C // groups)`:

    `out[i, j, c] = sum_k kernel[i, j, g * K * K + k] * x_pad[i * s + ky * d,
    j * s + kx * d, c]` with `k = ky * K + kx`.

    Args:
        inputs: 4D tensor, `(batch, height, width, channels)` for
            `"channels_last"` or `(batch, channels, height, width)` for
            `"channels_first"`.
        kernel: 4D tensor of generated kernels, `(batch, out_height,
            out_width, groups * kernel_size**2)` for `"channels_last"` or
            `(batch, groups * kernel_size**2, out_height, out_width)` for
            `"channels_first"`. The channel index is group-major:
            `g * kernel_size**2 + k`.
        kernel_size: int, odd, the side of the square window.
        stride: int, the step between windows.
        dilation: int, the spacing between window taps.
        groups: int, the number of channel groups; must divide `channels`.
        data_format: `"channels_last"`, `"channels_first"` or `None` for
            `keras.config.image_data_format()`.
        implementation: `"auto"` (the fast path of the current backend when
            it has one), `"reference"` (the portable `keras.ops` path) or
            `"fast"` (the backend's fast path; an error where none exists).

    Returns:
        A tensor shaped like `inputs` with spatial size
        `ceil(size / stride)`.
    """
    data_format = standardize_data_format(data_format)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"The `implementation` argument must be one of {IMPLEMENTATIONS}. "
            f"Received: implementation={implementation!r}"
        )
    fast_path = _fast_path_for_backend()
    if implementation == "fast" and fast_path is None:
        raise ValueError(
            "`implementation='fast'` is not available on the "
            f"{keras.backend.backend()!r} backend. Use 'auto' or 'reference'."
        )
    if implementation != "reference" and fast_path is not None:
        inputs = ops.convert_to_tensor(inputs)
        kernel = ops.convert_to_tensor(kernel, dtype=inputs.dtype)
        return fast_path(
            inputs, kernel, kernel_size, stride, dilation, groups, data_format
        )
    return involution_apply_reference(
        inputs, kernel, kernel_size, stride, dilation, groups, data_format
    )


@functools.lru_cache(maxsize=None)
def _fast_path_for_backend():
    """The backend's fast apply function, or None where there is none.

    Cached: Keras' backend is fixed for the life of the process, and this
    runs on every layer call.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from involution.backends.tensorflow_backend import involution_apply as fast
    elif backend == "jax":
        from involution.backends.jax_backend import involution_apply as fast
    elif backend == "torch":
        from involution.backends.torch_backend import involution_apply as fast
    else:
        return None
    return fast


def involution_apply_reference(
    inputs, kernel, kernel_size, stride, dilation, groups, data_format
):
    """The portable `keras.ops` apply step: shift and accumulate.

    It loops over the `kernel_size**2` window offsets and accumulates one
    strided view of the padded input per offset, scaled by that offset's
    kernel weight broadcast over the group's channels. This never builds the
    `kernel_size**2`-times larger patch tensor that unfold-style
    implementations materialise, and it needs no reshape of dynamically
    sized tensors, so it runs unchanged on every backend and under
    `keras.Input((None, None, C))`.
    """
    channels_last = data_format == "channels_last"
    channel_axis = -1 if channels_last else 1
    channels = inputs.shape[channel_axis]
    channels_per_group = channels // groups
    taps = kernel_size * kernel_size

    pad = dilation * (kernel_size - 1) // 2
    if channels_last:
        padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
        out_height, out_width = ops.shape(kernel)[1], ops.shape(kernel)[2]
    else:
        padding = [[0, 0], [0, 0], [pad, pad], [pad, pad]]
        out_height, out_width = ops.shape(kernel)[2], ops.shape(kernel)[3]
    padded = ops.pad(inputs, padding)

    # A window that starts at `offset` and yields `count` rows with step
    # `stride` ends at offset + (count - 1) * stride + 1.
    row_span = (out_height - 1) * stride + 1
    col_span = (out_width - 1) * stride + 1

    output = None
    for tap in range(taps):
        row0 = (tap // kernel_size) * dilation
        col0 = (tap % kernel_size) * dilation
        if channels_last:
            window = padded[
                :,
                row0 : row0 + row_span : stride,
                col0 : col0 + col_span : stride,
                :,
            ]
            tap_weights = kernel[..., tap::taps]
        else:
            window = padded[
                :,
                :,
                row0 : row0 + row_span : stride,
                col0 : col0 + col_span : stride,
            ]
            tap_weights = kernel[:, tap::taps]
        if channels_per_group > 1:
            tap_weights = ops.repeat(
                tap_weights, channels_per_group, axis=channel_axis
            )
        term = window * tap_weights
        output = term if output is None else output + term
    return output


def pool(inputs, size, strides, mode, data_format):
    """`keras.ops.max_pool` / `average_pool` ("valid"), without PyTorch's layout copies.

    Keras' PyTorch backend copies channels_last inputs to a contiguous
    channels_first tensor and pools that; PyTorch pools a permuted view
    (its channels_last memory format) directly, in about half the time
    (forward and backward, 2x2 pooling of a CIFAR network's feature maps).
    The other backends pool channels_last natively.
    """
    pooling = ops.max_pool if mode == "max" else ops.average_pool
    if data_format == "channels_last" and keras.backend.backend() == "torch":
        pooled = pooling(ops.transpose(inputs, (0, 3, 1, 2)), size, strides, "valid", "channels_first")
        return ops.transpose(pooled, (0, 2, 3, 1))
    return pooling(inputs, size, strides, "valid", data_format)


def average_pool_same(inputs, size, data_format):
    """Average pooling by `size` with TensorFlow's "same" rule, on every backend.

    The windows tile the input padded by `(-n) % size` (the smaller half
    first) and average only the real pixels, so the output is
    `ceil(n / size)`. Keras' own `padding="same"` pooling disagrees across
    backends for some sizes (PyTorch, width 8 with size 3), which would make
    a layer's kernels depend on the backend.
    """
    axes = (1, 2) if data_format == "channels_last" else (2, 3)
    paddings = [[0, 0]] * 4
    for axis in axes:
        total = (-ops.shape(inputs)[axis]) % size
        paddings[axis] = [total // 2, total - total // 2]
    if all(isinstance(pad, int) and pad == 0 for axis in axes for pad in paddings[axis]):
        return pool(inputs, size, size, "average", data_format)
    ones = ops.ones_like(inputs[..., :1] if data_format == "channels_last" else inputs[:, :1])
    summed = pool(ops.pad(inputs, paddings), size, size, "average", data_format)
    counts = pool(ops.pad(ones, paddings), size, size, "average", data_format)
    return summed / counts


def kernel_for_display(kernel, kernel_size, groups, data_format):
    """Rearranges generator output into the seed's returned kernel layout.

    `(batch, H, W, G*K*K)` becomes `(batch, H, W, K*K, 1, G)` for
    `"channels_last"`, and `(batch, G*K*K, H, W)` becomes
    `(batch, G, 1, K*K, H, W)` for `"channels_first"` (the official PyTorch
    layout, the channels_last one with its non-batch axes reversed). Summing
    over the last three (resp. axes 1-3) gives one value per pixel.
    """
    taps = kernel_size * kernel_size
    if data_format == "channels_last":
        per_group = [kernel[..., g * taps : (g + 1) * taps] for g in range(groups)]
        return ops.expand_dims(ops.stack(per_group, axis=-1), axis=-2)
    per_group = [kernel[:, g * taps : (g + 1) * taps] for g in range(groups)]
    return ops.expand_dims(ops.stack(per_group, axis=1), axis=2)
