"""`EnvConfig`: every setting of a cim-gym environment in one validated, JSON-safe dataclass.

``gym.make("CIMBlockDrop-v0", **kwargs)`` passes its keyword arguments here, so a bad one fails with a message that
names the argument, its value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OBS_MODES = ("features", "image")
REWARDS = ("accuracy", "blockdrop", "energy")
SPLITS = ("train", "val", "test")
DEVICES = ("auto", "cpu", "cuda")
BACKBONE_KWARGS = ("folder", "recipe")


def __getattr__(name: str) -> Any:
    # The noise sources have one owner, the hardware model; read lazily so that importing cim_gym stays light.
    if name == "NOISE_SOURCES":
        return _noise_sources()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _noise_sources() -> tuple[str, ...]:
    from cim_gym.hardware.config import NOISE_SOURCES

    return tuple(NOISE_SOURCES)


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is not allowed: expected {allowed}")


def _is_number(value: Any) -> bool:
    """A finite real number: Python or numpy (``np.float32(0.1)``, ``np.int64(3)``), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(float(value))


def _is_int(value: Any) -> bool:
    """An integer, Python or numpy (``np.int64(3)``), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class EnvConfig:
    """Settings shared by every cim-gym environment (keyword arguments of ``gym.make``). Numbers may be Python or
    numpy scalars (``np.float32(0.05)``, ``np.int64(3)``); they are stored as Python ``int`` / ``float``, so the
    config (and the environment's spec) stays JSON-safe."""

    dataset: str = "digits"
    """Data set of the images and of the backbone: digits, fashion-mnist, mnist, cifar10, cifar100."""
    depth: int | None = None
    """ResNet depth of the backbone (6n+2); None takes the environment's default (see its docstring)."""
    split: str = "train"
    """Which split episodes draw images from: train, val or test (train policies on train, report on test)."""
    data_root: str | None = None
    """Folder of the data set files (torchvision layout); None uses the default cache folder. The environment
    never downloads: a data set that is not there raises ``cim_gym.data.DatasetNotFoundError``."""
    cim: str | dict[str, Any] = "ideal"
    """The chip: a preset name (see ``cim_gym.hardware.PRESETS``; "ideal" = NeuroSim cells, ideal ADC), a
    ``CIMConfig`` dict, or ``{"preset": name, **overrides}``. Its noise std for the
    noise source below is replaced by each chip's sigma; everything else stays fixed (the control variables)."""
    noise_source: str = "programming"
    """What sigma scales: "programming" variation (default, the proposal's), "read" noise or "output" noise."""
    sigmas: tuple[float, ...] | None = None
    """The chip sigmas, explicitly; None means ``num_sigmas`` values evenly spaced over ``sigma_range``."""
    sigma_range: tuple[float, float] = (0.0, 0.15)
    """(low, high) of the sigma grid when ``sigmas`` is None."""
    num_sigmas: int = 7
    """Points of the sigma grid when ``sigmas`` is None."""
    chips_per_sigma: int = 4
    """Independent chips programmed per sigma value: the pool holds ``len(sigmas) * chips_per_sigma`` chips."""
    chip_seed: int | None = None
    """Seed of the chip pool. None draws it from the environment's seed at the first ``reset``; pin it to give
    several methods the very same chips."""
    refresh_chips_every: int | None = None
    """Replace the pool by newly programmed chips every this many episodes (None: never)."""
    chips_per_batch: int | None = None
    """Vector environments only: at most this many distinct chips per batched step (fewer, larger forwards); None
    lets every episode draw its chip independently."""
    obs_mode: str = "features"
    """"features": a fixed-length description of the image from the frozen digital encoder (the clean backbone's
    stem and first stage, pooled). "image": the normalized image, for CNN policies."""
    observe_sigma: bool = True
    """Put the chip's sigma in the observation (False: the noise-unaware ablation)."""
    observe_chip: bool = False
    """Put the chip's descriptor in the observation (``chip``, a ``Box(0, 1)``): what the chip's own test right
    after programming measures on ``probe_images`` training images (see :mod:`cim_gym.envs.descriptor`): per
    residual block the relative error of its output against the digital model's, observed as ``r / (1 + r)``, and
    per exit the accuracy and the mean entropy / ln C on the probe batch. Computed once per chip and cached."""
    probe_images: int = 64
    """Training images in the probe batch of the chip descriptor (the first ones of the training split)."""
    reward: str = "accuracy"
    """"accuracy": 1 when correct, -penalty when wrong (the proposal's). "blockdrop": 1 - usage^2 when correct,
    -penalty when wrong (BlockDrop's). "energy": the accuracy reward minus energy_price * energy / full-path energy."""
    penalty: float = 1.0
    """Size of the negative reward for a wrong prediction (BlockDrop's gamma in the "blockdrop" reward); >= 0."""
    energy_price: float = 0.5
    """Price per full-path energy in the "energy" reward; >= 0."""
    calibration_images: int = 256
    """Training images that calibrate the chips' output and ADC ranges. With an ADC, every chip runs them once when
    it is programmed (its own ADC ranges, like a real chip's calibration): fewer images program faster, but later
    images fall outside the narrower ranges and clip."""
    device: str = "auto"
    """"auto" (CUDA when present), "cpu" or "cuda"."""
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of ``cim_gym.backbones.load_backbone`` beyond what the environment sets itself
    (data set, depth, variant, device): ``{"folder": "runs/backbones"}`` loads a retrained backbone from that
    folder (the ``--out`` of ``python -m cim_gym.backbones.train``); ``{"recipe": "no-stochastic-depth"}`` selects
    a backbone trained by another recipe (``cim_gym.backbones.recipes_of`` lists them)."""

    def __post_init__(self) -> None:
        from cim_gym.data import DATASETS

        if self.dataset not in DATASETS:
            _fail("dataset", self.dataset, f"one of {sorted(DATASETS)}")
        if self.depth is not None:
            from cim_gym.models import blocks_per_stage

            if _is_int(self.depth):
                object.__setattr__(self, "depth", int(self.depth))
            blocks_per_stage(self.depth)  # raises a ValueError naming the allowed depths
        for name, value, choices in (
            ("split", self.split, SPLITS),
            ("noise_source", self.noise_source, _noise_sources()),
            ("obs_mode", self.obs_mode, OBS_MODES),
            ("reward", self.reward, REWARDS),
            ("device", self.device, DEVICES),
        ):
            if value not in choices:
                _fail(name, value, f"one of {choices}")
        if self.data_root is not None:
            if not isinstance(self.data_root, (str, os.PathLike)):
                _fail("data_root", self.data_root, "None or a folder path")
            object.__setattr__(self, "data_root", os.fspath(self.data_root))
        if not isinstance(self.cim, (str, dict)):
            _fail("cim", self.cim, "a preset name or a CIMConfig dict")
        if self.sigmas is not None:
            sigmas = tuple(self.sigmas) if isinstance(self.sigmas, Iterable) and not isinstance(self.sigmas, str) else ()
            if not sigmas or not all(_is_number(s) and s >= 0 for s in sigmas) or len(set(sigmas)) != len(sigmas):
                _fail("sigmas", self.sigmas, "a non-empty sequence of distinct finite numbers >= 0")
            object.__setattr__(self, "sigmas", tuple(float(s) for s in sigmas))
        rng = tuple(self.sigma_range) if isinstance(self.sigma_range, Iterable) and not isinstance(self.sigma_range, str) else ()
        if len(rng) != 2 or not all(_is_number(s) for s in rng) or not 0 <= rng[0] <= rng[1]:
            _fail("sigma_range", self.sigma_range, "(low, high) with 0 <= low <= high")
        object.__setattr__(self, "sigma_range", (float(rng[0]), float(rng[1])))
        for name, value, lo in (
            ("num_sigmas", self.num_sigmas, 1),
            ("chips_per_sigma", self.chips_per_sigma, 1),
            ("calibration_images", self.calibration_images, 1),
            ("probe_images", self.probe_images, 1),
        ):
            if not _is_int(value) or value < lo:
                _fail(name, value, f"an integer >= {lo}")
            object.__setattr__(self, name, int(value))
        for name, value, lo in (
            ("chip_seed", self.chip_seed, 0),
            ("refresh_chips_every", self.refresh_chips_every, 1),
            ("chips_per_batch", self.chips_per_batch, 1),
        ):
            if value is not None and (not _is_int(value) or value < lo):
                _fail(name, value, f"None or an integer >= {lo}")
            if value is not None:
                object.__setattr__(self, name, int(value))
        for name in ("observe_sigma", "observe_chip"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "True or False")
        for name, value in (("penalty", self.penalty), ("energy_price", self.energy_price)):
            if not _is_number(value) or value < 0:
                _fail(name, value, "a finite number >= 0")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.backbone_kwargs, dict):
            _fail("backbone_kwargs", self.backbone_kwargs, "a dict")
        for key, value in self.backbone_kwargs.items():
            if key not in BACKBONE_KWARGS:
                _fail("backbone_kwargs", self.backbone_kwargs, f"keys among {BACKBONE_KWARGS} (the environment sets "
                      f"dataset, depth, variant and device itself; {key!r} is not one)")
            if not isinstance(value, str):
                _fail(f"backbone_kwargs[{key!r}]", value, "a folder path (str)" if key == "folder" else "a recipe name (str)")

    @property
    def sigma_grid(self) -> tuple[float, ...]:
        """The sigma of every chip group, increasing."""
        if self.sigmas is not None:
            return tuple(sorted(self.sigmas))
        lo, hi = self.sigma_range
        n = 1 if lo == hi else self.num_sigmas
        return tuple(round(lo + (hi - lo) * i / max(n - 1, 1), 12) for i in range(n))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> EnvConfig:
        """Build from ``gym.make`` keyword arguments; an unknown one raises a ``ValueError`` listing the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown environment argument(s) {unknown}; known arguments: {sorted(known)}")
        return cls(**kwargs)
