"""Runs every bad-kernel case on every apply path and prints the outcomes as JSON.

`test_validation.py` runs this in a child process per backend, so that a
case which corrupts memory or crashes fails its test instead of ending the
test run. Each outcome is `"ValueError: ..."`, `"RuntimeError: ..."`
(or another exception's name and message), or `"no error"`.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from involution import Involution, ops as involution_ops  # noqa: E402

# 16 channels in 2 groups: 8 channels per group, so the fused paths run.
X_SHAPE = (2, 8, 8, 16)
GOOD = dict(kernel_shape=(2, 8, 8, 18), kernel_size=3, stride=1, dilation=1, groups=2)

# name: changes to GOOD (for channels_last; channels_first transposes).
CASES = {
    "good": {},
    "batch": dict(kernel_shape=(1, 8, 8, 18)),
    "larger batch": dict(kernel_shape=(3, 8, 8, 18)),
    "taps": dict(kernel_shape=(2, 8, 8, 9)),
    "more taps": dict(kernel_shape=(2, 8, 8, 50)),
    "spatial size": dict(kernel_shape=(2, 4, 4, 18)),
    "larger spatial size": dict(kernel_shape=(2, 9, 8, 18)),
    "stride's spatial size": dict(kernel_shape=(2, 8, 8, 18), stride=2),
    "even kernel_size": dict(kernel_shape=(2, 8, 8, 32), kernel_size=4),
    "stride 0": dict(stride=0),
    "dilation 0": dict(dilation=0),
    "groups not dividing": dict(kernel_shape=(2, 8, 8, 27), groups=3),
    "3D kernel": dict(kernel_shape=(2, 64, 18)),
}


def arrays(case, data_format):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(X_SHAPE).astype("float32")
    kernel = rng.standard_normal(case["kernel_shape"]).astype("float32")
    if data_format == "channels_first":
        x = x.transpose(0, 3, 1, 2)
        if kernel.ndim == 4:
            kernel = kernel.transpose(0, 3, 1, 2)
    return x, kernel


def outcome(fn):
    try:
        value = fn()
        if value is not None:
            keras.ops.convert_to_numpy(value)
    except Exception as error:  # the test asserts which
        # Keras wraps a layer's error in a message of several lines.
        return f"{type(error).__name__}: {' '.join(str(error).split())[:600]}"
    return "no error"


def apply_case(case, data_format, implementation):
    x, kernel = arrays(case, data_format)
    return lambda: involution_ops.involution_apply(
        x, kernel, case["kernel_size"], case["stride"], case["dilation"], case["groups"],
        data_format, implementation=implementation,
    )


def apply_gradient_case(case, data_format, implementation):
    """The backward pass of a well-shaped call with a wrong upstream gradient
    is not reachable through the API; this runs the gradient of a bad call."""
    x, kernel = arrays(case, data_format)
    from tests.backend_utils import gradients

    def loss(x_, k_):
        return keras.ops.sum(
            involution_ops.involution_apply(
                x_, k_, case["kernel_size"], case["stride"], case["dilation"], case["groups"],
                data_format, implementation=implementation,
            )
        )

    return lambda: gradients(loss, x, kernel)[0]


class FixedKernel(keras.layers.Layer):
    """A kernel generator that returns a kernel of a fixed (bad) shape."""

    def __init__(self, kernel, **kwargs):
        super().__init__(**kwargs)
        self.kernel = kernel

    def call(self, inputs, training=None):
        return keras.ops.convert_to_tensor(self.kernel)


def generator_case(case, data_format):
    x, kernel = arrays(case, data_format)

    def run():
        layer = Involution(
            group_number=case["groups"], kernel_size=case["kernel_size"], stride=case["stride"],
            dilation=case["dilation"], data_format=data_format,
            kernel_generator=FixedKernel(kernel), implementation="auto",
        )
        return layer(x)

    return run


def native_cases(case):
    """The C++ entry points called directly with the case's buffers, past the
    Python checks: their own checks must refuse them (defence in depth)."""
    x, kernel = arrays(case, "channels_last")
    args = (case["groups"], case["kernel_size"], case["stride"], case["dilation"])
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        from involution.backends import torch_backend

        extension = torch_backend._extension()
        if extension is None:
            return {}
        xt, kt = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(kernel))
        grad = torch.ones(x.shape[:1] + kernel.shape[1:3] + x.shape[3:]) if kernel.ndim == 4 else torch.ones(1)
        return {
            "native forward": lambda: extension.forward(xt, kt, *args),
            "native backward": lambda: extension.backward(grad, xt, kt, *args, True, True)[0],
            "native correlate": lambda: extension.correlate(xt, grad, *args),
        }
    if backend == "jax":
        import jax

        from involution.backends import jax_backend

        if not jax_backend._ffi_available():
            return {}
        # The Python wrapper declares the output from the kernel's shape;
        # here it is declared from the input, as a careless caller might.
        out = jax.ShapeDtypeStruct(x.shape, x.dtype)
        geometry = dict(zip(("groups", "kernel_size", "stride", "dilation"), args))
        return {
            "native forward": lambda: jax_backend._ffi_call("forward", out, x, kernel, **geometry),
            # The input gradient declared with the input's shape and the
            # window correlation with the kernel's, from a stride-1 grid.
            "native backward": lambda: jax_backend._ffi_call("input_gradient", out, x, kernel, **geometry),
            "native correlate": lambda: jax_backend._ffi_call(
                "correlate", jax.ShapeDtypeStruct(kernel.shape, kernel.dtype), x, x, **geometry
            ),
        }
    return {}


def main():
    results = {}
    for name, changes in CASES.items():
        case = dict(GOOD, **changes)
        for data_format in ("channels_last", "channels_first"):
            for implementation in ("reference", "fast"):
                results[f"{name}|{data_format}|apply {implementation}"] = outcome(
                    apply_case(case, data_format, implementation)
                )
            results[f"{name}|{data_format}|gradient fast"] = outcome(
                apply_gradient_case(case, data_format, "fast")
            )
            results[f"{name}|{data_format}|kernel_generator"] = outcome(generator_case(case, data_format))
        for path, fn in native_cases(case).items():
            results[f"{name}|channels_last|{path}"] = outcome(fn)
        sys.stdout.flush()
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
