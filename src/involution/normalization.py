"""Batch normalization with a fused PyTorch training step.

`BatchNormalization` is `keras.layers.BatchNormalization` (same arguments,
weights, statistics and results) whose training-mode call over the last
axis runs as one fused PyTorch op on that backend. Keras' formulation, a
dozen `keras.ops` passes forward and backward, cost a small involution
network about a fifth of its training step on the CPU; every other case
(other backends, other axes, masks, renormalization, inference) is Keras'
own code, which is also the fast path's tested reference.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="involution")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a fused PyTorch training step.

    Args:
        Those of `keras.layers.BatchNormalization`.

    Input shape:
        Arbitrary.

    Output shape:
        Same shape as input.

    Example:

    >>> x = np.random.rand(8, 4, 4, 16).astype("float32")
    >>> BatchNormalization(momentum=0.5)(x, training=True).shape
    (8, 4, 4, 16)
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fused_training_applies(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        from involution.backends.torch_backend import batch_norm_training

        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        gamma = ops.cast(self.gamma, inputs.dtype) if self.scale else None
        beta = ops.cast(self.beta, inputs.dtype) if self.center else None
        outputs, mean, variance = batch_norm_training(inputs, gamma, beta, self.epsilon)
        moving_mean = ops.cast(self.moving_mean, inputs.dtype)
        moving_variance = ops.cast(self.moving_variance, inputs.dtype)
        self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)

    def _fused_training_applies(self, inputs, mask):
        return (
            keras.backend.backend() == "torch"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and self.axis in (-1, len(inputs.shape) - 1)
        )
