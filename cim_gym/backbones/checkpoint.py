"""Checkpoint format and registry of pretrained, quantized backbones.

A checkpoint is two files side by side:

- ``<name>.<hash>.safetensors``: the state dict of the *quantized* module (``quantize_model(model, cfg)``),
  weights, BatchNorm statistics and the quantizers' calibrated input ranges, stored with safetensors (no pickle);
  ``<hash>`` is the first 16 hex digits of the file's SHA-256 (older checkpoints: ``<name>.safetensors``);
- ``<name>.json``: the sidecar: architecture, data set and normalization, quantization settings (a ``CIMConfig``
  dict), training settings and the command that produced it, accuracies and wall time, the name and SHA-256 of the
  tensor file, and the package version. It is written last, so an interrupted save leaves the old or the new pair.

Names are ``<dataset>-resnet<depth>-<variant>[-<recipe>]``, e.g. ``digits-resnet20-blockdrop`` or
``fashion-mnist-resnet20-blockdrop-no-stochastic-depth``: the recipe part (:func:`recipe_label`) tells apart models
of one architecture trained differently (stochastic depth on or off, another seed) and is absent for the standard
recipe. :func:`load_backbone` looks in the shipped folder (``cim_gym/backbones/weights``) first, then in the user
cache (``$CIM_GYM_HOME/backbones`` or ``~/.cache/cim-gym/backbones``). A missing file, a hash mismatch, an
unreadable sidecar or non-finite tensors raise an error that names the file and the command that (re)trains it;
there is never a fallback to random weights. Names are names: a data set part with ``.``, ``/`` or a path is refused.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cim_gym.files import atomic_write, file_sha256

FORMAT_VERSION = 1
VARIANTS = ("blockdrop", "multiexit")
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
STANDARD_RECIPE = "standard"
"""The recipe of a backbone trained with its variant's defaults: stochastic depth (survival 0.8) for block-drop,
none for multi-exit, seed 0. Its name carries no recipe part."""
DEFAULT_SURVIVAL = {"blockdrop": 0.8, "multiexit": 1.0}
"""Stochastic-depth survival probability of each variant's standard recipe (1.0: off)."""
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*")
_NAME = re.compile(r"(?P<dataset>.+?)-resnet(?P<depth>[0-9]+)-(?P<variant>blockdrop|multiexit)(?:-(?P<recipe>.+))?")

__all__ = [
    "FORMAT_VERSION",
    "SHIPPED_DIR",
    "VARIANTS",
    "Backbone",
    "BackboneError",
    "BackboneNotFoundError",
    "CorruptCheckpointError",
    "DEFAULT_SURVIVAL",
    "STANDARD_RECIPE",
    "atomic_write",
    "backbone_name",
    "build_model",
    "cache_dir",
    "file_sha256",
    "find_checkpoint",
    "list_backbones",
    "load_backbone",
    "parse_name",
    "parse_recipe",
    "recipe_label",
    "recipes_of",
    "save_checkpoint",
    "split_name",
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
def _check_dataset(dataset: object) -> str:
    """A data set part of a name: letters, digits, ``_`` and inner ``-`` only (a name, never a path)."""
    if not isinstance(dataset, str) or not _PART.fullmatch(dataset):
        raise ValueError(f"dataset={dataset!r} is not allowed: expected a data set name (letters, digits, '_' and "
                         "inner '-'; no '.', '/' or path), e.g. 'digits' or 'fashion-mnist'")
    return dataset


def recipe_label(variant: str, survival: float | None = None, seed: int = 0) -> str:
    """The recipe part of a backbone's name, from the training settings that a name must tell apart.

    ``"standard"`` for the variant's defaults (:data:`DEFAULT_SURVIVAL`, seed 0); otherwise ``-``-joined parts:
    ``no-stochastic-depth`` (block-drop trained with survival 1), ``stochastic-depth`` (multi-exit trained with
    survival 0.8), ``survival<p>`` (any other survival probability), then ``seed<n>`` for a seed other than 0.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not allowed: expected one of {VARIANTS}")
    p = DEFAULT_SURVIVAL[variant] if survival is None else float(survival)
    parts = []
    if p != DEFAULT_SURVIVAL[variant]:
        if variant == "blockdrop" and p == 1.0:
            parts.append("no-stochastic-depth")
        elif variant == "multiexit" and p == DEFAULT_SURVIVAL["blockdrop"]:
            parts.append("stochastic-depth")
        else:
            parts.append(f"survival{p:g}")
    if seed:
        parts.append(f"seed{int(seed)}")
    return "-".join(parts) or STANDARD_RECIPE


def parse_recipe(recipe: str, variant: str) -> dict[str, Any]:
    """Inverse of :func:`recipe_label`: ``{"survival": p, "seed": n}`` (``survival`` None: the variant's default).

    :raises ValueError: not a recipe of ``variant`` in its canonical spelling; the message lists the forms.
    """
    forms = (f"'{STANDARD_RECIPE}', " + ("'no-stochastic-depth'" if variant == "blockdrop" else "'stochastic-depth'")
             + ", 'survival<p>' (0 < p < 1), 'seed<n>' (n >= 1), or a survival part and a seed part joined by '-'")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not allowed: expected one of {VARIANTS}")
    if not isinstance(recipe, str) or not recipe:
        raise ValueError(f"recipe={recipe!r} is not allowed: expected {forms}")
    if recipe == STANDARD_RECIPE:
        return {"survival": None, "seed": 0}
    head, seed = recipe, 0
    m = re.search(r"(?:^|-)seed([1-9][0-9]*)$", recipe)
    if m:
        head, seed = recipe[: m.start()], int(m.group(1))
    survival: float | None = None
    if head == "no-stochastic-depth" and variant == "blockdrop":
        survival = 1.0
    elif head == "stochastic-depth" and variant == "multiexit":
        survival = DEFAULT_SURVIVAL["blockdrop"]
    elif (m2 := re.fullmatch(r"survival(0\.[0-9]*[1-9])", head)) is not None:
        survival = float(m2.group(1))
    elif head:
        raise ValueError(f"recipe={recipe!r} is not allowed for variant {variant!r}: expected {forms}")
    if recipe_label(variant, survival, seed) != recipe:
        raise ValueError(f"recipe={recipe!r} is not allowed: its canonical spelling is "
                         f"{recipe_label(variant, survival, seed)!r}")
    return {"survival": survival, "seed": seed}


def backbone_name(dataset: str, depth: int, variant: str = "blockdrop", recipe: str = STANDARD_RECIPE) -> str:
    """``<dataset>-resnet<depth>-<variant>``, followed by ``-<recipe>`` unless the recipe is the standard one;
    raises a ``ValueError`` for an unknown variant, a malformed recipe or a data set part that is not a name."""
    _check_dataset(dataset)
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not allowed: expected one of {VARIANTS}")
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise ValueError(f"depth={depth!r} is not allowed: expected an integer 6n+2 (8, 14, 20, 32, 56, ...)")
    parse_recipe(recipe, variant)
    base = f"{dataset}-resnet{int(depth)}-{variant}"
    return base if recipe == STANDARD_RECIPE else f"{base}-{recipe}"


def split_name(name: str) -> tuple[str, int, str, str]:
    """``"fashion-mnist-resnet20-blockdrop-no-stochastic-depth"`` -> ``("fashion-mnist", 20, "blockdrop",
    "no-stochastic-depth")``; the recipe is ``"standard"`` when the name has none."""
    m = _NAME.fullmatch(name) if isinstance(name, str) else None
    if m is None or not _PART.fullmatch(m["dataset"]):
        raise ValueError(f"{name!r} is not a backbone name: expected '<dataset>-resnet<depth>-<variant>[-<recipe>]', "
                         f"variant one of {VARIANTS}, the data set a name (no '.', '/' or path)")
    recipe = m["recipe"] or STANDARD_RECIPE
    if m["recipe"] == STANDARD_RECIPE:
        raise ValueError(f"{name!r} is not a backbone name: the standard recipe is written without a suffix")
    try:
        parse_recipe(recipe, m["variant"])
    except ValueError as exc:
        raise ValueError(f"{name!r} is not a backbone name: {exc}") from exc
    return m["dataset"], int(m["depth"]), m["variant"], recipe


def parse_name(name: str) -> tuple[str, int, str]:
    """Inverse of :func:`backbone_name` without the recipe: ``"digits-resnet20-blockdrop"`` -> ``("digits", 20,
    "blockdrop")`` (:func:`split_name` also returns the recipe)."""
    return split_name(name)[:3]


def cache_dir() -> Path:
    """The user's checkpoint folder: ``$CIM_GYM_HOME/backbones``, else ``~/.cache/cim-gym/backbones``."""
    home = os.environ.get("CIM_GYM_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "cim-gym") / "backbones"


def search_dirs() -> list[Path]:
    """Where :func:`load_backbone` looks, in order: the shipped folder, then the user cache."""
    return [SHIPPED_DIR, cache_dir()]


def train_command(dataset: str, depth: int, variant: str, recipe: str = STANDARD_RECIPE) -> str:
    """The shortest command that (re)trains this backbone into the user cache (defaults for everything else)."""
    r = parse_recipe(recipe, variant)
    flags = "" if r["survival"] is None else f" --survival {r['survival']!r}"
    flags += f" --seed {r['seed']}" if r["seed"] else ""
    return f"python -m cim_gym.backbones.train --dataset {dataset} --depth {depth} --variant {variant}{flags}"


def _retrain(name: str) -> str:
    try:
        return "Retrain it with: " + train_command(*split_name(name))
    except ValueError:
        return "Retrain it with python -m cim_gym.backbones.train (see --help)."


def tensor_files(folder: Path, name: str) -> list[Path]:
    """Every tensor file of checkpoint ``name`` in ``folder``: ``<name>.safetensors`` (older checkpoints) and the
    content-addressed ``<name>.<sha256 prefix>.safetensors``."""
    return sorted(p for p in folder.glob(f"{name}.*safetensors")
                  if p.name == f"{name}.safetensors" or re.fullmatch(re.escape(name) + r"\.[0-9a-f]{16}\.safetensors", p.name))


def _sidecar_file(meta: dict[str, Any], sidecar: Path) -> Path:
    """The tensor file a sidecar names: a plain file name in the sidecar's folder."""
    file = meta.get("file", f"{sidecar.stem}.safetensors")
    if not isinstance(file, str) or Path(file).name != file or file in ("", ".", "..") or not file.endswith(".safetensors"):
        raise ValueError(f"its 'file' entry {file!r} is not a .safetensors file name in the sidecar's folder")
    return sidecar.with_name(file)


def list_backbones(folders: list[Path] | None = None) -> list[str]:
    """Names of every checkpoint available in ``folders`` (default: shipped first, then the cache), each listed
    once, sorted within a folder. A checkpoint is available when its sidecar and the tensor file it names exist."""
    names: list[str] = []
    for folder in search_dirs() if folders is None else folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                split_name(path.stem)
                available = _sidecar_file(json.loads(path.read_text()), path).is_file()
            except (ValueError, OSError, AttributeError):
                continue
            if available and path.stem not in names:
                names.append(path.stem)
    return names


def recipes_of(dataset: str, depth: int, variant: str = "blockdrop", folders: list[Path] | None = None) -> list[str]:
    """The recipes of ``<dataset>-resnet<depth>-<variant>`` available in ``folders`` (default: shipped and cache):
    ``"standard"`` first, then the others in alphabetical order."""
    out = set()
    for name in list_backbones(folders):
        d, k, v, recipe = split_name(name)
        if (d, k, v) == (dataset, depth, variant):
            out.add(recipe)
    return sorted(out, key=lambda r: (r != STANDARD_RECIPE, r))


def find_checkpoint(name: str, folders: list[Path] | None = None) -> Path:
    """Path of ``<name>.json`` in the first folder holding it (default: :func:`search_dirs`);
    :class:`BackboneNotFoundError` if none. ``name`` must be a backbone name (never a path)."""
    dataset, depth, variant, recipe = split_name(name)
    folders = search_dirs() if folders is None else folders
    for folder in folders:
        if (folder / f"{name}.json").is_file() or tensor_files(folder, name):
            return folder / f"{name}.json"
    looked = ", ".join(str(d) for d in folders)
    recipes = recipes_of(dataset, depth, variant, folders)
    also = (f"Recipes of {dataset}-resnet{depth}-{variant} there: {recipes}. " if recipes else "")
    raise BackboneNotFoundError(
        f"No checkpoint named {name!r} (recipe {recipe!r}; looked for {name}.json and its tensors in {looked}). {also}"
        f"Available there: {list_backbones(folders) or 'none'}. "
        f"Train it with: {train_command(dataset, depth, variant, recipe)}"
    )


# ---- files ------------------------------------------------------------------------------------------------------
def _check_finite(tensors: dict[str, Tensor], where: str) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CorruptCheckpointError(f"{where} holds non-finite values (NaN or inf) in {bad[:5]}"
                                     + (f" and {len(bad) - 5} more tensors" if len(bad) > 5 else ""))


def save_checkpoint(model: nn.Module, meta: dict[str, Any], folder: str | os.PathLike[str], name: str | None = None) -> Path:
    """Write ``model``'s state dict and ``meta`` as ``<folder>/<name>.<hash>.safetensors`` + ``<name>.json``.

    ``meta`` must hold ``architecture`` (see :func:`build_model`) and should hold ``dataset``, ``quantization``,
    ``training`` and ``accuracy``; this function adds ``name``, ``format_version``, ``package_version``, ``file``
    and ``sha256``.

    Crash safety: the tensors go to a new, content-addressed file (its name carries the first 16 hex digits of its
    SHA-256), each file written atomically; the sidecar, which names that file and holds its hash, replaces the old
    one last; only then are tensor files no sidecar names removed. Interrupted at any point, the folder holds the
    old pair or the new pair, and the sidecar always names tensors that exist. The bytes (hence the hash) depend only
    on the tensors, not on the state dict's order or the process. Non-finite tensors are refused. Returns the
    sidecar's path.
    """
    from safetensors.torch import save as safetensors_bytes

    import cim_gym

    if "architecture" not in meta:
        raise ValueError("meta must hold 'architecture' (class, depth, num_classes, in_channels, ...)")
    name = name or meta.get("name")
    if not name:
        raise ValueError("a checkpoint needs a name: pass name= or put 'name' in meta")
    if not isinstance(name, str) or not _PART.fullmatch(name):
        raise ValueError(f"name={name!r} is not allowed: expected a checkpoint name (letters, digits, '_' and inner "
                         "'-'; no '.', '/' or path)")
    folder = Path(folder)
    state = model.state_dict()
    tensors = {k: state[k].detach().to("cpu").contiguous() for k in sorted(state)}
    _check_finite(tensors, f"the state dict of {name!r}")
    # one metadata entry: safetensors keeps metadata in a hash map, whose order (so the bytes) varies by process
    data = safetensors_bytes(tensors, metadata={"format": "cim-gym-backbone"})
    digest = hashlib.sha256(data).hexdigest()
    weights = folder / f"{name}.{digest[:16]}.safetensors"
    atomic_write(weights, lambda tmp: tmp.write_bytes(data))
    full = {
        "name": name,
        "format_version": FORMAT_VERSION,
        "package_version": cim_gym.__version__,
        **{k: v for k, v in meta.items() if k not in ("name", "format_version", "package_version", "file", "sha256")},
        "file": weights.name,
        "sha256": digest,
    }
    sidecar = folder / f"{name}.json"
    text = json.dumps(full, indent=2, sort_keys=False) + "\n"
    atomic_write(sidecar, lambda tmp: tmp.write_text(text))
    for old in tensor_files(folder, name):
        if old != weights:
            old.unlink(missing_ok=True)
    return sidecar


def read_checkpoint(sidecar: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read and verify a checkpoint: (sidecar dict, tensors). Raises :class:`CorruptCheckpointError` (unreadable
    sidecar, hash mismatch, unreadable or non-finite tensors) or :class:`BackboneNotFoundError`, naming the file and
    the command that retrains it."""
    from safetensors.torch import load_file

    name = sidecar.stem
    retrain = _retrain(name)
    if not sidecar.is_file():
        raise BackboneNotFoundError(f"Checkpoint sidecar {sidecar} is missing (its tensors are there). {retrain}")
    try:
        meta = json.loads(sidecar.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        for key in ("architecture", "sha256"):
            if key not in meta:
                raise ValueError(f"no {key!r} entry")
        weights = _sidecar_file(meta, sidecar)
    except (ValueError, OSError) as exc:
        raise CorruptCheckpointError(f"Checkpoint sidecar {sidecar} is unreadable ({exc}). {retrain}") from exc
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
    try:
        _check_finite(tensors, f"Checkpoint weights {weights}")
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(f"{exc}: refused. {retrain}") from None
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
    def recipe(self) -> str:
        """How it was trained (:func:`recipe_label`), read from its name."""
        return split_name(self.name)[3]

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
    recipe: str = STANDARD_RECIPE,
    folder: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Load a pretrained, quantized backbone by name: shipped checkpoints first, then the user cache, or only
    ``folder`` when given (e.g. a retrained model that has the name of a shipped one).

    :param dataset: the data set name (``"digits"``, ``"fashion-mnist"``, ...), or a full backbone name such as
        ``"digits-resnet20-blockdrop"`` (then ``depth``, ``variant`` and ``recipe`` must be left out). A name, never a
        path: ``..``, ``/`` and absolute paths are refused.
    :param depth: 6n+2 (8, 14, 20, 32, 56, ...).
    :param variant: ``"blockdrop"`` (ResNet trained with stochastic depth) or ``"multiexit"`` (MultiExitResNet).
    :param recipe: how it was trained (:func:`recipe_label`): ``"standard"`` (the variant's defaults),
        ``"no-stochastic-depth"`` (block-drop without stochastic depth), ``"stochastic-depth"`` (multi-exit with it),
        ``"seed1"``, ... :func:`recipes_of` lists the available ones.
    :param folder: look only in this folder (the ``--out`` of ``python -m cim_gym.backbones.train``).
    :param device: where the model goes.
    :raises ValueError: a malformed data set name, variant or recipe; the message says what is allowed.
    :raises BackboneNotFoundError: no such checkpoint; the message lists what exists (the recipes of that depth and
        variant among them) and the command to train it.
    :raises CorruptCheckpointError: hash mismatch, unreadable files or non-finite tensors; the message names the file.
    """
    if depth is None:
        name = dataset
        if variant != "blockdrop" or recipe != STANDARD_RECIPE:
            raise ValueError(f"load_backbone({dataset!r}, ...) with a full name takes no variant= or recipe=: the name "
                             "holds them")
        split_name(name)
    else:
        name = backbone_name(dataset, depth, variant, recipe)
    sidecar = find_checkpoint(name, None if folder is None else [Path(folder)])
    meta, tensors = read_checkpoint(sidecar)
    retrain = _retrain(name)
    try:
        model, cfg = quantized(build_model(meta["architecture"]), meta["quantization"])
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CorruptCheckpointError(f"Checkpoint {sidecar} does not fit its architecture ({exc}). {retrain}") from exc
    model.to(device).eval()
    return Backbone(name=name, model=model, meta=meta, quant_config=cfg, path=sidecar)
