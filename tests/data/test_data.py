import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cim_gym.data import DATASETS, DatasetNotFoundError, load_dataset, read_idx


def test_digits_splits_are_stratified_normalized_and_deterministic() -> None:
    a, b = load_dataset("digits", seed=1), load_dataset("digits", seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (1293, 144, 360)
    assert a.train.images.shape[1:] == (1, 8, 8) and a.train.labels.dtype == torch.int64
    torch.testing.assert_close(a.val.images, b.val.images)
    # Every class in every split, in roughly its overall proportion.
    for split in (a.train, a.val, a.test):
        counts = torch.bincount(split.labels, minlength=10).float() / len(split)
        assert counts.min() > 0.07 and counts.max() < 0.13
    # Normalization with the registered statistics: train pixels have mean ~0 and std ~1.
    assert abs(float(a.train.images.mean())) < 0.05 and abs(float(a.train.images.std()) - 1) < 0.05
    # The test split is fixed; another seed reshuffles train/val only.
    c = load_dataset("digits", seed=2)
    torch.testing.assert_close(c.test.images, a.test.images)
    assert not torch.equal(c.val.labels, a.val.labels) or not torch.equal(c.val.images, a.val.images)
    # No image is in two splits.
    rows = {tuple(x.flatten().tolist()) for x in a.test.images}
    assert not any(tuple(x.flatten().tolist()) in rows for x in a.val.images[:50])


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def fake_mnist(folder: Path, gz: bool, n_train: int = 200, n_test: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    train = rng.integers(0, 256, (n_train, 28, 28))
    write_idx(folder / "train-images-idx3-ubyte", train, gz)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(n_train) % 10, gz)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, gz)
    return train


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    raw = fake_mnist(tmp_path, gz)
    splits = load_dataset("fashion-mnist", tmp_path, val_fraction=0.1, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 20, 50)
    info = DATASETS["fashion-mnist"]
    first = splits.train.images[0, 0] * info.std[0] + info.mean[0]
    np.testing.assert_allclose(first.numpy(), raw[0] / 255.0, atol=1e-5)


def test_mnist_reads_torchvision_layout(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "MNIST" / "raw", gz=False)
    assert len(load_dataset("mnist", tmp_path, download=False).test) == 50


def test_truncated_idx_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_cifar10_reads_torchvision_batches(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    import torchvision

    # torchvision checks md5 sums of the official files: accept ours for this test only.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    splits = load_dataset("cifar10", tmp_path, download=False)
    assert splits.train.images.shape == (90, 3, 32, 32) and len(splits.val) == 10 and len(splits.test) == 20


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10", "cifar100"])
def test_missing_dataset_says_how_to_get_it(tmp_path: Path, name: str, monkeypatch) -> None:
    monkeypatch.setattr("cim_gym.data.DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError, match=name) as err:
        load_dataset(name, tmp_path, download=False)
    assert str(tmp_path) in str(err.value)
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in str(err.value)


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset("imagenet")


@pytest.mark.parametrize("fraction", [0, 1, -0.1])
def test_bad_val_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=fraction)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    splits = load_dataset("fashion-mnist")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
