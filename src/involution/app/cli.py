"""The `involution` command's handlers, run once Keras has its backend.

The command itself (arguments, backend choice) is `involution_cli`, which
parses the command line before Keras is imported and then calls `run`.
"""

import json
import logging
import math
import os
import sys


def demo(args):
    """The Keras example's shape checks, on the chosen backend."""
    import keras

    from involution import Involution

    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")
    x = keras.random.normal((args.batch, args.size, args.size, 3), seed=0)
    print(f"input {tuple(x.shape)}")
    cases = [
        ("stride 1", dict(channel=3, group_number=1, kernel_size=3, stride=1, reduction_ratio=2)),
        ("stride 2", dict(channel=3, group_number=1, kernel_size=3, stride=2, reduction_ratio=2)),
        ("channel 16, reduction 2", dict(channel=16, group_number=1, kernel_size=3, stride=1, reduction_ratio=2)),
    ]
    for title, kwargs in cases:
        layer = Involution(**kwargs, return_kernel=True)
        output, kernel = layer(x)
        print(
            f"{title:<26} output {tuple(output.shape)}  kernel {tuple(kernel.shape)}  "
            f"parameters {layer.count_params()}"
        )
    return 0


def compare(args):
    """Trains the models one after another and writes the report."""
    from involution.app.compare import CompareError, run_compare
    from involution.app.data import DataError
    from involution.untrusted import UntrustedFileError

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        run_compare(
            models=models, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, seeds=args.seeds,
            learning_rate=args.learning_rate, recipe=args.recipe, output=args.output, data=args.data,
            limit=args.limit, resume=args.resume, verbose=0 if args.quiet else 1,
            cache_dir=args.cache_dir, command=getattr(args, "command_line", None),
        )
    except (CompareError, DataError, UntrustedFileError) as error:
        return refuse(error, args.verbose)
    except KeyboardInterrupt:
        print(
            "\nInterrupted. Finished epochs are saved; rerun with --resume "
            "(and the same --output) to continue.",
            file=sys.stderr,
        )
        return 130
    return 0


def refuse(error, verbose=False):
    """Prints a refusal of bad input as one line (`error: FILE: what is
    wrong`), the library's own message after it with --verbose; exit code 2."""
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    detail = getattr(error, "detail", None)
    if verbose and detail:
        print(detail, file=sys.stderr)
    return 2


def _preset_command(args, run, show):
    """Runs `run()`, then prints its result as JSON (`--json`) or with
    `show(result)`; a data or preset error is one line and exit code 2."""
    from involution.app.data import DataError
    from involution.app.inference import InferenceError
    from involution.untrusted import UntrustedFileError

    try:
        result = run()
    except (DataError, InferenceError, UntrustedFileError) as error:
        return refuse(error, args.verbose)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)
    return 0


def evaluate(args):
    """A preset's test accuracy against its metadata's."""
    from involution.app.inference import evaluate as evaluate_preset

    return _preset_command(args, lambda: evaluate_preset(args.preset, data=args.data, limit=args.limit,
                                                         seed=args.seed, cache_dir=args.cache_dir,
                                                         progress=not args.json, labels=args.labels),
                           _show_evaluation)


def _show_evaluation(result):
    print(f"{result['preset']}: test accuracy {100 * result['accuracy']:.2f}% "
          f"({result['correct']:,} of {result['images']:,} images), top-5 {100 * result['top5_accuracy']:.2f}%")
    if result["metadata_accuracy"] is not None:
        images = result["metadata_images"]
        print(f"metadata: {100 * result['metadata_accuracy']:.2f}%"
              + (f" on {images:,} images" if isinstance(images, int) else ""))


def predict(args):
    """The most probable classes of image files under a preset."""
    from involution.app.inference import predict as predict_images

    return _preset_command(args, lambda: predict_images(args.preset, args.images, top=args.top), _show_predictions)


def _show_predictions(results):
    for result in results:
        classes = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in result["top"])
        print(f"{result['image']}: {classes}")


def presets(args):
    """The shipped presets, one line each."""
    from involution import models

    listing = {name: models.preset_metadata(name) for name in models.list_presets()}
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for name, metadata in listing.items():
        recipe = metadata.get("recipe", {})
        print(f"{name}: {metadata.get('model')}, {metadata.get('parameter_count', 0):,} parameters, "
              f"test accuracy {100 * metadata.get('test_accuracy', float('nan')):.2f}% "
              f"({recipe.get('name', '?')} recipe, {recipe.get('epochs', '?')} epochs, seed {metadata.get('seed')})")
    return 0


def _read_summary(path):
    from involution import untrusted

    file = os.path.join(path, "summary.json") if os.path.isdir(path) else path
    try:
        return untrusted.read_json(file, what="summary")
    except untrusted.UntrustedFileError as error:
        raise ValueError(f"Expected a report folder or its summary.json. Received: {path} ({error.problem})") from None


def summarize(args):
    """Several studies' seeds as one study: mean ± std per model."""
    from involution.app import report

    try:
        statistics = report.merge_summaries([_read_summary(p) for p in args.summaries], sources=args.summaries)
    except ValueError as error:
        return refuse(error)
    if args.json:
        print(json.dumps({"models": statistics}, indent=2))
    elif args.markdown:
        print(report.render_markdown([("table", (report.SEED_HEADER, report.statistics_rows(statistics)))]), end="")
    else:
        print(report.format_table(report.SEED_HEADER, report.statistics_rows(statistics)))
    return 0


def convert(args):
    """A paper checkpoint as a preset folder."""
    from involution.models.convert_rednet import convert_checkpoint

    try:
        model = convert_checkpoint(args.model, args.checkpoint, args.output, data_format=args.data_format)
    except (OSError, ValueError) as error:
        return refuse(error, args.verbose)
    trainable = sum(int(math.prod(weight.shape)) for weight in model.trainable_weights)
    print(f"{args.model}: {trainable:,} trainable parameters from {args.checkpoint}, written to {args.output}")
    return 0


def doctor(args):
    """The registry's kernels on this machine: which can run, and why not the others."""
    from involution import config

    report = config.explain()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"Keras {report['keras']}, backend {report['backend']} {report['backend_version'] or ''}".rstrip())
    cache = report["kernel_cache"]
    state = f"{len(cache['builds'])} build(s)" if cache["exists"] else "not created yet"
    print(f"compiled kernels: {cache['folder']} ({state})")
    rows = [(row["op"], row["name"], "yes" if row["available"] else "no",
             row["reason"] or row["summary"]) for row in report["kernels"]]
    if not rows:
        print(f"the {report['backend']} backend has no kernels: every op runs its keras.ops reference")
        return 0
    header = ("op", "kernel", "runs", "why not / what")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    print("Each op tries its kernels in this order and runs its keras.ops reference where none can "
          "(implementation='auto'); --verbose logs each choice.")
    return 0


HANDLERS = {"convert": convert, "doctor": doctor, "demo": demo, "compare": compare, "evaluate": evaluate, "predict": predict, "presets": presets,
            "summarize": summarize}


def run(args):
    """Runs the parsed command `args` (see `involution_cli.build_parser`)."""
    if not args.verbose:
        # The frameworks' Python loggers (TensorFlow's, absl's).
        for name in ("tensorflow", "absl", "jax", "torch"):
            logging.getLogger(name).setLevel(logging.ERROR)
    else:
        # The registry's choices, with the reasons of the kernels passed over.
        logging.getLogger("involution.registry").setLevel(logging.DEBUG)
        logging.basicConfig(format="%(name)s: %(message)s")
    return HANDLERS[args.command](args)

