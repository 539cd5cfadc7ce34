"""Checkpoints of other frameworks, read as untrusted files, and `involution convert`."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from involution.models import checkpoints

torch = pytest.importorskip("torch")

from tests.models import reference_rednet  # noqa: E402

# Reading files is the same under every backend; the conversion's result on
# each backend is `test_rednet_reference.py`'s.
pytestmark = pytest.mark.backend_independent


class RunsCode:
    """A pickle that would call `os.system` when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_zip_is_read_without_torch_and_equals_it(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5), "t": torch.randn(4, 3).t(), "row": torch.randn(2, 3)[1],
             "scalar": torch.tensor(2.0), "half": torch.randn(2, 2).half()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "model.pth")
    arrays = checkpoints.read_checkpoint(tmp_path / "model.pth")
    assert sorted(arrays) == sorted(state)
    for name, tensor in state.items():
        np.testing.assert_array_equal(arrays[name], tensor.numpy())
        assert arrays[name].shape == tuple(tensor.shape) and arrays[name].dtype == tensor.numpy().dtype


@pytest.mark.parametrize("protocol", [2, 4])
def test_pdparams_arrays(tmp_path, protocol):
    arrays = {"conv.weight": np.arange(24, dtype="float32").reshape(2, 3, 4), "bn._mean": np.ones(3, "float64")}
    with open(tmp_path / "model.pdparams", "wb") as handle:
        pickle.dump({**arrays, "StructuredToParameterName@@": {"conv.weight": "conv_0.w_0"}}, handle, protocol)
    read = checkpoints.read_checkpoint(tmp_path / "model.pdparams")
    assert sorted(read) == sorted(arrays)
    for name in arrays:
        np.testing.assert_array_equal(read[name], arrays[name])


@pytest.mark.parametrize("suffix", [".pdparams", ".pth"])
def test_a_pickle_that_would_run_code_is_refused_with_nothing_run(tmp_path, suffix):
    marker = tmp_path / "ran"
    path = tmp_path / f"hostile{suffix}"
    if suffix == ".pth":
        torch.save({"weight": RunsCode(marker)}, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump({"weight": RunsCode(marker)}, handle)
    with pytest.raises(ValueError, match=r"names (posix|os|nt)\.system.*not read"):
        checkpoints.read_checkpoint(path)
    assert not marker.exists()


def test_object_arrays_truncated_and_foreign_files_are_refused(tmp_path):
    with open(tmp_path / "objects.pdparams", "wb") as handle:
        pickle.dump({"a": np.array([None, 1], dtype=object)}, handle)
    with pytest.raises(ValueError, match="dtype object"):
        checkpoints.read_checkpoint(tmp_path / "objects.pdparams")
    torch.save({"w": torch.ones(1000)}, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged"):
        checkpoints.read_checkpoint(tmp_path / "truncated.pth")
    with zipfile.ZipFile(tmp_path / "other.pth", "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        checkpoints.read_checkpoint(tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match="neither"):
        checkpoints.read_checkpoint(tmp_path / "text.pth")
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a dict of named arrays"):
        checkpoints.read_checkpoint(tmp_path / "list.pth")


def test_convert_command_writes_a_preset_that_computes_the_reference(tmp_path, rng):
    import keras

    from involution.models import from_preset

    reference = reference_rednet.randomized(26, seed=3)
    state = {("head." if k.startswith("fc.") else "backbone.") + k: v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "rednet26.pth")
    command = [sys.executable, "-m", "involution", "convert", "rednet26", str(tmp_path / "rednet26.pth"),
               "--output", str(tmp_path / "preset")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, KERAS_BACKEND=keras.backend.backend()))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "9,233,166 trainable parameters" in done.stdout
    metadata = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    import hashlib

    assert metadata["source"]["sha256"] == hashlib.sha256((tmp_path / "rednet26.pth").read_bytes()).hexdigest()
    assert metadata["preprocessing"]["mean"] == [123.675, 116.28, 103.53]
    assert metadata["class_names"] == "imagenet" and metadata["input_shape"] == [224, 224, 3]
    # keras-hub's layout: the backbone in config.json / model.weights.h5, the classifier in task.*.
    assert sorted(os.listdir(tmp_path / "preset")) == ["config.json", "metadata.json", "model.weights.h5",
                                                        "task.json", "task.weights.h5"]
    model = from_preset(str(tmp_path / "preset"))
    assert type(model).__name__ == "RedNetImageClassifier"
    # The preset takes any size; the reference's logits at 96x96.
    x = rng.uniform(-1, 1, (1, 3, 96, 96)).astype("float32")
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    logits = keras.ops.convert_to_numpy(model(np.transpose(x, (0, 2, 3, 1)), training=False))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    # The backbone alone: the reference's last feature map.
    backbone = from_preset(str(tmp_path / "preset"), include_top=False)
    with torch.no_grad():
        features = reference.stem(torch.from_numpy(x))
        for stage in ("maxpool", "layer1", "layer2", "layer3", "layer4"):
            features = getattr(reference, stage)(features)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backbone(np.transpose(x, (0, 2, 3, 1)), training=False)),
                               features.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    # The recorded check reproduces on this backend.
    from involution.models.presets import output_check

    check = output_check(model, metadata["check"]["input_shape"])
    np.testing.assert_allclose(check["logits"], metadata["check"]["logits"], rtol=1e-4, atol=1e-4)


def test_convert_command_names_the_problem(tmp_path):
    import keras

    reference = reference_rednet.RedNet(26)
    state = {("head." if k.startswith("fc.") else "backbone.") + k: v for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "rednet26.pth")
    done = subprocess.run([sys.executable, "-m", "involution", "convert", "rednet50", str(tmp_path / "rednet26.pth"),
                           "--output", str(tmp_path / "preset")], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, KERAS_BACKEND=keras.backend.backend()))
    assert done.returncode == 2 and "RedNet-26" in done.stderr and "RedNet-50" in done.stderr
    assert not (tmp_path / "preset").exists()
