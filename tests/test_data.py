"""Data: IDX files through torchvision's own loader, missing-data errors, splits, batching."""

from __future__ import annotations

import pytest
import torch

from aeexp.config import ConfigError
from aeexp.data import datasets
from aeexp.data.datasets import DataNotFoundError, load_torchvision
from aeexp.data.images import ImageSplits, index_batches, to_float
from aeexp.registry import DATASETS
from conftest import tiny_idx_set, write_idx_set


@pytest.fixture(autouse=True)
def no_system_copies(monkeypatch):
    """Only the files a test writes count, not Debian's copies under /usr/share/datasets."""
    for name in list(datasets.SYSTEM_DIRS):
        monkeypatch.setitem(datasets.SYSTEM_DIRS, name, [])


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_files_round_trip_through_torchvision(tmp_path, gz):
    data = tiny_idx_set(num_train=20, num_test=10)
    write_idx_set(tmp_path / "FashionMNIST" / "raw", data, gz=gz)

    splits = load_torchvision("fashion_mnist", root=str(tmp_path), val_size=5, download=False)

    assert splits.train_images.shape == (15, 1, 28, 28) and splits.val_images.shape == (5, 1, 28, 28)
    assert splits.test_images.shape == (10, 1, 28, 28)
    assert all(t.dtype == torch.uint8 for t in (splits.train_images, splits.val_images, splits.test_images))
    # train + validation are exactly the training file's images (the corner pixel is the index)
    ids = torch.cat([splits.train_images[:, 0, 0, 0], splits.val_images[:, 0, 0, 0]]).long()
    assert sorted(ids.tolist()) == list(range(20))
    assert torch.equal(torch.cat([splits.train_images, splits.val_images])[:, 0], data[("train", "images")][ids])
    assert torch.cat([splits.train_labels, splits.val_labels]).tolist() == data[("train", "labels")][ids].tolist()
    assert torch.equal(splits.test_images[:, 0], data[("test", "images")])
    assert splits.test_labels.tolist() == data[("test", "labels")].tolist()
    assert splits.shape == (1, 28, 28)


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("kmnist", "KMNIST"), ("fashion_mnist", "FashionMNIST")])
def test_registered_dataset_reads_the_root_it_is_given(tmp_path, name, folder):
    """Every IDX dataset loads offline from files in torchvision's layout (MNIST included,
    which this machine cannot download)."""
    data = tiny_idx_set(num_train=12, num_test=6)
    write_idx_set(tmp_path / folder / "raw", data, gz=True)
    splits = DATASETS.build({"name": name, "root": str(tmp_path), "download": False, "val_size": 2})
    assert (len(splits.train_images), len(splits.val_images), len(splits.test_images)) == (10, 2, 6)
    assert torch.equal(splits.test_images[:, 0], data[("test", "images")])
    assert splits.name == name


@pytest.mark.parametrize(("name", "folder"), [("fashion_mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_missing_data_without_download_says_where_it_looked_and_how_to_get_it(tmp_path, name, folder):
    with pytest.raises(DataNotFoundError) as info:
        load_torchvision(name, root=str(tmp_path), download=False)
    message = str(info.value)
    assert str(tmp_path / folder / "raw") in message
    assert "dataset.download" in message  # why nothing was fetched
    assert "dataset.root" in message
    if name == "fashion_mnist":
        assert "apt-get install dataset-fashion-mnist" in message


def test_incomplete_idx_set_counts_as_missing(tmp_path):
    raw = write_idx_set(tmp_path / "FashionMNIST" / "raw", tiny_idx_set())
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError):
        load_torchvision("fashion_mnist", root=str(tmp_path), download=False)


def test_val_size_carves_disjoint_validation_from_train(tmp_path):
    data = tiny_idx_set(num_train=20, num_test=10)
    write_idx_set(tmp_path / "FashionMNIST" / "raw", data)

    splits = load_torchvision("fashion_mnist", root=str(tmp_path), val_size=5, download=False)

    assert (len(splits.train_images), len(splits.val_images)) == (15, 5)
    train_ids = splits.train_images[:, 0, 0, 0].tolist()  # each image's index in the train file
    val_ids = splits.val_images[:, 0, 0, 0].tolist()
    assert not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == list(range(20))  # all of train, none of the test split
    original = data[("train", "labels")]
    assert splits.val_labels.tolist() == original[val_ids].tolist()  # labels travel with images
    assert "5 images held out of the training split" in splits.val_note


def test_val_size_must_leave_training_images(tmp_path):
    write_idx_set(tmp_path / "FashionMNIST" / "raw", tiny_idx_set(num_train=20))
    with pytest.raises(ConfigError, match=r"dataset.val_size: got 20, allowed: 1 to 19"):
        load_torchvision("fashion_mnist", root=str(tmp_path), val_size=20, download=False)


def test_training_never_receives_the_test_split():
    splits = DATASETS.build({"name": "synthetic", "num_train": 16, "num_val": 8, "num_test": 8})
    assert splits.test_images is not None
    trimmed = splits.without_test()
    assert trimmed.test_images is None and trimmed.test_labels is None
    assert torch.equal(trimmed.val_images, splits.val_images)


def test_val_split_depends_only_on_split_seed(tmp_path):
    write_idx_set(tmp_path / "FashionMNIST" / "raw", tiny_idx_set(num_train=40))

    def val_ids(split_seed):
        splits = load_torchvision("fashion_mnist", root=str(tmp_path), val_size=20, split_seed=split_seed,
                                  download=False)
        return splits.val_images[:, 0, 0, 0].tolist()

    assert val_ids(0) == val_ids(0)
    assert val_ids(0) != val_ids(1)


def test_synthetic_dataset_is_small_uint8_and_reproducible():
    node = {"name": "synthetic", "num_train": 32, "num_val": 16, "height": 12, "width": 10, "seed": 3}
    a, b = DATASETS.build(node), DATASETS.build(node)
    assert a.train_images.shape == (32, 1, 12, 10) and a.val_images.shape == (16, 1, 12, 10)
    assert a.train_images.dtype == torch.uint8
    assert a.train_images.float().std() > 10  # not blank
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.val_labels, b.val_labels)
    c = DATASETS.build({**node, "seed": 4})
    assert not torch.equal(a.train_images, c.train_images)


def test_image_splits_refuse_float_images():
    with pytest.raises(ValueError, match="uint8"):
        ImageSplits(torch.rand(4, 1, 2, 2), torch.zeros(4), torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2))


def test_index_batches_cover_every_image_once_in_the_given_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    batches = list(index_batches(images, 4, order))
    assert [len(b) for b in batches] == [4, 4, 2]
    seen = torch.cat(batches).flatten() * 255
    assert torch.equal(seen.round().long(), order)
    assert batches[0].dtype == torch.float32


def test_to_float_maps_uint8_to_unit_interval():
    x = to_float(torch.tensor([0, 51, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32
    assert torch.allclose(x, torch.tensor([0.0, 0.2, 1.0]))


# ------------------------------------------------------------------ broken IDX files
def _prepared(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx_set(raw, tiny_idx_set(num_train=20, num_test=10))
    return raw


@pytest.mark.parametrize(("damage", "words"), [
    (lambda p: p.write_bytes(b"this is not an IDX file at all"), "not an IDX file"),
    (lambda p: p.write_bytes(p.read_bytes()[:-7]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 5), "extra bytes"),
    (lambda p: p.write_bytes(b""), "not an IDX file"),
], ids=["garbage", "truncated", "too_long", "empty"])
def test_a_broken_idx_file_is_named(tmp_path, damage, words):
    raw = _prepared(tmp_path)
    damage(raw / "train-images-idx3-ubyte")
    with pytest.raises(DataNotFoundError, match=words) as info:
        load_torchvision("fashion_mnist", root=str(tmp_path), val_size=5, download=False)
    assert str(raw / "train-images-idx3-ubyte") in str(info.value)


def test_labels_and_images_of_different_counts_are_refused(tmp_path):
    raw = _prepared(tmp_path)
    write_idx_set(tmp_path / "other", tiny_idx_set(num_train=19, num_test=10))
    (raw / "train-labels-idx1-ubyte").write_bytes((tmp_path / "other" / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataNotFoundError, match="19 labels for 20 images"):
        load_torchvision("fashion_mnist", root=str(tmp_path), val_size=5, download=False)


def test_a_garbage_gz_file_is_named_and_leaves_no_temp_file(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx_set(raw, tiny_idx_set(), gz=True)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b but not really gzip")
    with pytest.raises(DataNotFoundError, match="train-labels-idx1-ubyte.gz: cannot be read as gzipped IDX"):
        load_torchvision("fashion_mnist", root=str(tmp_path), val_size=5, download=False)
    assert not [p.name for p in raw.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_broken_file_in_the_root_names_the_good_system_copy(tmp_path, monkeypatch):
    system = write_idx_set(tmp_path / "system", tiny_idx_set(), gz=True)
    monkeypatch.setitem(datasets.SYSTEM_DIRS, "fashion_mnist", [system])
    raw = _prepared(tmp_path / "root")
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"garbage")
    with pytest.raises(DataNotFoundError) as info:
        load_torchvision("fashion_mnist", root=str(tmp_path / "root"), val_size=5, download=False)
    assert str(raw / "t10k-images-idx3-ubyte") in str(info.value) and str(system) in str(info.value)


def test_an_unwritable_data_root_is_one_line(tmp_path, monkeypatch):
    import os

    if os.geteuid() == 0:
        # root writes anywhere; stand in for the refusal the file system gives everyone else
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(datasets.tempfile, "mkstemp", refuse)
    system = write_idx_set(tmp_path / "system", tiny_idx_set(), gz=True)
    monkeypatch.setitem(datasets.SYSTEM_DIRS, "fashion_mnist", [system])
    root = tmp_path / "readonly"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(DataNotFoundError, match=r"dataset.root: cannot write .*Permission denied"):
            load_torchvision("fashion_mnist", root=str(root), val_size=5, download=False)
    finally:
        root.chmod(0o755)
