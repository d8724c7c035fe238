"""Checkpoint format and registry of pretrained, quantized backbones.

A checkpoint is two files side by side:

- ``<name>.safetensors``: the state dict of the *quantized* module (``quantize_model(model, cfg)``), weights,
  BatchNorm statistics and the quantizers' calibrated input ranges, stored with safetensors (no pickle);
- ``<name>.json``: the sidecar: architecture, data set and normalization, quantization settings (a ``CIMConfig``
  dict), training settings and the command that produced it, accuracies, the SHA-256 of the ``.safetensors`` file
  and the package version.

Names are ``<dataset>-resnet<depth>-<variant>``, e.g. ``digits-resnet20-blockdrop``. :func:`load_backbone` looks in
the shipped folder (``cim_gym/backbones/weights``) first, then in the user cache (``$CIM_GYM_HOME/backbones`` or
``~/.cache/cim-gym/backbones``). A missing file, a hash mismatch or an unreadable sidecar raises an error that names
the file and the command that (re)trains it; there is never a fallback to random weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMAT_VERSION = 1
VARIANTS = ("blockdrop", "multiexit")
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"

__all__ = [
    "FORMAT_VERSION",
    "SHIPPED_DIR",
    "VARIANTS",
    "Backbone",
    "BackboneError",
    "BackboneNotFoundError",
    "CorruptCheckpointError",
    "backbone_name",
    "build_model",
    "cache_dir",
    "file_sha256",
    "find_checkpoint",
    "list_backbones",
    "load_backbone",
    "parse_name",
    "save_checkpoint",
    "search_dirs",
    "train_command",
]


class BackboneError(Exception):
    """Base class of the errors this module raises."""


class BackboneNotFoundError(BackboneError, FileNotFoundError):
    """No checkpoint of that name in the shipped folder nor the user cache; the message says how to train it."""


class CorruptCheckpointError(BackboneError, ValueError):
    """A checkpoint exists but is unusable: hash mismatch, unreadable sidecar, or tensors that do not fit."""


# ---- names and places -------------------------------------------------------------------------------------------
def backbone_name(dataset: str, depth: int, variant: str = "blockdrop") -> str:
    """``<dataset>-resnet<depth>-<variant>``; raises a ``ValueError`` for an unknown variant."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not allowed: expected one of {VARIANTS}")
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ValueError(f"depth={depth!r} is not allowed: expected an integer 6n+2 (8, 14, 20, 32, 56, ...)")
    return f"{dataset}-resnet{depth}-{variant}"


def parse_name(name: str) -> tuple[str, int, str]:
    """Inverse of :func:`backbone_name`: ``"digits-resnet20-blockdrop"`` -> ``("digits", 20, "blockdrop")``."""
    head, sep, variant = name.rpartition("-")
    dataset, sep2, arch = head.rpartition("-")
    if not (sep and sep2 and arch.startswith("resnet") and arch[6:].isdigit() and variant in VARIANTS and dataset):
        raise ValueError(f"{name!r} is not a backbone name: expected '<dataset>-resnet<depth>-<variant>', "
                         f"variant one of {VARIANTS}")
    return dataset, int(arch[6:]), variant


def cache_dir() -> Path:
    """The user's checkpoint folder: ``$CIM_GYM_HOME/backbones``, else ``~/.cache/cim-gym/backbones``."""
    home = os.environ.get("CIM_GYM_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "cim-gym") / "backbones"


def search_dirs() -> list[Path]:
    """Where :func:`load_backbone` looks, in order: the shipped folder, then the user cache."""
    return [SHIPPED_DIR, cache_dir()]


def train_command(dataset: str, depth: int, variant: str) -> str:
    """The shortest command that (re)trains this backbone into the user cache (defaults for everything else)."""
    return f"python -m cim_gym.backbones.train --dataset {dataset} --depth {depth} --variant {variant}"


def list_backbones(folders: list[Path] | None = None) -> list[str]:
    """Names of every checkpoint available in ``folders`` (default: shipped first, then the cache), each listed
    once, sorted within a folder."""
    names: list[str] = []
    for folder in search_dirs() if folders is None else folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                if path.with_suffix(".safetensors").is_file() and path.stem not in names:
                    names.append(path.stem)
    return names


def find_checkpoint(name: str, folders: list[Path] | None = None) -> Path:
    """Path of ``<name>.json`` in the first folder holding it (default: :func:`search_dirs`);
    :class:`BackboneNotFoundError` if none."""
    folders = search_dirs() if folders is None else folders
    for folder in folders:
        if (folder / f"{name}.json").is_file() or (folder / f"{name}.safetensors").is_file():
            return folder / f"{name}.json"
    dataset, depth, variant = parse_name(name)
    looked = ", ".join(str(d) for d in folders)
    raise BackboneNotFoundError(
        f"No checkpoint named {name!r} (looked for {name}.json + {name}.safetensors in {looked}). "
        f"Available there: {list_backbones(folders) or 'none'}. Train it with: {train_command(dataset, depth, variant)}"
    )


# ---- files ------------------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then ``os.replace`` it onto ``path``.

    A reader never sees a half-written file; on any error the temporary file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(model: nn.Module, meta: dict[str, Any], folder: str | os.PathLike[str], name: str | None = None) -> Path:
    """Write ``model``'s state dict and ``meta`` as ``<folder>/<name>.safetensors`` + ``<name>.json``, atomically.

    ``meta`` must hold ``architecture`` (see :func:`build_model`) and should hold ``dataset``, ``quantization``,
    ``training`` and ``accuracy``; this function adds ``name``, ``format_version``, ``package_version``, ``file``
    and ``sha256``. The tensors are written first, the sidecar (holding their hash) last, so a reader that finds
    the sidecar finds the matching tensors. Returns the sidecar's path.
    """
    from safetensors.torch import save_file

    import cim_gym

    if "architecture" not in meta:
        raise ValueError("meta must hold 'architecture' (class, depth, num_classes, in_channels, ...)")
    name = name or meta.get("name")
    if not name:
        raise ValueError("a checkpoint needs a name: pass name= or put 'name' in meta")
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = folder / f"{name}.safetensors"
    atomic_write(weights, lambda tmp: save_file(tensors, str(tmp), metadata={"name": name, "format": "cim-gym-backbone"}))
    full = {
        "name": name,
        "format_version": FORMAT_VERSION,
        "package_version": cim_gym.__version__,
        **{k: v for k, v in meta.items() if k not in ("name", "format_version", "package_version", "file", "sha256")},
        "file": weights.name,
        "sha256": file_sha256(weights),
    }
    sidecar = folder / f"{name}.json"
    text = json.dumps(full, indent=2, sort_keys=False) + "\n"
    atomic_write(sidecar, lambda tmp: tmp.write_text(text))
    return sidecar


def read_checkpoint(sidecar: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read and verify a checkpoint: (sidecar dict, tensors). Raises :class:`CorruptCheckpointError` or
    :class:`BackboneNotFoundError` with the file and the command that retrains it."""
    from safetensors.torch import load_file

    name = sidecar.stem
    try:
        retrain = "Retrain it with: " + train_command(*parse_name(name))
    except ValueError:
        retrain = "Retrain it with python -m cim_gym.backbones.train (see --help)."
    if not sidecar.is_file():
        raise BackboneNotFoundError(f"Checkpoint sidecar {sidecar} is missing (its .safetensors is there). {retrain}")
    try:
        meta = json.loads(sidecar.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        for key in ("architecture", "sha256"):
            if key not in meta:
                raise ValueError(f"no {key!r} entry")
    except (ValueError, OSError) as exc:
        raise CorruptCheckpointError(f"Checkpoint sidecar {sidecar} is unreadable ({exc}). {retrain}") from exc
    weights = sidecar.with_name(meta.get("file", f"{name}.safetensors"))
    if not weights.is_file():
        raise BackboneNotFoundError(f"Checkpoint weights {weights} are missing (sidecar {sidecar} is there). {retrain}")
    digest = file_sha256(weights)
    if digest != meta["sha256"]:
        raise CorruptCheckpointError(
            f"Checkpoint weights {weights} are corrupt: SHA-256 {digest} differs from {meta['sha256']} recorded in "
            f"{sidecar}. {retrain}"
        )
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise CorruptCheckpointError(f"Checkpoint weights {weights} cannot be read ({exc}). {retrain}") from exc
    return meta, tensors


# ---- models -----------------------------------------------------------------------------------------------------
def architecture_of(model: nn.Module) -> dict[str, Any]:
    """The ``architecture`` entry of a sidecar for a (plain) ResNet or MultiExitResNet."""
    from cim_gym.models import MultiExitResNet

    arch: dict[str, Any] = {
        "class": type(model).__name__,
        "depth": model.depth,
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "num_blocks": model.num_blocks,
    }
    if isinstance(model, MultiExitResNet):
        arch["exit_after"] = list(model.exit_after[:-1])
        arch["exit_head"] = model.exit_head
        arch["num_exits"] = model.num_exits
    return arch


def build_model(arch: dict[str, Any]) -> nn.Module:
    """A fresh plain model from an ``architecture`` entry (``class`` ResNet or MultiExitResNet)."""
    from cim_gym.models import MultiExitResNet, ResNet

    kind = arch.get("class")
    common = {"depth": int(arch["depth"]), "num_classes": int(arch["num_classes"]), "in_channels": int(arch["in_channels"])}
    if kind == "ResNet":
        return ResNet(**common)
    if kind == "MultiExitResNet":
        return MultiExitResNet(**common, exit_after=arch.get("exit_after"), exit_head=arch.get("exit_head", "conv"))
    raise ValueError(f"architecture class {kind!r} is unknown: expected 'ResNet' or 'MultiExitResNet'")


def quantized(model: nn.Module, quant: dict[str, Any]) -> tuple[nn.Module, Any]:
    """``quantize_model(model, CIMConfig.from_dict(quant))`` and the config."""
    from cim_gym.hardware import CIMConfig, quantize_model

    cfg = CIMConfig.from_dict(quant)
    return quantize_model(model, cfg), cfg


@dataclass
class Backbone:
    """A pretrained, quantized backbone, ready to be programmed onto chips.

    :ivar name: e.g. ``"digits-resnet20-blockdrop"``.
    :ivar model: the quantized module (eval mode): ``quantize_model`` of a ResNet or MultiExitResNet.
    :ivar meta: the JSON sidecar as a dict (architecture, dataset, quantization, training, accuracy, sha256, ...).
    :ivar quant_config: the ``CIMConfig`` whose weight/input bits the model was trained with.
    :ivar path: the sidecar's path.
    """

    name: str
    model: nn.Module
    meta: dict[str, Any]
    quant_config: Any
    path: Path

    @property
    def dataset(self) -> str:
        return str(self.meta["dataset"]["name"])

    @property
    def depth(self) -> int:
        return int(self.meta["architecture"]["depth"])

    @property
    def variant(self) -> str:
        return str(self.meta["variant"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["dataset"]["input_shape"])  # type: ignore[return-value]

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()


def load_backbone(
    dataset: str,
    depth: int | None = None,
    variant: str = "blockdrop",
    *,
    folder: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Load a pretrained, quantized backbone by name: shipped checkpoints first, then the user cache, or only
    ``folder`` when given (e.g. a retrained model that has the name of a shipped one).

    :param dataset: the data set name (``"digits"``, ``"fashion-mnist"``, ...), or a full backbone name such as
        ``"digits-resnet20-blockdrop"`` (then ``depth`` and ``variant`` must be left out).
    :param depth: 6n+2 (8, 14, 20, 32, 56, ...).
    :param variant: ``"blockdrop"`` (ResNet trained with stochastic depth) or ``"multiexit"`` (MultiExitResNet).
    :param folder: look only in this folder (the ``--out`` of ``python -m cim_gym.backbones.train``).
    :param device: where the model goes.
    :raises BackboneNotFoundError: no such checkpoint; the message lists what exists and the command to train it.
    :raises CorruptCheckpointError: hash mismatch or unreadable files; the message names the file.
    """
    if depth is None:
        name = dataset
        parse_name(name)
    else:
        name = backbone_name(dataset, depth, variant)
    sidecar = find_checkpoint(name, None if folder is None else [Path(folder)])
    meta, tensors = read_checkpoint(sidecar)
    retrain = "Retrain it with: " + train_command(*parse_name(name))
    try:
        model, cfg = quantized(build_model(meta["architecture"]), meta["quantization"])
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CorruptCheckpointError(f"Checkpoint {sidecar} does not fit its architecture ({exc}). {retrain}") from exc
    model.to(device).eval()
    return Backbone(name=name, model=model, meta=meta, quant_config=cfg, path=sidecar)
