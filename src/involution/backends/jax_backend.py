"""The JAX fast path: `jax.custom_vjp` + XLA fusion of shift-and-accumulate."""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from involution.backends import tap_offsets


def _window(padded, row, col, stride, out_h, out_w):
    return lax.slice(
        padded,
        (0, 0, 0, row, col),
        (padded.shape[0], padded.shape[1], padded.shape[2],
         row + (out_h - 1) * stride + 1, col + (out_w - 1) * stride + 1),
        (1, 1, 1, stride, stride),
    )


def _pad(x, pad):
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad, pad), (pad, pad)))


def _forward(x, kernel, kernel_size, stride, dilation):
    pad = dilation * (kernel_size - 1) // 2
    out_h, out_w = kernel.shape[-2:]
    padded = _pad(x, pad)
    output = None
    for tap, (row, col) in enumerate(tap_offsets(kernel_size, dilation)):
        term = _window(padded, row, col, stride, out_h, out_w) * kernel[:, :, tap : tap + 1]
        output = term if output is None else output + term
    return output


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def grouped_involution(x, kernel, kernel_size, stride, dilation):
    """x `(B, G, Cg, H, W)`, kernel `(B, G, K*K, Ho, Wo)` -> `(B, G, Cg, Ho, Wo)`."""
    return _forward(x, kernel, kernel_size, stride, dilation)


def _grouped_involution_fwd(x, kernel, kernel_size, stride, dilation):
    return _forward(x, kernel, kernel_size, stride, dilation), (x, kernel)


def _grouped_involution_bwd(kernel_size, stride, dilation, residuals, grad):
    x, kernel = residuals
    pad = dilation * (kernel_size - 1) // 2
    height, width = x.shape[-2:]
    out_h, out_w = grad.shape[-2:]
    padded = _pad(x, pad)
    padded_h, padded_w = padded.shape[-2:]
    grad_kernel = []
    grad_padded = None
    for tap, (row, col) in enumerate(tap_offsets(kernel_size, dilation)):
        window = _window(padded, row, col, stride, out_h, out_w)
        grad_kernel.append(jnp.sum(grad * window, axis=2))
        # The tap's contribution lands on a strided grid of the padded input:
        # interior padding spreads it, edge padding places it. XLA fuses
        # these pads and adds into one pass.
        contribution = lax.pad(
            grad * kernel[:, :, tap : tap + 1],
            jnp.zeros((), grad.dtype),
            ((0, 0, 0), (0, 0, 0), (0, 0, 0),
             (row, padded_h - row - (out_h - 1) * stride - 1, stride - 1),
             (col, padded_w - col - (out_w - 1) * stride - 1, stride - 1)),
        )
        grad_padded = contribution if grad_padded is None else grad_padded + contribution
    grad_x = grad_padded[..., pad : pad + height, pad : pad + width]
    return grad_x, jnp.stack(grad_kernel, axis=2)


grouped_involution.defvjp(_grouped_involution_fwd, _grouped_involution_bwd)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def involution_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    taps = kernel_size * kernel_size
    if data_format == "channels_last":
        inputs = jnp.transpose(inputs, (0, 3, 1, 2))
        kernel = jnp.transpose(kernel, (0, 3, 1, 2))
    batch, channels, height, width = inputs.shape
    out_h, out_w = kernel.shape[-2:]
    x = inputs.reshape(batch, groups, channels // groups, height, width)
    w = kernel.reshape(batch, groups, taps, out_h, out_w)
    output = grouped_involution(x, w, kernel_size, stride, dilation)
    output = output.reshape(batch, channels, out_h, out_w)
    if data_format == "channels_last":
        output = jnp.transpose(output, (0, 2, 3, 1))
    return output
