"""The model zoo: every model by name, from one registry.

>>> from involution import models
>>> models.list_models()[:2]
['conv', 'involution']
>>> model = models.create_model("involution", input_shape=(32, 32, 3), num_classes=10)

Families, one module each, registering their variants on import:
`example` (the Keras example's `conv` and `involution`), `rednet` (the
paper's RedNet-26...152 and CIFAR variants), `invnet` (`invnet`, its
static counterparts `invnet_depthwise` and `invnet_conv`, `attention_net`),
`resnet8` (MLPerf Tiny's reference network). Trained models load by name with `from_preset`
(`list_presets()` names the shipped ones); `RedNetImageClassifier` is the head that
converted ImageNet RedNets carry on a headless backbone, as keras-hub splits them.
"""

from involution.models.registry import create_model, describe_model, list_models, register_model, set_implementation
from involution.models import example, rednet, invnet, resnet8  # noqa: E402,F401  (registration order: the listing's)
from involution.models.classifier import RedNetImageClassifier
from involution.models.invnet import involution_net
from involution.models.presets import from_preset, list_presets, preset_metadata, save_preset
from involution.models.rednet import RedNet

__all__ = ["RedNet", "RedNetImageClassifier", "create_model", "describe_model", "from_preset", "involution_net", "list_models",
           "list_presets", "preset_metadata", "register_model", "save_preset", "set_implementation"]
