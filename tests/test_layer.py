"""Keras-style tests of the Involution layer (run on every backend)."""

import itertools
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from involution import Involution, InvolutionKernelGenerator
from tests import numpy_reference as ref


def to_format(x, data_format):
    return x if data_format == "channels_last" else np.moveaxis(x, -1, 1)


def randomize_batch_norm_statistics(layer, rng):
    """Non-trivial moving statistics so the inference path is exercised."""
    norm = layer.kernel_generator.norm
    norm.moving_mean.assign(rng.standard_normal(norm.moving_mean.shape).astype("float32"))
    norm.moving_variance.assign(rng.uniform(0.5, 2.0, norm.moving_variance.shape).astype("float32"))
    norm.gamma.assign(rng.uniform(0.5, 1.5, norm.gamma.shape).astype("float32"))
    norm.beta.assign(rng.standard_normal(norm.beta.shape).astype("float32") * 0.1)


LAYER_GRID = list(
    itertools.product(
        [1, 3, 7],  # kernel_size
        [1, 2, 3],  # stride
        [1, 2],  # group_number of 16 channels: 16 and 8 per group, where "auto" takes the fast paths
        [1, 2],  # dilation
        ["channels_last", "channels_first"],
    )
)


@pytest.mark.parametrize(
    "kernel_size,stride,groups,dilation,data_format",
    LAYER_GRID,
    ids=[f"k{k}-s{s}-g{g}-d{d}-{f[9:]}" for k, s, g, d, f in LAYER_GRID],
)
def test_layer_matches_numpy(rng, kernel_size, stride, groups, dilation, data_format):
    # 7 x 8: "same" pooling pads unevenly for stride 2 and 3 (Keras' PyTorch
    # pooling disagrees with TensorFlow's there; the layer must not).
    x = to_format(rng.standard_normal((2, 7, 8, 16)).astype("float32"), data_format)
    layer = Involution(
        channel=16, group_number=groups, kernel_size=kernel_size, stride=stride,
        reduction_ratio=2, dilation=dilation, data_format=data_format, return_kernel=True,
    )
    layer.build(x.shape)
    randomize_batch_norm_statistics(layer, rng)
    out, kernel = layer(x, training=False)
    expected, expected_kernel = ref.involution_layer(layer, x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, rtol=1e-4, atol=1e-4)
    # The returned kernel is the generator output in the documented layout.
    taps = kernel_size**2
    expected_kernel = expected_kernel.reshape(expected_kernel.shape[:3] + (groups, taps))
    expected_kernel = np.swapaxes(expected_kernel, -1, -2)[..., None, :]
    if data_format == "channels_first":
        expected_kernel = np.transpose(expected_kernel, (0, 5, 4, 3, 1, 2))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(kernel), expected_kernel, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(channel=3, group_number=1, kernel_size=3, stride=1, reduction_ratio=2), (32, 256, 256, 3)),
        (dict(channel=3, group_number=1, kernel_size=3, stride=2, reduction_ratio=2), (32, 128, 128, 3)),
        (dict(channel=16, group_number=1, kernel_size=3, stride=1, reduction_ratio=2), (32, 256, 256, 3)),
    ],
    ids=["stride1", "stride2", "channel16"],
)
def test_keras_example_shapes(kwargs, expected):
    x = keras.random.normal((32, 256, 256, 3))
    out, kernel = Involution(**kwargs, return_kernel=True, name="inv")(x)
    assert tuple(out.shape) == expected
    assert tuple(kernel.shape) == expected[:3] + (9, 1, 1)


def test_seed_positional_signature():
    layer = Involution(3, 1, 3, 2, 2, name="seed")
    assert (layer.channel, layer.group_number, layer.kernel_size, layer.stride,
            layer.reduction_ratio, layer.name) == (3, 1, 3, 2, 2, "seed")


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_symbolic_call_with_unknown_size(data_format):
    shape = (None, None, 6) if data_format == "channels_last" else (6, None, None)
    inputs = keras.Input(shape)
    out, kernel = Involution(
        group_number=3, kernel_size=3, stride=2, reduction_ratio=2,
        data_format=data_format, return_kernel=True,
    )(inputs)
    assert tuple(out.shape) == (None,) + shape
    expected_kernel = (None, None, None, 9, 1, 3) if data_format == "channels_last" else (None, 3, 1, 9, None, None)
    assert tuple(kernel.shape) == expected_kernel
    model = keras.Model(inputs, out)
    for height, width in [(7, 9), (16, 16)]:
        x = np.random.rand(2, height, width, 6).astype("float32")
        x = to_format(x, data_format)
        y = model.predict(x, verbose=0)
        expected = (2, 6, -(-height // 2), -(-width // 2)) if data_format == "channels_first" else (2, -(-height // 2), -(-width // 2), 6)
        assert y.shape == expected


def test_built_at_one_size_called_at_another(rng):
    layer = Involution(kernel_size=3, reduction_ratio=1)
    layer(rng.standard_normal((1, 8, 8, 4)).astype("float32"))
    x = rng.standard_normal((2, 13, 5, 4)).astype("float32")
    out = layer(x, training=False)
    expected, _ = ref.involution_layer(layer, x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, rtol=1e-4, atol=1e-4)


def test_config_round_trip(rng):
    layer = Involution(
        channel=8, group_number=2, kernel_size=5, stride=2, reduction_ratio=4,
        dilation=2, data_format="channels_first", return_kernel=True,
        implementation="reference", name="inv", dtype="float32", trainable=False,
    )
    config = layer.get_config()
    clone = Involution.from_config(config)
    assert clone.get_config() == config
    for key in ["channel", "group_number", "kernel_size", "stride", "reduction_ratio",
                "dilation", "data_format", "return_kernel", "implementation", "trainable"]:
        assert getattr(clone, key) == getattr(layer, key), key
    x = rng.standard_normal((2, 8, 9, 9)).astype("float32")
    layer.build(x.shape)
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clone(x)[0]), keras.ops.convert_to_numpy(layer(x)[0]), rtol=1e-6
    )


def test_weights_and_parameter_count():
    layer = Involution(channel=3, group_number=1, kernel_size=3, stride=1, reduction_ratio=2)
    layer.build((None, 32, 32, 3))
    # 1x1 conv 3->1 (4), batch norm on 1 channel (2 + 2), 1x1 conv 1->9 (18).
    assert layer.count_params() == 26
    assert len(layer.trainable_weights) == 6
    assert len(layer.non_trainable_weights) == 2


def make_model(data_format="channels_last", **kwargs):
    shape = (8, 8, 4) if data_format == "channels_last" else (4, 8, 8)
    inputs = keras.Input(shape)
    x = Involution(group_number=2, kernel_size=3, reduction_ratio=2, data_format=data_format, **kwargs)(inputs)
    x = keras.layers.GlobalAveragePooling2D(data_format=data_format)(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_one_fit_step_updates_every_weight(rng, data_format):
    model = make_model(data_format)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = rng.standard_normal((16,) + model.input_shape[1:]).astype("float32")
    y = rng.integers(0, 3, 16)
    before = [np.array(w) for w in model.trainable_weights]
    moving_mean = np.array(model.layers[1].kernel_generator.norm.moving_mean)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for w0, w in zip(before, model.trainable_weights):
        assert not np.allclose(w0, np.array(w)), w.path
    assert not np.allclose(moving_mean, np.array(model.layers[1].kernel_generator.norm.moving_mean))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(rng, policy):
    x = rng.standard_normal((4, 8, 8, 4)).astype("float32")
    reference = make_model()
    reference_out = reference.predict(x, verbose=0)
    keras.config.set_dtype_policy(policy)
    model = make_model()
    model.set_weights(reference.get_weights())
    layer = model.layers[1]
    assert layer.compute_dtype == policy.split("_")[1]
    assert layer.kernel_generator.reduce.kernel.dtype == "float32"
    inv_out = layer(keras.ops.convert_to_tensor(x))
    assert keras.backend.standardize_dtype(inv_out.dtype) == policy.split("_")[1]
    out = model.predict(x, verbose=0)
    tolerance = 2e-2 if policy == "mixed_float16" else 1e-1
    np.testing.assert_allclose(out.astype("float32"), reference_out, rtol=tolerance, atol=tolerance)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, rng.integers(0, 3, 4), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_saved_model_reloads_in_fresh_process(rng, tmp_path):
    model = make_model(return_kernel=False)
    x = rng.standard_normal((3, 8, 8, 4)).astype("float32")
    model.compile(optimizer="adam", loss="mse")
    # Training moves the batch-norm statistics away from their initial values.
    model.fit(x, rng.standard_normal((3, 3)).astype("float32"), epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import involution  # registers the layer
        model = keras.saving.load_model({str(path)!r})
        np.save({str(tmp_path / 'y.npy')!r}, model.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))
        """
    )
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-6)


@keras.saving.register_keras_serializable(package="involution_tests")
class ConvKernelGenerator(keras.layers.Layer):
    """A different kernel-generation method: one 3x3 convolution."""

    def __init__(self, taps, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.taps, self.stride = taps, stride
        self.conv = keras.layers.Conv2D(taps, 3, strides=stride, padding="same")

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, inputs, training=None):
        return self.conv(inputs)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "taps": self.taps, "stride": self.stride}


def test_custom_kernel_generator(rng):
    generator = ConvKernelGenerator(taps=2 * 9, stride=2)
    layer = Involution(group_number=2, kernel_size=3, stride=2, kernel_generator=generator)
    x = rng.standard_normal((2, 8, 8, 4)).astype("float32")
    out = layer(x)
    assert layer.kernel_generator is generator
    kernel = keras.ops.convert_to_numpy(generator(x))
    expected = ref.involution_apply(x, kernel, 3, 2, 1, 2, "channels_last")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, rtol=1e-4, atol=1e-4)
    clone = Involution.from_config(layer.get_config())
    assert isinstance(clone.kernel_generator, ConvKernelGenerator)
    assert clone.kernel_generator.taps == 18


def test_custom_kernel_generator_with_wrong_output_is_rejected():
    layer = Involution(group_number=2, kernel_size=3, kernel_generator=ConvKernelGenerator(taps=9))
    with pytest.raises(ValueError, match=r"kernel_generator.*\(None, 8, 8, 18\).*Received: output shape \(None, 8, 8, 9\)"):
        layer.build((None, 8, 8, 4))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kernel_size=4), "positive odd integer. Received: kernel_size=4"),
        (dict(kernel_size=0), "positive odd integer. Received: kernel_size=0"),
        (dict(kernel_size=-3), "positive odd integer. Received: kernel_size=-3"),
        (dict(kernel_size=3.0), "positive odd integer. Received: kernel_size=3.0"),
        (dict(stride=0), "positive integer. Received: stride=0"),
        (dict(dilation=0), "positive integer. Received: dilation=0"),
        (dict(reduction_ratio=0), "positive integer. Received: reduction_ratio=0"),
        (dict(channel=4, reduction_ratio=8), r"at most `channel` \(4\). Received: reduction_ratio=8"),
        (dict(group_number=0), "positive integer. Received: group_number=0"),
        (dict(channel=0), "positive integer. Received: channel=0"),
        (dict(data_format="NHWC"), "Received: data_format='NHWC'"),
        (dict(implementation="cuda"), "Received: implementation='cuda'"),
        (dict(kernel_generator="conv"), "Received: kernel_generator='conv'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Involution(**kwargs)


def test_group_number_must_divide_channels():
    layer = Involution(group_number=4, kernel_size=3, reduction_ratio=1)
    with pytest.raises(ValueError, match=r"divide.*\(6, from input_shape=\(None, 8, 8, 6\)\). Received: group_number=4"):
        layer.build((None, 8, 8, 6))


def test_reduction_ratio_larger_than_input_channels():
    layer = Involution(kernel_size=3, reduction_ratio=8)
    with pytest.raises(ValueError, match=r"at most `channel` \(3\).*Received: reduction_ratio=8"):
        layer.build((None, 8, 8, 3))


@pytest.mark.parametrize("shape", [(None, 8, 3), (None, 8, 8, 8, 3)])
def test_wrong_input_rank(shape):
    with pytest.raises(ValueError, match=r"expects 4D inputs.*Received: input_shape="):
        Involution(kernel_size=3, reduction_ratio=1).build(shape)


def test_unknown_channels():
    with pytest.raises(ValueError, match=r"known number of channels"):
        Involution(kernel_size=3, reduction_ratio=1).build((None, 8, 8, None))


def test_default_data_format_follows_keras_config():
    previous = keras.config.image_data_format()
    try:
        keras.config.set_image_data_format("channels_first")
        assert Involution().data_format == "channels_first"
    finally:
        keras.config.set_image_data_format(previous)


def test_generator_is_a_registered_layer():
    generator = InvolutionKernelGenerator(kernel_size=3, stride=2, group_number=2, reduction_ratio=2,
                                          batch_norm_momentum=0.9)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(generator))
    assert clone.get_config() == generator.get_config()
    clone.build((None, 8, 8, 4))
    assert clone.norm.momentum == 0.9


def test_generator_span_initializers(rng):
    # A zero kernel leaves only the bias: the same static kernel at every
    # pixel, whatever the input.
    static = rng.normal(size=2 * 9).astype("float32")
    generator = InvolutionKernelGenerator(
        kernel_size=3, group_number=2, reduction_ratio=2, span_initializer="zeros",
        span_bias_initializer=keras.initializers.Constant(static),
    )
    kernels = keras.ops.convert_to_numpy(generator(rng.normal(size=(2, 5, 6, 4)).astype("float32")))
    np.testing.assert_array_equal(kernels, np.broadcast_to(static, (2, 5, 6, 18)))

    config = generator.get_config()
    assert config["span_initializer"]["class_name"] == "Zeros"
    clone = InvolutionKernelGenerator.from_config(config)
    assert clone.get_config() == config
    default = InvolutionKernelGenerator(kernel_size=3).get_config()
    assert default["span_initializer"]["class_name"] == "GlorotUniform"
    assert default["span_bias_initializer"]["class_name"] == "Zeros"


def test_generator_span_regularizer(rng):
    generator = InvolutionKernelGenerator(kernel_size=3, group_number=2, reduction_ratio=2,
                                          span_regularizer=keras.regularizers.L2(0.01))
    generator(rng.normal(size=(2, 5, 6, 4)).astype("float32"))
    # Only the last 1x1 convolution's kernel is penalised, not its bias (the
    # static kernel) nor the bottleneck.
    span_kernel = keras.ops.convert_to_numpy(generator.span.kernel).astype("float64")
    (penalty,) = generator.losses
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(penalty)), 0.01 * np.sum(span_kernel**2),
                               rtol=1e-5)

    config = generator.get_config()
    assert config["span_regularizer"]["config"]["l2"] == pytest.approx(0.01)
    clone = InvolutionKernelGenerator.from_config(config)
    assert clone.get_config() == config
    assert InvolutionKernelGenerator(kernel_size=3).get_config()["span_regularizer"] is None
    assert not InvolutionKernelGenerator(kernel_size=3, span_regularizer=None).losses


@pytest.mark.parametrize("normalization", ["layer", None])
def test_generator_without_moving_statistics(rng, normalization):
    generator = InvolutionKernelGenerator(kernel_size=3, stride=2, group_number=2, reduction_ratio=2,
                                          normalization=normalization)
    x = rng.normal(size=(3, 7, 6, 8))
    generator.build(x.shape)
    norm_weights = []
    if normalization == "layer":
        # Away from the initial (1, 0) so that a wrong axis or a missing
        # scale shows.
        generator.norm.gamma.assign(rng.uniform(0.5, 1.5, 4))
        generator.norm.beta.assign(rng.normal(size=4))
        norm_weights = [generator.norm.gamma, generator.norm.beta]
    else:
        assert generator.norm is None
    assert not generator.non_trainable_weights
    weights = [generator.reduce.kernel, generator.reduce.bias, *norm_weights,
               generator.span.kernel, generator.span.bias]
    expected = ref.kernel_generator(x, [keras.ops.convert_to_numpy(w) for w in weights], 2, 1e-3, normalization)
    # No moving statistics: training and inference agree, and each image's
    # kernels are independent of the rest of the batch.
    x = x.astype("float32")
    for kernels in (generator(x, training=True), generator(x, training=False)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(kernels), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(generator(x[:1], training=True)), expected[:1],
                               rtol=1e-4, atol=1e-4)

    config = generator.get_config()
    assert config["normalization"] == normalization
    assert InvolutionKernelGenerator.from_config(config).get_config() == config


def test_generator_bad_normalization():
    with pytest.raises(ValueError, match=r"`normalization`.*'batch', 'layer', None. Received: normalization='group'"):
        InvolutionKernelGenerator(kernel_size=3, normalization="group")


@pytest.mark.parametrize("momentum", [1.0, -0.1])
def test_generator_bad_momentum(momentum):
    with pytest.raises(ValueError, match=rf"in \[0, 1\). Received: batch_norm_momentum={momentum}"):
        InvolutionKernelGenerator(kernel_size=3, batch_norm_momentum=momentum)


def test_the_papers_generator_arguments():
    layer = Involution(channel=16, group_number=2, kernel_size=3, reduction_ratio=4, batch_norm_epsilon=1e-5,
                       batch_norm_momentum=0.9, reduction_bias=False)
    layer.build((None, 8, 8, 16))
    generator = layer.kernel_generator
    assert generator.reduce.bias is None and generator.norm.epsilon == 1e-5 and generator.norm.momentum == 0.9
    # The Keras example's 13,080-parameter model needs the bias: the default keeps it.
    default = Involution(channel=16, group_number=2, kernel_size=3, reduction_ratio=4)
    default.build((None, 8, 8, 16))
    assert default.kernel_generator.reduce.bias is not None and default.kernel_generator.norm.epsilon == 1e-3
    assert layer.count_params() == default.count_params() - 4
    config = layer.get_config()
    assert (config["batch_norm_epsilon"], config["batch_norm_momentum"], config["reduction_bias"]) == (1e-5, 0.9,
                                                                                                       False)
    restored = Involution.from_config(config)
    restored.build((None, 8, 8, 16))
    assert restored.kernel_generator.reduce.bias is None
    with pytest.raises(ValueError, match="batch_norm_epsilon"):
        Involution(batch_norm_epsilon=0)
    with pytest.raises(ValueError, match="reduction_bias"):
        Involution(reduction_bias="no")
