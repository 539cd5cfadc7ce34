"""The PyTorch fast path: fused C++ kernels on the CPU, in-place taps elsewhere.

On the CPU (float32/float64) the apply step and its gradients are three
fused loops (`involution_cpu.cpp`), compiled with PyTorch's extension
builder the first time they are needed (about half a minute, then cached by
PyTorch per machine): one pass over memory instead of one per kernel tap.
The kernel-gradient loop also computes local attention's query-key logits
(`WindowCorrelation`, used by `involution.attention`).

Elsewhere (GPU tensors, half precision, or where no C++ compiler is found)
an autograd Function of in-place accumulations runs instead: Keras runs
PyTorch eagerly, so every tap is one kernel launch; the Function keeps them
in place (`addcmul_` into one output buffer, into strided views of one
gradient buffer) so that no `K*K` temporaries are made or stored for the
backward pass.
"""

import functools
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from involution.backends import native, tap_offsets
from involution.backends import window as _window

# Set to 0 to skip building the C++ kernels (the in-place path runs instead).
EXTENSION_ENV = "INVOLUTION_TORCH_EXTENSION"
# The C++ kernels vectorise over a group's channels, 8 at a time; with fewer
# channels per group (the Keras example's 3) the in-place path, which
# vectorises along image rows, is faster.
FUSED_MIN_GROUP_CHANNELS = 8
_SOURCE = Path(__file__).with_name("involution_cpu.cpp")


@functools.lru_cache(maxsize=None)
def _extension():
    """The compiled CPU kernels, or None where they cannot be built."""
    if os.environ.get(EXTENSION_ENV, "1") == "0":
        return None
    try:
        from torch.utils import cpp_extension

        return cpp_extension.load(
            name=f"involution_cpu_{native.build_key(_SOURCE)}",
            sources=[str(_SOURCE)],
            extra_cflags=native.CXX_FLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a build error...
        warnings.warn(
            f"involution: the fused CPU kernels could not be built ({type(error).__name__}: {error}); "
            f"using the slower in-place PyTorch path. Set {EXTENSION_ENV}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


class FusedInvolution(torch.autograd.Function):
    """x `(B, H, W, C)`, kernel `(B, Ho, Wo, G*K*K)` -> `(B, Ho, Wo, C)`, contiguous, CPU."""

    @staticmethod
    def forward(ctx, x, kernel, groups, kernel_size, stride, dilation):
        ctx.save_for_backward(x, kernel)
        ctx.geometry = (groups, kernel_size, stride, dilation)
        return _extension().forward(x, kernel, groups, kernel_size, stride, dilation)

    @staticmethod
    def backward(ctx, grad):
        x, kernel = ctx.saved_tensors
        grad_x, grad_kernel = _extension().backward(
            grad.contiguous(), x, kernel, *ctx.geometry, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return grad_x, grad_kernel, None, None, None, None


class WindowCorrelation(torch.autograd.Function):
    """keys `(B, H, W, C)`, queries `(B, Ho, Wo, C)` -> `(B, Ho, Wo, G*K*K)`:
    per group, each query's dot products with its window of keys (local
    attention's logits). The correlation is the apply step's kernel
    gradient, so its own gradients are the apply step (for the queries) and
    the apply step's input gradient (for the keys)."""

    @staticmethod
    def forward(ctx, keys, queries, groups, kernel_size, stride, dilation):
        ctx.save_for_backward(keys, queries)
        ctx.geometry = (groups, kernel_size, stride, dilation)
        return _extension().correlate(keys, queries, groups, kernel_size, stride, dilation)

    @staticmethod
    def backward(ctx, grad):
        keys, queries = ctx.saved_tensors
        grad = grad.contiguous()
        grad_keys = grad_queries = None
        if ctx.needs_input_grad[0]:
            grad_keys = _extension().backward(queries, keys, grad, *ctx.geometry, True, False)[0]
        if ctx.needs_input_grad[1]:
            grad_queries = _extension().forward(keys, grad, *ctx.geometry)
        return grad_keys, grad_queries, None, None, None, None


def window_correlation(keys, queries, kernel_size, stride, dilation, groups):
    """`WindowCorrelation` where the C++ kernels apply (CPU, float32/64), else None."""
    if keys.device.type != "cpu" or keys.dtype not in (torch.float32, torch.float64) or _extension() is None:
        return None
    return WindowCorrelation.apply(keys.contiguous(), queries.contiguous(), groups, kernel_size, stride, dilation)


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
        pad = dilation * (kernel_size - 1) // 2
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
        pad = dilation * (kernel_size - 1) // 2
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


def involution_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    channel_axis = -1 if data_format == "channels_last" else 1
    if (
        inputs.device.type == "cpu"
        and inputs.dtype in (torch.float32, torch.float64)
        and inputs.shape[channel_axis] // groups >= FUSED_MIN_GROUP_CHANNELS
        and _extension() is not None
    ):
        return fused_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format)
    return inplace_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format)


def fused_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    channels_first = data_format == "channels_first"
    if channels_first:
        inputs = inputs.permute(0, 2, 3, 1)
        kernel = kernel.permute(0, 2, 3, 1)
    output = FusedInvolution.apply(
        inputs.contiguous(), kernel.contiguous(), groups, kernel_size, stride, dilation
    )
    return output.permute(0, 3, 1, 2) if channels_first else output


def inplace_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
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


def batch_norm_training(inputs, gamma, beta, epsilon):
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
