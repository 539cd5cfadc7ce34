"""`PortableDense`: Keras' dense layer over any axis, a 1x1 convolution in either layout."""

import keras

from involution.saving import register_load_aliases


@keras.saving.register_keras_serializable(package="involution")
class PortableDense(keras.layers.Dense):
    """`keras.layers.Dense` over the features of any axis.

    A 1x1 convolution is a dense layer over the channel axis. Channels-last
    that is Keras' `Dense` (one matrix product, where PyTorch's convolution
    would copy the map to channels-first and back); channels-first it is
    this layer with `axis=1`, whose kernel, `(input_dim, units)`, is the
    channels-last layer's, so a network's weights move between the two
    layouts unchanged. Same weights and results as Keras' layer on the
    last axis.

    Args:
        units, activation, use_bias, **kwargs: as in `keras.layers.Dense`.
        axis: int, the axis of the input features (default -1, the last).

    Input shape:
        N-D tensor `(batch_size, ..., input_dim)`, the features on `axis`.

    Output shape:
        N-D tensor `(batch_size, ..., units)`, `units` on `axis`.

    Example:

    >>> x = np.random.rand(2, 3, 8, 8).astype("float32")
    >>> PortableDense(16, activation="relu", axis=1)(x).shape
    (2, 16, 8, 8)
    """

    def __init__(self, units, activation=None, axis=-1, **kwargs):
        super().__init__(units, activation=activation, **kwargs)
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
        axis = self.axis % len(inputs.shape)
        if axis == len(inputs.shape) - 1:
            return super().call(inputs, training=training)
        moved = super().call(keras.ops.moveaxis(inputs, axis, -1), training=training)
        return keras.ops.moveaxis(moved, -1, axis)

    def get_config(self):
        config = super().get_config()
        config["axis"] = self.axis
        return config


# Earlier releases registered a dense layer with a fused ReLU kernel under
# Keras' own class name, with an `implementation` argument that no longer
# selects anything.
register_load_aliases({"Dense": PortableDense}, obsolete=("implementation",))
