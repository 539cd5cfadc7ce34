import os

import numpy as np
import pytest

from involution.app import data
from involution.untrusted import UntrustedFileError
from tests import synthetic_data as synth

pytestmark = pytest.mark.backend_independent


def check(dataset, train, test):
    assert dataset.x_train.shape == (train, 32, 32, 3) and dataset.x_train.dtype == np.uint8
    assert dataset.x_test.shape == (test, 32, 32, 3)
    assert dataset.y_train.shape == (train,) and dataset.y_test.shape == (test,)
    assert dataset.class_names == synth.CLASSES
    assert set(np.unique(dataset.y_train)) == {0, 1, 2}


def test_pickled_folder_and_tarball_agree(tmp_path):
    folder = synth.make_pickled_folder(tmp_path / "src")
    from_folder = data.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"), progress=False)
    check(from_folder, 40, 12)
    # The parent folder (holding cifar-10-batches-py/) works too.
    check(data.load_dataset(str(tmp_path / "src"), cache_dir=str(tmp_path / "cache2"), progress=False), 40, 12)
    tarball = synth.make_tarball(folder, str(tmp_path / "cifar-10-python.tar.gz"))
    from_tar = data.load_dataset(tarball, cache_dir=str(tmp_path / "cache"), progress=False)
    np.testing.assert_array_equal(from_tar.x_train, from_folder.x_train)
    np.testing.assert_array_equal(from_tar.y_test, from_folder.y_test)
    # Pixel layout: the pickled rows are channel-major 32x32 planes.
    expected, _ = synth.images_and_labels(8, seed=1)
    np.testing.assert_array_equal(from_folder.x_train[:8], expected)


@pytest.mark.parametrize("as_tarball", [False, True])
def test_image_tree(tmp_path, as_tarball):
    root = synth.make_image_tree(str(tmp_path / "tree"))
    source = synth.make_tarball(root, str(tmp_path / "tree.tar.gz")) if as_tarball else root
    dataset = data.load_dataset(source, cache_dir=str(tmp_path / "cache"), progress=False)
    check(dataset, 30, 12)
    images, labels = synth.images_and_labels(30, seed=1)
    # The tree is read class by class; match each decoded image to its source.
    for index in range(30):
        found = np.flatnonzero((dataset.x_train == images[index]).all(axis=(1, 2, 3)))
        assert len(found) == 1 and dataset.y_train[found[0]] == labels[index]


def test_cache_is_used_and_invalidated(tmp_path):
    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    cache = tmp_path / "cache"
    first = data.load_dataset(root, cache_dir=str(cache), progress=False)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".npz")
    # A second load reads the cache: prove it by planting a marker in it.
    marked = dict(np.load(cache / files[0]))
    marked["x_train"] = np.zeros_like(marked["x_train"])
    np.savez(cache / files[0], **marked)
    assert data.load_dataset(root, cache_dir=str(cache), progress=False).x_train.max() == 0
    # Changing the source (a new image) gives a new key and a fresh decode.
    os.replace(os.path.join(root, "train", "bird", "0002.png"), os.path.join(root, "train", "bird", "0099.png"))
    again = data.load_dataset(root, cache_dir=str(cache), progress=False)
    assert again.x_train.max() > 0
    assert again.x_train.shape == first.x_train.shape


def test_corrupt_image_is_named(tmp_path):
    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    bad = os.path.join(root, "train", "bird", "0002.png")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(UntrustedFileError, match=r"train/bird/0002.png: not an image that Pillow recognises"):
        data.load_dataset(root, cache_dir=str(tmp_path / "cache"), progress=False)


def test_wrong_image_size_is_named(tmp_path):
    from PIL import Image

    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    odd = os.path.join(root, "test", "automobile", "0001.png")
    Image.new("RGB", (28, 30)).save(odd)
    with pytest.raises(data.DataError, match=r"Image .*test/automobile/0001.png is 28x30; every image must be 32x32"):
        data.load_dataset(root, cache_dir=str(tmp_path / "cache"), progress=False)


def test_missing_class_folder_is_named(tmp_path):
    import shutil

    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    shutil.rmtree(os.path.join(root, "test", "bird"))
    with pytest.raises(data.DataError, match=r"Class folder missing in .*: test/bird"):
        data.load_dataset(root, cache_dir=str(tmp_path / "cache"), progress=False)


def test_missing_split_is_explained(tmp_path):
    import shutil

    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    shutil.rmtree(os.path.join(root, "test"))
    with pytest.raises(data.DataError, match=r"No images found under test/<class>/"):
        data.load_dataset(root, cache_dir=str(tmp_path / "cache"), progress=False)


def test_missing_pickled_batch_is_named(tmp_path):
    folder = synth.make_pickled_folder(tmp_path / "src")
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(data.DataError, match=r"Missing CIFAR-10 batch file: .*data_batch_3"):
        data.load_dataset(folder, cache_dir=str(tmp_path / "cache"), progress=False)


def test_nonexistent_path(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_dataset(str(tmp_path / "nowhere"))


def test_not_an_archive(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(data.DataError, match="neither a folder nor a .tar.gz"):
        data.load_dataset(str(path), cache_dir=str(tmp_path / "cache"))


def test_download_failure_explains_offline_use(monkeypatch):
    import keras

    def no_network():
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", no_network)
    with pytest.raises(data.DataError, match=r"Could not download CIFAR-10 .*--data PATH .*INVOLUTION_DATA"):
        data.load_dataset(None)


def test_environment_variable_points_at_data(tmp_path, monkeypatch):
    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    monkeypatch.setenv(data.DATA_ENV, root)
    check(data.load_dataset(None, cache_dir=str(tmp_path / "cache"), progress=False), 6, 3)


def test_subset_is_deterministic(tmp_path):
    folder = synth.make_pickled_folder(tmp_path / "src")
    dataset = data.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"), progress=False)
    a, b = dataset.subset(10, seed=3), dataset.subset(10, seed=3)
    assert len(a.x_train) == 10 and len(a.x_test) == 10
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert dataset.subset(None) is dataset


# Hostile and broken files ---------------------------------------------------


class _RunsCode:
    """Unpickling this calls `os.system`: what a hostile batch would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _write_batch(folder, name, payload):
    import pickle

    with open(os.path.join(folder, name), "wb") as f:
        pickle.dump(payload, f)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    folder = synth.make_pickled_folder(tmp_path / "src")
    marker = tmp_path / "ran"
    batch = {b"data": np.zeros((8, 3072), np.uint8), b"labels": [0] * 8, b"payload": _RunsCode(marker)}
    _write_batch(folder, "data_batch_2", batch)
    with pytest.raises(data.DataError, match=r"data_batch_2: .*refers to (posix|os)\.system"):
        data.load_dataset(folder, cache_dir=str(tmp_path / "cache"), progress=False)
    assert not marker.exists()
    # The same file inside the official tarball.
    tarball = synth.make_tarball(folder, str(tmp_path / "cifar-10-python.tar.gz"))
    with pytest.raises(data.DataError, match=r"refers to (posix|os)\.system"):
        data.load_dataset(tarball, cache_dir=str(tmp_path / "cache"), progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("payload, message", [
    ([1, 2, 3], r"data_batch_1 holds a list; expected a dict"),
    ({b"data": np.zeros((8, 3072), np.uint8), b"labels": [0] * 7}, r"data_batch_1 holds 8 images but 7 labels"),
])
def test_malformed_batches_are_named(tmp_path, payload, message):
    folder = synth.make_pickled_folder(tmp_path / "src")
    _write_batch(folder, "data_batch_1", payload)
    with pytest.raises(data.DataError, match=message):
        data.load_dataset(folder, cache_dir=str(tmp_path / "cache"), progress=False)


def test_labels_outside_the_classes_are_refused(tmp_path):
    folder = synth.make_pickled_folder(tmp_path / "src")  # 3 classes in batches.meta
    _write_batch(folder, "test_batch", {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 3, 2]})
    with pytest.raises(data.DataError, match=r"a test label is 3; labels must lie in 0\.\.2"):
        data.load_dataset(folder, cache_dir=str(tmp_path / "cache"), progress=False)


def _plain_tar(source, path):
    import tarfile

    with tarfile.open(path, "w") as archive:
        archive.add(source, arcname=os.path.basename(source))
    return path


@pytest.mark.parametrize("cut", ["gzip_half", "tar_mid_member", "tar_between_members"])
def test_a_truncated_archive_is_named(tmp_path, cut):
    import tarfile

    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    if cut == "gzip_half":
        path = synth.make_tarball(root, str(tmp_path / "tree.tar.gz"))
        size = os.path.getsize(path) // 2
    else:
        path = _plain_tar(root, str(tmp_path / "tree.tar"))
        with tarfile.open(path) as archive:
            members = archive.getmembers()
        last = members[-1]
        # Mid-member: inside the last file's data; between members: right
        # after it, where the end-of-archive marker starts.
        size = last.offset_data + (last.size // 2 if cut == "tar_mid_member" else -(-last.size // 512) * 512)
    with open(path, "r+b") as f:
        f.truncate(size)
    with pytest.raises(data.DataError, match=r"The archive .*tree\.tar(\.gz)? is truncated or corrupt"):
        data.load_dataset(path, cache_dir=str(tmp_path / "cache"), progress=False)


def test_a_truncated_cache_file_is_rebuilt(tmp_path):
    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    cache = tmp_path / "cache"
    first = data.load_dataset(root, cache_dir=str(cache), progress=False)
    [cached] = cache.iterdir()
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 3])
    again = data.load_dataset(root, cache_dir=str(cache), progress=False)
    np.testing.assert_array_equal(again.x_train, first.x_train)
    with np.load(cached) as rebuilt:  # whole again
        np.testing.assert_array_equal(rebuilt["x_train"], first.x_train)


def test_an_unwritable_cache_keeps_the_data_in_memory(tmp_path):
    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # A folder below a regular file cannot be created, whoever runs this.
    with pytest.warns(RuntimeWarning, match=r"Cannot write the data cache .*in memory only"):
        dataset = data.load_dataset(root, cache_dir=str(blocker / "cache"), progress=False)
    check(dataset, 6, 3)


def test_stale_cache_temporaries_are_removed(tmp_path):
    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = cache / "cifar-0123.npz.999999999.tmp"  # no such process
    alive = cache / f"cifar-0123.npz.{os.getppid()}.tmp"  # its writer runs
    dead.write_bytes(b"partial")
    alive.write_bytes(b"partial")
    data.load_dataset(root, cache_dir=str(cache), progress=False)
    assert not dead.exists() and alive.exists()


def test_images_in_sub_folders_of_a_class_belong_to_it(tmp_path):
    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    nested = os.path.join(root, "train", "bird", "more", "deeper")
    os.makedirs(nested)
    os.replace(os.path.join(root, "train", "bird", "0002.png"), os.path.join(nested, "0002.png"))
    dataset = data.load_dataset(root, cache_dir=str(tmp_path / "cache"), progress=False)
    check(dataset, 6, 3)
    assert (dataset.y_train == synth.CLASSES.index("bird")).sum() == 2


def test_an_image_outside_class_folders_is_named(tmp_path):
    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    os.replace(os.path.join(root, "test", "bird", "0002.png"), os.path.join(root, "test", "stray.png"))
    with pytest.raises(data.DataError, match=r"Image .*test/stray\.png lies directly in test/"):
        data.load_dataset(root, cache_dir=str(tmp_path / "cache"), progress=False)


def test_a_single_class_is_refused(tmp_path):
    import shutil

    root = synth.make_image_tree(str(tmp_path / "tree"), train=6, test=3)
    for split in ("train", "test"):
        for name in ("automobile", "bird"):
            shutil.rmtree(os.path.join(root, split, name))
    with pytest.raises(data.DataError, match=r"holds 1 class \(airplane\); a classifier needs at least two"):
        data.load_dataset(root, cache_dir=str(tmp_path / "cache"), progress=False)
