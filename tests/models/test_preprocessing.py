"""The preprocessing a preset records, against crops and sums computed by hand."""

import numpy as np
import pytest

from involution.models import preprocessing

# NumPy-only: the same under every backend.
pytestmark = pytest.mark.backend_independent

SMALL = dict(preprocessing.IMAGENET_PREPROCESSING, resize_short_side=6, center_crop=4)


def test_resize_sizes_follow_the_short_side():
    assert preprocessing.resized_short_side(300, 400, 256) == (256, 341)  # 256 * 400 / 300 = 341.33
    assert preprocessing.resized_short_side(500, 375, 256) == (341, 256)
    assert preprocessing.resized_short_side(256, 256, 256) == (256, 256)
    assert preprocessing.resized_short_side(100, 1000, 10) == (10, 100)


def test_center_crop_by_hand():
    # An image whose short side is already 6: no resize, only the crop.
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    out = preprocessing.preprocess_image(image, SMALL)
    # Rows (6 - 4) / 2 = 1 to 4, columns (8 - 4) / 2 = 2 to 5.
    crop = image[1:5, 2:6].astype(np.float64)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(out, (crop - mean) / std, rtol=1e-6, atol=1e-6)  # float32 rounding
    # One pixel written out: row 1, column 2, red = (1 * 8 + 2) * 3 = 30.
    assert out[0, 0, 0] == pytest.approx((30 - 123.675) / 58.395, rel=1e-6)
    assert out.shape == (4, 4, 3) and out.dtype == np.float32


def test_center_crop_offsets_round_half_to_even():
    # (7 - 4) / 2 = 1.5 -> 2 and (9 - 4) / 2 = 2.5 -> 2, as Python's round (the reference's CenterCrop).
    assert preprocessing.center_crop_box(7, 9, 4) == (2, 2)
    image = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    out = preprocessing.preprocess_image(image, SMALL)
    mean, std = np.array(SMALL["mean"]), np.array(SMALL["std"])
    np.testing.assert_allclose(out, (image[1:5, 2:6] - mean) / std, rtol=1e-6, atol=1e-6)


def test_imagenet_crop_of_a_uniform_photograph():
    # Resizing keeps a uniform image uniform: every output pixel is (value - mean) / std.
    image = np.empty((300, 400, 3), np.uint8)
    image[...] = (10, 200, 255)
    out = preprocessing.preprocess_image(image, preprocessing.IMAGENET_PREPROCESSING)
    assert out.shape == (224, 224, 3)
    expected = [(10 - 123.675) / 58.395, (200 - 116.28) / 57.12, (255 - 103.53) / 57.375]
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-5)


def test_pixels_over_255_resizes_to_the_model():
    image = np.full((8, 8, 3), 51, np.uint8)
    out = preprocessing.preprocess_image(image, "pixels / 255", size=(4, 4))
    np.testing.assert_allclose(out, np.full((4, 4, 3), 0.2), rtol=1e-6)


@pytest.mark.parametrize("change,match", [
    ({"center_crop": 300}, "at most its `resize_short_side`"),
    ({"mean": [1, 2]}, "`mean` must be 3 numbers"),
    ({"std": [1, 0, 1]}, "`std` must be positive"),
    ({"resize_short_side": "256"}, "`resize_short_side` must be a positive integer"),
    ({"channel_order": "BGR"}, "RGB pixels of 0-255"),
])
def test_malformed_preprocessing_is_named(change, match):
    with pytest.raises(ValueError, match=match):
        preprocessing.check_preprocessing(dict(preprocessing.IMAGENET_PREPROCESSING, **change))
    with pytest.raises(ValueError, match="must be 'pixels / 255' or a dict"):
        preprocessing.check_preprocessing("pixels / 127")


def test_bad_images_are_named():
    with pytest.raises(ValueError, match=r"\(height, width, 3\) uint8 RGB array. Received: shape=\(4, 4\)"):
        preprocessing.preprocess_image(np.zeros((4, 4), np.uint8), SMALL)


def test_imagenet_classes_are_the_thousand_in_wordnet_order():
    classes = preprocessing.imagenet_classes()
    wnids = [wnid for wnid, _ in classes]
    assert len(classes) == 1000 and len(set(wnids)) == 1000
    # ImageNet-1k's class index is the WordNet ids sorted.
    assert wnids == sorted(wnids)
    assert classes[0] == ("n01440764", "tench") and classes[999] == ("n15075141", "toilet_tissue")
    assert preprocessing.class_names({"class_names": "imagenet"})[1] == "goldfish"
    assert preprocessing.class_ids({"class_names": "imagenet"})[1] == "n01443537"
