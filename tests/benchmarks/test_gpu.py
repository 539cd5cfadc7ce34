"""`benchmarks/gpu.py --smoke`: the GPU benchmark's code runs, on the CPU.

The GPU kernels run under their interpreters, on one tiny shape, with one
repeat: a check that every measurement of the benchmark runs on this
backend (or is skipped with the registry's reason), not a measurement.
"""

import json
import subprocess
import sys
from pathlib import Path

import keras

BACKEND = keras.backend.backend()
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def test_smoke_run_measures_every_formulation(tmp_path):
    report = tmp_path / "gpu.json"
    # The networks' part is Keras models only, the same code on every
    # backend: the PyTorch pass (the quickest to build them) runs it.
    parts = "ops,networks" if BACKEND == "torch" else "ops"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--backends", BACKEND, "--parts", parts,
                           "--json", str(report)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(report.read_text())
    ops = [row for row in rows if not row.get("network")]
    networks = [row for row in rows if row.get("network")]
    assert {(row["dtype"], row["pass"]) for row in ops} == {
        (dtype, kind) for dtype in ("float32", "bfloat16") for kind in ("fwd", "fwd+bwd")}
    measured = {"torch": ("ours", "unfold", "reference", "depthwise"),
                "jax": ("ours", "xla", "unfold", "reference", "depthwise"),
                "tensorflow": ("xla", "reference", "depthwise")}[BACKEND]
    for row in ops:
        assert row["floor"] > 0
        for formulation in measured:
            if BACKEND == "torch" and formulation == "ours" and row["dtype"] == "bfloat16":
                assert "no bfloat16" in row[formulation]  # Triton's interpreter has no bfloat16 arithmetic
            else:
                assert isinstance(row[formulation], float) and row[formulation] > 0, (formulation, row)
    assert "| backend | shape | dtype | pass |" in done.stdout
    if "networks" in parts:
        assert len(networks) == 1 and networks[0]["rednet50"] > 0 and networks[0]["resnet50"] > 0
        assert "Training step" in done.stdout
