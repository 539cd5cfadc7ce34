"""The TensorFlow fast paths on their own: the C++ ops, the compiled cluster, where each runs."""

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


NATIVE_GRID = alternating(itertools.product([1, 3, 7], [1, 2, 3], [1, 2], [1, 2]), ["channels_last", "channels_first"])


@pytest.mark.parametrize("kernel_size,stride,groups,dilation,data_format", NATIVE_GRID)
def test_native_ops_match_numpy_with_gradients(rng, kernel_size, stride, groups, dilation, data_format):
    x, kernel = apply_case(rng, kernel_size, stride, groups, 16, data_format)
    expected = ref.involution_apply(x, kernel, kernel_size, stride, dilation, groups, data_format)
    upstream = rng.standard_normal(expected.shape)
    grad_x, grad_kernel = ref.involution_apply_gradients(
        *(ref.to_channels_last(a, data_format) for a in (x, kernel, upstream)), kernel_size, stride, dilation, groups
    )
    grad_x, grad_kernel = (ref.from_channels_last(g, data_format) for g in (grad_x, grad_kernel))
    x_t, kernel_t = tf.constant(x), tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch([x_t, kernel_t])
        output = tensorflow_backend._native_apply(x_t, kernel_t, kernel_size, stride, dilation, groups, data_format)
        loss = tf.reduce_sum(output * tf.constant(upstream, tf.float32))
    grads = tape.gradient(loss, [x_t, kernel_t])
    np.testing.assert_allclose(output.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[0].numpy(), grad_x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads[1].numpy(), grad_kernel, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_native_gradients_of_gradients_match_the_plain_ops(rng, stride):
    # Both are checked against NumPy above; second order, reverse over
    # reverse and forward over reverse, the C++ ops must agree with
    # TensorFlow's autodiff of the plain ops (float64: the differences are
    # rounding only).
    x = tf.constant(rng.standard_normal((2, 7, 6, 8)))
    kernel = tf.constant(rng.standard_normal((2, -(-7 // stride), -(-6 // stride), 18)))

    def loss(apply, x, kernel):
        return tf.reduce_sum(tf.sin(apply(x, kernel, 3, stride, 1, 2, "channels_last")))

    def hessian_terms(apply):
        with tf.GradientTape() as outer:
            outer.watch([x, kernel])
            with tf.GradientTape() as inner:
                inner.watch([x, kernel])
                value = loss(apply, x, kernel)
            grad_x, grad_kernel = inner.gradient(value, [x, kernel])
            total = tf.reduce_sum(grad_x**2) + tf.reduce_sum(grad_kernel**2)
        reverse = outer.gradient(total, [x, kernel])
        with tf.autodiff.ForwardAccumulator([x, kernel], [tf.ones_like(x), tf.ones_like(kernel)]) as accumulator:
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                value = loss(apply, x, kernel)
            grad_x = tape.gradient(value, x)
        return [g.numpy() for g in reverse] + [accumulator.jvp(grad_x).numpy()]

    native = hessian_terms(tensorflow_backend._native_apply)
    plain = hessian_terms(tensorflow_backend._grouped_apply)
    for ours, theirs in zip(native, plain):
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


def test_native_ops_check_shapes_before_running():
    operations = tensorflow_backend._native_ops()
    with pytest.raises(tf.errors.InvalidArgumentError, match="ceil\\(input size / stride\\)"):
        operations.involution_apply(tf.zeros((1, 4, 4, 8)), tf.zeros((1, 3, 4, 9)), groups=1, kernel_size=3,
                                    stride=1, dilation=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="kernel has shape"):
        operations.involution_apply(tf.zeros((1, 4, 4, 8)), tf.zeros((1, 4, 4, 8)), groups=1, kernel_size=3,
                                    stride=1, dilation=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="groups must be positive and divide"):
        operations.involution_apply(tf.zeros((1, 4, 4, 8)), tf.zeros((1, 4, 4, 27)), groups=3, kernel_size=3,
                                    stride=1, dilation=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_size must hold"):
        operations.involution_input_gradient(tf.zeros((1, 4, 4, 8)), tf.zeros((1, 4, 4, 9)), tf.constant([4]),
                                             groups=1, kernel_size=3, stride=1, dilation=1)


def test_which_path_runs_where():
    x = tf.zeros((1, 4, 4, 8))
    kernel = tf.zeros((1, 4, 4, 9))
    def path(x, kernel, group_channels=8):
        return tensorflow_backend._path(x, kernel, group_channels)

    paths = ["native", "xla", "ops"]

    def traced(**options):  # XLA returns no strings: the path's index
        return paths[tf.function(lambda: tf.constant(paths.index(path(x, kernel))), **options)().numpy()]

    assert path(x, kernel) == "native"  # eagerly
    assert traced() == "native"  # a graph Keras does not compile
    assert traced(jit_compile=True) == "ops"  # inside XLA already
    with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)):
        assert path(x, kernel) == "native"  # the C++ ops differentiate in forward mode too
    assert path(x, kernel, group_channels=4) == "xla"  # too few channels per group for the C++ loops
    half = tf.zeros((1, 4, 4, 8), tf.float16)
    assert path(half, tf.zeros((1, 4, 4, 9), tf.float16)) == "xla"
    with tf.autodiff.ForwardAccumulator(half, tf.ones_like(half)):
        assert path(half, tf.zeros((1, 4, 4, 9), tf.float16)) == "ops"


def test_without_the_native_ops_the_compiled_cluster_runs(monkeypatch):
    monkeypatch.setattr(tensorflow_backend, "_native_ops", lambda: None)
    assert tensorflow_backend._path(tf.zeros((1, 4, 4, 8)), tf.zeros((1, 4, 4, 9)), 8) == "xla"


def test_unknown_sizes_are_checked_when_the_graph_runs():
    apply = tf.function(
        lambda x, k: tensorflow_backend.involution_apply(x, k, 3, 1, 1, 1, "channels_last"),
        input_signature=[tf.TensorSpec((None, None, None, 4)), tf.TensorSpec((None, None, None, 9))],
    )
    assert apply(tf.zeros((1, 5, 5, 4)), tf.zeros((1, 5, 5, 9))).shape == (1, 5, 5, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="ceil\\(size / stride\\) pixels"):
        apply(tf.zeros((1, 5, 5, 4)), tf.zeros((1, 4, 5, 9)))
