"""The image preprocessing a preset records, and ImageNet's class names.

A preset's `metadata.json` says how its model wants images under
`"preprocessing"`:

- `"pixels / 255"` (the CIFAR presets): the image, resized to the model's
  input size, scaled to [0, 1];
- a dict (the converted ImageNet RedNets, `IMAGENET_PREPROCESSING`): resize
  the short side to `resize_short_side` (bilinear), crop the centre
  `center_crop` square, then `(pixel - mean) / std` per RGB channel on
  0-255 pixels.

`preprocess_image` applies either to one decoded RGB image, so that
`involution predict` and `involution evaluate` feed a preset what it was
trained on. Class names: a list in the metadata, or `"imagenet"` for the
1,000 ImageNet-1k classes shipped with the package (`imagenet_classes`).
"""

import functools
import json
import os

import numpy as np

PIXELS_OVER_255 = "pixels / 255"

# The reference configuration's ImageNet preprocessing (the authors' mmcls
# config: Resize short side 256, CenterCrop 224, Normalize), on 0-255 RGB.
IMAGENET_PREPROCESSING = {
    "resize_short_side": 256,
    "center_crop": 224,
    "channel_order": "RGB",
    "mean": [123.675, 116.28, 103.53],
    "std": [58.395, 57.12, 57.375],
    "scale": "0-255",
}

IMAGENET = "imagenet"


@functools.lru_cache(maxsize=1)
def imagenet_classes():
    """The 1,000 ImageNet-1k classes in the order of the models' logits.

    Returns:
        A tuple of `(wnid, name)` pairs: the WordNet id that names the
        class's folder in ImageNet's files (`"n01440764"`) and a short name
        (`"tench"`), index 0 to 999.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.json")
    with open(path, encoding="utf-8") as f:
        return tuple((wnid, name) for wnid, name in json.load(f))


def class_names(metadata, num_classes=None):
    """A preset's class names: its metadata's list, ImageNet's for
    `"imagenet"`, else the indices as strings."""
    names = metadata.get("class_names")
    if names == IMAGENET:
        return [name for _, name in imagenet_classes()]
    if isinstance(names, list):
        return [str(name) for name in names]
    return [str(i) for i in range(num_classes or 0)]


def class_ids(metadata):
    """The identifiers a dataset's folders or labels file may name a class by:
    WordNet ids for ImageNet presets, the class names otherwise."""
    if metadata.get("class_names") == IMAGENET:
        return [wnid for wnid, _ in imagenet_classes()]
    return class_names(metadata)


def check_preprocessing(spec):
    """`spec` validated: `"pixels / 255"` or a complete crop-and-normalise dict.

    Raises:
        ValueError: naming the field that is missing or malformed.
    """
    if spec == PIXELS_OVER_255:
        return spec
    if not isinstance(spec, dict):
        raise ValueError(f"A preset's `preprocessing` must be {PIXELS_OVER_255!r} or a dict like "
                         f"{IMAGENET_PREPROCESSING}. Received: preprocessing={spec!r}")
    for key in ("resize_short_side", "center_crop"):
        value = spec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"The preprocessing's `{key}` must be a positive integer. Received: {key}={value!r}")
    if spec["center_crop"] > spec["resize_short_side"]:
        raise ValueError("The preprocessing's `center_crop` must be at most its `resize_short_side`. Received: "
                         f"center_crop={spec['center_crop']}, resize_short_side={spec['resize_short_side']}")
    for key in ("mean", "std"):
        value = spec.get(key)
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in value)):
            raise ValueError(f"The preprocessing's `{key}` must be 3 numbers (R, G, B). Received: {key}={value!r}")
    if not all(v > 0 for v in spec["std"]):
        raise ValueError(f"The preprocessing's `std` must be positive. Received: std={spec['std']!r}")
    if spec.get("channel_order", "RGB") != "RGB" or spec.get("scale", "0-255") != "0-255":
        raise ValueError("The preprocessing must work on RGB pixels of 0-255. Received: "
                         f"channel_order={spec.get('channel_order')!r}, scale={spec.get('scale')!r}")
    return spec


def input_size(spec, model_input_shape):
    """The (height, width) that `spec` makes images: the crop, or the
    model's input size for `"pixels / 255"`."""
    if spec == PIXELS_OVER_255:
        return tuple(model_input_shape)
    return (spec["center_crop"], spec["center_crop"])


def resized_short_side(height, width, size):
    """The (height, width) of an image whose short side is resized to `size`,
    the long side scaled by the same factor and truncated, as mmcv does."""
    if height <= width:
        return size, max(int(size * width / height), size)
    return max(int(size * height / width), size), size


def center_crop_box(height, width, size):
    """`(top, left)` of the centred `size` square: offsets rounded half to
    even, as the reference's `CenterCrop` computes them."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def preprocess_image(image, spec, size=None):
    """One decoded image as a preset's model takes it.

    Args:
        image: a `(height, width, 3)` uint8 RGB array.
        spec: the preset's `preprocessing` (see the module docstring).
        size: the model's `(height, width)`, for `"pixels / 255"`.

    Returns:
        A float32 `(height, width, 3)` array (channels last).
    """
    from PIL import Image

    spec = check_preprocessing(spec)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be a (height, width, 3) uint8 RGB array. Received: shape={image.shape}, "
                         f"dtype={image.dtype}")
    if spec == PIXELS_OVER_255:
        if size is not None and tuple(image.shape[:2]) != tuple(size):
            image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))
        return image.astype("float32") / 255.0
    height, width = resized_short_side(*image.shape[:2], spec["resize_short_side"])
    if (height, width) != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    crop = spec["center_crop"]
    top, left = center_crop_box(height, width, crop)
    image = image[top:top + crop, left:left + crop].astype("float32")
    return (image - np.asarray(spec["mean"], "float32")) / np.asarray(spec["std"], "float32")
