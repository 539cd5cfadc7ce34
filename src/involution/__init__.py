"""Involutional neural networks for Keras 3 (TensorFlow, JAX, PyTorch).

The library: the `Involution` layer and its kernel generators, the apply
step (`involution.ops`), the kernel registry (`involution.registry`) with
its bindings (`involution.backends`) and switches (`involution.config`),
and the fused layers the zoo builds with (`involution.normalization`,
`involution.convolution`, `involution.pooling`, `involution.dense`). The
model zoo, `involution.models`, and the `involution compare` app,
`involution.app`, build on the library; the library imports neither.

Importing this package loads Keras, NumPy and the backend, nothing else: no
data, no downloads. It registers the library's serializable classes with
Keras, so that a saved model with involution layers loads after `import
involution` (one built by the zoo, a RedNet say, after `import
involution.models`).
"""

from involution import config, registry
from involution.attention import LocalAttentionKernelGenerator
from involution.layer import Involution, InvolutionKernelGenerator
from involution.ops import involution_apply

__version__ = "0.1.0"

__all__ = [
    "Involution",
    "InvolutionKernelGenerator",
    "LocalAttentionKernelGenerator",
    "config",
    "involution_apply",
    "registry",
    "__version__",
]
