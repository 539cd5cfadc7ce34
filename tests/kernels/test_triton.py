"""The Triton kernels (PyTorch) against the float64 NumPy reference.

On a machine without a GPU they run CPU tensors under Triton's interpreter
(`tests/conftest.py` sets `TRITON_INTERPRET=1`): forward, both gradients
and second order on every case of `gpu_cases.CASES`, float16, the ops'
`torch.library.opcheck`, `torch.compile` without graph breaks, and
`torch.export`; and Triton's compiler builds every kernel for an H100.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.kernels import gpu_cases

if keras.backend.backend() != "torch":
    pytest.skip("PyTorch backend only", allow_module_level=True)

import torch  # noqa: E402

from involution import involution_apply, registry  # noqa: E402
from involution.backends import torch_backend  # noqa: E402

triton_binding = torch_backend._triton()
if triton_binding is None:
    pytest.skip(f"Triton cannot be imported here: {torch_backend._TRITON['error']}", allow_module_level=True)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_binding.interpreted():
    pytest.skip("no GPU, and Triton's interpreter was not on at import", allow_module_level=True)


def tensor(array, dtype=torch.float64, grad=True):
    return torch.tensor(array, dtype=dtype, device=DEVICE, requires_grad=grad)


def numpy(t):
    return t.detach().cpu().double().numpy()


@pytest.mark.parametrize("case", sorted(gpu_cases.CASES))
def test_values_gradients_and_second_order(rng, case):
    x, kernel, upstream, v, w = gpu_cases.arrays(rng, case)
    expected = gpu_cases.expected(case, x, kernel, upstream, v, w)
    kernel_size, stride, dilation, groups = gpu_cases.geometry(case)
    xt, kt, ut = tensor(x), tensor(kernel), tensor(upstream)
    out = triton_binding.apply(xt, kt, groups, kernel_size, stride, dilation)
    np.testing.assert_allclose(numpy(out), expected["out"], **gpu_cases.FLOAT64_TOLERANCE)

    grad_x, grad_kernel = torch.autograd.grad((out * ut).sum(), [xt, kt], create_graph=True)
    np.testing.assert_allclose(numpy(grad_x), expected["grad_x"], **gpu_cases.FLOAT64_TOLERANCE)
    np.testing.assert_allclose(numpy(grad_kernel), expected["grad_kernel"], **gpu_cases.FLOAT64_TOLERANCE)

    by_kernel, by_upstream = torch.autograd.grad((grad_x * tensor(v, grad=False)).sum(), [kt, ut],
                                                 retain_graph=True)
    np.testing.assert_allclose(numpy(by_kernel), expected["grad_x_v_by_kernel"], **gpu_cases.FLOAT64_TOLERANCE)
    np.testing.assert_allclose(numpy(by_upstream), expected["grad_x_v_by_upstream"], **gpu_cases.FLOAT64_TOLERANCE)
    by_x, by_upstream = torch.autograd.grad((grad_kernel * tensor(w, grad=False)).sum(), [xt, ut])
    np.testing.assert_allclose(numpy(by_x), expected["grad_kernel_w_by_x"], **gpu_cases.FLOAT64_TOLERANCE)
    np.testing.assert_allclose(numpy(by_upstream), expected["grad_kernel_w_by_upstream"],
                               **gpu_cases.FLOAT64_TOLERANCE)


@pytest.mark.parametrize("case", ["odd-3-per-group", "one-group-stride2-dilation2"])
def test_float16_accumulates_in_float32(rng, case):
    x, kernel, upstream, v, w = gpu_cases.arrays(rng, case)
    expected = gpu_cases.expected(case, x, kernel, upstream, v, w)
    kernel_size, stride, dilation, groups = gpu_cases.geometry(case)
    xt, kt = tensor(x, torch.float16), tensor(kernel, torch.float16)
    out = triton_binding.apply(xt, kt, groups, kernel_size, stride, dilation)
    assert out.dtype == torch.float16
    grad_x, grad_kernel = torch.autograd.grad(out, [xt, kt], tensor(upstream, torch.float16, grad=False))
    # The reference of the float16-rounded inputs: what is left is the
    # kernels' own error, float32 sums rounded once to float16.
    rounded = [a.astype(np.float16).astype(np.float64) for a in (x, kernel, upstream, v, w)]
    expected = gpu_cases.expected(case, *rounded)
    np.testing.assert_allclose(numpy(out), expected["out"], **gpu_cases.FLOAT16_TOLERANCE)
    np.testing.assert_allclose(numpy(grad_x), expected["grad_x"], **gpu_cases.FLOAT16_TOLERANCE)
    np.testing.assert_allclose(numpy(grad_kernel), expected["grad_kernel"], **gpu_cases.FLOAT16_TOLERANCE)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_the_registry_runs_it_by_name_in_either_data_format(rng, data_format):
    case = "3-per-group-stride2-dilation2"
    x, kernel, *_ = gpu_cases.arrays(rng, case)
    args = gpu_cases.geometry(case)
    expected = gpu_cases.expected(case, x, kernel, *_)["out"]
    if data_format == "channels_first":
        x, kernel, expected = (a.transpose(0, 3, 1, 2) for a in (x, kernel, expected))
    out = involution_apply(tensor(x, grad=False), tensor(kernel, grad=False), *args, data_format,
                           implementation="triton")
    np.testing.assert_allclose(numpy(out), expected, **gpu_cases.FLOAT64_TOLERANCE)


def test_window_correlation_entry_is_the_kernel_gradient(rng):
    case = "odd-3-per-group"
    x, kernel, upstream, v, w = gpu_cases.arrays(rng, case)
    kernel_size, stride, dilation, groups = gpu_cases.geometry(case)
    arguments = dict(keys=tensor(x, grad=False), queries=tensor(upstream, grad=False), kernel_size=kernel_size,
                     stride=stride, dilation=dilation, groups=groups)
    entry = registry.choose("window_correlation", "triton", **arguments)
    expected = gpu_cases.expected(case, x, kernel, upstream, v, w)["grad_kernel"]
    np.testing.assert_allclose(numpy(entry(**arguments)), expected, **gpu_cases.FLOAT64_TOLERANCE)


@pytest.mark.parametrize("op", ["apply", "input_gradient", "correlate"])
def test_opcheck(rng, op):
    x = tensor(rng.standard_normal((1, 5, 4, 4)), torch.float32)
    kernel = tensor(rng.standard_normal((1, 5, 4, 2 * 9)), torch.float32)
    grad = tensor(rng.standard_normal((1, 5, 4, 4)), torch.float32)
    arguments = {"apply": (x, kernel, 2, 3, 1, 1), "input_gradient": (grad, kernel, 5, 4, 2, 3, 1, 1),
                 "correlate": (x, grad, 2, 3, 1, 1)}[op]
    results = torch.library.opcheck(getattr(triton_binding, op), arguments)
    assert set(results.values()) == {"SUCCESS"}, results


def test_compiles_without_graph_breaks_and_exports(rng):
    x = tensor(rng.standard_normal((1, 6, 5, 4)), torch.float32, grad=False)
    kernel = tensor(rng.standard_normal((1, 6, 5, 2 * 9)), torch.float32, grad=False)

    def step(a, b):
        return involution_apply(a, b, 3, 1, 1, 2, "channels_last", implementation="triton") * 2

    expected = step(x, kernel)
    # fullgraph=True raises on any graph break. (On the CPU, "aot_eager":
    # Inductor would generate code for a GPU.)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    torch.testing.assert_close(compiled(x, kernel), expected)

    class Step(torch.nn.Module):
        def forward(self, a, b):
            return triton_binding.apply(a, b, 2, 3, 1, 1)

    program = torch.export.export(Step(), (x, kernel))
    assert "involution.triton_apply" in program.graph_module.code
    torch.testing.assert_close(program.module()(x, kernel), expected / 2)


def test_reasons(rng):
    x = torch.zeros((1, 5, 5, 4), device=DEVICE)
    kernel = torch.zeros((1, 5, 5, 9), device=DEVICE)
    arguments = dict(kernel_size=3, stride=1, dilation=1, groups=1, data_format="channels_last")
    with pytest.raises(ValueError, match="dtypes differ"):
        registry.choose("apply", "triton", inputs=x, kernel=kernel.double(), **arguments)
    with pytest.raises(ValueError, match="float16/bfloat16/float32/float64"):
        registry.choose("apply", "triton", inputs=x.int(), kernel=kernel.int(), **arguments)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="no bfloat16"):
            registry.choose("apply", "triton", inputs=x.bfloat16(), kernel=kernel.bfloat16(), **arguments)
        # "auto" never runs the interpreter.
        assert registry.choose("apply", "auto", inputs=x, kernel=kernel, **arguments).name != "triton"


def test_without_the_interpreter_a_cpu_tensor_gets_the_reason():
    script = ("import torch; from involution import registry\n"
              "x = torch.zeros((1, 5, 5, 4)); k = torch.zeros((1, 5, 5, 9))\n"
              "try:\n"
              "    registry.choose('apply', 'triton', inputs=x, kernel=k, kernel_size=3, stride=1, dilation=1,"
              " groups=1, data_format='channels_last')\n"
              "except ValueError as error:\n"
              "    print(error)\n")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env=dict(env, KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES=""))
    assert "TRITON_INTERPRET=1" in done.stdout, done.stdout + done.stderr[-2000:]


def test_kernels_compile_for_an_h100():
    """Triton's whole pipeline, to a cubin for sm_90, with no GPU needed: what
    the interpreter does not check (types, layouts, the lowering itself)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tests.kernels.triton_compile", "--arch", "90"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(env, KERAS_BACKEND="torch", TRITON_DEFAULT_FP_FUSION="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert {(row["kernel"], row["dtype"]) for row in rows} == {
        (kernel, dtype) for kernel in ("apply", "input_gradient", "correlate")
        for dtype in ("float32", "bfloat16", "float16")}
    assert all(row["cubin_bytes"] > 0 for row in rows)
