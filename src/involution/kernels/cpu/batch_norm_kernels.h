// Training-mode batch normalization over the last axis of a contiguous
// (rows, channels) buffer, on the CPU, for the TensorFlow binding
// (involution_tf.cpp).
//
// Two passes over memory forward (the statistics, then the normalization)
// and two backward (the two sums, then the input gradient), each
// vectorised along the contiguous channels. Per-channel sums are
// accumulated in double, by a fixed number of row chunks whatever the
// number of threads, so results do not depend on the thread count.
// The statistics are those of Keras' layer: the mean and the biased
// variance, computed about a per-channel shift (the first row) so that a
// large mean does not cost the variance its precision.
//
// The including file defines involution::parallel_for (see
// involution_kernels.h) before including this header.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace involution {
namespace batch_norm {

// Enough chunks to keep every thread busy; few enough that combining their
// sums costs nothing.
constexpr int64_t kChunks = 32;

// sums[chunk][k][c] += term_k(row, c) over the chunk's rows, for `K` terms,
// then the chunks added in order: out[k * channels + c].
template <int K, typename Term>
void channel_sums(int64_t rows, int64_t channels, Term term, double* out) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(kChunks, rows));
  std::vector<double> partial(chunks * K * channels, 0.0);
  parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) {
      double* sums = partial.data() + chunk * K * channels;
      const int64_t begin = rows * chunk / chunks, end = rows * (chunk + 1) / chunks;
      for (int64_t row = begin; row < end; ++row) term(row, sums);
    }
  });
  std::fill(out, out + K * channels, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    for (int64_t i = 0; i < K * channels; ++i) out[i] += partial[chunk * K * channels + i];
  }
}

template <typename T>
void for_rows(int64_t rows, const T& fn) {
  parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) fn(row);
  });
}

// y = (x - mean) * gamma / sqrt(variance + epsilon) + beta; also writes the
// batch's mean and biased variance. `gamma` and `beta` may be null (1, 0).
template <typename scalar_t>
void forward(const scalar_t* x, const scalar_t* gamma, const scalar_t* beta, double epsilon, int64_t rows,
             int64_t channels, scalar_t* y, scalar_t* mean, scalar_t* variance) {
  if (rows == 0) {
    std::fill(mean, mean + channels, scalar_t(0));
    std::fill(variance, variance + channels, scalar_t(0));
    return;
  }
  const scalar_t* __restrict__ shift = x;  // the first row
  std::vector<double> sums(2 * channels);
  channel_sums<2>(rows, channels, [x, shift, channels](int64_t row, double* acc) {
    const scalar_t* __restrict__ xr = x + row * channels;
    double* __restrict__ s1 = acc;
    double* __restrict__ s2 = acc + channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const double d = static_cast<double>(xr[c]) - static_cast<double>(shift[c]);
      s1[c] += d;
      s2[c] += d * d;
    }
  }, sums.data());
  std::vector<scalar_t> center(channels), scale(channels), offset(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const double shifted_mean = sums[c] / rows;
    const double var = std::max(0.0, sums[channels + c] / rows - shifted_mean * shifted_mean);
    const double m = static_cast<double>(shift[c]) + shifted_mean;
    mean[c] = static_cast<scalar_t>(m);
    variance[c] = static_cast<scalar_t>(var);
    center[c] = static_cast<scalar_t>(m);
    scale[c] = static_cast<scalar_t>((gamma ? static_cast<double>(gamma[c]) : 1.0) / std::sqrt(var + epsilon));
    offset[c] = beta ? beta[c] : scalar_t(0);
  }
  const scalar_t *centers = center.data(), *scales = scale.data(), *offsets = offset.data();
  for_rows(rows, [=](int64_t row) {
    const scalar_t* __restrict__ xr = x + row * channels;
    scalar_t* __restrict__ yr = y + row * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) yr[c] = (xr[c] - centers[c]) * scales[c] + offsets[c];
  });
}

// Gradients of sum(dy * y) for y = forward(x): with x_hat the normalized
// input and N the rows,
//   dbeta = sum(dy), dgamma = sum(dy * x_hat),
//   dx = gamma / sqrt(variance + epsilon) * (dy - dbeta / N - x_hat * dgamma / N).
// `mean` and `variance` are forward's. `gamma` may be null (1).
template <typename scalar_t>
void backward(const scalar_t* dy, const scalar_t* x, const scalar_t* gamma, const scalar_t* mean,
              const scalar_t* variance, double epsilon, int64_t rows, int64_t channels, scalar_t* dx,
              scalar_t* dgamma, scalar_t* dbeta) {
  std::vector<scalar_t> inverse_std(channels);
  for (int64_t c = 0; c < channels; ++c) {
    inverse_std[c] = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(variance[c]) + epsilon));
  }
  std::vector<double> sums(2 * channels);
  channel_sums<2>(rows, channels, [&](int64_t row, double* acc) {
    const scalar_t* __restrict__ dyr = dy + row * channels;
    const scalar_t* __restrict__ xr = x + row * channels;
    double* __restrict__ s1 = acc;
    double* __restrict__ s2 = acc + channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      s1[c] += static_cast<double>(dyr[c]);
      s2[c] += static_cast<double>(dyr[c]) * static_cast<double>((xr[c] - mean[c]) * inverse_std[c]);
    }
  }, sums.data());
  std::vector<scalar_t> scale(channels), mean_dy(channels), mean_dy_xhat(channels);
  for (int64_t c = 0; c < channels; ++c) {
    dbeta[c] = static_cast<scalar_t>(sums[c]);
    dgamma[c] = static_cast<scalar_t>(sums[channels + c]);
    scale[c] = (gamma ? gamma[c] : scalar_t(1)) * inverse_std[c];
    mean_dy[c] = static_cast<scalar_t>(rows ? sums[c] / rows : 0.0);
    mean_dy_xhat[c] = static_cast<scalar_t>(rows ? sums[channels + c] / rows : 0.0);
  }
  for_rows(rows, [&](int64_t row) {
    const scalar_t* __restrict__ dyr = dy + row * channels;
    const scalar_t* __restrict__ xr = x + row * channels;
    scalar_t* __restrict__ dxr = dx + row * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const scalar_t x_hat = (xr[c] - mean[c]) * inverse_std[c];
      dxr[c] = scale[c] * (dyr[c] - mean_dy[c] - x_hat * mean_dy_xhat[c]);
    }
  });
}

}  // namespace batch_norm
}  // namespace involution
