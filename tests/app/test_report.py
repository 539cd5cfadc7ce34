"""Tests of the report: kernel maps, paths and merged seed statistics (`involution.app.report`)."""

import os

import keras
import numpy as np
import pytest

from involution.attention import LocalAttentionKernelGenerator
from involution.layer import Involution, InvolutionKernelGenerator
from involution.app.report import kernel_maps, merge_summaries, statistics_rows


def _model(involution, shape):
    inputs = keras.Input(shape)
    return keras.Model(inputs, involution(inputs))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_kernel_maps_sum_the_papers_kernels(rng, data_format):
    # A generator whose kernels do not depend on the input: each pixel's
    # kernel is the span convolution's bias, so the map is its sum.
    bias = rng.normal(size=2 * 9).astype("float32")
    generator = InvolutionKernelGenerator(
        3, group_number=2, reduction_ratio=2, data_format=data_format, span_initializer="zeros",
        span_bias_initializer=keras.initializers.Constant(bias),
    )
    layer = Involution(channel=4, group_number=2, kernel_size=3, reduction_ratio=2, kernel_generator=generator,
                       data_format=data_format, name="involve")
    shape = (6, 6, 4) if data_format == "channels_last" else (4, 6, 6)
    model = _model(layer, shape)
    images = rng.uniform(0, 1, (3,) + shape).astype("float32")
    [(label, maps)] = kernel_maps(model, images)
    assert label == "involve"
    assert maps.shape == (3, 6, 6)
    np.testing.assert_allclose(maps, np.full((3, 6, 6), bias.astype("float64").sum()), rtol=1e-5, atol=1e-5)


def test_kernel_maps_show_attention_kernels_centre_tap(rng):
    # Queries and keys at zero: the logits are the relative position terms.
    # Head 0 strongly prefers the centre tap, head 1 the top-left one; taps
    # outside the image are masked, where the top-left tap is, head 1's
    # weights are uniform over the valid taps.
    generator = LocalAttentionKernelGenerator(3, group_number=2, key_dim=2)
    layer = Involution(channel=4, group_number=2, kernel_size=3, kernel_generator=generator, name="attend")
    model = _model(layer, (5, 6, 4))
    generator.query.kernel.assign(np.zeros(generator.query.kernel.shape, "float32"))
    generator.key.kernel.assign(np.zeros(generator.key.kernel.shape, "float32"))
    relative = np.zeros((2, 9), "float32")
    relative[0, 4] = 30.0
    relative[1, 0] = 30.0
    generator.relative_position.assign(relative)
    [(label, maps)] = kernel_maps(model, rng.uniform(0, 1, (2, 5, 6, 4)).astype("float32"))
    assert label == "attend\n(centre tap)"

    expected = np.ones((5, 6))
    for i in range(5):
        for j in range(6):
            if i == 0 or j == 0:  # the top-left tap is outside the image
                rows = 2 if i in (0, 4) else 3
                cols = 2 if j in (0, 5) else 3
                expected[i, j] += 1.0 / (rows * cols)
    np.testing.assert_allclose(maps, np.broadcast_to(expected, (2, 5, 6)), atol=1e-5)
    # What the example's sum would show: the same value at every pixel.
    kernel = keras.ops.convert_to_numpy(generator(np.ones((1, 5, 6, 4), "float32")))
    np.testing.assert_allclose(kernel.sum(axis=-1), 2.0, rtol=1e-5)


@pytest.mark.backend_independent
def test_data_paths_are_shown_relative_where_short(tmp_path, monkeypatch):
    from involution.app.report import display_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    assert display_path(str(tmp_path / "data" / "cifar.tar.gz")) == os.path.join("data", "cifar.tar.gz")
    monkeypatch.chdir(tmp_path / "work")
    assert display_path(str(tmp_path / "data" / "cifar.tar.gz")) == os.path.join("..", "data", "cifar.tar.gz")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert display_path(str(tmp_path / "data.tar.gz")) == str(tmp_path / "data.tar.gz")
    assert display_path("keras.datasets.cifar10") == "keras.datasets.cifar10"


def _summary(models, settings=None):
    summary = {"models": [
        {"model": name, "parameters": parameters, "seeds": seeds, "final_accuracy": finals,
         "best_accuracy": [a + 0.01 for a in finals], "epoch_time": time, "finished": len(seeds)}
        for name, parameters, seeds, finals, time in models
    ]}
    if settings is not None:
        summary["settings"] = settings
    return summary


def test_merged_summaries_pool_the_seeds_of_each_model():
    settings = {"recipe": "example", "epochs": 20, "batch_size": 256, "learning_rate": 0.001, "limit": None,
                "backend": "tensorflow"}
    first = _summary([("conv", 100, [42, 43], [0.70, 0.72], 40.0), ("invnet", 50, [42, 43], [0.71, 0.75], 100.0)])
    second = _summary([("invnet", 50, [44], [0.73], 120.0), ("resnet8", 70, [44], [0.60], 80.0)], settings)
    conv, invnet, resnet8 = merge_summaries([first, second])
    assert [conv["model"], invnet["model"], resnet8["model"]] == ["conv", "invnet", "resnet8"]
    assert invnet["seeds"] == [42, 43, 44] and invnet["finished"] == 3
    np.testing.assert_allclose(invnet["final_accuracy_mean_std"], [0.73, np.std([0.71, 0.75, 0.73], ddof=1)])
    np.testing.assert_allclose(invnet["best_accuracy_mean_std"], [0.74, np.std([0.72, 0.76, 0.74], ddof=1)])
    assert invnet["epoch_time"] == 110.0
    assert conv["seeds"] == [42, 43] and resnet8["final_accuracy_mean_std"] == (0.6, None)
    [row] = statistics_rows([invnet])
    assert row[:5] == ["invnet", "50", "3", "73.00% ± 2.00", "74.00% ± 2.00"]
    assert row[5] == "42: 71.00%, 43: 75.00%, 44: 73.00%"


def test_summaries_of_different_experiments_are_not_merged():
    settings = {"recipe": "example", "epochs": 20, "batch_size": 256, "learning_rate": 0.001, "limit": None,
                "backend": "tensorflow"}
    a = _summary([("invnet", 50, [42], [0.7], 1.0)], settings)
    with pytest.raises(ValueError, match=r"seed 42 again in b"):
        merge_summaries([a, _summary([("invnet", 50, [42], [0.7], 1.0)])], sources=["a", "b"])
    with pytest.raises(ValueError, match=r"invnet to have one parameter count .* Received: 50 in a, 51 in b"):
        merge_summaries([a, _summary([("invnet", 51, [43], [0.7], 1.0)])], sources=["a", "b"])
    strong = dict(settings, recipe="strong", epochs=30)
    with pytest.raises(ValueError, match=r"b and a differ in epochs \(20, 30\), recipe \('example', 'strong'\)"):
        merge_summaries([a, _summary([("invnet", 50, [43], [0.7], 1.0)], strong)], sources=["a", "b"])
    with pytest.raises(ValueError, match=r"Expected a summary.json with a list of models. Received: b"):
        merge_summaries([a, {"models": "none"}], sources=["a", "b"])
