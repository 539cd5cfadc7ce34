"""`FusedDense`: Keras' dense layer, with a fused CPU kernel for ReLU on few features."""

import keras

from involution import ops as involution_ops
from involution import registry
from involution.saving import register_load_aliases


@keras.saving.register_keras_serializable(package="involution")
class FusedDense(keras.layers.Dense):
    """`keras.layers.Dense` that fuses ReLU on inputs of few features.

    A network's first 1x1 convolution on an image (three colours into
    tens of channels, written as a dense layer over the channel axis) is
    memory-bound: Keras' matrix product, bias addition and activation each
    write a full-resolution map, and the activation's gradient one more.
    With `activation="relu"` and at most
    `involution.ops.DENSE_RELU_MAX_FEATURES` input features, this layer
    runs `involution.ops.dense_relu` instead (`involution.registry`, op
    `"dense"`), which writes the output once forward and no map
    backward. Same arguments, weights and results as Keras' layer (with
    LoRA enabled, the fused op takes the adapted kernel); other
    activations, more features and quantized layers run Keras' own code.

    Args:
        implementation: `"auto"`, `"reference"` (Keras' code), `"fast"` or
            a kernel's name (`involution.registry`, op `"dense"`).
        axis: int, the axis of the input features (default -1, the last);
            `axis=1` makes a channels-first 1x1 convolution whose kernel,
            `(input_dim, units)`, is the channels-last layer's.
        units, activation, use_bias, **kwargs: as in `keras.layers.Dense`.

    Input shape:
        N-D tensor `(batch_size, ..., input_dim)`, the features on `axis`.

    Output shape:
        N-D tensor `(batch_size, ..., units)`, `units` on `axis`.

    Example:

    >>> x = np.random.rand(2, 8, 8, 3).astype("float32")
    >>> FusedDense(16, activation="relu")(x).shape
    (2, 8, 8, 16)
    """

    # A kernel's name in `implementation` selects kernels of the op below.
    KERNEL_OP = "dense"

    def __init__(self, units, activation=None, implementation="auto", axis=-1, **kwargs):
        super().__init__(units, activation=activation, **kwargs)
        self.implementation = registry.check_implementation(implementation, "dense")
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise ValueError(f"The `axis` argument must be an integer. Received: axis={axis!r}")
        self.axis = axis

    def _moved(self, shape):
        """`shape` with the features' axis last."""
        shape = list(shape)
        shape.append(shape.pop(self.axis))
        return tuple(shape)

    def build(self, input_shape):
        if not -len(input_shape) <= self.axis < len(input_shape):
            raise ValueError(
                f"The `axis` argument must be an axis of the {len(input_shape)}D input. Received: axis={self.axis} "
                f"for input_shape={tuple(input_shape)}"
            )
        super().build(self._moved(input_shape))
        # Keras' spec checks the last axis; the features are on `axis`.
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={self.axis: input_shape[self.axis]})

    def compute_output_shape(self, input_shape):
        output_shape = list(super().compute_output_shape(self._moved(input_shape)))
        output_shape.insert(self.axis % len(input_shape), output_shape.pop())
        return tuple(output_shape)

    def call(self, inputs, training=None):
        if self.axis % len(inputs.shape) != len(inputs.shape) - 1:
            # Features on another axis (a channels-first map): the same
            # kernel, so weights move between layouts unchanged.
            axis = self.axis % len(inputs.shape)
            return keras.ops.moveaxis(self._call_last(keras.ops.moveaxis(inputs, axis, -1), training), -1, axis)
        return self._call_last(inputs, training)

    def _call_last(self, inputs, training):
        if self.activation is not keras.activations.relu:
            return super().call(inputs, training=training)
        bias = self.bias if self.bias is not None else keras.ops.zeros((self.units,), self.compute_dtype)
        return involution_ops.dense_relu(inputs, self.kernel, bias, self.implementation)

    def get_config(self):
        config = super().get_config()
        config["implementation"] = self.implementation
        config["axis"] = self.axis
        return config


# Earlier releases registered this layer under Keras' own class name.
register_load_aliases({"Dense": FusedDense})
