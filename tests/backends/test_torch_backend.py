"""Both PyTorch apply paths (fused C++ kernels and in-place taps) against NumPy.

`test_ops.py` checks whichever path `implementation="fast"` picks; this file
checks each of them by name, values and float64 gradients.
"""

import itertools
import os
import time

import keras
import numpy as np
import pytest

from tests import numpy_reference as ref
from tests.backend_utils import alternating, apply_case

if keras.backend.backend() != "torch":
    pytest.skip("PyTorch backend only", allow_module_level=True)

import torch  # noqa: E402

from involution.backends import torch_backend  # noqa: E402

PATHS = {"inplace": torch_backend.apply_inplace}
if torch_backend._extension() is not None:
    PATHS["fused"] = torch_backend.apply_cpp

GRID = alternating(itertools.product([1, 3, 5], [1, 2, 3], [1, 3], [1, 2]), ["channels_last", "channels_first"])


def case(rng, kernel_size, stride, groups, data_format, dtype=np.float32):
    return apply_case(rng, kernel_size, stride, groups, 6, data_format, dtype)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("kernel_size,stride,groups,dilation,data_format", GRID)
def test_values_and_gradients(rng, path, kernel_size, stride, groups, dilation, data_format):
    x, kernel = case(rng, kernel_size, stride, groups, data_format, np.float64)
    args = (kernel_size, stride, dilation, groups, data_format)
    xt = torch.tensor(x, requires_grad=True)
    kt = torch.tensor(kernel, requires_grad=True)
    out = PATHS[path](xt, kt, *args)
    np.testing.assert_allclose(out.detach().numpy(), ref.involution_apply(x, kernel, *args), rtol=1e-10, atol=1e-10)

    # Gradients of sum(out * weights): the input's is the transposed apply
    # of `weights`, the kernel's the channel sums of weights * window.
    weights = torch.tensor(rng.standard_normal(out.shape))
    grad_x, grad_kernel = torch.autograd.grad((out * weights).sum(), [xt, kt])
    reference_x = torch.tensor(x, requires_grad=True)
    reference_kernel = torch.tensor(kernel, requires_grad=True)
    from involution.ops import involution_apply_reference

    expected = involution_apply_reference(reference_x, reference_kernel, *args)
    expected_x, expected_kernel = torch.autograd.grad((expected * weights).sum(), [reference_x, reference_kernel])
    np.testing.assert_allclose(grad_x.numpy(), expected_x.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grad_kernel.numpy(), expected_kernel.numpy(), rtol=1e-10, atol=1e-10)


def test_float32_paths_agree(rng):
    x, kernel = case(rng, 3, 1, 3, "channels_last")
    outputs = [path(torch.tensor(x), torch.tensor(kernel), 3, 1, 1, 3, "channels_last") for path in PATHS.values()]
    for out in outputs:
        np.testing.assert_allclose(out.numpy(), ref.involution_apply(x, kernel, 3, 1, 1, 3, "channels_last"),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.skipif("fused" not in PATHS, reason="the C++ kernels could not be built here")
@pytest.mark.parametrize("kernel_size,stride,dilation", [(3, 1, 1), (5, 2, 1), (7, 1, 2), (7, 3, 1)])
@pytest.mark.parametrize("channels,groups", [(16, 1), (32, 2), (24, 3)])
def test_fused_float32_against_float64_numpy(rng, kernel_size, stride, dilation, channels, groups):
    # float32 with 8k channels per group takes the kernels' vector paths
    # (eight taps reduced together); windows of 9..49 taps cover partial
    # chunks, and the image edges pixels with fewer taps.
    height, width = 9, 11
    x = rng.standard_normal((2, height, width, channels)).astype(np.float32)
    out_h, out_w = -(-height // stride), -(-width // stride)
    kernel = rng.standard_normal((2, out_h, out_w, groups * kernel_size**2)).astype(np.float32)
    upstream = rng.standard_normal((2, out_h, out_w, channels)).astype(np.float32)
    args = (kernel_size, stride, dilation, groups)
    xt = torch.tensor(x, requires_grad=True)
    kt = torch.tensor(kernel, requires_grad=True)
    out = torch_backend.apply_cpp(xt, kt, *args, "channels_last")
    grad_x, grad_kernel = torch.autograd.grad((out * torch.tensor(upstream)).sum(), [xt, kt])
    expected_x, expected_kernel = ref.involution_apply_gradients(x, kernel, upstream, *args)
    tolerance = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.detach().numpy(), ref.involution_apply(x, kernel, *args, "channels_last"), **tolerance)
    np.testing.assert_allclose(grad_x.numpy(), expected_x, **tolerance)
    np.testing.assert_allclose(grad_kernel.numpy(), expected_kernel, **tolerance)


def test_half_precision_takes_the_inplace_path(rng):
    from involution import registry
    from involution.ops import involution_apply

    x, kernel = case(rng, 3, 1, 1, "channels_last")
    arguments = dict(inputs=torch.tensor(x).bfloat16(), kernel=torch.tensor(kernel).bfloat16(), kernel_size=3,
                     stride=1, dilation=1, groups=1, data_format="channels_last")
    assert registry.choose("apply", "fast", **arguments).name == "torch-inplace"
    out = involution_apply(**{"implementation": "fast", **arguments})
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.float().numpy(), ref.involution_apply(x, kernel, 3, 1, 1, 1, "channels_last"),
                               rtol=0.05, atol=0.1)


def test_environment_variable_disables_the_extension(monkeypatch):
    monkeypatch.setenv(torch_backend.EXTENSION_ENV, "0")
    monkeypatch.setattr(torch_backend, "_EXTENSION", None)
    assert torch_backend._extension() is None
    assert torch_backend.window_correlation_reason(torch.zeros(1, 2, 2, 8), None, 3, 1, 1, 1) is not None


def test_a_lock_left_by_a_killed_build_is_removed(tmp_path):
    # PyTorch's builder would wait for it forever.
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "lock").touch()
    old = time.time() - torch_backend.STALE_LOCK_SECONDS - 60
    os.utime(stale / "lock", (old, old))
    with pytest.warns(RuntimeWarning, match="interrupted build"):
        torch_backend._remove_stale_lock(stale)
    assert not (stale / "lock").exists()
    # A build in progress keeps its lock.
    (tmp_path / "lock").touch()
    torch_backend._remove_stale_lock(tmp_path)
    assert (tmp_path / "lock").exists()


def test_large_outputs_come_from_the_block_cache_and_are_fully_written():
    # 2 x 256 x 256 x 16 float32 outputs (8 MiB, the cache's smallest block):
    # a freed output's block is handed to the next output of its size, whose
    # values must not show the previous ones. A 1x1 window: out = x * kernel.
    if torch_backend._extension() is None:
        pytest.skip("the fused CPU kernels could not be built")
    generator = torch.Generator().manual_seed(3)

    def case(batch=2):
        return (torch.randn(batch, 256, 256, 16, generator=generator),
                torch.randn(batch, 256, 256, 1, generator=generator))

    first = torch_backend._apply_op(*case(), 1, 1, 1, 1)
    address = first.data_ptr()
    del first
    x, kernel = case()
    second = torch_backend._apply_op(x, kernel, 1, 1, 1, 1)
    assert second.data_ptr() == address
    np.testing.assert_allclose(second.numpy(), (x * kernel).numpy(), rtol=1e-6, atol=1e-6)
    # Smaller outputs come from PyTorch's allocator.
    small = torch_backend._apply_op(x[:1], kernel[:1], 1, 1, 1, 1)
    assert small.data_ptr() != address
    np.testing.assert_allclose(small.numpy(), (x[:1] * kernel[:1]).numpy(), rtol=1e-6, atol=1e-6)