"""A backbone with a classification head, split as keras-hub splits them.

`RedNetImageClassifier(backbone, num_classes)` is keras-hub's
`ImageClassifier` without keras-hub: global pooling, dropout and a logits
layer (`pooler`, `output_dropout`, `predictions`) on a headless backbone's
feature map, with keras-hub's constructor and config. Presets of this
task store the backbone and the head apart (`config.json` /
`model.weights.h5` and `task.json` / `task.weights.h5`,
`involution.models.presets`), so that the backbone loads alone for dense
prediction, and, with keras-hub installed, `involution.models.hub` makes
the same files load through `keras_hub.models.ImageClassifier.from_preset`.
"""

import keras


def check_head_arguments(num_classes, pooling, activation, dropout):
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"The `num_classes` argument must be a positive integer. Received: num_classes={num_classes!r}")
    if pooling not in ("avg", "max"):
        raise ValueError(f"The `pooling` argument must be 'avg' or 'max'. Received: pooling={pooling!r}")
    if activation is not None and not isinstance(activation, str):
        raise ValueError(f"The `activation` argument must be None or an activation's name. "
                         f"Received: activation={activation!r}")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"The `dropout` argument must be a number in [0, 1). Received: dropout={dropout!r}")


@keras.saving.register_keras_serializable(package="involution")
class RedNetImageClassifier(keras.Model):
    """An image classifier on a headless backbone (a RedNet's, typically).

    Args:
        backbone: a `keras.Model` that outputs a feature map, e.g.
            `RedNet(50, include_top=False)`; its `data_format` attribute,
            if any, is the pooling's.
        num_classes: the number of classes.
        preprocessor: None; keras-hub's argument, kept for its config
            (`involution.models.hub`'s class takes a keras-hub one).
        pooling: `"avg"` or `"max"` global pooling.
        activation: the logits layer's activation, by name (`"softmax"`);
            None outputs logits.
        dropout: the dropout rate before the logits layer.
        head_dtype: the head's dtype policy (the backbone's by default).
        **kwargs: `keras.Model` arguments (`name`, ...).

    Input shape:
        The backbone's input.

    Output shape:
        `(batch_size, num_classes)`.

    Example:

    >>> from involution.models import RedNet
    >>> backbone = RedNet(26, include_top=False, input_shape=(64, 64, 3))
    >>> classifier = RedNetImageClassifier(backbone, num_classes=10)
    >>> classifier.output_shape
    (None, 10)

    Reference:
        keras-hub's `keras_hub.models.ImageClassifier`, whose layers and
        configuration this class shares.
    """

    def __init__(self, backbone, num_classes, preprocessor=None, pooling="avg", activation=None, dropout=0.0,
                 head_dtype=None, **kwargs):
        if not isinstance(backbone, keras.Model):
            raise ValueError(f"The `backbone` argument must be a keras.Model. Received: backbone={backbone!r}")
        if preprocessor is not None:
            raise ValueError("The `preprocessor` argument takes keras-hub preprocessors: use "
                             "`involution.models.hub.RedNetImageClassifier` with keras-hub installed. "
                             f"Received: preprocessor={preprocessor!r}")
        check_head_arguments(num_classes, pooling, activation, dropout)
        head_dtype = head_dtype or backbone.dtype_policy
        data_format = getattr(backbone, "data_format", None)
        pooling_layer = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        pooler = pooling_layer(data_format, dtype=head_dtype, name="pooler")
        output_dropout = keras.layers.Dropout(dropout, dtype=head_dtype, name="output_dropout")
        output_dense = keras.layers.Dense(num_classes, activation=activation, dtype=head_dtype, name="predictions")
        inputs = backbone.input
        outputs = output_dense(output_dropout(pooler(backbone(inputs))))
        # Attributes after the functional model's constructor: PyTorch's
        # Module refuses sublayers assigned before it.
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.backbone = backbone
        self.pooler = pooler
        self.output_dropout = output_dropout
        self.output_dense = output_dense
        self.preprocessor = None
        self.num_classes = num_classes
        self.pooling = pooling
        self.activation = activation
        self.dropout = dropout

    def get_config(self):
        return {
            "backbone": keras.layers.serialize(self.backbone),
            "preprocessor": None,
            "name": self.name,
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "activation": self.activation,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)
