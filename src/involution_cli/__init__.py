"""The `involution` command: parses its arguments before Keras is imported.

Keras reads `KERAS_BACKEND` once, when it is first imported, and importing
the `involution` package imports Keras; so the command lives apart from the
package, chooses the backend (and how much the frameworks may log) first,
and only then imports the package's handlers (`involution.app.cli`). `--help`
and argument errors never import Keras.
"""

import argparse
import importlib.util
import json
import math
import os
import re
import shlex
import sys

from involution_cli import memory

BACKENDS = ("tensorflow", "jax", "torch")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer. Received: {text}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number. Received: {text}")
    return value


def _seed_list(text):
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"expected distinct non-negative integers separated by commas, e.g. 42,43,44. Received: {text}"
        )
    return seeds


def _add_common_options(parser):
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: KERAS_BACKEND, else Keras' configured one, else the first installed of "
        + ", ".join(BACKENDS) + ")",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="show the frameworks' own log messages and warnings")


def build_parser():
    parser = argparse.ArgumentParser(prog="involution", description="Involutional neural networks on Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="Run the Keras example's shape checks.")
    demo.add_argument("--batch", type=_positive_int, default=32)
    demo.add_argument("--size", type=_positive_int, default=256)
    _add_common_options(demo)

    compare = commands.add_parser(
        "compare",
        help="Train conv vs involution models on CIFAR-10 and write a report.",
        description=(
            "Trains the chosen models one after another with the Keras example's recipe (or --recipe strong) "
            "and writes report.html, report.md, plots, histories and models to --output."
        ),
    )
    compare.add_argument("--models", default="conv,involution",
                         help="comma-separated registry names (default: conv,involution)")
    compare.add_argument("--recipe", choices=("example", "strong"), default="example",
                         help="example: the Keras example's (default); strong: shifts and flips, AdamW, warm-up "
                         "and cosine decay, label smoothing, 30 epochs")
    compare.add_argument("--epochs", type=_positive_int, help="default: the recipe's (example 20, strong 30)")
    compare.add_argument("--batch-size", type=_positive_int, help="default: the recipe's (example 256, strong 128)")
    compare.add_argument("--learning-rate", type=_positive_float,
                         help="Adam's rate, or the strong recipe's peak (default: example 1e-3, strong 2e-3)")
    seeds = compare.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=42, help="the run's seed (default 42)")
    seeds.add_argument("--seeds", type=_seed_list,
                       help="comma-separated seeds: train every model once per seed and report mean ± std")
    compare.add_argument("--output", help="output folder (default: runs/<timestamp>)")
    compare.add_argument(
        "--data",
        help="local CIFAR-10: cifar-10-python.tar.gz, cifar-10-batches-py/, or an image-folder "
        "tree (folder or .tar.gz); default $INVOLUTION_DATA, else download",
    )
    compare.add_argument("--cache-dir",
                         help="decoded-data cache (default $INVOLUTION_CACHE or ~/.cache/involution)")
    compare.add_argument("--limit", type=_positive_int, help="use at most N training and N test images")
    compare.add_argument("--resume", action="store_true",
                         help="continue the run in --output (default: the latest under runs/)")
    compare.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_common_options(compare)

    evaluate = commands.add_parser(
        "evaluate",
        help="Measure a preset's accuracy on CIFAR-10's test images or an image folder (ImageNet's val).",
        description="Loads a preset (a shipped name or a preset folder) and measures its top-1 and top-5 accuracy "
        "on --data, preprocessed as its metadata records, next to the accuracy the metadata states. The CIFAR "
        "presets read CIFAR-10 sources; the converted ImageNet RedNets an image folder with one subfolder per "
        "class (val/<wnid>/*.JPEG), or a flat folder and --labels.",
    )
    evaluate.add_argument("--preset", required=True, help="a shipped preset's name or a preset folder")
    evaluate.add_argument("--data", help="a CIFAR-10 source as for compare (default $INVOLUTION_DATA, else "
                          "download), or an image folder for an ImageNet preset")
    evaluate.add_argument("--labels", help="for a flat image folder: a file of '<image> <wnid or index>' lines")
    evaluate.add_argument("--limit", type=_positive_int,
                          help="use at most N test images, drawn at random with --seed (as compare --limit)")
    evaluate.add_argument("--seed", type=int, default=0, help="the draw of --limit (default 0)")
    evaluate.add_argument("--cache-dir", help="decoded-data cache (as for compare)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_common_options(evaluate)

    presets = commands.add_parser("presets", help="List the shipped presets with their test accuracy.")
    presets.add_argument("--json", action="store_true", help="print the metadata as JSON")
    _add_common_options(presets)

    predict = commands.add_parser(
        "predict",
        help="Print a preset's most probable classes for image files.",
        description="Classifies image files with a preset, each preprocessed as the preset's metadata records "
        "(resized to a CIFAR preset's size; resized, centre-cropped and normalised for an ImageNet one).",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    predict.add_argument("--preset", required=True, help="a shipped preset's name or a preset folder")
    predict.add_argument("--top", type=_positive_int, default=3, help="classes per image (default 3)")
    predict.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_common_options(predict)

    convert = commands.add_parser(
        "convert",
        help="Convert an authors' or PaddleClas RedNet checkpoint into a preset folder.",
        description="Reads a RedNet checkpoint of the paper (an mmcls .pth state_dict, or a PaddleClas .pdparams) "
        "as untrusted data (arrays only: nothing in it runs), copies it into this package's RedNet of the same "
        "depth (exact=True) and writes a preset folder in keras-hub's layout (the backbone, the classifier) with "
        "metadata: the checkpoint's sha256, this command, the ImageNet preprocessing and classes, and the logits "
        "of fixed inputs.",
    )
    convert.add_argument("model", choices=[f"rednet{depth}" for depth in (26, 38, 50, 101, 152)],
                         help="the checkpoint's model")
    convert.add_argument("checkpoint", help="the .pth or .pdparams file")
    convert.add_argument("--output", required=True, help="the preset folder to write")
    convert.add_argument("--data-format", choices=["channels_last", "channels_first"],
                         help="the model's layout (default keras.config.image_data_format()); the weights are the same")
    _add_common_options(convert)

    doctor = commands.add_parser(
        "doctor",
        help="Say which kernels run on this machine and backend, and why the others cannot.",
        description="Lists every kernel of the registry for the backend (the apply step, its gradients and the "
        "fused layers' ops) with whether it can run here and, where not, why; the folder of compiled kernels "
        "and its builds; the versions of Keras and the backend.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_common_options(doctor)

    summarize = commands.add_parser(
        "summarize",
        help="Merge the seeds of several compare runs into one table of mean ± std.",
        description="Reads the summary.json of each report (a run folder, a copy of its report, or the file) "
        "and prints every model's seeds together, with mean ± sample standard deviation; refuses studies "
        "whose settings or parameter counts differ, or that share a seed of a model.",
    )
    summarize.add_argument("summaries", nargs="+", metavar="REPORT", help="report folders or summary.json files")
    output = summarize.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="print a Markdown table")
    output.add_argument("--json", action="store_true", help="print the merged statistics as JSON")
    _add_common_options(summarize)
    return parser


def _configured_backend():
    """The backend in Keras' configuration file, read without Keras."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if backend in BACKENDS else None


def installed(module):
    """Whether `module` can be imported, found without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose_backend(requested):
    """The backend to run: `requested`, else what Keras would pick where it
    is installed, else the first installed one."""
    if requested:
        return requested
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    configured = _configured_backend()
    if configured:
        return configured
    return next((b for b in BACKENDS if installed(b)), "tensorflow")


# A line of the C++ libraries' logs (absl and glog format: severity, date,
# time, thread, file:line), or absl's notice that it is not initialised.
NATIVE_LOG = re.compile(rb"^([IWEF]\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\]|WARNING: All log messages before absl)")


def quiet_frameworks():
    """Keeps the frameworks' log lines out of the output.

    Their Python warnings are ignored; their C++ log lines (TensorFlow's
    and XLA's, some of which absl writes before any setting applies) are
    filtered out of the process's standard error, while Python's own
    `sys.stderr` (messages, progress bars) keeps the original stream.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import warnings

    for module in ("keras", "tensorflow", "jax", "torch", "absl", "google"):
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
    _filter_native_stderr()


def _filter_native_stderr():
    import atexit
    import threading

    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = os.fdopen(os.dup(original), "w", buffering=1, encoding=sys.stderr.encoding,
                           errors="backslashreplace")

    def pump():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not NATIVE_LOG.match(line):
                    os.write(original, line)

    thread = threading.Thread(target=pump, name="involution-stderr-filter", daemon=True)
    thread.start()

    def drain():
        # Pointing fd 2 back at the stream closes the pipe's last writer
        # (children may hold copies): the filter passes what is left.
        os.dup2(original, 2)
        thread.join(timeout=2)

    atexit.register(drain)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    backend = choose_backend(args.backend)
    if not installed(backend):
        available = [b for b in BACKENDS if installed(b)]
        print(f"error: the Keras backend {backend!r} is not installed; "
              + (f"pass --backend {' or '.join(available)}, or " if available else "")
              + f"install involution[{backend}].", file=sys.stderr)
        return 2
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != backend:
        # Keras chose its backend already (`python -m involution` imports
        # the package first): only a fresh interpreter can change it.
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "involution", *argv],
                  dict(os.environ, KERAS_BACKEND=backend))
    os.environ["KERAS_BACKEND"] = backend
    memory.keep_freed_memory()
    if not args.verbose:
        quiet_frameworks()
    from involution.app import cli

    args.command_line = "involution " + " ".join(shlex.quote(a) for a in argv)
    return cli.run(args)
