"""The geometry every path of the apply step shares: padding, taps, sizes.

The padding is symmetric, `dilation * (kernel_size - 1) // 2` per side, and
the output has `ceil(size / stride)` pixels per spatial axis: every input
size keeps its kernel and windows aligned (see `docs/design.md`).
"""


def channel_axis(data_format):
    """The channel axis of a 4D tensor in `data_format`."""
    return -1 if data_format == "channels_last" else 1


def padding(kernel_size, dilation=1):
    """Zero padding on each side of a spatial axis."""
    return dilation * (kernel_size - 1) // 2


def tap_offsets(kernel_size, dilation=1):
    """(row, column) offset in the padded input of every kernel tap, in order."""
    return [((t // kernel_size) * dilation, (t % kernel_size) * dilation) for t in range(kernel_size * kernel_size)]


def output_size(size, stride):
    """Output pixels along an axis of `size` pixels: `ceil(size / stride)`.

    With the symmetric padding above and an odd kernel size it depends on
    neither the kernel size nor the dilation. `None` (unknown) stays `None`.
    """
    if size is None:
        return None
    return -(-size // stride)
