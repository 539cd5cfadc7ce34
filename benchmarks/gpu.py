"""Benchmark: the involution apply step and whole networks on a GPU.

One process per backend (Keras picks its backend at import), each timing,
at RedNet-50's four stage shapes (batch 64, 224x224 input: 56x56x64 with 4
groups, 28x28x128/8, 14x14x256/16, 7x7x512/32, K=7, stride 1) and the
stride-2 first block of each stage, in float32 and bfloat16, forward and
forward+backward:

- `ours`: this project's GPU kernels (Triton on PyTorch, Pallas on JAX;
  TensorFlow has none: its XLA form, `tensorflow-xla`, is its `xla`);
- `xla`: JAX's and TensorFlow's XLA form of the same primitives;
- `unfold`: the unfold formulation (`K*K` patches, then a product and a sum);
- `reference`: the `keras.ops` reference under `torch.compile` / `jax.jit`
  / `tf.function(jit_compile=True)`;
- `depthwise`: a depthwise 7x7 convolution of the same width (cuDNN);
- `floor`: the memory floor, the bytes the step must read and write (forward:
  x and the kernel in, the output out; backward: those and the output's
  gradient in, both gradients out) at the device-to-device copy bandwidth
  measured in the same process.

Then whole networks: the training step (`train_on_batch`) of `rednet50`
against `keras.applications.ResNet50(weights=None)` at batch 64 and 128,
float32 and mixed bfloat16.

Prints one JSON document and a Markdown table per part, naming the device.
`--smoke` runs the same code on the CPU on tiny shapes, the GPU kernels
under their interpreters (`TRITON_INTERPRET=1`,
`INVOLUTION_PALLAS_INTERPRET=1`), one repeat each: a check that the
benchmark runs, not a measurement. A measurement that the registry
refuses here (bfloat16 under Triton's interpreter, say) is reported as
skipped, with the reason; any other error fails the run.

Usage:
    python benchmarks/gpu.py                      # every installed backend
    python benchmarks/gpu.py --backends torch,jax --json gpu.json
    python benchmarks/gpu.py --backends torch --parts ops
    python benchmarks/gpu.py --smoke
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

BACKENDS = ("torch", "jax", "tensorflow")
FORMULATIONS = ("ours", "xla", "unfold", "reference", "depthwise", "floor")
# Measured in this order: the compilers' reference last, as it compiles
# once per shape and is the first to give way to `--budget`.
MEASURED = ("ours", "xla", "unfold", "depthwise", "reference")
DTYPES = ("float32", "bfloat16")
PASSES = ("fwd", "fwd+bwd")


def stage_shapes(smoke):
    """`(label, batch, height, width, channels, groups, stride, kernel_size)`:
    the input's size and the involution's geometry."""
    if smoke:
        # An odd size, stride 2, 3x3: the interpreters cost per tap and program.
        return [("smoke/2", 1, 9, 8, 8, 2, 2, 3)]
    shapes = []
    for stage, (side, channels) in enumerate([(56, 64), (28, 128), (14, 256), (7, 512)], start=1):
        groups = channels // 16
        shapes.append((f"stage{stage}", 64, side, side, channels, groups, 1, 7))
        shapes.append((f"stage{stage}/2", 64, 2 * side, 2 * side, channels, groups, 2, 7))
    return shapes


def network_cases(smoke):
    """`(batch, image side, dtype policy)` of the whole-network part."""
    if smoke:
        return [(2, 32, "float32")]
    return [(batch, 224, policy) for batch in (64, 128) for policy in ("float32", "mixed_bfloat16")]


# === Workers: one backend per process ===


class Skipped(Exception):
    """A measurement this machine cannot take (the registry's reason)."""


def median_ms(step, warmup, repeats):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1000 * times[len(times) // 2]


def floor_bytes(batch, height, width, channels, groups, stride, kernel_size, itemsize, backward):
    out_h, out_w = -(-height // stride), -(-width // stride)
    x = batch * height * width * channels
    kernel = batch * out_h * out_w * groups * kernel_size**2
    out = batch * out_h * out_w * channels
    elements = x + kernel + out
    if backward:
        # x, the kernel and the output's gradient in; both gradients out.
        elements += x + kernel + out + x + kernel
    return elements * itemsize


class Torch:
    def __init__(self, smoke):
        import torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.name = torch.cuda.get_device_name() if self.device == "cuda" else "cpu"
        self.smoke = smoke

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def copy_bandwidth(self):
        size = (1 << 20) if self.smoke else (1 << 28)
        source = self.torch.empty(size, dtype=self.torch.float32, device=self.device)
        target = self.torch.empty_like(source)

        def step():
            target.copy_(source)
            self.sync()

        return 2 * size * 4 / (median_ms(step, 2, 5) / 1000)

    def step(self, formulation, shape, dtype, backward):
        torch = self.torch
        from involution import involution_apply

        _, batch, height, width, channels, groups, stride, kernel_size = shape
        out_h, out_w = -(-height // stride), -(-width // stride)
        dtype = getattr(torch, dtype)
        x = torch.randn((batch, height, width, channels), device=self.device, dtype=dtype)
        kernel = torch.randn((batch, out_h, out_w, groups * kernel_size**2), device=self.device, dtype=dtype)
        geometry = (kernel_size, stride, 1, groups)
        if formulation == "ours":
            forward = _registry_checked(
                lambda a, b: involution_apply(a, b, *geometry, "channels_last", implementation="triton"), x, kernel)
        elif formulation == "reference":
            reference = lambda a, b: involution_apply(a, b, *geometry, "channels_last",  # noqa: E731
                                                      implementation="reference")
            forward = torch.compile(reference, backend="eager" if self.smoke else "inductor")
        elif formulation == "unfold":
            x = x.permute(0, 3, 1, 2).contiguous()
            kernel = kernel.permute(0, 3, 1, 2).contiguous()

            def forward(a, b):
                patches = torch.nn.functional.unfold(a, kernel_size, padding=kernel_size // 2, stride=stride)
                patches = patches.view(batch, groups, channels // groups, kernel_size**2, out_h, out_w)
                weights = b.view(batch, groups, 1, kernel_size**2, out_h, out_w)
                return (patches * weights).sum(dim=3).view(batch, channels, out_h, out_w)
        elif formulation == "depthwise":
            x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            kernel = torch.randn((channels, 1, kernel_size, kernel_size), device=self.device, dtype=dtype)

            def forward(a, b):
                return torch.nn.functional.conv2d(a, b, stride=stride, padding=kernel_size // 2, groups=channels)
        else:
            raise Skipped("no XLA form on PyTorch")
        inputs = [t.requires_grad_(backward) for t in (x, kernel)]

        def step():
            with torch.set_grad_enabled(backward):
                out = forward(*inputs)
                if backward:
                    torch.autograd.grad(out, inputs, torch.ones_like(out))
            self.sync()

        return step



class Jax:
    def __init__(self, smoke):
        import jax

        self.jax = jax
        self.name = jax.devices()[0].device_kind
        self.smoke = smoke

    def copy_bandwidth(self):
        jnp = self.jax.numpy
        size = (1 << 20) if self.smoke else (1 << 28)
        source = jnp.ones((size,), jnp.float32)
        copy = self.jax.jit(lambda a: a + 0)
        return 2 * size * 4 / (median_ms(lambda: copy(source).block_until_ready(), 2, 5) / 1000)

    def step(self, formulation, shape, dtype, backward):
        jax, jnp = self.jax, self.jax.numpy
        from jax import lax

        from involution import involution_apply

        _, batch, height, width, channels, groups, stride, kernel_size = shape
        out_h, out_w = -(-height // stride), -(-width // stride)
        keys = jax.random.split(jax.random.PRNGKey(0), 2)
        x = jax.random.normal(keys[0], (batch, height, width, channels), dtype)
        kernel = jax.random.normal(keys[1], (batch, out_h, out_w, groups * kernel_size**2), dtype)
        geometry = (kernel_size, stride, 1, groups)
        implementations = {"ours": "pallas", "xla": "jax-xla", "reference": "reference"}
        if formulation in implementations:
            implementation = implementations[formulation]

            def forward(a, b):
                return involution_apply(a, b, *geometry, "channels_last", implementation=implementation)

            _registry_checked(forward, x, kernel)
        elif formulation == "unfold":
            def forward(a, b):
                patches = lax.conv_general_dilated_patches(
                    a, (kernel_size, kernel_size), (stride, stride), "SAME",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"))  # (B, Ho, Wo, C*K*K), channel-major
                patches = patches.reshape(batch, out_h, out_w, groups, channels // groups, kernel_size**2)
                weights = b.reshape(batch, out_h, out_w, groups, 1, kernel_size**2)
                return (patches * weights).sum(-1).reshape(batch, out_h, out_w, channels)
        elif formulation == "depthwise":
            kernel = jax.random.normal(keys[1], (kernel_size, kernel_size, 1, channels), dtype)

            def forward(a, b):
                return lax.conv_general_dilated(a, b, (stride, stride), "SAME", feature_group_count=channels,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        else:
            raise Skipped(formulation)
        if backward:
            function = jax.jit(jax.grad(lambda a, b: jnp.sum(forward(a, b).astype(jnp.float32)), argnums=(0, 1)))
        else:
            function = jax.jit(forward)
        return lambda: jax.block_until_ready(function(x, kernel))

class TensorFlow:
    def __init__(self, smoke):
        import tensorflow as tf

        self.tf = tf
        gpus = tf.config.list_physical_devices("GPU")
        self.name = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus
                     else "cpu")
        self.smoke = smoke

    def copy_bandwidth(self):
        tf = self.tf
        size = (1 << 20) if self.smoke else (1 << 28)
        source = tf.ones((size,), tf.float32)
        copy = tf.function(lambda a: tf.identity(a + 0), jit_compile=True)
        return 2 * size * 4 / (median_ms(lambda: copy(source).numpy()[:1], 2, 5) / 1000)

    def step(self, formulation, shape, dtype, backward):
        tf = self.tf
        from involution import involution_apply

        _, batch, height, width, channels, groups, stride, kernel_size = shape
        out_h, out_w = -(-height // stride), -(-width // stride)
        dtype = getattr(tf, dtype)
        x = tf.cast(tf.random.normal((batch, height, width, channels)), dtype)
        kernel = tf.cast(tf.random.normal((batch, out_h, out_w, groups * kernel_size**2)), dtype)
        geometry = (kernel_size, stride, 1, groups)
        jit = False
        if formulation == "ours":
            raise Skipped("TensorFlow has no GPU kernel of this project's: its XLA form is the xla column")
        if formulation == "xla":
            def forward(a, b):
                return involution_apply(a, b, *geometry, "channels_last", implementation="tensorflow-xla")

            _registry_checked(forward, x, kernel)
        elif formulation == "reference":
            jit = True

            def forward(a, b):
                return involution_apply(a, b, *geometry, "channels_last", implementation="reference")
        elif formulation == "depthwise":
            kernel = tf.cast(tf.random.normal((kernel_size, kernel_size, channels, 1)), dtype)

            def forward(a, b):
                return tf.nn.depthwise_conv2d(a, b, (1, stride, stride, 1), "SAME")
        else:
            raise Skipped(formulation)

        def run(a, b):
            if not backward:
                return forward(a, b)
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                loss = tf.reduce_sum(tf.cast(forward(a, b), tf.float32))
            return tape.gradient(loss, [a, b])

        function = tf.function(run, jit_compile=jit)
        return lambda: [t.numpy().flat[:1] for t in tf.nest.flatten(function(x, kernel))]

def train_step(model, batch, side):
    """One `train_on_batch` of `model` on a random batch of `side`² images."""
    import keras
    import numpy as np

    x = np.random.default_rng(0).standard_normal((batch, side, side, 3)).astype("float32")
    y = np.zeros((batch,), "int32")
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return lambda: model.train_on_batch(x, y)


def _registry_checked(forward, *inputs):
    """`forward`, after one call; the registry's refusal becomes a skip."""
    try:
        forward(*inputs)
    except ValueError as error:
        if "cannot run" in str(error):
            raise Skipped(str(error)) from None
        raise
    return forward


def worker(backend, parts, smoke, warmup, repeats, budget):
    runner = {"torch": Torch, "jax": Jax, "tensorflow": TensorFlow}[backend](smoke)
    rows = []
    started = time.perf_counter()

    def out_of_time():
        return time.perf_counter() - started > budget

    if "ops" in parts:
        bandwidth = runner.copy_bandwidth()
        for shape in stage_shapes(smoke):
            for dtype in DTYPES:
                for backward in (False, True):
                    row = {"backend": backend, "device": runner.name, "shape": shape[0],
                           "size": list(shape[1:]), "dtype": dtype, "pass": PASSES[backward]}
                    itemsize = 4 if dtype == "float32" else 2
                    row["floor"] = 1000 * floor_bytes(*shape[1:], itemsize, backward) / bandwidth
                    for formulation in MEASURED:
                        if out_of_time():
                            row[formulation] = "skipped: out of time (--budget)"
                            continue
                        try:
                            row[formulation] = median_ms(runner.step(formulation, shape, dtype, backward), warmup,
                                                         repeats)
                        except Skipped as reason:
                            row[formulation] = f"skipped: {reason}"
                    rows.append(row)
                    print("RESULT " + json.dumps(row), flush=True)
    if "networks" in parts:
        import keras

        started = time.perf_counter()
        from involution.models import create_model

        for batch, side, policy in network_cases(smoke):
            keras.config.set_dtype_policy(policy)
            row = {"backend": backend, "device": runner.name, "network": True, "batch": batch, "side": side,
                   "policy": policy}
            for label, build in (
                ("rednet50", lambda: create_model("rednet50", input_shape=(side, side, 3), num_classes=1000)),
                ("resnet50", lambda: keras.applications.ResNet50(weights=None, input_shape=(side, side, 3),
                                                                 classifier_activation=None)),
            ):
                if out_of_time():
                    row[label] = "skipped: out of time (--budget)"
                    continue
                row[label] = median_ms(train_step(build(), batch, side), warmup, repeats)
            keras.config.set_dtype_policy("float32")
            rows.append(row)
            print("RESULT " + json.dumps(row), flush=True)
    return rows


# === The parent: one worker per backend, then the tables ===


def _cell(value, digits=2):
    if isinstance(value, str):
        return "skipped" if value.startswith("skipped") else value
    return f"{value:.{digits}f}"


def markdown(rows):
    lines = []
    ops = [r for r in rows if not r.get("network")]
    if ops:
        lines.append(f"Apply step, ms (device: {', '.join(sorted({r['device'] for r in ops}))})")
        lines.append("")
        lines.append("| backend | shape | dtype | pass | " + " | ".join(FORMULATIONS) + " | ours / floor |")
        lines.append("|---|---|---|---|" + "---:|" * (len(FORMULATIONS) + 1))
        for r in ops:
            ratio = (f"{r['ours'] / r['floor']:.2f}×" if not isinstance(r["ours"], str) and r["floor"] else "")
            lines.append(f"| {r['backend']} | {r['shape']} | {r['dtype']} | {r['pass']} | "
                         + " | ".join(_cell(r[f]) for f in FORMULATIONS) + f" | {ratio} |")
    networks = [r for r in rows if r.get("network")]
    if networks:
        lines.append("")
        lines.append(f"Training step, ms (device: {', '.join(sorted({r['device'] for r in networks}))})")
        lines.append("")
        lines.append("| backend | batch | image | policy | rednet50 | ResNet50 | rednet50 / ResNet50 |")
        lines.append("|---|---:|---:|---|---:|---:|---:|")
        for r in networks:
            ratio = ("" if isinstance(r["rednet50"], str) or isinstance(r["resnet50"], str)
                     else f"{r['rednet50'] / r['resnet50']:.2f}×")
            lines.append(f"| {r['backend']} | {r['batch']} | {r['side']}² | {r['policy']} | {_cell(r['rednet50'], 1)}"
                         f" | {_cell(r['resnet50'], 1)} | {ratio} |")
    return "\n".join(lines)


def run_backend(backend, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    if args.smoke:
        env.update(TRITON_INTERPRET="1", INVOLUTION_PALLAS_INTERPRET="1", CUDA_VISIBLE_DEVICES="",
                   JAX_PLATFORMS="cpu")
    command = [sys.executable, __file__, "--worker", backend, "--parts", args.parts, "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--budget", str(args.budget)] + (["--smoke"] if args.smoke else [])
    print(f"[{backend}] running", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    rows = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"the {backend} worker failed (exit code {done.returncode}):\n{tail}")
    print(f"[{backend}] {len(rows)} rows", file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=None, help="comma-separated; default: every installed backend")
    parser.add_argument("--parts", default="ops,networks", help="comma-separated: ops, networks")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, under the interpreters")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--budget", type=float, default=75.0,
                        help="seconds per part and backend; measurements past it are reported as skipped")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per backend's process")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 3)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 10)
    parts = args.parts.split(",")
    if not set(parts) <= {"ops", "networks"}:
        parser.error(f"--parts takes ops and/or networks. Received: --parts={args.parts!r}")
    if args.worker:
        # The smoke run checks that every measurement runs: no budget.
        worker(args.worker, parts, args.smoke, args.warmup, args.repeats,
               float("inf") if args.smoke else args.budget)
        return 0
    installed = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    backends = args.backends.split(",") if args.backends else installed
    if not set(backends) <= set(BACKENDS):
        parser.error(f"--backends takes {', '.join(BACKENDS)}. Received: --backends={args.backends!r}")
    rows = []
    for backend in backends:
        rows += run_backend(backend, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    print(json.dumps(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
