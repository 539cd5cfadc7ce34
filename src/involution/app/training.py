"""Training one model with per-epoch checkpoints that a rerun resumes.

Layout of a model's folder (`<output>/<model name>/`):

- `history.json`: status, parameter counts and every finished epoch's
  metrics and time; rewritten atomically after each epoch.
- `checkpoint-NNN.keras`: the model and optimizer state after epoch NNN,
  while training runs. It is written before the history that names it, and
  the previous one is deleted only after, so a kill at any moment leaves a
  history and a checkpoint that agree.
- `model.keras`: the trained model and its optimizer state, once finished
  (the checkpoint is then removed). A later run asking for more epochs
  continues from it.

Each epoch's shuffle is drawn from `(seed, epoch)` rather than from a global
random state, so a run interrupted after epoch k and resumed visits the same
batches in the same order as an uninterrupted one, and ends at the same
weights. The first epoch that a process trains includes compiling the
step; it is marked (`"first_in_process"`) so that reports can leave it out
of the time per epoch.
"""

import dataclasses
import math
import os
import sys
import time

import keras
import numpy as np

from involution.app.files import atomic_save_model, atomic_write_json
from involution.app.recipes import get_recipe, steps_per_epoch

HISTORY_FILE = "history.json"
MODEL_FILE = "model.keras"


@dataclasses.dataclass
class TrainConfig:
    """One model's training: a recipe (`involution.app.recipes`) and the
    run's epochs, batch size, seed and (peak) learning rate. The defaults
    are the Keras example's recipe."""

    epochs: int = 20
    batch_size: int = 256
    seed: int = 42
    learning_rate: float = 1e-3
    recipe: str = "example"


def read_history(model_dir):
    """The history in `model_dir`, or None; null metrics read back as NaN."""
    path = os.path.join(model_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return None
    from involution import untrusted

    history = untrusted.read_json(path, what="history file")
    for epoch in history.get("epochs", []):
        for key, value in epoch.items():
            if value is None:
                epoch[key] = math.nan
    return history


def parameter_counts(model):
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}


def compile_model(model, config, steps_per_epoch=1):
    """Compiles `model` with the config's recipe (`steps_per_epoch` sizes
    a learning-rate schedule)."""
    recipe = get_recipe(config.recipe)
    model.compile(
        optimizer=recipe.optimizer(config.learning_rate, config.epochs, steps_per_epoch),
        loss=recipe.loss(),
        metrics=["accuracy"],
    )


class EpochProgress(keras.callbacks.Callback):
    """`Epoch k/N` and one line per epoch, for one `fit` call of a run.

    Training runs one `fit` call per epoch (each epoch's order is drawn from
    the seed), so Keras' own progress bar would count every call as epoch
    1 of 1; this one knows the run's epochs. Within an epoch a transient bar
    counts the batches where the output is a terminal.
    """

    def __init__(self, epoch, epochs, name, log=print, stream=None):
        super().__init__()
        self.epoch, self.epochs, self.name, self.log = epoch, epochs, name, log
        self.stream = stream or sys.stderr
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.params.get("steps"), desc=f"[{self.name}] Epoch {self.epoch}/{self.epochs}",
                            unit="batch", leave=False, file=self.stream)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.log(f"[{self.name}] Epoch {self.epoch}/{self.epochs}: " + format_metrics(logs or {}))


def format_metrics(metrics):
    parts = []
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in metrics:
            value = float(metrics[key])
            parts.append(f"{key} {100 * value:.2f}%" if key.endswith("accuracy") else f"{key} {value:.4f}")
    return ", ".join(parts)


def train_model(name, dataset, config, model_dir, verbose=1, log=print, label=None, **model_kwargs):
    """Trains registry model `name`, resuming from `model_dir` if it holds one.

    Args:
        name: a name from `involution.models.list_models()`.
        dataset: an `involution.app.data.Dataset`.
        config: a `TrainConfig`.
        model_dir: the model's folder (created if needed).
        verbose: 1: a line per epoch (and a batch bar on a terminal);
            0: nothing.
        log: where one-line messages go.
        label: how messages name the model (default `name`).
        **model_kwargs: passed to `create_model`.

    Returns:
        The history dict (as written to `history.json`). Its `status` is
        `"finished"`, or `"nan"` when the loss became NaN (training of this
        model stops there; the message says when). A finished model asked
        for more epochs than it has trains on from its saved state.
    """
    from involution.models import create_model

    os.makedirs(model_dir, exist_ok=True)
    label = label or name
    history = read_history(model_dir)
    model_path = os.path.join(model_dir, MODEL_FILE)
    history_path = os.path.join(model_dir, HISTORY_FILE)
    done = history and os.path.exists(model_path) and history["status"] in ("finished", "nan")
    if done and (history["status"] == "nan" or len(history["epochs"]) >= config.epochs):
        log(f"[{label}] already trained ({history['status']}, {len(history['epochs'])} epochs); not retraining.")
        return history

    checkpoint = history and history.get("checkpoint")
    if done:
        model = keras.saving.load_model(model_path)
        history["status"] = "running"
        log(f"[{label}] continuing after epoch {len(history['epochs'])} of {config.epochs}.")
    elif checkpoint and os.path.exists(os.path.join(model_dir, checkpoint)):
        model = keras.saving.load_model(os.path.join(model_dir, checkpoint))
        log(f"[{label}] resuming after epoch {len(history['epochs'])} of {config.epochs}.")
    else:
        keras.utils.set_random_seed(config.seed)
        model = create_model(name, input_shape=dataset.x_train.shape[1:], num_classes=len(dataset.class_names), **model_kwargs)
        compile_model(model, config, steps_per_epoch(len(dataset.x_train), config.batch_size))
        history = {
            "model": name,
            "seed": config.seed,
            "status": "running",
            "epochs_planned": config.epochs,
            "parameters": parameter_counts(model),
            "epochs": [],
            "checkpoint": None,
            "message": "",
        }
    history["epochs_planned"] = config.epochs

    recipe = get_recipe(config.recipe)
    classes = len(dataset.class_names)
    x_train = dataset.x_train
    y_train = recipe.targets(dataset.y_train, classes)
    x_test = dataset.x_test.astype("float32") / 255.0
    y_test = recipe.targets(dataset.y_test, classes)
    first = len(history["epochs"])
    for epoch in range(first, config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(x_train))
        images = recipe.augment(x_train[order], config.seed, epoch)
        callbacks = [keras.callbacks.TerminateOnNaN()]
        if verbose:
            callbacks.append(EpochProgress(epoch + 1, config.epochs, label, log=log))
        started = time.perf_counter()
        result = model.fit(
            **epoch_inputs(images.astype("float32") / 255.0, y_train[order], x_test, y_test, config.batch_size),
            epochs=epoch + 1,
            initial_epoch=epoch,
            callbacks=callbacks,
            verbose=0,
        )
        seconds = time.perf_counter() - started
        metrics = {key: float(values[-1]) for key, values in result.history.items()}
        history["epochs"].append(
            {"epoch": epoch + 1, **metrics, "time_s": seconds, "first_in_process": epoch == first}
        )
        if not all(math.isfinite(v) for v in metrics.values()):
            history["status"] = "nan"
            history["message"] = (
                f"Training stopped at epoch {epoch + 1}: the loss became NaN "
                "(try a lower learning rate)."
            )
            log(f"[{label}] {history['message']}")
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


def epoch_inputs(x, y, x_val, y_val, batch_size):
    """`model.fit`'s data arguments for one epoch: `(x, y)` in order, in
    batches of `batch_size`, and `(x_val, y_val)` to validate on.

    On TensorFlow, `tf.data` pipelines with tf.data's autotuning off;
    elsewhere the arrays, which Keras batches itself. Keras batches arrays
    on TensorFlow through autotuned pipelines, and since every epoch is one
    `fit` call, every epoch builds and tears down its pipelines, and with
    autotuning on about half of a run's epochs took a fixed extra time
    outside the training steps (`docs/design.md`, "Each epoch's batches on
    TensorFlow"). The batches are the same either way.
    """
    if keras.backend.backend() != "tensorflow":
        return dict(x=x, y=y, batch_size=batch_size, shuffle=False, validation_data=(x_val, y_val))
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False

    def batches(*arrays):
        return tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size).prefetch(1).with_options(options)

    return dict(x=batches(x, y), shuffle=False, validation_data=batches(x_val, y_val))


def _remove(folder, name):
    if name and os.path.exists(os.path.join(folder, name)):
        os.remove(os.path.join(folder, name))
