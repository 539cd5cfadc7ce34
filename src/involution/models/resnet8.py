"""`resnet8`: the MLPerf Tiny image-classification reference network.

MLPerf Tiny's CIFAR-10 benchmark (Banbury et al., 2021) uses a residual
network of three stages with 16, 32 and 64 channels, one basic block each
(two 3x3 convolutions with batch normalization; a strided 1x1 convolution
on the shortcut where the stage halves the resolution), average pooling and
a dense layer: about 78k parameters. Its published target is 85% test
accuracy after 500 epochs with augmentation. It is here as an outside point
of comparison for the involution networks of the same size.
"""

import keras

from involution.convolution import PortableConv2D
from involution.geometry import channel_axis
from involution.models.registry import register_model
from involution.ops import standardize_data_format


def _convolution(filters, kernel_size, strides, name, data_format, weight_decay):
    return PortableConv2D(
        filters, kernel_size, strides=strides, padding="same", kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(weight_decay) if weight_decay else None,
        data_format=data_format, name=name,
    )


def resnet8(input_shape=None, num_classes=10, widths=(16, 32, 64), weight_decay=1e-4, data_format=None,
            name="resnet8"):
    """The MLPerf Tiny reference ResNet-8 for CIFAR-10 (78,666 parameters).

    Args:
        input_shape, num_classes: the data's; `input_shape` defaults to
            32x32 RGB in `data_format`'s layout.
        widths: channels of the three stages (the reference's 16, 32, 64).
        weight_decay: the reference's L2 penalty on every convolution's
            kernel (1e-4), 0 for none.
        data_format: `"channels_last"`, `"channels_first"` or None
            (`keras.config.image_data_format()`).
        name: the model's name.

    Returns:
        A functional `keras.Model` from images to logits (the reference
        ends in a softmax; the registry's models return logits).
    """
    if len(widths) != 3:
        raise ValueError(f"`widths` must give the three stages' channels. Received: widths={widths}")
    data_format = standardize_data_format(data_format)
    if input_shape is None:
        input_shape = (32, 32, 3) if data_format == "channels_last" else (3, 32, 32)
    axis = channel_axis(data_format)
    conv = dict(data_format=data_format, weight_decay=weight_decay)

    inputs = keras.Input(input_shape, name="image")
    x = _convolution(widths[0], 3, 1, "stem_conv", **conv)(inputs)
    x = keras.layers.BatchNormalization(axis=axis, name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, width in enumerate(widths, start=1):
        stride = 1 if stage == 1 else 2
        prefix = f"stage{stage}"
        y = _convolution(width, 3, stride, f"{prefix}_conv1", **conv)(x)
        y = keras.layers.BatchNormalization(axis=axis, name=f"{prefix}_bn1")(y)
        y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
        y = _convolution(width, 3, 1, f"{prefix}_conv2", **conv)(y)
        y = keras.layers.BatchNormalization(axis=axis, name=f"{prefix}_bn2")(y)
        if stride != 1:
            # The reference's shortcut: a strided 1x1 convolution, without
            # normalization.
            x = _convolution(width, 1, stride, f"{prefix}_shortcut", **conv)(x)
        x = keras.layers.Add(name=f"{prefix}_add")([x, y])
        x = keras.layers.ReLU(name=f"{prefix}_relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer="he_normal", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


@register_model("resnet8")
def resnet8_model(input_shape=None, num_classes=10, **kwargs):
    """MLPerf Tiny's reference ResNet-8 for CIFAR-10 (78,666 parameters): an outside reference point."""
    return resnet8(input_shape, num_classes, **kwargs)
