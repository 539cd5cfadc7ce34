"""Benchmark: whole-network training steps of every registry model against `conv`.

For every installed backend, every registry model and both `jit_compile`
settings, one fresh process builds the model and the Keras example's conv
model, compiles both as a user would (Adam, sparse categorical
cross-entropy on logits, accuracy), and takes `train_on_batch` steps on a
random CIFAR-sized batch, in rounds of a few conv steps and a few model
steps, so that both see the same machine load. Each cell reports the median step
time of both and their ratio. Keras' default compile (`jit_compile="auto"`)
is `False` on CPU-only TensorFlow and on PyTorch (where `True` means
`torch.compile`), and `True` on JAX (where `False` runs the step op by op).

The worker processes run with the C library's allocator as a Keras program
gets it; `--allocator kept` runs them with malloc keeping freed memory, as
`involution compare` sets it up (`involution_cli.memory`). Results go to
`--json` after every cell, and a rerun with the same file
resumes where it stopped (`--fresh` starts over); `--markdown` writes the
table.

`--without PATHS` measures what each CPU fast path saves instead: for every
path, backend (Keras' default compile) and model, the training step with
the path against the same step without it. Kernel paths (`batch_norm`,
`pool`) are switched off for the second of two copies of the
model in one process (`involution.config.fast_paths(False, ...)` around its
steps, so that traced steps trace without it); process-wide ones
(`block_cache`: `INVOLUTION_BLOCK_CACHE_MB=0`; `malloc`: glibc's default
against `involution compare`'s kept memory) alternate processes with and
without it, each timing the model beside `conv`.

Usage:
    python benchmarks/networks.py --json networks.json --markdown networks.md
    python benchmarks/networks.py --backends tensorflow --models conv,invnet --jit off
    python benchmarks/networks.py --models invnet --without batch_norm,pool,block_cache,malloc
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench_involution import installed_backends, machine_description, run_worker, _save_json
from involution_cli import memory

BASELINE = "conv"
STEPS_PER_ROUND = 3
JIT_SETTINGS = {"off": False, "on": True}
# What `jit_compile="auto"` resolves to on a CPU-only machine.
KERAS_DEFAULT = {"tensorflow": "off", "jax": "on", "torch": "off"}


# Worker: one backend, one jit setting, one model (against conv) ------------------


def worker(model_name, jit, batch_size, warmup, repeats, budget):
    import numpy as np

    import keras
    from involution.models import create_model

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (batch_size, 1))

    def build(name):
        keras.utils.set_random_seed(0)
        model = create_model(name, input_shape=(32, 32, 3), num_classes=10)
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=JIT_SETTINGS[jit])
        return model

    def step(model):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        return time.perf_counter() - start

    names = [BASELINE] if model_name == BASELINE else [BASELINE, model_name]
    models = {name: build(name) for name in names}
    first_step_s = {name: step(model) for name, model in models.items()}
    for _ in range(warmup - 1):
        for model in models.values():
            step(model)
    # Rounds of a few steps of each model in turn: both see the same drift in
    # the machine's speed, and a step rarely follows the other model's (whose
    # memory traffic would leave it colder caches than a training loop has).
    times = {name: [] for name in names}
    started = time.perf_counter()
    while len(times[model_name]) < repeats:
        for name in names:
            step(models[name])  # untimed: back to this model's steady state
            times[name] += [step(models[name]) for _ in range(STEPS_PER_ROUND)]
        if len(times[model_name]) >= 3 and time.perf_counter() - started > budget:
            break
    return {
        "model_ms": 1000 * statistics.median(times[model_name]),
        "conv_ms": 1000 * statistics.median(times[BASELINE]),
        "steps": len(times[model_name]),
        "params": models[model_name].count_params(),
        "jit_compile": bool(models[model_name].jit_compile),
        "first_step_s": first_step_s[model_name],
    }


def worker_without(model_name, path, batch_size, warmup, repeats, budget):
    """The model's step with kernel path `path` on and off, two copies in one process."""
    import numpy as np

    import keras
    from involution import config
    from involution.models import create_model

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (batch_size, 1))

    def build():
        keras.utils.set_random_seed(0)
        model = create_model(model_name, input_shape=(32, 32, 3), num_classes=10)
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    models = {"with": build(), "without": build()}

    def step(setting):
        start = time.perf_counter()
        if setting == "with":
            models[setting].train_on_batch(x, y)
        else:
            with config.fast_paths(False, names=[path]):
                models[setting].train_on_batch(x, y)
        return time.perf_counter() - start

    for _ in range(warmup):
        for setting in models:
            step(setting)
    times = {setting: [] for setting in models}
    started = time.perf_counter()
    while len(times["with"]) < repeats:
        for setting in models:
            step(setting)
            times[setting] += [step(setting) for _ in range(STEPS_PER_ROUND)]
        if len(times["with"]) >= 3 and time.perf_counter() - started > budget:
            break
    return {"with_ms": 1000 * statistics.median(times["with"]),
            "without_ms": 1000 * statistics.median(times["without"]), "steps": len(times["with"])}


# Driver ----------------------------------------------------------------------------

# What turns each process-wide path off in a worker's environment.
PROCESS_PATHS = {"block_cache": {"INVOLUTION_BLOCK_CACHE_MB": "0"}, "malloc": None}
KERNEL_PATHS = ("batch_norm", "pool")
# The backends whose code each path changes.
PATH_BACKENDS = {"batch_norm": ("tensorflow", "torch"), "pool": ("tensorflow", "jax", "torch"),
                 "block_cache": ("tensorflow", "torch"),
                 "malloc": ("tensorflow", "jax", "torch")}


def run_without(backend, model_name, path, args, rounds=2):
    """One cell of `--without`: the model's median step with and without `path`."""
    jit = KERAS_DEFAULT[backend]
    common = ["--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--repeats",
              str(args.repeats), "--budget", str(args.budget)]
    if path in KERNEL_PATHS:
        return run_worker(__file__, backend, ["--worker-without", model_name, path, *common], args.timeout,
                          dict.fromkeys(memory.ENVIRONMENT))
    # Alternating processes; each times the model beside conv, which neither path touches
    # except malloc, so the ratio of the two processes' conv steps is reported too.
    cells = {"with": [], "without": []}
    for _ in range(rounds):
        for setting in ("with", "without"):
            if path == "malloc":
                environment = memory.ENVIRONMENT if setting == "with" else dict.fromkeys(memory.ENVIRONMENT)
            else:
                environment = dict(dict.fromkeys(memory.ENVIRONMENT),
                                   **({} if setting == "with" else PROCESS_PATHS[path]))
            cell = run_worker(__file__, backend, ["--worker", model_name, jit, *common], args.timeout, environment)
            if "error" in cell:
                return cell
            cells[setting].append(cell)
    return {"with_ms": statistics.median(c["model_ms"] for c in cells["with"]),
            "without_ms": statistics.median(c["model_ms"] for c in cells["without"]),
            "conv_with_ms": statistics.median(c["conv_ms"] for c in cells["with"]),
            "conv_without_ms": statistics.median(c["conv_ms"] for c in cells["without"]),
            "steps": sum(c["steps"] for c in cells["with"])}


def format_without(results, backends, models, paths):
    lines = ["| path | backend | model | with | without | with / without |", "|---|---|---|---:|---:|---:|"]
    for path in paths:
        for backend in backends:
            for name in models:
                cell = results.get(backend, {}).get("without", {}).get(path, {}).get(name)
                if cell is None:
                    continue
                if "error" in cell:
                    lines.append(f"| `{path}` | {backend} | `{name}` | failed | | |")
                    continue
                ratio = cell["with_ms"] / cell["without_ms"]
                lines.append(f"| `{path}` | {backend} | `{name}` | {_ms(cell['with_ms'])} ms | "
                             f"{_ms(cell['without_ms'])} ms | **{ratio:.2f}** |")
    return "\n".join(lines)


def run_cell(backend, model_name, jit, args):
    # None removes a variable: glibc's defaults for `--allocator system`.
    environment = memory.ENVIRONMENT if args.allocator == "kept" else dict.fromkeys(memory.ENVIRONMENT)
    return run_worker(__file__, backend, ["--worker", model_name, jit, "--batch-size", str(args.batch_size),
                                          "--warmup", str(args.warmup), "--repeats", str(args.repeats),
                                          "--budget", str(args.budget)], args.timeout, environment)


def registry_models():
    # The registry's names, without importing Keras into the driver.
    code = "from involution.models import list_models; print(','.join(list_models()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return done.stdout.strip().splitlines()[-1].split(",")


def _ms(value):
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def format_markdown(results, backends, models, jits=tuple(JIT_SETTINGS)):
    lines = [
        "| model | params | " + " | ".join(
            f"{backend} jit {jit}{' (default)' if KERAS_DEFAULT.get(backend) == jit else ''}"
            for backend in backends for jit in jits
        ) + " |",
        "|---|---:|" + "---:|" * (len(backends) * len(jits)),
    ]
    for name in models:
        params = None
        cells = []
        for backend in backends:
            for jit in jits:
                cell = results.get(backend, {}).get(jit, {}).get(name)
                if cell is None:
                    cells.append("")
                elif "error" in cell:
                    cells.append("failed")
                else:
                    params = cell["params"]
                    ratio = cell["model_ms"] / cell["conv_ms"]
                    cells.append(f"{_ms(cell['model_ms'])} ms" if name == BASELINE else
                                 f"{_ms(cell['model_ms'])} / {_ms(cell['conv_ms'])} ms = **{ratio:.2f}×**")
        lines.append(f"| `{name}` | {params:,} | " if params else f"| `{name}` | | ")
        lines[-1] += " | ".join(cells) + " |"
    return "\n".join(lines)


def summary(results, backends, model="invnet"):
    """The targets' ratios: per backend, and fastest against fastest."""
    lines = []
    fastest = {}
    for backend in backends:
        for jit in JIT_SETTINGS:
            cell = results.get(backend, {}).get(jit, {}).get(model)
            if not cell or "error" in cell:
                continue
            for name, key in ((model, "model_ms"), (BASELINE, "conv_ms")):
                if name not in fastest or cell[key] < fastest[name][0]:
                    fastest[name] = (cell[key], f"{backend}, jit {jit}")
        default = results.get(backend, {}).get(KERAS_DEFAULT.get(backend, "off"), {}).get(model)
        measured = [results[backend][jit][model] for jit in JIT_SETTINGS
                    if model in results.get(backend, {}).get(jit, {})
                    and "error" not in results[backend][jit][model]]
        if default and "error" not in default:
            line = f"- {backend}: `{model}` / `conv`, Keras' default compile: {default['model_ms'] / default['conv_ms']:.2f}×"
            if measured:
                quickest = min(measured, key=lambda c: c["model_ms"])
                conv_quickest = min(c["conv_ms"] for c in measured)
                line += (f"; each at its faster setting: {quickest['model_ms']:.0f} / {conv_quickest:.0f} ms = "
                         f"{quickest['model_ms'] / conv_quickest:.2f}×")
            lines.append(line)
    if model in fastest and BASELINE in fastest:
        (model_ms, where), (conv_ms, conv_where) = fastest[model], fastest[BASELINE]
        lines.append(f"- fastest `{model}` ({where}) / fastest `conv` ({conv_where}): "
                     f"{model_ms:.0f} / {conv_ms:.0f} ms = {model_ms / conv_ms:.2f}×")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=None, help="comma-separated (default: every installed one)")
    parser.add_argument("--models", default=None, help="comma-separated registry names (default: all)")
    parser.add_argument("--jit", default="off,on", help="off, on or off,on (default)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3, help="steps of each model before timing (the first compiles)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps of each model")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of timed steps per cell, after which it stops at 3 steps or more")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per cell")
    parser.add_argument("--allocator", choices=("system", "kept"), default="system",
                        help="system: the C library's defaults, as a Keras program gets them; kept: malloc "
                             "keeps freed memory, as `involution compare` sets it up (involution_cli.memory)")
    parser.add_argument("--json", help="write the results here after every cell, and resume from them")
    parser.add_argument("--fresh", action="store_true", help="measure everything again instead of resuming")
    parser.add_argument("--markdown", help="also write the table here")
    parser.add_argument("--without", help="comma-separated paths to measure with and without: "
                        + ", ".join((*KERNEL_PATHS, *PROCESS_PATHS)) + " (Keras' default compile)")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "JIT"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-without", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker_without:
        result = worker_without(*args.worker_without, args.batch_size, args.warmup, args.repeats, args.budget)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.worker:
        model_name, jit = args.worker
        result = worker(model_name, jit, args.batch_size, args.warmup, args.repeats, args.budget)
        print("RESULT " + json.dumps(result), flush=True)
        return

    backends = args.backends.split(",") if args.backends else installed_backends()
    models = args.models.split(",") if args.models else registry_models()
    if BASELINE not in models:
        models.insert(0, BASELINE)
    jits = args.jit.split(",")
    for jit in jits:
        if jit not in JIT_SETTINGS:
            parser.error(f"--jit takes off, on or off,on. Received: --jit={args.jit}")
    results = {}
    if args.json and os.path.exists(args.json) and not args.fresh:
        with open(args.json) as f:
            results = json.load(f)
        print(f"Resuming from {args.json} (--fresh to start over).")
    settings = {"machine": machine_description(), "batch_size": args.batch_size, "allocator": args.allocator}
    if any(results.get(key, value) != value for key, value in settings.items() if key != "machine"):
        parser.error(f"{args.json} holds a run with other settings; pass --fresh or another --json")
    results.update(settings)
    if args.without:
        return main_without(args, parser, results, backends, [m for m in models if m != BASELINE])
    # Model by model, so that an interrupted run has every backend's cells
    # for the models it reached.
    for name in models:
        for backend in backends:
            for jit in jits:
                cells = results.setdefault(backend, {}).setdefault(jit, {})
                if name in cells and "error" not in cells[name]:
                    continue
                started = time.perf_counter()
                cell = run_cell(backend, name, jit, args)
                cells[name] = cell
                _save_json(args.json, results)
                if "error" in cell:
                    text = f"failed: {cell['error']}"
                else:
                    text = (f"{cell['model_ms']:8.1f} ms  conv {cell['conv_ms']:7.1f} ms  "
                            f"{cell['model_ms'] / cell['conv_ms']:5.2f}x  ({cell['steps']} steps)")
                print(f"{backend:10s} jit {jit:3s} {name:22s} {text}  [{time.perf_counter() - started:.0f} s]",
                      flush=True)
    table = format_markdown(results, backends, models, jits)
    allocator = ("malloc keeping freed memory (`involution_cli.memory`)" if args.allocator == "kept"
                 else "glibc's default malloc")
    text = (f"{results['machine']}; batch {args.batch_size} of 32×32×3, Adam, {allocator}; median ms per "
            f"`train_on_batch` step: the `conv` row alone, every other cell the model's step / the conv step measured "
            f"alongside it in the same process = their ratio.\n\n"
            f"{table}\n\n{summary(results, backends)}\n")
    _report(text, args.markdown)


def _report(text, markdown):
    print("\n" + text)
    if markdown:
        with open(markdown, "w") as f:
            f.write(text)


def main_without(args, parser, results, backends, models):
    paths = args.without.split(",")
    for path in paths:
        if path not in KERNEL_PATHS and path not in PROCESS_PATHS:
            parser.error(f"--without takes {', '.join((*KERNEL_PATHS, *PROCESS_PATHS))}. Received: {path}")
    for path in paths:
        for backend in backends:
            if backend not in PATH_BACKENDS[path]:
                continue
            for name in models:
                cells = results.setdefault(backend, {}).setdefault("without", {}).setdefault(path, {})
                if name in cells and "error" not in cells[name]:
                    continue
                started = time.perf_counter()
                cells[name] = cell = run_without(backend, name, path, args)
                _save_json(args.json, results)
                text = (f"failed: {cell['error']}" if "error" in cell else
                        f"with {cell['with_ms']:7.1f} ms  without {cell['without_ms']:7.1f} ms  "
                        f"{cell['with_ms'] / cell['without_ms']:5.2f}")
                print(f"{path:12s} {backend:10s} {name:22s} {text}  [{time.perf_counter() - started:.0f} s]",
                      flush=True)
    text = (f"{results['machine']}; batch {args.batch_size} of 32×32×3, Adam, Keras' default compile; median ms "
            f"per `train_on_batch` step with each path and without it (kernel paths: two copies of the model in "
            f"one process; block cache and malloc: alternating processes).\n\n"
            f"{format_without(results, backends, models, paths)}\n")
    _report(text, args.markdown)


if __name__ == "__main__":
    main()
