"""The involution apply step and its two gradients as Pallas kernels.

The same three kernels as `kernels/triton/involution.py`, written with
JAX Pallas for its Triton lowering on GPUs, and runnable anywhere in
Pallas' interpret mode. Every array is channels-last and contiguous and
reaches the kernels flattened: the input `x (B, H, W, C)`, the kernel
`(B, Ho, Wo, G*K*K)` group-major, the output and its gradient
`(B, Ho, Wo, C)`. Each program takes a tile of pixels by channels and
gathers with computed offsets:

- `apply`: `out[p, c] = sum_t x[window(p, t), c] * kernel[p, g(c), t]`;
- `input_gradient`: per input pixel, the taps whose windows cover it,
  gathered (no atomics: each program writes its own pixels);
- `correlate`: per output pixel and group, each tap's product with the
  window summed over the group's channels (the kernel gradient).

Accumulation is float32 (float64 for float64 arrays). No `K*K` buffer is
made. Offsets are 32-bit: the binding refuses arrays near 2**31 elements.
Masked-out lanes store to distinct offsets past the end of the output, so
that interpret mode, which stores every lane, drops them.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Lanes whose store is masked out write past the end, by up to one tile.
MAX_TILE = 1 << 16


def _accumulator_dtype(dtype):
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _pixels(p, height, width):
    """Batch, row and column of flattened pixel indices of a (B, height, width) grid."""
    return p // (height * width), (p // width) % height, p % width


def _tile(block, pixels, channels):
    """This program's pixels and channels, and which of them exist."""
    p = pl.program_id(0) * block[0] + jnp.arange(block[0], dtype=jnp.int32)
    c = pl.program_id(1) * block[1] + jnp.arange(block[1], dtype=jnp.int32)
    return p, c, p < pixels, c < channels


def _store(ref, offsets, values, mask, size):
    lanes = jnp.arange(values.size, dtype=jnp.int32).reshape(values.shape)
    # Masked-out lanes get distinct offsets past the end (see above).
    plgpu.store(ref.at[jnp.where(mask, offsets, size + lanes)], values.astype(ref.dtype), mask=mask)


def _taps(kernel_size, body, carry, unroll):
    """`body(row, col, carry)` over the window's taps, in order: unrolled in
    Python for GPUs (constant offsets; Triton's lowering takes no unrolled
    `fori_loop`), a rolled loop in interpret mode, whose compile time grows
    with the unrolled code."""
    if unroll:
        for tap in range(kernel_size * kernel_size):
            carry = body(*divmod(tap, kernel_size), carry)
        return carry

    def step(tap, carry):
        return body(tap // kernel_size, tap % kernel_size, carry)

    return lax.fori_loop(0, kernel_size * kernel_size, step, carry)


def _apply_body(x_ref, kernel_ref, out_ref, *, geometry, block, unroll):
    batch, height, width, channels, out_h, out_w, groups, kernel_size, stride, dilation, pad = geometry
    taps = kernel_size * kernel_size
    p, c, p_ok, c_ok = _tile(block, batch * out_h * out_w, channels)
    b, oh, ow = _pixels(p, out_h, out_w)
    kernel_col = (c // (channels // groups)) * taps
    pc_ok = p_ok[:, None] & c_ok[None, :]

    def tap(row, col, acc):
        ih = oh * stride - pad + row * dilation
        iw = ow * stride - pad + col * dilation
        ok = (p_ok & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width))[:, None] & c_ok[None, :]
        x_offsets = (((b * height + ih) * width + iw) * channels)[:, None] + c[None, :]
        k_offsets = (p * (groups * taps))[:, None] + (kernel_col + row * kernel_size + col)[None, :]
        x = plgpu.load(x_ref.at[jnp.where(ok, x_offsets, 0)], mask=ok, other=0)
        k = plgpu.load(kernel_ref.at[jnp.where(pc_ok, k_offsets, 0)], mask=pc_ok, other=0)
        return acc + x.astype(acc.dtype) * k.astype(acc.dtype)

    acc = _taps(kernel_size, tap, jnp.zeros(block, _accumulator_dtype(x_ref.dtype)), unroll)
    _store(out_ref, (p * channels)[:, None] + c[None, :], acc, pc_ok, out_ref.shape[0])


def _input_gradient_body(grad_ref, kernel_ref, out_ref, *, geometry, block, unroll):
    # Output pixel (oh, ow) reads input row oh*stride - pad + row*dilation
    # through tap row: input row h is read by oh = (h + pad - row*dilation)
    # / stride where that divides exactly and lies in range.
    batch, height, width, channels, out_h, out_w, groups, kernel_size, stride, dilation, pad = geometry
    taps = kernel_size * kernel_size
    p, c, p_ok, c_ok = _tile(block, batch * height * width, channels)
    b, h, w = _pixels(p, height, width)
    kernel_col = (c // (channels // groups)) * taps

    def tap(row, col, acc):
        reach_h, reach_w = h + pad - row * dilation, w + pad - col * dilation
        # Negative reaches are out anyway; clamped, `//` and `%` see
        # non-negative numbers only.
        safe_h, safe_w = jnp.maximum(reach_h, 0), jnp.maximum(reach_w, 0)
        ok = (p_ok & (reach_h >= 0) & (safe_h % stride == 0) & (safe_h // stride < out_h)
              & (reach_w >= 0) & (safe_w % stride == 0) & (safe_w // stride < out_w))
        reader = (b * out_h + safe_h // stride) * out_w + safe_w // stride
        mask = ok[:, None] & c_ok[None, :]
        g_offsets = (reader * channels)[:, None] + c[None, :]
        k_offsets = (reader * (groups * taps))[:, None] + (kernel_col + row * kernel_size + col)[None, :]
        g = plgpu.load(grad_ref.at[jnp.where(mask, g_offsets, 0)], mask=mask, other=0)
        k = plgpu.load(kernel_ref.at[jnp.where(mask, k_offsets, 0)], mask=mask, other=0)
        return acc + g.astype(acc.dtype) * k.astype(acc.dtype)

    acc = _taps(kernel_size, tap, jnp.zeros(block, _accumulator_dtype(grad_ref.dtype)), unroll)
    _store(out_ref, (p * channels)[:, None] + c[None, :], acc, p_ok[:, None] & c_ok[None, :], out_ref.shape[0])


def _correlate_body(x_ref, grad_ref, out_ref, *, geometry, block, unroll):
    # Program (pixels tile, group): the group's K*K taps of each pixel. The
    # group's gradient tiles are loaded once and reused by every tap.
    batch, height, width, channels, out_h, out_w, groups, kernel_size, stride, dilation, pad = geometry
    block_p, block_c = block
    taps = kernel_size * kernel_size
    group_channels = channels // groups
    group = pl.program_id(1)
    p = pl.program_id(0) * block_p + jnp.arange(block_p, dtype=jnp.int32)
    lane = jnp.arange(block_c, dtype=jnp.int32)
    p_ok = p < batch * out_h * out_w
    b, oh, ow = _pixels(p, out_h, out_w)
    dtype = _accumulator_dtype(x_ref.dtype)
    grads = []
    for start in range(0, group_channels, block_c):
        c = group * group_channels + start + lane
        mask = p_ok[:, None] & ((start + lane) < group_channels)[None, :]
        offsets = (p * channels)[:, None] + c[None, :]
        grads.append((c, mask, plgpu.load(grad_ref.at[jnp.where(mask, offsets, 0)], mask=mask, other=0)
                      .astype(dtype)))
    out_row = p * (groups * taps) + group * taps

    def tap(row, col, carry):
        ih = oh * stride - pad + row * dilation
        iw = ow * stride - pad + col * dilation
        ok = p_ok & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
        base = ((b * height + ih) * width + iw) * channels
        total = jnp.zeros((block_p,), dtype)
        for c, mask, g in grads:
            x_mask = mask & ok[:, None]
            x = plgpu.load(x_ref.at[jnp.where(x_mask, base[:, None] + c[None, :], 0)], mask=x_mask, other=0)
            total += jnp.sum(x.astype(dtype) * g, axis=1)
        _store(out_ref, out_row + row * kernel_size + col, total, p_ok, out_ref.shape[0])
        return carry

    _taps(kernel_size, tap, jnp.int32(0), unroll)


def _power_of_two(value, cap):
    return min(pl.next_power_of_2(max(int(value), 1)), cap)


def block_sizes(kind, pixels, channels, group_channels, interpret):
    """The tile of one program, `(block_p, block_c)`: about 4096 elements
    on a GPU (2048 for the kernel gradient, which holds its group's
    gradient tile throughout; powers of two, as Triton wants), larger in
    interpret mode, where each program is one iteration of a loop."""
    budget = MAX_TILE if interpret else 4096
    if kind == "correlate":
        block_c = _power_of_two(group_channels, 64)
        return _power_of_two(pixels, max(budget // 2 // block_c, 16)), block_c
    block_c = _power_of_two(channels, 64)
    return _power_of_two(pixels, max(budget // block_c, 16)), block_c


_BODIES = {"apply": _apply_body, "input_gradient": _input_gradient_body, "correlate": _correlate_body}


def call(kind, first, second, out_shape, *, groups, kernel_size, stride, dilation, height, width, interpret):
    """Runs kernel `kind` ("apply", "input_gradient", "correlate").

    Args:
        first, second: the op's two channels-last arrays, `(x, kernel)`,
            `(grad, kernel)` or `(x, grad)`.
        out_shape: the output's 4D shape.
        height, width: the input's spatial size (for the input gradient,
            that of its output).
        interpret: Pallas' interpret mode (any platform; the CPU's only).
    """
    batch, channels = first.shape[0], first.shape[3]
    out_h, out_w = (first.shape[1:3] if kind == "input_gradient" else out_shape[1:3])
    pad = dilation * (kernel_size - 1) // 2
    geometry = (batch, height, width, channels, out_h, out_w, groups, kernel_size, stride, dilation, pad)
    pixels = batch * (height * width if kind == "input_gradient" else out_h * out_w)
    block = block_sizes(kind, pixels, channels, channels // groups, interpret)
    columns = groups if kind == "correlate" else pl.cdiv(channels, block[1])
    size = 1
    for dim in out_shape:
        size *= dim
    run = pl.pallas_call(
        functools.partial(_BODIES[kind], geometry=geometry, block=block, unroll=not interpret),
        out_shape=jax.ShapeDtypeStruct((size,), first.dtype),
        grid=(pl.cdiv(pixels, block[0]), columns),
        interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=4),
        name=f"involution_{kind}",
    )
    return run(first.reshape(-1), second.reshape(-1)).reshape(out_shape)
