"""The TensorFlow fast path: `tf.custom_gradient` compiled with XLA.

Keras does not XLA-compile training on CPU-only TensorFlow, so the apply
step compiles itself (`jit_compile=True`): XLA fuses the shift-and-accumulate
loop into a few passes over memory.
"""

import functools

import tensorflow as tf

from involution.backends import tap_offsets
from involution.backends import window as _window


def _spread(values, stride, axis):
    """Inserts `stride - 1` zeros between neighbours along `axis` (-1 or -2)."""
    if stride == 1:
        return values
    shape = tf.shape(values)
    size = shape[axis]
    # (..., n) -> (..., n, stride) for columns, (..., n, w) -> (..., n, stride, w)
    # for rows; the zeros follow each value, then the trailing ones are cut.
    values = tf.expand_dims(values, axis=-1 if axis == -1 else -2)
    paddings = [[0, 0]] * 6
    paddings[-1 if axis == -1 else -2] = [0, stride - 1]
    values = tf.pad(values, paddings)
    if axis == -1:
        values = tf.reshape(values, tf.concat([shape[:-1], [size * stride]], 0))
        return values[..., : (size - 1) * stride + 1]
    values = tf.reshape(values, tf.concat([shape[:-2], [size * stride], shape[-1:]], 0))
    return values[..., : (size - 1) * stride + 1, :]


def _grouped_involution(kernel_size, stride, dilation):
    pad = dilation * (kernel_size - 1) // 2
    paddings = [[0, 0], [0, 0], [0, 0], [pad, pad], [pad, pad]]

    @tf.custom_gradient
    def apply(x, kernel):
        out_h, out_w = tf.shape(kernel)[3], tf.shape(kernel)[4]
        padded = tf.pad(x, paddings)
        output = None
        for tap, (row, col) in enumerate(tap_offsets(kernel_size, dilation)):
            term = _window(padded, row, col, stride, out_h, out_w) * kernel[:, :, tap : tap + 1]
            output = term if output is None else output + term

        def grad(upstream):
            grad_kernel = []
            grad_padded = None
            padded_h, padded_w = tf.shape(padded)[3], tf.shape(padded)[4]
            for tap, (row, col) in enumerate(tap_offsets(kernel_size, dilation)):
                window = _window(padded, row, col, stride, out_h, out_w)
                grad_kernel.append(tf.reduce_sum(upstream * window, axis=2))
                spread = _spread(_spread(upstream * kernel[:, :, tap : tap + 1], stride, -1), stride, -2)
                placed = tf.pad(spread, [
                    [0, 0], [0, 0], [0, 0],
                    [row, padded_h - row - (out_h - 1) * stride - 1],
                    [col, padded_w - col - (out_w - 1) * stride - 1],
                ])
                grad_padded = placed if grad_padded is None else grad_padded + placed
            height, width = tf.shape(x)[3], tf.shape(x)[4]
            grad_x = grad_padded[..., pad : pad + height, pad : pad + width]
            return grad_x, tf.stack(grad_kernel, axis=2)

        return output, grad

    return apply


@functools.lru_cache(maxsize=None)
def _compiled(kernel_size, stride, dilation, groups, data_format):
    grouped = _grouped_involution(kernel_size, stride, dilation)
    taps = kernel_size * kernel_size

    @tf.function(jit_compile=True)
    def apply(inputs, kernel):
        if data_format == "channels_last":
            inputs = tf.transpose(inputs, (0, 3, 1, 2))
            kernel = tf.transpose(kernel, (0, 3, 1, 2))
        shape = tf.shape(inputs)
        kernel_shape = tf.shape(kernel)
        channels = inputs.shape[1]
        x = tf.reshape(inputs, [shape[0], groups, channels // groups, shape[2], shape[3]])
        w = tf.reshape(kernel, [shape[0], groups, taps, kernel_shape[2], kernel_shape[3]])
        output = grouped(x, w)
        output = tf.reshape(output, [shape[0], channels, kernel_shape[2], kernel_shape[3]])
        if data_format == "channels_last":
            output = tf.transpose(output, (0, 2, 3, 1))
        return output

    return apply


def involution_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return _compiled(kernel_size, stride, dilation, groups, data_format)(inputs, kernel)
