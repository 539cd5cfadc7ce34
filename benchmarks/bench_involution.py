"""Benchmark: involution formulations side by side, on every installed backend.

Times forward and forward+backward (median and spread over repeats, after
warm-up) and the peak memory of:

- `ours-fast`: this project's apply step, the backend's fast path (none on
  JAX, where the reference is what runs);
- `ours-reference`: this project's portable `keras.ops` apply step;
- `ours-layer`: the whole `Involution` layer (kernel generation included);
- `example`: the Keras example's formulation (extract_patches, multiply,
  sum), re-implemented here with each backend's patch op; on TensorFlow
  also under XLA (`example-xla`);
- `official`: the official PyTorch formulation (nn.Unfold, multiply, sum),
  re-implemented here (PyTorch only);
- `conv3x3`, `conv7x7`: Conv2D of the same width, for scale;

and the training time per epoch of the compare command's models.

Every measurement runs in a fresh process, so that its peak resident memory
(`ru_maxrss`, minus the process's memory before the first call) is its own.

Usage:
    python benchmarks/bench_involution.py                      # everything
    python benchmarks/bench_involution.py --backends jax --shapes rednet
    python benchmarks/bench_involution.py --json results.json --markdown table.md
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {
    # name: (batch, height, width, channels, kernel_size, groups)
    "rednet": (32, 32, 32, 64, 7, 4),
    "seed": (256, 32, 32, 3, 3, 1),
    "stage": (32, 56, 56, 64, 7, 4),
    # invnet's residual blocks (not in the default run).
    "invnet16": (256, 16, 16, 64, 3, 2),
    "invnet8": (256, 8, 8, 128, 7, 4),
}
FORMULATIONS = ["ours-fast", "ours-reference", "ours-layer", "example", "example-xla",
                "official", "conv3x3", "conv7x7"]
AVAILABLE = {
    "ours-fast": {"tensorflow", "jax", "torch"},
    "example-xla": {"tensorflow"},
    "official": {"torch"},
}
# JAX's only patch op is a convolution with an identity kernel
# (`conv_general_dilated_patches`); its backward on CPU takes tens of seconds
# a step at these shapes, which measures that op, not the formulation. The
# ratios use the example on TensorFlow (its own backend) anyway.
DEFAULT_EXCLUDE = "jax:example"


# Worker: one formulation, one shape, one backend --------------------------------


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _patches_nhwc(x, kernel_size):
    """(B, H, W, K*K*C) neighbourhoods, ordered (ky, kx, c), with each backend's own op.

    The example calls `tf.image.extract_patches`; the same patch tensor comes
    from `lax.conv_general_dilated_patches` on JAX and `nn.functional.unfold`
    on PyTorch. (`keras.ops.image.extract_patches` is not used: it is a
    convolution with an identity kernel, far slower than any of these.)
    """
    import keras

    backend = keras.backend.backend()
    batch, height, width, channels = x.shape
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.image.extract_patches(x, [1, kernel_size, kernel_size, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
    if backend == "jax":
        from jax import lax

        patches = lax.conv_general_dilated_patches(
            x, (kernel_size, kernel_size), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        # JAX orders the patch channels (c, ky, kx); reorder to (ky, kx, c).
        patches = patches.reshape(batch, height, width, channels, kernel_size * kernel_size)
        return patches.transpose(0, 1, 2, 4, 3).reshape(batch, height, width, -1)
    import torch

    unfolded = torch.nn.functional.unfold(x.permute(0, 3, 1, 2), kernel_size, padding=(kernel_size - 1) // 2)
    unfolded = unfolded.view(batch, channels, kernel_size * kernel_size, height, width)
    return unfolded.permute(0, 3, 4, 2, 1).reshape(batch, height, width, -1)


def _example_apply(x, kernel, kernel_size, groups):
    """The Keras example's apply: patches (B,H,W,K*K*C), reshape, multiply, sum.

    Its grouping is the example's (channel c in group c % G), which changes
    nothing about the work done.
    """
    from keras import ops

    batch, height, width, channels = x.shape
    patches = _patches_nhwc(x, kernel_size)
    patches = ops.reshape(patches, (batch, height, width, kernel_size * kernel_size, channels // groups, groups))
    kernel = ops.reshape(kernel, (batch, height, width, kernel_size * kernel_size, 1, groups))
    return ops.reshape(ops.sum(kernel * patches, axis=3), (batch, height, width, channels))


def _official_apply(x, kernel, kernel_size, groups):
    """The official PyTorch apply (mmcv-style): unfold, view, multiply, sum (NCHW)."""
    import torch

    batch, channels, height, width = x.shape
    unfold = torch.nn.functional.unfold(x, kernel_size, padding=(kernel_size - 1) // 2)
    unfold = unfold.view(batch, groups, channels // groups, kernel_size * kernel_size, height, width)
    weight = kernel.view(batch, groups, kernel_size * kernel_size, height, width).unsqueeze(2)
    return (weight * unfold).sum(dim=3).view(batch, channels, height, width)


def _build(formulation, shape):
    """Returns (forward(x, k), inputs tuple, differentiable argument count)."""
    import keras
    import numpy as np

    from involution import Involution, involution_apply

    batch, height, width, channels, kernel_size, groups = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, height, width, channels)).astype("float32")
    kernel = rng.standard_normal((batch, height, width, groups * kernel_size**2)).astype("float32")
    backend = keras.backend.backend()
    if formulation in ("ours-fast", "ours-reference"):
        implementation = formulation.split("-")[1]
        return (lambda a, b: involution_apply(a, b, kernel_size, 1, 1, groups, "channels_last",
                                              implementation=implementation)), (x, kernel)
    if formulation in ("example", "example-xla"):
        return (lambda a, b: _example_apply(a, b, kernel_size, groups)), (x, kernel)
    if formulation == "official":
        x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        k_nchw = np.ascontiguousarray(kernel.transpose(0, 3, 1, 2))
        return (lambda a, b: _official_apply(a, b, kernel_size, groups)), (x_nchw, k_nchw)
    if formulation == "ours-layer":
        layer = Involution(channels, groups, kernel_size, 1, 4 if channels >= 4 else 1)
    elif formulation in ("conv3x3", "conv7x7"):
        layer = keras.layers.Conv2D(channels, int(formulation[4]), padding="same")
    else:
        raise ValueError(formulation)
    layer.build(x.shape)
    if backend == "jax":
        # Pure function of the input for jax.grad; batch statistics (training
        # mode) without writing the layer's state back.
        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        extra = {"training": True} if formulation == "ours-layer" else {}
        return (lambda a: layer.stateless_call(trainable, non_trainable, a, **extra)[0]), (x,)
    return (lambda a: layer(a, training=True)), (x,)


def _runner(formulation, forward, inputs, backward):
    """A zero-argument callable that runs one step and waits for its result."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        tensors = [jax.numpy.asarray(a) for a in inputs]
        if backward:
            loss = lambda *a: (forward(*a) ** 2).sum()  # noqa: E731
            step = jax.jit(jax.grad(loss, argnums=tuple(range(len(tensors)))))
        else:
            step = jax.jit(forward)
        return lambda: jax.block_until_ready(step(*tensors))
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in inputs]

        def fn(*a):
            if not backward:
                return forward(*a)
            with tf.GradientTape() as tape:
                tape.watch(a)
                loss = tf.reduce_sum(forward(*a) ** 2)
            return tape.gradient(loss, a)

        step = tf.function(fn, jit_compile=formulation == "example-xla")
        return lambda: [t.numpy() for t in tf.nest.flatten(step(*tensors))]
    import torch

    torch.set_grad_enabled(backward)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tensors = [torch.tensor(a, requires_grad=backward, device=device) for a in inputs]

    def step():
        out = forward(*tensors)
        if backward:
            for t in tensors:
                t.grad = None
            (out**2).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def _device_peak_bytes():
    """Peak bytes of the accelerator's allocator, or None on CPU."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return (device.memory_stats() or {}).get("peak_bytes_in_use")
    return None


def device_name():
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()[0].device_kind
    return "cpu"


def worker(backend_formulation_shape, warmup, repeats):
    formulation, shape_name, pass_name = backend_formulation_shape
    forward, inputs = _build(formulation, SHAPES[shape_name])
    step = _runner(formulation, forward, inputs, backward=pass_name == "fwd+bwd")
    baseline = _rss_bytes()
    started = time.perf_counter()
    step()  # compile / first call
    first = time.perf_counter() - started
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    device_peak = _device_peak_bytes()
    if device_peak is not None:
        peak = device_peak  # the accelerator's memory, inputs included
    return {
        "median_ms": 1000 * statistics.median(times),
        "min_ms": 1000 * min(times),
        "max_ms": 1000 * max(times),
        "first_call_ms": 1000 * first,
        "peak_mib": max(peak, 0) / 2**20,
        "device": device_name(),
    }


def train_worker(data, limit, epochs, batch_size, model_names=("conv", "involution")):
    """Seconds per epoch of registry models: the median of the epochs after
    the first (the first compiles; on TensorFlow a later one can still
    compile the partial last batch's shape)."""
    import keras
    import numpy as np

    from involution.app.data import load_dataset
    from involution.models import create_model
    from involution.app.training import TrainConfig, compile_model

    if data:
        dataset = load_dataset(data, progress=False).subset(limit, seed=0)
        x, y = dataset.x_train.astype("float32") / 255.0, dataset.y_train
    else:
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (limit, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, limit)
    result = {}
    for name in model_names:
        keras.utils.set_random_seed(0)
        model = create_model(name)
        compile_model(model, TrainConfig())

        class EpochTimer(keras.callbacks.Callback):
            times = []

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self.started)

        timer = EpochTimer()
        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[timer])
        result[name] = {"epoch_s": float(np.median(timer.times[1:] or timer.times)), "images": len(x),
                        "epochs_s": timer.times}
    return result


# Driver ----------------------------------------------------------------------------


def _run_subprocess(backend, args, timeout):
    return run_worker(__file__, backend, args, timeout)


def run_worker(script, backend, args, timeout, environment=None):
    """Runs `script` with `args` on `backend` in a fresh process: the JSON of
    its `RESULT ` line, or `{"error": ...}`."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env.update(environment or {})
    env = {name: value for name, value in env.items() if value is not None}
    command = [sys.executable, os.path.abspath(script), *args]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}


def _save_json(path, results):
    """Written after every measurement, atomically: an interrupted run keeps its results."""
    if not path:
        return
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)


def installed_backends():
    import importlib.util

    names = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    return [b for b, module in names.items() if importlib.util.find_spec(module)]


def machine_description():
    import platform

    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {pages / 2**30:.0f} GiB, {platform.platform()}"


def format_markdown(results, args):
    lines = []
    for shape_name in args.shapes:
        batch, height, width, channels, kernel_size, groups = SHAPES[shape_name]
        lines.append(f"\n### {shape_name}: batch {batch}, {height}×{width}, {channels} channels, "
                     f"K {kernel_size}, {groups} group{'s' if groups > 1 else ''}\n")
        lines.append("| backend | formulation | forward (ms) | fwd+bwd (ms) | fwd+bwd spread (ms) | "
                     "peak memory fwd+bwd (MiB) | fwd+bwd speed-up vs example (TF graph) | vs official (torch) |")
        lines.append("|---|---|---|---|---|---|---|---|")
        official = results.get("torch", {}).get(shape_name, {}).get("official", {}).get("fwd+bwd", {})
        example = results.get("tensorflow", {}).get(shape_name, {}).get("example", {}).get("fwd+bwd", {})
        for backend in args.backends:
            rows = results.get(backend, {}).get(shape_name, {})
            for formulation in FORMULATIONS:
                if formulation not in rows:
                    continue
                fwd, both = rows[formulation].get("fwd", {}), rows[formulation].get("fwd+bwd", {})

                def cell(entry, key="median_ms", digits=1):
                    if "error" in entry:
                        return "error: " + entry["error"][:60]
                    return f"{entry[key]:.{digits}f}" if key in entry else "–"

                def ratio(base):
                    if "median_ms" in base and "median_ms" in both:
                        return f"{base['median_ms'] / both['median_ms']:.1f}×"
                    return "–"

                spread = (f"{both['min_ms']:.1f}–{both['max_ms']:.1f}" if "min_ms" in both else "–")
                lines.append(f"| {backend} | {formulation} | {cell(fwd)} | {cell(both)} | {spread} | "
                             f"{cell(both, 'peak_mib', 0)} | {ratio(example)} | {ratio(official)} |")
    if "training" in results:
        lines.append("\n### Training time per epoch (compare command's models)\n")
        names = args.train_models.split(",")
        lines.append("| backend | " + " | ".join(f"{n} (s/epoch)" for n in names) + " | "
                     + " | ".join(f"{n} / {names[0]}" for n in names[1:]) + " |")
        lines.append("|---" * (2 * len(names)) + "|")
        for backend, entry in results["training"].items():
            if "error" in entry:
                lines.append(f"| {backend} | error: {entry['error'][:80]} |")
                continue
            times = [entry[n]["epoch_s"] for n in names]
            lines.append(f"| {backend} | " + " | ".join(f"{t:.1f}" for t in times) + " | "
                         + " | ".join(f"{t / times[0]:.2f}" for t in times[1:]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=None, help="comma-separated; default: every installed one")
    parser.add_argument("--shapes", default="rednet,seed,stage",
                        help="comma-separated shape names; \"\" times only the training epochs")
    parser.add_argument("--formulations", default=",".join(FORMULATIONS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per measurement")
    parser.add_argument("--train-data", default=os.environ.get("INVOLUTION_DATA"),
                        help="CIFAR-10 source for the epoch timing (default $INVOLUTION_DATA; synthetic if unset)")
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--train-epochs", type=int, default=4)
    parser.add_argument("--train-models", default="conv,involution",
                        help="registry models whose epoch time is measured (the first is the baseline)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--exclude", default=DEFAULT_EXCLUDE,
                        help=f"comma-separated backend:formulation pairs to skip (default {DEFAULT_EXCLUDE})")
    parser.add_argument("--fresh", action="store_true",
                        help="measure everything again instead of resuming from --json")
    parser.add_argument("--json", help="write the results here (and resume from them when rerun)")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--worker", nargs=3, metavar=("FORMULATION", "SHAPE", "PASS"), help=argparse.SUPPRESS)
    parser.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.warmup, args.repeats)), flush=True)
        return 0
    if args.train_worker:
        result = train_worker(args.train_data, args.train_images, args.train_epochs, 256,
                              args.train_models.split(","))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    args.backends = args.backends.split(",") if args.backends else installed_backends()
    # `--shapes ""` leaves only the epoch timing.
    args.shapes = [name for name in args.shapes.split(",") if name]
    formulations = [name for name in args.formulations.split(",") if name]
    excluded = set(filter(None, args.exclude.split(",")))
    results = {}
    if args.json and os.path.exists(args.json) and not args.fresh:
        with open(args.json) as f:
            results = json.load(f)
        print(f"Resuming from {args.json} (--fresh to start over).")
    results.update(machine=machine_description(), date=time.strftime("%Y-%m-%d %H:%M"),
                   command=" ".join([os.path.basename(sys.executable), *sys.argv]))
    common = ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    for backend in args.backends:
        for shape_name in args.shapes:
            for formulation in formulations:
                if backend not in AVAILABLE.get(formulation, {backend}) or f"{backend}:{formulation}" in excluded:
                    continue
                for pass_name in ("fwd", "fwd+bwd"):
                    done = results.get(backend, {}).get(shape_name, {}).get(formulation, {}).get(pass_name, {})
                    if "median_ms" in done:
                        continue
                    entry = _run_subprocess(backend, ["--worker", formulation, shape_name, pass_name, *common], args.timeout)
                    results.setdefault(backend, {}).setdefault(shape_name, {}).setdefault(formulation, {})[pass_name] = entry
                    _save_json(args.json, results)
                    shown = f"{entry['median_ms']:.1f} ms, {entry['peak_mib']:.0f} MiB" if "median_ms" in entry else entry["error"]
                    print(f"{backend:<10} {shape_name:<7} {formulation:<15} {pass_name:<8} {shown}", flush=True)
    if not args.skip_training:
        results.setdefault("training", {})
        for backend in args.backends:
            if "error" not in results["training"].get(backend, {"error": ""}):
                continue
            extra = ["--train-images", str(args.train_images), "--train-epochs", str(args.train_epochs),
                     "--train-models", args.train_models]
            if args.train_data:
                extra += ["--train-data", args.train_data]
            entry = _run_subprocess(backend, ["--train-worker", *extra], args.timeout * 3)
            results["training"][backend] = entry
            _save_json(args.json, results)
            print(f"{backend:<10} training {entry}", flush=True)
    table = format_markdown(results, args)
    print(table)
    _save_json(args.json, results)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
