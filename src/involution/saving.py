"""Load-only classes for layers that earlier releases saved under other names.

A `.keras` file names each custom layer by its registered name,
`"involution>ClassName"`, and Keras stores each layer's weights under a
path made from its Python class name (`layers/batch_normalization_3`). So
a renamed layer needs more than a second registered name to load an old
file: it needs a class of the old name. `register_load_aliases` makes one,
a subclass that only renames, registered under the old name; old files
(the shipped presets among them) load into it, save back as they were, and
behave as the renamed layer. New models never use these classes.
"""

import keras

PACKAGE = "involution"


def register_load_aliases(aliases, obsolete=()):
    """Registers, for each old name, a subclass of the renamed layer called by that name.

    Args:
        aliases: dict of old class names to the layer classes that replaced
            them.
        obsolete: configuration keys of the old layers that the new ones
            no longer take (dropped when loading).

    Returns:
        The dict of old names to their load-only classes.
    """

    def from_config(cls, config):
        config = {key: value for key, value in config.items() if key not in obsolete}
        return super(cls, cls).from_config(config)

    classes = {}
    for old_name, cls in aliases.items():
        alias = type(old_name, (cls,), {
            "__doc__": f"`{cls.__name__}` under the name earlier releases saved it as (loads those files).",
            "__module__": cls.__module__,
            "from_config": classmethod(from_config),
        })
        classes[old_name] = keras.saving.register_keras_serializable(package=PACKAGE, name=old_name)(alias)
    return classes
