"""`Dense`: Keras' dense layer, with a fused CPU path for ReLU on few features."""

import keras

from involution import ops as involution_ops
from involution.config import check_implementation


@keras.saving.register_keras_serializable(package="involution")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` that fuses ReLU on inputs of few features.

    A network's first 1x1 convolution on an image (three colours into
    tens of channels, written as a dense layer over the channel axis) is
    memory-bound: Keras' matrix product, bias addition and activation each
    write a full-resolution map, and the activation's gradient one more.
    With `activation="relu"` and at most
    `involution.ops.DENSE_RELU_MAX_FEATURES` input features, this layer
    runs `involution.ops.dense_relu` instead (fast path `"dense"` of
    `involution.config`), which writes the output once forward and no map
    backward. Same arguments, weights and results as Keras' layer (with
    LoRA enabled, the fused op takes the adapted kernel); other
    activations, more features and quantized layers run Keras' own code.

    Args:
        implementation: `"auto"`, `"reference"` (Keras' code) or `"fast"`
            (see `involution.config`, fast path `"dense"`).
        units, activation, use_bias, **kwargs: as in `keras.layers.Dense`.

    Input shape:
        N-D tensor `(batch_size, ..., input_dim)`.

    Output shape:
        N-D tensor `(batch_size, ..., units)`.

    Example:

    >>> x = np.random.rand(2, 8, 8, 3).astype("float32")
    >>> Dense(16, activation="relu")(x).shape
    (2, 8, 8, 16)
    """

    def __init__(self, units, activation=None, implementation="auto", **kwargs):
        super().__init__(units, activation=activation, **kwargs)
        self.implementation = check_implementation(implementation)

    def call(self, inputs, training=None):
        if self.activation is not keras.activations.relu:
            return super().call(inputs, training=training)
        bias = self.bias if self.bias is not None else keras.ops.zeros((self.units,), self.compute_dtype)
        return involution_ops.dense_relu(inputs, self.kernel, bias, self.implementation)

    def get_config(self):
        config = super().get_config()
        config["implementation"] = self.implementation
        return config
