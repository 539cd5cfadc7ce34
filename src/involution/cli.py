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
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    _select_backend(args, argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
