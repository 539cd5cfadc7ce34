"""Involutional neural networks for Keras 3 (TensorFlow, JAX, PyTorch).

The library: the `Involution` layer and its kernel generators, the apply
step (`involution.ops`) with its fast paths (`involution.backends`,
switched in `involution.config`), and the layers around them
(`convolution`, `normalization`, `pooling`); the model zoo, `involution.models`; the
`involution compare` app, `involution.app`, which the library never
imports.

Importing this package loads Keras, NumPy and the backend, nothing else: no
data, no downloads. It registers every serializable class of the library
and the zoo with Keras, so that a saved model (an attention network, a
RedNet) loads after `import involution`.
"""

from involution.attention import LocalAttentionKernelGenerator
from involution.convolution import Conv2D
from involution.layer import Involution, InvolutionKernelGenerator
from involution.models import RedNet
from involution.normalization import BatchNormalization
from involution.ops import involution_apply
from involution.pooling import MaxPooling2D

__version__ = "0.1.0"

__all__ = [
    "BatchNormalization",
    "Conv2D",
    "Involution",
    "InvolutionKernelGenerator",
    "LocalAttentionKernelGenerator",
    "MaxPooling2D",
    "RedNet",
    "involution_apply",
    "__version__",
]
