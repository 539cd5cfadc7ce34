"""Benchmark: one training step of registry models, side by side, as ratios.

Times `train_on_batch` on a random CIFAR-sized batch (median over repeats,
after warm-up) for each model, in one process on the current backend, and
prints each model's time as a ratio to the first one. To measure what the
project's PyTorch speed-ups save, `--keras-pooling` replaces its pooling
(`involution.ops.pool`) by Keras' own, `--keras-pointwise` runs the kernel
generators' 1x1 convolutions as Keras' Conv2D again, and
`--keras-batch-norm` turns off `involution.normalization`'s fused step.

`--variant LABEL=MODEL:JSON` adds a registry model built with keyword
arguments (`--variant 'rr8=invnet:{"reduction_ratio": 8}'`), and
`--interleaved` takes the steps in rounds, one step of each model per
round, so that a machine whose speed drifts (other jobs, thermal limits)
slows every model alike.

Usage:
    KERAS_BACKEND=torch python benchmarks/train_step.py --models conv,invnet
    KERAS_BACKEND=torch python benchmarks/train_step.py --models conv,invnet --interleaved \
        --variant 'rr8=invnet:{"reduction_ratio": 8}'
    KERAS_BACKEND=torch python benchmarks/train_step.py --models conv,invnet --keras-pooling --keras-pointwise --keras-batch-norm
"""

import argparse
import json
import time

import numpy as np


def timed_step(model, x, y):
    start = time.perf_counter()
    model.train_on_batch(x, y)
    return time.perf_counter() - start


def step_time(model, x, y, warmup, repeats):
    for _ in range(warmup):
        model.train_on_batch(x, y)
    return _summary([timed_step(model, x, y) for _ in range(repeats)])


def _summary(times):
    return float(np.median(times)), float(np.min(times)), float(np.max(times))


def parse_variant(text):
    """`LABEL=MODEL:JSON` (or `LABEL=MODEL`) -> (label, model, kwargs)."""
    label, separator, spec = text.partition("=")
    model, _, arguments = spec.partition(":")
    if not separator or not label or not model:
        raise argparse.ArgumentTypeError(
            f"Expected LABEL=MODEL or LABEL=MODEL:JSON. Received: --variant={text!r}"
        )
    try:
        kwargs = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"Bad JSON in --variant={text!r}: {error}") from None
    if not isinstance(kwargs, dict):
        raise argparse.ArgumentTypeError(f"Expected a JSON object of arguments. Received: --variant={text!r}")
    return label, model, kwargs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="conv,invnet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--variant", action="append", type=parse_variant, default=[],
                        help="LABEL=MODEL:JSON, a registry model with keyword arguments (repeatable)")
    parser.add_argument("--interleaved", action="store_true",
                        help="one step of each model per round instead of each model's steps in a row")
    parser.add_argument("--keras-pooling", action="store_true")
    parser.add_argument("--keras-pointwise", action="store_true")
    parser.add_argument("--keras-batch-norm", action="store_true")
    args = parser.parse_args()

    import keras

    from involution import config, layer
    from involution.models import create_model

    if args.keras_pooling:
        config.set_fast_path("pool", False)
    if args.keras_pointwise:
        # Not a fast path of its own: the generator's 1x1 convolutions as
        # Keras' Conv2D calls, to measure what the matrix products save.
        layer.InvolutionKernelGenerator._pointwise = lambda self, conv, x: conv(x)
    if args.keras_batch_norm:
        config.set_fast_path("batch_norm", False)

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (args.batch_size, 1))
    print(f"backend {keras.backend.backend()}, batch {args.batch_size}, median of {args.repeats} steps"
          + (", interleaved" if args.interleaved else ""))
    entries = [(name, name, {}) for name in args.models.split(",") if name] + args.variant
    models = []
    for label, name, kwargs in entries:
        model = create_model(name, **kwargs)
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        models.append((label, model))
    if args.interleaved:
        for _, model in models:
            for _ in range(args.warmup):
                model.train_on_batch(x, y)
        times = {label: [] for label, _ in models}
        for _ in range(args.repeats):
            for label, model in models:
                times[label].append(timed_step(model, x, y))
        results = [(label, model, _summary(times[label])) for label, model in models]
    else:
        results = [(label, model, step_time(model, x, y, args.warmup, args.repeats)) for label, model in models]
    first = results[0][2][0]
    for label, model, (median, low, high) in results:
        print(f"{label:22s} {model.count_params():>10,d} params  {1000 * median:7.1f} ms/step "
              f"(min {1000 * low:.1f}, max {1000 * high:.1f})  {median / first:.2f}x", flush=True)


if __name__ == "__main__":
    main()
