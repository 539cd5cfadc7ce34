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
