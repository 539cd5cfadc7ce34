"""Pooling layers with a fast path (`involution.ops.pool`)."""

import keras

from involution import ops as involution_ops
from involution.config import check_implementation


@keras.saving.register_keras_serializable(package="involution")
class MaxPooling2D(keras.layers.MaxPooling2D):
    """`keras.layers.MaxPooling2D` without PyTorch's layout copies.

    Same arguments, weights (none) and results; with "valid" padding it
    pools through `involution.ops.pool`, which on the PyTorch backend pools
    a permuted view instead of a channels-first copy.

    Args:
        implementation: `"auto"`, `"reference"` (Keras' pooling) or `"fast"`
            (see `involution.config`, fast path `"pool"`).
        pool_size, strides, padding, data_format, **kwargs: as in
            `keras.layers.MaxPooling2D`.
    """

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, implementation="auto",
                 **kwargs):
        super().__init__(pool_size, strides=strides, padding=padding, data_format=data_format, **kwargs)
        self.implementation = check_implementation(implementation)

    def call(self, inputs):
        if self.padding != "valid":
            return super().call(inputs)
        return involution_ops.pool(
            inputs, self.pool_size, self.strides, "max", self.data_format, self.implementation
        )

    def get_config(self):
        config = super().get_config()
        config["implementation"] = self.implementation
        return config
