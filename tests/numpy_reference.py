"""Independent float64 NumPy references for the involution layer.

These are written per output pixel (a gather of the pixel's window), unlike
the library's shift-and-accumulate, so that the two formulations check each
other.
"""

import math

import numpy as np


def to_channels_last(x, data_format):
    return x if data_format == "channels_last" else np.moveaxis(x, 1, -1)


def from_channels_last(x, data_format):
    return x if data_format == "channels_last" else np.moveaxis(x, -1, 1)


def involution_apply(x, kernel, kernel_size, stride, dilation, groups, data_format):
    """Apply step; `kernel` in generator layout, group-major channels."""
    x = to_channels_last(np.asarray(x, np.float64), data_format)
    kernel = to_channels_last(np.asarray(kernel, np.float64), data_format)
    batch, height, width, channels = x.shape
    pad = dilation * (kernel_size - 1) // 2
    out_h = (height + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1
    out_w = (width + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1
    assert kernel.shape == (batch, out_h, out_w, groups * kernel_size**2)
    padded = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    group_of_channel = np.arange(channels) // (channels // groups)
    kernel = kernel.reshape(batch, out_h, out_w, groups, kernel_size, kernel_size)
    out = np.zeros((batch, out_h, out_w, channels))
    span = dilation * (kernel_size - 1) + 1
    for i in range(out_h):
        for j in range(out_w):
            window = padded[
                :,
                i * stride : i * stride + span : dilation,
                j * stride : j * stride + span : dilation,
                :,
            ]  # (batch, K, K, C)
            weights = kernel[:, i, j][:, group_of_channel]  # (batch, C, K, K)
            out[:, i, j] = np.einsum("bklc,bckl->bc", window, weights)
    return from_channels_last(out, data_format)


def involution_apply_gradients(x, kernel, upstream, kernel_size, stride, dilation, groups):
    """Gradients of `sum(involution_apply(x, kernel) * upstream)` (channels
    last): the input's scatters each window's weighted upstream back to the
    window, the kernel's sums window * upstream over a group's channels."""
    x, kernel, upstream = (np.asarray(a, np.float64) for a in (x, kernel, upstream))
    batch, height, width, channels = x.shape
    _, out_h, out_w, _ = upstream.shape
    pad = dilation * (kernel_size - 1) // 2
    span = dilation * (kernel_size - 1) + 1
    padded = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    grad_padded = np.zeros_like(padded)
    group_of_channel = np.arange(channels) // (channels // groups)
    kernel = kernel.reshape(batch, out_h, out_w, groups, kernel_size, kernel_size)
    grad_kernel = np.zeros_like(kernel)
    for i in range(out_h):
        for j in range(out_w):
            rows = slice(i * stride, i * stride + span, dilation)
            cols = slice(j * stride, j * stride + span, dilation)
            weights = kernel[:, i, j][:, group_of_channel]  # (batch, C, K, K)
            grad_padded[:, rows, cols, :] += np.einsum("bckl,bc->bklc", weights, upstream[:, i, j])
            products = np.einsum("bklc,bc->bckl", padded[:, rows, cols, :], upstream[:, i, j])
            for group in range(groups):
                grad_kernel[:, i, j, group] = products[:, group_of_channel == group].sum(axis=1)
    grad_x = grad_padded[:, pad : pad + height, pad : pad + width]
    return grad_x, grad_kernel.reshape(batch, out_h, out_w, -1)


def pool_with_gradient(x, size, stride, mode, upstream):
    """"valid" max or average pooling (NHWC) and the gradient of
    `sum(pool(x) * upstream)`: a max window sends its upstream to its
    largest pixel, an average window spreads it evenly."""
    x, upstream = np.asarray(x, np.float64), np.asarray(upstream, np.float64)
    batch, height, width, channels = x.shape
    out_h, out_w = (height - size) // stride + 1, (width - size) // stride + 1
    out = np.zeros((batch, out_h, out_w, channels))
    grad = np.zeros_like(x)
    for i in range(out_h):
        for j in range(out_w):
            rows, cols = slice(i * stride, i * stride + size), slice(j * stride, j * stride + size)
            window = x[:, rows, cols, :].reshape(batch, size * size, channels)
            if mode == "max":
                out[:, i, j] = window.max(axis=1)
                winner = np.eye(size * size)[window.argmax(axis=1)]  # (batch, channels, taps)
                share = np.moveaxis(winner, -1, 1).reshape(batch, size, size, channels)
            else:
                out[:, i, j] = window.mean(axis=1)
                share = np.full((batch, size, size, channels), 1.0 / (size * size))
            grad[:, rows, cols, :] += share * upstream[:, i : i + 1, j : j + 1, :]
    return out, grad


def average_pool_same(x, size):
    """TensorFlow-style "same" average pooling, padding excluded (NHWC)."""
    batch, height, width, channels = x.shape
    out_h, out_w = math.ceil(height / size), math.ceil(width / size)
    top = (out_h * size - height) // 2
    left = (out_w * size - width) // 2
    out = np.zeros((batch, out_h, out_w, channels))
    for i in range(out_h):
        r0, r1 = max(i * size - top, 0), min(i * size - top + size, height)
        for j in range(out_w):
            c0, c1 = max(j * size - left, 0), min(j * size - left + size, width)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def kernel_generator(x, weights, stride, epsilon, normalization="batch"):
    """Pool, 1x1 conv, normalization, ReLU, 1x1 conv (NHWC).

    `weights`: the 1x1 convolutions' kernels and biases around the
    normalization's (batch: gamma, beta, moving mean and variance, used as in
    inference; layer: gamma, beta; None: nothing).
    """
    weights = [np.asarray(w, np.float64) for w in weights]
    (w1, b1), norm_weights, (w2, b2) = weights[:2], weights[2:-2], weights[-2:]
    if stride > 1:
        x = average_pool_same(x, stride)
    h = x @ w1.reshape(w1.shape[-2:]) + b1
    if normalization == "batch":
        gamma, beta, mean, var = norm_weights
        h = (h - mean) / np.sqrt(var + epsilon) * gamma + beta
    elif normalization == "layer":
        gamma, beta = norm_weights
        mean = h.mean(axis=-1, keepdims=True)
        var = ((h - mean) ** 2).mean(axis=-1, keepdims=True)
        h = (h - mean) / np.sqrt(var + epsilon) * gamma + beta
    h = np.maximum(h, 0.0)
    return h @ w2.reshape(w2.shape[-2:]) + b2


def involution_layer(layer, x):
    """The whole layer in inference mode, from the layer's own weights."""
    gen = layer.kernel_generator
    weights = [
        gen.reduce.kernel, gen.reduce.bias,
        gen.norm.gamma, gen.norm.beta, gen.norm.moving_mean, gen.norm.moving_variance,
        gen.span.kernel, gen.span.bias,
    ]
    weights = [np.asarray(w) for w in weights]
    x = to_channels_last(np.asarray(x, np.float64), layer.data_format)
    kernel = kernel_generator(x, weights, layer.stride, gen.norm.epsilon)
    out = involution_apply(
        x, kernel, layer.kernel_size, layer.stride, layer.dilation,
        layer.group_number, "channels_last",
    )
    return from_channels_last(out, layer.data_format), kernel
