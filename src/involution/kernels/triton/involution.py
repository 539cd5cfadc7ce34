"""The involution apply step and its two gradients as Triton kernels.

Framework-free: the kernels take pointers and sizes; `involution.backends.
torch_triton` launches them on PyTorch tensors. Every tensor is
channels-last and contiguous: the input `x (B, H, W, C)`, the kernel
`(B, Ho, Wo, G*K*K)` group-major (entry `g*K*K + row*K + col`), the
output and its gradient `(B, Ho, Wo, C)`. A group's `C/G` channels share
their pixel's kernel taps.

- `apply_kernel`: `out[p, c] = sum_t x[window(p, t), c] * kernel[p, g(c), t]`,
  a tile of output pixels by channels, one multiply-add per tap, no
  `K*K` buffer.
- `input_gradient_kernel`: the input gradient as a gather: each input
  pixel sums, over the taps whose window covers it, `grad * kernel` of the
  output pixel that read it there. Every program writes its own pixels,
  so no atomics are needed.
- `correlate_kernel`: the kernel gradient (also local attention's window
  correlation): each output pixel's tap, summed over its group's channels.

Accumulation is float32 (float64 for float64 tensors), whatever the
storage dtype. Indices are 32-bit: the bindings refuse tensors of 2**31
elements or more.
"""

import triton
import triton.language as tl


@triton.jit
def _tile(pixels, channels, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's pixels and channels, and which of them exist."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return p, c, p < pixels, c < channels


@triton.jit
def _coordinates(p, height, width):
    """Batch, row and column of flattened pixel indices of a (B, height, width) grid."""
    return p // (width * height), (p // width) % height, p % width


@triton.jit
def _window_pixel(batch, out_h_index, out_w_index, row, col, height, width, channels, stride, dilation, pad, p_ok):
    """Where tap (row, col) of each output pixel's window reads the input:
    whether inside it, and the offset of its channel 0."""
    in_h = out_h_index * stride - pad + row * dilation
    in_w = out_w_index * stride - pad + col * dilation
    ok = p_ok & (in_h >= 0) & (in_h < height) & (in_w >= 0) & (in_w < width)
    return ok, ((batch * height + in_h) * width + in_w) * channels


@triton.jit
def apply_kernel(x_ptr, kernel_ptr, out_ptr, pixels, height, width, channels, out_h, out_w, group_channels,
                 stride, dilation, pad, KERNEL_SIZE: tl.constexpr, ACCUMULATE_FLOAT64: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    p, c, p_ok, c_ok = _tile(pixels, channels, BLOCK_P, BLOCK_C)
    batch, out_h_index, out_w_index = _coordinates(p, out_h, out_w)
    taps: tl.constexpr = KERNEL_SIZE * KERNEL_SIZE
    kernel_row = p * ((channels // group_channels) * taps)
    kernel_col = (c // group_channels) * taps
    pc_ok = p_ok[:, None] & c_ok[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64 if ACCUMULATE_FLOAT64 else tl.float32)
    for row in range(KERNEL_SIZE):
        for col in range(KERNEL_SIZE):
            ok, x_offset = _window_pixel(batch, out_h_index, out_w_index, row, col, height, width, channels, stride,
                                         dilation, pad, p_ok)
            x = tl.load(x_ptr + x_offset[:, None] + c[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
            tap = row * KERNEL_SIZE + col
            k = tl.load(kernel_ptr + kernel_row[:, None] + (kernel_col + tap)[None, :], mask=pc_ok, other=0.0)
            acc += x.to(acc.dtype) * k.to(acc.dtype)
    tl.store(out_ptr + p[:, None] * channels + c[None, :], acc.to(out_ptr.dtype.element_ty), mask=pc_ok)


@triton.jit
def input_gradient_kernel(grad_ptr, kernel_ptr, out_ptr, pixels, height, width, channels, out_h, out_w,
                          group_channels, stride, dilation, pad, KERNEL_SIZE: tl.constexpr,
                          ACCUMULATE_FLOAT64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Output pixel (oh, ow) reads input row oh*stride - pad + row*dilation
    # through tap row, so input row h is read by oh = (h + pad -
    # row*dilation) / stride where that divides exactly and lies in range.
    p, c, p_ok, c_ok = _tile(pixels, channels, BLOCK_P, BLOCK_C)
    batch, h_index, w_index = _coordinates(p, height, width)
    taps: tl.constexpr = KERNEL_SIZE * KERNEL_SIZE
    kernel_stride = (channels // group_channels) * taps
    kernel_col = (c // group_channels) * taps
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64 if ACCUMULATE_FLOAT64 else tl.float32)
    for row in range(KERNEL_SIZE):
        reach_h = h_index + pad - row * dilation
        # Negative numerators are out anyway; clamping them keeps `//` and
        # `%` on non-negative numbers, where C's and Python's rounding agree.
        safe_h = tl.where(reach_h >= 0, reach_h, 0)
        o_h = safe_h // stride
        h_ok = p_ok & (reach_h >= 0) & (safe_h % stride == 0) & (o_h < out_h)
        for col in range(KERNEL_SIZE):
            reach_w = w_index + pad - col * dilation
            safe_w = tl.where(reach_w >= 0, reach_w, 0)
            o_w = safe_w // stride
            ok = h_ok & (reach_w >= 0) & (safe_w % stride == 0) & (o_w < out_w)
            reader = (batch * out_h + o_h) * out_w + o_w
            mask = ok[:, None] & c_ok[None, :]
            g = tl.load(grad_ptr + (reader * channels)[:, None] + c[None, :], mask=mask, other=0.0)
            tap = row * KERNEL_SIZE + col
            k = tl.load(kernel_ptr + (reader * kernel_stride)[:, None] + (kernel_col + tap)[None, :], mask=mask,
                        other=0.0)
            acc += g.to(acc.dtype) * k.to(acc.dtype)
    tl.store(out_ptr + p[:, None] * channels + c[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def correlate_kernel(x_ptr, grad_ptr, out_ptr, pixels, height, width, channels, out_h, out_w, group_channels,
                     stride, dilation, pad, KERNEL_SIZE: tl.constexpr, ACCUMULATE_FLOAT64: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Program (pixels block, group): the group's K*K taps of each pixel.
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    group = tl.program_id(1)
    lane = tl.arange(0, BLOCK_C)
    p_ok = p < pixels
    batch, out_h_index, out_w_index = _coordinates(p, out_h, out_w)
    taps: tl.constexpr = KERNEL_SIZE * KERNEL_SIZE
    out_row = p * ((channels // group_channels) * taps) + group * taps
    for row in range(KERNEL_SIZE):
        for col in range(KERNEL_SIZE):
            ok, x_offset = _window_pixel(batch, out_h_index, out_w_index, row, col, height, width, channels, stride,
                                         dilation, pad, p_ok)
            acc = tl.zeros((BLOCK_P,), dtype=tl.float64 if ACCUMULATE_FLOAT64 else tl.float32)
            for start in range(0, group_channels, BLOCK_C):
                c = group * group_channels + start + lane
                c_ok = (start + lane) < group_channels
                x = tl.load(x_ptr + x_offset[:, None] + c[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
                g = tl.load(grad_ptr + (p * channels)[:, None] + c[None, :], mask=p_ok[:, None] & c_ok[None, :],
                            other=0.0)
                acc += tl.sum(x.to(acc.dtype) * g.to(acc.dtype), axis=1)
            tl.store(out_ptr + out_row + row * KERNEL_SIZE + col, acc.to(out_ptr.dtype.element_ty), mask=p_ok)


def _power_of_two(value, cap):
    return min(triton.next_power_of_2(max(int(value), 1)), cap)


def block_sizes(kind, pixels, channels, group_channels, interpreted):
    """`(BLOCK_P, BLOCK_C, num_warps)` for one launch.

    On a GPU a tile holds about 4096 elements (2048 for the kernel
    gradient's three live tiles). The interpreter runs every program in
    Python, where the cost is per program: there, one or few large tiles.
    """
    if kind == "correlate":
        block_c = _power_of_two(group_channels, 64)
        budget = 1 << 16 if interpreted else 2048
    else:
        block_c = _power_of_two(channels, 64)
        budget = 1 << 16 if interpreted else 4096
    block_p = _power_of_two(pixels, max(budget // block_c, 16))
    return block_p, block_c, 4
