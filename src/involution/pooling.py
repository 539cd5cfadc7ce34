"""Pooling layers with fused kernels (`involution.ops.pool`)."""

import keras

from involution import ops as involution_ops
from involution import registry
from involution.saving import register_load_aliases


@keras.saving.register_keras_serializable(package="involution")
class FusedMaxPooling2D(keras.layers.MaxPooling2D):
    """`keras.layers.MaxPooling2D` without PyTorch's layout copies.

    Same arguments, weights (none) and results; with "valid" padding it
    pools through `involution.ops.pool`, which on the PyTorch backend pools
    a permuted view instead of a channels-first copy.

    Args:
        implementation: `"auto"`, `"reference"` (Keras' pooling), `"fast"`
            or a kernel's name (`involution.registry`, op `"pool"`).
        pool_size, strides, padding, data_format, **kwargs: as in
            `keras.layers.MaxPooling2D`.
    """

    # A kernel's name in `implementation` selects kernels of the op below.
    KERNEL_OP = "pool"

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, implementation="auto",
                 **kwargs):
        super().__init__(pool_size, strides=strides, padding=padding, data_format=data_format, **kwargs)
        self.implementation = registry.check_implementation(implementation, "pool")

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


# Earlier releases registered this layer under Keras' own class name.
register_load_aliases({"MaxPooling2D": FusedMaxPooling2D})
