"""Trained models as presets, in keras-hub's layout.

A preset is a folder of three files:

- `config.json`: the model's architecture, `keras.saving.serialize_keras_object`;
- `model.weights.h5`: its weights (`model.save_weights`);
- `metadata.json`: how it was made and how good it is (test accuracy,
  recipe, seed, the data's checksum, parameter count, library versions and
  the command that trained it), and how it wants its images
  (`involution.models.preprocessing`).

A classifier split as keras-hub splits one (a backbone and a task,
`involution.models.RedNetImageClassifier`) keeps the backbone in those two
files and adds the task's:

- `task.json`: the classifier's configuration (the backbone's within it);
- `task.weights.h5`: the weights that are not the backbone's (the head),
  `keras.saving.save_weights(task, objects_to_skip=[backbone])`.

`from_preset(folder)` then builds the classifier and
`from_preset(folder, include_top=False)` the backbone alone.

The presets shipped in the package live in `involution/presets/<name>/`;
`list_presets()` names them and `from_preset(name)` loads one. Any folder in
this layout loads too (`involution compare` writes one per trained model).
Loading never runs code from the files: the architecture is deserialized in
Keras' safe mode, from registered classes only, and the weights are arrays.
"""

import contextlib
import json
import math
import os

from involution import untrusted

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
TASK_CONFIG_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
# A configuration or metadata file larger than this is not a preset's.
MAX_JSON_BYTES = untrusted.JSON_LIMIT


def _shipped_directory():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets")


def list_presets():
    """Names of the presets shipped in the package, sorted."""
    base = _shipped_directory()
    if not os.path.isdir(base):
        return []
    return sorted(
        name for name in os.listdir(base)
        if all(os.path.isfile(os.path.join(base, name, f)) for f in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE))
    )


def preset_directory(preset):
    """The folder of `preset`: a shipped preset's name or a preset folder.

    Raises:
        ValueError: `preset` is neither, or its folder lacks a file.
    """
    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(
            "`preset` must be the name of a shipped preset or a preset folder. "
            f"Received: preset={preset!r}"
        )
    preset = os.fspath(preset)
    if os.sep not in preset and "/" not in preset and preset in list_presets():
        return os.path.join(_shipped_directory(), preset)
    if not os.path.isdir(preset):
        raise ValueError(
            f"`preset` must be one of {list_presets()} or a folder holding {CONFIG_FILE}, {WEIGHTS_FILE} and "
            f"{METADATA_FILE}. Received: preset={preset!r}"
        )
    # lexists: a file that is there but not regular (a FIFO, a link to a
    # device) is refused by its reader, by name, not reported missing.
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE) if not os.path.lexists(os.path.join(preset, f))]
    if missing:
        raise ValueError(
            f"The preset folder {preset} lacks {', '.join(missing)}: a preset holds {CONFIG_FILE}, {WEIGHTS_FILE} "
            f"and {METADATA_FILE}. Received: preset={preset!r}"
        )
    if os.path.lexists(os.path.join(preset, TASK_CONFIG_FILE)) != os.path.lexists(os.path.join(preset, TASK_WEIGHTS_FILE)):
        raise ValueError(
            f"The preset folder {preset} must hold both {TASK_CONFIG_FILE} and {TASK_WEIGHTS_FILE} or neither. "
            f"Received: preset={preset!r}"
        )
    return preset


def _read_json(path):
    return untrusted.read_json(path, limit=MAX_JSON_BYTES)


def preset_metadata(preset):
    """The `metadata.json` of `preset` (a shipped name or a folder), as a dict."""
    return _read_json(os.path.join(preset_directory(preset), METADATA_FILE))


# The largest input a preset may declare: a side of 8192 and 2**26 values
# per example (a 4096x4096 RGB image). Larger ones make a Flatten and Dense
# allocate gigabytes when the model is built, or an image that large at
# prediction.
MAX_INPUT_SIDE = 8192
MAX_INPUT_VALUES = 2**26
_SHAPE_KEYS = ("batch_shape", "batch_input_shape", "input_shape")


def _check_shape(key, value, path):
    """One declared shape, or a list of them (a merge layer's inputs)."""
    if value and all(isinstance(v, list) for v in value):
        for shape in value:
            _check_shape(key, shape, path)
        return
    sizes = [v for v in value if v is not None]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INPUT_SIDE for v in sizes) \
            or math.prod(sizes) > MAX_INPUT_VALUES:
        raise untrusted.UntrustedFileError(
            path, f"`{key}` {value} is beyond the inputs a preset may declare (sides of at most "
            f"{MAX_INPUT_SIDE}, at most {MAX_INPUT_VALUES:,} values per example)")


def _check_input_shapes(config, path):
    """Refuses a configuration that declares an input beyond the bounds,
    before anything is built; walks it without recursion."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _SHAPE_KEYS and isinstance(value, list):
                    _check_shape(key, value, path)
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _deserialize(path):
    import keras

    config = _read_json(path)
    _check_input_shapes(config, path)
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as error:  # Keras raises TypeError, ValueError, KeyError, ... for a bad config.
        raise untrusted.UntrustedFileError(
            path, f"not a Keras model's configuration that loads safely ({untrusted.summary(error)})",
            detail=str(error)) from None
    if not isinstance(model, keras.Model):
        raise untrusted.UntrustedFileError(path, f"describes a {type(model).__name__}, not a keras.Model")
    return model


def _load(load, path):
    untrusted.regular_file(path, "weights file")
    try:
        load(path)
    except Exception as error:  # h5py's OSError, Keras' ValueError for mismatched weights.
        raise untrusted.UntrustedFileError(
            path, f"cannot load these weights into the preset's model ({untrusted.summary(error)})",
            detail=str(error)) from None


def validate(model, metadata, folder):
    """Checks a preset's metadata against its model when it loads.

    Raises:
        UntrustedFileError: naming `metadata.json` and the field: class
            names whose count is not the model's outputs, a preprocessing
            of an unknown kind or with a malformed field.
    """
    from involution.models import preprocessing

    path = os.path.join(folder, METADATA_FILE)
    try:
        preprocessing.check_preprocessing(metadata.get("preprocessing", preprocessing.PIXELS_OVER_255))
    except ValueError as error:
        raise untrusted.UntrustedFileError(path, f"field `preprocessing`: {error}") from None
    names = metadata.get("class_names")
    if names is None:
        return
    if names != preprocessing.IMAGENET and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise untrusted.UntrustedFileError(
            path, f"field `class_names` must be a list of strings or {preprocessing.IMAGENET!r}")
    count = len(preprocessing.imagenet_classes()) if names == preprocessing.IMAGENET else len(names)
    outputs = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    if outputs is not None and count != outputs:
        raise untrusted.UntrustedFileError(
            path, f"field `class_names` names {count} classes; the model has {outputs} outputs")


def from_preset(preset, load_weights=True, include_top=True):
    """Builds a model from a preset.

    Args:
        preset: the name of a shipped preset (`list_presets()`) or a preset
            folder (`config.json`, `model.weights.h5`, `metadata.json`, and
            `task.json` / `task.weights.h5` for a backbone-and-task preset).
        load_weights: load the trained weights (else the architecture is
            freshly initialised).
        include_top: False builds the backbone of a backbone-and-task
            preset alone (a feature extractor, e.g. for dense prediction).

    Returns:
        An uncompiled `keras.Model` whose outputs are logits (or the
        backbone's features); its input is images preprocessed as its
        metadata's `preprocessing` says (pixels / 255 for the shipped ones,
        `involution.models.preprocessing.preprocess_image`).

    Raises:
        ValueError: `preset` is not a preset, one of its files is not what
            the layout says (named in the message), or `include_top=False`
            for a preset without a separate backbone.

    Example:

    >>> from involution import models
    >>> model = models.from_preset("invnet_cifar10")  # doctest: +SKIP
    >>> logits = model.predict(images / 255.0)  # doctest: +SKIP
    """
    import keras

    import involution  # noqa: F401  (registers the package's serializable classes)
    from involution.models import classifier  # noqa: F401  (registers RedNetImageClassifier)

    folder = preset_directory(preset)
    metadata = _read_json(os.path.join(folder, METADATA_FILE))
    task = os.path.isfile(os.path.join(folder, TASK_CONFIG_FILE))
    if not include_top and not task:
        raise ValueError(f"The preset {preset} stores one model, not a backbone and a task: `include_top=False` "
                         "needs a preset with task.json. Received: include_top=False")
    if not include_top or not task:
        model = _deserialize(os.path.join(folder, CONFIG_FILE))
        if load_weights:
            _load(model.load_weights, os.path.join(folder, WEIGHTS_FILE))
        if include_top:
            validate(model, metadata, folder)
        return model
    model = _deserialize(os.path.join(folder, TASK_CONFIG_FILE))
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, keras.Model):
        raise ValueError(f"{os.path.join(folder, TASK_CONFIG_FILE)} describes a {type(model).__name__} without a "
                         "backbone.")
    if load_weights:
        _load(backbone.load_weights, os.path.join(folder, WEIGHTS_FILE))
        task_weights = os.path.join(folder, TASK_WEIGHTS_FILE)
        _load(lambda path: keras.saving.load_weights(model, path, objects_to_skip=[backbone]), task_weights)
    validate(model, metadata, folder)
    return model


CHECK_IMAGES = 4


def check_inputs(input_shape):
    """The fixed inputs of a preset's output check: uniform in [0, 1), seed 0."""
    import numpy as np

    return np.random.default_rng(0).uniform(0, 1, (CHECK_IMAGES, *input_shape)).astype("float32")


def output_check(model, input_shape=None):
    """`{"inputs": how they are drawn, "logits": the model's logits}` for
    `check_inputs(input_shape)` (the model's input shape by default), in
    inference mode: a record that a preset loaded on any backend can be
    compared with."""
    import keras

    input_shape = tuple(input_shape or model.input_shape[1:])
    logits = keras.ops.convert_to_numpy(model(check_inputs(input_shape), training=False))
    return {
        "inputs": f"numpy.random.default_rng(0).uniform(0, 1, ({CHECK_IMAGES}, *input_shape)).astype('float32')",
        "input_shape": list(input_shape),
        "logits": logits.astype(float).tolist(),
    }


def save_preset(model, folder, metadata):
    """Writes `model` and `metadata` as a preset folder.

    Each file is written under a temporary name and renamed into place, and
    `metadata.json` last, so that a folder with all its files is complete.

    Args:
        model: a `keras.Model` built from registered layers; a model with a
            `backbone` (`involution.models.RedNetImageClassifier`) is
            written as a backbone and a task (see the module docstring).
        folder: the preset folder (created if needed).
        metadata: a JSON-serializable dict (see the module docstring).
    """
    import keras

    os.makedirs(folder, exist_ok=True)
    backbone = getattr(model, "backbone", None)
    task = isinstance(backbone, keras.Model)
    stored = backbone if task else model
    _replace(os.path.join(folder, CONFIG_FILE),
             lambda tmp: _write_json(tmp, keras.saving.serialize_keras_object(stored)))
    _replace(os.path.join(folder, WEIGHTS_FILE), stored.save_weights)
    if task:
        _replace(os.path.join(folder, TASK_CONFIG_FILE),
                 lambda tmp: _write_json(tmp, keras.saving.serialize_keras_object(model)))
        _replace(os.path.join(folder, TASK_WEIGHTS_FILE),
                 lambda tmp: keras.saving.save_weights(model, tmp, objects_to_skip=[backbone]))
    else:
        for name in (TASK_CONFIG_FILE, TASK_WEIGHTS_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
    _replace(os.path.join(folder, METADATA_FILE), lambda tmp: _write_json(tmp, metadata))
    return folder


def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(value, indent=2, allow_nan=False) + "\n")


def _replace(path, write):
    """Calls `write(temporary path)`, then renames the result over `path`.

    The temporary name carries the writer's pid before the suffix that Keras
    insists on (`model.<pid>.tmp.weights.h5`), as `involution.app.files`
    names its temporaries, so that the app's clean-up recognises it.
    """
    suffix = ".weights.h5" if path.endswith(".weights.h5") else ""
    tmp = f"{path[: len(path) - len(suffix)]}.{os.getpid()}.tmp{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
