"""Fake implementations and autograd of the apply step's three bilinear
`torch.library` ops.

The apply step `A(x, kernel)` and its gradients, the input gradient
`Gx(grad, kernel)` and the window correlation `Gk(x, grad)`, are bilinear,
and each one's gradients are made of the other two (the table of
`docs/design.md`):

    A:  x <- Gx(ct, kernel)     kernel <- Gk(x, ct)
    Gx: grad <- A(ct, kernel)   kernel <- Gk(ct, grad)
    Gk: x <- Gx(grad, ct)       grad <- A(x, ct)

so a family of three ops (the C++ loops, the Triton kernels) registered
here differentiates to any order through its own ops. Every op takes its
two tensors first and `(groups, kernel_size, stride, dilation)` last;
the input gradient takes the input's `(height, width)` between them.
"""


def _save_geometry(ctx, inputs, output):
    *tensors, groups, kernel_size, stride, dilation = inputs[:2] + inputs[-4:]
    ctx.save_for_backward(*tensors)
    ctx.geometry = (groups, kernel_size, stride, dilation)


def _register_bilinear(op, arity, first, second):
    """Autograd of a bilinear `op(a, b, ...)`: its gradients w.r.t. `a` and
    `b` are `first(a, b, grad, geometry)` and `second(...)`."""

    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = grad.contiguous()
        grads = [None] * arity
        if ctx.needs_input_grad[0]:
            grads[0] = first(a, b, grad, ctx.geometry)
        if ctx.needs_input_grad[1]:
            grads[1] = second(a, b, grad, ctx.geometry)
        return tuple(grads)

    op.register_autograd(backward, setup_context=_save_geometry)


def _register_fakes(apply, input_gradient, correlate):
    # Output shapes only, for `torch.compile`, `torch.export` and fake
    # tensors (a kernel launch cannot take those under Triton's interpreter).
    @apply.register_fake
    def _(x, kernel, groups, kernel_size, stride, dilation):
        return x.new_empty((x.shape[0], kernel.shape[1], kernel.shape[2], x.shape[3]))

    @input_gradient.register_fake
    def _(grad, kernel, height, width, groups, kernel_size, stride, dilation):
        return grad.new_empty((grad.shape[0], height, width, grad.shape[3]))

    @correlate.register_fake
    def _(x, grad, groups, kernel_size, stride, dilation):
        return x.new_empty((x.shape[0], grad.shape[1], grad.shape[2], groups * kernel_size * kernel_size))


def register_bilinear_family(apply, input_gradient, correlate):
    """Registers the fake implementations and the autograd of three ops
    `apply(x, kernel, *geometry)`, `input_gradient(grad, kernel, height,
    width, *geometry)` and `correlate(x, grad, *geometry)`, each op's
    gradients through the others."""
    _register_fakes(apply, input_gradient, correlate)
    _register_bilinear(
        apply, 6,
        lambda x, kernel, grad, geometry: input_gradient(grad, kernel, x.shape[1], x.shape[2], *geometry),
        lambda x, kernel, grad, geometry: correlate(x, grad, *geometry),
    )
    _register_bilinear(
        input_gradient, 8,
        lambda upstream, kernel, grad, geometry: apply(grad, kernel, *geometry),
        lambda upstream, kernel, grad, geometry: correlate(grad, upstream, *geometry),
    )
    _register_bilinear(
        correlate, 6,
        lambda x, upstream, grad, geometry: input_gradient(upstream, grad, x.shape[1], x.shape[2], *geometry),
        lambda x, upstream, grad, geometry: apply(x, grad, *geometry),
    )
