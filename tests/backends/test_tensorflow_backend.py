"""The TensorFlow fast path on its own: the compiled cluster and where it runs."""

import itertools

import keras
import numpy as np
import pytest

from tests import numpy_reference as ref
from tests.backend_utils import alternating, apply_case

if keras.backend.backend() != "tensorflow":
    pytest.skip("TensorFlow backend only", allow_module_level=True)

import tensorflow as tf  # noqa: E402

from involution.backends import tensorflow_backend  # noqa: E402



GRID = alternating(itertools.product([1, 3, 5], [1, 2, 3], [1, 2], [1, 2]), ["channels_last", "channels_first"])


@pytest.mark.parametrize("kernel_size,stride,groups,dilation,data_format", GRID)
def test_compiled_cluster_and_plain_ops_match_numpy(rng, kernel_size, stride, groups, dilation, data_format):
    x, kernel = apply_case(rng, kernel_size, stride, groups, 16, data_format)
    expected = ref.involution_apply(x, kernel, kernel_size, stride, dilation, groups, data_format)
    compiled = tensorflow_backend._compiled(kernel_size, stride, dilation, groups, data_format)(x, kernel)
    plain = tensorflow_backend._grouped_apply(x, kernel, kernel_size, stride, dilation, groups, data_format)
    np.testing.assert_allclose(compiled.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(plain.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_where_the_apply_step_compiles_itself():
    x = tf.zeros((1, 4, 4, 8))
    kernel = tf.zeros((1, 4, 4, 9))
    pays = tensorflow_backend._own_cluster_pays
    assert pays(x, kernel)  # eagerly
    assert tf.function(lambda: tf.constant(pays(x, kernel)))()  # a graph Keras does not compile
    assert not tf.function(lambda: tf.constant(pays(x, kernel)), jit_compile=True)()  # inside XLA already
    with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)):
        assert not pays(x, kernel)  # forward mode


def test_unknown_sizes_are_checked_when_the_graph_runs():
    apply = tf.function(
        lambda x, k: tensorflow_backend.involution_apply(x, k, 3, 1, 1, 1, "channels_last"),
        input_signature=[tf.TensorSpec((None, None, None, 4)), tf.TensorSpec((None, None, None, 9))],
    )
    assert apply(tf.zeros((1, 5, 5, 4)), tf.zeros((1, 5, 5, 9))).shape == (1, 5, 5, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="ceil\\(size / stride\\) pixels"):
        apply(tf.zeros((1, 5, 5, 4)), tf.zeros((1, 4, 5, 9)))
