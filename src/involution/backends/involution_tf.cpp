// Fused involution apply step for TensorFlow on the CPU: op kernels around
// the loops of involution_kernels.h, run on TensorFlow's intra-op threads.
//
// Three ops, channels-last: InvolutionApply (x, kernel) -> output, and its
// two gradients InvolutionInputGradient (grad, kernel, input_size) -> grad_x
// and InvolutionCorrelate (x, grad) -> grad_kernel, which are also each
// other's gradients (tensorflow_backend.py registers them), so derivatives
// of any order run these loops. Attributes: groups, kernel_size, stride,
// dilation.
//
// Beside them, ops for the layers around the apply step on CPU-only
// TensorFlow: training-mode batch normalization (batch_norm_kernels.h) and
// pooling by tiles (pool_kernels.h), each with its gradient op.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"

namespace involution {
// The op being computed sets its device's intra-op pool here; the loops'
// parallel_for, called on the same thread, splits work across it.
thread_local tensorflow::thread::ThreadPool* current_pool = nullptr;

// One contiguous chunk of [begin, end) per pool thread (rows cost alike).
template <typename Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const Fn& fn) {
  const int64_t total = end - begin;
  if (total <= 0) return;
  tensorflow::thread::ThreadPool* pool = current_pool;
  const int64_t threads = pool ? pool->NumThreads() : 1;
  const int64_t chunks = std::min<int64_t>(threads, std::max<int64_t>(1, total / std::max<int64_t>(1, grain)));
  if (chunks <= 1) {
    fn(begin, end);
    return;
  }
  pool->ParallelFor(chunks, tensorflow::thread::ThreadPool::SchedulingParams::Fixed(1),
                    [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t lo = begin + total * chunk / chunks, hi = begin + total * (chunk + 1) / chunks;
      if (lo < hi) fn(lo, hi);
    }
  });
}
}  // namespace involution

#include "involution_kernels.h"
#include "batch_norm_kernels.h"
#include "pool_kernels.h"
#include "block_cache.h"

namespace {

using involution::Geometry;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace shape_inference = tensorflow::shape_inference;

#define INVOLUTION_GEOMETRY_ATTRS                                                                   \
  Attr("T: {float, double}").Attr("groups: int").Attr("kernel_size: int").Attr("stride: int").Attr( \
      "dilation: int")

// (B, Ho, Wo, depth) from a (B, Ho, Wo, ...) input and a depth.
absl::Status grid_shape(shape_inference::InferenceContext* c, int grid_input,
                              shape_inference::DimensionHandle depth) {
  shape_inference::ShapeHandle grid;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(grid_input), 4, &grid));
  shape_inference::ShapeHandle leading;
  TF_RETURN_IF_ERROR(c->Subshape(grid, 0, 3, &leading));
  shape_inference::ShapeHandle out;
  TF_RETURN_IF_ERROR(c->Concatenate(leading, c->Vector(depth), &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

REGISTER_OP("InvolutionApply")
    .Input("x: T")
    .Input("kernel: T")
    .Output("output: T")
    .INVOLUTION_GEOMETRY_ATTRS
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      return grid_shape(c, 1, c->Dim(x, 3));
    });

REGISTER_OP("InvolutionInputGradient")
    .Input("grad: T")
    .Input("kernel: T")
    .Input("input_size: int32")
    .Output("grad_x: T")
    .INVOLUTION_GEOMETRY_ATTRS
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle grad, size;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &grad));
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(2, &size));
      TF_RETURN_IF_ERROR(c->WithRank(size, 2, &size));
      shape_inference::ShapeHandle out;
      TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(c->Dim(grad, 0)), size, &out));
      TF_RETURN_IF_ERROR(c->Concatenate(out, c->Vector(c->Dim(grad, 3)), &out));
      c->set_output(0, out);
      return absl::OkStatus();
    });

REGISTER_OP("InvolutionCorrelate")
    .Input("x: T")
    .Input("grad: T")
    .Output("grad_kernel: T")
    .INVOLUTION_GEOMETRY_ATTRS
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      int64_t groups, kernel_size;
      TF_RETURN_IF_ERROR(c->GetAttr("groups", &groups));
      TF_RETURN_IF_ERROR(c->GetAttr("kernel_size", &kernel_size));
      return grid_shape(c, 1, c->MakeDim(groups * kernel_size * kernel_size));
    });

// x's shape, then two vectors of its last dimension (the per-channel outputs).
absl::Status batch_norm_shapes(shape_inference::InferenceContext* c, int x_input) {
  shape_inference::ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(x_input), 1, &x));
  c->set_output(0, x);
  c->set_output(1, c->Vector(c->Dim(x, -1)));
  c->set_output(2, c->Vector(c->Dim(x, -1)));
  return absl::OkStatus();
}

// Training-mode batch normalization over the last axis (batch_norm_kernels.h).
REGISTER_OP("InvolutionBatchNorm")
    .Input("x: T")
    .Input("gamma: T")
    .Input("beta: T")
    .Output("y: T")
    .Output("mean: T")
    .Output("variance: T")
    .Attr("T: {float, double}")
    .Attr("epsilon: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) { return batch_norm_shapes(c, 0); });

REGISTER_OP("InvolutionBatchNormGrad")
    .Input("grad: T")
    .Input("x: T")
    .Input("gamma: T")
    .Input("mean: T")
    .Input("variance: T")
    .Output("grad_x: T")
    .Output("grad_gamma: T")
    .Output("grad_beta: T")
    .Attr("T: {float, double}")
    .Attr("epsilon: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) { return batch_norm_shapes(c, 1); });

// Pooling by tiles, channels-last (pool_kernels.h).
REGISTER_OP("InvolutionPool")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {float, double}")
    .Attr("size: int")
    .Attr("mode: {'max', 'average'}")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      int64_t size;
      TF_RETURN_IF_ERROR(c->GetAttr("size", &size));
      if (size < 1) return absl::InvalidArgumentError("involution_tf: size must be a positive integer");
      shape_inference::DimensionHandle rows, cols;
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(x, 1), size, false, &rows));
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(x, 2), size, false, &cols));
      c->set_output(0, c->MakeShape({c->Dim(x, 0), rows, cols, c->Dim(x, 3)}));
      return absl::OkStatus();
    });

// The gradient of InvolutionPool(x) = y for the output gradient `grad`.
REGISTER_OP("InvolutionPoolGrad")
    .Input("x: T")
    .Input("y: T")
    .Input("grad: T")
    .Output("grad_x: T")
    .Attr("T: {float, double}")
    .Attr("size: int")
    .Attr("mode: {'max', 'average'}")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

// Runs fn with the loops' parallel_for on this device's intra-op threads.
template <typename Fn>
void run_on_threads(OpKernelContext* context, Fn fn) {
  involution::current_pool = context->device()->tensorflow_cpu_worker_threads()->workers;
  fn();
  involution::current_pool = nullptr;
}

absl::Status invalid(const std::string& message) {
  return absl::InvalidArgumentError("involution_tf: " + message);
}

// TensorFlow's face of block_cache.h.
class CachedAllocator : public tensorflow::Allocator {
 public:
  std::string Name() override { return "involution_block_cache"; }
  void* AllocateRaw(size_t alignment, size_t num_bytes) override {
    return alignment <= involution::cache::kAlignment ? involution::cache::blocks().allocate(num_bytes) : nullptr;
  }
  void DeallocateRaw(void* ptr) override { involution::cache::blocks().release(ptr); }
};

tensorflow::Allocator* cached_allocator() {
  static CachedAllocator* allocator = new CachedAllocator();
  return allocator;
}

// Output `index` of `shape`: large maps from the block cache, the rest
// from the device's allocator.
template <typename T>
absl::Status allocate_map(OpKernelContext* context, int index, const TensorShape& shape, Tensor** out) {
  if (!involution::cache::blocks().takes(static_cast<size_t>(shape.num_elements()) * sizeof(T))) {
    return context->allocate_output(index, shape, out);
  }
  Tensor tensor(cached_allocator(), tensorflow::DataTypeToEnum<T>::value, shape);
  if (!tensor.IsInitialized()) {
    return absl::ResourceExhaustedError("involution_tf: out of memory for an output of shape " + shape.DebugString());
  }
  context->set_output(index, tensor);
  *out = context->mutable_output(index);
  return absl::OkStatus();
}

// Every op: the geometry attributes, and checks of every shape the loops
// rely on, whatever the graph declared, before any loop runs.
class InvolutionOp : public OpKernel {
 public:
  explicit InvolutionOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(context, context->GetAttr("kernel_size", &kernel_size_));
    OP_REQUIRES_OK(context, context->GetAttr("stride", &stride_));
    OP_REQUIRES_OK(context, context->GetAttr("dilation", &dilation_));
  }

 protected:
  // Geometry of an input shaped (B, H, W, C) and a grid tensor (B, Ho, Wo, depth).
  absl::Status geometry(const TensorShape& x, const TensorShape& grid, int64_t depth, const char* grid_name,
                              Geometry* g) const {
    if (x.dims() != 4 || grid.dims() != 4) {
      return invalid("expected 4D tensors, got " + x.DebugString() + " and " + grid_name + " " + grid.DebugString());
    }
    *g = Geometry{x.dim_size(0), x.dim_size(1), x.dim_size(2), x.dim_size(3), grid.dim_size(1), grid.dim_size(2),
                  groups_, kernel_size_, stride_, dilation_, dilation_ * (std::max<int64_t>(kernel_size_, 1) - 1) / 2};
    if (const char* problem = involution::invalid_geometry(*g)) return invalid(problem);
    if (depth < 0) depth = g->channels;
    const int64_t dims[4] = {grid.dim_size(0), grid.dim_size(1), grid.dim_size(2), grid.dim_size(3)};
    if (!involution::on_output_grid(*g, dims, depth)) {
      return invalid(std::string(grid_name) + " has shape " + grid.DebugString() + ", expected (" +
                     std::to_string(g->batch) + ", " + std::to_string(g->out_h) + ", " + std::to_string(g->out_w) +
                     ", " + std::to_string(depth) + ")");
    }
    return absl::OkStatus();
  }

  int64_t taps() const { return groups_ * kernel_size_ * kernel_size_; }

  int64_t groups_, kernel_size_, stride_, dilation_;
};

template <typename T>
class ApplyOp : public InvolutionOp {
 public:
  using InvolutionOp::InvolutionOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& kernel = context->input(1);
    Geometry g;
    OP_REQUIRES_OK(context, geometry(x.shape(), kernel.shape(), taps(), "kernel", &g));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, allocate_map<T>(context, 0, TensorShape({g.batch, g.out_h, g.out_w, g.channels}), &out));
    run_on_threads(context, [&] {
      involution::forward<T>(x.flat<T>().data(), kernel.flat<T>().data(), out->flat<T>().data(), g);
    });
  }
};

template <typename T>
class InputGradientOp : public InvolutionOp {
 public:
  using InvolutionOp::InvolutionOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& grad = context->input(0);
    const Tensor& kernel = context->input(1);
    const Tensor& size = context->input(2);
    OP_REQUIRES(context, size.dims() == 1 && size.NumElements() == 2,
                invalid("input_size must hold (height, width), got shape " + size.shape().DebugString()));
    OP_REQUIRES(context, grad.dims() == 4, invalid("grad must be 4D, got " + grad.shape().DebugString()));
    const auto hw = size.flat<int32_t>();
    OP_REQUIRES(context, hw(0) >= 0 && hw(1) >= 0, invalid("negative input_size"));
    const TensorShape x_shape({grad.dim_size(0), hw(0), hw(1), grad.dim_size(3)});
    Geometry g;
    OP_REQUIRES_OK(context, geometry(x_shape, kernel.shape(), taps(), "kernel", &g));
    OP_REQUIRES_OK(context, geometry(x_shape, grad.shape(), -1, "grad", &g));
    Tensor* grad_x = nullptr;
    OP_REQUIRES_OK(context, allocate_map<T>(context, 0, x_shape, &grad_x));
    run_on_threads(context, [&] {
      involution::input_gradient<T>(kernel.flat<T>().data(), grad.flat<T>().data(), grad_x->flat<T>().data(), g);
    });
  }
};

template <typename T>
class CorrelateOp : public InvolutionOp {
 public:
  using InvolutionOp::InvolutionOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& grad = context->input(1);
    Geometry g;
    OP_REQUIRES_OK(context, geometry(x.shape(), grad.shape(), -1, "grad", &g));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, allocate_map<T>(context, 0, TensorShape({g.batch, g.out_h, g.out_w, taps()}), &out));
    run_on_threads(context, [&] {
      involution::kernel_gradient<T>(x.flat<T>().data(), grad.flat<T>().data(), out->flat<T>().data(), g);
    });
  }
};

// The batch normalization ops: x (..., C) seen as (rows, C).
class BatchNormOp : public OpKernel {
 public:
  explicit BatchNormOp(OpKernelConstruction* context) : OpKernel(context) {
    float epsilon;
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon));
    OP_REQUIRES(context, epsilon > 0, invalid("epsilon must be positive"));
    epsilon_ = epsilon;
  }

 protected:
  // Checks x's rank and that every per-channel input has C entries.
  absl::Status channels_of(const Tensor& x, std::initializer_list<const Tensor*> per_channel, int64_t* rows,
                           int64_t* channels) const {
    if (x.dims() < 1) return invalid("x must have at least one axis, got " + x.shape().DebugString());
    *channels = x.dim_size(x.dims() - 1);
    *rows = *channels ? x.NumElements() / *channels : 0;
    for (const Tensor* t : per_channel) {
      if (t->dims() != 1 || t->dim_size(0) != *channels) {
        return invalid("per-channel inputs must have shape (" + std::to_string(*channels) + "), got " +
                       t->shape().DebugString());
      }
    }
    return absl::OkStatus();
  }

  double epsilon_;
};

template <typename T>
class BatchNormForwardOp : public BatchNormOp {
 public:
  using BatchNormOp::BatchNormOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& gamma = context->input(1);
    const Tensor& beta = context->input(2);
    int64_t rows, channels;
    OP_REQUIRES_OK(context, channels_of(x, {&gamma, &beta}, &rows, &channels));
    Tensor *y = nullptr, *mean = nullptr, *variance = nullptr;
    OP_REQUIRES_OK(context, allocate_map<T>(context, 0, x.shape(), &y));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({channels}), &mean));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({channels}), &variance));
    run_on_threads(context, [&] {
      involution::batch_norm::forward<T>(x.flat<T>().data(), gamma.flat<T>().data(), beta.flat<T>().data(),
                                         epsilon_, rows, channels, y->flat<T>().data(), mean->flat<T>().data(),
                                         variance->flat<T>().data());
    });
  }
};

template <typename T>
class BatchNormGradOp : public BatchNormOp {
 public:
  using BatchNormOp::BatchNormOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& grad = context->input(0);
    const Tensor& x = context->input(1);
    const Tensor& gamma = context->input(2);
    const Tensor& mean = context->input(3);
    const Tensor& variance = context->input(4);
    int64_t rows, channels;
    OP_REQUIRES_OK(context, channels_of(x, {&gamma, &mean, &variance}, &rows, &channels));
    OP_REQUIRES(context, grad.shape() == x.shape(),
                invalid("grad has shape " + grad.shape().DebugString() + ", expected x's " + x.shape().DebugString()));
    Tensor *grad_x = nullptr, *grad_gamma = nullptr, *grad_beta = nullptr;
    OP_REQUIRES_OK(context, allocate_map<T>(context, 0, x.shape(), &grad_x));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({channels}), &grad_gamma));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({channels}), &grad_beta));
    run_on_threads(context, [&] {
      involution::batch_norm::backward<T>(grad.flat<T>().data(), x.flat<T>().data(), gamma.flat<T>().data(),
                                          mean.flat<T>().data(), variance.flat<T>().data(), epsilon_, rows, channels,
                                          grad_x->flat<T>().data(), grad_gamma->flat<T>().data(),
                                          grad_beta->flat<T>().data());
    });
  }
};

class PoolOp : public OpKernel {
 public:
  explicit PoolOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("size", &size_));
    std::string mode;
    OP_REQUIRES_OK(context, context->GetAttr("mode", &mode));
    max_ = mode == "max";
  }

 protected:
  absl::Status tiles(const Tensor& x, involution::pool::Tiles* t) const {
    if (x.dims() != 4) return invalid("x must be 4D, got " + x.shape().DebugString());
    *t = involution::pool::Tiles{x.dim_size(0), x.dim_size(1), x.dim_size(2), x.dim_size(3), size_};
    if (const char* problem = involution::pool::invalid_tiles(*t)) return invalid(problem);
    return absl::OkStatus();
  }

  TensorShape pooled_shape(const involution::pool::Tiles& t) const {
    return TensorShape({t.batch, t.out_h(), t.out_w(), t.channels});
  }

  int64_t size_;
  bool max_;
};

template <typename T>
class PoolForwardOp : public PoolOp {
 public:
  using PoolOp::PoolOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    involution::pool::Tiles t;
    OP_REQUIRES_OK(context, tiles(x, &t));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(context, allocate_map<T>(context, 0, pooled_shape(t), &y));
    run_on_threads(context, [&] { involution::pool::forward<T>(x.flat<T>().data(), y->flat<T>().data(), t, max_); });
  }
};

template <typename T>
class PoolGradOp : public PoolOp {
 public:
  using PoolOp::PoolOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& y = context->input(1);
    const Tensor& grad = context->input(2);
    involution::pool::Tiles t;
    OP_REQUIRES_OK(context, tiles(x, &t));
    const TensorShape expected = pooled_shape(t);
    OP_REQUIRES(context, y.shape() == expected && grad.shape() == expected,
                invalid("y and grad must have shape " + expected.DebugString() + ", got " + y.shape().DebugString() +
                        " and " + grad.shape().DebugString()));
    Tensor* grad_x = nullptr;
    OP_REQUIRES_OK(context, allocate_map<T>(context, 0, x.shape(), &grad_x));
    run_on_threads(context, [&] {
      involution::pool::backward<T>(x.flat<T>().data(), y.flat<T>().data(), grad.flat<T>().data(),
                                    grad_x->flat<T>().data(), t, max_);
    });
  }
};

#define INVOLUTION_REGISTER(T)                                                                           \
  REGISTER_KERNEL_BUILDER(Name("InvolutionApply").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
                          ApplyOp<T>);                                                                   \
  REGISTER_KERNEL_BUILDER(                                                                               \
      Name("InvolutionInputGradient").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T").HostMemory(  \
          "input_size"),                                                                                 \
      InputGradientOp<T>);                                                                               \
  REGISTER_KERNEL_BUILDER(Name("InvolutionCorrelate").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
                          CorrelateOp<T>);                                                       \
  REGISTER_KERNEL_BUILDER(Name("InvolutionBatchNorm").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
                          BatchNormForwardOp<T>);                                                \
  REGISTER_KERNEL_BUILDER(                                                                               \
      Name("InvolutionBatchNormGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), BatchNormGradOp<T>); \
  REGISTER_KERNEL_BUILDER(Name("InvolutionPool").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),       \
                          PoolForwardOp<T>);                                                             \
  REGISTER_KERNEL_BUILDER(Name("InvolutionPoolGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),   \
                          PoolGradOp<T>);

INVOLUTION_REGISTER(float)
INVOLUTION_REGISTER(double)

}  // namespace
