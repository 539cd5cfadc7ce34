"""The JAX fast paths: three primitives, lowered to fused C++ loops, to Pallas
kernels (`kernels/pallas/`, by name: `implementation="pallas"`) or to XLA.

On the CPU (float32/float64) the apply step and its gradients are the fused
loops of `involution_kernels.h`, the ones the PyTorch backend runs, called
as XLA FFI custom calls (`involution_ffi.cpp`, compiled on first use into
`~/.cache/involution/kernels`): XLA's CPU code for the kernel gradient's
`K*K` channel reductions runs one loop per tap at a few GB/s, several
times slower than the whole fused backward.

Elsewhere (GPUs, half precision, no C++ compiler) the same plan as the
TensorFlow path runs, compiled by XLA: the grouped channels-last layout
`(B, H, W, G, C/G)`, where a group's kernel broadcasts along the innermost
axis and the kernel gradient reduces over it. Both keep only the input and
the kernel for the backward pass; both differentiate to any order, in
forward and reverse mode, and `jax.export` always gets the XLA form.
"""

import ctypes
import functools
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import ShapedArray
from jax.experimental.custom_partitioning import custom_partitioning
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.sharding import NamedSharding, PartitionSpec

from involution import switches
from involution.backends import jax_onnx, native, padding, pair, tap_offsets, too_few_channels

# Set to 0 to skip building the C++ kernels (XLA's path runs instead).
FFI_ENV = "INVOLUTION_JAX_FFI"
_FFI_SOURCE = Path(__file__).with_name("involution_ffi.cpp")
_FFI_TARGETS = {
    "forward": "InvolutionForward",
    "input_gradient": "InvolutionInputGradient",
    "correlate": "InvolutionCorrelate",
}


@functools.lru_cache(maxsize=None)
def _ffi_available():
    """Builds and registers the C++ handlers once; False where they cannot be."""
    if os.environ.get(FFI_ENV, "1") == "0":
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(native.shared_library(_FFI_SOURCE, [jax.ffi.include_dir()])))
        for target, symbol in _FFI_TARGETS.items():
            jax.ffi.register_ffi_target(
                f"involution_{target}", jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
            )
        return True
    except Exception as error:  # no compiler, a build error, an older jaxlib...
        warnings.warn(
            f"involution: the fused CPU kernels could not be built for JAX ({type(error).__name__}: {error}); "
            f"using XLA's path. Set {FFI_ENV}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


def _ffi_call(target, result_shapes, *args, groups, kernel_size, stride, dilation):
    if not _ffi_available():
        raise RuntimeError("involution: the fused CPU kernels for JAX are not available here (see the warning)")
    call = jax.ffi.ffi_call(f"involution_{target}", result_shapes, vmap_method="sequential")
    return call(*args, groups=np.int64(groups), kernel_size=np.int64(kernel_size), stride=np.int64(stride),
                dilation=np.int64(dilation))


# === The C++ loops as JAX primitives ===
# The apply step A(x, kernel) is bilinear, and so are its two gradients,
# the input gradient Gx(grad, kernel) and the window correlation
# Gk(x, grad). Each is a primitive with a bilinear JVP (which JAX derives)
# and a transpose into the other two:
#   A:  x <- Gx(ct, kernel)     kernel <- Gk(x, ct)
#   Gx: grad <- A(ct, kernel)   kernel <- Gk(ct, grad)
#   Gk: x <- Gx(grad, ct)       grad <- A(x, ct)
# so forward mode, reverse mode and any mix of them (grad of grad,
# Hessian-vector products) run the fused loops. Batching (vmap) folds the
# mapped axis into the batch, which the loops treat image by image.

GEOMETRY = ("groups", "kernel_size", "stride", "dilation")


def _geometry(params):
    return {name: params[name] for name in GEOMETRY}


def _apply_shape(x_shape, kernel_shape, params):
    return tuple(kernel_shape[:3]) + tuple(x_shape[3:])


def _input_gradient_shape(grad_shape, kernel_shape, params):
    return (grad_shape[0], params["height"], params["width"], grad_shape[3])


def _correlate_shape(x_shape, grad_shape, params):
    return tuple(grad_shape[:3]) + (params["groups"] * params["kernel_size"] ** 2,)


def _primitive(name, target, shape_rule, sharding_rule, portable):
    """A primitive run by the C++ handler `target`, the Pallas kernel
    `name`, or `portable` (XLA), as its `path` parameter asks.

    `path="ffi"` asks for the C++ loops: the lowering grants it on the CPU,
    for float32/float64, where the handlers are built. `path="pallas"`
    runs the Pallas kernel, compiled by its Triton lowering on a GPU and in
    interpret mode on the CPU. Neither is granted to `jax.export` (and what
    lowers through it: `model.export`, jax2tf), whose artifacts must run
    without this package: they get XLA's form.
    """
    primitive = Primitive(f"involution_{name}")

    def fused_impl(a, b, **params):
        shape = jax.ShapeDtypeStruct(shape_rule(a.shape, b.shape, params), a.dtype)
        return _ffi_call(target, shape, a, b, **_geometry(params))

    def pallas_impl(a, b, *, interpret, **params):
        from involution.kernels.pallas import involution as pallas_kernels

        size = params if "height" in params else dict(height=a.shape[1], width=a.shape[2])
        return pallas_kernels.call(name, a, b, shape_rule(a.shape, b.shape, params), **_geometry(params),
                                   height=size["height"], width=size["width"], interpret=interpret)

    # One function per mode, so that `_batch_partitioned`'s cache hits.
    pallas_impls = {mode: functools.partial(pallas_impl, interpret=mode) for mode in (False, True)}

    def lowering(ctx, a, b, *, path, **params):
        module = ctx.module_context
        exporting = module.lowering_parameters.for_export
        on_cpu = tuple(module.platforms) == ("cpu",)
        call = functools.partial(portable, **params)
        if path == "ffi" and not exporting and on_cpu and ctx.avals_in[0].dtype in (np.float32, np.float64) \
                and _ffi_available():
            call = _batch_partitioned(fused_impl, sharding_rule, tuple(sorted(params.items())))
        elif path == "pallas" and not exporting:
            call = _batch_partitioned(pallas_impls[on_cpu], sharding_rule, tuple(sorted(params.items())))
        return mlir.lower_fun(call, multiple_results=False)(ctx, a, b)

    primitive.def_impl(lambda a, b, **params: _eager(primitive, tuple(sorted(params.items())))(a, b))
    primitive.def_abstract_eval(
        lambda a, b, *, path, **params: ShapedArray(shape_rule(a.shape, b.shape, params), a.dtype)
    )
    mlir.register_lowering(primitive, lowering)
    batching.primitive_batchers[primitive] = functools.partial(_batch_rule, primitive)
    # Its lowering holds a `custom_partitioning` call, which needs the
    # devices while lowering; JAX asks that of primitives through this set
    # (internal: without it, a sharded call fails to lower).
    try:
        from jax._src import dispatch

        dispatch.prim_requires_devices_during_lowering.add(primitive)
    except (ImportError, AttributeError):  # a JAX without it: unsharded calls still lower
        pass
    return primitive


@functools.lru_cache(maxsize=None)
def _eager(primitive, params):
    """The primitive compiled on its own, for calls outside `jax.jit`."""
    return jax.jit(functools.partial(primitive.bind, **dict(params)))


@functools.lru_cache(maxsize=None)
def _batch_partitioned(impl, sharding_rule, params):
    """`impl` as a custom call that XLA partitions along the batch.

    Every image is computed on its own, so a batch-sharded call runs on each
    device's shard, with no all-gather (XLA would otherwise replicate an
    opaque custom call's operands on every device). Only the batch axis
    may be sharded; the partitioner replicates the others first.
    """
    params = dict(params)
    call = custom_partitioning(lambda a, b: impl(a, b, **params))

    def batch_sharding(mesh, arg_shapes):
        spec = arg_shapes[0].sharding.spec
        return NamedSharding(mesh, PartitionSpec(spec[0] if len(spec) else None))

    def infer(mesh, arg_shapes, result_shape):
        return batch_sharding(mesh, arg_shapes)

    def partition(mesh, arg_shapes, result_shape):
        sharding = batch_sharding(mesh, arg_shapes)
        return mesh, lambda a, b: impl(a, b, **params), sharding, (sharding, sharding)

    # Every factor but the batch, in order of appearance (Shardy wants it so).
    factors = sharding_rule.replace(",", " ").replace("->", " ").split()
    spatial = [f for i, f in enumerate(factors) if f != "b" and f not in factors[:i]]
    call.def_partition(
        partition=partition,
        infer_sharding_from_operands=infer,
        sharding_rule=sharding_rule,
        need_replication_factors=tuple(spatial),
    )
    return call


def _batch_rule(primitive, args, dims, **params):
    # A dimension of None: that operand is not mapped.
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    folded = []
    for a, d in zip(args, dims):
        a = jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
        folded.append(a.reshape((-1,) + a.shape[2:]))
    out = primitive.bind(*folded, **params)
    return out.reshape((size, -1) + out.shape[1:]), 0


# Einsum-like sharding rules: b is the batch, the only axis sharded.
apply_p = _primitive("apply", "forward", _apply_shape, "b h w c, b i j t -> b i j c",
                     lambda x, kernel, **p: portable_apply(x, kernel, **p))
input_gradient_p = _primitive("input_gradient", "input_gradient", _input_gradient_shape, "b i j c, b i j t -> b h w c",
                              lambda grad, kernel, **p: portable_input_gradient(grad, kernel, **p))
correlate_p = _primitive("correlate", "correlate", _correlate_shape, "b h w c, b i j c -> b i j t",
                         lambda x, grad, **p: portable_correlate(x, grad, **p))


def _size(value):
    """(H, W) of an operand being transposed (it has only an abstract value)."""
    return dict(height=value.aval.shape[1], width=value.aval.shape[2])


def _params(p):
    return dict(_geometry(p), path=p["path"])


ad.defbilinear(
    apply_p,
    lambda ct, x, kernel, **p: input_gradient_p.bind(ct, kernel, **_size(x), **_params(p)),
    lambda ct, x, kernel, **p: correlate_p.bind(x, ct, **_params(p)),
)
ad.defbilinear(
    input_gradient_p,
    lambda ct, grad, kernel, **p: apply_p.bind(ct, kernel, **_params(p)),
    lambda ct, grad, kernel, **p: correlate_p.bind(ct, grad, **_params(p)),
)
ad.defbilinear(
    correlate_p,
    lambda ct, x, grad, **p: input_gradient_p.bind(grad, ct, **_size(x), **_params(p)),
    lambda ct, x, grad, **p: apply_p.bind(x, ct, **_params(p)),
)


def fused_involution(x, kernel, groups, kernel_size, stride, dilation, path="ffi"):
    """x `(B, H, W, C)`, kernel `(B, Ho, Wo, G*K*K)` -> `(B, Ho, Wo, C)`, by
    `path`: "ffi" (the C++ loops where they run, else XLA), "pallas" or
    "xla"."""
    return apply_p.bind(x, kernel, groups=groups, kernel_size=kernel_size, stride=stride, dilation=dilation,
                        path=path)


def _window(padded, row, col, stride, out_h, out_w):
    """The strided `(B, out_h, out_w, G, C/G)` view one tap reads."""
    batch, _, _, groups, channels = padded.shape
    return lax.slice(
        padded,
        (0, row, col, 0, 0),
        (batch, row + (out_h - 1) * stride + 1, col + (out_w - 1) * stride + 1, groups, channels),
        (1, stride, stride, 1, 1),
    )


def _pad(x, pad):
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0), (0, 0)))


def _forward(x, kernel, kernel_size, stride, dilation):
    pad = padding(kernel_size, dilation)
    out_h, out_w = kernel.shape[1:3]
    padded = _pad(x, pad)
    output = None
    for tap, (row, col) in enumerate(tap_offsets(kernel_size, dilation)):
        term = _window(padded, row, col, stride, out_h, out_w) * kernel[..., tap : tap + 1]
        output = term if output is None else output + term
    return output


def _grouped(tensor, groups):
    """(B, H, W, G*n) -> (B, H, W, G, n)."""
    return tensor.reshape(tensor.shape[:3] + (groups, tensor.shape[3] // groups))


def _flat(tensor):
    return tensor.reshape(tensor.shape[:3] + (-1,))


# The XLA forms of the three primitives, in the grouped channels-last
# layout (B, H, W, G, C/G), where a group's kernel broadcasts along the
# innermost axis and the kernel gradient reduces over it.


def portable_apply(x, kernel, *, groups, kernel_size, stride, dilation):
    return _flat(_forward(_grouped(x, groups), _grouped(kernel, groups), kernel_size, stride, dilation))


def portable_input_gradient(grad, kernel, *, height, width, groups, kernel_size, stride, dilation):
    grad, kernel = _grouped(grad, groups), _grouped(kernel, groups)
    if stride == 1:
        return _flat(_input_gradient_gather(grad, kernel, kernel_size, dilation))
    x_shape = (grad.shape[0], height, width) + grad.shape[3:]
    return _flat(_input_gradient_scatter(grad, kernel, x_shape, kernel_size, stride, dilation))


def portable_correlate(x, grad, *, groups, kernel_size, stride, dilation):
    x, grad = _grouped(x, groups), _grouped(grad, groups)
    out_h, out_w = grad.shape[1:3]
    padded = _pad(x, padding(kernel_size, dilation))
    taps = [
        jnp.sum(grad * _window(padded, row, col, stride, out_h, out_w), axis=-1)
        for row, col in tap_offsets(kernel_size, dilation)
    ]
    return _flat(jnp.stack(taps, axis=-1))


def _input_gradient_gather(grad, kernel, kernel_size, dilation):
    """Stride 1: input pixel `i` is read through tap `(row, col)` by output
    pixel `i + pad - (row, col)`, so the input gradient sums one shifted
    window of `grad * kernel` per tap, the forward pass's shape (one fused
    loop) instead of a padded copy of the input per tap."""
    pad = padding(kernel_size, dilation)
    grad_padded, kernel_padded = _pad(grad, pad), _pad(kernel, pad)
    height, width = grad.shape[1:3]
    grad_x = None
    for tap, (row, col) in enumerate(tap_offsets(kernel_size, dilation)):
        start = (2 * pad - row, 2 * pad - col)
        term = (_window(grad_padded, *start, 1, height, width)
                * _window(kernel_padded, *start, 1, height, width)[..., tap : tap + 1])
        grad_x = term if grad_x is None else grad_x + term
    return grad_x


def _input_gradient_scatter(grad, kernel, x_shape, kernel_size, stride, dilation):
    """Any stride: each tap's contribution lands on a strided grid of the
    padded input (interior padding spreads it, edge padding places it)."""
    pad = padding(kernel_size, dilation)
    height, width = x_shape[1:3]
    out_h, out_w = grad.shape[1:3]
    padded_h, padded_w = height + 2 * pad, width + 2 * pad
    no_padding = (0, 0, 0)
    grad_padded = None
    for tap, (row, col) in enumerate(tap_offsets(kernel_size, dilation)):
        contribution = lax.pad(
            grad * kernel[..., tap : tap + 1],
            jnp.zeros((), grad.dtype),
            (no_padding,
             (row, padded_h - row - (out_h - 1) * stride - 1, stride - 1),
             (col, padded_w - col - (out_w - 1) * stride - 1, stride - 1),
             no_padding, no_padding),
        )
        grad_padded = contribution if grad_padded is None else grad_padded + contribution
    return grad_padded[:, pad : pad + height, pad : pad + width]


# With fewer channels per group than this (the Keras example's 3), XLA's own
# autodiff of the reference is faster than either custom gradient (the C++
# loops' vectors are 8 channels wide; `docs/design.md`), so `"auto"` runs
# the reference there.
MIN_GROUP_CHANNELS = 8


def prepare():
    _ffi_available()


def available(kernel):
    """Why `kernel` cannot run on this machine at all, or None."""
    if kernel.name == "pallas":
        if jax.default_backend() == "cpu" and not switches.pallas_interpret_enabled():
            return ("no GPU, and Pallas' interpret mode is off (INVOLUTION_PALLAS_INTERPRET=1 runs it on the "
                    "CPU)")
        try:
            from involution.kernels.pallas import involution  # noqa: F401
        except ImportError as error:
            return f"Pallas cannot be imported ({type(error).__name__}: {error})"
    if kernel.name == "jax-ffi":
        if jax.default_backend() != "cpu":
            return f"the C++ loops run on JAX's CPU backend (default backend: {jax.default_backend()})"
        if not _ffi_available():
            return "the fused CPU kernels could not be built (no compiler, or a build error: see the warning)"
    return None


def apply_ffi_reason(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    if switches.exportable_enabled():
        return "involution.config.exportable() is on: exported programs get XLA's form"
    if jax.default_backend() != "cpu":
        return f"it runs on JAX's CPU backend (default backend: {jax.default_backend()})"
    if inputs.dtype not in (jnp.float32, jnp.float64) or kernel.dtype != inputs.dtype:
        return f"it runs float32/float64 only (received {inputs.dtype} with a {kernel.dtype} kernel)"
    if not _ffi_available():
        return "the fused CPU kernels could not be built (see the warning)"
    return None


def apply_xla_reason(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return None


# Pallas kernels (`kernels/pallas/`): their offsets are 32-bit, and masked
# lanes store up to one tile past the end.
_PALLAS_MAX_ELEMENTS = 2**31 - 1 - (1 << 16)


def _pallas_reason(*arrays):
    if jax.default_backend() == "cpu" and not switches.pallas_interpret_enabled():
        return ("Pallas kernels run on GPUs, and on the CPU in interpret mode only "
                "(INVOLUTION_PALLAS_INTERPRET=1 or involution.config.set_pallas_interpret(True))")
    if jax.default_backend() not in ("cpu", "gpu"):
        return f"the Pallas kernels are written for GPUs (default backend: {jax.default_backend()})"
    if arrays[0].dtype not in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64):
        return f"it runs float16/bfloat16/float32/float64 (received {arrays[0].dtype})"
    if arrays[1].dtype != arrays[0].dtype:
        return "the two arrays' dtypes differ"
    if any(a.size > _PALLAS_MAX_ELEMENTS for a in arrays):
        return f"an array has over {_PALLAS_MAX_ELEMENTS} elements (the kernels' offsets are 32-bit)"
    return None


def apply_pallas_reason(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return _pallas_reason(inputs, kernel)


def apply_pallas_preference(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    if jax.default_backend() == "cpu":
        return "interpret mode runs the kernels as a loop of XLA ops (for tests, not speed)"
    # Until a GPU benchmark (benchmarks/gpu.py) shows them faster than XLA's form.
    return "XLA's form stays the default on GPUs until measured slower (implementation='pallas' asks for these)"


def apply_pallas(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    jax_onnx.register(PORTABLE_FORMS)
    return _grouped_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format, "pallas")


def apply_preference(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    return too_few_channels(inputs, groups, data_format, MIN_GROUP_CHANNELS, "XLA's autodiff of the reference")


def apply_ffi(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    jax_onnx.register(PORTABLE_FORMS)  # an ONNX export in progress converts the primitives
    return _grouped_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format, "ffi")


def apply_xla(inputs, kernel, kernel_size, stride, dilation, groups, data_format):
    jax_onnx.register(PORTABLE_FORMS)
    return _grouped_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format, "xla")


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _grouped_apply(inputs, kernel, kernel_size, stride, dilation, groups, data_format, path):
    """`path`: "ffi" (the C++ loops), "pallas" or "xla" (the same primitives, by XLA)."""
    if data_format == "channels_first":
        inputs = jnp.transpose(inputs, (0, 2, 3, 1))
        kernel = jnp.transpose(kernel, (0, 2, 3, 1))
    output = fused_involution(inputs, kernel, groups, kernel_size, stride, dilation, path=path)
    if data_format == "channels_first":
        output = jnp.transpose(output, (0, 3, 1, 2))
    return output


# === Pooling ===
# XLA's CPU backward of max pooling is `select_and_scatter`, a scalar loop
# over windows (about an eighth of an invnet step). Pooling by tiles
# (pool size == strides) is a reshape and a reduction, and its derivative,
# written out below, is one elementwise pass that XLA fuses.



def pool_reason(inputs, size, strides, mode, data_format):
    if pair(size) != pair(strides if strides is not None else size):
        return "its windows overlap or leave gaps (pool_size != strides); only tiling windows are reshaped"
    return None


def _tiles(inputs, size, data_format):
    """`inputs` cropped to whole tiles and reshaped so that the two returned
    axes run within a tile."""
    rows, cols = size
    if data_format == "channels_last":
        batch, height, width, channels = inputs.shape
        cropped = inputs[:, : height // rows * rows, : width // cols * cols, :]
        return cropped.reshape(batch, height // rows, rows, width // cols, cols, channels), (2, 4)
    batch, channels, height, width = inputs.shape
    cropped = inputs[:, :, : height // rows * rows, : width // cols * cols]
    return cropped.reshape(batch, channels, height // rows, rows, width // cols, cols), (3, 5)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _max_pool_tiles(inputs, size, data_format):
    tiles, axes = _tiles(inputs, size, data_format)
    return jnp.max(tiles, axis=axes)


@_max_pool_tiles.defjvp
def _max_pool_tiles_jvp(size, data_format, primals, tangents):
    (inputs,), (tangent,) = primals, tangents
    tiles, axes = _tiles(inputs, size, data_format)
    pooled = jnp.max(tiles, axis=axes)
    # The first maximum of each tile in row-major order takes the whole
    # derivative, as XLA's `select_and_scatter` (Keras' reference) gives it,
    # rather than tied maxima sharing it.
    shape = [1] * tiles.ndim
    shape[axes[0]], shape[axes[1]] = size
    order = jnp.arange(size[0] * size[1], dtype=jnp.int32).reshape(shape)
    candidates = jnp.where(tiles == jnp.expand_dims(pooled, axes), order, size[0] * size[1])
    first = order == jnp.expand_dims(jnp.min(candidates, axis=axes), axes)
    tangent_tiles, _ = _tiles(tangent, size, data_format)
    return pooled, jnp.sum(jnp.where(first, tangent_tiles, jnp.zeros_like(tangent_tiles)), axis=axes)


def pool(inputs, size, strides, mode, data_format="channels_last"):
    """Max or average pooling over tiles of `size` ("valid": a remainder is dropped)."""
    inputs = jnp.asarray(inputs)
    if mode == "max":
        return _max_pool_tiles(inputs, pair(size), data_format)
    tiles, axes = _tiles(inputs, pair(size), data_format)
    return jnp.mean(tiles, axis=axes)


# What jax2onnx converts each primitive into (`jax_onnx`).
PORTABLE_FORMS = ((apply_p, portable_apply), (input_gradient_p, portable_input_gradient),
                  (correlate_p, portable_correlate))
