// Fused involution apply step for JAX on the CPU: XLA FFI handlers around
// the loops of involution_kernels.h, run on OpenMP threads.
//
// Buffers arrive channels-last and contiguous (XLA's default row-major
// layout): x (B, H, W, C), kernel (B, Ho, Wo, G*K*K) group-major,
// output and gradients shaped like them. Attributes: groups, kernel_size,
// stride, dilation (int64).

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace involution {
// One contiguous chunk of [begin, end) per OpenMP thread (rows cost alike).
template <typename Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const Fn& fn) {
  const int64_t total = end - begin;
  if (total <= 0) return;
  const int64_t most = std::max<int64_t>(1, total / std::max<int64_t>(1, grain));
  const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), most));
#pragma omp parallel num_threads(threads)
  {
    const int64_t id = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t first = begin + total * id / count, last = begin + total * (id + 1) / count;
    if (first < last) fn(first, last);
  }
}
}  // namespace involution

#include "involution_kernels.h"

namespace ffi = xla::ffi;

namespace {

using involution::Geometry;

ffi::Error check_rank(const ffi::AnyBuffer& buffer, const char* name) {
  if (buffer.dimensions().size() != 4) {
    return ffi::Error::InvalidArgument(std::string("involution_ffi: ") + name + " must be 4D (B, H, W, C)");
  }
  return ffi::Error::Success();
}

// x (B, H, W, C) and the output-grid buffer `grid` (B, Ho, Wo, *).
ffi::Error geometry(const ffi::AnyBuffer& x, const ffi::AnyBuffer& grid, int64_t groups, int64_t kernel_size,
                    int64_t stride, int64_t dilation, Geometry* g) {
  if (auto error = check_rank(x, "x"); error.failure()) return error;
  if (auto error = check_rank(grid, "kernel"); error.failure()) return error;
  const auto xd = x.dimensions(), kd = grid.dimensions();
  if (groups <= 0 || xd[3] % groups != 0) return ffi::Error::InvalidArgument("involution_ffi: bad groups");
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], kd[1], kd[2], groups, kernel_size, stride, dilation,
                dilation * (kernel_size - 1) / 2};
  return ffi::Error::Success();
}

// Calls fn(scalar_t{}) for float32 and float64 buffers.
template <typename Fn>
ffi::Error by_dtype(const ffi::AnyBuffer& x, Fn fn) {
  switch (x.element_type()) {
    case ffi::DataType::F32:
      fn(float{});
      return ffi::Error::Success();
    case ffi::DataType::F64:
      fn(double{});
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("involution_ffi: only float32 and float64 are supported");
  }
}

template <typename T>
T* data(const ffi::AnyBuffer& buffer) {
  return static_cast<T*>(buffer.untyped_data());
}

template <typename T>
T* data(ffi::Result<ffi::AnyBuffer>& buffer) {
  return static_cast<T*>(buffer->untyped_data());
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> out, int64_t groups,
                   int64_t kernel_size, int64_t stride, int64_t dilation) {
  Geometry g;
  if (auto error = geometry(x, kernel, groups, kernel_size, stride, dilation, &g); error.failure()) return error;
  return by_dtype(x, [&](auto zero) {
    using T = decltype(zero);
    involution::forward<T>(data<T>(x), data<T>(kernel), data<T>(out), g);
  });
}

ffi::Error Backward(ffi::AnyBuffer grad, ffi::AnyBuffer x, ffi::AnyBuffer kernel,
                    ffi::Result<ffi::AnyBuffer> grad_x, ffi::Result<ffi::AnyBuffer> grad_kernel, int64_t groups,
                    int64_t kernel_size, int64_t stride, int64_t dilation) {
  Geometry g;
  if (auto error = geometry(x, kernel, groups, kernel_size, stride, dilation, &g); error.failure()) return error;
  return by_dtype(x, [&](auto zero) {
    using T = decltype(zero);
    std::vector<T> regrouped(kernel.element_count());
    involution::input_gradient<T>(data<T>(kernel), data<T>(grad), data<T>(grad_x), regrouped.data(), g);
    involution::kernel_gradient<T>(data<T>(x), data<T>(grad), data<T>(grad_kernel), g);
  });
}

}  // namespace

// Every handler takes the apply step's geometry as attributes.
#define INVOLUTION_GEOMETRY_ATTRIBUTES \
  .Attr<int64_t>("groups").Attr<int64_t>("kernel_size").Attr<int64_t>("stride").Attr<int64_t>("dilation")

XLA_FFI_DEFINE_HANDLER_SYMBOL(InvolutionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // kernel
                                  .Ret<ffi::AnyBuffer>()  // output
                                      INVOLUTION_GEOMETRY_ATTRIBUTES);

XLA_FFI_DEFINE_HANDLER_SYMBOL(InvolutionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // output gradient
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // kernel
                                  .Ret<ffi::AnyBuffer>()  // input gradient
                                  .Ret<ffi::AnyBuffer>()  // kernel gradient
                                      INVOLUTION_GEOMETRY_ATTRIBUTES);
