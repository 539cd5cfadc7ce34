"""The fast-path switches: global (`involution.config`), per layer and per model."""

import os

import keras
import numpy as np
import pytest

import involution
from involution import config, registry
from involution import ops as involution_ops
from involution.models import create_model

BACKEND = keras.backend.backend()


pytestmark = pytest.mark.usefixtures("restore_switches")


@pytest.fixture
def apply_calls(monkeypatch):
    """Records the apply kernels' calls: (name, kernel_size, stride, dilation, groups, data_format)."""
    calls = []
    original = registry.Kernel.__call__

    def counting(entry, **arguments):
        if entry.op == "apply":
            calls.append((entry.name, *(arguments[name] for name in
                                         ("kernel_size", "stride", "dilation", "groups", "data_format"))))
        return original(entry, **arguments)

    monkeypatch.setattr(registry.Kernel, "__call__", counting)
    return calls


def arrays(channels=16, groups=2):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((2, 6, 6, channels)).astype("float32"),
            rng.standard_normal((2, 6, 6, groups * 9)).astype("float32"))


def test_switch_decides_what_auto_runs(apply_calls):
    x, kernel = arrays()
    involution_ops.involution_apply(x, kernel, 3, groups=2)
    assert len(apply_calls) == 1
    config.set_fast_path("apply", False)
    assert not config.fast_path_enabled("apply")
    off = involution_ops.involution_apply(x, kernel, 3, groups=2)
    assert len(apply_calls) == 1
    # "fast" ignores the switch.
    fast = involution_ops.involution_apply(x, kernel, 3, groups=2, implementation="fast")
    assert len(apply_calls) == 2
    np.testing.assert_allclose(keras.ops.convert_to_numpy(off), keras.ops.convert_to_numpy(fast),
                               rtol=1e-5, atol=1e-5)
    config.set_fast_path("apply", None)
    assert config.fast_path_enabled("apply")


def test_context_manager_restores(apply_calls):
    x, kernel = arrays()
    with config.fast_paths(False):
        assert not any(config.fast_path_enabled(name) for name in config.FAST_PATHS)
        involution_ops.involution_apply(x, kernel, 3, groups=2)
    assert all(config.fast_path_enabled(name) for name in config.FAST_PATHS)
    assert not apply_calls


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("INVOLUTION_FAST_POOL", "0")
    assert config.environment_variable("pool") == "INVOLUTION_FAST_POOL"
    assert not config.fast_path_enabled("pool")
    config.set_fast_path("pool", True)
    assert config.fast_path_enabled("pool")


def test_bad_switch_arguments():
    with pytest.raises(ValueError, match="Received: name='attention'"):
        config.set_fast_path("attention", False)
    with pytest.raises(ValueError, match="Received: enabled='no'"):
        config.set_fast_path("apply", "no")
    with pytest.raises(ValueError, match="Received: implementation='quick'"):
        involution.Involution(group_number=2, implementation="quick")
    with pytest.raises(ValueError, match="Received: implementation='quick'"):
        create_model("involution", implementation="quick")


def test_fast_raises_where_a_fast_path_cannot_run():
    from involution.attention import window_logits
    from involution.pooling import FusedMaxPooling2D as MaxPooling2D
    from involution.normalization import FusedBatchNormalization as BatchNormalization

    queries = keras.ops.zeros((1, 4, 4, 2, 3))
    keys = keras.ops.zeros((1, 4, 4, 2, 3))
    x = keras.ops.zeros((2, 4, 4, 8))
    if BACKEND == "jax":
        # JAX has the fast apply step and tiling pools only.
        with pytest.raises(ValueError, match="has no window_correlation kernel"):
            window_logits(queries, keys, 3, 1, 1, implementation="fast")
        with pytest.raises(ValueError, match="has no batch_norm kernel"):
            BatchNormalization(implementation="fast")(x, training=True)
    else:
        with pytest.raises(ValueError, match="cannot run here: it normalizes the last"):
            BatchNormalization(axis=1, implementation="fast")(x, training=True)
        # bfloat16: no CPU kernel takes it, the Triton interpreter's included.
        with pytest.raises(ValueError, match=r"cannot run the .window_correlation. op here \(\w+-cpp: it runs float32"):
            window_logits(keras.ops.cast(queries, "bfloat16"), keras.ops.cast(keys, "bfloat16"), 3, 1, 1,
                          implementation="fast")
    if BACKEND == "torch":
        with pytest.raises(ValueError, match=r"cannot run the .pool. op here \(torch-permuted: channels_first"):
            MaxPooling2D(2, data_format="channels_first", implementation="fast")(x)
    elif BACKEND == "jax":
        with pytest.raises(ValueError, match=r"cannot run the .pool. op here \(jax-tiles: its windows overlap"):
            MaxPooling2D(3, strides=2, implementation="fast")(x)
    else:
        with pytest.raises(ValueError, match=r"cannot run the .pool. op here \(tensorflow-cpp: it pools square tiles only"):
            MaxPooling2D(3, strides=2, implementation="fast")(x)
    # The references always run.
    window_logits(queries, keys, 3, 1, 1, implementation="reference")
    BatchNormalization(implementation="reference")(x, training=True)
    MaxPooling2D(2, implementation="reference")(x)


@pytest.mark.parametrize("name", ["invnet", "attention_net", "rednet26_cifar_tiny", "involution"])
def test_every_registry_builder_takes_implementation(name, tmp_path):
    model = create_model(name, implementation="reference")
    switched = [layer for layer in model._flatten_layers(include_self=False)
                if isinstance(getattr(layer, "implementation", None), str)]
    assert switched and all(layer.implementation == "reference" for layer in switched)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    reloaded_switched = [layer.implementation for layer in reloaded._flatten_layers(include_self=False)
                         if isinstance(getattr(layer, "implementation", None), str)]
    assert reloaded_switched == ["reference"] * len(switched)


def test_reference_model_predicts_like_the_fast_one():
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    fast = create_model("invnet")
    reference = create_model("invnet", implementation="reference")
    reference.set_weights(fast.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reference(x, training=True)),
                               keras.ops.convert_to_numpy(fast(x, training=True)), rtol=1e-4, atol=1e-4)
