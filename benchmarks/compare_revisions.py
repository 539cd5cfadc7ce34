"""Benchmark: this checkout's apply step against another revision's, side by side.

Checks the revision out into a temporary git worktree and times the same
measurements of this checkout's `bench_involution.py` (one fresh process
each) with either tree's library, alternating old and new for `--rounds`
rounds, so that both see the same machine load. Prints the median of each
side and the ratio new / old.

Usage:
    python benchmarks/compare_revisions.py REVISION
    python benchmarks/compare_revisions.py 9cdd839 --backends torch,jax --rounds 5
    python benchmarks/compare_revisions.py HEAD --measurements ours-fast:stage:fwd+bwd
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (formulation, shape, pass) of bench_involution.py's worker.
MEASUREMENTS = [
    ("ours-fast", "rednet", "fwd+bwd"),
    ("ours-fast", "rednet", "fwd"),
    ("ours-fast", "seed", "fwd+bwd"),
    ("ours-layer", "rednet", "fwd+bwd"),
]


def measure(tree, backend, measurement, warmup, repeats, timeout):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(tree / "src"))
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_involution.py"), "--worker", *measurement,
               "--warmup", str(warmup), "--repeats", str(repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=tree)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])["median_ms"]
    raise RuntimeError(f"{tree} {backend} {measurement}: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision")
    parser.add_argument("--backends", default="torch,jax,tensorflow")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--measurements", default=",".join(":".join(m) for m in MEASUREMENTS),
                        help="comma-separated FORMULATION:SHAPE:PASS of bench_involution.py (default: %(default)s)")
    args = parser.parse_args()
    measurements = [tuple(item.split(":")) for item in args.measurements.split(",")]
    if any(len(measurement) != 3 for measurement in measurements):
        parser.error(f"--measurements takes FORMULATION:SHAPE:PASS items. Received: {args.measurements!r}")
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.revision],
                       check=True, capture_output=True)
        try:
            print(f"{'backend':10s} {'measurement':30s} {'old ms':>9s} {'new ms':>9s} {'new/old':>8s}", flush=True)
            for backend in args.backends.split(","):
                for measurement in measurements:
                    times = {"old": [], "new": []}
                    for _ in range(args.rounds):
                        for side, tree in (("old", old), ("new", ROOT)):
                            times[side].append(
                                measure(tree, backend, measurement, args.warmup, args.repeats, args.timeout)
                            )
                    old_ms, new_ms = statistics.median(times["old"]), statistics.median(times["new"])
                    print(f"{backend:10s} {' '.join(measurement):30s} {old_ms:9.1f} {new_ms:9.1f} "
                          f"{new_ms / old_ms:8.2f}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)


if __name__ == "__main__":
    main()
