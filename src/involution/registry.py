"""The kernel registry: every fast path of the library, declared in one table.

Each op of the library (the involution apply step, local attention's
window correlation, batch normalization's training step, pooling,
channels-first convolution) has a portable
`keras.ops` reference, its tested reference, and zero or more *kernels*:
entries of `KERNELS`, one per (op, backend, implementation). An entry
says where it can run (backend, device kinds, dtypes) and names the two
functions of its binding module (`involution.backends.<backend>_backend`):
`can_run(...)`, which returns None where the kernel runs the arguments at
hand and otherwise the reason it cannot, and `run(...)`, the kernel itself.
An entry may also name `prefer(...)`, for kernels that run correctly but
are slower than the reference for some arguments: `"auto"` skips them
there.

`choose()` is the one dispatch point. For `implementation`:

- `"reference"`: the `keras.ops` reference;
- `"auto"`: the first entry, in `KERNELS`' order, of the current backend
  whose op is switched on (`involution.config.set_fast_path`), that can run
  the arguments and that prefers them; else the reference;
- `"fast"`: as `"auto"`, but regardless of the switches, and where no
  entry prefers the arguments, the first that can run them; a
  `ValueError` with every entry's reason where none can;
- an entry's name (`"torch-cpp"`, `"tensorflow-xla"`, ...): that entry,
  or a `ValueError` with its reason.

The order within an op and backend is: this package's compiled C++ loops
first, then kernels made of the framework's own fused ops, then the
portable forms that stay fast under compilers and exporters.

`explain()` (and the `involution doctor` command) lists every entry of the
current backend with whether it runs here and why not; `choose()` logs its
choice, with the reasons of the entries it passed over, to the
`involution.registry` logger at DEBUG level (`--verbose` runs show them).

Example:

>>> from involution import registry
>>> [entry.name for entry in registry.entries("apply", "torch")]
['torch-cpp', 'torch-inplace']
"""

import dataclasses
import importlib
import logging

import keras

from involution import switches

logger = logging.getLogger(__name__)

BACKENDS = ("tensorflow", "jax", "torch")
# The ops with kernels; their names are also `involution.config`'s switches
# (but "conv", whose one kernel is the only way it runs on some machines).
OPS = ("apply", "window_correlation", "batch_norm", "pool", "conv")
GENERIC_IMPLEMENTATIONS = ("auto", "reference", "fast")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One kernel of the registry.

    Args:
        name: unique within its op, the value of `implementation=` that
            asks for it.
        op: one of `OPS`.
        backend: the Keras backend whose tensors it takes.
        devices: the device kinds it can run on (`"cpu"`, `"gpu"`).
        dtypes: the input dtypes it takes.
        summary: one line: what it is.
        source: where its code lives, relative to the package.
        can_run: name of the binding's predicate, `(**arguments) -> None |
            reason`.
        run: name of the binding's function, `(**arguments) -> outputs`.
        prefer: optional name of the binding's predicate, `(**arguments)
            -> None | reason`, that `"auto"` asks after `can_run`.
        switched: whether `involution.config.set_fast_path(op, False)`
            turns it off for `"auto"`. A kernel that is the only way an
            op runs at all on some machines (channels-first convolution
            on TensorFlow's CPU) is not switched.
    """

    name: str
    op: str
    backend: str
    devices: tuple
    dtypes: tuple
    summary: str
    source: str
    can_run: str
    run: str
    prefer: str = None
    switched: bool = True

    def binding(self):
        """The module holding the kernel's functions (imported on first use)."""
        return binding(self.backend)

    def reason(self, **arguments):
        """None where this kernel runs `arguments` now, else why not."""
        if self.backend != keras.backend.backend():
            return f"it runs on the {self.backend!r} backend (current: {keras.backend.backend()!r})"
        return getattr(self.binding(), self.can_run)(**arguments)

    def __call__(self, **arguments):
        return getattr(self.binding(), self.run)(**arguments)


# Imported once per backend; later look-ups read a dict, which compilers that
# trace Python (`torch.compile`) step through without a graph break.
_BINDINGS = {}


def binding(backend):
    """The binding module of `backend`'s kernels, `involution.backends.<backend>_backend`."""
    module = _BINDINGS.get(backend)
    if module is None:
        module = _BINDINGS[backend] = importlib.import_module(f"involution.backends.{backend}_backend")
    return module


_FLOATS = ("float32", "float64")
_HALF_AND_FLOATS = ("float16", "bfloat16", "float32", "float64")

KERNELS = (
    # The involution apply step, with its input and kernel gradients (the
    # three bilinear ops of `docs/design.md`; their autograd is the entry's).
    Kernel("torch-cpp", "apply", "torch", ("cpu",), _FLOATS,
           "fused C++ loops as torch.library ops (apply, input gradient, kernel gradient)",
           "backends/involution_cpu.cpp, kernels/cpu/involution_kernels.h",
           "apply_cpp_reason", "apply_cpp", prefer="apply_cpp_preference"),
    Kernel("triton", "apply", "torch", ("gpu",), _HALF_AND_FLOATS,
           "Triton kernels as torch.library triton_ops (apply, gather input gradient, kernel gradient); CPU "
           "tensors under TRITON_INTERPRET=1", "backends/torch_triton.py, kernels/triton/involution.py",
           "apply_triton_reason", "apply_triton", prefer="apply_triton_preference"),
    Kernel("torch-inplace", "apply", "torch", ("cpu", "gpu"), _HALF_AND_FLOATS,
           "in-place accumulation per tap (addcmul_), an autograd Function that saves x and the kernel",
           "backends/torch_backend.py", "apply_inplace_reason", "apply_inplace"),
    Kernel("tensorflow-cpp", "apply", "tensorflow", ("cpu",), _FLOATS,
           "fused C++ loops as TensorFlow ops (apply, input gradient, kernel gradient)",
           "backends/involution_tf.cpp, kernels/cpu/involution_kernels.h",
           "apply_cpp_reason", "apply_cpp", prefer="apply_cpp_preference"),
    Kernel("tensorflow-xla", "apply", "tensorflow", ("cpu", "gpu"), _HALF_AND_FLOATS,
           "grouped shift-and-accumulate with a memory-saving gradient, as its own XLA cluster",
           "backends/tensorflow_backend.py", "apply_xla_reason", "apply_xla"),
    Kernel("tensorflow-grouped", "apply", "tensorflow", ("cpu", "gpu"), _HALF_AND_FLOATS,
           "the same grouped form as plain ops: inside XLA-compiled and exported graphs, forward mode",
           "backends/tensorflow_backend.py", "apply_grouped_reason", "apply_grouped"),
    Kernel("jax-ffi", "apply", "jax", ("cpu",), _FLOATS,
           "fused C++ loops as XLA FFI custom calls behind three JAX primitives",
           "backends/involution_ffi.cpp, kernels/cpu/involution_kernels.h",
           "apply_ffi_reason", "apply_ffi", prefer="apply_preference"),
    Kernel("pallas", "apply", "jax", ("gpu",), _HALF_AND_FLOATS,
           "Pallas kernels behind the same primitives (Triton lowering on GPUs; the CPU in interpret mode under "
           "INVOLUTION_PALLAS_INTERPRET=1)", "backends/jax_backend.py, kernels/pallas/involution.py",
           "apply_pallas_reason", "apply_pallas", prefer="apply_pallas_preference"),
    Kernel("jax-xla", "apply", "jax", ("cpu", "gpu"), _HALF_AND_FLOATS,
           "the same primitives lowered to XLA's grouped form",
           "backends/jax_backend.py", "apply_xla_reason", "apply_xla", prefer="apply_preference"),
    # Local attention's query-key logits: the apply step's kernel gradient.
    Kernel("torch-cpp", "window_correlation", "torch", ("cpu",), _FLOATS,
           "the fused kernel-gradient loop", "backends/involution_cpu.cpp",
           "window_correlation_reason", "window_correlation"),
    Kernel("triton", "window_correlation", "torch", ("gpu",), _HALF_AND_FLOATS,
           "the Triton kernel-gradient kernel", "backends/torch_triton.py, kernels/triton/involution.py",
           "window_correlation_triton_reason", "window_correlation_triton",
           prefer="window_correlation_triton_preference"),
    Kernel("tensorflow-cpp", "window_correlation", "tensorflow", ("cpu",), _FLOATS,
           "the fused kernel-gradient loop", "backends/involution_tf.cpp",
           "window_correlation_reason", "window_correlation"),
    # Batch normalization's training step over the last axis.
    Kernel("torch-aten", "batch_norm", "torch", ("cpu", "gpu"), _HALF_AND_FLOATS,
           "PyTorch's native batch norm on the (pixels, channels) view", "backends/torch_backend.py",
           "batch_norm_aten_reason", "batch_norm_aten"),
    Kernel("tensorflow-cpp", "batch_norm", "tensorflow", ("cpu",), _FLOATS,
           "two passes over memory each way, a C++ op", "kernels/cpu/batch_norm_kernels.h",
           "batch_norm_cpp_reason", "batch_norm_cpp"),
    Kernel("tensorflow-fused", "batch_norm", "tensorflow", ("cpu", "gpu"), ("float16", "bfloat16", "float32"),
           "TensorFlow's fused batch norm on the (pixels, 1, 1, channels) view", "backends/tensorflow_backend.py",
           "batch_norm_fused_reason", "batch_norm_fused"),
    # Pooling ("valid").
    Kernel("torch-permuted", "pool", "torch", ("cpu", "gpu"), _HALF_AND_FLOATS,
           "pools a channels_last map through its channels_first view, without Keras' copy",
           "backends/torch_backend.py", "pool_reason", "pool"),
    Kernel("tensorflow-cpp", "pool", "tensorflow", ("cpu",), _FLOATS,
           "square tiles, one C++ op each way", "kernels/cpu/pool_kernels.h", "pool_reason", "pool"),
    Kernel("jax-tiles", "pool", "jax", ("cpu", "gpu"), _HALF_AND_FLOATS,
           "tiling windows as a reshape and a reduction, with a fused derivative",
           "backends/jax_backend.py", "pool_reason", "pool"),
    # Channels-first convolution where TensorFlow's CPU has none.
    Kernel("tensorflow-transposed", "conv", "tensorflow", ("cpu",), _HALF_AND_FLOATS,
           "channels_last convolution between two transposes (TensorFlow's CPU convolves channels_last only "
           "without oneDNN)", "backends/tensorflow_backend.py", "conv_transposed_reason", "conv_transposed",
           prefer="conv_transposed_preference", switched=False),
)


def entries(op=None, backend=None):
    """The registry's kernels for `op` and `backend` (None: all), in order."""
    if op is not None and op not in OPS:
        raise ValueError(f"The `op` argument must be one of {OPS}. Received: op={op!r}")
    return tuple(k for k in KERNELS if (op is None or k.op == op) and (backend is None or k.backend == backend))


# `KERNELS` is constant, so each op's names are listed once; a dict, which
# `torch.compile` steps through (it breaks on `functools.lru_cache`).
_NAMES = {}


def kernel_names(op=None):
    """The names `implementation=` accepts besides `"auto"`, `"reference"`, `"fast"`."""
    names = _NAMES.get(op)
    if names is None:
        names = _NAMES[op] = tuple(dict.fromkeys(k.name for k in entries(op)))
    return names


def check_implementation(implementation, op=None):
    """Validates an `implementation` argument, with a Keras-style message.

    Args:
        implementation: `"auto"`, `"reference"`, `"fast"` or a kernel's
            name (of `op`, where given).
        op: optional; restricts the names to that op's kernels.
    """
    allowed = GENERIC_IMPLEMENTATIONS + kernel_names(op)
    if not isinstance(implementation, str) or implementation not in allowed:
        raise ValueError(
            f"The `implementation` argument must be one of {allowed}. Received: implementation={implementation!r}"
        )
    return implementation


def for_op(implementation, op):
    """`implementation` as it applies to `op`, for layers that run several ops.

    A kernel's name asks for that kernel in its own op; the layer's other
    ops (all of them, for `op=None`) run `"auto"`.
    """
    if implementation in GENERIC_IMPLEMENTATIONS or (op is not None and implementation in kernel_names(op)):
        return implementation
    return "auto"


def choose(op, implementation="auto", **arguments):
    """The kernel that runs `op` on `arguments`, or None for the `keras.ops` reference.

    Args:
        op: one of `OPS`.
        implementation: as in the module's docstring.
        **arguments: the op's arguments, passed to each candidate's
            `can_run` (and `prefer`) and then to the chosen kernel.

    Returns:
        A `Kernel` (call it with the same `arguments`), or None.

    Raises:
        ValueError: `implementation="fast"` where no kernel can run the
            arguments, or a kernel's name where that kernel cannot.
    """
    check_implementation(implementation)
    if implementation == "reference":
        return None
    backend = keras.backend.backend()
    candidates = entries(op, backend)
    if implementation not in GENERIC_IMPLEMENTATIONS:
        named = [k for k in entries(op) if k.name == implementation]
        if not named:
            raise ValueError(
                f"The {op!r} op has no kernel named {implementation!r}; its kernels are "
                f"{kernel_names(op)}. Received: implementation={implementation!r}"
            )
        reason = named[0].reason(**arguments)
        if reason is not None:
            raise ValueError(
                f"The {implementation!r} kernel cannot run the {op!r} op here: {reason}. Use 'auto' or "
                f"'reference'. Received: implementation={implementation!r}"
            )
        return named[0]
    passed, runnable = [], []
    for kernel in candidates:
        if implementation == "auto" and kernel.switched and not switches.fast_path_enabled(op):
            passed.append((kernel.name, f"switched off ({switches.environment_variable(op)}=0 or set_fast_path)"))
            continue
        reason = kernel.reason(**arguments)
        if reason is None:
            runnable.append(kernel)
            if kernel.prefer is not None:
                reason = getattr(kernel.binding(), kernel.prefer)(**arguments)
        if reason is None:
            if passed and logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s on %s: %s, after %s", op, backend, kernel.name, passed)
            return kernel
        passed.append((kernel.name, reason))
    if implementation == "fast" and runnable:
        # None prefers these arguments, but "fast" asks for a kernel.
        return runnable[0]
    if implementation == "fast":
        reasons = "; ".join(f"{name}: {reason}" for name, reason in passed) or (
            f"the {backend!r} backend has no {op} kernel")
        raise ValueError(
            f"`implementation='fast'` cannot run the {op!r} op here ({reasons}). Use 'auto' or 'reference'. "
            "Received: implementation='fast'"
        )
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s on %s: the keras.ops reference, after %s", op, backend, passed)
    return None


def availability(kernel):
    """None where `kernel` can run on this machine at all, else why not.

    Asks the binding's `available()` (compiler found, build succeeded,
    device present), without op arguments; `choose` asks each call's
    arguments too.
    """
    if kernel.backend != keras.backend.backend():
        return f"the current backend is {keras.backend.backend()!r}"
    if kernel.switched and not switches.fast_path_enabled(kernel.op):
        return f"switched off ({switches.environment_variable(kernel.op)}=0 or set_fast_path)"
    available = getattr(kernel.binding(), "available", None)
    return available(kernel) if available is not None else None


def explain(backend=None):
    """The registry's kernels for `backend` (default: the current one), as dicts.

    Each has the entry's `name`, `op`, `devices`, `dtypes`, `summary`,
    `source`, and `available` (bool) with `reason` (None, or why it cannot
    run here). Building the compiled kernels may happen here, once.
    """
    backend = backend or keras.backend.backend()
    rows = []
    for kernel in entries(backend=backend):
        reason = availability(kernel)
        rows.append({
            "name": kernel.name, "op": kernel.op, "devices": list(kernel.devices), "dtypes": list(kernel.dtypes),
            "summary": kernel.summary, "source": kernel.source, "available": reason is None, "reason": reason,
        })
    return rows


def prepare():
    """Builds (or loads from the cache) the current backend's compiled kernels,
    where the apply step's kernels are switched on."""
    backend = keras.backend.backend()
    if backend in BACKENDS and switches.fast_path_enabled("apply"):
        binding(backend).prepare()
