"""CIFAR-10 (and CIFAR-10-shaped) data: download, local copies, cache.

`load_dataset(path)` returns a `Dataset` of uint8 images and int labels from:

- nothing (`path=None`): `keras.datasets.cifar10.load_data()`, the real
  download, for users with a network;
- the official `cifar-10-python.tar.gz` or its extracted
  `cifar-10-batches-py/` folder (pickled batches);
- an image-folder tree, `train/<class>/*` and `test/<class>/*`, as a folder
  or a `.tar.gz` (such as a JPEG copy of CIFAR-10).

Decoding an image tree is slow, so the decoded arrays are cached (`.npz`) in
the user's cache folder, keyed by the source's path, size and modification
time: a changed source is decoded again, an unreadable cache file is
rebuilt, and a cache folder that cannot be written leaves the arrays in
memory (with a warning).

Every file is untrusted: pickled batches are read by an unpickler that
builds only what the official files hold (dicts, lists, strings, numbers,
NumPy arrays), and a truncated archive, a malformed batch or labels
outside the classes are a `DataError` naming the file.
"""

import dataclasses
import glob
import hashlib
import io
import os
import pickle
import tarfile
import warnings
import zipfile
import zlib

import numpy as np

from involution import cache, untrusted
from involution.cache import CACHE_ENV

DATA_ENV = "INVOLUTION_DATA"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CACHE_VERSION = 1
# A pickled batch: the official ones hold 10,000 images in 31 MB.
BATCH_FILE_LIMIT = 256 * 2**20
BATCH_IMAGES_LIMIT = 60_000


class DataError(ValueError):
    """A data source that cannot be read, with the offending file named."""


# What an official CIFAR batch (a dict of lists, strings and one uint8
# array) needs from the unpickler, under NumPy 1 and 2 module names; it may
# build nothing else.
_PICKLE_GLOBALS = {
    (module, name)
    for package in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{package}.multiarray", "_reconstruct"),
        (f"{package}.multiarray", "scalar"),
        (f"{package}.numeric", "_frombuffer"),
    )
} | {("numpy", "ndarray"), ("numpy", "dtype")}


@dataclasses.dataclass
class Dataset:
    x_train: np.ndarray  # (N, H, W, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple
    source: str

    def checksum(self):
        """SHA-256 of the images and labels of both splits, whatever the source's format."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()

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
    if not os.path.isdir(path):
        untrusted.regular_file(path, "data archive")
    cache_dir = cache_dir or cache.cache_dir()
    cache_file = os.path.join(cache_dir, f"cifar-{_source_key(path)}.npz")
    _remove_stale_temporaries(cache_dir)
    if os.path.exists(cache_file):
        try:
            return _validated(_read_cache(cache_file, path), cache_file)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, DataError):
            pass  # A truncated or stale cache file is rebuilt below.
    dataset = _validated(_decode(path, progress), path)
    try:
        _write_cache(cache_file, dataset)
    except OSError as error:
        warnings.warn(
            f"Cannot write the data cache {cache_file} ({error.strerror or error}); the decoded images stay in "
            f"memory only. Pass --cache-dir (or set {CACHE_ENV}) to a writable folder to keep them.",
            RuntimeWarning,
            stacklevel=2,
        )
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
    from involution.app.files import atomic_writer

    cache.make_private_dirs(os.path.dirname(cache_file))
    with atomic_writer(cache_file, "wb") as f:
        np.savez(
            f, x_train=dataset.x_train, y_train=dataset.y_train,
            x_test=dataset.x_test, y_test=dataset.y_test,
            class_names=np.array(dataset.class_names),
        )


def _remove_stale_temporaries(cache_dir):
    """Deletes cache files half-written by processes that no longer run."""
    from involution.app.files import remove_stale_temporaries

    remove_stale_temporaries(glob.glob(os.path.join(glob.escape(cache_dir), "cifar-*.tmp")))


def _validated(dataset, name):
    """`dataset`, once its arrays agree with each other and with its classes."""
    classes = len(dataset.class_names)
    if classes < 2:
        raise DataError(
            f"{name} holds {classes} class ({', '.join(dataset.class_names) or 'none'}); a classifier needs at "
            "least two."
        )
    for split, images, labels in (("training", dataset.x_train, dataset.y_train),
                                  ("test", dataset.x_test, dataset.y_test)):
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} {split} images but {len(labels)} labels.")
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            bad = labels[(labels < 0) | (labels >= classes)][0]
            raise DataError(
                f"{name}: a {split} label is {bad}; labels must lie in 0..{classes - 1} "
                f"(one per class: {', '.join(dataset.class_names)})."
            )
    return dataset


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
    try:
        with tarfile.open(path, "r:*") as archive:
            members = [m for m in archive.getmembers() if m.isfile()]
            _check_complete(archive, path)
            names = {os.path.basename(m.name) for m in members}
            if "data_batch_1" in names and "test_batch" in names:
                return _from_pickled_tar(archive, members, path)
            return _from_image_tree(_TarTree(archive, members), path, progress)
    except (EOFError, tarfile.TarError, zlib.error, OSError) as error:
        raise _truncated(path, error) from None


def _truncated(path, error):
    return DataError(
        f"The archive {path} is truncated or corrupt ({type(error).__name__}: {error}); download or copy it again."
    )


def _check_complete(archive, path):
    """Raises unless the archive ends with tar's end-of-archive marker.

    A tar cut between two members reads as a shorter, valid archive; only
    the two zero blocks that close every archive tell it from a whole one.
    """
    # After reading every header, `offset` is the end of the last member.
    archive.fileobj.seek(archive.offset)
    marker = archive.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
        raise _truncated(path, EOFError("no end-of-archive marker after the last member"))


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
        return _unpickle(untrusted.read_bytes(file, BATCH_FILE_LIMIT, "CIFAR-10 batch"), file)

    return _assemble_pickled(read, path)


def _from_pickled_tar(archive, members, path):
    by_name = {os.path.basename(m.name): m for m in members}

    def read(name):
        if name not in by_name:
            raise DataError(f"Missing CIFAR-10 batch file {name!r} in {path}")
        member = by_name[name]
        if member.size > BATCH_FILE_LIMIT:
            raise untrusted.UntrustedFileError(f"{path}:{member.name}", f"the CIFAR-10 batch is larger than "
                                               f"{BATCH_FILE_LIMIT:,} bytes, the most this reads")
        return _unpickle(archive.extractfile(member).read(), f"{path}:{member.name}")

    return _assemble_pickled(read, path)


class _BatchUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and NumPy arrays, nothing else."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"it refers to {module}.{name}, which a CIFAR-10 batch never holds (only dicts, lists, strings, "
            "numbers and NumPy arrays are read)"
        )


def _unpickle(raw, name):
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - any failure means "not a batch"
        raise DataError(f"Cannot read the CIFAR-10 batch {name}: {error}") from None
    if not isinstance(batch, dict):
        raise DataError(f"The CIFAR-10 batch {name} holds a {type(batch).__name__}; expected a dict.")
    return batch


def _batch_arrays(batch, name):
    data = batch.get(b"data")
    labels = batch.get(b"labels")
    if data is None or labels is None:
        raise DataError(f"The CIFAR-10 batch {name} has no 'data' or 'labels' entry.")
    # The layout is checked before anything is materialised: a list of
    # references to one row would otherwise become gigabytes of array.
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise DataError(f"The CIFAR-10 batch {name} holds its images as a {type(data).__name__}"
                        f"{' of ' + str(data.dtype) if isinstance(data, np.ndarray) else ''}; expected a uint8 array.")
    if data.ndim != 2 or not 0 < len(data) <= BATCH_IMAGES_LIMIT:
        raise DataError(f"The CIFAR-10 batch {name} holds an array of shape {data.shape}; expected (images, 3072) "
                        f"with at most {BATCH_IMAGES_LIMIT:,} images.")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise DataError(f"The CIFAR-10 batch {name} holds {len(data)} images but "
                        f"{len(labels) if hasattr(labels, '__len__') else 'no list of'} labels.")
    try:
        labels = np.asarray(labels, np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise DataError(f"The CIFAR-10 batch {name} holds non-numeric data or labels ({error}).") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"The CIFAR-10 batch {name} holds images of {data.shape[1:]} values; "
            "expected 3072 (32x32 RGB)."
        )
    if labels.shape != (len(data),):
        raise DataError(f"The CIFAR-10 batch {name} holds {len(data)} images but {labels.size} labels.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


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
        return untrusted.read_bytes(handle, untrusted.IMAGE_FILE_LIMIT, "image")

    def describe(self, handle):
        return handle


class _TarTree:
    def __init__(self, archive, members):
        self.archive, self.members = archive, members

    def files(self):
        for member in self.members:
            yield member.name, member

    def read(self, member):
        if member.size > untrusted.IMAGE_FILE_LIMIT:
            raise untrusted.UntrustedFileError(member.name, f"the image is larger than "
                                               f"{untrusted.IMAGE_FILE_LIMIT:,} bytes, the most this reads")
        return self.archive.extractfile(member).read()

    def describe(self, member):
        return member.name


def _split_parts(relative):
    """(split, class) of a path like [prefix/]train/<class>/[...]/<file>.

    Images in sub-folders of a class folder belong to that class, as in
    `keras.utils.image_dataset_from_directory`; the class is None for an
    image directly under train/ or test/, and the split None outside them.
    """
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts[:-1]):
        if part in ("train", "test"):
            return part, (parts[i + 1] if i + 2 < len(parts) else None)
    return None, None


def _from_image_tree(tree, path, progress):
    from tqdm.auto import tqdm

    entries = {"train": [], "test": []}
    for relative, handle in tree.files():
        if not relative.lower().endswith(IMAGE_SUFFIXES):
            continue
        split, label = _split_parts(relative)
        if split is not None and label is None:
            raise DataError(
                f"Image {tree.describe(handle)} lies directly in {split}/; every image must be inside a class "
                f"folder ({split}/<class>/...)."
            )
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
    # On a terminal only (None: tqdm asks), where a bar can redraw itself.
    bar = tqdm(total=total, desc="Decoding images", unit="img", disable=None if progress else True)
    arrays = {}
    expected_shape = None
    for split in ("train", "test"):
        images = []
        for label, handle in entries[split]:
            try:
                array = untrusted.decode_image(tree.read(handle), tree.describe(handle))
            except untrusted.UntrustedFileError:
                bar.close()
                raise
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
