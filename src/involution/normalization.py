"""Normalization layers: Keras' own, with a fast path or a fix.

`BatchNormalization` is `keras.layers.BatchNormalization` (same arguments,
weights, statistics and results) whose training-mode call over the last
axis runs as one fused op on PyTorch and TensorFlow, in place of Keras'
dozen `keras.ops` passes forward and backward (`docs/design.md`); every
other case (JAX, other axes, masks, renormalization, inference) is Keras'
own code, which is also the fast path's tested reference.
`LayerNormalization` is Keras' layer, working around a PyTorch-backend
limitation for a channel axis that is not the last.
"""

import keras
from keras import ops

from involution import ops as involution_ops
from involution.config import check_implementation


@keras.saving.register_keras_serializable(package="involution")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a fused training step (PyTorch, TensorFlow).

    Args:
        implementation: `"auto"`, `"reference"` (Keras' own code) or
            `"fast"` (the fused training step; an error where it cannot
            run). See `involution.config`, fast path `"batch_norm"`.
        **kwargs: those of `keras.layers.BatchNormalization`.

    Input shape:
        Arbitrary.

    Output shape:
        Same shape as input.

    Example:

    >>> x = np.random.rand(8, 4, 4, 16).astype("float32")
    >>> BatchNormalization(momentum=0.5)(x, training=True).shape
    (8, 4, 4, 16)
    """

    def __init__(self, implementation="auto", **kwargs):
        super().__init__(**kwargs)
        self.implementation = check_implementation(implementation)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or not self._use_fused_training(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        batch_norm_training = involution_ops.backend_module().batch_norm_training
        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        gamma = ops.cast(self.gamma, inputs.dtype) if self.scale else None
        beta = ops.cast(self.beta, inputs.dtype) if self.center else None
        outputs, mean, variance = batch_norm_training(inputs, gamma, beta, self.epsilon)
        moving_mean = ops.cast(self.moving_mean, inputs.dtype)
        moving_variance = ops.cast(self.moving_variance, inputs.dtype)
        self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)

    def _use_fused_training(self, inputs, mask):
        backend_support = getattr(involution_ops.backend_module(), "batch_norm_support", None)

        def support():
            if mask is not None:
                return "it takes no mask"
            if self.renorm or self.synchronized:
                return "it does no renormalization or synchronization"
            if self.axis not in (-1, len(inputs.shape) - 1):
                return f"it normalizes the last axis only (received axis={self.axis})"
            return backend_support(inputs)

        return involution_ops.use_fast_path(
            "batch_norm", self.implementation, backend_support and support
        )

    def get_config(self):
        config = super().get_config()
        config["implementation"] = self.implementation
        return config


@keras.saving.register_keras_serializable(package="involution")
class LayerNormalization(keras.layers.LayerNormalization):
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
