// Fused involution apply step for PyTorch on the CPU.
//
// One pass over memory per direction: every output pixel reads its K*K
// neighbours (which stay in cache between neighbouring pixels) and its
// kernel, and writes its channels once. Tensors are channels-last and
// contiguous: x (B, H, W, C), kernel (B, Ho, Wo, G*K*K) group-major,
// output (B, Ho, Wo, C); channel c belongs to group c / (C / G). The
// innermost loops run over a group's contiguous channels, so they vectorise.
//
// The input gradient is computed as a gather over the output pixels that
// read each input pixel, so parallel rows never write to the same memory.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

struct Geometry {
  int64_t batch, height, width, channels, out_h, out_w, groups, kernel_size, stride, dilation, pad;
  int64_t group_channels() const { return channels / groups; }
  int64_t taps() const { return kernel_size * kernel_size; }
};

// Channels are processed in blocks of 16 or 8: a block's accumulators stay
// in vector registers across all K*K taps, so each tap costs one load and one
// multiply-add per block instead of a load-modify-store of the output.
constexpr int64_t kBlock = 16;

inline int64_t block_width(int64_t remaining) {
  return remaining >= 16 ? 16 : remaining >= 8 ? 8 : remaining;
}

// The taps of output pixel (oy, ox) that fall inside the input (the rest
// read zero padding and contribute nothing): their indices and the input
// pixels they read. Returns how many.
inline int64_t taps_of(const Geometry& g, int64_t oy, int64_t ox, int64_t* taps, int64_t* pixels) {
  int64_t count = 0;
  for (int64_t ky = 0; ky < g.kernel_size; ++ky) {
    const int64_t iy = oy * g.stride - g.pad + ky * g.dilation;
    if (iy < 0 || iy >= g.height) continue;
    for (int64_t kx = 0; kx < g.kernel_size; ++kx) {
      const int64_t ix = ox * g.stride - g.pad + kx * g.dilation;
      if (ix < 0 || ix >= g.width) continue;
      taps[count] = ky * g.kernel_size + kx;
      pixels[count++] = iy * g.width + ix;
    }
  }
  return count;
}

// The output pixels whose window reads input pixel (iy, ix), and through
// which tap. Returns how many.
inline int64_t readers_of(const Geometry& g, int64_t iy, int64_t ix, int64_t* taps, int64_t* pixels) {
  int64_t count = 0;
  for (int64_t ky = 0; ky < g.kernel_size; ++ky) {
    const int64_t sy = iy + g.pad - ky * g.dilation;
    if (sy < 0 || sy % g.stride != 0 || sy / g.stride >= g.out_h) continue;
    for (int64_t kx = 0; kx < g.kernel_size; ++kx) {
      const int64_t sx = ix + g.pad - kx * g.dilation;
      if (sx < 0 || sx % g.stride != 0 || sx / g.stride >= g.out_w) continue;
      taps[count] = ky * g.kernel_size + kx;
      pixels[count++] = (sy / g.stride) * g.out_w + sx / g.stride;
    }
  }
  return count;
}

template <int64_t W, typename scalar_t, typename Taps>
inline void accumulate_fixed(scalar_t* __restrict__ out, Taps taps) {
  scalar_t acc[W] = {};
  taps([&](scalar_t w, const scalar_t* __restrict__ src) {
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) acc[c] += w * src[c];
  });
  for (int64_t c = 0; c < W; ++c) out[c] = acc[c];
}

// out[c] = sum over taps of weight(tap) * source(tap)[c], for one block of
// `width` channels (16 and 8 are the vectorised cases).
template <typename scalar_t, typename Taps>
inline void accumulate_block(scalar_t* __restrict__ out, int64_t width, Taps taps) {
  if (width == 16) return accumulate_fixed<16>(out, taps);
  if (width == 8) return accumulate_fixed<8>(out, taps);
  scalar_t acc[kBlock] = {};
  taps([&](scalar_t w, const scalar_t* __restrict__ src) {
    for (int64_t c = 0; c < width; ++c) acc[c] += w * src[c];
  });
  for (int64_t c = 0; c < width; ++c) out[c] = acc[c];
}

// Calls fn(grp, c0, width) for every block of every group's channels.
template <typename Fn>
inline void for_each_block(const Geometry& g, Fn fn) {
  const int64_t cg = g.group_channels();
  for (int64_t grp = 0; grp < g.groups; ++grp) {
    for (int64_t c0 = grp * cg, width; c0 < (grp + 1) * cg; c0 += width) {
      width = block_width((grp + 1) * cg - c0);
      fn(grp, c0, width);
    }
  }
}

// Calls fn(pixel, image, count, taps, sources) for every output pixel, in
// parallel over output rows: `image` is the pixel's input image, and the
// first `count` entries of `taps` / `sources` its in-image taps and the
// input pixels they read (see taps_of).
template <typename scalar_t, typename Fn>
void for_each_output_pixel(const scalar_t* x, const Geometry& g, Fn fn) {
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> taps(g.taps()), sources(g.taps());
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.out_h, oy = row % g.out_h;
      const scalar_t* image = x + b * g.height * g.width * g.channels;
      for (int64_t ox = 0; ox < g.out_w; ++ox) {
        const int64_t count = taps_of(g, oy, ox, taps.data(), sources.data());
        fn(row * g.out_w + ox, image, count, taps.data(), sources.data());
      }
    }
  });
}

template <typename scalar_t>
void forward_impl(const scalar_t* x, const scalar_t* kernel, scalar_t* out, const Geometry& g) {
  const int64_t taps = g.taps(), kw = g.groups * taps;
  for_each_output_pixel(x, g, [&](int64_t pixel, const scalar_t* image, int64_t count, const int64_t* tap,
                                  const int64_t* source) {
    const scalar_t* k = kernel + pixel * kw;
    for_each_block(g, [&](int64_t grp, int64_t c0, int64_t width) {
      accumulate_block<scalar_t>(out + pixel * g.channels + c0, width, [&](auto&& add) {
        for (int64_t i = 0; i < count; ++i) add(k[grp * taps + tap[i]], image + source[i] * g.channels + c0);
      });
    });
  });
}

template <typename scalar_t>
void grad_kernel_impl(const scalar_t* x, const scalar_t* grad, scalar_t* grad_kernel, const Geometry& g) {
  const int64_t cg = g.group_channels(), taps = g.taps(), kw = g.groups * taps;
  for_each_output_pixel(x, g, [&](int64_t pixel, const scalar_t* image, int64_t count, const int64_t* tap,
                                  const int64_t* source) {
    const scalar_t* __restrict__ dy = grad + pixel * g.channels;
    scalar_t* dk = grad_kernel + pixel * kw;
    for (int64_t i = 0; i < kw; ++i) dk[i] = 0;
    for (int64_t i = 0; i < count; ++i) {
      const scalar_t* __restrict__ xi = image + source[i] * g.channels;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t c = grp * cg; c < (grp + 1) * cg; ++c) sum += dy[c] * xi[c];
        dk[grp * taps + tap[i]] = sum;
      }
    }
  });
}

template <typename scalar_t>
void grad_input_impl(const scalar_t* kernel, const scalar_t* grad, scalar_t* grad_x, const Geometry& g) {
  const int64_t taps = g.taps(), kw = g.groups * taps;
  at::parallel_for(0, g.batch * g.height, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> tap(taps), reader(taps);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.height, iy = row % g.height;
      const scalar_t* k = kernel + b * g.out_h * g.out_w * kw;
      const scalar_t* dy = grad + b * g.out_h * g.out_w * g.channels;
      for (int64_t ix = 0; ix < g.width; ++ix) {
        scalar_t* dx = grad_x + (row * g.width + ix) * g.channels;
        const int64_t count = readers_of(g, iy, ix, tap.data(), reader.data());
        for_each_block(g, [&](int64_t grp, int64_t c0, int64_t width) {
          accumulate_block<scalar_t>(dx + c0, width, [&](auto&& add) {
            for (int64_t i = 0; i < count; ++i) {
              add(k[reader[i] * kw + grp * taps + tap[i]], dy + reader[i] * g.channels + c0);
            }
          });
        });
      }
    }
  });
}

Geometry geometry(const torch::Tensor& x, const torch::Tensor& kernel, int64_t groups, int64_t kernel_size,
                  int64_t stride, int64_t dilation) {
  TORCH_CHECK(x.dim() == 4 && kernel.dim() == 4, "involution_cpu expects 4D channels-last tensors");
  TORCH_CHECK(x.is_contiguous() && kernel.is_contiguous(), "involution_cpu expects contiguous tensors");
  TORCH_CHECK(x.size(3) % groups == 0, "channels must be divisible by groups");
  TORCH_CHECK(kernel.size(3) == groups * kernel_size * kernel_size, "kernel has the wrong number of taps");
  return Geometry{x.size(0), x.size(1), x.size(2), x.size(3), kernel.size(1), kernel.size(2),
                  groups, kernel_size, stride, dilation, dilation * (kernel_size - 1) / 2};
}

}  // namespace

torch::Tensor forward(torch::Tensor x, torch::Tensor kernel, int64_t groups, int64_t kernel_size, int64_t stride,
                      int64_t dilation) {
  const Geometry g = geometry(x, kernel, groups, kernel_size, stride, dilation);
  auto out = torch::empty({g.batch, g.out_h, g.out_w, g.channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "involution_forward", [&] {
    forward_impl<scalar_t>(x.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g);
  });
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor grad, torch::Tensor x, torch::Tensor kernel, int64_t groups,
                                    int64_t kernel_size, int64_t stride, int64_t dilation, bool need_input,
                                    bool need_kernel) {
  const Geometry g = geometry(x, kernel, groups, kernel_size, stride, dilation);
  TORCH_CHECK(grad.is_contiguous(), "involution_cpu expects a contiguous gradient");
  torch::Tensor grad_x, grad_kernel;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "involution_backward", [&] {
    if (need_input) {
      grad_x = torch::empty_like(x);
      grad_input_impl<scalar_t>(kernel.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), g);
    }
    if (need_kernel) {
      grad_kernel = torch::empty_like(kernel);
      grad_kernel_impl<scalar_t>(x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                 grad_kernel.data_ptr<scalar_t>(), g);
    }
  });
  return {grad_x, grad_kernel};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "Involution apply step, channels-last (CPU)");
  m.def("backward", &backward, "Gradients of the involution apply step (CPU)");
}
