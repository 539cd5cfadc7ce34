"""Bad kernels and geometry are refused before any apply path touches memory.

Every case of `tests/bad_kernel_cases.py` runs on every path of the current
backend (the reference, the fast path and its gradient, a custom kernel
generator, and the C++ entry points called directly) in a child process, so
that memory corruption or a crash fails these tests instead of ending the whole
run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from tests import bad_kernel_cases

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("channels_last", "channels_first")
PATHS = ("apply reference", "apply fast", "gradient fast", "kernel_generator")
NATIVE_PATHS = ("native forward", "native backward", "native correlate")
# What the error names for each case: the argument, as the Python checks word it.
EXPECTED = {
    "batch": "`kernel` argument must have shape",
    "larger batch": "`kernel` argument must have shape",
    "taps": "`kernel` argument must have shape",
    "more taps": "`kernel` argument must have shape",
    "spatial size": "`kernel` argument must have shape",
    "larger spatial size": "`kernel` argument must have shape",
    "stride's spatial size": "`kernel` argument must have shape",
    "even kernel_size": "Received: kernel_size=4",
    "stride 0": "Received: stride=0",
    "dilation 0": "Received: dilation=0",
    "groups not dividing": "Received: groups=3",
    "3D kernel": "`kernel` argument must have shape",
}


@pytest.fixture(scope="module")
def outcomes():
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, "-m", "tests.bad_kernel_cases"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULTS ")]
    assert run.returncode == 0 and lines, (
        f"the cases' process ended with code {run.returncode} (a crash is negative):\n"
        f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    return json.loads(lines[0][len("RESULTS "):])


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("path", PATHS)
def test_good_case_runs(outcomes, path, data_format):
    assert outcomes[f"good|{data_format}|{path}"] == "no error"


# The layer validates its own arguments first, in its own words.
LAYER_EXPECTED = dict(EXPECTED, **{"groups not dividing": "Received: group_number=3"})
# Window correlation reads no kernel: only the geometry cases concern it.
CORRELATION_CASES = ("spatial size", "larger spatial size", "stride's spatial size", "even kernel_size",
                     "stride 0", "dilation 0", "groups not dividing", "3D kernel")


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_case_raises_a_value_error_naming_the_argument(outcomes, case, path, data_format):
    result = outcomes[f"{case}|{data_format}|{path}"]
    expected = (LAYER_EXPECTED if path == "kernel_generator" else EXPECTED)[case]
    assert result.startswith("ValueError: ") and expected in result, result


def test_native_entry_points_accept_the_good_case(outcomes):
    native = [key for key in outcomes if key.startswith("good|") and "native" in key]
    if keras.backend.backend() == "tensorflow":
        assert not native  # the TensorFlow path has no C++ of its own
        return
    if not native:
        pytest.skip("the C++ kernels are not built here (no compiler)")
    for key in native:
        assert outcomes[key] == "no error", (key, outcomes[key])


@pytest.mark.parametrize("path", NATIVE_PATHS)
@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_native_entry_points_refuse_bad_buffers(outcomes, case, path):
    key = f"{case}|channels_last|{path}"
    if path == "native correlate" and case not in CORRELATION_CASES:
        pytest.skip("window correlation reads no kernel")
    if key not in outcomes:
        pytest.skip(f"no {path} on the {keras.backend.backend()} backend here")
    result = outcomes[key]
    # The C++ checks raise the framework's own error type; what matters is
    # that they refuse the buffers instead of reading or writing past them.
    assert result != "no error" and "involution_" in result, result


def test_case_list_covers_the_expected_errors():
    assert set(EXPECTED) == set(bad_kernel_cases.CASES) - {"good"}
