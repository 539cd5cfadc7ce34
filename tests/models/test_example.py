"""The Keras example's models (`involution.models.example`)."""

import numpy as np

from involution import models


def test_example_parameter_counts():
    conv = models.create_model("conv")
    inv = models.create_model("involution")
    assert conv.count_params() == 319_178
    assert inv.count_params() == 13_080
    assert sum(int(np.prod(w.shape)) for w in inv.trainable_weights) == 13_074
