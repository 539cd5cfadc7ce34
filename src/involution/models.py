"""Models built by name from one registry (shared by the CLI, tests, benchmarks).

>>> from involution import models
>>> models.list_models()[:2]
['conv', 'involution']
>>> model = models.create_model("involution", input_shape=(32, 32, 3), num_classes=10)
"""

import functools

import keras

from involution.config import check_implementation
from involution.layer import Involution

_REGISTRY = {}


def register_model(name):
    """Decorator: adds a model builder `fn(**kwargs) -> keras.Model` by name.

    The registered builder also accepts `implementation=` (`"auto"`,
    `"reference"` or `"fast"`), which it sets on every layer of the model
    that has a fast path (see `involution.config`).
    """

    def decorator(builder):
        if name in _REGISTRY:
            raise ValueError(f"A model named {name!r} is already registered.")

        @functools.wraps(builder)
        def build(*args, implementation="auto", **kwargs):
            check_implementation(implementation)
            model = builder(*args, **kwargs)
            if implementation != "auto":
                set_implementation(model, implementation)
            return model

        _REGISTRY[name] = build
        return build

    return decorator


def set_implementation(model, implementation):
    """Sets `implementation` on every layer of `model` that has a fast path.

    Layers keep it in their configs, so a saved model reloads with it.
    """
    check_implementation(implementation)
    # The model itself too, where it keeps the argument in its config (RedNet).
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(getattr(layer, "implementation", None), str):  # not e.g. an RNN's int
            layer.implementation = implementation
    return model


def list_models():
    """Names of the registered models, in registration order."""
    return list(_REGISTRY)


def describe_model(name):
    """The first line of a registered model's docstring."""
    return (_get_builder(name).__doc__ or "").strip().splitlines()[0]


def create_model(name, **kwargs):
    """Builds the registered model `name`.

    Args:
        name: one of `list_models()`.
        **kwargs: passed to the builder; every builder accepts
            `input_shape` and `num_classes`.

    Returns:
        An uncompiled `keras.Model` whose outputs are logits.
    """
    return _get_builder(name)(**kwargs)


def _get_builder(name):
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown model. Expected one of {list_models()}. Received: name={name!r}"
        )
    return _REGISTRY[name]


def _classifier_head(x, num_classes):
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="dense")(x)
    return keras.layers.Dense(num_classes, name="logits")(x)


@register_model("conv")
def conv_model(input_shape=(32, 32, 3), num_classes=10, name="conv"):
    """The Keras example's convolutional baseline (319,178 parameters on CIFAR-10)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for index, filters in enumerate((32, 64, 64), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv_{index}")(x)
        x = keras.layers.ReLU(name=f"relu_{index}")(x)
        if index < 3:
            x = keras.layers.MaxPooling2D(2, name=f"pool_{index}")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes), name=name)


@register_model("involution")
def involution_model(
    input_shape=(32, 32, 3),
    num_classes=10,
    group_number=1,
    kernel_size=3,
    reduction_ratio=2,
    name="involution",
):
    """The Keras example's involution model (13,080 parameters on CIFAR-10)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for index in (1, 2, 3):
        x = Involution(
            channel=input_shape[-1],
            group_number=group_number,
            kernel_size=kernel_size,
            stride=1,
            reduction_ratio=reduction_ratio,
            name=f"inv_{index}",
        )(x)
        x = keras.layers.ReLU(name=f"relu_{index}")(x)
        if index < 3:
            x = keras.layers.MaxPooling2D(2, name=f"pool_{index}")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes), name=name)


def _register_rednets():
    from involution.rednet import DEPTHS, RedNet

    for depth in DEPTHS:

        def imagenet(input_shape=(224, 224, 3), num_classes=1000, depth=depth, **kwargs):
            return RedNet(depth, num_classes=num_classes, input_shape=input_shape, **kwargs)

        def cifar(input_shape=(32, 32, 3), num_classes=10, depth=depth, width=16, **kwargs):
            return RedNet(depth, num_classes=num_classes, input_shape=input_shape, stem="cifar",
                          width=width, **kwargs)

        imagenet.__doc__ = f"RedNet-{depth}, the paper's ImageNet configuration."
        cifar.__doc__ = f"RedNet-{depth} with a stride-1 stem for 32x32 inputs, width 16 (4x narrower)."
        register_model(f"rednet{depth}")(imagenet)
        register_model(f"rednet{depth}_cifar")(cifar)


@register_model("rednet26_cifar_tiny")
def rednet26_cifar_tiny(input_shape=(32, 32, 3), num_classes=10, width=8, **kwargs):
    """RedNet-26, width 8 (8x narrower than ImageNet's), stride-2 stem: small enough to train on a CPU."""
    from involution.rednet import RedNet

    kwargs.setdefault("name", "rednet26_cifar_tiny")
    kwargs.setdefault("stem", "cifar_half")
    return RedNet(26, num_classes=num_classes, input_shape=input_shape, width=width, **kwargs)


@register_model("invnet")
def invnet_model(input_shape=(32, 32, 3), num_classes=10, **kwargs):
    """A residual involution network: 1x1 convs mix channels, involution mixes space."""
    from involution.networks import involution_net

    return involution_net(input_shape, num_classes, **kwargs)


@register_model("attention_net")
def attention_net_model(input_shape=(32, 32, 3), num_classes=10, **kwargs):
    """invnet's first design (3x3 windows, stride-2 stem) with local self-attention kernels."""
    from involution.networks import involution_net

    kwargs.setdefault("name", "attention_net")
    kwargs.setdefault("key_dim", 4)
    # Attention logits cost about three times the paper's generator, so the
    # current invnet's 7x7 windows and full-resolution stem would take this
    # network past an hour per 20 epochs here.
    # Pinned so that later changes to invnet's defaults leave this network
    # as it is; the batch-norm momentum is invnet's (its moving statistics'
    # lag at 0.97 cost about two points there, and nothing here differs).
    for key, value in dict(blocks=(2, 2), kernel_size=3, stem_width=24, stem_groups=3, stem_stride=2, group_channels=8,
                           batch_norm_momentum=0.5, dynamic_init_scale=0.1).items():
        kwargs.setdefault(key, value)
    return involution_net(input_shape, num_classes, attention=True, **kwargs)


_register_rednets()
