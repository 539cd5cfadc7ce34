"""The `involution` command line."""

import argparse
import os
import sys


def _add_backend_option(parser):
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        help="Keras backend (default: the KERAS_BACKEND variable, else tensorflow).",
    )


def _select_backend(args, argv):
    """Makes Keras run on `--backend`, restarting the process if needed.

    Keras reads KERAS_BACKEND once, when it is first imported, and importing
    this package imports Keras; so a different backend needs a fresh
    interpreter with the variable set.
    """
    if not args.backend:
        return
    import keras

    if keras.backend.backend() == args.backend:
        return
    env = dict(os.environ, KERAS_BACKEND=args.backend)
    command = [sys.executable, "-m", "involution", *argv]
    sys.stdout.flush()
    os.execve(sys.executable, command, env)


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
    from involution.compare import CompareError, run_compare
    from involution.data import DataError

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        run_compare(
            models=models, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
            learning_rate=args.learning_rate, output=args.output, data=args.data,
            limit=args.limit, resume=args.resume, verbose=0 if args.quiet else 1,
            cache_dir=args.cache_dir,
        )
    except (CompareError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nInterrupted. Finished epochs are saved; rerun with --resume "
            "(and the same --output) to continue.",
            file=sys.stderr,
        )
        return 130
    return 0


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="involution", description="Involutional neural networks on Keras 3."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="Run the Keras example's shape checks.")
    demo_parser.add_argument("--batch", type=int, default=32)
    demo_parser.add_argument("--size", type=int, default=256)
    _add_backend_option(demo_parser)
    demo_parser.set_defaults(handler=demo)

    compare_parser = commands.add_parser(
        "compare",
        help="Train conv vs involution models on CIFAR-10 and write a report.",
        description=(
            "Trains the chosen models one after another with the Keras example's recipe "
            "and writes report.html, report.md, plots, histories and models to --output."
        ),
    )
    compare_parser.add_argument("--models", default="conv,involution",
                                help="comma-separated registry names (default: conv,involution)")
    compare_parser.add_argument("--epochs", type=_positive, default=20)
    compare_parser.add_argument("--batch-size", type=_positive, default=256)
    compare_parser.add_argument("--learning-rate", type=float, default=1e-3)
    compare_parser.add_argument("--seed", type=int, default=42)
    compare_parser.add_argument("--output", help="output folder (default: runs/<timestamp>)")
    compare_parser.add_argument(
        "--data",
        help="local CIFAR-10: cifar-10-python.tar.gz, cifar-10-batches-py/, or an image-folder "
        "tree (folder or .tar.gz); default $INVOLUTION_DATA, else download",
    )
    compare_parser.add_argument("--cache-dir", help="decoded-data cache (default $INVOLUTION_CACHE or ~/.cache/involution)")
    compare_parser.add_argument("--limit", type=_positive, help="use at most N training and N test images")
    compare_parser.add_argument("--resume", action="store_true",
                                help="continue the run in --output (default: the latest under runs/)")
    compare_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_backend_option(compare_parser)
    compare_parser.set_defaults(handler=compare)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    _select_backend(args, argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
