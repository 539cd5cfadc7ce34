"""The paper's RedNet against an independent PyTorch reference.

`reference_rednet.py` is the paper's model written for these tests (explicit
padding, batch norm epsilon 1e-5, involution by `nn.Unfold`), with random
weights and batch norm statistics. Its `state_dict`, named as the authors'
mmcls checkpoints (and as PaddleClas' ports), goes through the converter
into `create_model("rednet<depth>")`; the two must compute the same logits.
"""

import keras
import numpy as np
import pytest

from involution.models import create_model
from involution.models.convert_rednet import assign_reference_weights, canonical_arrays

torch = pytest.importorskip("torch")

from tests.models import reference_rednet  # noqa: E402

# float32 through 26 to 50 layers, the two sides summing in different
# orders: the logits (of order 1) agree to about 1e-5.
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def mmcls_checkpoint(model):
    return {("head." if name.startswith("fc.") else "backbone.") + name: tensor.numpy()
            for name, tensor in model.state_dict().items()}


def paddle_checkpoint(model):
    arrays = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        value = tensor.numpy()
        name = name.replace("running_mean", "_mean").replace("running_var", "_variance")
        arrays[name] = value.T if name == "fc.weight" else value
    return arrays


def reference_logits(reference, x_nchw):
    with torch.no_grad():
        return reference(torch.from_numpy(x_nchw)).numpy()


@pytest.mark.parametrize("depth,size,data_format", [(26, 224, "channels_last"), (26, 221, "channels_first"),
                                                     (50, 224, "channels_last")])
def test_converted_logits_equal_the_reference(rng, depth, size, data_format):
    reference = reference_rednet.randomized(depth)
    x = rng.uniform(-2, 2, (2, 3, size, size)).astype("float32")
    model = create_model(f"rednet{depth}", data_format=data_format,
                         input_shape=(size, size, 3) if data_format == "channels_last" else (3, size, size))
    assign_reference_weights(model, mmcls_checkpoint(reference))
    inputs = x if data_format == "channels_first" else np.transpose(x, (0, 2, 3, 1))
    logits = keras.ops.convert_to_numpy(model(inputs, training=False))
    np.testing.assert_allclose(logits, reference_logits(reference, x), **TOLERANCE)


def trainable_count(model):
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


@pytest.mark.backend_independent
def test_parameter_counts_are_the_papers():
    # PyTorch's parameters: the batch norms' moving statistics are buffers there.
    for depth in (26, 50):
        reference = reference_rednet.RedNet(depth)
        assert trainable_count(create_model(f"rednet{depth}")) == sum(p.numel() for p in reference.parameters())
    assert trainable_count(create_model("rednet26")) == 9_233_166
    assert trainable_count(create_model("rednet50")) == 15_540_806


@pytest.mark.backend_independent
def test_paddle_checkpoint_converts_to_the_same_model(rng):
    reference = reference_rednet.randomized(26, seed=1)
    from_mmcls = create_model("rednet26", input_shape=(64, 64, 3))
    from_paddle = create_model("rednet26", input_shape=(64, 64, 3))
    assign_reference_weights(from_mmcls, mmcls_checkpoint(reference))
    assign_reference_weights(from_paddle, paddle_checkpoint(reference))
    for a, b in zip(from_mmcls.get_weights(), from_paddle.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.backend_independent
def test_bad_checkpoints_name_the_tensor():
    reference = reference_rednet.randomized(26, seed=2)
    state = mmcls_checkpoint(reference)
    model = create_model("rednet26", input_shape=(64, 64, 3))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"RedNet-50.*the model is RedNet-26"):
        assign_reference_weights(model, mmcls_checkpoint(reference_rednet.RedNet(50)))
    renamed = dict(state)
    renamed["backbone.layer1.0.bn1.scale"] = renamed.pop("backbone.layer1.0.bn1.weight")
    with pytest.raises(ValueError, match=r"lacks 1 tensor\(s\).*'layer1.0.bn1.weight'"):
        assign_reference_weights(model, renamed)
    extra = dict(state, **{"backbone.layer1.0.extra.weight": np.zeros(3, "float32")})
    with pytest.raises(ValueError, match=r"does not, first 'layer1.0.extra.weight'"):
        assign_reference_weights(model, extra)
    wrong = dict(state, **{"backbone.stem.0.conv.weight": np.zeros((32, 3, 5, 5), "float32")})
    with pytest.raises(ValueError, match=r"'stem.0.conv.weight' has shape \(32, 3, 5, 5\)"):
        assign_reference_weights(model, wrong)
    # Nothing was assigned by the failed calls.
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="exact=True"):
        assign_reference_weights(create_model("rednet26", input_shape=(64, 64, 3), exact=False), state)


@pytest.mark.backend_independent
def test_canonical_names():
    arrays = canonical_arrays({"backbone.stem.0.bn.num_batches_tracked": np.zeros(()),
                               "head.fc.bias": np.zeros(3), "layer1.0.bn1._variance": np.ones(2)})
    assert sorted(arrays) == ["fc.bias", "layer1.0.bn1.running_var"]


def test_a_checkpoint_loads_as_a_backbone(rng):
    reference = reference_rednet.randomized(26, seed=4)
    model = create_model("rednet26", include_top=False, input_shape=(64, 64, 3))
    assign_reference_weights(model, mmcls_checkpoint(reference))  # the classifier's tensors are left out
    x = rng.uniform(-1, 1, (1, 3, 64, 64)).astype("float32")
    with torch.no_grad():
        features = reference.maxpool(reference.stem(torch.from_numpy(x)))
        expected = {}
        for stage in range(1, 5):
            features = getattr(reference, f"layer{stage}")(features)
            expected[f"stage{stage}"] = features.numpy().transpose(0, 2, 3, 1)
    pyramid = keras.Model(model.input, model.pyramid_outputs)
    outputs = pyramid(np.transpose(x, (0, 2, 3, 1)), training=False)
    assert [outputs[f"stage{s}"].shape[1] for s in range(1, 5)] == [16, 8, 4, 2]  # strides 4, 8, 16, 32
    for stage in range(1, 5):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs[f"stage{stage}"]), expected[f"stage{stage}"],
                                   **TOLERANCE)


def test_converted_preset_channels_first_computes_the_reference(tmp_path, rng):
    from involution.models import from_preset
    from involution.models.convert_rednet import convert_checkpoint

    reference = reference_rednet.randomized(26, seed=5)
    torch.save(mmcls_checkpoint_tensors(reference), tmp_path / "rednet26.pth")
    convert_checkpoint("rednet26", str(tmp_path / "rednet26.pth"), str(tmp_path / "preset"),
                       data_format="channels_first")
    model = from_preset(str(tmp_path / "preset"))
    assert model.backbone.data_format == "channels_first"
    x = rng.uniform(-1, 1, (1, 3, 93, 93)).astype("float32")  # an odd size: the preset takes any
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(logits, reference_logits(reference, x), **TOLERANCE)


def mmcls_checkpoint_tensors(model):
    return {("head." if name.startswith("fc.") else "backbone.") + name: tensor
            for name, tensor in model.state_dict().items()}
