"""Local self-attention as an involution kernel generator.

Involution's claim (and the Keras example's) is that self-attention is one
point in its design space: attention over a pixel's K×K window computes,
per head, weights `softmax_t(q · k_t / sqrt(d) + r_t)` over the window taps
`t` and takes the weighted sum of the window's values. With the heads as
involution groups and the input's channels as the values, those weights are
exactly an involution kernel, position-specific and shared by the channels
of a group. `LocalAttentionKernelGenerator` produces them, and the ordinary
`Involution` layer applies them, with the same apply step as the paper's
generator.
"""

import math

import keras
import numpy as np
from keras import ops

from involution import ops as involution_ops
from involution import registry
from involution.convolution import PortableConv2D
from involution.geometry import padding, tap_offsets
from involution.layer import Involution, _check_input_shape, _positive_int


def window_logits(queries, keys, kernel_size, stride, dilation, implementation="auto"):
    """`q · k` over every pixel's window, channels_last, per group.

    Args:
        queries: `(B, Ho, Wo, G, d)`, one query per output pixel and group.
        keys: `(B, H, W, G, d)`.
        implementation: `"auto"`, `"reference"`, `"fast"` or a kernel's
            name: whether a kernel of `involution.registry` (op
            `"window_correlation"`) computes the logits.

    Returns:
        `(logits (B, Ho, Wo, G, K*K), valid (1, Ho, Wo, 1, K*K))`: `valid`
        is 1 where the tap lies inside the image (zero padding elsewhere).
    """
    if None in (*queries.shape[1:3], *keys.shape[1:3]):
        pad = padding(kernel_size, dilation)
        inside = ops.pad(ops.ones_like(keys[:1, :, :, :1, :1]), [[0, 0], [pad, pad], [pad, pad], [0, 0], [0, 0]])
        valid = ops.stack(
            [inside[window][..., 0] for window in _windows(queries, kernel_size, stride, dilation)], axis=-1
        )
    else:  # known sizes: a constant, no ops per call
        valid = _valid_taps(keys.shape[1:3], queries.shape[1:3], kernel_size, stride, dilation)
    if None in queries.shape[1:] or None in keys.shape[1:]:
        if implementation not in ("auto", "reference"):
            raise ValueError(
                "The window-correlation kernels need known feature-map sizes. Use 'auto' or 'reference'. "
                f"Received: implementation={implementation!r}"
            )
        return window_logits_reference(queries, keys, kernel_size, stride, dilation), valid
    # The kernels take the channels-last maps with the heads side by side.
    _, out_h, out_w, groups, key_dim = queries.shape
    arguments = dict(keys=ops.reshape(keys, (-1, *keys.shape[1:3], groups * key_dim)),
                     queries=ops.reshape(queries, (-1, out_h, out_w, groups * key_dim)),
                     kernel_size=kernel_size, stride=stride, dilation=dilation, groups=groups)
    kernel = registry.choose("window_correlation", implementation, **arguments)
    if kernel is None:
        return window_logits_reference(queries, keys, kernel_size, stride, dilation), valid
    return ops.reshape(kernel(**arguments), (-1, out_h, out_w, groups, kernel_size * kernel_size)), valid


def _valid_taps(size, out_size, kernel_size, stride, dilation):
    """`(1, Ho, Wo, 1, K*K)` float mask of the taps inside an image of `size`."""
    pad = padding(kernel_size, dilation)

    def inside(out, extent):  # (out, K): does output position o's tap k read the image?
        reads = np.arange(out)[:, None] * stride - pad + np.arange(kernel_size)[None, :] * dilation
        return (reads >= 0) & (reads < extent)

    rows, cols = inside(out_size[0], size[0]), inside(out_size[1], size[1])
    valid = rows[:, None, :, None] & cols[None, :, None, :]  # (Ho, Wo, K, K)
    return valid.reshape(1, out_size[0], out_size[1], 1, kernel_size * kernel_size).astype("float32")


def window_logits_reference(queries, keys, kernel_size, stride, dilation):
    """The `keras.ops` logits: one shifted view of the keys per window tap."""
    pad = padding(kernel_size, dilation)
    padded = ops.pad(keys, [[0, 0], [pad, pad], [pad, pad], [0, 0], [0, 0]])
    return ops.stack(
        [ops.sum(queries * padded[window], axis=-1) for window in _windows(queries, kernel_size, stride, dilation)],
        axis=-1,
    )


def _windows(queries, kernel_size, stride, dilation):
    """Per window tap, the slice of the padded input it reads for every output pixel."""
    out_h, out_w = ops.shape(queries)[1], ops.shape(queries)[2]
    row_span = (out_h - 1) * stride + 1
    col_span = (out_w - 1) * stride + 1
    for row, col in tap_offsets(kernel_size, dilation):
        yield (slice(None), slice(row, row + row_span, stride), slice(col, col + col_span, stride))


@keras.saving.register_keras_serializable(package="involution")
class LocalAttentionKernelGenerator(keras.layers.Layer):
    """Generates involution kernels by local self-attention.

    For every output pixel and group (head) `g`: a query `q = W_q x` (at the
    pixel, average-pooled by `stride` like the paper's generator), keys
    `k = W_k x` at every tap `t` of the K×K window, and a learned relative
    position term `r[g, t]`; the kernel is `softmax_t(q · k_t / sqrt(d) +
    r[g, t])`, with taps outside the image masked out. Plugged into
    `Involution`, the layer computes windowed self-attention whose values
    are the input's channels (group `g`'s channels attend with head `g`).

    Args:
        kernel_size: int, odd, the window side.
        stride: int, the involution's stride.
        group_number: int, the number of heads (= involution groups).
        key_dim: int, the query/key size per head.
        dilation: int, the window's dilation (must match the involution's).
        data_format: `"channels_last"`, `"channels_first"` or None.
        implementation: `"auto"`, `"reference"`, `"fast"` or a kernel's
            name: whether the query-key logits come from a kernel of
            `involution.registry` (op `"window_correlation"`).
        **kwargs: base layer arguments.

    Input shape:
        4D tensor, like `Involution`'s input.

    Output shape:
        `(batch, ceil(H / stride), ceil(W / stride), group_number *
        kernel_size**2)` (channels first for `"channels_first"`),
        group-major; each group's `K*K` weights sum to 1.

    Example:

    >>> generator = LocalAttentionKernelGenerator(7, group_number=4, key_dim=8)
    >>> layer = Involution(group_number=4, kernel_size=7, kernel_generator=generator)
    >>> layer(keras.random.normal((2, 16, 16, 32))).shape
    (2, 16, 16, 32)
    """

    # A kernel's name in `implementation` selects kernels of the op below.
    KERNEL_OP = "window_correlation"

    def __init__(self, kernel_size, stride=1, group_number=1, key_dim=8, dilation=1,
                 data_format=None, implementation="auto", **kwargs):
        super().__init__(**kwargs)
        self.implementation = registry.check_implementation(implementation, "window_correlation")
        self.kernel_size = _positive_int(kernel_size, "kernel_size", odd=True)
        self.stride = _positive_int(stride, "stride")
        self.group_number = _positive_int(group_number, "group_number")
        self.key_dim = _positive_int(key_dim, "key_dim")
        self.dilation = _positive_int(dilation, "dilation")
        self.data_format = involution_ops.standardize_data_format(data_format)

    def build(self, input_shape):
        _check_input_shape(self, input_shape)
        if self.data_format == "channels_first":
            input_shape = (input_shape[0], input_shape[2], input_shape[3], input_shape[1])
        width = self.group_number * self.key_dim
        common = dict(dtype=self.dtype_policy, use_bias=False)
        self.query = PortableConv2D(width, 1, name="query", **common)
        self.key = PortableConv2D(width, 1, name="key", **common)
        self.query.build(input_shape)
        self.key.build(input_shape)
        self.relative_position = self.add_weight(
            shape=(self.group_number, self.kernel_size * self.kernel_size),
            initializer="zeros",
            name="relative_position",
        )

    def call(self, inputs, training=None):
        x = inputs
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, 2, 3, 1))
        pooled = x
        if self.stride > 1:
            pooled = involution_ops.average_pool_same(x, self.stride, "channels_last")
        queries = self._heads(self.query(pooled))
        keys = self._heads(self.key(x))
        logits, valid = window_logits(
            queries, keys, self.kernel_size, self.stride, self.dilation, self.implementation
        )
        logits = logits / math.sqrt(self.key_dim) + ops.cast(self.relative_position, logits.dtype)
        # Taps in the zero padding are not part of the image: mask them out.
        logits = ops.where(valid > 0, logits, ops.full_like(logits, -1e4))
        weights = ops.softmax(logits, axis=-1)  # (B, Ho, Wo, G, K*K)
        kernel = self._merge_heads(weights)
        if self.data_format == "channels_first":
            kernel = ops.transpose(kernel, (0, 3, 1, 2))
        return kernel

    def _heads(self, x):
        """(B, H, W, G*d) -> (B, H, W, G, d)."""
        height, width = x.shape[1], x.shape[2]
        if height is not None and width is not None:
            return ops.reshape(x, (-1, height, width, self.group_number, self.key_dim))
        # Unknown sizes: slices and a stack, which need no dynamic-shape
        # reshape (one op per head, so only where the sizes are unknown).
        return ops.stack(
            [x[..., g * self.key_dim : (g + 1) * self.key_dim] for g in range(self.group_number)],
            axis=-2,
        )

    def _merge_heads(self, weights):
        """(B, Ho, Wo, G, K*K) -> (B, Ho, Wo, G*K*K), group-major."""
        height, width = weights.shape[1], weights.shape[2]
        if height is not None and width is not None:
            return ops.reshape(weights, (-1, height, width, weights.shape[3] * weights.shape[4]))
        return ops.concatenate([weights[..., g, :] for g in range(self.group_number)], axis=-1)

    def compute_output_shape(self, input_shape):
        taps = self.group_number * self.kernel_size * self.kernel_size
        return involution_ops.kernel_shape(input_shape, self.stride, taps, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update({
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "group_number": self.group_number,
            "key_dim": self.key_dim,
            "dilation": self.dilation,
            "data_format": self.data_format,
            "implementation": self.implementation,
        })
        return config


def local_attention(channels, heads, kernel_size=7, stride=1, key_dim=8, name=None, **kwargs):
    """An `Involution` layer whose kernels are local self-attention weights."""
    generator = LocalAttentionKernelGenerator(
        kernel_size, stride=stride, group_number=heads, key_dim=key_dim,
        name=None if name is None else f"{name}_attention",
    )
    return Involution(
        channel=channels, group_number=heads, kernel_size=kernel_size, stride=stride,
        reduction_ratio=1, kernel_generator=generator, name=name, **kwargs,
    )

