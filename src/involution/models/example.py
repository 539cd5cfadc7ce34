"""The Keras example's two models: `conv` and `involution`."""

import keras

from involution.layer import Involution
from involution.models.registry import register_model


def _classifier_head(x, num_classes):
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="dense")(x)
    return keras.layers.Dense(num_classes, name="logits")(x)


@register_model("conv")
def conv_model(input_shape=(32, 32, 3), num_classes=10, name="conv"):
    """The Keras example's convolutional baseline (319,178 parameters on CIFAR-10)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for index, filters in enumerate((32, 64, 64), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv_{index}")(x)
        x = keras.layers.ReLU(name=f"relu_{index}")(x)
        if index < 3:
            x = keras.layers.MaxPooling2D(2, name=f"pool_{index}")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes), name=name)


@register_model("involution")
def involution_model(
    input_shape=(32, 32, 3),
    num_classes=10,
    group_number=1,
    kernel_size=3,
    reduction_ratio=2,
    name="involution",
):
    """The Keras example's involution model (13,080 parameters on CIFAR-10)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for index in (1, 2, 3):
        x = Involution(
            channel=input_shape[-1],
            group_number=group_number,
            kernel_size=kernel_size,
            stride=1,
            reduction_ratio=reduction_ratio,
            name=f"inv_{index}",
        )(x)
        x = keras.layers.ReLU(name=f"relu_{index}")(x)
        if index < 3:
            x = keras.layers.MaxPooling2D(2, name=f"pool_{index}")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes), name=name)
