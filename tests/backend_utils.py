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


def weight_gradients(model, loss_fn, x, y):
    """Gradients of `loss_fn(y, model(x, training=True))` w.r.t. the trainable weights."""
    backend = keras.backend.backend()
    weights = model.trainable_weights
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, [w.value for w in weights])
    elif backend == "jax":
        import jax

        non_trainable = [w.value for w in model.non_trainable_weights]

        def stateless_loss(trainable):
            out, _ = model.stateless_call(trainable, non_trainable, x, training=True)
            return loss_fn(y, out)

        grads = jax.grad(stateless_loss)([w.value for w in weights])
    elif backend == "torch":
        model.zero_grad()
        loss_fn(y, model(x, training=True)).backward()
        grads = [w.value.grad for w in weights]
    else:
        raise NotImplementedError(backend)
    return [None if g is None else keras.ops.convert_to_numpy(g) for g in grads]


def compiled(fn):
    """`fn` as one compiled program on JAX, `fn` itself elsewhere.

    JAX runs a function op by op outside `jax.jit`, compiling every op for
    every new shape; a grid whose shapes change from case to case pays that
    for each case. Keras' own JAX training and prediction steps are jitted
    programs like this one.
    """
    if keras.backend.backend() != "jax":
        return fn
    import jax

    return jax.jit(fn)


def alternating(cases, choices):
    """Each case of `cases` with one of `choices`, in turn.

    A grid's full product with a last axis (the data format, the image
    size) costs that axis' length in run time; taking its values in turn
    keeps every value tested with every value of the other axes but the
    innermost one.
    """
    return [(*case, choices[index % len(choices)]) for index, case in enumerate(cases)]


def apply_case(rng, kernel_size, stride, groups, channels, data_format="channels_last", dtype=np.float32,
               height=7, width=8):
    """Random `(x, kernel)` of the apply step's shapes in `data_format`."""
    out_h, out_w = -(-height // stride), -(-width // stride)
    x = rng.standard_normal((2, height, width, channels)).astype(dtype)
    kernel = rng.standard_normal((2, out_h, out_w, groups * kernel_size**2)).astype(dtype)
    if data_format == "channels_first":
        x, kernel = x.transpose(0, 3, 1, 2), kernel.transpose(0, 3, 1, 2)
    return x, kernel
