"""Data sets: one registry from a name to deterministic, normalized train / validation / test splits.

``digits`` (scikit-learn, always installed) is the embedded default. ``fashion-mnist`` is read from its IDX files
(Debian's ``dataset-fashion-mnist`` package, a ``root`` folder, or torchvision's download). ``mnist``,
``cifar10`` and ``cifar100`` go through torchvision. A data set that cannot be found raises
:class:`DatasetNotFoundError` saying how to get it; there is never a fallback to another data set.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 20.0


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set: shape, classes and the normalization statistics of its training images."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


@dataclass
class Split:
    """Normalized images (N, C, H, W) float32 and labels (N,) int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.images, self.labels)


@dataclass
class DatasetSplits:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split={name!r} is not allowed: expected 'train', 'val' or 'test'")
        return getattr(self, name)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3760,)),
        DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,)),
        DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,)),
        DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    )
}


def default_data_root() -> Path:
    """``$CIM_GYM_DATA`` if set, else ``~/.cache/cim-gym/data``: where torchvision downloads go."""
    return Path(os.environ.get("CIM_GYM_DATA", Path.home() / ".cache" / "cim-gym" / "data"))


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown: expected one of {sorted(DATASETS)}")
    return DATASETS[name]


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = True,
) -> DatasetSplits:
    """Load ``name`` as normalized train / val / test splits.

    :param root: folder holding the data (torchvision layout, or the IDX files for Fashion-MNIST); default
        :func:`default_data_root`.
    :param val_fraction: share of the training set held out, stratified, for validation. (digits has no official
        test set: a fixed stratified 20% of it is the test split, the same whatever ``seed`` is.)
    :param seed: seed of the stratified train/validation split; same seed, same splits.
    :param download: let torchvision download a missing data set into ``root`` (fails fast when offline).
    """
    info = dataset_info(name)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} is not allowed: expected a number in (0, 1)")
    root = Path(root) if root is not None else default_data_root()
    train_x, train_y, test_x, test_y = _LOADERS[name](root, download, seed)
    train_idx, val_idx = stratified_split(train_y, val_fraction, seed)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)

    def make(x: np.ndarray, y: np.ndarray) -> Split:
        images = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) - mean) / std
        return Split(images, torch.from_numpy(np.asarray(y, dtype=np.int64)))

    return DatasetSplits(
        info, make(train_x[train_idx], train_y[train_idx]), make(train_x[val_idx], train_y[val_idx]), make(test_x, test_y)
    )


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out), held_out holding ``fraction`` of every class; deterministic in ``seed``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, held = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(rest), np.sort(held)


# ---- loaders: each returns (train_x, train_y, test_x, test_y), images float in [0, 1] shaped (N, C, H, W) ------
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _load_digits(_root: Path, _download: bool, _seed: int) -> Arrays:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0)[:, None].astype(np.float32)
    y = digits.target.astype(np.int64)
    # digits has no official test set: a fixed stratified 20% is the test split, whatever the seed.
    train_idx, test_idx = stratified_split(y, 0.2, 0)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes, as in the MNIST family."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} bytes of data")
    return array.reshape(shape)


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four MNIST-style IDX files in ``folder`` (plain or .gz), or None when any is missing."""
    found = {}
    for key in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        paths = [folder / key, folder / f"{key}.gz"]
        existing = [p for p in paths if p.is_file()]
        if not existing:
            return None
        found[key] = existing[0]
    return found


def _idx_arrays(files: dict[str, Path]) -> Arrays:
    def images(key: str) -> np.ndarray:
        return (read_idx(files[key]).astype(np.float32) / 255.0)[:, None]

    return (
        images("train-images-idx3-ubyte"),
        read_idx(files["train-labels-idx1-ubyte"]).astype(np.int64),
        images("t10k-images-idx3-ubyte"),
        read_idx(files["t10k-labels-idx1-ubyte"]).astype(np.int64),
    )


def _torchvision_download(name: str, root: Path, make: Callable[[bool], object]) -> None:
    """Run a torchvision download with a socket timeout, turning any failure into a DatasetNotFoundError."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        make(True)
    except Exception as exc:  # network errors come in many types; all mean "not available here"
        raise DatasetNotFoundError(f"{missing_message(name, root)}\nThe download failed: {exc}") from exc
    finally:
        socket.setdefaulttimeout(previous)


def missing_message(name: str, root: Path) -> str:
    how = {
        "fashion-mnist": (
            f"Install Debian's package (`apt-get install dataset-fashion-mnist`, files in {DEBIAN_FASHION_MNIST}), "
            f"or put the four IDX files (train-images-idx3-ubyte[.gz], ...) in {root} or {root}/FashionMNIST/raw, "
            "or allow torchvision to download it (download=True, needs internet)."
        ),
        "mnist": f"Put torchvision's MNIST folder at {root}/MNIST/raw (the four IDX files), or download=True with internet.",
        "cifar10": f"Put torchvision's extracted CIFAR-10 at {root}/cifar-10-batches-py, or download=True with internet.",
        "cifar100": f"Put torchvision's extracted CIFAR-100 at {root}/cifar-100-python, or download=True with internet.",
    }[name]
    return f"Data set {name!r} was not found under {root}. {how} (`--data-root` on the command lines sets the folder.)"


def _mnist_family(name: str, folder_name: str, tv_class: str) -> Callable[[Path, bool, int], Arrays]:
    def load(root: Path, download: bool, _seed: int) -> Arrays:
        candidates = [root, root / folder_name / "raw"]
        if name == "fashion-mnist":
            candidates.append(DEBIAN_FASHION_MNIST)
        for folder in candidates:
            files = find_idx_files(folder)
            if files is not None:
                return _idx_arrays(files)
        if not download:
            raise DatasetNotFoundError(missing_message(name, root))
        import torchvision

        cls = getattr(torchvision.datasets, tv_class)
        _torchvision_download(name, root, lambda d: [cls(str(root), train=t, download=d) for t in (True, False)])
        files = find_idx_files(root / folder_name / "raw")
        if files is None:
            raise DatasetNotFoundError(missing_message(name, root))
        return _idx_arrays(files)

    return load


def _cifar(name: str, tv_class: str) -> Callable[[Path, bool, int], Arrays]:
    def load(root: Path, download: bool, _seed: int) -> Arrays:
        import torchvision

        cls = getattr(torchvision.datasets, tv_class)

        def make(train: bool, dl: bool) -> torchvision.datasets.VisionDataset:
            return cls(str(root), train=train, download=dl)

        try:
            train, test = make(True, False), make(False, False)
        except (RuntimeError, FileNotFoundError) as exc:  # torchvision: "Dataset not found or corrupted"
            if not download:
                raise DatasetNotFoundError(missing_message(name, root)) from exc
            _torchvision_download(name, root, lambda d: [make(t, d) for t in (True, False)])
            train, test = make(True, False), make(False, False)

        def arrays(ds: torchvision.datasets.VisionDataset) -> tuple[np.ndarray, np.ndarray]:
            x = np.asarray(ds.data, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
            return x, np.asarray(ds.targets, dtype=np.int64)

        return (*arrays(train), *arrays(test))

    return load


_LOADERS: dict[str, Callable[[Path, bool, int], Arrays]] = {
    "digits": _load_digits,
    "fashion-mnist": _mnist_family("fashion-mnist", "FashionMNIST", "FashionMNIST"),
    "mnist": _mnist_family("mnist", "MNIST", "MNIST"),
    "cifar10": _cifar("cifar10", "CIFAR10"),
    "cifar100": _cifar("cifar100", "CIFAR100"),
}
