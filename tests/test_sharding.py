"""The fused JAX calls under sharding: batch-sharded in and out, no all-gather."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

if keras.backend.backend() != "jax":
    pytest.skip("JAX sharding", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "tests.sharded_training"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULTS ")]
    assert run.returncode == 0 and lines, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return json.loads(lines[0][len("RESULTS "):])


def test_two_host_devices(result):
    assert result["devices"] == 2


@pytest.mark.parametrize("which", ["forward_hlo", "gradient_hlo"])
def test_no_all_gather_around_the_fused_calls(result, which):
    hlo = result[which]
    # The C++ handlers run per shard: their custom calls are in the
    # partitioned program, and nothing gathers the batch for them.
    assert re.search(r"custom_call_target=\"involution_", hlo)
    assert "all-gather" not in hlo


def test_outputs_stay_batch_sharded(result):
    # Printed as PartitionSpec('batch',) or P('batch',), by JAX version.
    for spec in [result["output_spec"], *result["gradient_specs"]]:
        assert spec.endswith("('batch',)"), spec


def test_pallas_path_runs_per_shard(result):
    # The Pallas kernels sit behind the same batch partitioning as the C++ loops.
    assert all(spec.endswith("('batch',)") for spec in result["pallas_specs"]), result["pallas_specs"]
    assert result["pallas_max_difference"] < 1e-5


def test_data_parallel_training_equals_one_device(result):
    one, two = result["losses"]
    np.testing.assert_allclose(two, one, rtol=1e-5)
    assert result["max_weight_difference"] < 1e-5
