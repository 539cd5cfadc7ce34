"""`invnet` and `attention_net`: small CIFAR networks whose only spatial
mixing is involution.

`involution_net` widens the Keras example's involution model the way the
paper does (channel mixing by 1x1 convolutions with batch normalization,
spatial mixing by involutions whose kernels are shared by groups of
channels, residual connections), shaped by what a CPU can afford: every
full-resolution tensor pass costs about as much as a convolution, so the
network spends one 1x1 convolution at 32x32, a stride-2 involution down to
16x16, and keeps its residual blocks at 16x16 (3x3 kernels) and 8x8 (7x7
kernels, the paper's size, cheap at that resolution). `attention_net` is
the same layout (3x3 kernels throughout) with local self-attention kernels
(`involution.attention`) in place of the paper's kernel generator.
"""

import keras

from involution.attention import LocalAttentionKernelGenerator
from involution.convolution import PortableConv2D
from involution.dense import PortableDense
from involution.geometry import channel_axis
from involution.layer import Involution, InvolutionKernelGenerator
from involution.ops import standardize_data_format
from involution.models.registry import register_model
from involution.normalization import FusedBatchNormalization, PortableLayerNormalization
from involution.pooling import FusedMaxPooling2D


def _activation(activation, name):
    if activation == "relu":
        return keras.layers.ReLU(name=f"{name}_relu")
    suffix = activation if isinstance(activation, str) else "activation"
    return keras.layers.Activation(activation, name=f"{name}_{suffix}")


def _pointwise(x, filters, name, normalize=True, activate=True, momentum=0.9, regularizer=None,
               normalization="batch", activation="relu", data_format="channels_last"):
    # Without normalization in between, a ReLU is the layer's own activation
    # (one layer fewer; the same function of the same weights).
    fused_activation = "relu" if activate and not normalize and activation == "relu" else None
    # A 1x1 convolution written as a dense layer on the channel axis: one
    # matrix product channels-last, where PyTorch's convolution would copy to
    # channels-first and back for every call; and one `(in, out)` kernel in
    # either layout, so weights move between them.
    x = PortableDense(
        filters, activation=fused_activation, use_bias=not normalize, kernel_regularizer=regularizer,
        axis=channel_axis(data_format), name=f"{name}_pointwise",
    )(x)
    if fused_activation:
        return x
    axis = channel_axis(data_format)
    if normalize and normalization == "batch":
        x = FusedBatchNormalization(axis=axis, momentum=momentum, name=f"{name}_bn")(x)
    elif normalize:
        x = PortableLayerNormalization(axis=axis, epsilon=1e-3, name=f"{name}_ln")(x)
    if activate:
        x = _activation(activation, name)(x)
    return x


def _spatial(x, kernel_size, groups, key_dim, name, stride=1, momentum=0.9, dynamic_init_scale=None,
             reduction_ratio=4, span_regularizer=None, normalization="batch", data_format="channels_last",
             spatial="involution"):
    channels = x.shape[channel_axis(data_format)]
    if spatial == "depthwise":
        # What involution inverts: one K x K kernel per channel, the same at
        # every position. No bias: a 1x1 convolution with batch
        # normalization follows, as after the involution.
        return keras.layers.DepthwiseConv2D(
            kernel_size, strides=stride, padding="same", use_bias=False, data_format=data_format,
            name=name.replace("involution", "depthwise"),
        )(x)
    if spatial == "conv":
        return PortableConv2D(
            channels, kernel_size, strides=stride, padding="same", use_bias=False, data_format=data_format,
            name=name.replace("involution", "conv"),
        )(x)
    if key_dim:
        generator = LocalAttentionKernelGenerator(
            kernel_size, stride=stride, group_number=groups, key_dim=key_dim, data_format=data_format,
            name=f"{name}_attention",
        )
    else:
        initializers = {}
        if dynamic_init_scale is not None:
            # Glorot's variance scaled by the square of the amplitude scale,
            # on top of a static kernel with unit expected squared sum.
            initializers = dict(
                span_initializer=keras.initializers.VarianceScaling(
                    dynamic_init_scale**2, mode="fan_avg", distribution="uniform"
                ),
                span_bias_initializer=keras.initializers.RandomNormal(stddev=1.0 / kernel_size),
            )
        generator = InvolutionKernelGenerator(
            kernel_size, stride=stride, group_number=groups, reduction_ratio=reduction_ratio,
            batch_norm_momentum=momentum, normalization=normalization, span_regularizer=span_regularizer,
            data_format=data_format, name=f"{name}_generator",
            **initializers,
        )
    return Involution(
        channel=channels, group_number=groups, kernel_size=kernel_size, stride=stride,
        reduction_ratio=reduction_ratio, kernel_generator=generator, data_format=data_format, name=name,
    )(x)


def involution_net(input_shape=None, num_classes=10, stem_width=48, stem_groups=6, stem_stride=2,
                   widths=(64, 128), blocks=(2, 2), kernel_size=(3, 7), group_channels=32, hidden_units=None,
                   batch_norm_momentum=0.5, dynamic_init_scale=0.1, dropout=0.0, block_dropout=0.0,
                   normalization="batch", generator_normalization="batch", reduction_ratio=4, span_regularizer=None,
                   pointwise_regularizer=None, activation="relu",
                   attention=False, key_dim=4, spatial="involution", data_format=None, name="invnet"):
    """A residual involution network for CIFAR (81,616 parameters by default).

    Layout: a 1x1 convolution to `stem_width` channels, an involution and
    2x2 max pooling (or a stride-2 involution); then per stage (each after
    the first starting with 2x2 max pooling) a 1x1 convolution to the
    stage's width and `blocks` residual blocks (involution, 1x1
    convolution, batch normalization, add, ReLU); 2x2 max pooling, then
    global average pooling to the logits (any input size), or, with
    `hidden_units`, a head like the Keras example's (flatten, a hidden
    dense layer, logits).

    Args:
        input_shape, num_classes: the data's; `input_shape` defaults to
            32x32 RGB in `data_format`'s layout.
        stem_width: channels of the stem. Its 1x1 convolution runs at
            full resolution, so its cost grows with this width.
        stem_groups: kernels per pixel of the stem's involution. Its input
            is a 1x1 mix of the 3 colour channels, so each kernel filters a
            different colour mix. 6 groups of 8 channels by default: the
            PyTorch backend's fused kernels need at least 8 channels per
            group (finer groups take its slower path).
        stem_stride: 2 for a stride-2 stem involution (its kernels are
            generated from 2x2 average-pooled input), 1 for a stride-1 one
            at full resolution followed by 2x2 max pooling (as the conv
            model pools after its first convolution). Same parameters.
        widths: channels per stage.
        blocks: residual blocks per stage.
        kernel_size: the involutions' kernel size: one for all, or a tuple
            with one per stage (the stem takes the first stage's). By
            default 3x3 at 16x16 and 7x7 at 8x8, where a large window
            costs little.
        group_channels: channels sharing one kernel (per group / head) in
            the residual blocks: 32 by default (2 kernels per pixel at
            16x16, 4 at 8x8), twice the paper's 16.
        hidden_units: None for global average pooling straight to the
            logits, or the width of a hidden dense layer after flattening
            (the Keras example's head).
        batch_norm_momentum: momentum of every batch normalization's
            moving statistics, the kernel generators' included. Far below
            Keras' 0.99, so that the statistics follow weights that Adam
            at a constant learning rate still moves quickly at the end of
            a short schedule; they do not affect training, only inference.
        dynamic_init_scale: how the paper's kernel generators start: their
            input-dependent kernel weights at this fraction of Glorot's
            amplitude, plus a random static kernel per group (the
            generator's bias, N(0, 1/K^2) per tap), so that each involution
            starts as a fixed depthwise filter that learns to vary. None
            for the paper's initialisation (no static kernel), whose random
            per-pixel kernels scramble every neighbourhood at first.
        dropout: dropout rate before the logits (0 for none).
        block_dropout: dropout rate on each residual branch before the
            addition (0 for none).
        normalization: how the 1x1 convolutions are normalised:
            `"batch"` or `"layer"` (over each pixel's channels).
        generator_normalization: the paper's kernel generators'
            normalization: `"batch"`, `"layer"` or None (see
            `InvolutionKernelGenerator`).
        reduction_ratio: the kernel generators' bottleneck: input channels
            divided by this (the paper's 4).
        span_regularizer: regularizer of the generators' last 1x1
            convolution (the input-dependent part of the kernels; see
            `InvolutionKernelGenerator`), None for none.
        pointwise_regularizer: regularizer of the normalised 1x1
            convolutions' kernels, None for none.
        activation: the trunk's activation (after the stage expansions
            and after each residual addition), a name or callable accepted
            by `keras.activations.get`. The stem's 1x1 convolution and the
            kernel generators keep ReLU.
        attention: use `LocalAttentionKernelGenerator` kernels (heads of
            `key_dim` query/key channels) instead of the paper's generator
            in the residual blocks (the stem keeps the paper's).
        key_dim: the attention heads' query/key size.
        spatial: what mixes space: `"involution"`, or, for the matched
            baselines, `"depthwise"` (each involution replaced by a
            depthwise K x K convolution of the same kernel size and
            stride: position-agnostic and channel-specific, what
            involution inverts) or `"conv"` (a full K x K convolution).
        data_format: `"channels_last"`, `"channels_first"` or None
            (`keras.config.image_data_format()`): the layout of the input
            and of every layer. Both build the same network: the same
            weights (a 1x1 convolution's kernel is the channels-last Dense
            kernel with two unit axes) and, for permuted inputs, the same
            logits. `input_shape` is in this layout.
        name: the model's name.

    Returns:
        A functional `keras.Model` from images to logits.
    """
    if len(widths) != len(blocks):
        raise ValueError(
            "`widths` and `blocks` must have one entry per stage. Received: "
            f"widths={widths}, blocks={blocks}"
        )
    kernel_sizes = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * len(widths)
    if len(kernel_sizes) != len(widths):
        raise ValueError(
            "`kernel_size` must be one size or one per stage. Received: "
            f"kernel_size={kernel_size}, widths={widths}"
        )
    key_dim = key_dim if attention else None
    try:
        keras.activations.get(activation)
    except ValueError:
        raise ValueError(
            "`activation` must be a Keras activation (a name such as 'relu' or a "
            f"callable). Received: activation={activation!r}"
        ) from None
    if spatial not in ("involution", "depthwise", "conv"):
        raise ValueError(
            "`spatial` must be 'involution', 'depthwise' or 'conv'. Received: "
            f"spatial={spatial!r}"
        )
    if normalization not in ("batch", "layer"):
        raise ValueError(
            "`normalization` must be 'batch' or 'layer'. Received: "
            f"normalization={normalization!r}"
        )
    data_format = standardize_data_format(data_format)
    if input_shape is None:
        input_shape = (32, 32, 3) if data_format == "channels_last" else (3, 32, 32)
    spatial_options = dict(momentum=batch_norm_momentum, dynamic_init_scale=dynamic_init_scale,
                           reduction_ratio=reduction_ratio, span_regularizer=span_regularizer,
                           normalization=generator_normalization, data_format=data_format, spatial=spatial)
    pool = dict(data_format=data_format)
    inputs = keras.Input(input_shape, name="image")
    x = _pointwise(inputs, stem_width, "stem", normalize=False, data_format=data_format)
    # The stem keeps the paper's generator even in the attention variant: its
    # input is a mix of colours, and (as Stand-Alone Self-Attention found for
    # its convolutional stem) attention logits between raw pixels are a poor
    # first layer; it would also triple the cost of the full-resolution part.
    if stem_stride not in (1, 2):
        raise ValueError(f"`stem_stride` must be 1 or 2. Received: stem_stride={stem_stride}")
    x = _spatial(x, kernel_sizes[0], stem_groups, None, "stem_involution", stride=stem_stride, **spatial_options)
    if stem_stride == 1:
        x = FusedMaxPooling2D(2, name="stem_pool", **pool)(x)
    for stage, (width, count, size) in enumerate(zip(widths, blocks, kernel_sizes), start=1):
        if stage > 1:
            x = FusedMaxPooling2D(2, name=f"stage{stage}_pool", **pool)(x)
        x = _pointwise(x, width, f"stage{stage}_expand", momentum=batch_norm_momentum,
                       regularizer=pointwise_regularizer, normalization=normalization, activation=activation,
                       data_format=data_format)
        for block in range(1, count + 1):
            prefix = f"stage{stage}_block{block}"
            y = _spatial(x, size, max(1, width // group_channels), key_dim, f"{prefix}_involution",
                         **spatial_options)
            y = _pointwise(y, width, f"{prefix}_mix", activate=False, momentum=batch_norm_momentum,
                           regularizer=pointwise_regularizer, normalization=normalization, data_format=data_format)
            if block_dropout:
                y = keras.layers.Dropout(block_dropout, name=f"{prefix}_dropout")(y)
            x = keras.layers.Add(name=f"{prefix}_add")([x, y])
            x = _activation(activation, f"{prefix}_out")(x)
    x = FusedMaxPooling2D(2, name="head_pool", **pool)(x)
    if hidden_units:
        # Flattened in channels-last order in either layout, so that the
        # hidden layer's weights mean the same.
        x = keras.layers.Flatten(name="flatten", **pool)(x)
        x = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool", **pool)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# Variants ---------------------------------------------------------------------


@register_model("invnet")
def invnet_model(input_shape=None, num_classes=10, **kwargs):
    """A residual involution network: 1x1 convs mix channels, involution mixes space."""
    return involution_net(input_shape, num_classes, **kwargs)


@register_model("invnet_depthwise")
def invnet_depthwise_model(input_shape=None, num_classes=10, **kwargs):
    """invnet with depthwise convolutions in place of its involutions: its static counterpart (70,138)."""
    kwargs.setdefault("name", "invnet_depthwise")
    return involution_net(input_shape, num_classes, spatial="depthwise", **kwargs)


# Widths at which invnet's skeleton with full convolutions has invnet's
# parameter count (81,616) within 1% (81,022): a 7x7 convolution over
# invnet's 128 channels alone would hold 800k. The second stage's 7x7
# convolutions take most of the budget, so it stays barely wider than the
# first.
MATCHED_CONV_WIDTHS = dict(stem_width=20, widths=(20, 26))


@register_model("invnet_conv")
def invnet_conv_model(input_shape=None, num_classes=10, **kwargs):
    """invnet's skeleton with full KxK convolutions, narrowed to invnet's parameter count (81,022)."""
    kwargs.setdefault("name", "invnet_conv")
    for key, value in MATCHED_CONV_WIDTHS.items():
        kwargs.setdefault(key, value)
    return involution_net(input_shape, num_classes, spatial="conv", **kwargs)


@register_model("attention_net")
def attention_net_model(input_shape=None, num_classes=10, **kwargs):
    """invnet's first design (3x3 windows, stride-2 stem) with local self-attention kernels."""
    kwargs.setdefault("name", "attention_net")
    kwargs.setdefault("key_dim", 4)
    # Attention logits cost about three times the paper's generator, so the
    # current invnet's 7x7 windows and full-resolution stem would take this
    # network past an hour per 20 epochs here.
    # Pinned so that later changes to invnet's defaults leave this network
    # as it is; the batch-norm momentum is invnet's (its moving statistics'
    # lag at 0.97 cost about two points there, and nothing here differs).
    for key, value in dict(blocks=(2, 2), kernel_size=3, stem_width=24, stem_groups=3, stem_stride=2, group_channels=8,
                           batch_norm_momentum=0.5, dynamic_init_scale=0.1).items():
        kwargs.setdefault(key, value)
    return involution_net(input_shape, num_classes, attention=True, **kwargs)
