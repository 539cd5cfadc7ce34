"""Small CIFAR networks whose only spatial mixing is involution.

`involution_net` widens the Keras example's involution model the way the
paper does: channel mixing by 1x1 convolutions with batch normalization,
spatial mixing by involutions whose kernels are shared by groups of 8
channels, residual connections, and max pooling between stages.
`attention_net` is the same network with local self-attention kernels
(see `involution.attention`) in place of the paper's kernel generator.
"""

import keras

from involution.attention import LocalAttentionKernelGenerator
from involution.layer import Involution


def _bn_relu(x, name):
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _pointwise(x, filters, name):
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    return _bn_relu(x, name)


def _spatial(x, kernel_size, group_channels, key_dim, name):
    channels = x.shape[-1]
    groups = channels // group_channels
    generator = None
    if key_dim:
        generator = LocalAttentionKernelGenerator(
            kernel_size, group_number=groups, key_dim=key_dim, name=f"{name}_attention"
        )
    return Involution(
        channel=channels, group_number=groups, kernel_size=kernel_size, stride=1,
        reduction_ratio=4, kernel_generator=generator, name=name,
    )(x)


def _block(x, kernel_size, group_channels, key_dim, name):
    """Involution -> BN -> ReLU -> 1x1 conv -> BN, plus the input, ReLU."""
    y = _spatial(x, kernel_size, group_channels, key_dim, f"{name}_involution")
    y = _bn_relu(y, f"{name}_1")
    y = keras.layers.Conv2D(x.shape[-1], 1, use_bias=False, name=f"{name}_2_conv")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_2_bn")(y)
    y = keras.layers.Add(name=f"{name}_add")([x, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def involution_net(input_shape=(32, 32, 3), num_classes=10, widths=(32, 64, 128), blocks=(2, 2, 2),
                   kernel_size=3, group_channels=8, attention=False, key_dim=4, name="invnet"):
    """A residual involution network for CIFAR (about 83k parameters).

    Args:
        input_shape, num_classes: the data's.
        widths: channels per stage; each later stage starts with 2x2 max
            pooling and a 1x1 convolution to its width.
        blocks: residual blocks per stage.
        kernel_size: the involutions' kernel size.
        group_channels: channels sharing one kernel (per group / head).
        attention: use `LocalAttentionKernelGenerator` kernels (heads of
            `key_dim` query/key channels) instead of the paper's generator.
        key_dim: the attention heads' query/key size.
        name: the model's name.
    """
    inputs = keras.Input(input_shape, name="image")
    x = _pointwise(inputs, widths[0], "stem")
    for stage, (width, count) in enumerate(zip(widths, blocks), start=1):
        if stage > 1:
            x = keras.layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
            x = _pointwise(x, width, f"stage{stage}_expand")
        for block in range(1, count + 1):
            x = _block(x, kernel_size, group_channels, key_dim if attention else None,
                       f"stage{stage}_block{block}")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
