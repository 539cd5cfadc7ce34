"""`run_layer_test`: the contract every layer of the package keeps.

In the spirit of Keras' own `testing.TestCase.run_layer_test`: the config
round trip, symbolic and eager calls of the stated output shape, one
training step, a mixed-precision call and a `.keras` round trip that
predicts the same.
"""

import keras
import numpy as np


def _outputs(value):
    return value if isinstance(value, (tuple, list)) else (value,)


def run_layer_test(layer_cls, init_kwargs, input_shape, expected_output_shape, tmp_path, rng, training_outputs=0,
                   mixed_precision=True):
    """Checks `layer_cls(**init_kwargs)` on inputs of `input_shape` (batch first).

    Args:
        layer_cls: the layer class (registered for serialization).
        init_kwargs: constructor arguments.
        input_shape: a full input shape, batch included.
        expected_output_shape: the output's full shape, or a tuple of them
            for several outputs.
        tmp_path: a folder for the saved model.
        rng: a NumPy generator.
        training_outputs: which output the training step's loss reads.
        mixed_precision: whether to check a `mixed_float16` call.
    """
    expected = expected_output_shape if isinstance(expected_output_shape[0], tuple) else (expected_output_shape,)

    # Config round trip: every constructor argument comes back.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    for name in init_kwargs:
        assert name in config, f"{name} is not in get_config()"
    assert layer_cls.from_config(config).get_config() == config

    # Symbolic call.
    symbolic = _outputs(layer_cls(**init_kwargs)(keras.Input(input_shape[1:], batch_size=input_shape[0])))
    assert [tuple(o.shape) for o in symbolic] == list(expected)

    # Eager call, then one training step of a model around the layer.
    x = rng.uniform(-1, 1, input_shape).astype("float32")
    layer = layer_cls(**init_kwargs)
    eager = _outputs(layer(x))
    assert [tuple(o.shape) for o in eager] == list(expected)
    inputs = keras.Input(input_shape[1:])
    model = keras.Model(inputs, _outputs(layer_cls(**init_kwargs)(inputs))[training_outputs])
    model.compile(optimizer="adam", loss="mse")
    target = np.zeros((input_shape[0],) + tuple(expected[training_outputs][1:]), "float32")
    loss = model.train_on_batch(x, target)
    assert np.isfinite(loss)

    # A saved model reloads and predicts the same.
    path = str(tmp_path / f"{layer_cls.__name__}.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded.predict(x, verbose=0)),
                               keras.ops.convert_to_numpy(model.predict(x, verbose=0)), rtol=1e-5, atol=1e-5)

    if not mixed_precision:
        return
    # Mixed precision: computes in float16, keeps float32 weights.
    layer = layer_cls(**init_kwargs, dtype="mixed_float16")
    outputs = _outputs(layer(x))
    assert all(keras.backend.standardize_dtype(o.dtype) == "float16" for o in outputs)
    assert all(w.dtype == "float32" for w in layer.weights)
    assert all(np.isfinite(keras.ops.convert_to_numpy(o)).all() for o in outputs)
