"""Weights of the paper's RedNet checkpoints, for `involution.models.RedNet`.

The authors' checkpoints (mmcls, PyTorch `state_dict`s: the backbone under
`backbone.*`, the classifier under `head.fc.*`) and PaddleClas' ports
(`.pdparams`: the same tree without the prefixes, batch norm statistics as
`_mean` / `_variance`, the classifier's weight stored `(in, out)`) name the
same tensors. `canonical_arrays` maps either onto one naming (mmcls'
without its prefixes); `assign_reference_weights` copies those arrays into
a `RedNet` built with `exact=True` (or a `RedNetImageClassifier` on one),
checking that every expected tensor is there, with its shape, and that
nothing is left over.

Reading the files themselves is `involution.models.checkpoints`' job.
"""

import re

import numpy as np

# Keras batch norm weights, in order, and the checkpoint names they come from.
_BATCH_NORM = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
               ("running_var", "moving_variance"))


def canonical_arrays(arrays):
    """`{name: array}` of a checkpoint in mmcls' naming without its prefixes.

    Args:
        arrays: `{name: numpy array}` as read from an mmcls `.pth`
            (`backbone.*`, `head.fc.*`) or a PaddleClas `.pdparams`.

    Returns:
        A new dict: `stem.0.conv.weight`, ..., `layer1.0.bn1.running_var`,
        ..., `fc.weight` `(out, in)`, `fc.bias`; batch norm step counters
        (`num_batches_tracked`) dropped.
    """
    paddle = any(name.endswith(("._mean", "._variance")) for name in arrays)
    result = {}
    for name, value in arrays.items():
        if name.endswith("num_batches_tracked"):
            continue
        canonical = name
        for prefix, replacement in (("backbone.", ""), ("head.fc.", "fc."), ("module.", "")):
            if canonical.startswith(prefix):
                canonical = replacement + canonical[len(prefix):]
        canonical = re.sub(r"\._mean$", ".running_mean", canonical)
        canonical = re.sub(r"\._variance$", ".running_var", canonical)
        value = np.asarray(value)
        if paddle and canonical == "fc.weight":
            value = value.T  # Paddle's Linear stores (in, out)
        if canonical in result:
            raise ValueError(f"The checkpoint has two tensors for {canonical!r} (one of them {name!r}).")
        result[canonical] = value
    return result


def depth_of(arrays):
    """The RedNet depth whose block counts the canonical `arrays` have, or None."""
    from involution.models.rednet import DEPTHS

    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for name in arrays if (m := re.match(rf"layer{stage}\.(\d+)\.", name))}
        blocks.append(max(indices) + 1 if indices else 0)
    return next((depth for depth, counts in DEPTHS.items() if tuple(blocks) == counts), None), tuple(blocks)


def _conv(layer, prefix, bias=False):
    names = [(f"{prefix}.weight", layer.kernel, _oihw_to_hwio)]
    if bias:
        names.append((f"{prefix}.bias", layer.bias, None))
    return names


def _oihw_to_hwio(value):
    return np.transpose(value, (2, 3, 1, 0))


def _batch_norm(layer, prefix):
    return [(f"{prefix}.{source}", getattr(layer, target), None) for source, target in _BATCH_NORM]


def _involution(layer, prefix):
    generator = layer.kernel_generator
    return (_conv(generator.reduce, f"{prefix}.conv1.conv") + _batch_norm(generator.norm, f"{prefix}.conv1.bn")
            + _conv(generator.span, f"{prefix}.conv2.conv", bias=True))


def _rednet_and_head(model):
    """The RedNet of `model` (itself or a classifier's backbone) and the
    logits layer (None for a headless RedNet)."""
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        return backbone, model.get_layer("predictions")
    return model, model.get_layer("logits") if getattr(model, "include_top", False) else None


def expected_weights(model):
    """`[(checkpoint name, Keras variable, transform)]` for every tensor of
    the paper's checkpoint, in `model`'s layers."""
    from involution.models.rednet import DEPTHS

    model, head = _rednet_and_head(model)
    get = model.get_layer
    expected = (_conv(get("stem_1_conv"), "stem.0.conv") + _batch_norm(get("stem_1_bn"), "stem.0.bn")
                + _involution(get("stem_2_involution"), "stem.1") + _batch_norm(get("stem_2_bn"), "stem.2")
                + _conv(get("stem_3_conv"), "stem.4.conv") + _batch_norm(get("stem_3_bn"), "stem.4.bn"))
    for stage, blocks in enumerate(DEPTHS[model.depth], start=1):
        for block in range(blocks):
            keras_name, name = f"stage{stage}_block{block + 1}", f"layer{stage}.{block}"
            expected += (_conv(get(f"{keras_name}_1_conv"), f"{name}.conv1")
                         + _batch_norm(get(f"{keras_name}_1_bn"), f"{name}.bn1")
                         + _involution(get(f"{keras_name}_2_involution"), f"{name}.conv2")
                         + _batch_norm(get(f"{keras_name}_2_bn"), f"{name}.bn2")
                         + _conv(get(f"{keras_name}_3_conv"), f"{name}.conv3")
                         + _batch_norm(get(f"{keras_name}_3_bn"), f"{name}.bn3"))
            if block == 0:
                expected += (_conv(get(f"{keras_name}_downsample_conv"), f"{name}.downsample.0")
                             + _batch_norm(get(f"{keras_name}_downsample_bn"), f"{name}.downsample.1"))
    if head is not None:
        expected += [("fc.weight", head.kernel, np.transpose), ("fc.bias", head.bias, None)]
    return expected


def assign_reference_weights(model, arrays):
    """Copies a paper checkpoint's arrays into `model`, all or nothing.

    Args:
        model: an `involution.models.RedNet` built with `exact=True` (the
            paper's function), with or without its top, or a
            `RedNetImageClassifier` on one.
        arrays: `{name: numpy array}` of an mmcls or PaddleClas checkpoint
            (see `canonical_arrays`).

    Raises:
        ValueError: naming the tensor, for a checkpoint of another depth, a
            missing or extra tensor, or a shape that differs; nothing is
            assigned then.
    """
    from involution.models.rednet import DEPTHS

    rednet, head = _rednet_and_head(model)
    if not getattr(rednet, "exact", False):
        raise ValueError("The paper's checkpoints need a RedNet built with exact=True (the paper's padding, batch "
                         f"norm epsilon and generator without bias). Received: a model with "
                         f"exact={getattr(rednet, 'exact', None)!r}")
    arrays = canonical_arrays(arrays)
    depth, blocks = depth_of(arrays)
    if depth != rednet.depth:
        found = f"RedNet-{depth}" if depth else "no RedNet depth"
        raise ValueError(f"The checkpoint has {blocks} blocks per stage ({found}); the model is "
                         f"RedNet-{rednet.depth} {DEPTHS[rednet.depth]}.")
    expected = expected_weights(model)
    names = {name for name, _, _ in expected}
    missing = sorted(names - set(arrays))
    if missing:
        raise ValueError(f"The checkpoint lacks {len(missing)} tensor(s) of RedNet-{rednet.depth}, first "
                         f"{missing[0]!r}.")
    extra = sorted(name for name in set(arrays) - names if head is not None or not name.startswith("fc."))
    if extra:
        raise ValueError(f"The checkpoint has {len(extra)} tensor(s) that RedNet-{rednet.depth} does not, first "
                         f"{extra[0]!r}.")
    values = []
    for name, variable, transform in expected:
        value = arrays[name] if transform is None else transform(arrays[name])
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"The checkpoint's {name!r} has shape {tuple(arrays[name].shape)}; the model's "
                             f"{variable.path} needs {tuple(variable.shape)}.")
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"The checkpoint's {name!r} is {value.dtype}, not floating point.")
        values.append(value)
    for (_, variable, _), value in zip(expected, values):
        variable.assign(value.astype(variable.dtype))
    return model


def _sha256(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_checkpoint(model_name, checkpoint, output, data_format=None):
    """Converts an authors' (mmcls `.pth`) or PaddleClas (`.pdparams`)
    RedNet checkpoint into a preset folder.

    Args:
        model_name: `"rednet26"`, `"rednet38"`, `"rednet50"`, `"rednet101"`
            or `"rednet152"`.
        checkpoint: the checkpoint file's path. It is read as untrusted
            data (`involution.models.checkpoints`): nothing in it runs.
        output: the preset folder to write (`config.json`,
            `model.weights.h5`, `metadata.json`).
        data_format: the model's layout (its weights are the same in both).

    The preset stores the backbone and the classifier apart, as keras-hub
    does (`involution.models.presets`): it loads as the classifier
    (`from_preset(output)`), as the backbone alone
    (`from_preset(output, include_top=False)`), and, with keras-hub, through
    `keras_hub.models.ImageClassifier.from_preset(output)`
    (`involution.models.hub`). Its metadata records the ImageNet
    preprocessing and class names, the source file's sha256 and the logits
    of fixed inputs.

    Returns:
        The converted `RedNetImageClassifier`.

    Raises:
        ValueError: a bad `model_name`, an unreadable checkpoint, or one of
            another depth or with a missing, extra or misshapen tensor
            (named).

    Example:

    >>> convert_checkpoint("rednet50", "rednet50-1c8f8f5b.pth", "presets/rednet50_imagenet")  # doctest: +SKIP
    """
    import os

    from involution import __version__
    from involution.models import checkpoints
    from involution.models.classifier import RedNetImageClassifier
    from involution.models.preprocessing import IMAGENET, IMAGENET_PREPROCESSING
    from involution.models.presets import output_check, save_preset
    from involution.models.rednet import DEPTHS, RedNet, image_shape

    names = [f"rednet{depth}" for depth in DEPTHS]
    if model_name not in names:
        raise ValueError(f"The `model_name` argument must be one of {names}. Received: model_name={model_name!r}")
    arrays = checkpoints.read_checkpoint(checkpoint)
    depth = int(model_name[len("rednet"):])
    # Any image size: the backbone serves dense prediction at other sizes.
    backbone = RedNet(depth, include_top=False, input_shape=image_shape(None, data_format), data_format=data_format,
                      name=f"rednet{depth}_backbone")
    model = RedNetImageClassifier(backbone, num_classes=1000, name=model_name)
    assign_reference_weights(model, arrays)
    crop = IMAGENET_PREPROCESSING["center_crop"]
    source = "PaddleClas .pdparams" if str(checkpoint).endswith(".pdparams") else "PyTorch state_dict (mmcls)"
    metadata = {
        "model": model_name,
        "description": f"RedNet-{model_name[6:]} of the paper (Li et al., CVPR 2021), converted from {source}.",
        "preprocessing": IMAGENET_PREPROCESSING,
        "class_names": IMAGENET,
        "input_shape": list(image_shape(crop, backbone.data_format)),
        "source": {"file": os.path.basename(str(checkpoint)), "sha256": _sha256(checkpoint), "format": source},
        "parameter_count": int(model.count_params()),
        "versions": {"involution": __version__},
        "command": f"involution convert {model_name} {os.path.basename(str(checkpoint))} --output {output}",
        "check": output_check(model, image_shape(crop, backbone.data_format)),
    }
    save_preset(model, output, metadata)
    return model
