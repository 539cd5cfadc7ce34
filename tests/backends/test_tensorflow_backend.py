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
        output = tensorflow_backend._cpp_apply(x_t, kernel_t, kernel_size, stride, dilation, groups, data_format)
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

    native = hessian_terms(tensorflow_backend._cpp_apply)
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


def _chosen(x, kernel, groups=1):
    from involution import registry

    return registry.choose("apply", "auto", inputs=x, kernel=kernel, kernel_size=3, stride=1, dilation=1,
                           groups=groups, data_format="channels_last").name.removeprefix("tensorflow-")


def test_which_path_runs_where():
    x = tf.zeros((1, 4, 4, 8))
    kernel = tf.zeros((1, 4, 4, 9))

    def path(x, kernel, group_channels=8):
        groups = x.shape[-1] // group_channels
        return _chosen(x, tf.zeros(kernel.shape[:3] + (9 * groups,), kernel.dtype), groups)

    paths = ["cpp", "xla", "grouped"]

    def traced(**options):  # XLA returns no strings: the path's index
        return paths[tf.function(lambda: tf.constant(paths.index(path(x, kernel))), **options)().numpy()]

    assert path(x, kernel) == "cpp"  # eagerly
    assert traced() == "cpp"  # a graph Keras does not compile
    assert traced(jit_compile=True) == "grouped"  # inside XLA already
    with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)):
        assert path(x, kernel) == "cpp"  # the C++ ops differentiate in forward mode too
    assert path(x, kernel, group_channels=4) == "xla"  # too few channels per group for the C++ loops
    half = tf.zeros((1, 4, 4, 8), tf.float16)
    assert path(half, tf.zeros((1, 4, 4, 9), tf.float16)) == "xla"
    with tf.autodiff.ForwardAccumulator(half, tf.ones_like(half)):
        assert path(half, tf.zeros((1, 4, 4, 9), tf.float16)) == "grouped"


def test_without_the_native_ops_the_compiled_cluster_runs(monkeypatch):
    monkeypatch.setattr(tensorflow_backend, "_native_ops", lambda: None)
    assert _chosen(tf.zeros((1, 4, 4, 8)), tf.zeros((1, 4, 4, 9))) == "xla"


def test_unknown_sizes_are_checked_when_the_graph_runs():
    apply = tf.function(
        lambda x, k: tensorflow_backend.apply_xla(x, k, 3, 1, 1, 1, "channels_last"),
        input_signature=[tf.TensorSpec((None, None, None, 4)), tf.TensorSpec((None, None, None, 9))],
    )
    assert apply(tf.zeros((1, 5, 5, 4)), tf.zeros((1, 5, 5, 9))).shape == (1, 5, 5, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="ceil\\(size / stride\\) pixels"):
        apply(tf.zeros((1, 5, 5, 4)), tf.zeros((1, 4, 5, 9)))


def _plain_batch_norm(x, gamma, beta, epsilon):
    # Not `tf.nn.moments`, which stops the variance's gradient through the
    # mean: right to first order only.
    axes = list(range(len(x.shape) - 1))
    mean = tf.reduce_mean(x, axes)
    variance = tf.reduce_mean(tf.square(x - mean), axes)
    return (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta, mean, variance


@pytest.mark.parametrize("shape", [(4, 5, 7, 12), (40, 3), (1, 9)])
def test_native_batch_norm_matches_numpy(rng, shape):
    # float64 through the op itself (the layer casts to float32), a large
    # mean against a small spread (the shifted sums keep the variance).
    x = rng.normal(50.0, 0.5, shape)
    gamma, beta = rng.uniform(0.5, 2.0, shape[-1]), rng.normal(size=shape[-1])
    upstream = rng.normal(size=shape)
    axes = tuple(range(len(shape) - 1))
    mean, variance = x.mean(axes), x.var(axes)
    normalized = (x - mean) / np.sqrt(variance + 1e-3)
    x_, gamma_, beta_ = (tf.constant(a) for a in (x, gamma, beta))
    with tf.GradientTape() as tape:
        tape.watch([x_, gamma_, beta_])
        outputs, batch_mean, batch_variance = tensorflow_backend.batch_norm_cpp(x_, gamma_, beta_, 1e-3)
        loss = tf.reduce_sum(outputs * upstream)
    grad_x, grad_gamma, grad_beta = tape.gradient(loss, [x_, gamma_, beta_])
    tolerance = dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(outputs.numpy(), normalized * gamma + beta, **tolerance)
    np.testing.assert_allclose(batch_mean.numpy(), mean, **tolerance)
    np.testing.assert_allclose(batch_variance.numpy(), variance, **tolerance)
    np.testing.assert_allclose(grad_beta.numpy(), upstream.sum(axes), **tolerance)
    np.testing.assert_allclose(grad_gamma.numpy(), (upstream * normalized).sum(axes), **tolerance)
    expected_x = gamma / np.sqrt(variance + 1e-3) * (
        upstream - upstream.mean(axes) - normalized * (upstream * normalized).mean(axes))
    np.testing.assert_allclose(grad_x.numpy(), expected_x, **tolerance)


def _second_order_terms(fn, x, first, second):
    """Second-order derivatives of sum(sin(fn(x, first, second))): reverse
    over reverse (of the squared gradients' sum, for all three) and forward
    over reverse (x's gradient along ones for x and `first`)."""
    arguments = [x, first, second]

    def loss():
        return tf.reduce_sum(tf.sin(fn(*arguments)))

    with tf.GradientTape() as outer:
        outer.watch(arguments)
        with tf.GradientTape() as inner:
            inner.watch(arguments)
            value = loss()
        grads = inner.gradient(value, arguments)
        total = sum(tf.reduce_sum(g**2) for g in grads)
    reverse = outer.gradient(total, arguments)
    with tf.autodiff.ForwardAccumulator([x, first], [tf.ones_like(x), tf.ones_like(first)]) as accumulator:
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss()
        grad_x = tape.gradient(value, x)
    return [g.numpy() for g in reverse] + [accumulator.jvp(grad_x).numpy()]


def test_native_batch_norm_gradients_of_gradients_match_the_plain_ops(rng):
    # float64: the differences are rounding only.
    x = tf.constant(rng.normal(1.0, 2.0, (3, 4, 5, 6)))
    gamma, beta = tf.constant(rng.uniform(0.5, 2.0, 6)), tf.constant(rng.normal(size=6))
    native = _second_order_terms(lambda *a: tensorflow_backend.batch_norm_cpp(*a, 1e-3)[0], x, gamma, beta)
    plain = _second_order_terms(lambda *a: _plain_batch_norm(*a, 1e-3)[0], x, gamma, beta)
    for ours, theirs in zip(native, plain):
        np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-8)


def test_native_batch_norm_checks_shapes_before_running():
    operations = tensorflow_backend._native_ops()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"per-channel inputs must have shape \(8\)"):
        operations.involution_batch_norm(tf.zeros((2, 8)), tf.ones(7), tf.zeros(8), epsilon=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected x's"):
        operations.involution_batch_norm_grad(tf.zeros((2, 7)), tf.zeros((2, 8)), tf.ones(8), tf.zeros(8),
                                              tf.ones(8), epsilon=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="epsilon must be positive"):
        operations.involution_batch_norm(tf.zeros((2, 8)), tf.ones(8), tf.zeros(8), epsilon=0.0)


def batch_norm_training(x, gamma, beta, epsilon):
    """The training step as `FusedBatchNormalization` runs it: the registry's choice."""
    from involution import registry

    arguments = dict(inputs=x, gamma=gamma, beta=beta, epsilon=epsilon)
    return registry.choose("batch_norm", "auto", **arguments)(**arguments)


def test_batch_norm_takes_the_native_op_outside_compiled_graphs():
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 3, 3, 8)), tf.float32)
    gamma, beta = tf.ones(8), tf.zeros(8)

    def op_types(**options):
        graph = tf.function(lambda: batch_norm_training(x, gamma, beta, 1e-3)[0], **options)
        return {op.type for op in graph.get_concrete_function().graph.get_operations()}

    assert "InvolutionBatchNorm" in op_types()
    compiled = op_types(jit_compile=True)
    assert "InvolutionBatchNorm" not in compiled and "FusedBatchNormV3" in compiled
    # Both the same numbers.
    ours = batch_norm_training(x, gamma, beta, 1e-3)
    theirs = tf.function(lambda: batch_norm_training(x, gamma, beta, 1e-3), jit_compile=True)()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("shape,size", [((2, 7, 9, 5), 2), ((2, 9, 8, 16), 3), ((1, 4, 4, 24), 2)])
def test_native_pool_matches_numpy(rng, mode, shape, size):
    # Small integers: many tied maxima, whose gradient goes to the first.
    x = rng.integers(0, 3, shape).astype("float64")
    upstream = rng.normal(size=(shape[0], shape[1] // size, shape[2] // size, shape[3]))
    expected, expected_grad = ref.pool_with_gradient(x, size, size, mode, upstream)
    x_ = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_)
        pooled = tensorflow_backend.pool(x_, size, size, mode)
        loss = tf.reduce_sum(pooled * upstream)
    np.testing.assert_allclose(pooled.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tape.gradient(loss, x_).numpy(), expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["max", "average"])
def test_native_pool_gradients_of_gradients_match_tensorflow(rng, mode):
    x = tf.constant(rng.normal(size=(2, 6, 7, 8)))
    keras_pool = tf.nn.max_pool2d if mode == "max" else tf.nn.avg_pool2d

    def second_order(pool):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                value = tf.reduce_sum(tf.sin(pool(x)))
            grad = inner.gradient(value, x)
            total = tf.reduce_sum(grad * tf.cos(x))
        return outer.gradient(total, x).numpy()

    ours = second_order(lambda v: tensorflow_backend.pool(v, 2, 2, mode))
    theirs = second_order(lambda v: keras_pool(v, 2, 2, "VALID"))
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)


def test_native_pool_checks_shapes_before_running():
    operations = tensorflow_backend._native_ops()
    with pytest.raises(tf.errors.InvalidArgumentError, match="x must be 4D"):
        operations.involution_pool_grad(tf.zeros((4, 4, 8)), tf.zeros((2, 2, 8)), tf.zeros((2, 2, 8)), size=2,
                                        mode="max")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"y and grad must have shape \[1,2,2,8\]"):
        operations.involution_pool_grad(tf.zeros((1, 4, 4, 8)), tf.zeros((1, 2, 2, 8)), tf.zeros((1, 3, 2, 8)),
                                        size=2, mode="max")


def test_pool_reasons():
    x = tf.zeros((1, 4, 4, 8))
    assert tensorflow_backend.pool_reason(x, 2, 2, "max", "channels_last") is None
    assert "square tiles" in tensorflow_backend.pool_reason(x, 3, 2, "max", "channels_last")
    assert "channels_last" in tensorflow_backend.pool_reason(x, 2, 2, "max", "channels_first")
    assert "float32/float64" in tensorflow_backend.pool_reason(tf.zeros((1, 4, 4, 8), tf.float16), 2, 2, "max",
                                                                "channels_last")


def test_large_outputs_are_fully_written_when_their_blocks_are_reused(rng):
    # Outputs of 8 MiB and more come from a cache of freed blocks: the
    # second pooling gradient gets the first's block, holding its values.
    # The last row and column are outside every 2x2 tile, so their gradient
    # is zero only if the op writes it.
    shape = (1, 1025, 1025, 4)
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    pooled = tensorflow_backend.pool(x, 2, 2, "average")
    operations = tensorflow_backend._native_ops()
    first = operations.involution_pool_grad(x, pooled, tf.fill(pooled.shape, 7.0), size=2, mode="average")
    assert float(first[0, -1, -1, 0]) == 0.0 and float(first[0, 0, 0, 0]) == 1.75
    del first
    upstream = rng.normal(size=pooled.shape).astype("float32")
    second = operations.involution_pool_grad(x, pooled, tf.constant(upstream), size=2, mode="average")
    expected = np.zeros(shape, np.float32)
    expected[:, :1024, :1024] = np.repeat(np.repeat(upstream, 2, axis=1), 2, axis=2) / 4
    np.testing.assert_array_equal(second.numpy(), expected)
