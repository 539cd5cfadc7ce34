"""`invnet` and `attention_net` (`involution.models.invnet`)."""

import keras
import numpy as np
import pytest

from involution import models


def test_invnet_parameter_count():
    # The count the README and the results state.
    assert models.create_model("invnet").count_params() == 81_616


def test_invnet_rejects_mismatched_stages():
    from involution.models.invnet import involution_net

    with pytest.raises(ValueError, match=r"one entry per stage.*widths=\(48, 96\), blocks=\(1,\)"):
        involution_net(widths=(48, 96), blocks=(1,))
    with pytest.raises(ValueError, match=r"one size or one per stage.*kernel_size=\(3, 5, 7\)"):
        involution_net(kernel_size=(3, 5, 7))
    with pytest.raises(ValueError, match=r"`stem_stride` must be 1 or 2. Received: stem_stride=4"):
        involution_net(stem_stride=4)


def test_invnet_kernel_size_per_stage():
    from involution.models.invnet import involution_net

    model = involution_net(kernel_size=(3, 5))
    sizes = {layer.name: layer.kernel_size for layer in model.layers if hasattr(layer, "group_number")}
    assert sizes["stem_involution"] == 3 and sizes["stage1_block2_involution"] == 3
    assert sizes["stage2_block1_involution"] == 5 and sizes["stage2_block2_involution"] == 5


def _kernels_per_pixel(model):
    return {layer.name: layer.group_number for layer in model.layers if hasattr(layer, "group_number")}


def test_invnet_kernels_per_pixel_follow_group_channels():
    from involution.models.invnet import involution_net

    assert _kernels_per_pixel(involution_net()) == {
        "stem_involution": 6,
        "stage1_block1_involution": 2, "stage1_block2_involution": 2,
        "stage2_block1_involution": 4, "stage2_block2_involution": 4,
    }
    finer = _kernels_per_pixel(involution_net(group_channels=16, stem_width=24, stem_groups=3))
    assert finer["stem_involution"] == 3
    assert finer["stage1_block1_involution"] == 4 and finer["stage2_block2_involution"] == 8


def test_attention_net_keeps_its_layout_when_invnet_defaults_change():
    model = models.create_model("attention_net")
    kernels = _kernels_per_pixel(model)
    assert kernels["stem_involution"] == 3
    assert kernels["stage1_block1_involution"] == 8 and kernels["stage2_block1_involution"] == 16
    assert model.get_layer("stem_pointwise").kernel.shape == (3, 24)
    assert model.count_params() == 96_133


def test_invnet_full_resolution_stem(rng):
    from involution.models.invnet import involution_net

    model = involution_net(stem_stride=1)
    assert model.get_layer("stem_involution").stride == 1
    assert model.get_layer("stem_pool").output.shape[1:3] == (16, 16)
    assert model.count_params() == involution_net().count_params()


def test_invnet_generator_width_and_regularizers(rng):
    from involution.models.invnet import involution_net

    model = involution_net(blocks=(2, 2), reduction_ratio=8, span_regularizer=keras.regularizers.L2(1e-3),
                           pointwise_regularizer="l2")
    generator = model.get_layer("stage2_block1_involution").kernel_generator
    assert generator.reduce.filters == 128 // 8
    assert generator.span_regularizer.l2 == pytest.approx(1e-3)
    # One penalty per generator (stem and four blocks) and per normalised
    # 1x1 convolution (two stage expansions, four block mixes).
    assert len(model.losses) == 5 + 6
    assert involution_net().losses == []

    clone = keras.Model.from_config(model.get_config())
    assert len(clone.losses) == 5 + 6
    clone_generator = clone.get_layer("stage2_block1_involution").kernel_generator
    assert clone_generator.get_config() == generator.get_config()


@pytest.mark.parametrize("normalization", ["layer", None])
def test_invnet_generator_normalization(normalization):
    from involution.models.invnet import involution_net

    model = involution_net(blocks=(2, 2), generator_normalization=normalization)
    generators = [layer.kernel_generator for layer in model.layers if hasattr(layer, "kernel_generator")]
    assert len(generators) == 5
    assert {generator.normalization for generator in generators} == {normalization}
    # The trunk keeps its batch normalizations: only the generators change.
    batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batch_norms) == 6
    assert model.count_params() < involution_net(blocks=(2, 2), generator_normalization="batch").count_params()


def test_invnet_layer_normalization_has_no_moving_statistics(rng):
    from involution.models.invnet import involution_net

    model = involution_net(normalization="layer", generator_normalization="layer")
    assert not model.non_trainable_weights
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    x = rng.uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    inference = keras.ops.convert_to_numpy(model(x, training=False))
    # Training and inference compute the same function, and an image's
    # logits do not depend on the rest of its batch.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=True)), inference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x[:1], training=False)), inference[:1],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"`normalization` must be 'batch' or 'layer'. Received: normalization='group'"):
        involution_net(normalization="group")


def test_invnet_activation(rng):
    from involution.models.invnet import involution_net

    model = involution_net(blocks=(2, 2), activation="silu")
    activations = [layer for layer in model.layers if isinstance(layer, keras.layers.Activation)]
    # After both stage expansions and each of the four residual additions.
    assert len(activations) == 6
    # The stem keeps ReLU, as its 1x1 layer's own activation.
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert model.get_layer("stem_pointwise").activation is keras.activations.relu
    assert model.count_params() == involution_net(blocks=(2, 2)).count_params()
    x = rng.uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    outputs = keras.ops.convert_to_numpy(model(x))
    assert outputs.shape == (2, 10) and np.isfinite(outputs).all()
    # Negative pre-activations pass through SiLU, not ReLU: the block outputs
    # have negative values.
    probe = keras.Model(model.inputs, model.get_layer("stage1_block1_out_silu").output)
    assert keras.ops.convert_to_numpy(probe(x)).min() < 0
    with pytest.raises(ValueError, match=r"`activation` must be a Keras activation.*Received: activation='swishy'"):
        involution_net(activation="swishy")


def test_invnet_generators_start_static():
    from involution.models.invnet import involution_net

    def span(model, name):
        generator = model.get_layer(name).kernel_generator
        return [keras.ops.convert_to_numpy(w) for w in (generator.span.kernel, generator.span.bias)]

    kernel, bias = span(involution_net(), "stage2_block1_involution")
    paper_kernel, paper_bias = span(involution_net(dynamic_init_scale=None), "stage2_block1_involution")
    assert not paper_bias.any()
    # 7x7 kernels, 4 per pixel (128 channels, 32 per kernel): a static
    # kernel of standard deviation 1/7 per tap, the input-dependent weights
    # at a tenth of Glorot's amplitude.
    assert bias.size == 49 * 4 and 0.1 < bias.std() < 0.19
    assert 0.07 < kernel.std() / paper_kernel.std() < 0.13


def test_invnet_dropout_acts_only_in_training(rng):
    from involution.models.invnet import involution_net

    model = involution_net(dropout=0.5, block_dropout=0.2)
    assert model.get_layer("head_dropout").rate == 0.5
    assert model.get_layer("stage2_block2_dropout").rate == 0.2
    x = rng.uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    inference = [keras.ops.convert_to_numpy(model(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    # Batch statistics make training-mode calls differ from inference anyway;
    # two training-mode calls on the same batch differ only by their masks.
    training = [keras.ops.convert_to_numpy(model(x, training=True)) for _ in range(2)]
    assert not np.allclose(training[0], training[1])
    assert not any("dropout" in layer.name for layer in involution_net().layers)


def test_invnet_without_hidden_layer_takes_any_size(rng):
    from involution.models.invnet import involution_net

    model = involution_net(input_shape=(None, None, 3), hidden_units=None)
    x = rng.uniform(0, 1, (1, 24, 40, 3)).astype("float32")
    assert tuple(model(x).shape) == (1, 10)
