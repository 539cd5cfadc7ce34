"""The registry and every registered model: shape, finiteness, gradients, config, reload."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from involution import models
from tests.backend_utils import weight_gradients

ALL_MODELS = models.list_models()
# RedNets deeper than 26 are RedNet-26's blocks in other counts: what they add
# does not depend on the backend, so one backend's pass builds and
# differentiates each of them, and every pass the 26-layer ones.
DEEPER_REDNETS = {name for name in ALL_MODELS if name.startswith("rednet") and not name.startswith("rednet26")}


def test_registry_lists_and_rejects():
    assert ALL_MODELS[:2] == ["conv", "involution"]
    assert {"invnet", "attention_net", "rednet26", "rednet152", "rednet26_cifar"} <= set(ALL_MODELS)
    with pytest.raises(ValueError, match=r"Unknown model.*Received: name='resnet'"):
        models.create_model("resnet")
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("conv")(lambda **kwargs: None)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.backend_independent) if n in DEEPER_REDNETS else n for n in ALL_MODELS]
)
def test_model_output_gradients_and_config(name, rng):
    # RedNets at an eighth of their width: the same blocks and depths at a
    # fraction of the time (their full widths are counted in test_rednet.py).
    narrow = {"width": 8} if name.startswith("rednet") else {}
    model = models.create_model(name, input_shape=(32, 32, 3), num_classes=7, **narrow)
    x = rng.uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert logits.shape == (2, 7)
    assert np.isfinite(logits).all()

    # Residual branches that start at zero (RedNet's last batch-norm scale is
    # initialised to 0) pass no gradient at initialisation; open them so that
    # the check sees every weight's connection to the loss.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and not np.any(keras.ops.convert_to_numpy(layer.gamma)):
            layer.gamma.assign(np.ones(layer.gamma.shape, layer.gamma.dtype))

    weights = model.trainable_weights
    labels = keras.ops.convert_to_tensor(np.array([1, 3]))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    grads = weight_gradients(model, loss_fn, keras.ops.convert_to_tensor(x), labels)
    for w, g in zip(weights, grads):
        assert g is not None, f"{w.path} gets no gradient"
        assert np.isfinite(g).all(), w.path
        # A bias right before batch normalization is cancelled by the batch
        # mean, so its true gradient is zero.
        if not w.path.endswith("reduce/bias"):
            assert np.abs(g).sum() > 0, f"{w.path} gets a zero gradient"

    # The training-mode call above moved the batch-norm statistics.
    logits = keras.ops.convert_to_numpy(model(x, training=False))

    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clone(x, training=False)), logits, rtol=1e-5, atol=1e-5
    )


def test_saved_models_reload_after_importing_the_package(rng, tmp_path):
    # `keras.saving.load_model` finds custom classes only once their modules
    # ran their registrations; `import involution.models` must be enough for
    # every model of the registry (the report reloads trained models this way).
    x = rng.uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for name in ("attention_net", "rednet26_cifar_tiny"):
        model = models.create_model(name, input_shape=(32, 32, 3), num_classes=4)
        model.save(tmp_path / f"{name}.keras")
        expected[name] = keras.ops.convert_to_numpy(model(x, training=False))
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, keras
        import involution.models
        x = np.load({str(tmp_path / 'x.npy')!r})
        for name in sys.argv[1:]:
            model = keras.saving.load_model({str(tmp_path)!r} + f"/{{name}}.keras")
            np.save({str(tmp_path)!r} + f"/{{name}}.npy", keras.ops.convert_to_numpy(model(x, training=False)))
        """
    )
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    subprocess.run([sys.executable, "-c", script, *expected], check=True, env=env, timeout=600)
    for name, logits in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), logits, rtol=1e-5, atol=1e-5)
