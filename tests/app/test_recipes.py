"""Training recipes (`involution.app.recipes`): augmentation, schedule, loss."""

import keras
import numpy as np
import pytest

from involution.app import recipes
from involution.app.training import TrainConfig, compile_model

STRONG = recipes.RECIPES["strong"]
EXAMPLE = recipes.RECIPES["example"]


def _shifted(image, dy, dx, flip):
    """NumPy reference: `image` moved by (dy, dx) pixels with zero fill, then flipped."""
    height, width = image.shape[:2]
    out = np.zeros_like(image)
    ys, yd = (slice(0, height - dy), slice(dy, height)) if dy >= 0 else (slice(-dy, height), slice(0, height + dy))
    xs, xd = (slice(0, width - dx), slice(dx, width)) if dx >= 0 else (slice(-dx, width), slice(0, width + dx))
    out[yd, xd] = image[ys, xs]
    return out[:, ::-1] if flip else out


def test_augmentation_shifts_and_flips_each_image_by_whole_pixels(rng):
    images = rng.integers(1, 256, (24, 32, 32, 3), dtype=np.uint8)  # no zero: fill is visible
    out = STRONG.augment(images, seed=3, epoch=0, chunk=10)
    assert out.dtype == np.uint8 and out.shape == images.shape
    moves = []
    for image, augmented in zip(images, out):
        matches = [(dy, dx, flip) for dy in range(-4, 5) for dx in range(-4, 5) for flip in (False, True)
                   if np.array_equal(_shifted(image, dy, dx, flip), augmented)]
        assert matches, "not a whole-pixel shift with zero fill, optionally flipped"
        moves.append(matches[0])
    # Per image, not per batch: the draws differ within an epoch.
    assert len(set(moves)) > 5
    assert any(flip for _, _, flip in moves) and not all(flip for _, _, flip in moves)


def test_augmentation_is_drawn_from_seed_and_epoch(rng):
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    first = STRONG.augment(images, seed=3, epoch=0)
    np.testing.assert_array_equal(STRONG.augment(images, seed=3, epoch=0), first)
    assert not np.array_equal(STRONG.augment(images, seed=3, epoch=1), first)
    assert not np.array_equal(STRONG.augment(images, seed=4, epoch=0), first)
    assert EXAMPLE.augment(images, seed=3, epoch=0) is images


def test_strong_schedule_warms_up_then_decays_to_zero():
    steps = 10
    optimizer = STRONG.optimizer(2e-3, epochs=30, steps_per_epoch=steps)
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == 0.05
    schedule = optimizer._learning_rate
    value = lambda step: float(keras.ops.convert_to_numpy(schedule(step)))  # noqa: E731
    warmup = STRONG.warmup_epochs * steps
    np.testing.assert_allclose([value(0), value(warmup // 2), value(warmup)], [0, 1e-3, 2e-3], rtol=1e-5, atol=1e-9)
    middle = warmup + (30 * steps - warmup) // 2
    np.testing.assert_allclose(value(middle), 1e-3, rtol=1e-4)
    np.testing.assert_allclose(value(30 * steps), 0, atol=1e-9)
    constant = EXAMPLE.optimizer(1e-3, epochs=20, steps_per_epoch=steps)
    assert isinstance(constant, keras.optimizers.Adam) and not isinstance(constant, keras.optimizers.AdamW)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(constant.learning_rate)), 1e-3)


def test_label_smoothing_takes_one_hot_targets():
    labels = np.array([0, 2, 1])
    np.testing.assert_array_equal(STRONG.targets(labels, 3), np.eye(3)[labels])
    assert EXAMPLE.targets(labels, 3) is labels
    logits = np.array([[2.0, 0.0, -1.0]], "float32")
    loss = float(keras.ops.convert_to_numpy(STRONG.loss()(np.eye(3, dtype="float32")[[0]], logits)))
    smoothed = np.array([1 - 0.1 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    log_softmax = logits[0] - np.log(np.exp(logits[0].astype(np.float64)).sum())
    np.testing.assert_allclose(loss, -(smoothed * log_softmax).sum(), rtol=1e-5)


def test_compile_model_uses_the_recipe():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    compile_model(model, TrainConfig(recipe="strong", epochs=2), steps_per_epoch=5)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
    with pytest.raises(ValueError, match=r"Unknown recipe.*Received: recipe='weak'"):
        recipes.get_recipe("weak")


def test_descriptions_record_the_run():
    record = STRONG.describe(epochs=12, batch_size=64, learning_rate=1e-3)
    assert record["epochs"] == 12 and record["batch_size"] == 64 and record["learning_rate"] == 1e-3
    assert record["optimizer"] == "AdamW" and record["shift"] == 4 and record["flip"] is True
    assert "label smoothing 0.1" in STRONG.sentence(30, 128, 2e-3)
    assert EXAMPLE.sentence(20, 256, 1e-3).startswith("the Keras example's recipe: pixels scaled to [0, 1]")
