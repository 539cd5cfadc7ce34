"""Global switches for the kernels of `involution.registry`.

Every op with kernels has a portable `keras.ops` reference, and every layer
that runs one takes `implementation=` (`"auto"`, `"reference"`, `"fast"` or
a kernel's name). These switches decide what `"auto"` does, per op, for the
whole process:

| name | its kernels run | environment variable |
|---|---|---|
| `"apply"` | the involution apply step | `INVOLUTION_FAST_APPLY` |
| `"window_correlation"` | local attention's query-key logits | `INVOLUTION_FAST_WINDOW_CORRELATION` |
| `"batch_norm"` | `involution.normalization.FusedBatchNormalization`'s training step | `INVOLUTION_FAST_BATCH_NORM` |
| `"pool"` | pooling without layout copies (`involution.ops.pool`) | `INVOLUTION_FAST_POOL` |

An environment variable set to `0` turns its op's kernels off when the
process starts; `set_fast_path` overrides it. `implementation="fast"` or a
kernel's name on a layer or call ignores the switches (and raises where the
kernel cannot run). `involution.registry.explain()` (`involution doctor`)
says which kernels can run here and why the others cannot.

The C++ ops of the PyTorch and TensorFlow fast paths take their large
outputs (8 MiB and more) from a cache of blocks that earlier outputs
freed, so that a training loop's full-resolution maps do not fault fresh
pages in on every step. `INVOLUTION_BLOCK_CACHE_MB` (read once, when the
ops are loaded) caps the memory kept there: 1024 by default, 0 for none.

`exportable()` (timm's `set_layer_config(exportable=True)`) makes every
`"auto"` choice one whose artifact runs without this package: PyTorch and
JAX say when they export (`torch.compiler.is_exporting()`, jax2onnx's
conversion), TensorFlow does not, and an exporter the library does not
recognise is covered by this switch.

The GPU kernels can be tested without a GPU: PyTorch's Triton kernels run
CPU tensors under Triton's interpreter (`TRITON_INTERPRET=1`, set before
they are first used), JAX's Pallas kernels run on the CPU in interpret
mode under `INVOLUTION_PALLAS_INTERPRET=1` or `set_pallas_interpret(True)`.
Both are for tests: `"auto"` passes over them on the CPU, and asks for
them by name only (`implementation="triton"`, `implementation="pallas"`).

Example:

>>> import involution
>>> involution.config.set_fast_path("apply", False)
>>> involution.config.fast_path_enabled("apply")
False
>>> with involution.config.fast_paths(False):
...     pass  # everything "auto" runs the keras.ops references here
"""

import importlib
import os

import keras

from involution import cache, registry
from involution.switches import (  # noqa: F401  (the public switches live here)
    FAST_PATHS,
    environment_variable,
    exportable,
    exportable_enabled,
    fast_path_enabled,
    fast_paths,
    pallas_interpret_enabled,
    set_exportable,
    set_fast_path,
    set_pallas_interpret,
)


def explain():
    """What runs here: every kernel of the current backend, and why not.

    Returns:
        A dict: `keras` (its version), `backend` and `backend_version`,
        `kernel_cache` (the folder of compiled kernels and the builds in
        it, without creating it) and `kernels`, the rows of
        `involution.registry.explain()` (name, op, devices, dtypes,
        summary, source, available, reason). Compiled kernels are built
        (or loaded from the cache) here, once per process.

    Example:

    >>> report = involution.config.explain()
    >>> [row["name"] for row in report["kernels"] if row["op"] == "apply"]  # on PyTorch
    ['torch-cpp', 'torch-inplace']
    """
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    version = getattr(importlib.import_module(module), "__version__", None) if module else None
    folder = os.path.join(cache.cache_dir(), "kernels")
    kernels = registry.explain(backend)  # builds first, so that the cache shows the builds
    builds = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return {
        "keras": keras.__version__,
        "backend": backend,
        "backend_version": version,
        "kernel_cache": {"folder": folder, "exists": os.path.isdir(folder), "builds": builds},
        "kernels": kernels,
    }
