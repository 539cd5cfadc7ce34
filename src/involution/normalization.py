"""Normalization layers: Keras' own, with a fused kernel or a fix.

`FusedBatchNormalization` is `keras.layers.BatchNormalization` (same
arguments, weights, statistics and results) whose training-mode call over
the last axis runs as one fused kernel on PyTorch and TensorFlow
(`involution.registry`, op `"batch_norm"`), in place of Keras' dozen
`keras.ops` passes forward and backward (`docs/design.md`); every other
case (JAX, other axes, masks, renormalization, inference) is Keras' own
code, which is also the kernels' tested reference.
`PortableLayerNormalization` is Keras' layer, working around a
PyTorch-backend limitation for a channel axis that is not the last.
"""

import keras
from keras import ops

from involution import registry
from involution.saving import register_load_aliases


@keras.saving.register_keras_serializable(package="involution")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a fused training step (PyTorch, TensorFlow).

    Args:
        implementation: `"auto"`, `"reference"` (Keras' own code),
            `"fast"` (a fused kernel; an error where none can run) or a
            kernel's name (`involution.registry`, op `"batch_norm"`).
        **kwargs: those of `keras.layers.BatchNormalization`.

    Input shape:
        Arbitrary.

    Output shape:
        Same shape as input.

    Example:

    >>> x = np.random.rand(8, 4, 4, 16).astype("float32")
    >>> FusedBatchNormalization(momentum=0.5)(x, training=True).shape
    (8, 4, 4, 16)
    """

    # A kernel's name in `implementation` selects kernels of the op below.
    KERNEL_OP = "batch_norm"

    def __init__(self, implementation="auto", **kwargs):
        super().__init__(**kwargs)
        self.implementation = registry.check_implementation(implementation, "batch_norm")

    def call(self, inputs, training=None, mask=None):
        kernel = self._fused_kernel(inputs, mask) if training and self.trainable else None
        if kernel is None:
            return super().call(inputs, training=training, mask=mask)
        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        gamma = ops.cast(self.gamma, inputs.dtype) if self.scale else None
        beta = ops.cast(self.beta, inputs.dtype) if self.center else None
        outputs, mean, variance = kernel(inputs=inputs, gamma=gamma, beta=beta, epsilon=self.epsilon)
        moving_mean = ops.cast(self.moving_mean, inputs.dtype)
        moving_variance = ops.cast(self.moving_variance, inputs.dtype)
        self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)

    def _fused_kernel(self, inputs, mask):
        """The registry's kernel for this training step, or None for Keras' code."""
        reason = None
        if mask is not None:
            reason = "it takes no mask"
        elif self.renorm or self.synchronized:
            reason = "it does no renormalization or synchronization"
        elif self.axis not in (-1, len(inputs.shape) - 1):
            reason = f"it normalizes the last axis only (received axis={self.axis})"
        if reason is not None:
            if self.implementation not in ("auto", "reference"):
                raise ValueError(
                    f"The fused batch normalization cannot run here: {reason}. Use 'auto' or 'reference'. "
                    f"Received: implementation={self.implementation!r}"
                )
            return None
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        return registry.choose("batch_norm", self.implementation, inputs=ops.cast(inputs, dtype), gamma=None,
                               beta=None, epsilon=self.epsilon)

    def get_config(self):
        config = super().get_config()
        config["implementation"] = self.implementation
        return config


@keras.saving.register_keras_serializable(package="involution")
class PortableLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` that normalises any single axis on
    every backend.

    Keras 3.15's PyTorch path hands a single axis to
    `torch.nn.functional.layer_norm`, which normalises the trailing axes
    only, so `axis=1` (the channels of a `channels_first` map) fails there;
    this layer moves such an axis last around Keras' own computation.
    Same arguments, weights and results.

    Args:
        Those of `keras.layers.LayerNormalization`.
    """

    def call(self, inputs):
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        rank = len(inputs.shape)
        if keras.backend.backend() != "torch" or len(axes) != 1 or axes[0] % rank == rank - 1:
            return super().call(inputs)
        axis = axes[0] % rank
        moved = ops.moveaxis(inputs, axis, -1)
        outputs = ops.layer_normalization(moved, self.gamma, self.beta, -1, self.epsilon,
                                          rms_scaling=self.rms_scaling)
        return ops.cast(ops.moveaxis(outputs, -1, axis), self.compute_dtype)


# Earlier releases registered these layers under Keras' own class names.
register_load_aliases({"BatchNormalization": FusedBatchNormalization,
                       "LayerNormalization": PortableLayerNormalization})
