"""Involutional neural networks for Keras 3 (TensorFlow, JAX, PyTorch).

Importing this package loads Keras and nothing else: no data, no downloads.
It registers every serializable class of the package with Keras, so that a
saved model (an attention network, a RedNet) loads after `import involution`.
"""

from involution.attention import LocalAttentionKernelGenerator
from involution.layer import Involution, InvolutionKernelGenerator
from involution import networks  # noqa: F401  (registers its MaxPooling2D)
from involution.ops import involution_apply
from involution.rednet import RedNet

__version__ = "0.1.0"

__all__ = [
    "Involution",
    "InvolutionKernelGenerator",
    "LocalAttentionKernelGenerator",
    "RedNet",
    "involution_apply",
    "__version__",
]
