"""Gradients through whichever backend Keras runs on, for the tests."""

import keras
import numpy as np


def gradients(fn, *arrays):
    """Returns (value, [d value / d array]) of a scalar function, as NumPy."""
    backend = keras.backend.backend()
    tensors = [keras.ops.convert_to_tensor(a) for a in arrays]
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            value = fn(*tensors)
        grads = tape.gradient(value, tensors)
    elif backend == "jax":
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(tensors))))(
            *tensors
        )
    elif backend == "torch":
        for t in tensors:
            t.requires_grad_(True)
        value = fn(*tensors)
        grads = [None] * len(tensors)
        value.backward()
        grads = [t.grad for t in tensors]
    else:
        raise NotImplementedError(backend)
    return keras.ops.convert_to_numpy(value), [keras.ops.convert_to_numpy(g) for g in grads]
