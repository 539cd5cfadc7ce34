"""The PyTorch fast path: an autograd Function of in-place accumulations.

Keras runs PyTorch eagerly, so every tap is one kernel launch; the Function
keeps them in place (`addcmul_` into one output buffer, into strided views
of one gradient buffer) so that no `K*K` temporaries are made or stored for
the backward pass.
"""

import torch
import torch.nn.functional as F

from involution.backends import tap_offsets
from involution.backends import window as _window


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
