"""Training one model (`involution.app.training`), without the compare app."""

import json
import os

import numpy as np
import pytest

from involution.app import training
from involution.app.data import Dataset
from tests import synthetic_data as synth

pytestmark = pytest.mark.slow


def tiny_dataset():
    x_train, y_train = synth.images_and_labels(24, seed=1, size=16)
    x_test, y_test = synth.images_and_labels(8, seed=2, size=16)
    return Dataset(x_train, y_train, x_test, y_test, synth.CLASSES, "synthetic")


def test_train_saves_each_epoch_and_continues_a_finished_model(tmp_path):
    dataset = tiny_dataset()
    folder = str(tmp_path / "conv")
    lines = []
    config = training.TrainConfig(epochs=1, batch_size=8, seed=3)
    first = training.train_model("conv", dataset, config, folder, log=lines.append)
    assert first["status"] == "finished" and [e["epoch"] for e in first["epochs"]] == [1]
    assert sorted(os.listdir(folder)) == ["history.json", "model.keras"]
    assert lines == [lines[0]] and lines[0].startswith("[conv] Epoch 1/1: loss ")

    longer = training.train_model("conv", dataset, training.TrainConfig(epochs=2, batch_size=8, seed=3), folder,
                                  log=lines.append)
    assert [e["epoch"] for e in longer["epochs"]] == [1, 2]
    assert [e["first_in_process"] for e in longer["epochs"]] == [True, True]
    assert "continuing after epoch 1 of 2" in " ".join(lines)
    with open(os.path.join(folder, training.HISTORY_FILE), encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(longer, allow_nan=False))
    # The epochs' orders come from (seed, epoch): a second run is the same.
    again = training.train_model("conv", dataset, training.TrainConfig(epochs=2, batch_size=8, seed=3),
                                 str(tmp_path / "again"), verbose=0)
    for a, b in zip(longer["epochs"], again["epochs"]):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)


def test_epoch_inputs_train_as_keras_batching_of_the_arrays():
    """The same batches in the same order as `fit` on the arrays: one epoch
    of each from equal weights ends at the same weights. On TensorFlow the
    inputs are tf.data pipelines with autotuning off."""
    import keras

    x, y = synth.images_and_labels(20, seed=4, size=8)
    x = x.astype("float32") / 255.0
    inputs = training.epoch_inputs(x, y, x[:6], y[:6], batch_size=8)
    if keras.backend.backend() == "tensorflow":
        assert inputs["x"].options().autotune.enabled is False
        assert inputs["validation_data"].options().autotune.enabled is False
        assert [len(batch[1]) for batch in inputs["x"]] == [8, 8, 4]
    else:
        assert inputs["x"] is x and inputs["batch_size"] == 8 and inputs["shuffle"] is False

    def trained(**data):
        keras.utils.set_random_seed(5)
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(**data, epochs=1, verbose=0)
        return model.get_weights(), history.history

    ours, theirs = trained(**inputs), trained(x=x, y=y, batch_size=8, shuffle=False, validation_data=(x[:6], y[:6]))
    for a, b in zip(ours[0], theirs[0]):
        np.testing.assert_array_equal(a, b)
    assert ours[1] == theirs[1]
