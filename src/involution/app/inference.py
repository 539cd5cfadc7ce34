"""`involution evaluate` and `involution predict`: a preset on data or images.

Both load the preset with `involution.models.from_preset` (a shipped name or
a preset folder) and feed it images preprocessed as its metadata records
(`involution.models.preprocessing`): pixels / 255 at the model's size for
the CIFAR presets, ImageNet's resize, centre crop and normalisation for the
converted RedNets. `evaluate` reads CIFAR-10 sources for the former and an
image folder (`<folder>/<wnid>/*.JPEG`, or a folder and a labels file) for
the latter.
"""

import os

import numpy as np

from involution import untrusted
from involution.app.data import DataError
from involution.models import preprocessing

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


class InferenceError(ValueError):
    """A preset that does not fit the data or images it is asked about."""


def _load(preset):
    from involution import models

    try:
        # from_preset validates the metadata against the model.
        model = models.from_preset(preset)
        metadata = models.preset_metadata(preset)
    except untrusted.UntrustedFileError:
        raise
    except ValueError as error:
        raise InferenceError(str(error)) from None
    return model, metadata, metadata.get("preprocessing", preprocessing.PIXELS_OVER_255)


def _channels_first(model):
    """Whether `model` takes channels-first images: its (or its backbone's)
    `data_format`, else a 3 first and not last in its input shape."""
    data_format = getattr(model, "data_format", None) or getattr(getattr(model, "backbone", None), "data_format", None)
    if data_format is not None:
        return data_format == "channels_first"
    shape = tuple(model.input_shape[1:])
    return len(shape) == 3 and shape[0] == 3 and shape[-1] != 3


def _image_size(model, spec):
    """The (height, width) images are fed at; checks that the model takes RGB images."""
    shape = tuple(model.input_shape[1:])
    channels_first = _channels_first(model)
    if len(shape) != 3 or shape[0 if channels_first else -1] != 3:
        raise InferenceError(f"The preset takes inputs of shape {shape}; this command feeds RGB images.")
    spatial = shape[1:] if channels_first else shape[:2]
    if spec == preprocessing.PIXELS_OVER_255 and None in spatial:
        raise InferenceError(f"The preset takes images of any size {shape} and its preprocessing is pixels / 255: "
                             "its metadata must record a crop to feed it photographs.")
    size = preprocessing.input_size(spec, spatial)
    if None not in spatial and tuple(spatial) != tuple(size):
        raise InferenceError(f"The preset's preprocessing makes {size[0]}x{size[1]} images; its model takes {shape}.")
    return size


def _layout(model, images):
    """Channels-last `images` in the model's layout."""
    return np.transpose(images, (0, 3, 1, 2)) if _channels_first(model) else images


def _probabilities(model, images, batch_size):
    import keras

    logits = model.predict(_layout(model, images), batch_size=batch_size, verbose=0)
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1)), np.float64)


def evaluate(preset, data=None, limit=None, seed=0, batch_size=256, cache_dir=None, progress=True, labels=None):
    """Test accuracy of `preset` on a CIFAR-10 source or an image folder.

    Args:
        preset: a shipped preset's name or a preset folder.
        data: a CIFAR-10 source (see `involution.app.data.load_dataset`)
            for a preset fed pixels / 255; an image folder for one with a
            crop-and-normalise preprocessing (the converted RedNets): one
            subfolder of images per class, named by the class's id (the
            WordNet id for ImageNet, as in ImageNet's `val/<wnid>/*.JPEG`),
            or a flat folder with `labels`.
        limit: at most this many test images, drawn at random with `seed`
            (as `involution compare --limit` draws them, for CIFAR-10).
        batch_size: images per inference batch (does not change the result).
        progress: show a progress bar (on a terminal).
        labels: for a flat image folder, a text file of lines
            `<image file> <class>`, the class by id (`n01440764`) or index
            (0-999), the file's name with or without its extension.

    Returns:
        A dict: `accuracy` (top-1), `top5_accuracy`, `correct`, `images`,
        the metadata's `metadata_accuracy` and `metadata_images`, `data`
        and `preset`.
    """
    from involution.app import data as data_module

    model, metadata, spec = _load(preset)
    if spec != preprocessing.PIXELS_OVER_255:
        return _evaluate_folder(preset, model, metadata, spec, data, labels, limit, seed, batch_size, progress)
    if labels is not None:
        raise InferenceError("`labels` goes with an image folder; this preset reads CIFAR-10 sources. "
                             f"Received: labels={labels!r}")
    dataset = data_module.load_dataset(data, cache_dir=cache_dir, progress=progress).subset(limit, seed=seed)
    expected = metadata.get("class_names")
    if expected is not None and list(expected) != list(dataset.class_names):
        raise InferenceError(
            f"The preset's classes are {', '.join(expected)}; the data's are {', '.join(dataset.class_names)}."
        )
    size = _image_size(model, spec)
    if tuple(dataset.x_test.shape[1:]) != (*size, 3):
        raise InferenceError(
            f"The preset takes {size[0]}x{size[1]} RGB images; the data's are {tuple(dataset.x_test.shape[1:])}."
        )
    probabilities = _probabilities(model, dataset.x_test.astype("float32") / 255.0, batch_size)
    return _result(preset, metadata, probabilities, dataset.y_test, dataset.source)


def _result(preset, metadata, probabilities, truth, source):
    truth = np.asarray(truth)
    correct = int(np.sum(np.argmax(probabilities, axis=-1) == truth))
    top5 = np.argsort(-probabilities, axis=-1, kind="stable")[:, :5]
    return {
        "preset": os.fspath(preset),
        "accuracy": correct / len(truth),
        "top5_accuracy": float(np.mean(np.any(top5 == truth[:, None], axis=-1))),
        "correct": correct,
        "images": len(truth),
        "metadata_accuracy": metadata.get("test_accuracy"),
        "metadata_images": metadata.get("test_images"),
        "data": source,
    }


def folder_samples(folder, ids, labels=None):
    """`[(image path, class index)]` of an evaluation folder, sorted by path.

    Args:
        folder: one subfolder per class named by its id in `ids`
            (`<folder>/<id>/<image>`), or, with `labels`, a flat folder.
        ids: the class ids, in the order of the model's outputs.
        labels: a labels file (see `evaluate`).

    Raises:
        DataError: naming the folder, file or line that does not fit.
    """
    if folder is None:
        raise DataError("This preset evaluates on an image folder: pass --data FOLDER "
                        "(one subfolder per class, e.g. ImageNet's val/<wnid>/*.JPEG, or a folder and --labels).")
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"The data folder {folder} does not exist or is not a folder.")
    index = {class_id: i for i, class_id in enumerate(ids)}
    if labels is None:
        samples = []
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if not os.path.isdir(path):
                continue
            if entry not in index:
                raise DataError(f"The data folder's subfolder {entry!r} is not a class id of the preset "
                                f"(expected e.g. {ids[0]!r}).")
            samples += [(os.path.join(path, name), index[entry]) for name in sorted(os.listdir(path))
                        if name.lower().endswith(IMAGE_SUFFIXES)]
        if not samples:
            raise DataError(f"The data folder {folder} holds no images in class subfolders (<id>/<image>); "
                            "a flat folder needs --labels.")
        return samples
    files = {}
    for name in sorted(os.listdir(folder)):
        if name.lower().endswith(IMAGE_SUFFIXES):
            files[name] = files.setdefault(os.path.splitext(name)[0], name)
    raw = untrusted.read_bytes(labels, untrusted.TEXT_LIMIT, "labels file")
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise untrusted.UntrustedFileError(labels, f"the labels file is not UTF-8 text (byte {error.start})") from None
    samples = []
    for number, line in enumerate(lines, start=1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2:
            raise DataError(f"{labels}, line {number}: expected '<image file> <class>'. Received: {line!r}")
        name, label = fields[0], fields[1]
        if label in index:
            target = index[label]
        elif label.isdigit() and int(label) < len(ids):
            target = int(label)
        else:
            raise DataError(f"{labels}, line {number}: {label!r} is neither a class id of the preset "
                            f"(e.g. {ids[0]!r}) nor an index below {len(ids)}.")
        if name not in files:
            raise DataError(f"{labels}, line {number}: no image {name!r} in {folder}.")
        samples.append((os.path.join(folder, files[name]), target))
    if not samples:
        raise DataError(f"The labels file {labels} names no images.")
    return sorted(samples)


def _evaluate_folder(preset, model, metadata, spec, data, labels, limit, seed, batch_size, progress):
    from tqdm.auto import tqdm

    size = _image_size(model, spec)
    samples = folder_samples(data, preprocessing.class_ids(metadata), labels)
    if limit is not None and limit < len(samples):
        chosen = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
        samples = [samples[i] for i in chosen]
    probabilities = []
    # On a terminal only (None: tqdm asks), where a bar can redraw itself.
    with tqdm(total=len(samples), desc="Evaluating", unit="img", disable=None if progress else True) as bar:
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            images = np.stack([preprocessing.preprocess_image(untrusted.read_image(path), spec, size) for path, _ in batch])
            probabilities.append(_probabilities(model, images, batch_size))
            bar.update(len(batch))
    return _result(preset, metadata, np.concatenate(probabilities), [target for _, target in samples],
                   os.path.abspath(data))


def predict(preset, paths, top=3, batch_size=256):
    """The `top` classes of each image file in `paths`.

    Returns:
        A list with one dict per image: `image` (its path) and `top`, a list
        of `{"class", "index", "probability"}`, most probable first.
    """
    model, metadata, spec = _load(preset)
    size = _image_size(model, spec)
    images = np.stack([preprocessing.preprocess_image(untrusted.read_image(path), spec, size) for path in paths])
    probabilities = _probabilities(model, images, batch_size)
    names = preprocessing.class_names(metadata, probabilities.shape[-1])
    top = min(top, probabilities.shape[-1])
    results = []
    for path, row in zip(paths, probabilities):
        order = np.argsort(-row, kind="stable")[:top]
        results.append({
            "image": os.fspath(path),
            "top": [{"class": names[i], "index": int(i), "probability": float(row[i])} for i in order],
        })
    return results
