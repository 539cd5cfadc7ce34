// Pooling by tiles (pool size == strides, "valid": a remainder is dropped)
// of a contiguous channels-last (B, H, W, C) buffer, on the CPU, for the
// TensorFlow binding (involution_tf.cpp).
//
// One pass over memory each way, vectorised along the contiguous channels.
// Max pooling's gradient goes to each tile's first maximum in row-major
// order, as TensorFlow's and XLA's own do; average pooling's is spread
// evenly. Input pixels outside every tile get a zero gradient.
//
// The including file defines involution::parallel_for (see
// involution_kernels.h) before including this header.

#pragma once

#include <cstdint>
#include <vector>

namespace involution {
namespace pool {

struct Tiles {
  int64_t batch, height, width, channels, size;
  int64_t out_h() const { return height / size; }
  int64_t out_w() const { return width / size; }
};

inline const char* invalid_tiles(const Tiles& t) {
  if (t.size < 1) return "size must be a positive integer";
  if (t.batch < 0 || t.height < 0 || t.width < 0 || t.channels < 0) return "negative dimension";
  return nullptr;
}

// Calls fn(b, input row, output row) in parallel over output rows.
template <typename Fn>
void for_output_rows(const Tiles& t, const Fn& fn) {
  parallel_for(0, t.batch * t.out_h(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) fn(row / t.out_h(), (row % t.out_h()) * t.size, row);
  });
}

template <typename scalar_t>
void forward(const scalar_t* x, scalar_t* y, const Tiles& t, bool max) {
  const int64_t c_n = t.channels, ow = t.out_w(), s = t.size;
  const scalar_t scale = scalar_t(1) / static_cast<scalar_t>(s * s);
  for_output_rows(t, [&](int64_t b, int64_t iy, int64_t row) {
    const scalar_t* image = x + b * t.height * t.width * c_n;
    for (int64_t ox = 0; ox < ow; ++ox) {
      scalar_t* __restrict__ out = y + (row * ow + ox) * c_n;
      for (int64_t u = 0; u < s; ++u) {
        for (int64_t v = 0; v < s; ++v) {
          const scalar_t* __restrict__ in = image + ((iy + u) * t.width + ox * s + v) * c_n;
          if (u == 0 && v == 0) {
#pragma omp simd
            for (int64_t c = 0; c < c_n; ++c) out[c] = in[c];
          } else if (max) {
#pragma omp simd
            for (int64_t c = 0; c < c_n; ++c) out[c] = in[c] > out[c] ? in[c] : out[c];
          } else {
#pragma omp simd
            for (int64_t c = 0; c < c_n; ++c) out[c] += in[c];
          }
        }
      }
      if (!max) {
#pragma omp simd
        for (int64_t c = 0; c < c_n; ++c) out[c] *= scale;
      }
    }
  });
}

// dx from the output gradient dy (and, for max pooling, the input x and
// the pooled output y, which locate each tile's first maximum).
template <typename scalar_t>
void backward(const scalar_t* x, const scalar_t* y, const scalar_t* dy, scalar_t* dx, const Tiles& t, bool max) {
  const int64_t c_n = t.channels, ow = t.out_w(), s = t.size, taps = s * s;
  const scalar_t scale = scalar_t(1) / static_cast<scalar_t>(taps);
  for_output_rows(t, [&](int64_t b, int64_t iy, int64_t row) {
    std::vector<int32_t> first(c_n);
    const int64_t image = b * t.height * t.width;
    for (int64_t ox = 0; ox < ow; ++ox) {
      const scalar_t* __restrict__ up = dy + (row * ow + ox) * c_n;
      const scalar_t* __restrict__ pooled = y + (row * ow + ox) * c_n;
      auto pixel = [&](int64_t k) { return (image + (iy + k / s) * t.width + ox * s + k % s) * c_n; };
      if (max) {
        int32_t* __restrict__ index = first.data();
        for (int64_t c = 0; c < c_n; ++c) index[c] = static_cast<int32_t>(taps);
        for (int64_t k = taps - 1; k >= 0; --k) {  // the last match found is the first in the tile
          const scalar_t* __restrict__ in = x + pixel(k);
          const int32_t kk = static_cast<int32_t>(k);
#pragma omp simd
          for (int64_t c = 0; c < c_n; ++c) index[c] = in[c] == pooled[c] ? kk : index[c];
        }
      }
      for (int64_t k = 0; k < taps; ++k) {
        scalar_t* __restrict__ g = dx + pixel(k);
        if (max) {
          const int32_t* __restrict__ index = first.data();
          const int32_t kk = static_cast<int32_t>(k);
#pragma omp simd
          for (int64_t c = 0; c < c_n; ++c) g[c] = index[c] == kk ? up[c] : scalar_t(0);
        } else {
#pragma omp simd
          for (int64_t c = 0; c < c_n; ++c) g[c] = up[c] * scale;
        }
      }
    }
    // Columns right of the last tile.
    for (int64_t u = 0; u < s; ++u) {
      for (int64_t ix = ow * s; ix < t.width; ++ix) {
        scalar_t* g = dx + (image + (iy + u) * t.width + ix) * c_n;
        for (int64_t c = 0; c < c_n; ++c) g[c] = 0;
      }
    }
  });
  // Rows below the last tile.
  for (int64_t b = 0; b < t.batch; ++b) {
    for (int64_t iy = t.out_h() * s; iy < t.height; ++iy) {
      scalar_t* g = dx + (b * t.height + iy) * t.width * c_n;
      for (int64_t i = 0; i < t.width * c_n; ++i) g[i] = 0;
    }
  }
}

}  // namespace pool
}  // namespace involution
