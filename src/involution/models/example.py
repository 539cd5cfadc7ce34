"""The Keras example's two models: `conv` and `involution`.

Both take `data_format`; channels-first builds hold the same weights as
channels-last ones (the classifier flattens in channels-last order), so
`set_weights` moves them between layouts.
"""

import keras

from involution.convolution import PortableConv2D
from involution.layer import Involution
from involution.models.registry import register_model
from involution.ops import standardize_data_format


def _classifier_head(x, num_classes, data_format):
    x = keras.layers.Flatten(data_format=data_format, name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="dense")(x)
    return keras.layers.Dense(num_classes, name="logits")(x)


def _default_shape(input_shape, data_format):
    if input_shape is not None:
        return tuple(input_shape)
    return (32, 32, 3) if data_format == "channels_last" else (3, 32, 32)


@register_model("conv")
def conv_model(input_shape=None, num_classes=10, name="conv", data_format=None):
    """The Keras example's convolutional baseline (319,178 parameters on CIFAR-10)."""
    data_format = standardize_data_format(data_format)
    inputs = keras.Input(_default_shape(input_shape, data_format), name="image")
    # Keras' own layer where it runs everywhere (the example's model);
    # channels-first maps need the portable one on TensorFlow's CPU.
    conv = keras.layers.Conv2D if data_format == "channels_last" else PortableConv2D
    x = inputs
    for index, filters in enumerate((32, 64, 64), start=1):
        x = conv(filters, 3, padding="same", data_format=data_format, name=f"conv_{index}")(x)
        x = keras.layers.ReLU(name=f"relu_{index}")(x)
        if index < 3:
            x = keras.layers.MaxPooling2D(2, data_format=data_format, name=f"pool_{index}")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, data_format), name=name)


@register_model("involution")
def involution_model(
    input_shape=None,
    num_classes=10,
    group_number=1,
    kernel_size=3,
    reduction_ratio=2,
    name="involution",
    data_format=None,
):
    """The Keras example's involution model (13,080 parameters on CIFAR-10)."""
    data_format = standardize_data_format(data_format)
    input_shape = _default_shape(input_shape, data_format)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for index in (1, 2, 3):
        x = Involution(
            channel=input_shape[-1 if data_format == "channels_last" else 0],
            group_number=group_number,
            kernel_size=kernel_size,
            stride=1,
            reduction_ratio=reduction_ratio,
            data_format=data_format,
            name=f"inv_{index}",
        )(x)
        x = keras.layers.ReLU(name=f"relu_{index}")(x)
        if index < 3:
            x = keras.layers.MaxPooling2D(2, data_format=data_format, name=f"pool_{index}")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, data_format), name=name)
