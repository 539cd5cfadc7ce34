"""The PyTorch binding of the Triton kernels (`kernels/triton/involution.py`).

The apply step, its input gradient and its window correlation as
`torch.library.triton_op`s: `torch.compile` sees through them to the
Triton kernels (no graph break), and `torch.export` keeps them as ops with
their fake implementations (output shapes, `torch_autograd`). Their
autograd is `torch_autograd`'s too: each op's gradients are the other two,
so every order of derivative runs these kernels, and the backward pass
keeps only the input and the kernel.

The kernels run CUDA tensors (ROCm's too, where PyTorch's Triton runs),
and CPU tensors under Triton's interpreter (`TRITON_INTERPRET=1` in the
environment before Triton is first imported), which runs each program in Python:
for tests, not for speed. There the same functions are `custom_op`s (see
`_define`).
"""

import contextlib

import torch
import triton.language as tl
from torch.library import custom_op, triton_op, wrap_triton
from triton.runtime.interpreter import InterpretedFunction

from involution.backends import padding
from involution.backends.torch_autograd import register_bilinear_family
from involution.kernels.triton import involution as kernels

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The kernels index with 32-bit integers.
MAX_ELEMENTS = 2**31 - 1


# Triton decides at decoration time: the interpreter runs only where
# `TRITON_INTERPRET=1` was set before Triton itself was imported (its own
# `triton.language` helpers are decorated functions too).
_INTERPRETED = isinstance(kernels.apply_kernel, InterpretedFunction) and isinstance(tl.zeros, InterpretedFunction)


def interpreted():
    """Whether the kernels were decorated under `TRITON_INTERPRET=1`."""
    return _INTERPRETED


def _define(name):
    """`triton_op` for compiled kernels. Under the interpreter, `custom_op`:
    `triton_op` lets compilers trace into the launches with fake tensors,
    which the interpreter cannot launch on (it reads their memory)."""
    if interpreted():
        return custom_op(name, mutates_args=())
    return triton_op(name, mutates_args=())


def _launch(kernel, kind, first, second, out, pixels, height, width, out_h, out_w, groups, kernel_size, stride,
            dilation):
    if out.numel() == 0:
        return out
    channels = first.shape[3]
    group_channels = channels // groups
    block_p, block_c, num_warps = kernels.block_sizes(kind, pixels, channels, group_channels, interpreted())
    columns = groups if kind == "correlate" else (channels + block_c - 1) // block_c
    grid = ((pixels + block_p - 1) // block_p, columns)
    # Triton launches on the current device: make it the tensors' one where
    # it is not (the common case, and compilers' traces, need no switch).
    other_device = first.device.type == "cuda" and first.device.index not in (None, torch.cuda.current_device())
    with torch.cuda.device(first.device) if other_device else contextlib.nullcontext():
        wrap_triton(kernel)[grid](
            first, second, out, pixels, height, width, channels, out_h, out_w, group_channels, stride, dilation,
            padding(kernel_size, dilation), KERNEL_SIZE=kernel_size,
            ACCUMULATE_FLOAT64=first.dtype == torch.float64, BLOCK_P=block_p, BLOCK_C=block_c,
            num_warps=num_warps,
        )
    return out


@_define("involution::triton_apply")
def apply(x: torch.Tensor, kernel: torch.Tensor, groups: int, kernel_size: int, stride: int,
          dilation: int) -> torch.Tensor:
    batch, height, width, channels = x.shape
    out_h, out_w = kernel.shape[1], kernel.shape[2]
    out = x.new_empty((batch, out_h, out_w, channels))
    return _launch(kernels.apply_kernel, "apply", x, kernel, out, batch * out_h * out_w, height, width, out_h,
                   out_w, groups, kernel_size, stride, dilation)


@_define("involution::triton_input_gradient")
def input_gradient(grad: torch.Tensor, kernel: torch.Tensor, height: int, width: int, groups: int,
                   kernel_size: int, stride: int, dilation: int) -> torch.Tensor:
    batch, out_h, out_w, channels = grad.shape
    out = grad.new_empty((batch, height, width, channels))
    return _launch(kernels.input_gradient_kernel, "input_gradient", grad, kernel, out, batch * height * width,
                   height, width, out_h, out_w, groups, kernel_size, stride, dilation)


@_define("involution::triton_correlate")
def correlate(x: torch.Tensor, grad: torch.Tensor, groups: int, kernel_size: int, stride: int,
              dilation: int) -> torch.Tensor:
    batch, height, width, _ = x.shape
    out_h, out_w = grad.shape[1], grad.shape[2]
    out = x.new_empty((batch, out_h, out_w, groups * kernel_size * kernel_size))
    return _launch(kernels.correlate_kernel, "correlate", x, grad, out, batch * out_h * out_w, height, width,
                   out_h, out_w, groups, kernel_size, stride, dilation)


register_bilinear_family(apply, input_gradient, correlate)


def device_reason(tensor):
    """Why the kernels cannot take `tensor`'s device and dtype, or None."""
    if tensor.device.type == "cpu" and not interpreted():
        return ("Triton runs CUDA/ROCm tensors, and CPU tensors only under its interpreter (TRITON_INTERPRET=1 "
                "in the environment before Triton is first imported)")
    if tensor.device.type not in ("cuda", "cpu"):
        return f"Triton runs CUDA/ROCm tensors (received a {tensor.device.type} tensor)"
    if tensor.dtype not in DTYPES:
        return f"it runs float16/bfloat16/float32/float64 tensors (received {tensor.dtype})"
    if tensor.device.type == "cpu" and tensor.dtype == torch.bfloat16:
        return "Triton's interpreter has no bfloat16 arithmetic"
    return None


def size_reason(*tensors):
    if any(t.numel() > MAX_ELEMENTS for t in tensors):
        return f"a tensor has over {MAX_ELEMENTS} elements (the kernels index with 32-bit integers)"
    return None
