// Fused involution apply step for PyTorch on the CPU: tensor checks and
// dtype dispatch around the loops of involution_kernels.h, run on PyTorch's
// intra-op threads.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace involution {
template <typename Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const Fn& fn) {
  at::parallel_for(begin, end, grain, fn);
}
}  // namespace involution

#include "involution_kernels.h"
#include "block_cache.h"

namespace {

// An uninitialised output: large maps from the block cache
// (block_cache.h), the rest from PyTorch's allocator.
torch::Tensor empty_map(at::IntArrayRef sizes, const torch::TensorOptions& options) {
  int64_t elements = 1;
  for (const int64_t size : sizes) elements *= size;
  const size_t bytes = static_cast<size_t>(elements) * options.dtype().itemsize();
  auto& blocks = involution::cache::blocks();
  if (!blocks.takes(bytes)) return torch::empty(sizes, options);
  void* data = blocks.allocate(bytes);
  TORCH_CHECK(data != nullptr, "involution_cpu: out of memory for an output of ", bytes, " bytes");
  return torch::from_blob(data, sizes, [](void* block) { involution::cache::blocks().release(block); }, options);
}

using involution::Geometry;

void check_tensor(const torch::Tensor& t, const torch::Tensor& x, const char* name) {
  TORCH_CHECK(t.dim() == 4, "involution_cpu: ", name, " must be 4D, got ", t.dim(), "D");
  TORCH_CHECK(t.is_contiguous(), "involution_cpu: ", name, " must be contiguous");
  TORCH_CHECK(t.device().is_cpu(), "involution_cpu: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "involution_cpu: ", name, " has dtype ", t.scalar_type(),
              ", the input ", x.scalar_type());
}

// An input of shape `x_sizes` (B, H, W, C) and a (B, Ho, Wo, depth) tensor
// `grid` on the output grid (depth -1: C).
Geometry geometry(at::IntArrayRef x_sizes, const torch::Tensor& grid, int64_t depth, const char* grid_name,
                  int64_t groups, int64_t kernel_size, int64_t stride, int64_t dilation) {
  TORCH_CHECK(grid.dim() == 4, "involution_cpu: ", grid_name, " must be 4D, got ", grid.dim(), "D");
  const Geometry g{x_sizes[0], x_sizes[1], x_sizes[2], x_sizes[3], grid.size(1), grid.size(2),
                   groups, kernel_size, stride, dilation, dilation * (std::max<int64_t>(kernel_size, 1) - 1) / 2};
  const char* problem = involution::invalid_geometry(g);
  TORCH_CHECK(problem == nullptr, "involution_cpu: ", problem ? problem : "");
  if (depth < 0) depth = g.channels;
  const int64_t dims[4] = {grid.size(0), grid.size(1), grid.size(2), grid.size(3)};
  TORCH_CHECK(involution::on_output_grid(g, dims, depth), "involution_cpu: ", grid_name, " has shape ",
              grid.sizes(), ", expected (", g.batch, ", ", g.out_h, ", ", g.out_w, ", ", depth, ")");
  return g;
}

Geometry geometry(const torch::Tensor& x, const torch::Tensor& grid, int64_t depth, const char* grid_name,
                  int64_t groups, int64_t kernel_size, int64_t stride, int64_t dilation) {
  check_tensor(x, x, "x");
  check_tensor(grid, x, grid_name);
  return geometry(x.sizes(), grid, depth, grid_name, groups, kernel_size, stride, dilation);
}

Geometry kernel_geometry(const torch::Tensor& x, const torch::Tensor& kernel, int64_t groups, int64_t kernel_size,
                         int64_t stride, int64_t dilation) {
  return geometry(x, kernel, groups * kernel_size * kernel_size, "kernel", groups, kernel_size, stride, dilation);
}

}  // namespace

torch::Tensor forward(torch::Tensor x, torch::Tensor kernel, int64_t groups, int64_t kernel_size, int64_t stride,
                      int64_t dilation) {
  const Geometry g = kernel_geometry(x, kernel, groups, kernel_size, stride, dilation);
  auto out = empty_map({g.batch, g.out_h, g.out_w, g.channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "involution_forward", [&] {
    involution::forward<scalar_t>(x.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g);
  });
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor grad, torch::Tensor x, torch::Tensor kernel, int64_t groups,
                                    int64_t kernel_size, int64_t stride, int64_t dilation, bool need_input,
                                    bool need_kernel) {
  const Geometry g = kernel_geometry(x, kernel, groups, kernel_size, stride, dilation);
  geometry(x, grad, -1, "grad", groups, kernel_size, stride, dilation);
  torch::Tensor grad_x, grad_kernel;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "involution_backward", [&] {
    if (need_input) {
      grad_x = empty_map(x.sizes(), x.options());
      involution::input_gradient<scalar_t>(kernel.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                           grad_x.data_ptr<scalar_t>(), g);
    }
    if (need_kernel) {
      grad_kernel = empty_map(kernel.sizes(), kernel.options());
      involution::kernel_gradient<scalar_t>(x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                     grad_kernel.data_ptr<scalar_t>(), g);
    }
  });
  return {grad_x, grad_kernel};
}

// The input gradient alone: grad (B, Ho, Wo, C) and kernel (B, Ho, Wo,
// G*K*K) give the gradient of an input of size height x width.
torch::Tensor input_gradient(torch::Tensor grad, torch::Tensor kernel, int64_t height, int64_t width, int64_t groups,
                             int64_t kernel_size, int64_t stride, int64_t dilation) {
  check_tensor(grad, grad, "grad");
  check_tensor(kernel, grad, "kernel");
  const int64_t x_sizes[4] = {grad.size(0), height, width, grad.size(3)};
  const Geometry g = geometry(x_sizes, kernel, groups * kernel_size * kernel_size, "kernel", groups, kernel_size,
                              stride, dilation);
  geometry(x_sizes, grad, -1, "grad", groups, kernel_size, stride, dilation);
  auto grad_x = empty_map({g.batch, g.height, g.width, g.channels}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "involution_input_gradient", [&] {
    involution::input_gradient<scalar_t>(kernel.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                         grad_x.data_ptr<scalar_t>(), g);
  });
  return grad_x;
}

// Window correlation: out[p, g, t] = sum over group g's channels of
// grad[p, c] * x[window tap t of p, c]. It is the apply step's kernel
// gradient, and local attention's query-key logits (grad = queries,
// x = keys). Output (B, Ho, Wo, G*K*K), group-major, zero at padding taps.
torch::Tensor correlate(torch::Tensor x, torch::Tensor grad, int64_t groups, int64_t kernel_size, int64_t stride,
                        int64_t dilation) {
  const Geometry g = geometry(x, grad, -1, "grad", groups, kernel_size, stride, dilation);
  auto out = empty_map({g.batch, g.out_h, g.out_w, groups * g.taps()}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "involution_correlate", [&] {
    involution::kernel_gradient<scalar_t>(x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "Involution apply step, channels-last (CPU)");
  m.def("backward", &backward, "Gradients of the involution apply step (CPU)");
  m.def("input_gradient", &input_gradient, "Input gradient of the involution apply step (CPU)");
  m.def("correlate", &correlate, "Window correlation: the kernel gradient's form (CPU)");
}
