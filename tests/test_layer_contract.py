"""Every layer of the package keeps Keras' layer contract (`tests/layer_test.py`)."""

import keras
import pytest

from involution import Involution, InvolutionKernelGenerator, LocalAttentionKernelGenerator
from involution.convolution import PortableConv2D as Conv2D
from involution.dense import PortableDense
from involution.normalization import FusedBatchNormalization as BatchNormalization
from involution.pooling import FusedMaxPooling2D as MaxPooling2D
from involution.normalization import PortableLayerNormalization as LayerNormalization
from tests.layer_test import run_layer_test

CASES = {
    "involution": (Involution, dict(channel=16, group_number=2, kernel_size=3, stride=2, reduction_ratio=4),
                   (2, 7, 8, 16), (2, 4, 4, 16)),
    "involution_with_kernel": (Involution, dict(channel=16, group_number=2, kernel_size=3, return_kernel=True),
                               (2, 6, 6, 16), ((2, 6, 6, 16), (2, 6, 6, 9, 1, 2))),
    "involution_channels_first": (Involution, dict(channel=16, group_number=2, kernel_size=3, dilation=2,
                                                   data_format="channels_first"), (2, 16, 6, 6), (2, 16, 6, 6)),
    "kernel_generator": (InvolutionKernelGenerator, dict(kernel_size=3, stride=2, group_number=2, reduction_ratio=4),
                         (2, 6, 6, 16), (2, 3, 3, 18)),
    "attention_generator": (LocalAttentionKernelGenerator, dict(kernel_size=3, group_number=2, key_dim=4),
                            (2, 6, 6, 16), (2, 6, 6, 18)),
    "conv_channels_first": (Conv2D, dict(filters=6, kernel_size=3, strides=2, padding="same",
                                         data_format="channels_first"), (2, 4, 7, 7), (2, 6, 4, 4)),
    "batch_norm": (BatchNormalization, dict(momentum=0.9), (2, 4, 4, 16), (2, 4, 4, 16)),
    "layer_norm_channels_first": (LayerNormalization, dict(axis=1), (2, 16, 4, 4), (2, 16, 4, 4)),
    "max_pooling": (MaxPooling2D, dict(pool_size=2), (2, 6, 6, 16), (2, 3, 3, 16)),
    "dense_relu": (PortableDense, dict(units=8, activation="relu"), (2, 5, 5, 3), (2, 5, 5, 8)),
    "dense_channels_first": (PortableDense, dict(units=8, axis=1), (2, 3, 5, 5), (2, 8, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_contract(name, tmp_path, rng):
    layer_cls, kwargs, input_shape, output_shape = CASES[name]
    # TensorFlow's CPU convolutions take half precision channels-last only.
    half = not (keras.backend.backend() == "tensorflow" and kwargs.get("data_format") == "channels_first")
    run_layer_test(layer_cls, kwargs, input_shape, output_shape, tmp_path, rng, mixed_precision=half)
