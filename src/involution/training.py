"""Training one model with per-epoch checkpoints that a rerun resumes.

Layout of a model's folder (`<output>/<model name>/`):

- `history.json`: status, parameter counts and every finished epoch's
  metrics and time; rewritten atomically after each epoch.
- `checkpoint-NNN.keras`: the model and optimizer state after epoch NNN,
  while training runs. It is written before the history that names it, and
  the previous one is deleted only after, so a kill at any moment leaves a
  history and a checkpoint that agree.
- `model.keras`: the trained model, once finished (the checkpoint is then
  removed).

Each epoch's shuffle is drawn from `(seed, epoch)` rather than from a global
random state, so a run interrupted after epoch k and resumed visits the same
batches in the same order as an uninterrupted one, and ends at the same
weights.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np

HISTORY_FILE = "history.json"
MODEL_FILE = "model.keras"


@dataclasses.dataclass
class TrainConfig:
    """The Keras example's recipe."""

    epochs: int = 20
    batch_size: int = 256
    seed: int = 42
    learning_rate: float = 1e-3


def atomic_write_text(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_write_json(path, data):
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def atomic_save_model(model, path):
    # Keras insists on the .keras suffix, so the temporary name keeps it.
    tmp = f"{path[: -len('.keras')]}.{os.getpid()}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


def read_history(model_dir):
    path = os.path.join(model_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def parameter_counts(model):
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}


def compile_model(model, config):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def train_model(name, dataset, config, model_dir, verbose=1, log=print, **model_kwargs):
    """Trains registry model `name`, resuming from `model_dir` if it holds one.

    Args:
        name: a name from `involution.models.list_models()`.
        dataset: an `involution.data.Dataset`.
        config: a `TrainConfig`.
        model_dir: the model's folder (created if needed).
        verbose: Keras' `fit` verbosity (1: progress bars).
        log: where one-line messages go.
        **model_kwargs: passed to `create_model`.

    Returns:
        The history dict (as written to `history.json`). Its `status` is
        `"finished"`, or `"nan"` when the loss became NaN (training of this
        model stops there; the message says when).
    """
    import keras

    from involution.models import create_model

    os.makedirs(model_dir, exist_ok=True)
    history = read_history(model_dir)
    model_path = os.path.join(model_dir, MODEL_FILE)
    history_path = os.path.join(model_dir, HISTORY_FILE)
    if history and history["status"] in ("finished", "nan") and os.path.exists(model_path):
        log(f"[{name}] already trained ({history['status']}); not retraining.")
        return history

    checkpoint = history and history.get("checkpoint")
    if checkpoint and os.path.exists(os.path.join(model_dir, checkpoint)):
        model = keras.saving.load_model(os.path.join(model_dir, checkpoint))
        log(f"[{name}] resuming after epoch {len(history['epochs'])} of {config.epochs}.")
    else:
        keras.utils.set_random_seed(config.seed)
        model = create_model(name, input_shape=dataset.x_train.shape[1:], num_classes=len(dataset.class_names), **model_kwargs)
        compile_model(model, config)
        history = {
            "model": name,
            "status": "running",
            "epochs_planned": config.epochs,
            "parameters": parameter_counts(model),
            "epochs": [],
            "checkpoint": None,
            "message": "",
        }
    history["epochs_planned"] = config.epochs

    x_train = dataset.x_train
    y_train = dataset.y_train
    x_test = dataset.x_test.astype("float32") / 255.0
    y_test = dataset.y_test
    for epoch in range(len(history["epochs"]), config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(x_train))
        started = time.perf_counter()
        result = model.fit(
            x_train[order].astype("float32") / 255.0,
            y_train[order],
            batch_size=config.batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            validation_data=(x_test, y_test),
            callbacks=[keras.callbacks.TerminateOnNaN()],
            verbose=verbose,
        )
        seconds = time.perf_counter() - started
        metrics = {key: float(values[-1]) for key, values in result.history.items()}
        history["epochs"].append({"epoch": epoch + 1, **metrics, "time_s": seconds})
        if not all(math.isfinite(v) for v in metrics.values()):
            history["status"] = "nan"
            history["message"] = (
                f"Training stopped at epoch {epoch + 1}: the loss became NaN "
                "(try a lower learning rate)."
            )
            log(f"[{name}] {history['message']}")
            break
        previous = history["checkpoint"]
        history["checkpoint"] = f"checkpoint-{epoch + 1:03d}.keras"
        atomic_save_model(model, os.path.join(model_dir, history["checkpoint"]))
        atomic_write_json(history_path, history)
        _remove(model_dir, previous)
    else:
        history["status"] = "finished"

    atomic_save_model(model, model_path)
    previous, history["checkpoint"] = history["checkpoint"], None
    atomic_write_json(history_path, history)
    _remove(model_dir, previous)
    return history


def _remove(folder, name):
    if name and os.path.exists(os.path.join(folder, name)):
        os.remove(os.path.join(folder, name))
