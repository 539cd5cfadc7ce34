// Fused involution apply step for JAX on the CPU: XLA FFI handlers around
// the loops of involution_kernels.h, run on OpenMP threads.
//
// Buffers arrive channels-last and contiguous (XLA's default row-major
// layout): x (B, H, W, C), kernel (B, Ho, Wo, G*K*K) group-major,
// output and gradients shaped like them. Three handlers: the apply step and
// its two gradients, which are also each other's gradients (see
// jax_backend.py), so derivatives of any order run these loops. Attributes: groups, kernel_size,
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

ffi::Error invalid(const std::string& message) {
  return ffi::Error::InvalidArgument("involution_ffi: " + message);
}

std::string shape_of(const ffi::AnyBuffer::Dimensions& dims) {
  std::string text = "(";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + ")";
}

// Checks that `buffer` is (B, Ho, Wo, depth) on g's output grid, with x's dtype.
ffi::Error check_grid(const Geometry& g, const ffi::AnyBuffer::Dimensions& dims, ffi::DataType type,
                      ffi::DataType x_type, int64_t depth, const char* name) {
  if (type != x_type) return invalid(std::string(name) + " must have the input's dtype");
  if (dims.size() != 4 || !involution::on_output_grid(g, dims.begin(), depth)) {
    return invalid(std::string(name) + " has shape " + shape_of(dims) + ", expected (" + std::to_string(g.batch) +
                   ", " + std::to_string(g.out_h) + ", " + std::to_string(g.out_w) + ", " + std::to_string(depth) +
                   ")");
  }
  return ffi::Error::Success();
}

// x (B, H, W, C) and the kernel (B, Ho, Wo, G*K*K): every shape the loops
// rely on is checked here, whatever the Python side declared.
ffi::Error geometry(const ffi::AnyBuffer& x, const ffi::AnyBuffer& kernel, int64_t groups, int64_t kernel_size,
                    int64_t stride, int64_t dilation, Geometry* g) {
  const auto xd = x.dimensions(), kd = kernel.dimensions();
  if (xd.size() != 4) return invalid("x must be 4D (B, H, W, C), got shape " + shape_of(xd));
  if (kd.size() != 4) return invalid("kernel must be 4D (B, Ho, Wo, G*K*K), got shape " + shape_of(kd));
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], kd[1], kd[2], groups, kernel_size, stride, dilation,
                dilation * (std::max<int64_t>(kernel_size, 1) - 1) / 2};
  if (const char* problem = involution::invalid_geometry(*g)) return invalid(problem);
  return check_grid(*g, kd, kernel.element_type(), x.element_type(), groups * kernel_size * kernel_size, "kernel");
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
  if (auto error = check_grid(g, out->dimensions(), out->element_type(), x.element_type(), g.channels, "output");
      error.failure())
    return error;
  return by_dtype(x, [&](auto zero) {
    using T = decltype(zero);
    involution::forward<T>(data<T>(x), data<T>(kernel), data<T>(out), g);
  });
}

// The input gradient: grad (B, Ho, Wo, C) and kernel -> grad_x (B, H, W, C),
// the input's size read off the result buffer.
ffi::Error InputGradient(ffi::AnyBuffer grad, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> grad_x,
                         int64_t groups, int64_t kernel_size, int64_t stride, int64_t dilation) {
  Geometry g;
  if (auto error = geometry(*grad_x, kernel, groups, kernel_size, stride, dilation, &g); error.failure())
    return error;
  if (auto error = check_grid(g, grad.dimensions(), grad.element_type(), grad_x->element_type(), g.channels, "grad");
      error.failure())
    return error;
  return by_dtype(grad, [&](auto zero) {
    using T = decltype(zero);
    involution::input_gradient<T>(data<T>(kernel), data<T>(grad), data<T>(grad_x), g);
  });
}

// The window correlation (the kernel gradient): x (B, H, W, C) and grad
// (B, Ho, Wo, C) -> (B, Ho, Wo, G*K*K).
ffi::Error Correlate(ffi::AnyBuffer x, ffi::AnyBuffer grad, ffi::Result<ffi::AnyBuffer> out, int64_t groups,
                     int64_t kernel_size, int64_t stride, int64_t dilation) {
  Geometry g;
  if (auto error = geometry(x, *out, groups, kernel_size, stride, dilation, &g); error.failure()) return error;
  if (auto error = check_grid(g, grad.dimensions(), grad.element_type(), x.element_type(), g.channels, "grad");
      error.failure())
    return error;
  return by_dtype(x, [&](auto zero) {
    using T = decltype(zero);
    involution::kernel_gradient<T>(data<T>(x), data<T>(grad), data<T>(out), g);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(InvolutionInputGradient, InputGradient,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // output gradient
                                  .Arg<ffi::AnyBuffer>()  // kernel
                                  .Ret<ffi::AnyBuffer>()  // input gradient
                                      INVOLUTION_GEOMETRY_ATTRIBUTES);

XLA_FFI_DEFINE_HANDLER_SYMBOL(InvolutionCorrelate, Correlate,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // output gradient
                                  .Ret<ffi::AnyBuffer>()  // kernel gradient
                                      INVOLUTION_GEOMETRY_ATTRIBUTES);
