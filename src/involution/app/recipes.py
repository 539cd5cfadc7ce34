"""Training recipes: how `involution compare` trains a model.

`example` is the Keras example's: pixels / 255, batch 256, Adam at a
constant 1e-3, sparse categorical cross-entropy, 20 epochs, no
augmentation. `strong` is a modern small-network recipe: random shifts and
horizontal flips, AdamW with decoupled weight decay, a linear warm-up into a
cosine decay to zero, label smoothing, 30 epochs. A recipe is data; its
`describe()` is what reports and presets record.
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training recipe.

    Attributes:
        name: how reports and the command line name it.
        epochs, batch_size: the default epoch count and batch size.
        learning_rate: Adam's constant rate (`schedule="constant"`), or the
            peak of the warm-up and cosine decay (`"cosine"`).
        schedule: `"constant"` or `"cosine"` (linear from 0 to
            `learning_rate` over `warmup_epochs`, then a cosine decay to 0
            at the last step).
        warmup_epochs: epochs of linear warm-up (cosine only).
        weight_decay: AdamW's decoupled decay per step, as a fraction of the
            learning rate (0: Adam). It applies to every weight, batch-norm
            scales and biases included: Keras does not save an optimizer's
            exclusions, so a resumed run would decay differently.
        label_smoothing: the cross-entropy's label smoothing (0: none).
        shift: random translation of every training image by up to this
            many pixels each way, zero-filled: the pad-and-crop augmentation
            (0: none).
        flip: random horizontal flips of the training images.
    """

    name: str
    epochs: int
    batch_size: int
    learning_rate: float
    schedule: str = "constant"
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    shift: int = 0
    flip: bool = False

    @property
    def augments(self):
        return bool(self.shift or self.flip)

    def describe(self, epochs=None, batch_size=None, learning_rate=None):
        """A JSON-serializable record of the recipe with a run's settings."""
        return dict(dataclasses.asdict(self), epochs=epochs or self.epochs, batch_size=batch_size or self.batch_size,
                    learning_rate=learning_rate or self.learning_rate,
                    optimizer="AdamW" if self.weight_decay else "Adam", loss=self._loss_words(),
                    preprocessing="pixels / 255")

    def _loss_words(self):
        if self.label_smoothing:
            return f"categorical cross-entropy from logits with label smoothing {self.label_smoothing}"
        return "sparse categorical cross-entropy from logits"

    def sentence(self, epochs, batch_size, learning_rate):
        """One sentence for a report."""
        parts = ["pixels scaled to [0, 1]"]
        if self.augments:
            augment = []
            if self.shift:
                augment.append(f"random shifts of up to {self.shift} pixels (zero fill)")
            if self.flip:
                augment.append("random horizontal flips")
            parts.append(" and ".join(augment) + ", drawn anew every epoch")
        parts.append(f"shuffled every epoch, batch {batch_size}")
        if self.weight_decay:
            optimizer = f"AdamW (weight decay {self.weight_decay})"
        else:
            optimizer = "Adam"
        if self.schedule == "cosine":
            parts.append(f"{optimizer} with a {self.warmup_epochs}-epoch linear warm-up to {learning_rate} "
                         "and a cosine decay to 0")
        else:
            parts.append(f"{optimizer} (learning rate {learning_rate})")
        parts.append(self._loss_words())
        title = "the Keras example's recipe" if self.name == "example" else f"the {self.name} recipe"
        return f"{title}: " + ", ".join(parts)

    def optimizer(self, learning_rate, epochs, steps_per_epoch):
        import keras

        rate = learning_rate
        if self.schedule == "cosine":
            warmup = self.warmup_epochs * steps_per_epoch
            rate = keras.optimizers.schedules.CosineDecay(
                0.0, decay_steps=max(1, epochs * steps_per_epoch - warmup), warmup_target=learning_rate,
                warmup_steps=warmup,
            )
        if self.weight_decay:
            return keras.optimizers.AdamW(rate, weight_decay=self.weight_decay)
        return keras.optimizers.Adam(rate)

    def loss(self):
        import keras

        if self.label_smoothing:
            return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=self.label_smoothing)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def targets(self, labels, classes):
        """Labels as the loss takes them: one-hot with label smoothing."""
        if self.label_smoothing:
            return np.eye(classes, dtype="float32")[labels]
        return labels

    def augment(self, images, seed, epoch, chunk=2048):
        """One epoch's augmented copy of `images` (uint8, channels-last).

        Keras' preprocessing layers, seeded from `(seed, epoch)` so that a
        resumed run draws what an uninterrupted one would. The shift is
        `RandomTranslation` with nearest-pixel sampling and zero fill, which
        is padding by `shift` and cropping at a random offset per image
        (Keras' `RandomCrop` draws one offset per batch).
        """
        import keras

        if not self.augments:
            return images
        layer_seed = int(np.random.default_rng([seed, epoch, 7]).integers(2**31 - 1))
        layers = []
        if self.shift:
            height, width = images.shape[1:3]
            layers.append(keras.layers.RandomTranslation(
                self.shift / height, self.shift / width, fill_mode="constant", interpolation="nearest",
                seed=layer_seed, data_format="channels_last",
            ))
        if self.flip:
            layers.append(keras.layers.RandomFlip("horizontal", seed=layer_seed + 1, data_format="channels_last"))
        out = np.empty_like(images)
        for start in range(0, len(images), chunk):
            x = images[start:start + chunk].astype("float32")
            for layer in layers:
                x = layer(x, training=True)
            # Shifts and flips move pixels without changing their values.
            out[start:start + chunk] = np.round(keras.ops.convert_to_numpy(x)).astype(np.uint8)
        return out


RECIPES = {
    "example": Recipe("example", epochs=20, batch_size=256, learning_rate=1e-3),
    "strong": Recipe(
        "strong",
        epochs=30,             # a small budget: what resnet8's reference target takes 500 for
        batch_size=128,        # images per step
        learning_rate=2e-3,    # AdamW's peak rate, per step
        schedule="cosine",
        warmup_epochs=2,       # epochs of linear warm-up from 0
        weight_decay=0.05,     # decoupled, per step, times the learning rate
        label_smoothing=0.1,   # probability mass spread over the other classes
        shift=4,               # pixels each way, as CIFAR's usual 4-pixel pad and crop
        flip=True,
    ),
}


def get_recipe(name):
    """The `Recipe` named `name` (a key of `RECIPES`); a `ValueError` names the choices otherwise."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe. Expected one of {', '.join(RECIPES)}. Received: recipe={name!r}")
    return RECIPES[name]


def steps_per_epoch(images, batch_size):
    return math.ceil(images / batch_size)
