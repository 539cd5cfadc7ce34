import os

import numpy as np
import pytest

from involution import data
from tests import synthetic_data as synth


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
    with pytest.raises(data.DataError, match=r"Cannot decode image .*train/bird/0002.png"):
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
