"""The library's ops: the involution apply step and pooling.

Each op is its portable `keras.ops` formulation, the tested reference, and
the kernels of `involution.registry`, which `registry.choose` picks from.
The kernels take the arguments exactly as the reference does, so a layer
never needs to know which one ran.
"""

import keras
from keras import ops

from involution import registry
from involution.geometry import output_size, padding, tap_offsets  # noqa: F401  (output_size: public here)

DATA_FORMATS = ("channels_last", "channels_first")


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
        implementation: `"auto"` (the first kernel of `involution.registry`
            that runs these arguments, else the reference), `"reference"`
            (the portable `keras.ops` path), `"fast"` (a kernel; an error
            where none can run) or a kernel's name (`"torch-cpp"`, ...).

    Returns:
        A tensor shaped like `inputs` with spatial size
        `ceil(size / stride)`.
    """
    data_format = standardize_data_format(data_format)
    registry.check_implementation(implementation, "apply")
    inputs = ops.convert_to_tensor(inputs)
    kernel = ops.convert_to_tensor(kernel, dtype=inputs.dtype)
    check_apply_arguments(
        inputs.shape, kernel.shape, kernel_size, stride, dilation, groups, data_format
    )
    arguments = dict(inputs=inputs, kernel=kernel, kernel_size=kernel_size, stride=stride, dilation=dilation,
                     groups=groups, data_format=data_format)
    chosen = registry.choose("apply", implementation, **arguments)
    if chosen is not None:
        return chosen(**arguments)
    return involution_apply_reference(**arguments)


def check_positive_int(value, name, odd=False):
    """Validates an integer hyperparameter, with a Keras-style message."""
    expected = "a positive odd integer" if odd else "a positive integer"
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if valid and odd:
        valid = value % 2 == 1
    if not valid:
        raise ValueError(f"The `{name}` argument must be {expected}. Received: {name}={value!r}")
    return value


def check_apply_arguments(input_shape, kernel_shape, kernel_size, stride, dilation, groups, data_format):
    """Raises a `ValueError` unless `kernel` fits `inputs` for these arguments.

    Every apply path, the fused C++ loops included, relies on these shapes
    to address memory, so they are checked before any of them runs.
    Dimensions unknown while tracing (`None`) are checked where the
    backend knows them (the C++ entry points check their buffers again).

    Args:
        input_shape: the input's shape, 4D.
        kernel_shape: the kernel's shape, 4D.
        kernel_size, stride, dilation, groups, data_format: as in
            `involution_apply`.
    """
    check_positive_int(kernel_size, "kernel_size", odd=True)
    check_positive_int(stride, "stride")
    check_positive_int(dilation, "dilation")
    check_positive_int(groups, "groups")
    input_shape, kernel_shape = tuple(input_shape), tuple(kernel_shape)
    layout = "(batch, height, width, channels)" if data_format == "channels_last" else (
        "(batch, channels, height, width)")
    if len(input_shape) != 4:
        raise ValueError(
            f"The `inputs` argument must be a 4D tensor {layout} ({data_format}). "
            f"Received: inputs.shape={input_shape}"
        )
    channel_axis = 3 if data_format == "channels_last" else 1
    spatial_axes = (1, 2) if data_format == "channels_last" else (2, 3)
    channels = input_shape[channel_axis]
    if channels is not None and channels % groups:
        raise ValueError(
            f"The `groups` argument must divide the input's channels ({channels}). "
            f"Received: groups={groups}"
        )
    taps = groups * kernel_size * kernel_size
    expected = [None] * 4
    expected[0] = input_shape[0]
    expected[channel_axis] = taps
    for axis in spatial_axes:
        expected[axis] = output_size(input_shape[axis], stride)
    if len(kernel_shape) != 4 or any(
        want is not None and got is not None and want != got
        for want, got in zip(expected, kernel_shape)
    ):
        shown = tuple("?" if dim is None else dim for dim in expected)
        raise ValueError(
            f"The `kernel` argument must have shape {shown}: the input's batch, "
            f"ceil(size / stride) pixels (stride={stride}) and groups * kernel_size**2 "
            f"= {groups} * {kernel_size}**2 = {taps} taps ({data_format}). "
            f"Received: kernel.shape={kernel_shape} for inputs.shape={input_shape}"
        )


def prepare_kernels():
    """Builds (or loads from its cache) the current backend's compiled kernels.

    Layers call this from `build`, so that the first call of a model, which
    `torch.compile` or `jax.jit` may be tracing, finds them ready.
    """
    registry.prepare()


def involution_apply_reference(
    inputs, kernel, kernel_size, stride, dilation, groups, data_format
):
    """The portable `keras.ops` apply step: shift and accumulate.

    It loops over the `kernel_size**2` window offsets and accumulates one
    strided view of the padded input per offset, scaled by that offset's
    kernel weight broadcast over the group's channels. This never builds the
    `kernel_size**2`-times larger patch tensor that unfold-style
    implementations materialise, and it reshapes only tensors of known
    spatial size, so it runs unchanged on every backend and under
    `keras.Input((None, None, C))`.
    """
    channels_last = data_format == "channels_last"
    channel_axis = -1 if channels_last else 1
    channels = inputs.shape[channel_axis]
    channels_per_group = channels // groups
    taps = kernel_size * kernel_size

    pad = padding(kernel_size, dilation)
    spatial = (1, 2) if channels_last else (2, 3)
    paddings = [[0, 0]] * 4
    for axis in spatial:
        paddings[axis] = [pad, pad]
    padded = ops.pad(inputs, paddings)
    height, width = (_static(padded.shape[axis]) for axis in spatial)
    out_height, out_width = (_static(ops.shape(kernel)[axis]) for axis in spatial)
    # With known sizes the group axis is split off, (B, H, W, G, C/G) or
    # (B, G, C/G, H, W), so that a group's kernel broadcasts over its
    # channels; exporters (ONNX) also follow these shapes best. Unknown
    # sizes keep the 4D layout, where the kernel is repeated per channel.
    grouped = all(isinstance(size, int) for size in (height, width, out_height, out_width))
    if grouped:
        if channels_last:
            padded = ops.reshape(padded, (-1, height, width, groups, channels_per_group))
            kernel = ops.reshape(kernel, (-1, out_height, out_width, groups, taps))
        else:
            padded = ops.reshape(padded, (-1, groups, channels_per_group, height, width))
            kernel = ops.reshape(kernel, (-1, groups, taps, out_height, out_width))

    # A window that starts at `offset` and yields `count` rows with step
    # `stride` ends at offset + (count - 1) * stride + 1.
    row_span = (out_height - 1) * stride + 1
    col_span = (out_width - 1) * stride + 1

    output = None
    for tap, (row0, col0) in enumerate(tap_offsets(kernel_size, dilation)):
        rows = slice(row0, row0 + row_span, stride)
        cols = slice(col0, col0 + col_span, stride)
        if channels_last:
            window = padded[:, rows, cols]
            tap_weights = kernel[..., tap : tap + 1] if grouped else kernel[..., tap::taps]
        else:
            window = padded[..., rows, cols]
            tap_weights = kernel[:, :, tap : tap + 1] if grouped else kernel[:, tap::taps]
        if not grouped and channels_per_group > 1:
            tap_weights = ops.repeat(tap_weights, channels_per_group, axis=channel_axis)
        term = window * tap_weights
        output = term if output is None else output + term
    if grouped:
        if channels_last:
            output = ops.reshape(output, (-1, out_height, out_width, channels))
        else:
            output = ops.reshape(output, (-1, channels, out_height, out_width))
    return output


def _static(size):
    """A known size as a Python int, else the backend's symbolic size.

    Tracers (TorchScript's, behind PyTorch's ONNX export) hand out sizes that
    they record as computations; a known size is a constant of the traced
    program, and shape arithmetic on it stays out of the exported graph.
    """
    try:
        return int(size)
    except (TypeError, ValueError):  # None, or a symbolic size
        return size


def pool(inputs, size, strides, mode, data_format, implementation="auto"):
    """`keras.ops.max_pool` / `average_pool` ("valid"), or a pooling kernel.

    Kernels (`involution.registry`, op `"pool"`) exist on PyTorch, whose
    Keras pooling copies channels_last maps to channels_first and back; on
    JAX for tiling windows (`size == strides`), whose max pooling XLA
    differentiates with a slow scatter on the CPU; and on CPU-only
    TensorFlow for square channels_last tiles, a C++ op each way.
    """
    inputs = ops.convert_to_tensor(inputs)
    arguments = dict(inputs=inputs, size=size, strides=strides, mode=mode, data_format=data_format)
    chosen = registry.choose("pool", implementation, **arguments)
    if chosen is not None:
        return chosen(**arguments)
    pooling = ops.max_pool if mode == "max" else ops.average_pool
    return pooling(inputs, size, strides, "valid", data_format)


def average_pool_same(inputs, size, data_format, implementation="auto"):
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
        return pool(inputs, size, size, "average", data_format, implementation)
    ones = ops.ones_like(inputs[..., :1] if data_format == "channels_last" else inputs[:, :1])
    summed = pool(ops.pad(inputs, paddings), size, size, "average", data_format, implementation)
    counts = pool(ops.pad(ones, paddings), size, size, "average", data_format, implementation)
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
