"""Runs the test suite once per Keras backend and sums the results.

Usage: python tests/run_all_backends.py [--backends tensorflow,jax,torch] [pytest args]

Each backend runs in its own process (Keras picks its backend at import).
A backend that is not installed is a failure, not a skip: CI installs all
three.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

ALL_BACKENDS = ("tensorflow", "jax", "torch")


def run(backend, pytest_args, report, first):
    # Backend-independent tests run in the first backend's pass only.
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               INVOLUTION_TEST_BACKEND_INDEPENDENT="1" if first else "0")
    command = [sys.executable, "-m", "pytest", f"--junitxml={report}", *pytest_args]
    print(f"\n===== KERAS_BACKEND={backend}: {' '.join(command)}", flush=True)
    return subprocess.call(command, env=env)


def counts(report):
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total = int(suite.get("tests", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return total - failed - skipped, failed, skipped


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS))
    args, pytest_args = parser.parse_known_args()
    totals = [0, 0, 0]
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, backend in enumerate(args.backends.split(",")):
            report = os.path.join(tmp, f"{backend}.xml")
            code = run(backend, pytest_args, report, first=index == 0)
            if code != 0 or not os.path.exists(report):
                bad.append(f"{backend} (pytest exit code {code})")
            if os.path.exists(report):
                for i, n in enumerate(counts(report)):
                    totals[i] += n
                print(f"----- {backend}: {counts(report)[0]} passed, {counts(report)[1]} failed, {counts(report)[2]} skipped")
    if totals[0] == 0:
        bad.append("no test passed")
    if bad:
        print("FAILED backends: " + ", ".join(bad))
    print(f"total: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
