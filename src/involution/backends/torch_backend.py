"""The PyTorch fast path: an autograd Function of in-place accumulations.

Keras runs PyTorch eagerly, so every tap is one kernel launch; the Function
keeps them in place (`addcmul_` into one output buffer, into strided views
of one gradient buffer) so that no `K*K` temporaries are made or stored for
the backward pass.
"""

import torch
import torch.nn.functional as F

from involution.backends import tap_offsets


def _window(padded, row, col, stride, out_h, out_w):
    return padded[
        ..., row : row + (out_h - 1) * stride + 1 : stride, col : col + (out_w - 1) * stride + 1 : stride
    ]


class GroupedInvolution(torch.autograd.Function):
    """x `(B, G, Cg, H, W)`, kernel `(B, G, K*K, Ho, Wo)` -> `(B, G, Cg, Ho, Wo)`."""

    @staticmethod
    def forward(ctx, x, kernel, kernel_size, stride, dilation):
        pad = dilation * (kernel_size - 1) // 2
        out_h, out_w = kernel.shape[-2:]
        padded = F.pad(x, (pad, pad, pad, pad))
        output = x.new_zeros(x.shape[:3] + (out_h, out_w))
        for tap, (row, col) in enumerate(tap_offsets(kernel_size, dilation)):
            output.addcmul_(_window(padded, row, col, stride, out_h, out_w), kernel[:, :, tap : tap + 1])
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
        for tap, (row, col) in enumerate(tap_offsets(kernel_size, dilation)):
            if grad_kernel is not None:
                window = _window(padded, row, col, stride, out_h, out_w)
                torch.sum(grad * window, dim=2, out=grad_kernel[:, :, tap])
            if grad_padded is not None:
                _window(grad_padded, row, col, stride, out_h, out_w).addcmul_(
                    grad, kernel[:, :, tap : tap + 1]
                )
        grad_x = None
        if grad_padded is not None:
            grad_x = grad_padded[..., pad : pad + x.shape[-2], pad : pad + x.shape[-1]]
        return grad_x, grad_kernel, None, None, None


def involution_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    taps = kernel_size * kernel_size
    if data_format == "channels_last":
        inputs = inputs.permute(0, 3, 1, 2)
        kernel = kernel.permute(0, 3, 1, 2)
    batch, channels, height, width = inputs.shape
    out_h, out_w = kernel.shape[-2:]
    x = inputs.reshape(batch, groups, channels // groups, height, width)
    w = kernel.reshape(batch, groups, taps, out_h, out_w)
    output = GroupedInvolution.apply(x, w, kernel_size, stride, dilation)
    output = output.reshape(batch, channels, out_h, out_w)
    if data_format == "channels_last":
        output = output.permute(0, 2, 3, 1)
    return output
