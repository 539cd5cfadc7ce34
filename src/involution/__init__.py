"""Involutional neural networks for Keras 3 (TensorFlow, JAX, PyTorch).

Importing this package loads Keras and nothing else: no data, no downloads.
"""

from involution.layer import Involution, InvolutionKernelGenerator
from involution.ops import involution_apply

__version__ = "0.1.0"

__all__ = [
    "Involution",
    "InvolutionKernelGenerator",
    "involution_apply",
    "__version__",
]
