"""`involution compare`: train registry models one after another, then report.

An output folder holds `run.json` (the run's settings), one folder per model
(see `involution.training`) and the report. Rerunning with `resume=True` on
the same folder continues where the last invocation stopped.
"""

import datetime
import json
import os
import shlex
import sys
import time

from involution.training import TrainConfig, atomic_write_json, read_history, train_model

RUN_FILE = "run.json"
# Settings that must match for a resumed run to end where an uninterrupted one
# would; `epochs` and `models` may change (to extend a run or add a model).
RESUME_KEYS = ("batch_size", "seed", "learning_rate", "limit", "data", "backend")


class CompareError(RuntimeError):
    """A run that cannot start or resume as asked."""


def latest_run(base="runs"):
    if not os.path.isdir(base):
        return None
    runs = sorted(d for d in os.listdir(base) if os.path.isfile(os.path.join(base, d, RUN_FILE)))
    return os.path.join(base, runs[-1]) if runs else None


def run_compare(
    models=("conv", "involution"),
    epochs=20,
    batch_size=256,
    seed=42,
    learning_rate=1e-3,
    output=None,
    data=None,
    limit=None,
    resume=False,
    verbose=1,
    cache_dir=None,
    log=print,
):
    """Trains `models` on CIFAR-10 and writes the report; returns the histories."""
    import keras

    from involution import data as data_module
    from involution import models as models_module
    from involution import report

    started = time.perf_counter()
    for name in models:
        if name not in models_module.list_models():
            raise CompareError(
                f"Unknown model {name!r}. Available: {', '.join(models_module.list_models())}"
            )
    if resume and output is None:
        output = latest_run()
        if output is None:
            raise CompareError("--resume found no earlier run under runs/; pass --output DIR.")
    if output is None:
        output = os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    data = data or os.environ.get(data_module.DATA_ENV) or None
    settings = {
        "models": list(models),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "learning_rate": learning_rate,
        "limit": limit,
        "data": os.path.abspath(data) if data else "keras.datasets.cifar10",
        "backend": keras.backend.backend(),
    }
    run_path = os.path.join(output, RUN_FILE)
    if os.path.exists(run_path):
        with open(run_path, encoding="utf-8") as f:
            previous = json.load(f)
        if not resume:
            raise CompareError(
                f"{output} already holds a run. Use --resume to continue it, or another --output."
            )
        changed = [k for k in RESUME_KEYS if previous.get(k) != settings[k]]
        if changed:
            raise CompareError(
                f"Cannot resume {output}: these settings differ from the original run: "
                + ", ".join(f"{k} (was {previous.get(k)!r}, now {settings[k]!r})" for k in changed)
            )
        settings["started"] = previous["started"]
    else:
        settings["started"] = datetime.datetime.now().isoformat(timespec="seconds")
    os.makedirs(output, exist_ok=True)
    settings["command"] = "involution " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "run_compare()"
    atomic_write_json(run_path, settings)

    dataset = data_module.load_dataset(data, cache_dir=cache_dir, progress=verbose > 0)
    dataset = dataset.subset(limit, seed=seed)
    log(f"Data: {dataset.source}: {len(dataset.x_train):,} training and {len(dataset.x_test):,} test images.")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, learning_rate=learning_rate)

    histories = []
    for name in models:
        log(f"\n=== {name}: {models_module.describe_model(name)}")
        histories.append(
            train_model(name, dataset, config, os.path.join(output, name), verbose=verbose, log=log)
        )

    trained = {}
    for name in models:
        trained[name] = keras.saving.load_model(os.path.join(output, name, "model.keras"))
    settings.update(
        environment=report.environment(),
        train_size=len(dataset.x_train),
        test_size=len(dataset.x_test),
        wall_time_s=time.perf_counter() - started,
        train_time_s=sum(e["time_s"] for h in histories for e in h["epochs"]),
    )
    # Summaries of fresh, uncompiled models: the per-layer table without the
    # optimizer's variables that a trained model's summary adds.
    summaries = {
        name: report.model_summary_text(
            models_module.create_model(name, input_shape=dataset.x_train.shape[1:], num_classes=len(dataset.class_names))
        )
        for name in models
    }
    report.write_report(output, settings, histories, trained, dataset, summaries)
    log("\n" + report.format_table(report.SUMMARY_HEADER, report.summary_rows(histories)))
    log(f"\nReport: {os.path.join(output, 'report.html')} (and report.md)")
    return output, [read_history(os.path.join(output, name)) for name in models]
