"""The TensorFlow kernels of the registry: fused C++ ops on the CPU, else XLA.

Three kernels of the apply step, which `involution.registry.choose` tries
in this order per traced call:

- `"tensorflow-cpp"`: on CPU-only TensorFlow, for float32/float64 and at least 8
  channels per group, the apply step
  and its two gradients are the fused loops of `involution_kernels.h` (the
  PyTorch and JAX backends' loops) as TensorFlow ops (`involution_tf.cpp`,
  compiled on first use into the private kernel cache), each registered as
  the others' gradient, so derivatives of any order run them. TensorFlow's
  own autodiff of the taps costs several passes over memory per tap.
- `"tensorflow-xla"`: elsewhere (GPUs, half precision, no C++ compiler) the apply
  step compiles itself (`jit_compile=True`), since Keras does not
  XLA-compile training on CPU-only TensorFlow: XLA fuses the
  shift-and-accumulate loop into a few passes over memory.
- `"tensorflow-grouped"`: plain TensorFlow ops, inside an XLA-compiled caller (which
  compiles them with everything else; neither a custom op nor a nested
  cluster can be), in the graphs that exporters trace (so that artifacts
  run without this package, ONNX included), and under forward mode where
  the C++ ops are not available.

The XLA and plain forms work channels-last, in the grouped layout
`(B, H, W, G, C/G)`: XLA's CPU loops vectorise the innermost (channel) axis
well, and `channels_last` inputs, the Keras default, then need no
transposes, which on small feature maps cost as much as the apply step
(measured 1.2-2x faster than a grouped channels-first version on
CIFAR-sized maps, see `docs/design.md`).
"""

import functools
import os
import sys
import warnings
from pathlib import Path

import tensorflow as tf

# Private, but the only way to ask whether the current graph is compiled by
# XLA or carries tangents (listed in docs/design.md); `_compiled_or_exported_graph`
# and `apply_xla_reason` are their only users.
from tensorflow.python.eager import forwardprop_util
from tensorflow.python.ops import control_flow_util

from involution import switches
from involution.backends import native, padding, pair, tap_offsets, too_few_channels

# Set to 0 to skip building the C++ ops (the XLA path runs instead).
NATIVE_ENV = "INVOLUTION_TF_NATIVE"
_NATIVE_SOURCE = Path(__file__).with_name("involution_tf.cpp")
_GEOMETRY = ("groups", "kernel_size", "stride", "dilation")

# Spatial axes of the grouped channels-last layout (B, H, W, G, C/G).
_ROWS, _COLS = 1, 2


def _window(padded, row, col, stride, out_h, out_w):
    """The strided `(B, out_h, out_w, G, C/G)` view one tap reads."""
    return padded[
        :, row : row + (out_h - 1) * stride + 1 : stride, col : col + (out_w - 1) * stride + 1 : stride
    ]


def _spread(values, stride, axis):
    """Inserts `stride - 1` zeros after every element along spatial `axis`."""
    if stride == 1:
        return values
    shape = tf.shape(values)
    size = shape[axis]
    values = tf.expand_dims(values, axis + 1)
    paddings = [[0, 0]] * 6
    paddings[axis + 1] = [0, stride - 1]
    values = tf.pad(values, paddings)
    merged = tf.concat([shape[:axis], [size * stride], shape[axis + 1 :]], 0)
    values = tf.reshape(values, merged)
    keep = (size - 1) * stride + 1
    return values[:, :keep] if axis == _ROWS else values[:, :, :keep]


def _pad_spatial(values, before, after):
    return tf.pad(values, [[0, 0], [before[0], after[0]], [before[1], after[1]], [0, 0], [0, 0]])


def _input_gradient_gather(upstream, kernel, offsets, pad):
    """Stride 1: input pixel `i` is read through tap `(row, col)` by output
    pixel `i + pad - (row, col)`, so the input gradient sums one shifted
    window of `upstream * kernel` per tap, the forward pass's shape (one fused
    loop) instead of a padded copy of the input per tap."""
    height, width = tf.shape(upstream)[1], tf.shape(upstream)[2]
    upstream_padded = _pad_spatial(upstream, (pad, pad), (pad, pad))
    kernel_padded = _pad_spatial(kernel, (pad, pad), (pad, pad))
    grad_x = None
    for tap, (row, col) in enumerate(offsets):
        start = (2 * pad - row, 2 * pad - col)
        term = (_window(upstream_padded, *start, 1, height, width)
                * _window(kernel_padded[..., tap : tap + 1], *start, 1, height, width))
        grad_x = term if grad_x is None else grad_x + term
    return grad_x


def _input_gradient_scatter(upstream, kernel, offsets, pad, stride, x_shape):
    """Any stride: each tap's contribution, spread to the stride's grid, is
    placed on the padded input by edge padding."""
    out_h, out_w = tf.shape(upstream)[1], tf.shape(upstream)[2]
    height, width = x_shape[1], x_shape[2]
    grad_padded = None
    for tap, (row, col) in enumerate(offsets):
        spread = _spread(_spread(upstream * kernel[..., tap : tap + 1], stride, _ROWS), stride, _COLS)
        placed = _pad_spatial(
            spread,
            (row, col),
            (height + 2 * pad - row - (out_h - 1) * stride - 1, width + 2 * pad - col - (out_w - 1) * stride - 1),
        )
        grad_padded = placed if grad_padded is None else grad_padded + placed
    return grad_padded[:, pad : pad + height, pad : pad + width]


def _grouped_involution(kernel_size, stride, dilation):
    pad = padding(kernel_size, dilation)
    offsets = tap_offsets(kernel_size, dilation)

    @tf.custom_gradient
    def apply(x, kernel):
        # x: (B, H, W, G, C/G); kernel: (B, Ho, Wo, G, K*K).
        out_h, out_w = tf.shape(kernel)[1], tf.shape(kernel)[2]
        padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0], [0, 0]])
        output = None
        for tap, (row, col) in enumerate(offsets):
            term = _window(padded, row, col, stride, out_h, out_w) * kernel[..., tap : tap + 1]
            output = term if output is None else output + term

        def grad(upstream):
            # Recomputes the windows from `padded` instead of storing them.
            grad_kernel = [
                tf.reduce_sum(upstream * _window(padded, row, col, stride, out_h, out_w), axis=-1)
                for row, col in offsets
            ]
            if stride == 1:
                grad_x = _input_gradient_gather(upstream, kernel, offsets, pad)
            else:
                grad_x = _input_gradient_scatter(upstream, kernel, offsets, pad, stride, tf.shape(x))
            return grad_x, tf.stack(grad_kernel, axis=-1)

        return output, grad

    return apply


def _grouped_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    grouped = _grouped_involution(kernel_size, stride, dilation)
    taps = kernel_size * kernel_size
    if data_format == "channels_first":
        inputs = tf.transpose(inputs, (0, 2, 3, 1))
        kernel = tf.transpose(kernel, (0, 2, 3, 1))
    shape = tf.shape(inputs)
    kernel_shape = tf.shape(kernel)
    channels = inputs.shape[-1]
    x = tf.reshape(inputs, [shape[0], shape[1], shape[2], groups, channels // groups])
    w = tf.reshape(kernel, [shape[0], kernel_shape[1], kernel_shape[2], groups, taps])
    output = grouped(x, w)
    output = tf.reshape(output, [shape[0], kernel_shape[1], kernel_shape[2], channels])
    if data_format == "channels_first":
        output = tf.transpose(output, (0, 3, 1, 2))
    return output


@functools.lru_cache(maxsize=None)
def _compiled(kernel_size, stride, dilation, groups, data_format):
    """`_grouped_apply` as its own XLA cluster, for one geometry."""
    return tf.function(
        functools.partial(
            _grouped_apply, kernel_size=kernel_size, stride=stride, dilation=dilation, groups=groups,
            data_format=data_format,
        ),
        jit_compile=True,
        autograph=False,
    )


@functools.lru_cache(maxsize=None)
def _native_ops():
    """Builds and loads the C++ ops once; None where they cannot be."""
    if os.environ.get(NATIVE_ENV, "1") == "0":
        return None
    try:
        compile_flags = tf.sysconfig.get_compile_flags()
        includes = [flag[2:] for flag in compile_flags if flag.startswith("-I")]
        # The framework's version is part of the build's key: its headers' ABI.
        flags = [flag for flag in compile_flags if not flag.startswith("-I")] + tf.sysconfig.get_link_flags()
        flags.append(f"-DINVOLUTION_TENSORFLOW_VERSION={tf.__version__}")
        # The Eigen that TensorFlow ships does not compile with AVX512-FP16
        # enabled (`predux_half_dowto4` is specialised before it is declared);
        # the loops use no half-precision vectors anyway.
        library = native.shared_library(_NATIVE_SOURCE, includes, flags=flags,
                                        disable_if_defined={"__AVX512FP16__": "-mno-avx512fp16"})
        operations = tf.load_op_library(str(library))
    except Exception as error:  # no compiler, a build error, missing headers...
        warnings.warn(
            f"involution: the fused CPU kernels could not be built for TensorFlow ({type(error).__name__}: "
            f"{error}); using XLA's path. Set {NATIVE_ENV}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    _register_gradients(operations)
    return operations


def _register_gradients(operations):
    # The apply step A(x, kernel) and its gradients Gx(grad, kernel, size)
    # and Gk(x, grad) are bilinear, and each one's gradient is made of the
    # other two (as in the JAX backend):
    #   A:  x <- Gx(ct, kernel)     kernel <- Gk(x, ct)
    #   Gx: grad <- A(ct, kernel)   kernel <- Gk(ct, grad)
    #   Gk: x <- Gx(grad, ct)       grad <- A(x, ct)
    def geometry(op):
        return {name: op.get_attr(name) for name in _GEOMETRY}

    def size(x):
        return tf.shape(x, out_type=tf.int32)[1:3]

    @tf.RegisterGradient("InvolutionApply")
    def _apply_gradient(op, ct):
        x, kernel = op.inputs
        return (operations.involution_input_gradient(ct, kernel, size(x), **geometry(op)),
                operations.involution_correlate(x, ct, **geometry(op)))

    @tf.RegisterGradient("InvolutionInputGradient")
    def _input_gradient_gradient(op, ct):
        grad, kernel, _ = op.inputs
        return (operations.involution_apply(ct, kernel, **geometry(op)),
                operations.involution_correlate(ct, grad, **geometry(op)), None)

    @tf.RegisterGradient("InvolutionCorrelate")
    def _correlate_gradient(op, ct):
        x, grad = op.inputs
        return (operations.involution_input_gradient(grad, ct, size(x), **geometry(op)),
                operations.involution_apply(x, ct, **geometry(op)))

    # Pooling by tiles: the pooled map's gradient is the gradient op; that
    # op is linear in its output gradient and piecewise constant in the
    # input (max pooling routes each tile's gradient to its first maximum),
    # so its own gradient is pooling again: average pooling of the
    # cotangent, or its sum over each tile where max pooling routed.
    @tf.RegisterGradient("InvolutionPool")
    def _pool_gradient(op, ct):
        return operations.involution_pool_grad(op.inputs[0], op.outputs[0], ct, size=op.get_attr("size"),
                                               mode=op.get_attr("mode"))

    @tf.RegisterGradient("InvolutionPoolGrad")
    def _pool_grad_gradient(op, ct):
        x, y, grad = op.inputs
        size, mode = op.get_attr("size"), op.get_attr("mode")
        if mode == b"max" or mode == "max":
            routed = operations.involution_pool_grad(x, y, tf.ones_like(grad), size=size, mode="max")
            ct = ct * routed * float(size * size)
        return None, None, operations.involution_pool(ct, size=size, mode="average")

    # Batch normalization: the mean and variance outputs leave the graph
    # through `tf.stop_gradient` (they feed only the moving statistics), so
    # their cotangents are zero and the forward op's gradient is the fused
    # gradient op's. That op's own gradient (second order and beyond) is
    # the plain-op formulation's, differentiated by TensorFlow.
    @tf.RegisterGradient("InvolutionBatchNorm")
    def _batch_norm_gradient(op, ct, _mean_ct, _variance_ct):
        x, gamma, _ = op.inputs
        _, mean, variance = op.outputs
        return operations.involution_batch_norm_grad(ct, x, gamma, mean, variance, epsilon=op.get_attr("epsilon"))

    @tf.RegisterGradient("InvolutionBatchNormGrad")
    def _batch_norm_grad_gradient(op, *cts):
        upstream, x, gamma, _, _ = op.inputs
        epsilon = op.get_attr("epsilon")
        with tf.GradientTape() as tape:
            tape.watch([upstream, x, gamma])
            outputs = _batch_norm_input_gradients(upstream, x, gamma, epsilon)
        cts = [tf.zeros_like(output) if ct is None else ct for ct, output in zip(cts, outputs)]
        grads = tape.gradient(outputs, [upstream, x, gamma], output_gradients=cts)
        return (*grads, None, None)


@functools.lru_cache(maxsize=None)
def _cpu_only():
    return not tf.config.list_logical_devices("GPU")


def _native_op_support(inputs, portable):
    """Why this package's C++ ops cannot take `inputs` here, or None;
    `portable` names what runs instead in compiled and exported graphs."""
    if tf.as_dtype(inputs.dtype) not in (tf.float32, tf.float64) or not _cpu_only():
        return f"it runs float32/float64 on CPU-only TensorFlow (received {tf.as_dtype(inputs.dtype).name})"
    if _compiled_or_exported_graph():
        return f"XLA-compiled and exported graphs get {portable}"
    if _native_ops() is None:
        return "the fused CPU kernels could not be built (see the warning)"
    return None


def pool_reason(inputs, size, strides, mode, data_format):
    size, strides = pair(size), pair(strides if strides is not None else size)
    if size != strides or size[0] != size[1]:
        return "it pools square tiles only (pool_size == strides, equal sides)"
    if data_format != "channels_last":
        return "it pools channels_last maps only"
    return _native_op_support(inputs, "Keras' pooling")


def pool(inputs, size, strides, mode, data_format="channels_last"):
    """Max or average pooling over square tiles ("valid"), one C++ op each
    way (`pool_kernels.h`)."""
    return _native_ops().involution_pool(inputs, size=pair(size)[0], mode="max" if mode == "max" else "average")


@functools.lru_cache(maxsize=None)
def channels_first_conv_runs():
    """Whether TensorFlow convolves channels-first maps here: on GPUs, and
    on CPUs only with oneDNN."""
    if not _cpu_only():
        return True
    try:
        from tensorflow.python.util import _pywrap_util_port  # private: listed in docs/design.md

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


def conv_transposed_reason(inputs, kernel, strides, padding, dilation_rate, data_format):
    if data_format != "channels_first":
        return "channels_last maps need no transposes"
    return None


def conv_transposed_preference(inputs, kernel, strides, padding, dilation_rate, data_format):
    return "TensorFlow convolves channels_first maps here itself" if channels_first_conv_runs() else None


def conv_transposed(inputs, kernel, strides, padding, dilation_rate, data_format):
    """A channels-first convolution computed channels-last between two transposes."""
    outputs = tf.nn.convolution(tf.transpose(inputs, (0, 2, 3, 1)), tf.cast(kernel, inputs.dtype),
                                strides=strides, padding=padding.upper(), dilations=dilation_rate,
                                data_format="NHWC")
    return tf.transpose(outputs, (0, 3, 1, 2))


def available(kernel):
    """Why `kernel` cannot run on this machine at all, or None."""
    if kernel.name == "tensorflow-cpp":
        if not _cpu_only():
            return "the C++ ops run on CPU-only TensorFlow (a GPU is visible)"
        if _native_ops() is None:
            return "the fused CPU kernels could not be built (no compiler, or a build error: see the warning)"
    if kernel.name == "tensorflow-transposed" and channels_first_conv_runs():
        return "TensorFlow convolves channels_first maps here itself (a GPU, or oneDNN)"
    return None


def prepare():
    if _cpu_only():
        _native_ops()


# With fewer channels per group than this (the Keras example's 3), the C++
# loops' vectors (8 channels wide) are mostly empty and XLA's program is
# faster (as on JAX, `docs/design.md`).
MIN_GROUP_CHANNELS = 8


def _compiled_or_exported_graph():
    """Whether the graph being traced is XLA-compiled or traced by an exporter
    (or `involution.config.exportable()` is on): it gets plain ops, never this
    package's C++ ops or a nested cluster."""
    if switches.exportable_enabled():
        return True
    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()) or _exporting()


def _cpp_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    if data_format == "channels_first":
        inputs = tf.transpose(inputs, (0, 2, 3, 1))
        kernel = tf.transpose(kernel, (0, 2, 3, 1))
    output = _native_ops().involution_apply(
        inputs, kernel, groups=groups, kernel_size=kernel_size, stride=stride, dilation=dilation
    )
    if data_format == "channels_first":
        output = tf.transpose(output, (0, 3, 1, 2))
    return output


# Modules whose functions trace a model for an artifact: Keras' exporters
# (`model.export`, `ExportArchive`) and tf2onnx's.
_EXPORTERS = ("keras.src.export.", "tf2onnx.")


def _exporting():
    """Whether an exporter is tracing the current graph.

    TensorFlow marks no graph as "for export" (PyTorch has
    `torch.compiler.is_exporting()`), so this, the library's one guess at
    its context, reads the Python stack for an exporter's frame; it runs
    while a graph is traced, never per step. An exporter it does not know
    is covered by the documented switch, `involution.config.exportable()`.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_EXPORTERS):
            return True
        frame = frame.f_back
    return False


def _check_traced_shapes(inputs, kernel, kernel_size, stride, groups, data_format):
    """Run-time checks of the kernel's dimensions that tracing left unknown.

    `involution.ops.check_apply_arguments` checks the static ones; a graph
    with `None` dimensions (a batch or image size known only when it runs)
    gets assertions for those, outside the XLA cluster.
    """
    if inputs.shape.is_fully_defined() and kernel.shape.is_fully_defined():
        return []
    spatial = (1, 2) if data_format == "channels_last" else (2, 3)
    taps_axis = 3 if data_format == "channels_last" else 1
    input_shape, kernel_shape = tf.shape(inputs), tf.shape(kernel)
    expected = [input_shape[0], None, None, None]
    for axis in spatial:
        expected[axis] = (input_shape[axis] + stride - 1) // stride
    expected[taps_axis] = tf.constant(groups * kernel_size * kernel_size, tf.int32)
    return [
        tf.debugging.assert_equal(
            kernel_shape,
            tf.stack(expected),
            message=(
                "The `kernel` argument must have the input's batch, ceil(size / stride) pixels "
                f"(stride={stride}) and groups * kernel_size**2 = {groups * kernel_size**2} taps "
                f"({data_format}). Received: kernel.shape, then the expected shape:"
            ),
        )
    ]


def _checked(apply):
    """`apply` after the run-time checks of what tracing left unknown.

    Plain Python over tensors, no tensor-dependent control flow: AutoGraph
    (on in Keras' training functions) has nothing to convert here, and in a
    long test run its converted copies called one helper with another's
    arguments.
    """

    @tf.autograph.experimental.do_not_convert
    @functools.wraps(apply)
    def checked(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
        checks = _check_traced_shapes(inputs, kernel, kernel_size, stride, groups, data_format)
        with tf.control_dependencies(checks):
            return apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format)

    return checked


def apply_cpp_reason(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    if tf.as_dtype(kernel.dtype) != tf.as_dtype(inputs.dtype):
        return "the kernel's dtype differs from the input's"
    return _native_op_support(inputs, "plain ops")


def apply_cpp_preference(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return too_few_channels(inputs, groups, data_format, MIN_GROUP_CHANNELS, "XLA's loop")


def apply_xla_reason(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    if _compiled_or_exported_graph():
        return "XLA-compiled and exported graphs get plain ops (a nested cluster cannot be compiled there)"
    if forwardprop_util.pack_tangents([inputs, kernel]).indices:
        # Forward mode differentiates the custom gradient's own gradient,
        # which inside an XLA cluster meets slicing gradients (XLA's
        # dynamic-update-slice) that TensorFlow cannot differentiate.
        return "forward-mode differentiation gets plain ops"
    return None


def apply_grouped_reason(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return None


apply_cpp = _checked(_cpp_apply)
apply_xla = _checked(
    lambda inputs, kernel, kernel_size, stride, dilation, groups, data_format:
    _compiled(kernel_size, stride, dilation, groups, data_format)(inputs, kernel))
apply_grouped = _checked(_grouped_apply)


def window_correlation_reason(keys, queries, kernel_size, stride, dilation, groups):
    return _native_op_support(keys, "the portable path")


def window_correlation(keys, queries, kernel_size, stride, dilation, groups):
    """keys `(B, H, W, C)`, queries `(B, Ho, Wo, C)` -> `(B, Ho, Wo, G*K*K)`:
    per group, each query's dot products with its window of keys (local
    attention's logits), by the fused op (the apply step's kernel gradient)."""
    return _native_ops().involution_correlate(
        keys, queries, groups=groups, kernel_size=kernel_size, stride=stride, dilation=dilation
    )


def batch_norm_cpp_reason(inputs, gamma, beta, epsilon):
    return _native_op_support(inputs, "TensorFlow's fused batch norm")


def batch_norm_fused_reason(inputs, gamma, beta, epsilon):
    dtype = tf.as_dtype(inputs.dtype)
    if dtype not in (tf.float16, tf.bfloat16, tf.float32):
        return f"TensorFlow's fused batch normalization takes no {dtype.name} inputs"
    return None


def batch_norm_fused(inputs, gamma, beta, epsilon):
    """Training-mode batch normalization over the last axis, by TensorFlow's
    fused kernel on the `(pixels, 1, 1, channels)` view, whose gradient is
    one fused op too. Returns `(outputs, mean, variance)`, the variance
    biased (Keras')."""
    channels = inputs.shape[-1]
    flat = tf.reshape(inputs, (-1, 1, 1, channels))
    ones = tf.ones((channels,), tf.float32)
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        flat,
        ones if gamma is None else tf.cast(gamma, tf.float32),
        tf.zeros_like(ones) if beta is None else tf.cast(beta, tf.float32),
        epsilon=epsilon,
        data_format="NHWC",
        is_training=True,
    )
    # The fused op returns the variance with Bessel's correction, n / (n - 1)
    # (1 for a single value); Keras' moving statistics use the biased one.
    count = tf.cast(tf.shape(flat)[0], variance.dtype)
    variance = variance * tf.maximum(count - 1.0, 1.0) / count
    return tf.reshape(outputs, tf.shape(inputs)), tf.stop_gradient(mean), tf.stop_gradient(variance)


def batch_norm_cpp(inputs, gamma, beta, epsilon):
    """Training-mode batch normalization over the last axis, this package's
    C++ op (`batch_norm_kernels.h`: two passes over memory each way)."""
    ones = tf.ones(tf.shape(inputs)[-1:], inputs.dtype)
    gamma = ones if gamma is None else tf.cast(gamma, inputs.dtype)
    beta = tf.zeros_like(ones) if beta is None else tf.cast(beta, inputs.dtype)
    outputs, mean, variance = _native_ops().involution_batch_norm(inputs, gamma, beta, epsilon=epsilon)
    return outputs, tf.stop_gradient(mean), tf.stop_gradient(variance)


def _batch_norm_input_gradients(upstream, inputs, gamma, epsilon):
    """The batch normalization gradients in plain ops, from `inputs` alone
    (its statistics recomputed, so that their dependence on `inputs` is
    differentiated too): what the fused gradient op's own gradient
    differentiates."""
    axes = list(range(len(inputs.shape) - 1))
    mean = tf.reduce_mean(inputs, axes)
    variance = tf.reduce_mean(tf.square(inputs - mean), axes)
    inverse_std = tf.math.rsqrt(variance + epsilon)
    normalized = (inputs - mean) * inverse_std
    grad_beta = tf.reduce_sum(upstream, axes)
    grad_gamma = tf.reduce_sum(upstream * normalized, axes)
    grad_x = gamma * inverse_std * (upstream - tf.reduce_mean(upstream, axes)
                                    - normalized * tf.reduce_mean(upstream * normalized, axes))
    return grad_x, grad_gamma, grad_beta
