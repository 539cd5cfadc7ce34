"""Runs an exported model in a fresh process: `python -m tests.run_exported FORMAT PATH IN.npz OUT.npz`.

It does not import this package, so the artifact has to stand on its own: onnxruntime for ONNX, `tf.saved_model.load` for SavedModel,
`torch.export.load` for PyTorch programs. Every array of IN.npz (one batch
each) is run, and the outputs are written under the same names.
"""

import os
import sys

import numpy as np


def runner(export_format, path):
    if export_format == "onnx":
        import onnxruntime

        runtime = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = runtime.get_inputs()[0].name
        return lambda x: runtime.run(None, {name: x})[0]
    if export_format == "tf_saved_model":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # kept: its functions need its variables
        return lambda x: loaded.serve(tf.constant(x)).numpy()
    if export_format == "torch":
        import torch

        module = torch.export.load(path).module()
        return lambda x: module(torch.from_numpy(x)).detach().numpy()
    raise ValueError(f"unknown format {export_format!r}")


def main(export_format, path, inputs, outputs):
    run = runner(export_format, path)
    batches = np.load(inputs)
    np.savez(outputs, **{name: run(batches[name]) for name in batches.files})
    # TensorFlow imports Keras itself; this package must not be needed.
    assert "involution" not in sys.modules, "the artifact pulled in the library"


if __name__ == "__main__":
    main(*sys.argv[1:])
