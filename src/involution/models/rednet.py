"""RedNet: the paper's ResNet with involution (Li et al., CVPR 2021).

Each bottleneck's 3x3 convolution becomes a 7x7 involution that carries the
block's stride (reduction ratio 4, 16 channels per group), and the stem's
middle step is a 3x3 involution. Depths 26, 38, 50, 101 and 152 follow the
official implementation; `stem="cifar"` swaps the ImageNet stem (stride 4)
for one that keeps 32x32 inputs at full resolution.
"""

import keras

from involution import registry
from involution.convolution import PortableConv2D
from involution.geometry import channel_axis
from involution.layer import Involution
from involution.ops import standardize_data_format
from involution.models.registry import register_model, set_implementation
from involution.normalization import FusedBatchNormalization

# The stride of each stem: the paper's (a stride-2 convolution, then max
# pooling), one that keeps 32x32 inputs at full size, and one that halves
# them once (a quarter of the compute, for CPU budgets).
STEM_STRIDES = {"imagenet": 4, "cifar": 1, "cifar_half": 2}
DEPTHS = {
    26: (1, 2, 4, 1),
    38: (2, 3, 5, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
EXPANSION = 4
GROUP_CHANNELS = 16


def _batch_norm(x, name, data_format, zero_gamma=False):
    return FusedBatchNormalization(axis=channel_axis(data_format), epsilon=1e-5, momentum=0.9, name=name,
                              gamma_initializer="zeros" if zero_gamma else "ones")(x)


def _conv_bn(x, filters, kernel_size, strides, name, data_format, activation=True, zero_gamma=False,
             symmetric=False):
    padding = "same"
    if symmetric and kernel_size > 1:
        # The paper pads (K-1)/2 on every side; Keras' "same" with stride 2
        # pads 0 before and 1 after on even sizes.
        x = keras.layers.ZeroPadding2D(kernel_size // 2, data_format=data_format, name=f"{name}_pad")(x)
        padding = "valid"
    x = PortableConv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
                       data_format=data_format, name=f"{name}_conv")(x)
    x = _batch_norm(x, f"{name}_bn", data_format, zero_gamma)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if activation else x


def _involution(x, channels, kernel_size, stride, name, data_format, exact):
    # The paper's generator: batch norm at PyTorch's defaults, and no bias
    # before it. Without `exact`, the Keras example's (earlier presets).
    generator = dict(batch_norm_momentum=0.9, batch_norm_epsilon=1e-5, reduction_bias=False) if exact else {}
    return Involution(
        channel=channels,
        group_number=max(channels // GROUP_CHANNELS, 1),
        kernel_size=kernel_size,
        stride=stride,
        reduction_ratio=4,
        data_format=data_format,
        name=name,
        **generator,
    )(x)


def _bottleneck(x, mid_channels, stride, name, data_format, exact):
    out_channels = mid_channels * EXPANSION
    shortcut = x
    if stride != 1 or x.shape[channel_axis(data_format)] != out_channels:
        shortcut = _conv_bn(x, out_channels, 1, stride, f"{name}_downsample", data_format, activation=False)
    y = _conv_bn(x, mid_channels, 1, 1, f"{name}_1", data_format)
    y = _involution(y, mid_channels, 7, stride, f"{name}_2_involution", data_format, exact)
    y = _batch_norm(y, f"{name}_2_bn", data_format)
    y = keras.layers.ReLU(name=f"{name}_2_relu")(y)
    # Each residual branch starts as zero (its last batch norm's scale is 0),
    # so the untrained network is its shortcuts: the official code's default
    # (mmcls `zero_init_residual=True`), and without it Adam at the example's
    # learning rate diverged (NaN) in the second epoch of the CIFAR run.
    y = _conv_bn(y, out_channels, 1, 1, f"{name}_3", data_format, activation=False, zero_gamma=True)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


@keras.saving.register_keras_serializable(package="involution")
class RedNet(keras.Model):
    """RedNet, the involution ResNet, as a Keras model.

    Args:
        depth: one of 26, 38, 50, 101, 152.
        include_top: whether to end with global average pooling and a
            `num_classes` logits layer; without it the model outputs the
            last stage's feature map.
        num_classes: the number of classes of the top.
        input_shape: the input's shape in `data_format`'s layout; by
            default any size of RGB image, `(None, None, 3)` or
            `(3, None, None)`.
        stem: `"imagenet"` (stride 2 conv, 3x3 involution, conv, max pool:
            stride 4, as in the paper), `"cifar"` (the same without the
            strides, for 32x32 inputs) or `"cifar_half"` (only the
            convolution's stride 2: a quarter of `"cifar"`'s compute).
        width: the first stage's bottleneck width (64 in the paper); every
            stage doubles it and outputs `4 * width` channels.
        implementation: `"auto"`, `"reference"` or `"fast"`, for every layer
            with a fast path (see `involution.config`).
        exact: True (default) computes the paper's reference function:
            the stem's strided convolution and max pooling pad one pixel on
            every side, and the kernel generators' batch norms use epsilon
            1e-5 and momentum 0.9 after a 1x1 convolution without bias, as
            in the authors' checkpoints (`involution.models.convert_rednet`).
            False builds the network of this package's earlier RedNets
            (Keras' "same" padding, the Keras example's generator), which
            configs saved without this argument load as.
        data_format: `"channels_last"`, `"channels_first"` or None
            (`keras.config.image_data_format()`), for the input and every
            layer (the batch norms normalise the channel axis). Both
            layouts build the same network: the same weights and, for
            permuted inputs, the same outputs.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Attributes:
        pyramid_outputs: `{"stem": ..., "stage1": ..., ..., "stage4": ...}`
            symbolic feature maps (strides 4, 4, 8, 16, 32 with the ImageNet
            stem), for a detection or segmentation head:
            `keras.Model(model.input, model.pyramid_outputs)`.

    Example:

    >>> model = RedNet(26, num_classes=10, input_shape=(32, 32, 3), stem="cifar", width=16)
    >>> features = keras.Model(model.input, model.pyramid_outputs)

    Reference:
        Li et al., "Involution: Inverting the Inherence of Convolution for
        Visual Recognition", CVPR 2021.
    """

    def __init__(self, depth=50, include_top=True, num_classes=1000, input_shape=None,
                 stem="imagenet", width=64, implementation="auto", data_format=None, exact=True, **kwargs):
        if depth not in DEPTHS:
            raise ValueError(f"The `depth` argument must be one of {sorted(DEPTHS)}. Received: depth={depth!r}")
        if stem not in STEM_STRIDES:
            raise ValueError(f"The `stem` argument must be one of {list(STEM_STRIDES)}. Received: stem={stem!r}")
        if not isinstance(exact, bool):
            raise ValueError(f"The `exact` argument must be a bool. Received: exact={exact!r}")
        data_format = standardize_data_format(data_format)
        if input_shape is None:
            input_shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)
        stem_channels = width
        inputs = keras.Input(tuple(input_shape), name="image")
        stem_stride = 1 if stem == "cifar" else 2
        x = _conv_bn(inputs, stem_channels // 2, 3, stem_stride, "stem_1", data_format, symmetric=exact)
        x = _involution(x, stem_channels // 2, 3, 1, "stem_2_involution", data_format, exact)
        x = _batch_norm(x, "stem_2_bn", data_format)
        x = keras.layers.ReLU(name="stem_2_relu")(x)
        x = _conv_bn(x, stem_channels, 3, 1, "stem_3", data_format)
        if stem == "imagenet" and exact:
            # One pixel on every side, as the paper's `MaxPool2d(3, 2,
            # padding=1)`; zeros pad as -inf would, the input being a ReLU's.
            x = keras.layers.ZeroPadding2D(1, data_format=data_format, name="stem_pool_pad")(x)
            x = keras.layers.MaxPooling2D(3, 2, padding="valid", data_format=data_format, name="stem_pool")(x)
        elif stem == "imagenet":
            x = keras.layers.MaxPooling2D(3, 2, padding="same", data_format=data_format, name="stem_pool")(x)
        pyramid = {"stem": x}
        for stage, blocks in enumerate(DEPTHS[depth]):
            mid = width * 2**stage
            for block in range(blocks):
                stride = 2 if (stage > 0 and block == 0) else 1
                x = _bottleneck(x, mid, stride, f"stage{stage + 1}_block{block + 1}", data_format, exact)
            pyramid[f"stage{stage + 1}"] = x
        outputs = x
        if include_top:
            x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
            outputs = keras.layers.Dense(num_classes, name="logits")(x)
        kwargs.setdefault("name", f"rednet{depth}" + ("" if stem == "imagenet" else "_cifar"))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.depth = depth
        self.include_top = include_top
        self.num_classes = num_classes
        self._input_shape_arg = tuple(input_shape)
        self.stem = stem
        self.width = width
        self.data_format = data_format
        self.exact = exact
        self.pyramid_outputs = pyramid
        self.implementation = registry.check_implementation(implementation)
        if implementation != "auto":
            set_implementation(self, implementation)

    def get_config(self):
        return {
            "depth": self.depth,
            "include_top": self.include_top,
            "num_classes": self.num_classes,
            "input_shape": self._input_shape_arg,
            "stem": self.stem,
            "width": self.width,
            "implementation": self.implementation,
            "data_format": self.data_format,
            "exact": self.exact,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        # Configs saved before `exact` existed describe the earlier network.
        return cls(**{"exact": False, **config})


# Variants ---------------------------------------------------------------------


def image_shape(size, data_format):
    """A square RGB image's shape in `data_format`'s layout (`size` None:
    any size)."""
    channels_last = standardize_data_format(data_format) == "channels_last"
    return (size, size, 3) if channels_last else (3, size, size)


def _register_rednets():
    for depth in DEPTHS:

        def imagenet(input_shape=None, num_classes=1000, depth=depth, **kwargs):
            input_shape = input_shape or image_shape(224, kwargs.get("data_format"))
            return RedNet(depth, num_classes=num_classes, input_shape=input_shape, **kwargs)

        def cifar(input_shape=None, num_classes=10, depth=depth, width=16, **kwargs):
            input_shape = input_shape or image_shape(32, kwargs.get("data_format"))
            return RedNet(depth, num_classes=num_classes, input_shape=input_shape, stem="cifar",
                          width=width, **kwargs)

        imagenet.__doc__ = f"RedNet-{depth}, the paper's ImageNet configuration."
        cifar.__doc__ = f"RedNet-{depth} with a stride-1 stem for 32x32 inputs, width 16 (4x narrower)."
        register_model(f"rednet{depth}")(imagenet)
        register_model(f"rednet{depth}_cifar")(cifar)


@register_model("rednet26_cifar_tiny")
def rednet26_cifar_tiny(input_shape=None, num_classes=10, width=8, **kwargs):
    """RedNet-26, width 8 (8x narrower than ImageNet's), stride-2 stem: small enough to train on a CPU."""
    input_shape = input_shape or image_shape(32, kwargs.get("data_format"))
    kwargs.setdefault("name", "rednet26_cifar_tiny")
    kwargs.setdefault("stem", "cifar_half")
    return RedNet(26, num_classes=num_classes, input_shape=input_shape, width=width, **kwargs)


_register_rednets()
