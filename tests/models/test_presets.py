"""Presets (`involution.models.presets`): the layout, loading, hostile files, the shipped ones."""

import json
import os
import shutil

import keras
import numpy as np
import pytest

from involution import models
from involution.models import presets

SHIPPED = models.list_presets()
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "cifar10-jpg.tar.gz")


def _saved(tmp_path, name="invnet", **kwargs):
    model = models.create_model(name, **kwargs)
    folder = models.save_preset(model, str(tmp_path / "preset"), {"model": name, "test_accuracy": 0.5})
    return model, folder


def test_a_saved_preset_reloads_to_the_same_model(tmp_path, rng):
    model, folder = _saved(tmp_path)
    assert sorted(os.listdir(folder)) == ["config.json", "metadata.json", "model.weights.h5"]
    x = rng.uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    loaded = models.from_preset(folder)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x, training=False)),
                                  keras.ops.convert_to_numpy(model(x, training=False)))
    assert models.preset_metadata(folder) == {"model": "invnet", "test_accuracy": 0.5}
    fresh = models.from_preset(folder, load_weights=False)
    assert fresh.count_params() == model.count_params()
    assert not np.allclose(fresh.get_weights()[0], model.get_weights()[0])


def test_output_check_records_logits_on_fixed_inputs(tmp_path):
    model = models.create_model("involution")
    check = presets.output_check(model)
    x = presets.check_inputs((32, 32, 3))
    assert x.shape == (presets.CHECK_IMAGES, 32, 32, 3) and 0 <= x.min() and x.max() < 1
    np.testing.assert_allclose(check["logits"], keras.ops.convert_to_numpy(model(x, training=False)), rtol=1e-6)
    json.dumps(check)  # plain JSON


def test_not_a_preset_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"must be one of .* or a folder holding config.json.*Received: preset='nope'"):
        models.from_preset("nope")
    with pytest.raises(ValueError, match=r"Received: preset=3"):
        models.from_preset(3)
    _, folder = _saved(tmp_path, "involution")
    os.remove(os.path.join(folder, "metadata.json"))
    with pytest.raises(ValueError, match=r"lacks metadata.json"):
        models.from_preset(folder)


def _broken(tmp_path, name, content):
    _, folder = _saved(tmp_path, "involution")
    with open(os.path.join(folder, name), "wb") as f:
        f.write(content)
    return folder


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must hold a JSON object"),
    (b'{"class_name": "Dense", "config": {"units": 2}, "module": "keras.layers"}', "describes a Dense"),
    (b'{"class_name": "NoSuchClass", "config": {}}', "not a Keras model's configuration"),
])
def test_bad_configurations_are_refused(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        models.from_preset(_broken(tmp_path, "config.json", content))


def test_a_configuration_carrying_code_is_refused(tmp_path):
    # A Lambda layer's config holds marshalled Python bytecode; Keras' safe
    # mode refuses to deserialize it, so nothing in the file runs.
    inputs = keras.Input((2,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    config = keras.saving.serialize_keras_object(keras.Model(inputs, outputs))
    folder = _broken(tmp_path, "config.json", json.dumps(config).encode())
    with pytest.raises(ValueError, match=r"not a Keras model's configuration that loads safely.*Lambda") as caught:
        models.from_preset(folder)
    # One line; Keras' own message, kept for --verbose, says why.
    assert "\n" not in str(caught.value) and "safe_mode" in caught.value.detail


def test_oversized_and_broken_files_are_refused(tmp_path, monkeypatch):
    _, folder = _saved(tmp_path, "involution")
    monkeypatch.setattr(presets, "MAX_JSON_BYTES", 100)
    with pytest.raises(ValueError, match=r"config.json: the JSON file is larger than 100 bytes"):
        models.from_preset(folder)
    monkeypatch.undo()
    folder = _broken(tmp_path, "model.weights.h5", b"not an HDF5 file")
    with pytest.raises(ValueError, match=r"model.weights.h5: cannot load these weights"):
        models.from_preset(folder)
    # Weights of another architecture.
    other, _ = _saved(tmp_path / "other", "conv")
    other.save_weights(os.path.join(folder, "model.weights.h5"))
    with pytest.raises(ValueError, match=r"cannot load these weights"):
        models.from_preset(folder)


def test_interrupted_writes_leave_the_previous_files(tmp_path, monkeypatch):
    model, folder = _saved(tmp_path, "involution")
    before = open(os.path.join(folder, "metadata.json")).read()

    def failing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save_weights", failing)
    with pytest.raises(KeyboardInterrupt):
        models.save_preset(model, folder, {"model": "changed"})
    assert open(os.path.join(folder, "metadata.json")).read() == before
    assert sorted(os.listdir(folder)) == ["config.json", "metadata.json", "model.weights.h5"]


def test_shipped_presets_are_listed():
    assert SHIPPED == sorted(SHIPPED)
    assert {"conv_cifar10", "involution_cifar10", "invnet_cifar10", "invnet_cifar10_strong"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_predicts_as_on_the_backend_it_was_saved_on(name):
    metadata = models.preset_metadata(name)
    model = models.from_preset(name)
    assert model.count_params() == metadata["parameter_count"]
    assert metadata["model"] in models.list_models()
    for key in ("test_accuracy", "recipe", "seed", "data", "versions", "command", "check"):
        assert key in metadata, key
    x = presets.check_inputs(tuple(model.input_shape[1:]))
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    # Float32 on another backend or CPU sums in another order.
    np.testing.assert_allclose(logits, np.asarray(metadata["check"]["logits"]), rtol=1e-3, atol=1e-3)
    assert (logits.argmax(-1) == np.asarray(metadata["check"]["logits"]).argmax(-1)).all()


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.startswith("invnet_")])
def test_today_s_invnet_computes_the_shipped_preset_with_its_weights(name):
    """The presets hold invnet's earlier layer list (a separate stem ReLU);
    today's model, with the ReLU fused into the stem's 1x1 layer, gives
    the same logits for the same weights."""
    preset = models.from_preset(name)
    model = models.create_model("invnet")
    assert len(model.layers) == len(preset.layers) - 1
    model.set_weights(preset.get_weights())
    x = presets.check_inputs(tuple(model.input_shape[1:]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)),
                               keras.ops.convert_to_numpy(preset(x, training=False)), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DATA), reason="the CIFAR-10 copy is not on this machine")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_accuracy_on_real_test_images(name, tmp_path_factory):
    from involution.app.inference import evaluate

    cache = tmp_path_factory.getbasetemp() / "cifar-cache"
    result = evaluate(name, data=DATA, limit=1000, cache_dir=str(cache), progress=False)
    assert result["images"] == 1000
    assert abs(result["accuracy"] - result["metadata_accuracy"]) <= 0.02, result


def test_shipped_presets_copy_to_a_folder(tmp_path):
    if not SHIPPED:
        pytest.skip("no preset is shipped")
    folder = shutil.copytree(presets.preset_directory(SHIPPED[0]), tmp_path / "copy")
    assert models.from_preset(str(folder)).count_params() == models.preset_metadata(SHIPPED[0])["parameter_count"]
