// A dense layer with ReLU, y = max(x W + b, 0), over the last axis of a
// contiguous (rows, features) buffer of few features (a network's first
// 1x1 convolution on an image), on the CPU, for the PyTorch and TensorFlow bindings.
//
// With three input features the matrix product is a small fraction of the
// work: what costs is memory, and a framework's matmul, bias addition and
// ReLU each write an output map, and its backward pass one more for the
// ReLU's gradient. Here the forward pass writes y once, and the backward
// pass reads the output gradient and y once and writes only the (small)
// input and weight gradients: the ReLU's mask is y > 0, so nothing else is
// kept. Weight and bias sums are accumulated in double by a fixed number
// of row chunks whatever the number of threads, so results do not depend
// on the thread count.
//
// The including file defines involution::parallel_for (see
// involution_kernels.h) before including this header.

#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace involution {
namespace dense {

struct Sizes {
  int64_t rows, in, out;
};

constexpr int64_t kChunks = 32;

template <typename scalar_t>
void relu_forward(const scalar_t* x, const scalar_t* w, const scalar_t* b, scalar_t* y, const Sizes& s) {
  const int64_t in = s.in, out = s.out;
  parallel_for(0, s.rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* __restrict__ features = x + row * in;
      scalar_t* __restrict__ units = y + row * out;
#pragma omp simd
      for (int64_t c = 0; c < out; ++c) units[c] = b[c];
      for (int64_t i = 0; i < in; ++i) {
        const scalar_t feature = features[i];
        const scalar_t* __restrict__ weights = w + i * out;
#pragma omp simd
        for (int64_t c = 0; c < out; ++c) units[c] += feature * weights[c];
      }
#pragma omp simd
      for (int64_t c = 0; c < out; ++c) units[c] = units[c] > scalar_t(0) ? units[c] : scalar_t(0);
    }
  });
}

// From the output gradient g and the output y: with m = g where y > 0, else
// 0, gx = m W^T, gw = x^T m and gb = the column sums of m.
template <typename scalar_t>
void relu_backward(const scalar_t* x, const scalar_t* w, const scalar_t* y, const scalar_t* g, scalar_t* gx,
                   scalar_t* gw, scalar_t* gb, const Sizes& s) {
  const int64_t in = s.in, out = s.out, width = (in + 1) * out;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(kChunks, s.rows));
  std::vector<double> partial(chunks * width, 0.0);
  parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    std::vector<scalar_t> masked(out);
    for (int64_t chunk = first; chunk < last; ++chunk) {
      double* __restrict__ sums = partial.data() + chunk * width;
      const int64_t begin = s.rows * chunk / chunks, end = s.rows * (chunk + 1) / chunks;
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* __restrict__ units = y + row * out;
        const scalar_t* __restrict__ upstream = g + row * out;
        const scalar_t* __restrict__ features = x + row * in;
        scalar_t* __restrict__ m = masked.data();
#pragma omp simd
        for (int64_t c = 0; c < out; ++c) m[c] = units[c] > scalar_t(0) ? upstream[c] : scalar_t(0);
#pragma omp simd
        for (int64_t c = 0; c < out; ++c) sums[in * out + c] += m[c];
        for (int64_t i = 0; i < in; ++i) {
          const double feature = features[i];
          double* __restrict__ row_sums = sums + i * out;
          scalar_t dot = 0;
          const scalar_t* __restrict__ weights = w + i * out;
#pragma omp simd reduction(+ : dot)
          for (int64_t c = 0; c < out; ++c) {
            row_sums[c] += feature * m[c];
            dot += weights[c] * m[c];
          }
          gx[row * in + i] = dot;
        }
      }
    }
  });
  for (int64_t k = 0; k < width; ++k) {
    double total = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partial[chunk * width + k];
    if (k < in * out) {
      gw[k] = static_cast<scalar_t>(total);
    } else {
      gb[k - in * out] = static_cast<scalar_t>(total);
    }
  }
}

}  // namespace dense
}  // namespace involution
