"""Tiny CIFAR-10-shaped data sets in every format `load_dataset` accepts."""

import os
import pickle
import tarfile

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird")


def images_and_labels(count, seed, size=32):
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(CLASSES)
    # Class-dependent colour so that a model can learn something.
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.float64)[labels]
    noise = rng.normal(0, 30, (count, size, size, 3))
    images = np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def make_pickled_folder(root, train_per_batch=8, test=12):
    """The official python layout: cifar-10-batches-py/data_batch_1..5, test_batch."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)

    def dump(name, images, labels):
        data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": data, b"labels": [int(v) for v in labels]}, f)

    for i in range(1, 6):
        dump(f"data_batch_{i}", *images_and_labels(train_per_batch, seed=i))
    dump("test_batch", *images_and_labels(test, seed=99))
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES]}, f)
    return folder


def make_image_tree(root, train=30, test=12, suffix=".png"):
    """train/<class>/NNNN.png and test/<class>/NNNN.png."""
    for split, count, seed in (("train", train, 1), ("test", test, 2)):
        images, labels = images_and_labels(count, seed)
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = os.path.join(root, split, CLASSES[label])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, f"{index:04d}{suffix}"))
    return root


def make_tarball(source, path):
    """`source`'s contents as a .tar.gz (paths relative to `source`'s parent)."""
    with tarfile.open(path, "w:gz") as archive:
        archive.add(source, arcname=os.path.basename(source))
    return path
