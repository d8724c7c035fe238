"""The sweep engine: these methods, these sigmas, these chips, these images; one way to run it and one to store it.

A sweep is a grid of independent cells ``(backbone, sigma, chip)``. In a cell the chip is programmed once and every
method that runs on that backbone runs on it, on the same test images. Chip seeds come from one
:class:`~cim_gym.hardware.ChipPool` seed (``pool_seed(seed, sigma index, chip number)``), so chip ``c`` at sigma ``s``
has the same seed for every method and every backbone. Each backbone is held by an
:class:`~cim_gym.envs.core.EnvCore` on the test split: the environments' own code programs the chips, observes,
executes actions and counts costs.

Cells run serially or on Ray (``workers > 0``); a cell's result does not depend on where or in which order it ran.
Each finished cell is written to ``<out>/cells/`` at once (atomically), so an interrupted sweep resumes; a folder
holding a different sweep is refused, never mixed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cim_gym.evaluation.methods import Method, method_seed

__all__ = [
    "BackboneContext",
    "CellKey",
    "Engine",
    "SweepMismatchError",
    "SweepResult",
    "SweepSpec",
    "folder_hash",
    "image_subset",
    "policy_config_problems",
    "run_sweep",
]

CellKey = tuple[str, int, int, int]
"""(variant, depth, sigma index, chip number)."""

PROBE_IMAGES = 64
"""Probe batch of the chip descriptor (``EnvConfig.probe_images``) in the sweep's environments."""
RAY_INSTALL = 'pip install "cim-gym[ray]"  (or: pip install "ray>=2.9")'


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is not allowed: expected {allowed}")


def _is_int(value: Any, lo: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= lo


@dataclass(frozen=True)
class SweepSpec:
    """Everything that fixes the chips and images of a sweep (the methods come separately)."""

    dataset: str = "digits"
    """Data set of the backbones and test images."""
    sigmas: tuple[float, ...] = (0.0, 0.05, 0.1)
    """The sigma grid (distinct values >= 0, increasing)."""
    noise_source: str = "programming"
    """What sigma scales: "programming" variation, "read" noise or "output" noise."""
    cim: str | dict[str, Any] = "ideal"
    """The chip: a preset name or a CIMConfig dict (as ``EnvConfig.cim``); the rest of it stays fixed."""
    chips: int = 5
    """Chips per sigma (>= 1)."""
    images: int = 1000
    """Test images (a fixed random subset, the same for every method and chip); 0: the whole test split."""
    seed: int = 0
    """The ChipPool seed every chip seed derives from."""
    image_seed: int = 0
    """Seed of the test-image subset."""
    calibration_images: int = 256
    """Training images that calibrate output and ADC ranges (as ``EnvConfig.calibration_images``)."""
    data_root: str | None = None
    """Folder of the data set files; None: the default cache. Nothing is downloaded: the data must be there."""
    backbones: str | None = None
    """Folder of the backbone checkpoints (the ``--out`` of ``python -m cim_gym.backbones.train``), used instead of
    the shipped ones and the user cache; None: those."""
    device: str = "cpu"
    """"cpu", "cuda" or "auto"."""

    def __post_init__(self) -> None:
        from cim_gym.data import DATASETS
        from cim_gym.envs.config import NOISE_SOURCES

        if self.dataset not in DATASETS:
            _fail("dataset", self.dataset, f"one of {sorted(DATASETS)}")
        sigmas = tuple(self.sigmas)
        if (not sigmas or not all(isinstance(s, (int, float, np.floating)) and not isinstance(s, bool)
                                  and math.isfinite(s) and s >= 0 for s in sigmas)
                or list(sigmas) != sorted(set(sigmas))):
            _fail("sigmas", self.sigmas, "a non-empty increasing sequence of distinct finite numbers >= 0")
        object.__setattr__(self, "sigmas", tuple(float(s) for s in sigmas))
        if self.noise_source not in NOISE_SOURCES:
            _fail("noise_source", self.noise_source, f"one of {NOISE_SOURCES}")
        if not isinstance(self.cim, (str, dict)):
            _fail("cim", self.cim, "a preset name or a CIMConfig dict")
        for name in ("data_root", "backbones"):
            if getattr(self, name) is not None:
                if not isinstance(getattr(self, name), (str, os.PathLike)):
                    _fail(name, getattr(self, name), "None or a folder path")
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if self.backbones is not None and not Path(self.backbones).is_dir():
            _fail("backbones", self.backbones, "None or an existing folder of backbone checkpoints (the --out of "
                  "python -m cim_gym.backbones.train)")
        for name, lo in (("chips", 1), ("images", 0), ("seed", 0), ("image_seed", 0), ("calibration_images", 1)):
            if not _is_int(getattr(self, name), lo):
                _fail(name, getattr(self, name), f"an integer >= {lo}")
        if self.device not in ("auto", "cpu", "cuda"):
            _fail("device", self.device, "'auto', 'cpu' or 'cuda'")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sigmas"] = list(self.sigmas)
        return d

    def backbone_kwargs(self) -> dict[str, Any]:
        """``EnvConfig.backbone_kwargs`` of the sweep's environments: the backbone folder, if any."""
        return {"folder": self.backbones} if self.backbones is not None else {}

    def cim_config(self) -> Any:
        from cim_gym.envs.core import resolve_cim

        return resolve_cim(self.cim)

    def per_read_noise(self) -> bool:
        """True when some noise is drawn anew at every forward (read or output noise, swept or in the base config):
        then a per-image oracle over many paths counts lucky draws."""
        cfg = self.cim_config()
        return self.noise_source != "programming" or cfg.read_noise > 0 or cfg.output_noise > 0


def image_subset(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed random subset of ``n`` of ``n_total`` test images (all when n <= 0 or n >= total):
    the first ``n`` of a permutation from its own seeded generator (every sweep and study draws its images here)."""
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(int(seed)))
    return np.sort(perm[:n].numpy())


def _backbone_source(folder: str | None) -> str:
    """Where backbones come from, for messages and comparisons: a resolved folder, or the registered ones."""
    return repr(str(Path(folder).resolve())) if folder else "the registered ones (shipped, user cache)"


def policy_config_problems(spec: SweepSpec, depth: int, env_config: Mapping[str, Any],
                           backbone_sha256: str | None = None, variant: str = "blockdrop") -> list[str]:
    """What differs between the environment a policy was trained on and this sweep (data set, backbone depth, noise
    source, CIM config apart from the swept noise level, backbone folder and recipe, a sweep grid beyond the sigmas it
    was trained on, and, when the policy recorded it, the backbone checkpoint's content hash); empty when it may be
    evaluated here."""
    from cim_gym.envs.config import EnvConfig
    from cim_gym.envs.core import resolve_cim

    problems = []
    if env_config.get("dataset") != spec.dataset:
        problems.append(f"dataset {env_config.get('dataset')!r} (sweep: {spec.dataset!r})")
    theirs_depth = env_config.get("depth") or depth
    if int(theirs_depth) != int(depth):
        problems.append(f"depth {theirs_depth} (backbone: {depth})")
    if env_config.get("noise_source", "programming") != spec.noise_source:
        problems.append(f"noise_source {env_config.get('noise_source')!r} (sweep: {spec.noise_source!r})")
    theirs = resolve_cim(env_config.get("cim", "ideal")).scaled(spec.noise_source, 0.0).to_dict()
    mine = spec.cim_config().scaled(spec.noise_source, 0.0).to_dict()
    if theirs != mine:
        problems.append(f"CIM config differing in {sorted(k for k in mine if mine[k] != theirs.get(k))}")
    probe = env_config.get("probe_images", PROBE_IMAGES)
    if env_config.get("observe_chip") and probe != PROBE_IMAGES:
        problems.append(f"probe_images {probe} (sweep: {PROBE_IMAGES}, the chip descriptor's probe batch)")
    backbone_kwargs = dict(env_config.get("backbone_kwargs") or {})
    theirs_folder, mine_folder = _backbone_source(backbone_kwargs.get("folder")), _backbone_source(spec.backbones)
    if theirs_folder != mine_folder:
        problems.append(f"backbones {theirs_folder} (sweep: {mine_folder})")
    if backbone_kwargs.get("recipe", "standard") != "standard":
        problems.append(f"backbone recipe {backbone_kwargs['recipe']!r} (sweep: 'standard')")
    trained = env_config.get("sigmas") or env_config.get("sigma_range", EnvConfig.sigma_range)
    lo, hi = min(trained), max(trained)
    if hi > 0 and (spec.sigmas[0] < lo - 1e-9 or spec.sigmas[-1] > hi + 1e-9):
        # a policy trained at sigma 0 only is the original BlockDrop: running it on noisy chips is the point
        problems.append(f"trained on sigma {lo:g} to {hi:g} (sweep: {spec.sigmas[0]:g} to {spec.sigmas[-1]:g}): a "
                        "policy is evaluated only within the sigmas it was trained on")
    if backbone_sha256 is not None and not problems:
        mine_sha = _checkpoint_sha256(spec, int(depth), variant)
        if mine_sha is not None and mine_sha != backbone_sha256:
            problems.append(f"backbone checkpoint sha256 {backbone_sha256[:12]}… (sweep: {mine_sha[:12]}…): the "
                            "backbone was retrained after the policy; retrain the policy")
    return problems


def _checkpoint_sha256(spec: SweepSpec, depth: int, variant: str) -> str | None:
    """The content hash recorded in the sidecar of the backbone this sweep loads (None if there is none)."""
    from cim_gym.backbones.checkpoint import backbone_name, find_checkpoint

    folders = None if spec.backbones is None else [Path(spec.backbones)]
    try:
        sidecar = find_checkpoint(backbone_name(spec.dataset, depth, variant), folders)
        return json.loads(sidecar.read_text()).get("sha256")
    except (OSError, ValueError):
        return None


class BackboneContext:
    """One backbone on the sweep's chips: an :class:`EnvCore` on the test split, its chip pool (one chip at a time
    is kept: cells program each chip once), the evaluated image indices and the validation split for tuning.

    :param spec: the sweep.
    :param variant: "blockdrop" or "multiexit".
    :param depth: the ResNet depth.
    :param val: the validation split (thresholds are tuned on it, never on the test split).
    """

    def __init__(self, spec: SweepSpec, variant: str, depth: int, val: Any) -> None:
        from cim_gym.envs.config import EnvConfig
        from cim_gym.envs.core import EnvCore
        from cim_gym.hardware import ChipPool

        self.spec, self.variant, self.depth, self.val = spec, variant, int(depth), val
        config = EnvConfig(dataset=spec.dataset, depth=int(depth), split="test", data_root=spec.data_root, cim=spec.cim,
                           noise_source=spec.noise_source, sigmas=spec.sigmas, chips_per_sigma=spec.chips,
                           chip_seed=spec.seed, calibration_images=spec.calibration_images, device=spec.device,
                           observe_chip=True, probe_images=PROBE_IMAGES,  # keeps the chip descriptor's probe batch
                           backbone_kwargs=spec.backbone_kwargs())
        self.core = EnvCore(config, variant, int(depth))
        self.pool = ChipPool(self.core.model, self.core.cim, spec.sigmas, spec.chips, spec.seed, self.core.calibration,
                             spec.noise_source, cache_size=1)
        self.core.pool, self.core.pool_seed = self.pool, spec.seed
        self.image_ids = image_subset(len(self.core.labels), spec.images, spec.image_seed)
        self._actions: dict[str, Any] = {}
        self._views: dict[tuple[str, bool, bool], Any] = {}
        self._encoder_macs: int | None = None

    @property
    def name(self) -> str:
        return str(self.core.backbone.name)

    def action(self, env_id: str) -> Any:
        """The action type of ``env_id`` built on this backbone (cached)."""
        from cim_gym.evaluation.methods import action_type_of

        if env_id not in self._actions:
            action_type = action_type_of(env_id)
            if action_type.variant != self.variant:
                raise ValueError(f"{env_id} needs a {action_type.variant!r} backbone; this one is {self.name!r}")
            self._actions[env_id] = action_type(self.core)
        return self._actions[env_id]

    def tuning_chip(self) -> Any:
        """The noise-free chip (sigma 0 of the swept source, same CIM config) that thresholds are tuned on."""
        from cim_gym.hardware import ChipPool

        return ChipPool(self.core.model, self.core.cim, [0.0], 1, self.spec.seed, self.core.calibration,
                        self.spec.noise_source, cache_size=1)[0]

    def encoder_macs(self) -> int:
        """MACs per image of the frozen digital feature encoder (the stem and first stage, as the env runs it)."""
        if self._encoder_macs is None:
            from cim_gym.envs.actions import PathCosts

            first = self.core.model.stage_starts[1]
            self._encoder_macs = int(PathCosts(self.core).of(["stem.", *(f"blocks.{t}." for t in range(first))])[0])
        return self._encoder_macs

    def check_policy_config(self, name: str, env_config: Mapping[str, Any], backbone_sha256: str | None = None) -> None:
        """A policy is evaluated on this sweep only if it was trained on the same data set, backbone (checkpoint),
        CIM config and noise source; a ValueError says what differs."""
        problems = policy_config_problems(self.spec, self.depth, env_config, backbone_sha256, self.variant)
        if problems:
            raise ValueError(f"policy {name!r} was trained on another setting than this sweep: " + "; ".join(problems))

    def observe(self, env_config: Mapping[str, Any], image_ids: np.ndarray, chip_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The observation batch the policy's own environment gives for these images and chips:
        :meth:`EnvCore.observe` of this backbone (same features, sigma and chip descriptor code and caches), with the
        policy's ``obs_mode``, ``observe_sigma`` and ``observe_chip``."""
        key = (str(env_config.get("obs_mode", "features")), bool(env_config.get("observe_sigma", True)),
               bool(env_config.get("observe_chip", False)))
        if key not in self._views:
            self.core.features(self.image_ids)  # fill the shared feature cache before copying the core
            view = copy.copy(self.core)
            view.config = dataclasses.replace(self.core.config, obs_mode=key[0], observe_sigma=key[1],
                                              observe_chip=key[2])
            self._views[key] = view
        return self._views[key].observe(image_ids, chip_ids)

    @staticmethod
    def fingerprint(chip: Any) -> str:
        """SHA-256 (16 hex digits) of a programmed chip's analog weights or cell states: equal means the same chip."""
        h = hashlib.sha256()
        for name, layer in chip.analog_layers():
            h.update(name.encode())
            for tensor in (layer.w_eff, layer.u_t):
                if tensor is not None:
                    h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _summarize(out: Any, decision_macs: int) -> dict[str, Any]:
    """One method's numbers on one chip (means over the images) and its per-image correctness and total MACs."""
    paths = np.asarray(out.path)
    blocks = float(paths.sum(1).mean()) if paths.ndim == 2 else None
    exit_index = float(paths.mean()) if paths.ndim == 1 else None
    return {
        "accuracy": 100.0 * float(out.correct.mean()),
        "blocks": blocks,
        "exit": exit_index,
        "usage": float(out.usage.mean()),
        "backbone_macs": float(out.macs.mean()),
        "decision_macs": int(decision_macs),
        "total_macs": float(out.macs.mean()) + int(decision_macs),
        "energy_pj": float(out.energy_pj.mean()),
        "latency_ns": float(out.latency_ns.mean()),
        "correct": [int(c) for c in out.correct],
        "image_macs": [float(m) + int(decision_macs) for m in out.macs],
    }


class Engine:
    """The backbones, chips and prepared methods of one sweep; :meth:`run_cell` computes one cell.

    :param spec: the sweep.
    :param methods: the methods (names unique); each is prepared (tuned on validation data) here.
    """

    def __init__(self, spec: SweepSpec, methods: Sequence[Method]) -> None:
        from cim_gym.data import load_dataset

        names = [m.name for m in methods]
        if not methods or len(set(names)) != len(names):
            raise ValueError(f"methods={names!r} is not allowed: expected at least one method, names unique")
        self.spec, self.methods = spec, list(methods)
        val = load_dataset(spec.dataset, spec.data_root, download=False).val
        self.contexts: dict[tuple[str, int], BackboneContext] = {}
        for m in self.methods:
            if m.backbone not in self.contexts:
                self.contexts[m.backbone] = BackboneContext(spec, m.variant, m.depth, val)
        lengths = {len(ctx.image_ids) for ctx in self.contexts.values()}
        assert len(lengths) == 1, "every backbone must see the same test images"
        for m in self.methods:
            m.prepare(self.contexts[m.backbone])

    def cells(self) -> list[CellKey]:
        """Every cell, backbone-major."""
        return [(v, d, s, c) for (v, d) in self.contexts for s in range(len(self.spec.sigmas))
                for c in range(self.spec.chips)]

    def run_cell(self, key: CellKey) -> dict[str, Any]:
        """Program chip ``c`` at sigma index ``s`` of backbone ``(variant, depth)`` once and run every method of that
        backbone on it, on the sweep's test images."""
        variant, depth, s, c = key
        ctx = self.contexts[(variant, int(depth))]
        cid = ctx.pool.chip_index(int(s), int(c))
        chip = ctx.pool[cid]
        ids = ctx.image_ids
        chip_ids = np.full(len(ids), cid)
        results: dict[str, Any] = {}
        for m in self.methods:
            if m.backbone != (variant, int(depth)):
                continue
            act = ctx.action(m.env_id())
            actions = act.check(m.actions(ctx, ids, chip_ids), len(ids))
            chip.generator.manual_seed(method_seed(chip.seed, m.name))  # per-call noise: the method's own draws
            out = ctx.core.run(ids, chip_ids, act, actions)
            results[m.name] = _summarize(out, m.decision_macs(ctx))
        return {"key": [variant, int(depth), int(s), int(c)], "backbone": ctx.name, "sigma": ctx.pool.sigmas[int(s)],
                "chip": int(c), "chip_seed": int(chip.seed), "fingerprint": ctx.fingerprint(chip),
                "n_images": len(ids), "methods": results}


class SweepMismatchError(FileExistsError):
    """The output folder holds another sweep (or something else): refused, never mixed."""


def folder_hash(folder: str | Path, files: Sequence[str] | None = None) -> str:
    """SHA-256 over the relative paths and contents of the files in a folder: every file, or only ``files`` (those
    that make a policy, so that a copy of them is the same policy whatever checkpoints or logs lie beside them).

    :raises FileNotFoundError: one of ``files`` is not in the folder."""
    root, h = Path(folder), hashlib.sha256()
    chosen = sorted(p for p in root.rglob("*") if p.is_file()) if files is None else [root / f for f in sorted(files)]
    for path in chosen:
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    from cim_gym.files import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n"))


def _cell_path(out: Path, key: Sequence[Any]) -> Path:
    variant, depth, s, c = key
    return out / "cells" / f"{variant}-resnet{depth}_sigma{s:03d}_chip{c:03d}.json"


def _config(spec: SweepSpec, engine: Engine, command: str | None, skipped: Sequence[str]) -> dict[str, Any]:
    import cim_gym
    from cim_gym.hardware.pool import pool_seed

    any_ctx = next(iter(engine.contexts.values()))
    ids = any_ctx.image_ids
    return {
        "sweep": {"spec": spec.to_dict(), "methods": [m.describe() for m in engine.methods]},
        "cim_config": spec.cim_config().to_dict(),
        "chip_seeds": {f"{s:g}": [pool_seed(spec.seed, i, c) for c in range(spec.chips)]
                       for i, s in enumerate(spec.sigmas)},
        "images": {"split": "test", "count": int(len(ids)), "of": int(len(any_ctx.core.labels)),
                   "indices_sha256": hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()},
        "backbones": {ctx.name: {"sidecar": str(ctx.core.backbone.path), "sha256": ctx.core.backbone.meta.get("sha256"),
                                 "variant": ctx.variant, "depth": ctx.depth} for ctx in engine.contexts.values()},
        "encoder_macs": {ctx.name: ctx.encoder_macs() for ctx in engine.contexts.values()},
        "package_version": cim_gym.__version__,
        "torch_version": torch.__version__,
        "command": command if command is not None else " ".join(shlex.quote(a) for a in sys.argv),
        "skipped": list(skipped),
    }


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{prefix}{i}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _open_folder(out: Path, config: dict[str, Any]) -> None:
    """Create ``out`` or resume it: the same sweep resumes; another sweep, or a foreign folder, is refused."""
    cfg_path = out / "config.json"
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        # the same sweep as json would store it (tuples become lists)
        differs = _diff(old.get("sweep"), json.loads(json.dumps(config["sweep"])))
        if differs:
            raise SweepMismatchError(f"{out} holds another sweep (differing in {differs[:8]}): refused, results are never "
                                     "mixed. Choose another --out, or delete that folder.")
        _write_json(cfg_path, config)  # the same sweep: the latest command, skipped methods and comparisons
        return
    if out.exists() and any(out.iterdir()):
        raise SweepMismatchError(f"{out} exists and is not an evaluation folder (no config.json): refused. "
                                 "Choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(cfg_path, config)


class _Worker:
    """A Ray actor: its own engine (backbones, data, calibration), one CPU thread, cells on demand."""

    def __init__(self, spec: SweepSpec, methods: Sequence[Method]) -> None:
        torch.set_num_threads(1)
        self.engine = Engine(spec, methods)

    def run(self, key: CellKey) -> dict[str, Any]:
        return self.engine.run_cell(key)


def _ray_cells(spec: SweepSpec, methods: Sequence[Method], todo: Sequence[CellKey], workers: int,
               address: str | None) -> Iterable[dict[str, Any]]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as exc:
        raise ImportError(f"--workers needs Ray, which is not installed: {RAY_INSTALL}") from exc
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(num_cpus=1)(_Worker)
        pool = ActorPool([actor.remote(spec, list(methods)) for _ in range(workers)])
        yield from pool.map_unordered(lambda a, k: a.run.remote(k), list(todo))
    finally:
        if started:
            ray.shutdown()


@dataclass
class SweepResult:
    """What :func:`run_sweep` produced: the folder, its config and every cell."""

    out: Path
    config: dict[str, Any]
    cells: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    """Cells computed by this call (the rest were resumed from the folder)."""


def run_sweep(spec: SweepSpec, methods: Sequence[Method], out: str | Path, workers: int = 0,
              ray_address: str | None = None, command: str | None = None, skipped: Sequence[str] = (),
              progress: bool = True, report: bool = True,
              comparisons: Sequence[tuple[str, str, str]] = ()) -> SweepResult:
    """Run (or resume) a sweep into ``out`` and write its report.

    :param workers: 0 runs the cells here, one after the other; N > 0 runs them on N Ray workers (``ray.init()``
        locally, or the cluster at ``ray_address``). Results are identical cell by cell.
    :param command: the command line recorded in config.json (default: ``sys.argv``).
    :param skipped: lines naming the methods left out and why (recorded and reported).
    :param report: write CSV, Markdown and plots at the end (see :mod:`cim_gym.evaluation.report`).
    :param comparisons: (method, twin, what the method observes on top of its twin): pairs the summary compares
        per chip and across training seeds (see ``evaluate.COMPARISONS``).
    :raises SweepMismatchError: ``out`` holds another sweep.
    """
    if not _is_int(workers, 0):
        _fail("workers", workers, "an integer >= 0")
    out = Path(out)
    names = {m.name for m in methods}
    for pair in comparisons:
        if len(pair) != 3 or not {pair[0], pair[1]} <= names:
            _fail("comparisons", pair, "(method, twin, what) with both methods in this sweep")
    engine = Engine(spec, methods)
    config = {**_config(spec, engine, command, skipped), "comparisons": [list(p) for p in comparisons]}
    _open_folder(out, config)
    keys = engine.cells()
    todo = [k for k in keys if not _cell_path(out, k).is_file()]
    bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc=f"evaluate {spec.dataset}", unit="cell",
               disable=not progress)
    if workers:
        stream: Iterable[dict[str, Any]] = _ray_cells(spec, engine.methods, todo, workers, ray_address)
    else:
        stream = (engine.run_cell(k) for k in todo)
    for cell in stream:
        _write_json(_cell_path(out, cell["key"]), cell)
        bar.update()
    bar.close()
    cells = [json.loads(_cell_path(out, k).read_text()) for k in keys]
    result = SweepResult(out, json.loads((out / "config.json").read_text()), cells, len(todo))
    if report:
        from cim_gym.evaluation.report import write_report

        write_report(result)
    return result
