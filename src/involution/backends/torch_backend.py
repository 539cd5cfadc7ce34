"""The PyTorch fast path: fused C++ kernels on the CPU, in-place taps elsewhere.

On the CPU (float32/float64) the apply step and its gradients are three
fused loops (`involution_cpu.cpp`), compiled with PyTorch's extension
builder the first time they are needed (then cached per machine in
`<cache>/kernels/torch/`): one pass over memory instead of one per kernel tap.
They are `torch.library` custom ops, visible to `torch.compile` and
`torch.export` and differentiable to any order. The kernel-gradient loop
also computes local attention's query-key logits (`window_correlation`).

Elsewhere (GPU tensors, half precision, or where no C++ compiler is found)
an autograd Function of in-place accumulations runs instead: Keras runs
PyTorch eagerly, so every tap is one kernel launch; the Function keeps them
in place (`addcmul_` into one output buffer, into strided views of one
gradient buffer) so that no `K*K` temporaries are made or stored for the
backward pass.

While a model is exported (`torch.export`, ONNX, TorchScript) the
`keras.ops` reference runs instead (the kernels' `*_reason` functions), so that the artifact
needs nothing of this package.
"""

import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from involution import switches
from involution.backends import native, padding, tap_offsets, too_few_channels
from involution.backends import window as _window
from involution.backends.torch_autograd import register_bilinear_family

# Set to 0 to skip building the C++ kernels (the in-place path runs instead).
EXTENSION_ENV = "INVOLUTION_TORCH_EXTENSION"
# The C++ kernels vectorise over a group's channels, 8 at a time; with fewer
# channels per group (the Keras example's 3) the in-place path, which
# vectorises along image rows, is faster.
FUSED_MIN_GROUP_CHANNELS = 8
_SOURCE = Path(__file__).with_name("involution_cpu.cpp")


_EXTENSION = None  # the built module, or False where it cannot be built


def _extension():
    """The compiled CPU kernels, or None where they cannot be built.

    Built (or loaded from PyTorch's cache) on the first call; later calls
    read a module global, which `torch.compile` traces without a break.
    """
    global _EXTENSION
    if _EXTENSION is None:
        _EXTENSION = _build_extension() or False
    return _EXTENSION or None


# PyTorch's builder holds `<build_directory>/lock` while it builds and waits,
# without limit, for a lock another process holds. A build takes about a
# minute; a lock far older was left by a process that was killed mid-build.
STALE_LOCK_SECONDS = 15 * 60


def _remove_stale_lock(build_directory):
    lock = Path(build_directory) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_SECONDS:
        warnings.warn(f"involution: removing {lock}, left {age / 60:.0f} minutes ago by an interrupted build.",
                      RuntimeWarning, stacklevel=4)
        lock.unlink(missing_ok=True)


def _build_extension():
    if os.environ.get(EXTENSION_ENV, "1") == "0":
        return None
    try:
        from torch.utils import cpp_extension

        # The include folder's place is part of the key: PyTorch's builder
        # rebuilds a folder whose build file changed.
        name = f"involution_cpu_{native.build_key(_SOURCE, flags=('-Ikernels/cpu',))}"
        # PyTorch's builder loads `<build_directory>/<name>.so` and runs the
        # folder's build file: both must be the user's own.
        build_directory = native.kernel_dir(native.kernel_dir() / "torch" / name, library=f"{name}.so")
        _remove_stale_lock(build_directory)
        return cpp_extension.load(
            name=name,
            build_directory=str(build_directory),
            sources=[str(_SOURCE)],
            extra_include_paths=[str(native.KERNELS_DIR)],
            extra_cflags=native.CXX_FLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a build error...
        warnings.warn(
            f"involution: the fused CPU kernels could not be built ({type(error).__name__}: {error}); "
            f"using the slower in-place PyTorch path. Set {EXTENSION_ENV}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


# The fused loops as `torch.library` custom ops, so that `torch.compile`
# and `torch.export` see one opaque op with known output shapes (the fake
# implementations) instead of tracing into a C++ call, and autograd is the
# ops' own (`torch_autograd`): gradients of any order run the fused loops.
# Tensors are channels-last and contiguous: x (B, H, W, C), kernel
# (B, Ho, Wo, G*K*K) group-major.


@torch.library.custom_op("involution::apply", mutates_args=(), device_types="cpu")
def _apply_op(x: torch.Tensor, kernel: torch.Tensor, groups: int, kernel_size: int, stride: int,
              dilation: int) -> torch.Tensor:
    return _extension().forward(x, kernel, groups, kernel_size, stride, dilation)


@torch.library.custom_op("involution::input_gradient", mutates_args=(), device_types="cpu")
def _input_gradient_op(grad: torch.Tensor, kernel: torch.Tensor, height: int, width: int, groups: int,
                       kernel_size: int, stride: int, dilation: int) -> torch.Tensor:
    return _extension().input_gradient(grad, kernel, height, width, groups, kernel_size, stride, dilation)


@torch.library.custom_op("involution::correlate", mutates_args=(), device_types="cpu")
def _correlate_op(x: torch.Tensor, grad: torch.Tensor, groups: int, kernel_size: int, stride: int,
                  dilation: int) -> torch.Tensor:
    return _extension().correlate(x, grad, groups, kernel_size, stride, dilation)


register_bilinear_family(_apply_op, _input_gradient_op, _correlate_op)


def exporting():
    """True while `torch.export`, `torch.onnx` or TorchScript traces a model.

    Exported programs should run without this package, so they get the
    portable `keras.ops` path, whose aten ops every exporter knows.
    """
    return (switches.exportable_enabled() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
            or torch.jit.is_tracing())


# === Kernels of the registry (`involution.registry`) ===


def available(kernel):
    """Why `kernel` cannot run on this machine at all, or None."""
    if kernel.name == "torch-cpp" and _extension() is None:
        return "the fused CPU kernels could not be built (no compiler or ninja, or a build error: see the warning)"
    if kernel.name == "triton":
        module = _triton()
        if module is None:
            return f"Triton cannot be imported ({_TRITON['error']})"
        if not torch.cuda.is_available() and not module.interpreted():
            return "no CUDA/ROCm device, and Triton's interpreter is off (TRITON_INTERPRET=1 runs it on the CPU)"
    return None


def prepare():
    _extension()


_EXPORTED = "an exported program gets the portable path"


def _cpp_reason(tensor):
    if exporting():
        return _EXPORTED
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64):
        return f"it runs float32/float64 CPU tensors only (received {tensor.dtype} on {tensor.device.type})"
    if _extension() is None:
        return "the fused CPU kernels could not be built (see the warning)"
    return None


def apply_cpp_reason(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return _cpp_reason(inputs) or (None if kernel.dtype == inputs.dtype else "the kernel's dtype differs")


def apply_cpp_preference(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return too_few_channels(inputs, groups, data_format, FUSED_MIN_GROUP_CHANNELS, "the in-place path")


def apply_inplace_reason(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return _EXPORTED if exporting() else None


# === Triton kernels (`kernels/triton/`, bound in `torch_triton`) ===
# Imported on first use: Triton reads TRITON_INTERPRET when its kernels are
# decorated, and a CPU-only machine may not have Triton at all.
_TRITON = {}


def _triton():
    """The Triton binding module, or None where Triton cannot be imported."""
    if "module" not in _TRITON:
        if "tensorflow" in sys.modules and "triton" not in sys.modules:
            # Triton's LLVM registers command-line options that TensorFlow's
            # already did: importing it after TensorFlow aborts the process
            # (the other order works, and Keras' PyTorch backend imports
            # Triton, where installed, when it starts).
            _TRITON["module"], _TRITON["error"] = None, "TensorFlow was imported first, and Triton's LLVM aborts then"
            return None
        try:
            from involution.backends import torch_triton

            _TRITON["module"] = torch_triton
        except ImportError as error:
            _TRITON["module"], _TRITON["error"] = None, f"{type(error).__name__}: {error}"
    return _TRITON["module"]


def _triton_reason(*tensors):
    if exporting():
        return _EXPORTED
    module = _triton()
    if module is None:
        return f"Triton cannot be imported ({_TRITON['error']})"
    if tensors[1].dtype != tensors[0].dtype:
        return "the two tensors' dtypes differ"
    return module.device_reason(tensors[0]) or module.size_reason(*tensors)


def apply_triton_reason(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return _triton_reason(inputs, kernel)


def _interpreter_preference(tensor):
    if tensor.device.type == "cpu":
        return "Triton's interpreter runs each program in Python (for tests, not speed)"
    return None


def apply_triton_preference(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return _interpreter_preference(inputs)


def apply_triton(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return _channels_last_apply(_triton().apply, inputs, kernel, kernel_size, stride, dilation, groups,
                                data_format)


def window_correlation_triton_reason(keys, queries, kernel_size, stride, dilation, groups):
    return _triton_reason(keys, queries)


def window_correlation_triton_preference(keys, queries, kernel_size, stride, dilation, groups):
    return _interpreter_preference(keys)


def window_correlation_triton(keys, queries, kernel_size, stride, dilation, groups):
    return _triton().correlate(keys.contiguous(), queries.contiguous(), groups, kernel_size, stride, dilation)


def window_correlation_reason(keys, queries, kernel_size, stride, dilation, groups):
    return _cpp_reason(keys)


def window_correlation(keys, queries, kernel_size, stride, dilation, groups):
    """keys `(B, H, W, C)`, queries `(B, Ho, Wo, C)` -> `(B, Ho, Wo, G*K*K)`:
    per group, each query's dot products with its window of keys (local
    attention's logits), by the fused op."""
    return _correlate_op(keys.contiguous(), queries.contiguous(), groups, kernel_size, stride, dilation)


def batch_norm_aten_reason(inputs, gamma, beta, epsilon):
    return None


def pool_reason(inputs, size, strides, mode, data_format):
    if data_format != "channels_last":
        return "channels_first maps are pooled by Keras' own op, which copies nothing"
    return None


def pool(inputs, size, strides, mode, data_format="channels_last"):
    """Pools a channels-last map through its channels-first view.

    Keras' PyTorch pooling copies a channels-last map to a contiguous
    channels-first tensor and pools that; pooling the permuted view (PyTorch's
    channels-last memory format) takes about half the time, forward and
    backward.
    """
    pooling = F.max_pool2d if mode == "max" else F.avg_pool2d
    return pooling(inputs.permute(0, 3, 1, 2), size, strides).permute(0, 2, 3, 1)


# Each pass over the K*K taps works on a slice of the batch whose output fits
# in the core's L2 cache, so the K*K accumulations hit cache, not memory.
CACHE_BYTES = 2 * 2**20


def _batch_chunks(tensor, per_sample_bytes):
    step = max(1, CACHE_BYTES // max(per_sample_bytes, 1))
    return [slice(start, start + step) for start in range(0, tensor.shape[0], step)]


class GroupedInvolution(torch.autograd.Function):
    """x `(B, G, Cg, H, W)`, kernel `(B, G, K*K, Ho, Wo)` -> `(B, G, Cg, Ho, Wo)`."""

    @staticmethod
    def forward(ctx, x, kernel, kernel_size, stride, dilation):
        pad = padding(kernel_size, dilation)
        out_h, out_w = kernel.shape[-2:]
        padded = F.pad(x, (pad, pad, pad, pad))
        output = x.new_zeros(x.shape[:3] + (out_h, out_w))
        taps = tap_offsets(kernel_size, dilation)
        for chunk in _batch_chunks(output, output[0].numel() * output.element_size()):
            out, xp, w = output[chunk], padded[chunk], kernel[chunk]
            for tap, (row, col) in enumerate(taps):
                out.addcmul_(_window(xp, row, col, stride, out_h, out_w), w[:, :, tap : tap + 1])
        ctx.save_for_backward(x, kernel)
        ctx.geometry = (kernel_size, stride, dilation)
        return output

    @staticmethod
    def backward(ctx, grad):
        x, kernel = ctx.saved_tensors
        kernel_size, stride, dilation = ctx.geometry
        if torch.is_grad_enabled():
            # A higher-order derivative is being taken (`create_graph=True`):
            # the in-place accumulations below are not differentiable, so
            # the gradients come from autograd of the out-of-place forward.
            return (*_differentiable_gradients(x, kernel, grad, ctx), None, None, None)
        pad = padding(kernel_size, dilation)
        out_h, out_w = grad.shape[-2:]
        grad = grad.contiguous()
        padded = F.pad(x, (pad, pad, pad, pad))
        grad_padded = torch.zeros_like(padded) if ctx.needs_input_grad[0] else None
        grad_kernel = torch.empty_like(kernel) if ctx.needs_input_grad[1] else None
        taps = tap_offsets(kernel_size, dilation)
        for chunk in _batch_chunks(grad, 2 * grad[0].numel() * grad.element_size()):
            g, xp, w = grad[chunk], padded[chunk], kernel[chunk]
            product = torch.empty_like(g)
            for tap, (row, col) in enumerate(taps):
                if grad_kernel is not None:
                    torch.mul(g, _window(xp, row, col, stride, out_h, out_w), out=product)
                    torch.sum(product, dim=2, out=grad_kernel[chunk, :, tap])
                if grad_padded is not None:
                    _window(grad_padded[chunk], row, col, stride, out_h, out_w).addcmul_(
                        g, w[:, :, tap : tap + 1]
                    )
        grad_x = None
        if grad_padded is not None:
            grad_x = grad_padded[..., pad : pad + x.shape[-2], pad : pad + x.shape[-1]]
        return grad_x, grad_kernel, None, None, None


def _differentiable_gradients(x, kernel, grad, ctx):
    """`GroupedInvolution`'s gradients as a differentiable function of x, kernel and grad."""
    kernel_size, stride, dilation = ctx.geometry
    pad = padding(kernel_size, dilation)
    out_h, out_w = grad.shape[-2:]
    with torch.enable_grad():
        inputs = [t if t.requires_grad else t.detach().requires_grad_() for t in (x, kernel)]
        padded = F.pad(inputs[0], (pad, pad, pad, pad))
        output = sum(
            _window(padded, row, col, stride, out_h, out_w) * inputs[1][:, :, tap : tap + 1]
            for tap, (row, col) in enumerate(tap_offsets(kernel_size, dilation))
        )
        wanted = [i for i in range(2) if ctx.needs_input_grad[i]]
        grads = torch.autograd.grad(output, [inputs[i] for i in wanted], grad, create_graph=True)
    result = [None, None]
    for i, g in zip(wanted, grads):
        result[i] = g
    return result


def _channels_last_apply(op, inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    """Runs an apply op of contiguous channels-last tensors in either data format."""
    channels_first = data_format == "channels_first"
    if channels_first:
        inputs = inputs.permute(0, 2, 3, 1)
        kernel = kernel.permute(0, 2, 3, 1)
    output = op(inputs.contiguous(), kernel.contiguous(), groups, kernel_size, stride, dilation)
    return output.permute(0, 3, 1, 2) if channels_first else output


def apply_cpp(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return _channels_last_apply(_apply_op, inputs, kernel, kernel_size, stride, dilation, groups, data_format)


def apply_inplace(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    taps = kernel_size * kernel_size
    if data_format == "channels_last":
        # Copies, on purpose: the taps' windows must be contiguous along W for
        # the accumulations to stream (a permuted view would reshape into
        # views with the channel stride innermost, several times slower).
        inputs = inputs.permute(0, 3, 1, 2).contiguous()
        kernel = kernel.permute(0, 3, 1, 2).contiguous()
    else:
        inputs, kernel = inputs.contiguous(), kernel.contiguous()
    batch, channels, height, width = inputs.shape
    out_h, out_w = kernel.shape[-2:]
    x = inputs.reshape(batch, groups, channels // groups, height, width)
    w = kernel.reshape(batch, groups, taps, out_h, out_w)
    output = GroupedInvolution.apply(x, w, kernel_size, stride, dilation)
    output = output.reshape(batch, channels, out_h, out_w)
    if data_format == "channels_last":
        output = output.permute(0, 2, 3, 1)
    return output


def batch_norm_aten(inputs, gamma, beta, epsilon):
    """Training-mode batch normalization over the last axis, one fused op.

    Returns `(outputs, mean, variance)`, the variance biased (Keras'). A
    channels-last map is viewed as `(pixels, channels)`, which PyTorch's
    CPU kernel normalises per column in a couple of passes; Keras' own
    formulation takes about a dozen elementwise passes forward and back.
    """
    channels = inputs.shape[-1]
    outputs, mean, inverse_std = torch.ops.aten.native_batch_norm(
        inputs.reshape(-1, channels), gamma, beta, None, None, True, 0.0, epsilon
    )
    variance = inverse_std.detach().pow(-2) - epsilon
    return outputs.reshape(inputs.shape), mean.detach(), variance
