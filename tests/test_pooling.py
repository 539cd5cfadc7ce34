"""`involution.pooling.FusedMaxPooling2D` against Keras' layer."""

import keras
import numpy as np
import pytest


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_max_pooling_matches_keras(rng, padding):
    from involution.pooling import FusedMaxPooling2D as MaxPooling2D

    x = rng.normal(size=(2, 7, 9, 5)).astype("float32")
    pooling = MaxPooling2D(3, 2, padding=padding)
    expected = keras.layers.MaxPooling2D(3, 2, padding=padding)(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(pooling(x)), keras.ops.convert_to_numpy(expected))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(pooling))
    assert type(restored) is MaxPooling2D and restored.get_config() == pooling.get_config()
