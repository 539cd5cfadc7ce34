"""The matched baselines: `invnet_depthwise`, `invnet_conv` and `resnet8`."""

import keras
import pytest

from involution import Involution, models
from involution.layer import InvolutionKernelGenerator


def _spatial_layers(model, kind):
    return {layer.name: layer for layer in model.layers if isinstance(layer, kind)}


def _involution_geometry(model):
    return {name.replace("_involution", ""): (layer.kernel_size, layer.stride, layer.dilation)
            for name, layer in _spatial_layers(model, Involution).items()}


def _no_involution_left(model):
    found = [layer.name for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, (Involution, InvolutionKernelGenerator))]
    assert not found, found


def test_depthwise_counterpart_replaces_each_involution_in_place():
    invnet = models.create_model("invnet")
    static = models.create_model("invnet_depthwise")
    _no_involution_left(static)
    depthwise = _spatial_layers(static, keras.layers.DepthwiseConv2D)
    geometry = {name.replace("_depthwise", ""): (layer.kernel_size[0], layer.strides[0], layer.dilation_rate[0])
                for name, layer in depthwise.items()}
    assert geometry == _involution_geometry(invnet)
    assert all(layer.kernel_size[0] == layer.kernel_size[1] for layer in depthwise.values())
    # Everything else is invnet's: the same layers in the same order, and
    # what the involutions held (their kernel generators) is all that goes.
    rename = lambda name: name.replace("_depthwise", "_involution")  # noqa: E731
    assert [rename(layer.name) for layer in static.layers] == [layer.name for layer in invnet.layers]
    generators = sum(layer.kernel_generator.count_params() for layer in _spatial_layers(invnet, Involution).values())
    depthwise_weights = sum(layer.count_params() for layer in depthwise.values())
    assert static.count_params() == invnet.count_params() - generators + depthwise_weights == 70_138


def test_conv_counterpart_matches_invnets_parameter_count():
    invnet = models.create_model("invnet")
    matched = models.create_model("invnet_conv")
    _no_involution_left(matched)
    assert abs(matched.count_params() - invnet.count_params()) <= 0.05 * invnet.count_params()
    convolutions = {name.replace("_conv", ""): (layer.kernel_size[0], layer.strides[0], layer.groups)
                    for name, layer in _spatial_layers(matched, keras.layers.Conv2D).items()}
    assert convolutions == {name: (size, stride, 1) for name, (size, stride, _) in _involution_geometry(invnet).items()}


def test_spatial_is_checked():
    from involution.models.invnet import involution_net

    with pytest.raises(ValueError, match=r"`spatial` must be .*Received: spatial='dense'"):
        involution_net(spatial="dense")


def test_resnet8_is_the_mlperf_tiny_reference():
    model = models.create_model("resnet8")
    assert model.count_params() == 78_666
    assert model.output.shape == (None, 10)
    convolutions = _spatial_layers(model, keras.layers.Conv2D)
    assert len([c for c in convolutions.values() if c.kernel_size == (3, 3)]) == 7
    assert {name: c.strides for name, c in convolutions.items() if c.kernel_size == (1, 1)} == {
        "stage2_shortcut": (2, 2), "stage3_shortcut": (2, 2)
    }
    assert all(c.kernel_regularizer is not None for c in convolutions.values())
    with pytest.raises(ValueError, match=r"three stages.*Received: widths=\(16, 32\)"):
        models.create_model("resnet8", widths=(16, 32))
