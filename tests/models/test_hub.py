"""A backbone-and-task preset through keras-hub's `ImageClassifier.from_preset`.

Runs where keras-hub is installed (`pip install "involution[hub]"`), in a
subprocess: importing `involution.models.hub` re-registers the task's class
name for the rest of the process.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from involution import models

pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras_hub") is None, reason="keras-hub is not installed")

LOAD = """
import sys
import numpy as np
import keras, keras_hub
import involution.models.hub
classifier = keras_hub.models.ImageClassifier.from_preset(sys.argv[1])
assert isinstance(classifier, keras_hub.models.ImageClassifier), type(classifier)
assert isinstance(classifier, involution.models.hub.RedNetImageClassifier)
assert type(classifier.backbone).__name__ == "RedNet"
np.save(sys.argv[3], keras.ops.convert_to_numpy(classifier(np.load(sys.argv[2]), training=False)))
"""


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_keras_hub_loads_the_preset_and_computes_the_same(tmp_path, rng, data_format):
    shape = (32, 32, 3) if data_format == "channels_last" else (3, 32, 32)
    backbone = models.RedNet(26, include_top=False, input_shape=shape, width=16, stem="cifar_half",
                             data_format=data_format)
    model = models.RedNetImageClassifier(backbone, num_classes=7)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.1, weight.shape).astype(weight.dtype))
    folder = models.save_preset(model, str(tmp_path / "preset"), {"model": "test"})
    x = rng.uniform(0, 1, (2, *shape)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", LOAD, folder, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, KERAS_BACKEND=keras.backend.backend()))
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), keras.ops.convert_to_numpy(model(x, training=False)),
                               rtol=1e-5, atol=1e-6)
