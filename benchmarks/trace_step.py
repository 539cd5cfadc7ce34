"""Trace: the TensorFlow ops of a registry model's training step, as the step runs them.

`profile_network.py` times each layer on its own, which charges every
layer for its own allocations and dispatch; this script records
TensorFlow's profiler trace of whole `train_on_batch` steps and sums the
time of every op in them, by op type and by op. What it shows is what the
step itself spends, including what a layer's outputs cost to allocate
there (fresh pages of large maps, for instance). The two inter-op threads
run ops side by side, so the sums can exceed the step; the step time is
measured under the profiler, which slows it slightly.

Usage:
    python benchmarks/trace_step.py --models conv,invnet --markdown trace.md
    INVOLUTION_BLOCK_CACHE_MB=0 python benchmarks/trace_step.py --models invnet
"""

import argparse
import collections
import os
import pathlib
import tempfile
import time


def trace(model_name, batch_size, warmup, steps):
    """(ms per traced step, {op type: ms per step}, {op name: (type, ms per step)})."""
    import keras
    import numpy as np
    import tensorflow as tf

    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as error:  # where TensorFlow moves its profiler's protocol buffers
        raise SystemExit(f"this TensorFlow does not ship the profiler's trace format ({error})") from None
    from involution.models import registry

    keras.utils.set_random_seed(0)
    model = registry.create_model(model_name)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, batch_size)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        step_ms = 1000 * (time.perf_counter() - start) / steps
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(pathlib.Path(logdir).rglob("*.xplane.pb")).read_bytes())
    by_type, by_op = collections.Counter(), {}
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            # Op kernels run on TensorFlow's executor threads, named by op
            # ("scope/name:Type"); the Eigen threads' events are their work items.
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                label = plane.event_metadata[event.metadata_id].name
                if ":" not in label or "::" in label:  # the executor's own events ("ExecutorState::Process")
                    continue
                name, op_type = label.rsplit(":", 1)
                ms = event.duration_ps / 1e9 / steps
                by_type[op_type] += ms
                previous = by_op.get(name, (op_type, 0.0))[1]
                by_op[name] = (op_type, previous + ms)
    return step_ms, by_type, by_op


def tables(model_name, step_ms, by_type, by_op, top):
    lines = [f"`{model_name}`: {step_ms:.1f} ms per traced step; op time summed over both inter-op threads "
             f"{sum(by_type.values()):.1f} ms", "", "| op type | ms per step |", "|---|---:|"]
    lines += [f"| {op_type} | {ms:.1f} |" for op_type, ms in by_type.most_common() if ms >= 0.5]
    lines += ["", f"| op (the {top} longest) | type | ms per step |", "|---|---|---:|"]
    longest = sorted(by_op.items(), key=lambda item: -item[1][1])[:top]
    lines += [f"| `{name}` | {op_type} | {ms:.1f} |" for name, (op_type, ms) in longest]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="conv,invnet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15, help="how many single ops to list")
    parser.add_argument("--markdown", help="also write the tables here")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = "tensorflow"
    cache = os.environ.get("INVOLUTION_BLOCK_CACHE_MB", "1024 (default)")
    sections = [f"Batch {args.batch_size}, {args.steps} traced steps after {args.warmup}; "
                f"INVOLUTION_BLOCK_CACHE_MB={cache}."]
    for model_name in args.models.split(","):
        sections.append(tables(model_name, *trace(model_name, args.batch_size, args.warmup, args.steps), args.top))
        print(sections[-1], flush=True)
    if args.markdown:
        pathlib.Path(args.markdown).write_text("\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
