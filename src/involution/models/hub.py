"""keras-hub's `ImageClassifier.from_preset` for RedNet presets (optional).

Importing this module (keras-hub installed: `pip install
"involution[hub]"`) makes a backbone-and-task preset that
`involution convert` writes load through keras-hub:

>>> import keras_hub
>>> import involution.models.hub  # doctest: +SKIP
>>> classifier = keras_hub.models.ImageClassifier.from_preset("rednet50_imagenet")  # doctest: +SKIP

The preset's `task.json` names the class `involution>RedNetImageClassifier`.
Without keras-hub that name is `involution.models.RedNetImageClassifier`,
a plain `keras.Model`; this module registers a subclass of
`keras_hub.models.ImageClassifier` under the same name, with the same
layers (`pooler`, `output_dropout`, `predictions`) and configuration, so
the same files give keras-hub's task (its `compile` defaults, its
preprocessor argument, `task.weights.h5` loading) once it is imported.
keras-hub is not imported by the rest of the package: it is a large
import, and this module is its one entry.
"""

import keras

from involution.models.classifier import check_head_arguments
from involution.models.rednet import RedNet

try:
    import keras_hub
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("involution.models.hub needs keras-hub: pip install \"involution[hub]\"") from error


@keras.saving.register_keras_serializable(package="involution", name="RedNetImageClassifier")
class RedNetImageClassifier(keras_hub.models.ImageClassifier):
    """`involution.models.RedNetImageClassifier` as a keras-hub task.

    Args:
        backbone: a headless `involution.models.RedNet` (or another
            `keras.Model` with a feature-map output).
        num_classes: the number of classes.
        preprocessor: None, or a keras-hub `ImageClassifierPreprocessor`.
        pooling: `"avg"` or `"max"`.
        activation: the logits layer's activation, by name; None outputs
            logits.
        dropout: the dropout rate before the logits layer.
        head_dtype: the head's dtype policy (the backbone's by default).
        **kwargs: keras-hub `Task` arguments (`name`, `compile`, ...).

    Example:

    >>> backbone = RedNet(26, include_top=False, input_shape=(64, 64, 3))  # doctest: +SKIP
    >>> classifier = RedNetImageClassifier(backbone, num_classes=10)  # doctest: +SKIP
    """

    backbone_cls = RedNet

    def __init__(self, backbone, num_classes, preprocessor=None, pooling="avg", activation=None, dropout=0.0,
                 head_dtype=None, **kwargs):
        if not isinstance(backbone, keras.Model):
            raise ValueError(f"The `backbone` argument must be a keras.Model. Received: backbone={backbone!r}")
        check_head_arguments(num_classes, pooling, activation, dropout)
        super().__init__(backbone, num_classes, preprocessor=preprocessor, pooling=pooling, activation=activation,
                         dropout=dropout, head_dtype=head_dtype, **kwargs)

