"""`PortableConv2D`: Keras' convolution, channels-first on every backend's CPU."""

import keras
from keras import ops

from involution import registry
from involution.saving import register_load_aliases


@keras.saving.register_keras_serializable(package="involution")
class PortableConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that runs `channels_first` on TensorFlow's CPU.

    TensorFlow's CPU convolution takes channels-last maps only unless
    oneDNN is enabled (it is by default only on CPUs with AVX-512 and
    newer), so Keras' `Conv2D(data_format="channels_first")` fails there.
    This layer convolves such a map channels-last between two transposes
    (`involution.registry`, op `"conv"`, kernel `"tensorflow-transposed"`),
    and it adds the bias of every channels-first map along its channel
    axis (TensorFlow's Keras layer adds it along the width where the width
    equals `filters`). Channels-last maps get Keras' layer. Same arguments
    and weights as Keras' layer.

    Args:
        Those of `keras.layers.Conv2D`.

    Input shape:
        4D tensor, `(batch, rows, cols, channels)` in `channels_last`,
        `(batch, channels, rows, cols)` in `channels_first`.

    Output shape:
        4D tensor of `filters` channels in the same layout.

    Example:

    >>> x = np.random.rand(2, 3, 8, 8).astype("float32")
    >>> PortableConv2D(4, 3, padding="same", data_format="channels_first")(x).shape
    (2, 4, 8, 8)
    """

    def call(self, inputs):
        if self.data_format != "channels_first":
            return super().call(inputs)
        arguments = dict(inputs=inputs, kernel=self.kernel, strides=list(self.strides), padding=self.padding,
                         dilation_rate=list(self.dilation_rate), data_format=self.data_format)
        kernel = registry.choose("conv", "auto", **arguments)
        outputs = kernel(**arguments) if kernel is not None else self.convolution_op(inputs, self.kernel)
        if self.use_bias:
            # The bias comes first: TensorFlow's `keras.ops.add(x, bias)`
            # takes a `(1, filters, 1, 1)` bias for the last axis of a
            # channels-first map whose width equals the filters (Keras'
            # own channels-first `Conv2D` adds it there).
            outputs = ops.add(ops.reshape(self.bias, (1, self.filters, 1, 1)), outputs)
        return outputs if self.activation is None else self.activation(outputs)


# Earlier releases registered this layer under Keras' own class name.
register_load_aliases({"Conv2D": PortableConv2D})
