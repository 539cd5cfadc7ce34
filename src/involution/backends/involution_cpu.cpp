// Fused involution apply step for PyTorch on the CPU: tensor checks and
// dtype dispatch around the loops of involution_kernels.h, run on PyTorch's
// intra-op threads.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

namespace involution {
template <typename Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const Fn& fn) {
  at::parallel_for(begin, end, grain, fn);
}
}  // namespace involution

#include "involution_kernels.h"

namespace {

using involution::Geometry;

Geometry geometry(const torch::Tensor& x, int64_t out_h, int64_t out_w, int64_t groups, int64_t kernel_size,
                  int64_t stride, int64_t dilation) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "involution_cpu expects contiguous 4D channels-last tensors");
  TORCH_CHECK(x.size(3) % groups == 0, "channels must be divisible by groups");
  return Geometry{x.size(0), x.size(1), x.size(2), x.size(3), out_h, out_w,
                  groups, kernel_size, stride, dilation, dilation * (kernel_size - 1) / 2};
}

Geometry geometry(const torch::Tensor& x, const torch::Tensor& kernel, int64_t groups, int64_t kernel_size,
                  int64_t stride, int64_t dilation) {
  TORCH_CHECK(kernel.dim() == 4 && kernel.is_contiguous(), "involution_cpu expects a contiguous 4D kernel");
  TORCH_CHECK(kernel.size(3) == groups * kernel_size * kernel_size, "kernel has the wrong number of taps");
  return geometry(x, kernel.size(1), kernel.size(2), groups, kernel_size, stride, dilation);
}

}  // namespace

torch::Tensor forward(torch::Tensor x, torch::Tensor kernel, int64_t groups, int64_t kernel_size, int64_t stride,
                      int64_t dilation) {
  const Geometry g = geometry(x, kernel, groups, kernel_size, stride, dilation);
  auto out = torch::empty({g.batch, g.out_h, g.out_w, g.channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "involution_forward", [&] {
    involution::forward<scalar_t>(x.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g);
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
      auto regrouped = torch::empty_like(kernel);
      involution::input_gradient<scalar_t>(kernel.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                           grad_x.data_ptr<scalar_t>(), regrouped.data_ptr<scalar_t>(), g);
    }
    if (need_kernel) {
      grad_kernel = torch::empty_like(kernel);
      involution::kernel_gradient<scalar_t>(x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                     grad_kernel.data_ptr<scalar_t>(), g);
    }
  });
  return {grad_x, grad_kernel};
}

// Window correlation: out[p, g, t] = sum over group g's channels of
// grad[p, c] * x[window tap t of p, c]. It is the apply step's kernel
// gradient, and local attention's query-key logits (grad = queries,
// x = keys). Output (B, Ho, Wo, G*K*K), group-major, zero at padding taps.
torch::Tensor correlate(torch::Tensor x, torch::Tensor grad, int64_t groups, int64_t kernel_size, int64_t stride,
                        int64_t dilation) {
  TORCH_CHECK(grad.dim() == 4 && grad.is_contiguous() && grad.size(3) == x.size(3),
              "correlate expects a contiguous grad (B, Ho, Wo, C) with x's channels");
  const Geometry g = geometry(x, grad.size(1), grad.size(2), groups, kernel_size, stride, dilation);
  auto out = torch::empty({g.batch, g.out_h, g.out_w, groups * g.taps()}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "involution_correlate", [&] {
    involution::kernel_gradient<scalar_t>(x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "Involution apply step, channels-last (CPU)");
  m.def("backward", &backward, "Gradients of the involution apply step (CPU)");
  m.def("correlate", &correlate, "Window correlation: the kernel gradient's form (CPU)");
}
