"""`involution evaluate` and `involution predict`: a preset on data or images.

Both load the preset with `involution.models.from_preset` (a shipped name or
a preset folder) and feed it images scaled as its training did (pixels /
255).
"""

import io
import os

import numpy as np

from involution.app.data import DataError


class InferenceError(ValueError):
    """A preset that does not fit the data or images it is asked about."""


def _load(preset):
    from involution import models

    try:
        return models.from_preset(preset), models.preset_metadata(preset)
    except ValueError as error:
        raise InferenceError(str(error)) from None


def _scale(images, metadata):
    if metadata.get("preprocessing", "pixels / 255") != "pixels / 255":
        raise InferenceError(
            f"The preset's preprocessing is {metadata['preprocessing']!r}; this command feeds pixels / 255."
        )
    return images.astype("float32") / 255.0


def _probabilities(model, images, batch_size):
    import keras

    logits = model.predict(images, batch_size=batch_size, verbose=0)
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1)), np.float64)


def evaluate(preset, data=None, limit=None, seed=0, batch_size=256, cache_dir=None, progress=True):
    """Test accuracy of `preset` on a CIFAR-10 source's test images.

    Args:
        preset: a shipped preset's name or a preset folder.
        data: the data source (see `involution.app.data.load_dataset`).
        limit: at most this many test images, drawn as `involution compare
            --limit` draws them (with `seed`).
        batch_size: images per inference batch (does not change the result).

    Returns:
        A dict: `accuracy`, `correct`, `images`, the metadata's
        `metadata_accuracy` and `metadata_images`, and `preset`.
    """
    from involution.app import data as data_module

    model, metadata = _load(preset)
    dataset = data_module.load_dataset(data, cache_dir=cache_dir, progress=progress).subset(limit, seed=seed)
    expected = metadata.get("class_names")
    if expected is not None and list(expected) != list(dataset.class_names):
        raise InferenceError(
            f"The preset's classes are {', '.join(expected)}; the data's are {', '.join(dataset.class_names)}."
        )
    shape = tuple(model.input_shape[1:])
    if tuple(dataset.x_test.shape[1:]) != shape:
        raise InferenceError(
            f"The preset takes images of shape {shape}; the data's are {tuple(dataset.x_test.shape[1:])}."
        )
    probabilities = _probabilities(model, _scale(dataset.x_test, metadata), batch_size)
    correct = int(np.sum(np.argmax(probabilities, axis=-1) == dataset.y_test))
    return {
        "preset": os.fspath(preset),
        "accuracy": correct / len(dataset.y_test),
        "correct": correct,
        "images": len(dataset.y_test),
        "metadata_accuracy": metadata.get("test_accuracy"),
        "metadata_images": metadata.get("test_images"),
        "data": dataset.source,
    }


def read_image(path, size):
    """An image file as a `size` (height, width) RGB uint8 array.

    Images of another size are resized (bilinear), as a photograph would
    have to be for a CIFAR-sized model.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            raw = f.read()
        with Image.open(io.BytesIO(raw)) as image:
            image = image.convert("RGB")
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image, np.uint8)
    except FileNotFoundError:
        raise DataError(f"The image {path} does not exist.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"Cannot decode image {path}: {error}") from None


def predict(preset, paths, top=3, batch_size=256):
    """The `top` classes of each image file in `paths`.

    Returns:
        A list with one dict per image: `image` (its path) and `top`, a list
        of `{"class", "index", "probability"}`, most probable first.
    """
    model, metadata = _load(preset)
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[-1] != 3:
        raise InferenceError(f"The preset takes inputs of shape {shape}; this command feeds RGB images (H, W, 3).")
    images = np.stack([read_image(path, shape[:2]) for path in paths])
    probabilities = _probabilities(model, _scale(images, metadata), batch_size)
    names = metadata.get("class_names") or [str(i) for i in range(probabilities.shape[-1])]
    top = min(top, probabilities.shape[-1])
    results = []
    for path, row in zip(paths, probabilities):
        order = np.argsort(-row, kind="stable")[:top]
        results.append({
            "image": os.fspath(path),
            "top": [{"class": names[i], "index": int(i), "probability": float(row[i])} for i in order],
        })
    return results
