"""Benchmark: one training step of registry models, side by side, as ratios.

Times `train_on_batch` on a random CIFAR-sized batch (median over repeats,
after warm-up) for each model, in one process on the current backend, and
prints each model's time as a ratio to the first one. To measure what the
project's PyTorch speed-ups save, `--keras-pooling` replaces its pooling
(`involution.ops.pool`) by Keras' own, `--keras-pointwise` runs the kernel
generators' 1x1 convolutions as Keras' Conv2D again, and
`--keras-batch-norm` turns off `involution.normalization`'s fused step.

Usage:
    KERAS_BACKEND=torch python benchmarks/train_step.py --models conv,invnet
    KERAS_BACKEND=torch python benchmarks/train_step.py --models conv,invnet --keras-pooling --keras-pointwise --keras-batch-norm
"""

import argparse
import time

import numpy as np


def step_time(model, x, y, warmup, repeats):
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times)), float(np.max(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="conv,invnet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--keras-pooling", action="store_true")
    parser.add_argument("--keras-pointwise", action="store_true")
    parser.add_argument("--keras-batch-norm", action="store_true")
    args = parser.parse_args()

    import keras

    from involution import layer, normalization, ops
    from involution.models import create_model

    if args.keras_pooling:
        def keras_pool(inputs, size, strides, mode, data_format):
            pooling = keras.ops.max_pool if mode == "max" else keras.ops.average_pool
            return pooling(inputs, size, strides, "valid", data_format)

        ops.pool = keras_pool
    if args.keras_pointwise:
        layer.InvolutionKernelGenerator._pointwise = lambda self, conv, x: conv(x)
    if args.keras_batch_norm:
        normalization.BatchNormalization._fused_training_applies = lambda self, inputs, mask: False

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (args.batch_size, 1))
    first = None
    print(f"backend {keras.backend.backend()}, batch {args.batch_size}, median of {args.repeats} steps")
    for name in args.models.split(","):
        model = create_model(name)
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        median, low, high = step_time(model, x, y, args.warmup, args.repeats)
        first = first or median
        print(f"{name:22s} {model.count_params():>10,d} params  {1000 * median:7.1f} ms/step "
              f"(min {1000 * low:.1f}, max {1000 * high:.1f})  {median / first:.2f}x", flush=True)


if __name__ == "__main__":
    main()
