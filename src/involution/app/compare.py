"""`involution compare`: train registry models one after another, then report.

An output folder holds `run.json` (the run's settings), one folder per model
(see `involution.app.training`) and the report. A run with several seeds
(`seeds=[42, 43, 44]`) trains every model once per seed, seed by seed, into
`<model>/seed-<seed>/`, and reports each model's mean and spread. Rerunning with `resume=True` on
the same folder continues where the last invocation stopped. One process at
a time works in a folder (it holds the folder's lock while it runs), and it
starts by deleting the temporary files that a killed one left.
"""

import datetime
import math
import os
import time

from involution.app import report
from involution.app.files import FolderLock, LockedError, atomic_write_json, is_temporary, remove_stale_temporaries

RUN_FILE = "run.json"
# Settings that must match for a resumed run to end where an uninterrupted one
# would; `epochs`, `models` and the seeds after the first may change (to
# extend a run, add a model or a seed). The first seed also draws `limit`'s
# subset.
RESUME_KEYS = ("recipe", "batch_size", "seed", "learning_rate", "limit", "data", "backend", "per_seed_folders")


class CompareError(RuntimeError):
    """A run that cannot start or resume as asked."""


def latest_run(base="runs"):
    if not os.path.isdir(base):
        return None
    runs = sorted(d for d in os.listdir(base) if os.path.isfile(os.path.join(base, d, RUN_FILE)))
    return os.path.join(base, runs[-1]) if runs else None


def check_settings(models, epochs, batch_size, learning_rate, limit, seeds=None):
    """Raises `CompareError` naming the first setting out of range."""
    if seeds is not None:
        if (not isinstance(seeds, (list, tuple)) or not seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            raise CompareError(f"seeds must be a non-empty list of non-negative integers. Received: seeds={seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise CompareError(f"seeds must be distinct. Received: seeds={list(seeds)!r}")
    from involution import models as models_module

    for name in models:
        if name not in models_module.list_models():
            raise CompareError(
                f"Unknown model {name!r}. Available: {', '.join(models_module.list_models())}"
            )
    if not models:
        raise CompareError("No model to train: pass at least one name with --models.")
    for setting, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise CompareError(f"{setting} must be a positive integer. Received: {setting}={value!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise CompareError(f"limit must be a positive integer or None. Received: limit={limit!r}")
    if not isinstance(learning_rate, (int, float)) or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise CompareError(
            f"learning_rate must be a positive finite number. Received: learning_rate={learning_rate!r}"
        )


def prepare_output(output):
    """Creates the run folder `output` if needed; raises unless it is a
    writable folder."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise CompareError(f"--output {output} is a file; pass a folder (new or from an earlier run).")
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        raise CompareError(f"Cannot create the --output folder {output}: {error.strerror or error}.") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise CompareError(f"The --output folder {output} is not writable; pass another folder.")


def resume_policy(output, settings, resume):
    """The run's start time: the original one when resuming `output`.

    Raises `CompareError` where `output` holds a run and `resume` is off,
    or where a setting that a resumed run must share has changed.
    """
    run_path = os.path.join(output, RUN_FILE)
    if not os.path.exists(run_path):
        return datetime.datetime.now().isoformat(timespec="seconds")
    from involution import untrusted

    try:
        previous = untrusted.read_json(run_path, what="run file")
    except untrusted.UntrustedFileError as error:
        raise CompareError(f"{error}; pass another --output.") from None
    if not resume:
        raise CompareError(f"{output} already holds a run. Use --resume to continue it, or another --output.")
    # Runs recorded before a setting existed had its default.
    previous = {"per_seed_folders": False, "recipe": "example", **previous}
    changed = [k for k in RESUME_KEYS if previous.get(k) != settings[k]]
    from involution.app.recipes import RECIPES

    if RECIPES[settings["recipe"]].schedule != "constant" and previous.get("epochs") != settings["epochs"]:
        # The learning rate's schedule spans the run's epochs.
        changed.append("epochs")
    if changed:
        raise CompareError(
            f"Cannot resume {output}: these settings differ from the original run: "
            + ", ".join(f"{k} (was {previous.get(k)!r}, now {settings[k]!r})" for k in changed)
        )
    return previous["started"]


def remove_stale_files(output):
    """Deletes every temporary file under `output` (its lock is held)."""
    paths = [os.path.join(root, name) for root, _, names in os.walk(output) for name in names if is_temporary(name)]
    return remove_stale_temporaries(paths, writer_may_run=False)


def run_compare(
    models=("conv", "involution"),
    epochs=None,
    batch_size=None,
    seed=42,
    learning_rate=None,
    output=None,
    seeds=None,
    recipe="example",
    data=None,
    limit=None,
    resume=False,
    verbose=1,
    cache_dir=None,
    log=print,
    command=None,
):
    """Trains `models` on CIFAR-10 and writes the report.

    Args:
        models: registry names, trained in this order.
        epochs, batch_size, seed, learning_rate: the run's settings; None
            for the recipe's (see `involution.app.recipes`).
        seeds: None to train each model once with `seed`, or a list of
            seeds to train each model once per seed (in
            `<output>/<model>/seed-<seed>/`; the report gives means and
            spreads). The first seed draws `limit`'s subset.
        recipe: `"example"` (the Keras example's) or `"strong"` (see
            `involution.app.recipes.RECIPES`).
        output: the run folder; default `runs/<timestamp>` (with `resume`:
            the latest run there).
        data: the data source (see `involution.app.data.load_dataset`).
        limit: at most this many training and test images.
        resume: continue the run in `output`.
        verbose: 1: a line per epoch; 0: quiet.
        cache_dir: the decoded-data cache.
        log: where one-line messages go.
        command: the command line, for the report.

    Returns:
        `(output, histories)`.

    Raises:
        CompareError: a setting, the output folder or the resume request
            cannot be used (before anything is written).
        DataError: the data cannot be read (before the run is recorded).
    """
    import keras

    from involution.app import data as data_module

    from involution.app.recipes import get_recipe

    started = time.perf_counter()
    try:
        defaults = get_recipe(recipe)
    except ValueError as error:
        raise CompareError(str(error)) from None
    epochs = defaults.epochs if epochs is None else epochs
    batch_size = defaults.batch_size if batch_size is None else batch_size
    learning_rate = defaults.learning_rate if learning_rate is None else learning_rate
    check_settings(models, epochs, batch_size, learning_rate, limit, seeds)
    if resume and output is None:
        output = latest_run()
        if output is None:
            raise CompareError("--resume found no earlier run under runs/; pass --output DIR.")
    if output is None:
        output = os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    data = data or os.environ.get(data_module.DATA_ENV) or None
    settings = {
        "models": list(models),
        "recipe": recipe,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seeds[0] if seeds else seed,
        "seeds": list(seeds) if seeds else [seed],
        "per_seed_folders": bool(seeds),
        "learning_rate": learning_rate,
        "limit": limit,
        "data": os.path.abspath(data) if data else "keras.datasets.cifar10",
        "backend": keras.backend.backend(),
    }
    prepare_output(output)
    try:
        lock = FolderLock(output).acquire()
    except LockedError as error:
        raise CompareError(
            f"Another involution process (pid {error}) is running in {output}; wait for it, or pass another --output."
        ) from None
    try:
        remove_stale_files(output)
        settings["started"] = resume_policy(output, settings, resume)
        dataset = data_module.load_dataset(data, cache_dir=cache_dir, progress=verbose > 0)
        dataset = dataset.subset(limit, seed=settings["seed"])
        log(f"Data: {dataset.source}: {len(dataset.x_train):,} training and {len(dataset.x_test):,} test images.")
        # Recorded only now: a run whose data did not load leaves nothing
        # that would block its rerun.
        settings["command"] = command or "run_compare()"
        atomic_write_json(os.path.join(output, RUN_FILE), settings)
        histories = train_all(models, dataset, settings, output, verbose, log)
        write_report(output, settings, histories, dataset, started)
    finally:
        lock.release()
    if settings["per_seed_folders"]:
        log("\n" + report.format_table(report.RUN_HEADER, report.run_rows(histories, settings["seed"])))
        log("\n" + report.format_table(report.SEED_HEADER, report.seed_rows(histories)))
    else:
        log("\n" + report.format_table(report.SUMMARY_HEADER, report.summary_rows(histories)))
    log(f"\nReport: {os.path.join(output, 'report.html')} (and report.md)")
    return output, histories


def train_all(models, dataset, settings, output, verbose, log):
    """Trains every model of the run in turn; returns their histories."""
    from involution import models as models_module
    from involution.app.training import TrainConfig, train_model

    histories = []
    checksum = dataset.checksum()
    for seed in settings["seeds"]:
        config = TrainConfig(epochs=settings["epochs"], batch_size=settings["batch_size"], seed=seed,
                             learning_rate=settings["learning_rate"], recipe=settings["recipe"])
        for name in models:
            title = f"{name}, seed {seed}" if settings["per_seed_folders"] else name
            log(f"\n=== {title}: {models_module.describe_model(name)}")
            model_dir = model_folder(output, name, seed, settings["per_seed_folders"])
            history = train_model(name, dataset, config, model_dir, verbose=verbose, log=log,
                                  label=title if settings["per_seed_folders"] else None)
            histories.append(history)
            if history["status"] == "finished":
                write_preset(model_dir, history, dataset, dict(settings, seed=seed), checksum)
    return histories


def model_folder(output, name, seed, per_seed_folders):
    """Where model `name` trained with `seed` lives in the run folder `output`."""
    return os.path.join(output, name, f"seed-{seed}") if per_seed_folders else os.path.join(output, name)


PRESET_FOLDER = "preset"


def write_preset(model_dir, history, dataset, settings, checksum):
    """Writes the trained model of `model_dir` as a preset folder beside it.

    Its metadata's accuracy is the last epoch's test accuracy, measured by
    Keras' `fit` on the run's test images, which `involution evaluate`
    measures again.
    """
    import keras

    import involution
    from involution import models as models_module
    from involution.app.recipes import get_recipe

    folder = os.path.join(model_dir, PRESET_FOLDER)
    try:
        written = models_module.preset_metadata(folder)
    except ValueError:
        written = None
    if written and written.get("epochs") == len(history["epochs"]) and written.get("seed") == settings["seed"]:
        # Written when this model finished; a later invocation keeps the
        # command that trained it.
        return
    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False)
    last = history["epochs"][-1]
    summary = report.summarize(history)
    environment = report.environment()
    metadata = {
        "model": history["model"],
        "description": models_module.describe_model(history["model"]),
        "test_accuracy": last["val_accuracy"],
        "best_test_accuracy": summary["best_accuracy"],
        "test_images": len(dataset.x_test),
        "epochs": len(history["epochs"]),
        "recipe": get_recipe(settings["recipe"]).describe(settings["epochs"], settings["batch_size"],
                                                          settings["learning_rate"]),
        "seed": settings["seed"],
        "preprocessing": "pixels / 255",
        "input_shape": list(dataset.x_train.shape[1:]),
        "class_names": list(dataset.class_names),
        "data": {"source": os.path.basename(os.path.normpath(dataset.source)), "sha256": checksum, "train_images": len(dataset.x_train),
                 "test_images": len(dataset.x_test)},
        "parameter_count": history["parameters"]["total"],
        "backend": environment["backend"],
        "versions": {"involution": involution.__version__, **environment["versions"]},
        "command": settings["command"],
        "trained": settings["started"],
        "check": models_module.presets.output_check(model),
    }
    models_module.save_preset(model, folder, metadata)


def write_report(output, settings, histories, dataset, started):
    """Reloads the trained models and writes the report of the run."""
    import keras

    from involution import models as models_module

    # One trained model per name for the kernel maps: the first seed's.
    trained = {}
    for h in histories:
        if h["model"] not in trained:
            folder = model_folder(output, h["model"], h.get("seed", settings["seed"]), settings["per_seed_folders"])
            trained[h["model"]] = keras.saving.load_model(os.path.join(folder, "model.keras"))
    settings = dict(
        settings,
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
            models_module.create_model(name, input_shape=dataset.x_train.shape[1:],
                                       num_classes=len(dataset.class_names))
        )
        for name in trained
    }
    report.write_report(output, settings, histories, trained, dataset, summaries)
