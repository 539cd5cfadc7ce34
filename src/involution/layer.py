"""The Involution layer and its default kernel generator."""

import keras
from keras import ops

from involution import ops as involution_ops
from involution import registry
from involution.convolution import PortableConv2D
from involution.geometry import channel_axis
from involution.normalization import FusedBatchNormalization, PortableLayerNormalization


_positive_int = involution_ops.check_positive_int


def _check_input_shape(layer, input_shape):
    if len(input_shape) != 4:
        raise ValueError(
            f"Layer {layer.name!r} expects 4D inputs, (batch, height, width, "
            "channels) or (batch, channels, height, width). Received: "
            f"input_shape={tuple(input_shape)}"
        )
    axis = channel_axis(layer.data_format)
    channels = input_shape[axis]
    if channels is None:
        raise ValueError(
            f"Layer {layer.name!r} needs a known number of channels on axis "
            f"{axis} ({layer.data_format}). Received: "
            f"input_shape={tuple(input_shape)}"
        )
    return channels


# The kernel generator's normalization: the paper's batch normalization,
# per-pixel layer normalization, or none.
NORMALIZATIONS = ("batch", "layer", None)


@keras.saving.register_keras_serializable(package="involution")
class InvolutionKernelGenerator(keras.layers.Layer):
    """The paper's kernel generator: pool, reduce, normalise, expand.

    It maps an input feature map to one `kernel_size x kernel_size` kernel per
    output pixel and channel group: average-pool by `stride` ("same"
    padding, so the output is `ceil(size / stride)`), a 1x1 convolution to
    `channel // reduction_ratio` filters, batch normalization (or, with
    `normalization`, layer normalization or none), ReLU, and a 1x1
    convolution to `kernel_size**2 * group_number` filters, group-major.

    Args:
        kernel_size: int, the side of the generated kernels.
        stride: int, the stride of the involution this generator serves.
        group_number: int, the number of kernels per pixel (channel groups).
        reduction_ratio: int, divides `channel` to give the bottleneck width.
        channel: int or None, the channel count the bottleneck width is
            derived from; None uses the input's channels.
        data_format: `"channels_last"`, `"channels_first"` or None.
        batch_norm_momentum: float, the momentum of the batch
            normalization's moving statistics (Keras' default 0.99; a short
            schedule wants less, so that inference statistics keep up; the
            paper's is 0.9, PyTorch's 0.1).
        batch_norm_epsilon: float, the batch normalization's epsilon
            (Keras' default 1e-3; the paper's is 1e-5).
        reduction_bias: bool, whether the first 1x1 convolution has a bias.
            The Keras example's has one; the paper's has none, as the batch
            normalization after it cancels a bias (with `normalization` not
            "batch", the bias is kept).
        normalization: `"batch"` (the paper's), `"layer"` (over each
            pixel's channels, no moving statistics) or None. The generated
            kernels multiply the features, so they are sensitive to the
            difference between batch statistics (training) and moving
            statistics (inference); layer normalization has none.
        span_initializer: initializer of the last 1x1 convolution's kernel,
            the input-dependent part of the generated kernels.
        span_bias_initializer: initializer of its bias: one static
            `kernel_size x kernel_size` kernel per group, added at every
            pixel. The defaults (Glorot uniform, zeros) are the paper's;
            a small `span_initializer` with a random static kernel starts
            the involution as a fixed depthwise filter that learns to vary
            (a random kernel per pixel scrambles the neighbourhood at
            initialisation, which slows early training; see
            `involution.models.invnet.involution_net`).
        span_regularizer: regularizer of that kernel (None for none). An
            L2 penalty pulls the generated kernels towards the static bias
            kernel: it limits how much the kernels vary with the input.
        implementation: `"auto"`, `"reference"`, `"fast"` or a kernel's
            name (`involution.registry`), for its batch normalization and
            stride pooling.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Input shape:
        4D tensor `(batch, height, width, channels)` (channels_last) or
        `(batch, channels, height, width)` (channels_first).

    Output shape:
        `(batch, ceil(height / stride), ceil(width / stride),
        group_number * kernel_size**2)` for channels_last, channels first
        otherwise.
    """

    # A kernel's name in `implementation` selects kernels of the op below.
    KERNEL_OP = None

    def __init__(
        self,
        kernel_size,
        stride=1,
        group_number=1,
        reduction_ratio=1,
        channel=None,
        data_format=None,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1e-3,
        reduction_bias=True,
        normalization="batch",
        span_initializer="glorot_uniform",
        span_bias_initializer="zeros",
        span_regularizer=None,
        implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.implementation = registry.check_implementation(implementation)
        self.span_initializer = keras.initializers.get(span_initializer)
        self.span_bias_initializer = keras.initializers.get(span_bias_initializer)
        self.span_regularizer = keras.regularizers.get(span_regularizer)
        if not 0.0 <= batch_norm_momentum < 1.0:
            raise ValueError(
                "The `batch_norm_momentum` argument must be in [0, 1). "
                f"Received: batch_norm_momentum={batch_norm_momentum}"
            )
        self.batch_norm_momentum = batch_norm_momentum
        if not (isinstance(batch_norm_epsilon, (int, float)) and batch_norm_epsilon > 0):
            raise ValueError(
                "The `batch_norm_epsilon` argument must be a positive number. "
                f"Received: batch_norm_epsilon={batch_norm_epsilon!r}"
            )
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        if not isinstance(reduction_bias, bool):
            raise ValueError(
                "The `reduction_bias` argument must be a bool. "
                f"Received: reduction_bias={reduction_bias!r}"
            )
        self.reduction_bias = reduction_bias
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                "The `normalization` argument must be one of "
                f"{', '.join(repr(n) for n in NORMALIZATIONS)}. "
                f"Received: normalization={normalization!r}"
            )
        self.normalization = normalization
        self.kernel_size = _positive_int(kernel_size, "kernel_size", odd=True)
        self.stride = _positive_int(stride, "stride")
        self.group_number = _positive_int(group_number, "group_number")
        self.reduction_ratio = _positive_int(reduction_ratio, "reduction_ratio")
        if channel is not None:
            _positive_int(channel, "channel")
        self.channel = channel
        self.data_format = involution_ops.standardize_data_format(data_format)

    def build(self, input_shape):
        channels = _check_input_shape(self, input_shape)
        channel = self.channel if self.channel is not None else channels
        if self.reduction_ratio > channel:
            raise ValueError(
                "The `reduction_ratio` argument must be at most `channel` "
                f"({channel}), so that the kernel generator keeps at least "
                f"one channel. Received: reduction_ratio={self.reduction_ratio}"
            )
        common = dict(data_format=self.data_format, dtype=self.dtype_policy)
        self.reduce = PortableConv2D(
            channel // self.reduction_ratio, 1, name="reduce",
            use_bias=self.reduction_bias or self.normalization != "batch", **common
        )
        axis = channel_axis(self.data_format)
        if self.normalization == "batch":
            self.norm = FusedBatchNormalization(
                axis=axis, momentum=self.batch_norm_momentum, epsilon=self.batch_norm_epsilon, name="norm",
                dtype=self.dtype_policy,
                implementation=registry.for_op(self.implementation, "batch_norm"),
            )
        elif self.normalization == "layer":
            self.norm = PortableLayerNormalization(
                axis=axis, epsilon=1e-3, name="norm", dtype=self.dtype_policy
            )
        else:
            self.norm = None
        self.span = PortableConv2D(
            self.kernel_size * self.kernel_size * self.group_number,
            1,
            kernel_initializer=self.span_initializer,
            bias_initializer=self.span_bias_initializer,
            kernel_regularizer=self.span_regularizer,
            name="span",
            **common,
        )
        shape = tuple(input_shape)
        self.reduce.build(shape)
        shape = self.reduce.compute_output_shape(shape)
        if self.norm is not None:
            self.norm.build(shape)
        self.span.build(shape)

    def call(self, inputs, training=None):
        x = inputs
        if self.stride > 1:
            x = involution_ops.average_pool_same(x, self.stride, self.data_format,
                                                 registry.for_op(self.implementation, "pool"))
        x = self._pointwise(self.reduce, x)
        if self.norm is not None:
            x = self.norm(x, training=training)
        x = ops.relu(x)
        return self._pointwise(self.span, x)

    def _pointwise(self, conv, x):
        if self.data_format != "channels_last":
            return conv(x)
        # A 1x1 convolution in the channels-last layout is one matrix product
        # over the channel axis. PyTorch's convolution would copy to
        # channels-first and back around every call, a large part of a small
        # involution network's training step; the weights stay the
        # Conv2D's, so saved models are unchanged.
        kernel = ops.reshape(conv.kernel, conv.kernel.shape[2:])
        x = ops.matmul(x, kernel)
        return x if conv.bias is None else ops.add(x, conv.bias)

    def compute_output_shape(self, input_shape):
        taps = self.kernel_size * self.kernel_size * self.group_number
        return involution_ops.kernel_shape(input_shape, self.stride, taps, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "stride": self.stride,
                "group_number": self.group_number,
                "reduction_ratio": self.reduction_ratio,
                "channel": self.channel,
                "data_format": self.data_format,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "reduction_bias": self.reduction_bias,
                "normalization": self.normalization,
                "span_initializer": keras.initializers.serialize(self.span_initializer),
                "span_bias_initializer": keras.initializers.serialize(self.span_bias_initializer),
                "span_regularizer": keras.regularizers.serialize(self.span_regularizer),
                "implementation": self.implementation,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="involution")
class Involution(keras.layers.Layer):
    """2D involution layer (position-specific, channel-shared kernels).

    Involution inverts convolution's design: instead of one kernel per
    output channel shared over all positions, it generates one
    `kernel_size x kernel_size` kernel per output position (and channel
    group) from the input itself, and shares it across the channels of the
    group. The output of channel `c` at pixel `(i, j)` is the multiply-add of
    its group's kernel at `(i, j)` with the channel's neighbourhood.

    The kernels come from a kernel generator sub-layer, by default the
    paper's `InvolutionKernelGenerator` (average pool by `stride`, 1x1 conv
    to `channel // reduction_ratio`, batch norm, ReLU, 1x1 conv to
    `kernel_size**2 * group_number`). To use another kernel-generation
    method pass any layer as `kernel_generator`: it receives the
    involution's input (and `training`) and must return a tensor
    `(batch, ceil(H / stride), ceil(W / stride), group_number *
    kernel_size**2)` (channels first for `"channels_first"`), group-major.
    Register it with `keras.saving.register_keras_serializable` so models
    using it save and load.

    Args:
        channel: int or None. The channel count from which the generator's
            bottleneck width `channel // reduction_ratio` is derived. None
            (default) uses the input's channels. The output always has as
            many channels as the input.
        group_number: int, the number of channel groups (kernels per
            pixel); must divide the input's channels. Groups are
            contiguous: channel `c` is in group `c // (C // group_number)`.
        kernel_size: int, odd, the side of the kernel window.
        stride: int, the step between windows; the output's spatial size is
            `ceil(size / stride)`.
        reduction_ratio: int, the generator's bottleneck reduction, at most
            `channel`.
        dilation: int, the spacing between kernel taps. Defaults to 1.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        return_kernel: bool. If True, `call` returns `(output, kernel)`
            like the Keras example. Defaults to False.
        kernel_generator: optional layer replacing the default generator
            (see above).
        batch_norm_momentum, batch_norm_epsilon, reduction_bias: the
            default generator's batch normalization and whether its first
            1x1 convolution has a bias (`InvolutionKernelGenerator`). The
            defaults (0.99, 1e-3, True) are the Keras example's; the paper's
            RedNets use 0.9, 1e-5 and False.
        implementation: `"auto"`, `"reference"`, `"fast"` or the name of
            an apply kernel (`involution.registry`): which apply step runs
            (see `involution.ops.involution_apply`); the default kernel
            generator takes `"auto"`, `"reference"` and `"fast"` too.
        **kwargs: base layer keyword arguments (`name`, `dtype`,
            `trainable`, ...).

    Input shape:
        4D tensor `(batch, height, width, channels)` for channels_last or
        `(batch, channels, height, width)` for channels_first. Height and
        width may be unknown (`None`).

    Output shape:
        `(batch, ceil(height / stride), ceil(width / stride), channels)` for
        channels_last, `(batch, channels, ceil(height / stride),
        ceil(width / stride))` for channels_first.

    Returns:
        The output tensor, or with `return_kernel=True` the tuple
        `(output, kernel)`, the kernel shaped `(batch, H_out, W_out,
        kernel_size**2, 1, group_number)` for channels_last and `(batch,
        group_number, 1, kernel_size**2, H_out, W_out)` for channels_first
        (the official PyTorch implementation's layout).

    Example:

    >>> x = keras.random.normal((2, 32, 32, 16))
    >>> layer = Involution(channel=16, group_number=4, kernel_size=7,
    ...                    stride=2, reduction_ratio=4)
    >>> layer(x).shape
    (2, 16, 16, 16)

    Reference:
        Li et al., "Involution: Inverting the Inherence of Convolution for
        Visual Recognition", CVPR 2021. https://arxiv.org/abs/2103.06255
    """

    # A kernel's name in `implementation` selects kernels of the op below.
    KERNEL_OP = "apply"

    def __init__(
        self,
        channel=None,
        group_number=1,
        kernel_size=7,
        stride=1,
        reduction_ratio=4,
        dilation=1,
        data_format=None,
        return_kernel=False,
        kernel_generator=None,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1e-3,
        reduction_bias=True,
        implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if channel is not None:
            _positive_int(channel, "channel")
        self.channel = channel
        self.batch_norm_momentum = batch_norm_momentum
        self.batch_norm_epsilon = batch_norm_epsilon
        self.reduction_bias = reduction_bias
        self.group_number = _positive_int(group_number, "group_number")
        self.kernel_size = _positive_int(kernel_size, "kernel_size", odd=True)
        self.stride = _positive_int(stride, "stride")
        self.reduction_ratio = _positive_int(reduction_ratio, "reduction_ratio")
        if channel is not None and reduction_ratio > channel:
            raise ValueError(
                "The `reduction_ratio` argument must be at most `channel` "
                f"({channel}). Received: reduction_ratio={reduction_ratio}"
            )
        self.dilation = _positive_int(dilation, "dilation")
        self.data_format = involution_ops.standardize_data_format(data_format)
        self.return_kernel = bool(return_kernel)
        self.implementation = registry.check_implementation(implementation, "apply")
        if isinstance(kernel_generator, dict):
            kernel_generator = keras.saving.deserialize_keras_object(kernel_generator)
        if kernel_generator is not None and not isinstance(
            kernel_generator, keras.layers.Layer
        ):
            raise ValueError(
                "The `kernel_generator` argument must be a keras.layers.Layer "
                f"or None. Received: kernel_generator={kernel_generator!r}"
            )
        self._custom_generator = kernel_generator is not None
        if kernel_generator is None:
            kernel_generator = InvolutionKernelGenerator(
                kernel_size=self.kernel_size,
                stride=self.stride,
                group_number=self.group_number,
                reduction_ratio=self.reduction_ratio,
                channel=self.channel,
                data_format=self.data_format,
                batch_norm_momentum=batch_norm_momentum,
                batch_norm_epsilon=batch_norm_epsilon,
                reduction_bias=reduction_bias,
                dtype=self.dtype_policy,
                implementation=registry.for_op(self.implementation, None),
                name="kernel_generator",
            )
        self.kernel_generator = kernel_generator

    def build(self, input_shape):
        channels = _check_input_shape(self, input_shape)
        if channels % self.group_number:
            raise ValueError(
                f"The `group_number` argument must divide the number of input "
                f"channels ({channels}, from input_shape="
                f"{tuple(input_shape)}). Received: "
                f"group_number={self.group_number}"
            )
        involution_ops.prepare_kernels()
        if not self.kernel_generator.built:
            self.kernel_generator.build(tuple(input_shape))
        if self._custom_generator:
            self._check_generator_output(input_shape)

    def _check_generator_output(self, input_shape):
        try:
            shape = self.kernel_generator.compute_output_shape(tuple(input_shape))
        except NotImplementedError:
            return
        expected = self._kernel_shape(input_shape)
        if tuple(shape) != expected:
            raise ValueError(
                "The `kernel_generator` must return kernels of shape "
                f"{expected} for input_shape={tuple(input_shape)} "
                f"(group_number={self.group_number}, kernel_size="
                f"{self.kernel_size}, stride={self.stride}). Received: "
                f"output shape {tuple(shape)}"
            )

    def _kernel_shape(self, input_shape):
        taps = self.group_number * self.kernel_size * self.kernel_size
        return involution_ops.kernel_shape(tuple(input_shape), self.stride, taps, self.data_format)

    def _out(self, size):
        return involution_ops.output_size(size, self.stride)

    def call(self, inputs, training=None):
        kernel = self.kernel_generator(inputs, training=training)
        outputs = involution_ops.involution_apply(
            inputs,
            ops.cast(kernel, inputs.dtype),
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            groups=self.group_number,
            data_format=self.data_format,
            implementation=self.implementation,
        )
        if not self.return_kernel:
            return outputs
        return outputs, involution_ops.kernel_for_display(
            kernel, self.kernel_size, self.group_number, self.data_format
        )

    def compute_output_shape(self, input_shape):
        if self.data_format == "channels_last":
            batch, height, width, channels = input_shape
            output_shape = (batch, self._out(height), self._out(width), channels)
        else:
            batch, channels, height, width = input_shape
            output_shape = (batch, channels, self._out(height), self._out(width))
        if not self.return_kernel:
            return output_shape
        taps = self.kernel_size * self.kernel_size
        if self.data_format == "channels_last":
            kernel_shape = output_shape[:3] + (taps, 1, self.group_number)
        else:
            kernel_shape = (batch, self.group_number, 1, taps) + output_shape[2:]
        return output_shape, kernel_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channel": self.channel,
                "group_number": self.group_number,
                "kernel_size": self.kernel_size,
                "stride": self.stride,
                "reduction_ratio": self.reduction_ratio,
                "dilation": self.dilation,
                "data_format": self.data_format,
                "return_kernel": self.return_kernel,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "reduction_bias": self.reduction_bias,
                "kernel_generator": (
                    keras.saving.serialize_keras_object(self.kernel_generator)
                    if self._custom_generator
                    else None
                ),
                "implementation": self.implementation,
            }
        )
        return config
