"""The run folder of a trained agent, and ``load_policy`` that reads it back.

``runs/<name>/`` holds:

- ``run.json``: algorithm, environment id and its full ``EnvConfig``, the spaces, the network, the training
  settings, package version, seed, wall time, status (``running``, ``interrupted``, ``complete``) and progress;
- ``policy.safetensors``: the policy's weights (a safe format: no pickle);
- ``checkpoint.pt``: what ``--resume`` needs (optimizer state, progress, generator state), loaded with
  ``torch.load(weights_only=True)``;
- ``metrics.csv`` and ``tb/`` (TensorBoard) while training; ``evaluation.csv`` and ``evaluation.md`` at the end.

Every file is written atomically (a temporary file, then a rename): an interrupted write leaves the previous one.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from cim_gym.files import atomic_write, write_json

FORMAT_VERSION = 1
RUN_FILE = "run.json"
POLICY_FILE = "policy.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"


class RunFolderError(ValueError):
    """A run folder that is missing, incomplete or not a cim-gym run."""


# ---- spaces as JSON ----------------------------------------------------------------------------------------------
def space_to_json(space: spaces.Space[Any]) -> dict[str, Any]:
    """A JSON description of the spaces the environments use (Dict of Boxes, MultiBinary, Discrete, Box)."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(v) for k, v in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": space.low.tolist(), "high": space.high.tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ValueError(f"space={space!r} is not allowed: expected Dict, Box, MultiBinary or Discrete")


def space_from_json(data: dict[str, Any]) -> spaces.Space[Any]:
    kind = data.get("type")
    if kind == "Dict":
        return spaces.Dict({k: space_from_json(v) for k, v in data["spaces"].items()})
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        return spaces.Box(np.asarray(data["low"], dtype), np.asarray(data["high"], dtype), tuple(data["shape"]), dtype)
    if kind == "MultiBinary":
        return spaces.MultiBinary(data["n"])
    if kind == "Discrete":
        return spaces.Discrete(data["n"], start=data.get("start", 0))
    raise RunFolderError(f"unknown space type {kind!r} in run.json")


# ---- the folder ---------------------------------------------------------------------------------------------------
@dataclass
class RunFolder:
    """A run folder being written: ``meta`` is the content of ``run.json``."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    previous_wall_s: float = 0.0

    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: dict[str, Any], resume: bool) -> RunFolder:
        """Start a run in ``path``. A folder that already holds a run is refused unless ``resume`` (then its
        settings must match ``meta``'s ``settings`` and ``env_config``)."""
        path = Path(path)
        existing = path / RUN_FILE
        if resume:
            if not existing.exists():
                raise RunFolderError(f"--resume: {path} holds no run to resume (no {RUN_FILE})")
            old = read_meta(path)
            for key in ("algo", "env_id", "env_config", "settings"):
                if old.get(key) != json.loads(json.dumps(meta.get(key))):  # as JSON: tuples are lists there
                    raise RunFolderError(f"--resume: the run in {path} was started with other {key} "
                                         f"({old.get(key)!r}); resume it with the same arguments")
            if old.get("backbone_sha256") not in (None, meta.get("backbone_sha256")):
                raise RunFolderError(f"--resume: the run in {path} was started on another backbone checkpoint "
                                     f"(sha256 {old['backbone_sha256']}); it was retrained since: start a new run")
            run = cls(path, {**old, **{k: v for k, v in meta.items() if k not in ("status", "progress")}})
            run.previous_wall_s = float(old.get("wall_time_s", 0.0))
            return run
        if path.exists() and any(path.iterdir()):
            raise RunFolderError(f"--out {path} already exists and is not empty: pass --resume to continue that run, "
                                 "or choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, {"format_version": FORMAT_VERSION, **meta, "status": "running"})
        run.write_meta()
        return run

    @property
    def wall_time_s(self) -> float:
        return self.previous_wall_s + time.perf_counter() - self.started

    def write_meta(self, **updates: Any) -> None:
        self.meta.update(updates, wall_time_s=round(self.wall_time_s, 3))
        write_json(self.path / RUN_FILE, self.meta)

    def save_policy(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        atomic_write(self.path / POLICY_FILE, lambda tmp: save_file(flat, str(tmp), metadata={"format": "cim-gym-policy"}))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.path / CHECKPOINT_FILE, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> dict[str, Any]:
        path = self.path / CHECKPOINT_FILE
        if not path.exists():
            raise RunFolderError(f"--resume: {path} is missing (the run stopped before its first checkpoint)")
        return torch.load(path, map_location="cpu", weights_only=True)


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` of a run folder, or a :class:`RunFolderError` saying what is wrong."""
    path = Path(path)
    file = path / RUN_FILE
    if not file.is_file():
        raise RunFolderError(f"{path} is not a run folder: {RUN_FILE} is missing (train one with "
                             "`python train_agent.py --algo reinforce --out <folder>`)")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{file} is not valid JSON: {err}") from err
    for key in ("algo", "env_id", "env_config", "observation_space", "action_space", "network"):
        if key not in meta:
            raise RunFolderError(f"{file} lacks {key!r}: not a cim-gym run folder")
    return meta


def read_policy_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = Path(path) / POLICY_FILE
    if not file.is_file():
        raise RunFolderError(f"{file} is missing: the run saved no policy yet")
    tensors = load_file(str(file))
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RunFolderError(f"{file} holds non-finite weights in {bad[:3]}: refusing to load a broken policy")
    return tensors


class MetricsCSV:
    """Rows appended to a CSV log, flushed as they come (the header written once, also across resumed runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: Any = None
        self.writer: Any = None

    def write(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.file = open(self.path, "a", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=list(row))
            if new:
                self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
