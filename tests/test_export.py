"""`model.export` round trips, run in a fresh process and compared with Keras.

Every format Keras offers on the backend (LiteRT needs a package outside the
test extra), for a one-layer model with 8 channels per group (the fused
paths), the Keras example's involution model and `invnet`, with Keras' own
convolutional model as the baseline, at two batch sizes.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from involution import Involution, config
from involution.models import create_model

BACKEND = keras.backend.backend()
ROOT = Path(__file__).resolve().parents[1]
FORMATS = {"tensorflow": ["tf_saved_model", "onnx"], "jax": ["tf_saved_model", "onnx"],
           "torch": ["onnx", "torch"]}[BACKEND]
SUFFIX = {"onnx": ".onnx", "torch": ".pt2", "tf_saved_model": ""}
BATCHES = (1, 3)


def one_layer():
    inputs = keras.Input((8, 8, 16))
    return keras.Model(inputs, Involution(group_number=2, kernel_size=3, reduction_ratio=4)(inputs))


MODELS = {
    "one_layer": one_layer,
    "involution": lambda: create_model("involution"),
    "invnet": lambda: create_model("invnet"),
    "conv": lambda: create_model("conv"),
}


def export_and_run(model, export_format, tmp_path):
    shape = tuple(model.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    batches = {f"batch{b}": rng.uniform(size=(b, *shape)).astype("float32") for b in BATCHES}
    model(batches["batch1"])  # Keras exports only models that have run
    path = str(tmp_path / f"model{SUFFIX[export_format]}")
    kwargs = {}
    if export_format == "torch":
        import torch

        kwargs["dynamic_shapes"] = {0: torch.export.Dim("batch", min=1, max=64)}
    model.export(path, format=export_format, verbose=False, **kwargs)
    np.savez(tmp_path / "inputs.npz", **batches)
    run = subprocess.run(
        [sys.executable, "-m", "tests.run_exported", export_format, path,
         str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    for name, x in batches.items():
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        # float32 models; the exporters reorder some sums.
        np.testing.assert_allclose(outputs[name], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("export_format", FORMATS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_round_trip(name, export_format, tmp_path):
    if BACKEND == "jax" and export_format == "onnx" and name in ("conv", "involution"):
        # jax2onnx fails Keras' own conv model here too (onnxruntime
        # refuses the MaxPool it writes for Keras' MaxPooling2D); the zoo's
        # MaxPooling2D pools tiles by a reshape, which converts.
        pytest.skip("JAX to ONNX of Keras' MaxPooling2D: see test_jax_onnx_* (the docs say what works)")
    export_and_run(MODELS[name](), export_format, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="jax2onnx")
@pytest.mark.parametrize("name", ["one_layer"])
def test_jax_onnx_with_fast_paths_off(name, tmp_path):
    # jax2onnx converts a JAX program primitive by primitive and knows
    # none of this package's; with the fast paths off there are none.
    with config.fast_paths(False):
        export_and_run(MODELS[name](), "onnx", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="jax2onnx")
def test_jax_onnx_with_fast_paths_on(tmp_path):
    # The primitives convert through their portable form (jax_onnx.py).
    import jax

    model = one_layer()
    x = np.zeros((1, 8, 8, 16), "float32")
    assert "involution_apply" in str(jax.make_jaxpr(lambda x: model(x, training=False))(x))
    with config.fast_paths(True):
        export_and_run(model, "onnx", tmp_path)


@pytest.mark.skipif(BACKEND != "jax", reason="jax2onnx")
def test_jax_onnx_converts_the_gradient_primitives():
    # A gradient program holds the other two primitives (input gradient
    # and window correlation); each converts through its portable form
    # (stride 1: jax2onnx has no Pad with interior padding, which the
    # strided input gradient scatters with).
    import jax
    import jax2onnx
    import onnxruntime

    from involution import ops

    def gradients(x, kernel):
        def loss(x, kernel):
            out = ops.involution_apply(x, kernel, kernel_size=3, groups=2, implementation="fast")
            return jax.numpy.sum(out * out)

        return jax.grad(loss, argnums=(0, 1))(x, kernel)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 7, 16)).astype("float32")
    kernel = rng.normal(size=(2, 7, 7, 18)).astype("float32")
    program = str(jax.make_jaxpr(gradients)(x, kernel))
    assert "involution_input_gradient" in program and "involution_correlate" in program
    model = jax2onnx.to_onnx(gradients, inputs=[x.shape, kernel.shape])
    runtime = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in runtime.get_inputs()]
    for got, expected in zip(runtime.run(None, dict(zip(names, (x, kernel)))), gradients(x, kernel)):
        np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-4, atol=1e-4)
