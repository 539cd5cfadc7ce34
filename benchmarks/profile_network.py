"""Profile: where a registry model's training step spends its time, by layer.

Times every layer of a functional registry model on its own, forward and
forward+backward (gradients for the layer's inputs and trainable weights,
with a random cotangent), at the shapes it sees in the model, the way the
backend's training step runs it: a `tf.function` graph on TensorFlow (XLA
with `--jit`), `jax.jit` on JAX, eagerly on PyTorch. Involution layers are
split into their kernel generator's steps (stride pooling, the reducing
1x1 convolution, normalization, ReLU, the expanding 1x1 convolution) and
the apply step. Then it times the whole `train_on_batch` step; what the
layers' sum leaves of it is the loss, the optimizer update, metrics and
the framework's per-step work.

Prints a table by layer and one by category, in milliseconds per step and
as shares of the layers' sum. Timed alone, each layer pays its own call
(the function dispatch, its outputs' allocation) that the whole step
shares, so the sum can exceed the step.

Usage:
    KERAS_BACKEND=tensorflow python benchmarks/profile_network.py --model invnet
    KERAS_BACKEND=jax python benchmarks/profile_network.py --model conv --markdown conv-jax.md
"""

import argparse
import statistics
import time

import numpy as np


def _median_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _runners(fn, variables, inputs, jit):
    """(forward, forward+backward) callables for `fn(*inputs)` on this backend.

    `variables` are the Keras variables whose gradients the backward pass
    computes, with the inputs'. Each callable blocks until its results are
    computed.
    """
    import keras

    backend = keras.backend.backend()
    rng = np.random.default_rng(1)
    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(x) for x in inputs]
        outputs = fn(*xs)
        cotangents = [tf.constant(rng.standard_normal(o.shape).astype("float32")) for o in tf.nest.flatten(outputs)]
        weights = [v.value for v in variables]

        @tf.function(jit_compile=jit, autograph=False)
        def forward(*xs):
            return fn(*xs)

        @tf.function(jit_compile=jit, autograph=False)
        def backward(*xs):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                outs = tf.nest.flatten(fn(*xs))
                loss = tf.add_n([tf.reduce_sum(o * c) for o, c in zip(outs, cotangents)])
            return tape.gradient(loss, list(xs) + weights)

        # Calls of a `tf.function` on the CPU return once their results are computed.
        return (lambda: forward(*xs)), (lambda: backward(*xs))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        from keras.src.backend.jax.core import StatelessScope

        xs = [jnp.asarray(x) for x in inputs]
        values = [v.value for v in variables]

        def pure(values, xs):
            with StatelessScope(state_mapping=list(zip(variables, values))):
                return jax.tree_util.tree_leaves(fn(*xs))

        outputs = pure(values, xs)
        cotangents = [jnp.asarray(rng.standard_normal(o.shape).astype("float32")) for o in outputs]

        # The cotangents are arguments, not constants XLA could fold.
        def loss(values, xs, cotangents):
            return sum(jnp.sum(o * c) for o, c in zip(pure(values, xs), cotangents))

        forward = jax.jit(pure) if jit else pure
        backward = jax.value_and_grad(loss, argnums=(0, 1))
        backward = jax.jit(backward) if jit else backward
        return (lambda: jax.block_until_ready(forward(values, xs)),
                lambda: jax.block_until_ready(backward(values, xs, cotangents)))
    import torch

    xs = [torch.tensor(x, requires_grad=True) for x in inputs]
    weights = [v.value for v in variables]
    outputs = [o for o in _flatten(fn(*xs))]
    cotangents = [torch.tensor(rng.standard_normal(tuple(o.shape)).astype("float32")) for o in outputs]
    compiled = torch.compile(fn) if jit else fn

    def backward():
        # Gradients returned, not accumulated into `.grad` (an extra pass
        # over every input that a training step does not make).
        return torch.autograd.grad(_flatten(compiled(*xs)), xs + weights, cotangents)

    return (lambda: _flatten(compiled(*xs))), backward


def _flatten(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _category(layer):
    from involution.layer import Involution

    import keras

    # By Keras' base classes: the fused layers subclass them.
    if isinstance(layer, Involution):
        return "involution"
    if isinstance(layer, keras.layers.Dense):
        return "1x1 convolution" if len(layer.input.shape) == 4 else "dense head"
    if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization)):
        return "normalization"
    if "Pooling" in type(layer).__name__:
        return "pooling"
    if isinstance(layer, (keras.layers.ReLU, keras.layers.Activation, keras.layers.Add)):
        return "elementwise"
    if isinstance(layer, keras.layers.Conv2D):
        return "convolution"
    return "other layers"


def _generator_steps(involution):
    """The paper's kernel generator as (name, category, fn, variables) steps."""
    from keras import ops

    from involution import ops as involution_ops
    from involution.layer import InvolutionKernelGenerator

    generator = involution.kernel_generator
    if not isinstance(generator, InvolutionKernelGenerator):
        return [("kernel generator", "kernel generator", lambda x: generator(x, training=True),
                 generator.trainable_variables)]
    steps = []
    if generator.stride > 1:
        steps.append(("generator stride pooling", "kernel generator: pooling",
                      lambda x: involution_ops.average_pool_same(x, generator.stride, generator.data_format,
                                                                 generator.implementation), []))
    steps.append(("generator reduce", "kernel generator: 1x1 convolutions",
                  lambda x: generator._pointwise(generator.reduce, x), generator.reduce.trainable_variables))
    if generator.norm is not None:
        steps.append(("generator normalization", "kernel generator: normalization",
                      lambda x: generator.norm(x, training=True), generator.norm.trainable_variables))
    steps.append(("generator relu", "kernel generator: relu", ops.relu, []))
    steps.append(("generator span", "kernel generator: 1x1 convolutions",
                  lambda x: generator._pointwise(generator.span, x), generator.span.trainable_variables))
    return steps


def profile(model, batch_size, warmup, repeats, jit):
    """[(layer name, category, forward ms, forward+backward ms)] for the model's layers."""
    import keras

    from involution import ops as involution_ops

    rng = np.random.default_rng(0)
    rows = []

    def measure(name, category, fn, variables, *shapes):
        inputs = [rng.standard_normal((batch_size,) + tuple(shape[1:])).astype("float32") for shape in shapes]
        forward, backward = _runners(fn, variables, inputs, jit)
        rows.append((name, category, _median_ms(forward, warmup, repeats), _median_ms(backward, warmup, repeats)))

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        category = _category(layer)
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        shapes = [tuple(x.shape) for x in inputs]
        if category != "involution":
            if len(inputs) == 1:
                measure(layer.name, category, lambda x, layer=layer: layer(x, training=True),
                        layer.trainable_variables, *shapes)
            else:
                measure(layer.name, category, lambda *xs, layer=layer: layer(list(xs), training=True),
                        layer.trainable_variables, *shapes)
            continue
        shape = shapes[0]
        for step, step_category, fn, variables in _generator_steps(layer):
            measure(f"{layer.name}: {step}", step_category, fn, variables, shape)
            shape = _output_shape(fn, shape)
        kernel_shape = layer._kernel_shape((batch_size,) + tuple(layer.input.shape[1:]))
        measure(f"{layer.name}: apply", "apply step",
                lambda x, k, layer=layer: involution_ops.involution_apply(
                    x, k, kernel_size=layer.kernel_size, stride=layer.stride, dilation=layer.dilation,
                    groups=layer.group_number, data_format=layer.data_format, implementation=layer.implementation),
                [], shapes[0], kernel_shape)
    return rows


def _output_shape(fn, shape):
    import keras

    return (None,) + tuple(keras.ops.shape(fn(keras.ops.zeros((1,) + tuple(shape[1:])))))[1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="invnet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--jit", action="store_true",
                        help="compile the layers and the train step with XLA (torch.compile on PyTorch)")
    parser.add_argument("--markdown", help="also write the tables here")
    args = parser.parse_args()

    import keras

    from involution.models import create_model

    keras.utils.set_random_seed(0)
    model = create_model(args.model, input_shape=(32, 32, 3), num_classes=10)
    backend = keras.backend.backend()
    jit = args.jit or backend == "jax"
    rows = profile(model, args.batch_size, args.warmup, args.repeats, jit)

    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (args.batch_size, 1))
    step_ms = _median_ms(lambda: model.train_on_batch(x, y), args.warmup, args.repeats)

    total = sum(row[3] for row in rows)
    lines = [f"`{args.model}` on {backend}{' (jit)' if jit else ''}, batch {args.batch_size}: "
             f"train step {step_ms:.1f} ms, layers' forward+backward sum {total:.1f} ms\n",
             "| layer | category | forward (ms) | forward+backward (ms) |", "|---|---|---:|---:|"]
    lines += [f"| {name} | {category} | {fwd:.2f} | {both:.2f} |" for name, category, fwd, both in rows]
    by_category = {}
    for _, category, fwd, both in rows:
        entry = by_category.setdefault(category, [0.0, 0.0])
        entry[0] += fwd
        entry[1] += both
    lines += ["", "| category | forward (ms) | forward+backward (ms) | share of the layers' sum |",
              "|---|---:|---:|---:|"]
    for category, (fwd, both) in sorted(by_category.items(), key=lambda item: -item[1][1]):
        lines.append(f"| {category} | {fwd:.1f} | {both:.1f} | {100 * both / total:.0f}% |")
    lines.append(f"\nThe whole step minus the layers' sum: {step_ms - total:+.1f} ms (the loss, the optimizer, "
                 "metrics and the framework's per-step work, less what each layer's own call adds when timed "
                 "alone).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
