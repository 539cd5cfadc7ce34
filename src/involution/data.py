"""CIFAR-10 (and CIFAR-10-shaped) data: download, local copies, cache.

`load_dataset(path)` returns a `Dataset` of uint8 images and int labels from:

- nothing (`path=None`): `keras.datasets.cifar10.load_data()`, the real
  download, for users with a network;
- the official `cifar-10-python.tar.gz` or its extracted
  `cifar-10-batches-py/` folder (pickled batches);
- an image-folder tree, `train/<class>/*` and `test/<class>/*`, as a folder
  or a `.tar.gz` (such as the JPEG copy in `shared/data/`).

Decoding an image tree is slow, so the decoded arrays are cached (`.npz`) in
the user's cache folder, keyed by the source's path, size and modification
time: a changed source is decoded again.
"""

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np

DATA_ENV = "INVOLUTION_DATA"
CACHE_ENV = "INVOLUTION_CACHE"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CACHE_VERSION = 1


class DataError(ValueError):
    """A data source that cannot be read, with the offending file named."""


@dataclasses.dataclass
class Dataset:
    x_train: np.ndarray  # (N, H, W, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple
    source: str

    def subset(self, limit, seed=0):
        """A class-stratified-by-chance random subset of at most `limit`."""
        if not limit:
            return self
        rng = np.random.default_rng(seed)
        train = np.sort(rng.permutation(len(self.x_train))[:limit])
        test = np.sort(rng.permutation(len(self.x_test))[:limit])
        return dataclasses.replace(
            self,
            x_train=self.x_train[train],
            y_train=self.y_train[train],
            x_test=self.x_test[test],
            y_test=self.y_test[test],
        )


def default_cache_dir():
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "involution")


def load_dataset(path=None, cache_dir=None, progress=True):
    """Loads CIFAR-10 from `path` (or `$INVOLUTION_DATA`, or the network).

    Args:
        path: a local copy (see the module docstring) or None.
        cache_dir: where decoded arrays are cached; defaults to
            `$INVOLUTION_CACHE`, else `~/.cache/involution`.
        progress: show a progress bar while decoding images.

    Returns:
        A `Dataset`.

    Raises:
        DataError: the source is missing or malformed, or (with no path)
            the download failed; the message says what to do.
    """
    path = path or os.environ.get(DATA_ENV) or None
    if path is None:
        return _download()
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise DataError(f"The data path does not exist: {path}")
    cache_dir = cache_dir or default_cache_dir()
    cache_file = os.path.join(cache_dir, f"cifar-{_source_key(path)}.npz")
    if os.path.exists(cache_file):
        try:
            return _read_cache(cache_file, path)
        except (OSError, ValueError, KeyError):
            pass  # An unreadable cache is rebuilt below.
    dataset = _decode(path, progress)
    _write_cache(cache_file, dataset)
    return dataset


def _download():
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:  # noqa: BLE001 - any failure means "no data"
        raise DataError(
            "Could not download CIFAR-10 "
            f"({type(error).__name__}: {error}). Without a network, point at a "
            "local copy with --data PATH or the INVOLUTION_DATA environment "
            "variable: the official cifar-10-python.tar.gz, its extracted "
            "cifar-10-batches-py/ folder, or an image-folder tree "
            "(train/<class>/*, test/<class>/*) as a folder or .tar.gz."
        ) from None
    return Dataset(
        x_train, y_train.reshape(-1).astype(np.int64), x_test,
        y_test.reshape(-1).astype(np.int64), CIFAR10_CLASSES, "keras.datasets.cifar10",
    )


def _source_key(path):
    """Changes whenever the source (any file in it) changes."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{path}".encode())
    if os.path.isfile(path):
        stat = os.stat(path)
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                stat = os.stat(os.path.join(root, name))
                digest.update(f"{root}/{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _read_cache(cache_file, path):
    with np.load(cache_file, allow_pickle=False) as data:
        return Dataset(
            data["x_train"], data["y_train"], data["x_test"], data["y_test"],
            tuple(str(c) for c in data["class_names"]), path,
        )


def _write_cache(cache_file, dataset):
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    tmp = f"{cache_file}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(
            f, x_train=dataset.x_train, y_train=dataset.y_train,
            x_test=dataset.x_test, y_test=dataset.y_test,
            class_names=np.array(dataset.class_names),
        )
    os.replace(tmp, cache_file)


def _decode(path, progress):
    if os.path.isdir(path):
        if _looks_pickled_folder(path):
            return _from_pickled_folder(path)
        return _from_image_tree(_FolderTree(path), path, progress)
    if not tarfile.is_tarfile(path):
        raise DataError(
            f"{path} is neither a folder nor a .tar.gz archive; expected "
            "cifar-10-python.tar.gz, cifar-10-batches-py/, or an image-folder tree."
        )
    with tarfile.open(path, "r:*") as archive:
        members = [m for m in archive.getmembers() if m.isfile()]
        names = {os.path.basename(m.name) for m in members}
        if "data_batch_1" in names and "test_batch" in names:
            return _from_pickled_tar(archive, members, path)
        return _from_image_tree(_TarTree(archive, members), path, progress)


# Pickled batches (the official python version) -----------------------------


def _looks_pickled_folder(path):
    if os.path.isdir(os.path.join(path, "cifar-10-batches-py")):
        return True
    return os.path.exists(os.path.join(path, "data_batch_1"))


def _from_pickled_folder(path):
    if os.path.isdir(os.path.join(path, "cifar-10-batches-py")):
        path = os.path.join(path, "cifar-10-batches-py")

    def read(name):
        file = os.path.join(path, name)
        if not os.path.exists(file):
            raise DataError(f"Missing CIFAR-10 batch file: {file}")
        with open(file, "rb") as f:
            return _unpickle(f.read(), file)

    return _assemble_pickled(read, path)


def _from_pickled_tar(archive, members, path):
    by_name = {os.path.basename(m.name): m for m in members}

    def read(name):
        if name not in by_name:
            raise DataError(f"Missing CIFAR-10 batch file {name!r} in {path}")
        return _unpickle(archive.extractfile(by_name[name]).read(), f"{path}:{by_name[name].name}")

    return _assemble_pickled(read, path)


def _unpickle(raw, name):
    try:
        return pickle.loads(raw, encoding="bytes")
    except Exception as error:  # noqa: BLE001
        raise DataError(f"Cannot read the CIFAR-10 batch {name}: {error}") from None


def _batch_arrays(batch, name):
    data = batch.get(b"data")
    labels = batch.get(b"labels")
    if data is None or labels is None:
        raise DataError(f"The CIFAR-10 batch {name} has no 'data' or 'labels' entry.")
    data = np.asarray(data, np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"The CIFAR-10 batch {name} holds images of {data.shape[1:]} values; "
            "expected 3072 (32x32 RGB)."
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(labels, np.int64)


def _assemble_pickled(read, path):
    train = [_batch_arrays(read(f"data_batch_{i}"), f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _batch_arrays(read("test_batch"), "test_batch")
    class_names = CIFAR10_CLASSES
    try:
        meta = read("batches.meta")
        class_names = tuple(n.decode() for n in meta[b"label_names"])
    except DataError:
        pass  # The names are optional; the standard ones apply.
    return Dataset(
        np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
        x_test, y_test, class_names, path,
    )


# Image-folder trees -----------------------------------------------------------


class _FolderTree:
    def __init__(self, root):
        self.root = root

    def files(self):
        for dirpath, dirs, names in os.walk(self.root):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(dirpath, name)
                yield os.path.relpath(full, self.root).replace(os.sep, "/"), full

    def read(self, handle):
        with open(handle, "rb") as f:
            return f.read()

    def describe(self, handle):
        return handle


class _TarTree:
    def __init__(self, archive, members):
        self.archive, self.members = archive, members

    def files(self):
        for member in self.members:
            yield member.name, member

    def read(self, member):
        return self.archive.extractfile(member).read()

    def describe(self, member):
        return member.name


def _split_parts(relative):
    """(split, class) of a path like [prefix/]train/<class>/<file>."""
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts[:-2]):
        if part in ("train", "test") and i + 3 == len(parts):
            return part, parts[i + 1]
    return None, None


def _from_image_tree(tree, path, progress):
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    entries = {"train": [], "test": []}
    for relative, handle in tree.files():
        if not relative.lower().endswith(IMAGE_SUFFIXES):
            continue
        split, label = _split_parts(relative)
        if split is not None:
            entries[split].append((label, handle))
    for split in ("train", "test"):
        if not entries[split]:
            raise DataError(
                f"No images found under {split}/<class>/ in {path}. Expected an "
                "image-folder tree: train/<class>/*.jpg and test/<class>/*.jpg."
            )
    train_classes = sorted({label for label, _ in entries["train"]})
    test_classes = sorted({label for label, _ in entries["test"]})
    if train_classes != test_classes:
        missing = [f"train/{c}" for c in test_classes if c not in train_classes]
        missing += [f"test/{c}" for c in train_classes if c not in test_classes]
        raise DataError(f"Class folder missing in {path}: {', '.join(missing)}")
    class_index = {name: i for i, name in enumerate(train_classes)}

    total = len(entries["train"]) + len(entries["test"])
    bar = tqdm(total=total, desc="Decoding images", unit="img", disable=not progress)
    arrays = {}
    expected_shape = None
    for split in ("train", "test"):
        images = []
        for label, handle in entries[split]:
            try:
                with Image.open(io.BytesIO(tree.read(handle))) as image:
                    array = np.asarray(image.convert("RGB"), np.uint8)
            except (UnidentifiedImageError, OSError, SyntaxError) as error:
                bar.close()
                raise DataError(
                    f"Cannot decode image {tree.describe(handle)}: {error}"
                ) from None
            if expected_shape is None:
                expected_shape = array.shape
            elif array.shape != expected_shape:
                bar.close()
                raise DataError(
                    f"Image {tree.describe(handle)} is {array.shape[1]}x{array.shape[0]}; "
                    f"every image must be {expected_shape[1]}x{expected_shape[0]} like the first."
                )
            images.append(array)
            bar.update(1)
        labels = np.array([class_index[label] for label, _ in entries[split]], np.int64)
        arrays[split] = (np.stack(images), labels)
    bar.close()
    return Dataset(
        arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1],
        tuple(train_classes), path,
    )
