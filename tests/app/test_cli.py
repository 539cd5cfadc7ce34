"""The `involution` command (`involution_cli`, then `involution.app.cli`)."""

import os
import re
import subprocess
import sys
import textwrap

import keras
import pytest

from tests import synthetic_data as synth

# The console script's code, with some modules made unimportable (as in an
# install without them); it reports whether Keras was imported.
LAUNCH = textwrap.dedent("""
    import sys
    for name in sys.argv[1].split(","):
        if name:
            sys.modules[name] = None
    import involution_cli
    try:
        code = involution_cli.main(sys.argv[2:])
    except SystemExit as exit:
        code = exit.code
    print("keras imported:", "keras" in sys.modules and sys.modules["keras"] is not None)
    sys.exit(code)
""")
OTHER_BACKEND = next(b for b in ("jax", "torch") if b != "tensorflow")


def involution(*args, blocked=(), env=None, timeout=600):
    environment = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-c", LAUNCH, ",".join(blocked), *args], capture_output=True, text=True,
                          env=environment, timeout=timeout)


@pytest.mark.backend_independent
def test_help_and_argument_errors_do_not_import_keras():
    done = involution("--help", blocked=["tensorflow"])
    assert done.returncode == 0 and "compare" in done.stdout
    assert "keras imported: False" in done.stdout
    done = involution("compare", "--learning-rate", "nan", blocked=["tensorflow"])
    assert done.returncode == 2
    assert "argument --learning-rate: expected a positive finite number. Received: nan" in done.stderr
    assert "keras imported: False" in done.stdout


@pytest.mark.backend_independent
def test_seed_recipe_and_preset_arguments_are_parsed_before_keras():
    import involution_cli

    parser = involution_cli.build_parser()
    args = parser.parse_args(["compare", "--seeds", "42,43,44", "--recipe", "strong"])
    assert args.seeds == [42, 43, 44] and args.recipe == "strong" and args.epochs is None
    assert parser.parse_args(["compare"]).seeds is None
    args = parser.parse_args(["predict", "a.png", "b.png", "--preset", "invnet_cifar10", "--top", "2", "--json"])
    assert args.images == ["a.png", "b.png"] and args.top == 2 and args.json
    for argv, message in (
        (["compare", "--seeds", "42,x"], "argument --seeds: expected distinct non-negative integers"),
        (["compare", "--seeds", "1,1"], "argument --seeds: expected distinct"),
        (["compare", "--seed", "1", "--seeds", "2,3"], "argument --seeds: not allowed with argument --seed"),
        (["compare", "--recipe", "weak"], "argument --recipe: invalid choice: 'weak'"),
        (["predict", "a.png"], "the following arguments are required: --preset"),
        (["evaluate", "--preset", "p", "--limit", "0"], "argument --limit: expected a positive integer"),
    ):
        done = involution(*argv, blocked=["tensorflow"])
        assert done.returncode == 2 and message in done.stderr, (argv, done.stderr)
        assert "keras imported: False" in done.stdout


@pytest.mark.backend_independent
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_runs_without_tensorflow(tmp_path, backend):
    pytest.importorskip(backend)
    done = involution("demo", "--backend", backend, "--batch", "1", "--size", "8", blocked=["tensorflow"],
                      env={"KERAS_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"backend {backend}" in done.stdout and "stride 2" in done.stdout


@pytest.mark.backend_independent
def test_without_a_choice_the_first_installed_backend_runs(tmp_path):
    # No KERAS_BACKEND, no keras.json, TensorFlow missing.
    done = involution("demo", "--batch", "1", "--size", "8", blocked=["tensorflow"], env={"KERAS_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "backend jax" in done.stdout
    done = involution("demo", "--backend", "tensorflow", blocked=["tensorflow"], env={"KERAS_HOME": str(tmp_path)})
    assert done.returncode == 2
    assert "error: the Keras backend 'tensorflow' is not installed; pass --backend jax or torch" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_compare_shows_the_runs_epochs_and_no_framework_logs(tmp_path):
    source = synth.make_image_tree(str(tmp_path / "tree"), train=12, test=6)
    done = involution("compare", "--data", source, "--epochs", "2", "--batch-size", "8", "--models", "conv",
                      "--output", str(tmp_path / "out"), "--backend", keras.backend.backend(),
                      env={"INVOLUTION_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[conv] Epoch 1/2: loss" in done.stdout and "[conv] Epoch 2/2: loss" in done.stdout
    assert "Epoch 1/1" not in done.stdout + done.stderr
    # C++ log lines (TensorFlow, XLA, absl) and the frameworks' warnings.
    noise = [line for line in done.stderr.splitlines()
             if re.match(r"[IWEF]\d{4} |WARNING: All log messages|.*(oneDNN|UserWarning|absl)", line)]
    assert not noise, noise
    report = open(tmp_path / "out" / "report.md", encoding="utf-8").read()
    assert "| command | involution compare --data" in report


@pytest.mark.backend_independent
def test_summarize_merges_reports_and_refuses_a_repeated_seed(tmp_path):
    import json

    def report(folder, seeds, finals):
        os.makedirs(tmp_path / folder)
        summary = {"models": [{"model": "invnet", "parameters": 81616, "seeds": seeds, "final_accuracy": finals,
                               "best_accuracy": finals, "epoch_time": 10.0, "finished": len(seeds)}]}
        (tmp_path / folder / "summary.json").write_text(json.dumps(summary))
        return str(tmp_path / folder)

    first, second = report("a", [42, 43], [0.70, 0.74]), report("b", [44], [0.72])
    done = involution("summarize", first, os.path.join(second, "summary.json"), "--markdown")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| invnet | 81,616 | 3 | 72.00% ± 2.00 | 72.00% ± 2.00 | 42: 70.00%, 43: 74.00%, 44: 72.00% |" in done.stdout
    done = involution("summarize", first, first)
    assert done.returncode == 2 and "error: Expected each seed of invnet in one study only" in done.stderr
    done = involution("summarize", str(tmp_path / "missing"))
    assert done.returncode == 2 and "Expected a report folder or its summary.json. Received:" in done.stderr
    assert "Traceback" not in done.stderr
