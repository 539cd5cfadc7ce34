"""The registry: model builders by name (shared by the CLI, tests, benchmarks).

Each model family registers its variants in its own module
(`involution.models.example`, `.rednet`, `.invnet`), timm-style: a variant
is a builder of a few lines that fixes the family's arguments.
"""

import functools

from involution import registry as kernels

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
            kernels.check_implementation(implementation)
            model = builder(*args, **kwargs)
            if implementation != "auto":
                set_implementation(model, implementation)
            return model

        _REGISTRY[name] = build
        return build

    return decorator


def set_implementation(model, implementation):
    """Sets `implementation` on every layer of `model` that has kernels.

    A kernel's name (`involution.registry`) goes to the layers of its op
    (`KERNEL_OP`), and `"auto"` to the others. Layers keep it in their
    configs, so a saved model reloads with it.
    """
    kernels.check_implementation(implementation)
    # The model itself too, where it keeps the argument in its config (RedNet).
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(getattr(layer, "implementation", None), str):  # not e.g. an RNN's int
            op = getattr(layer, "KERNEL_OP", None)
            layer.implementation = implementation if layer is model else kernels.for_op(implementation, op)
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
