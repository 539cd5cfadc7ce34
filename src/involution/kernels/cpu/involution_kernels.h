// The involution apply step's loops on the CPU, shared by the PyTorch
// extension (involution_cpu.cpp) and the JAX FFI library (involution_ffi.cpp).
//
// One pass over memory per direction: every output pixel reads its K*K
// neighbours (which stay in cache between neighbouring pixels) and its
// kernel, and writes its channels once. Buffers are channels-last and
// contiguous: x (B, H, W, C), kernel (B, Ho, Wo, G*K*K) group-major,
// output (B, Ho, Wo, C); channel c belongs to group c / (C / G). The
// innermost loops run over a group's contiguous channels, so they vectorise.
//
// The input gradient is computed as a gather over the output pixels that
// read each input pixel, so parallel rows never write to the same memory.
//
// The including file defines, before including this header,
//   namespace involution { template <typename Fn>
//   void parallel_for(int64_t begin, int64_t end, int64_t grain, const Fn& fn); }
// which calls fn(chunk_begin, chunk_end) over [begin, end) on its threads.

#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define INVOLUTION_AVX2 1
#endif

namespace involution {

struct Geometry {
  int64_t batch, height, width, channels, out_h, out_w, groups, kernel_size, stride, dilation, pad;
  int64_t group_channels() const { return channels / groups; }
  int64_t taps() const { return kernel_size * kernel_size; }
};

// Every loop below addresses memory through a Geometry, so each binding
// checks it (and that its buffers have the shapes it implies) before any
// loop runs. Returns nullptr when it is consistent, else what is wrong.
inline const char* invalid_geometry(const Geometry& g) {
  if (g.kernel_size < 1 || g.kernel_size % 2 == 0) return "kernel_size must be a positive odd integer";
  if (g.stride < 1) return "stride must be a positive integer";
  if (g.dilation < 1) return "dilation must be a positive integer";
  if (g.groups < 1 || g.channels % g.groups != 0) return "groups must be positive and divide the channels";
  if (g.batch < 0 || g.height < 0 || g.width < 0 || g.channels < 0) return "negative dimension";
  if (g.out_h != (g.height + g.stride - 1) / g.stride || g.out_w != (g.width + g.stride - 1) / g.stride)
    return "the kernel's spatial size must be ceil(input size / stride)";
  if (g.pad != g.dilation * (g.kernel_size - 1) / 2) return "padding must be dilation * (kernel_size - 1) / 2";
  return nullptr;
}

// The shape of a (B, Ho, Wo, depth) buffer on the output grid.
inline bool on_output_grid(const Geometry& g, const int64_t* dims, int64_t depth) {
  return dims[0] == g.batch && dims[1] == g.out_h && dims[2] == g.out_w && dims[3] == depth;
}

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

// Along one axis: the output positions whose window reads input position
// `i`, and through which kernel index. Returns how many (at most
// kernel_size).
inline int64_t axis_readers(int64_t i, int64_t pad, int64_t kernel_size, int64_t dilation, int64_t stride,
                            int64_t out, int64_t* index, int64_t* position) {
  int64_t count = 0;
  for (int64_t k = 0; k < kernel_size; ++k) {
    const int64_t s = i + pad - k * dilation;
    if (s < 0 || s % stride != 0 || s / stride >= out) continue;
    index[count] = k;
    position[count++] = s / stride;
  }
  return count;
}

// The readers of every input position along one axis, worked out once per
// image row instead of once per pixel and tap (a division per tap costs
// more than the tap's arithmetic): entry `i * kernel_size + j` is the
// j-th reader of position i, `count[i]` how many there are.
struct AxisReaders {
  std::vector<int64_t> count, index, position;
  AxisReaders(int64_t size, int64_t pad, int64_t kernel_size, int64_t dilation, int64_t stride, int64_t out)
      : count(size), index(size * kernel_size), position(size * kernel_size) {
    for (int64_t i = 0; i < size; ++i) {
      count[i] = axis_readers(i, pad, kernel_size, dilation, stride, out, &index[i * kernel_size],
                              &position[i * kernel_size]);
    }
  }
};

// The output pixels whose window reads input pixel (iy, ix), and through
// which tap, rows' readers first. Returns how many.
inline int64_t readers_of(const Geometry& g, const AxisReaders& rows, const AxisReaders& cols, int64_t iy,
                          int64_t ix, int64_t* taps, int64_t* pixels) {
  int64_t count = 0;
  const int64_t k = g.kernel_size;
  for (int64_t r = 0; r < rows.count[iy]; ++r) {
    const int64_t ky = rows.index[iy * k + r], oy = rows.position[iy * k + r];
    for (int64_t c = 0; c < cols.count[ix]; ++c) {
      taps[count] = ky * k + cols.index[ix * k + c];
      pixels[count++] = oy * g.out_w + cols.position[ix * k + c];
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
  parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
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

#ifdef INVOLUTION_AVX2
// float32 with a multiple of 8 channels per group. Each multiply-add above
// waits for the previous one on its accumulator (about four cycles), and a
// block of 16 channels has only two, so those loops run at a fraction of the
// machine's rate (an eighth of it for 8-channel groups). Here one pass covers
// up to 64 channels, across groups when they are narrower: up to eight
// independent accumulators, enough to hide that latency. Runs of `R`
// neighbouring vectors of a pass belong to one group and share one weight.
struct Pass {
  int64_t c0;           // first channel
  int vectors, run;     // vectors of 8 channels; vectors per weight (R)
  int64_t offsets[8];   // run r's weight, past the tap's weight pointer
};

// The passes over one pixel's channels. `group_stride` is the distance
// between neighbouring groups' weights of one tap.
inline std::vector<Pass> plan_passes(const Geometry& g, int64_t group_stride) {
  const int64_t group_vectors = g.group_channels() / 8, total = g.channels / 8;
  int run = 1;  // the largest power of two up to 8 dividing group_vectors: no run straddles groups
  while (run < 8 && group_vectors % (2 * run) == 0) run *= 2;
  std::vector<Pass> passes;
  for (int64_t v0 = 0; v0 < total; v0 += 8) {
    Pass pass{v0 * 8, static_cast<int>(std::min<int64_t>(8, total - v0)), run, {}};
    for (int r = 0; r * run < pass.vectors; ++r) pass.offsets[r] = (v0 + r * run) / group_vectors * group_stride;
    passes.push_back(pass);
  }
  return passes;
}

template <int NV, int R, typename Taps>
inline void accumulate_vectors(float* __restrict__ out, const int64_t* offsets, Taps taps) {
  constexpr int runs = NV / R;
  int64_t offset[runs];
  for (int r = 0; r < runs; ++r) offset[r] = offsets[r];
  __m256 acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_setzero_ps();
  taps([&](const float* weights, const float* __restrict__ src) {
#pragma GCC unroll 8
    for (int r = 0; r < runs; ++r) {
      const __m256 w = _mm256_broadcast_ss(weights + offset[r]);
#pragma GCC unroll 8
      for (int j = 0; j < R; ++j) {
        acc[r * R + j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(src + 8 * (r * R + j)), acc[r * R + j]);
      }
    }
  });
  for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + 8 * v, acc[v]);
}

// out[c] for one pass's channels, c in [0, 8 * vectors): the sum over taps
// of the weight of c's group times src(tap)[c]. `taps(add)` calls
// add(weights, src) for every tap, `weights` pointing at group 0's weight.
template <typename Taps>
inline void accumulate_pass(float* out, const Pass& pass, Taps taps) {
#define INVOLUTION_PASS(NV, R) \
  case NV * 16 + R:            \
    return accumulate_vectors<NV, R>(out, pass.offsets, taps);
  switch (pass.vectors * 16 + pass.run) {
    INVOLUTION_PASS(1, 1) INVOLUTION_PASS(2, 1) INVOLUTION_PASS(3, 1) INVOLUTION_PASS(4, 1)
    INVOLUTION_PASS(5, 1) INVOLUTION_PASS(6, 1) INVOLUTION_PASS(7, 1) INVOLUTION_PASS(8, 1)
    INVOLUTION_PASS(2, 2) INVOLUTION_PASS(4, 2) INVOLUTION_PASS(6, 2) INVOLUTION_PASS(8, 2)
    INVOLUTION_PASS(4, 4) INVOLUTION_PASS(8, 4) INVOLUTION_PASS(8, 8)
  }
#undef INVOLUTION_PASS
}

inline void forward_avx2(const float* x, const float* kernel, float* out, const Geometry& g) {
  const int64_t taps = g.taps(), kw = g.groups * taps;
  const std::vector<Pass> passes = plan_passes(g, taps);
  for_each_output_pixel(x, g, [&](int64_t pixel, const float* image, int64_t count, const int64_t* tap,
                                  const int64_t* source) {
    const float* k = kernel + pixel * kw;
    for (const Pass& pass : passes) {
      accumulate_pass(out + pixel * g.channels + pass.c0, pass, [&](auto&& add) {
        for (int64_t i = 0; i < count; ++i) add(k + tap[i], image + source[i] * g.channels + pass.c0);
      });
    }
  });
}
#endif

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

#ifdef INVOLUTION_AVX2
// Lane i of the result is the horizontal sum of v[i]: one transpose-and-add
// tree for eight dot products instead of eight separate reductions.
inline __m256 horizontal_sums(const __m256* v) {
  const __m256 ab = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 cd = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

// The sum of v's eight lanes.
inline float lane_sum(__m256 v) {
  const __m128 quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
}

// float32 with a multiple of 8 channels per group: the kernel gradient is
// K*K*G dot products of length C/G per pixel, and reducing each one on its
// own costs more than the multiplies; eight taps are reduced together. A
// chunk with fewer than eight in-image taps reads zeros for the rest, so the
// eight accumulators always have fixed indices and stay in registers. The
// last one to three taps (K=3's ninth, K=7's 49th) are reduced one at a time
// instead: a padded chunk would do eight taps' work for them.
inline void grad_kernel_avx2(const float* x, const float* grad, float* grad_kernel, const Geometry& g) {
  const int64_t cg = g.group_channels(), taps = g.taps(), kw = g.groups * taps;
  const std::vector<float> zeros(g.channels, 0.0f);
  for_each_output_pixel(x, g, [&](int64_t pixel, const float* image, int64_t count, const int64_t* tap,
                                  const int64_t* source) {
    const float* dy = grad + pixel * g.channels;
    float* dk = grad_kernel + pixel * kw;
    for (int64_t i = 0; i < kw; ++i) dk[i] = 0;
    int64_t first = 0;
    for (; count - first >= 4; first += 8) {
      const int64_t n = std::min<int64_t>(8, count - first);
      const float* rows[8];
      for (int64_t i = 0; i < 8; ++i) rows[i] = i < n ? image + source[first + i] * g.channels : zeros.data();
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        __m256 sums[8];
        for (int64_t i = 0; i < 8; ++i) sums[i] = _mm256_setzero_ps();
        for (int64_t c = grp * cg; c < (grp + 1) * cg; c += 8) {
          const __m256 d = _mm256_loadu_ps(dy + c);
#pragma GCC unroll 8
          for (int64_t i = 0; i < 8; ++i) sums[i] = _mm256_fmadd_ps(d, _mm256_loadu_ps(rows[i] + c), sums[i]);
        }
        alignas(32) float reduced[8];
        _mm256_store_ps(reduced, horizontal_sums(sums));
        for (int64_t i = 0; i < n; ++i) dk[grp * taps + tap[first + i]] = reduced[i];
      }
    }
    for (; first < count; ++first) {
      const float* row = image + source[first] * g.channels;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        __m256 sum = _mm256_setzero_ps();
        for (int64_t c = grp * cg; c < (grp + 1) * cg; c += 8)
          sum = _mm256_fmadd_ps(_mm256_loadu_ps(dy + c), _mm256_loadu_ps(row + c), sum);
        dk[grp * taps + tap[first]] = lane_sum(sum);
      }
    }
  });
}
#endif

// The input gradient gathers, for every input pixel, the kernel weights of
// the output pixels that read it. In the kernel's group-major layout the G
// weights of one (pixel, tap) lie `K*K` apart: with more than 16 taps
// (K >= 5), on G cache lines. For those kernels each thread first regroups
// the kernel of the image it is in tap-major, (Ho, Wo, K*K, G), into a
// buffer of one image's kernel, so that they share one, and reads them from
// there while the regrouped image is still in cache (a whole-batch scratch
// buffer would cost a pass over memory and, the size of the kernel, fresh
// pages on every call). A 3x3 kernel is read in place: a tap's group
// weights lie 9 floats apart, and its few readers per pixel leave little to
// win back a copy's pass.
inline bool regroups_for_input_gradient(const Geometry& g) { return g.groups > 1 && g.taps() > 16; }

// The distance between neighbouring groups' weights of one tap, as the
// input gradient reads them.
inline int64_t input_gradient_group_stride(const Geometry& g) {
  return regroups_for_input_gradient(g) ? 1 : g.taps();
}

template <typename scalar_t>
void tap_major_image(const scalar_t* kernel, scalar_t* regrouped, const Geometry& g) {
  const int64_t taps = g.taps(), kw = g.groups * taps, pixels = g.out_h * g.out_w;
  for (int64_t p = 0; p < pixels; ++p) {
    const scalar_t* __restrict__ in = kernel + p * kw;
    scalar_t* __restrict__ out = regrouped + p * kw;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      for (int64_t t = 0; t < taps; ++t) out[t * g.groups + grp] = in[grp * taps + t];
    }
  }
}

// fn(dx, readers) is called for every input pixel, in parallel over input
// rows: `dx` is its gradient, and `readers(add)` calls add(weights, dy) for
// each output pixel that reads it, `weights` pointing at its group-0 weight
// of the tap it reads through (group g's `g * input_gradient_group_stride`
// further) and `dy` at its output gradient.
template <typename scalar_t, typename Fn>
void for_each_input_gradient(const scalar_t* kernel, const scalar_t* grad, scalar_t* grad_x, const Geometry& g,
                             Fn fn) {
  const int64_t taps = g.taps(), kw = g.groups * taps, image_pixels = g.out_h * g.out_w;
  const AxisReaders rows(g.height, g.pad, g.kernel_size, g.dilation, g.stride, g.out_h);
  const AxisReaders cols(g.width, g.pad, g.kernel_size, g.dilation, g.stride, g.out_w);
  const bool regroup = regroups_for_input_gradient(g);
  const int64_t tap_stride = regroup ? g.groups : 1;
  parallel_for(0, g.batch * g.height, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> tap(taps), reader(taps);
    std::unique_ptr<scalar_t[]> regrouped(regroup ? new scalar_t[image_pixels * kw] : nullptr);
    int64_t image = -1;
    const scalar_t* weights = nullptr;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.height, iy = row % g.height;
      if (b != image) {
        weights = kernel + b * image_pixels * kw;
        if (regroup) {
          tap_major_image(weights, regrouped.get(), g);
          weights = regrouped.get();
        }
        image = b;
      }
      const scalar_t* dy = grad + b * image_pixels * g.channels;
      for (int64_t ix = 0; ix < g.width; ++ix) {
        const int64_t count = readers_of(g, rows, cols, iy, ix, tap.data(), reader.data());
        fn(grad_x + (row * g.width + ix) * g.channels, [&](auto&& add) {
          for (int64_t i = 0; i < count; ++i) {
            add(weights + reader[i] * kw + tap[i] * tap_stride, dy + reader[i] * g.channels);
          }
        });
      }
    }
  });
}

template <typename scalar_t>
void grad_input_impl(const scalar_t* kernel, const scalar_t* grad, scalar_t* grad_x, const Geometry& g) {
  const int64_t group_stride = input_gradient_group_stride(g);
  for_each_input_gradient(kernel, grad, grad_x, g, [&](scalar_t* dx, auto&& readers) {
    for_each_block(g, [&](int64_t grp, int64_t c0, int64_t width) {
      accumulate_block<scalar_t>(dx + c0, width, [&](auto&& add) {
        readers([&](const scalar_t* weights, const scalar_t* dy) { add(weights[grp * group_stride], dy + c0); });
      });
    });
  });
}

#ifdef INVOLUTION_AVX2
inline void grad_input_avx2(const float* kernel, const float* grad, float* grad_x, const Geometry& g) {
  const std::vector<Pass> passes = plan_passes(g, input_gradient_group_stride(g));
  for_each_input_gradient(kernel, grad, grad_x, g, [&](float* dx, auto&& readers) {
    for (const Pass& pass : passes) {
      accumulate_pass(dx + pass.c0, pass, [&](auto&& add) {
        readers([&](const float* weights, const float* dy) { add(weights, dy + pass.c0); });
      });
    }
  });
}
#endif

// The AVX2 loops need whole vectors per group.
template <typename scalar_t>
inline bool use_avx2(const Geometry& g) {
#ifdef INVOLUTION_AVX2
  return std::is_same_v<scalar_t, float> && g.group_channels() % 8 == 0;
#else
  return false;
#endif
}

template <typename scalar_t>
void grad_kernel_dispatch(const scalar_t* x, const scalar_t* grad, scalar_t* grad_kernel, const Geometry& g) {
#ifdef INVOLUTION_AVX2
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (use_avx2<scalar_t>(g)) return grad_kernel_avx2(x, grad, grad_kernel, g);
  }
#endif
  grad_kernel_impl<scalar_t>(x, grad, grad_kernel, g);
}

// The three entry points.
template <typename scalar_t>
void forward(const scalar_t* x, const scalar_t* kernel, scalar_t* out, const Geometry& g) {
#ifdef INVOLUTION_AVX2
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (use_avx2<scalar_t>(g)) return forward_avx2(x, kernel, out, g);
  }
#endif
  forward_impl<scalar_t>(x, kernel, out, g);
}

template <typename scalar_t>
void input_gradient(const scalar_t* kernel, const scalar_t* grad, scalar_t* grad_x, const Geometry& g) {
#ifdef INVOLUTION_AVX2
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (use_avx2<scalar_t>(g)) return grad_input_avx2(kernel, grad, grad_x, g);
  }
#endif
  grad_input_impl<scalar_t>(kernel, grad, grad_x, g);
}

// Also local attention's query-key logits (grad = queries, x = keys).
template <typename scalar_t>
void kernel_gradient(const scalar_t* x, const scalar_t* grad, scalar_t* grad_kernel, const Geometry& g) {
  grad_kernel_dispatch<scalar_t>(x, grad, grad_kernel, g);
}

}  // namespace involution
