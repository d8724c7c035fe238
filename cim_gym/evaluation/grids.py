"""Default sigma grids: from no loss to where the deepest fixed model has lost at least half its clean accuracy.

The end of each grid is *measured*, not guessed: :func:`measure_limit` scans sigma upward in steps on the deepest
shipped block-drop backbone of the data set (every block run, ``chips`` chips per point, the sweep's chip seeds)
and stops at the first sigma whose mean accuracy over chips is at most half the clean one (coarse steps first).
``python evaluate.py --measure-grid`` runs it; the values below are its output (ideal CIM preset, 5 chips), each
data set's with the content hash of the backbone it was measured on. A data set or noise source not listed, or one
whose deepest backbone has been retrained since (another hash), is measured on the fly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["GRID_POINTS", "MEASURED_LIMITS", "MEASURED_ON", "deepest_backbone_sha256", "default_grid",
           "grid_from_limit", "measure_limit", "shipped_depths"]

COARSE = 5
"""The scan first steps by COARSE x step, then by step after the last coarse point still above half."""
GRID_POINTS = 8
"""Points of a default grid (the protocol asks for at least 8)."""

MEASURED_LIMITS: dict[tuple[str, str], float] = {
    # digits, ResNet-56 (clean 98.1 %), 5 chips (ChipPool seed 0), all 360 test images:
    # programming 0.18 -> 53.8 %, 0.19 -> 32.1 %; read 0.17 -> 52.1 %, 0.18 -> 41.2 %; output 0.055 -> 55.4 %, 0.06 -> 46.2 %
    ("digits", "programming"): 0.19,
    ("digits", "read"): 0.18,
    ("digits", "output"): 0.06,
    # fashion-mnist, ResNet-56 of the 20 + 2 epoch recipe (clean 92.0 % on these images), 5 chips, 1000 test images
    # (evaluate.py's default): programming 0.15 -> 47.3 %, 0.16 -> 31.3 %; read 0.17 -> 49.4 %, 0.18 -> 43.8 %;
    # output 0.04 -> 57.9 %, 0.045 -> 48.1 %, 0.05 -> 35.0 %
    ("fashion-mnist", "programming"): 0.16,
    ("fashion-mnist", "read"): 0.18,
    ("fashion-mnist", "output"): 0.05,
}
"""(dataset, noise source) -> the first sigma (step 0.01, output noise 0.005) where the deepest fixed model's mean
accuracy is at most half its clean accuracy, on the ideal CIM preset; filled from ``python evaluate.py
--measure-grid`` runs."""
MEASURED_ON: dict[str, str] = {
    "digits": "d2b57f596a989a8560e38699298d9c3d8a5e8617081777b0d6564c040588287b",
    "fashion-mnist": "e5329cedf8fb76fb63f1329f07c411e6377361d157b4465c75f6cdaa0eee3f63",
}
"""Data set -> sha256 of the deepest block-drop backbone its :data:`MEASURED_LIMITS` were measured on."""


def shipped_depths(dataset: str, variant: str = "blockdrop", folder: str | os.PathLike[str] | None = None) -> list[int]:
    """Depths of the available standard-recipe backbones of a data set and variant, increasing: the shipped ones and
    the user cache, or only those in ``folder`` when given (the ``--out`` of ``python -m cim_gym.backbones.train``)."""
    from cim_gym.backbones import list_backbones, split_name

    depths = []
    for name in list_backbones(None if folder is None else [Path(folder)]):
        d, depth, v, recipe = split_name(name)
        if d == dataset and v == variant and recipe == "standard":
            depths.append(depth)
    return sorted(set(depths))


def deepest_backbone_sha256(dataset: str) -> str | None:
    """Content hash of the deepest available block-drop backbone of a data set (the one :func:`measure_limit`
    measures on), from its sidecar; None when there is none."""
    from cim_gym.backbones.checkpoint import backbone_name, find_checkpoint

    depths = shipped_depths(dataset)
    if not depths:
        return None
    return json.loads(find_checkpoint(backbone_name(dataset, depths[-1])).read_text()).get("sha256")


def grid_from_limit(limit: float, points: int = GRID_POINTS) -> tuple[float, ...]:
    """``points`` evenly spaced sigmas from 0 to ``limit`` (rounded to 3 decimals)."""
    if not limit > 0 or not np.isfinite(limit):
        raise ValueError(f"limit={limit!r} is not allowed: expected a finite sigma > 0")
    if points < 2:
        raise ValueError(f"points={points!r} is not allowed: expected an integer >= 2")
    return tuple(float(round(v, 3)) for v in np.linspace(0.0, limit, points))


def measure_limit(dataset: str, noise_source: str = "programming", cim: str | dict = "ideal", chips: int = 5,
                  images: int = 1000, seed: int = 0, step: float | None = None, max_sigma: float = 1.0,
                  calibration_images: int = 256, log: Callable[[str], None] = print, data_root: str | None = None,
                  backbones: str | None = None) -> float:
    """The first sigma (a multiple of ``step``) at which the deepest shipped block-drop backbone's mean accuracy over
    ``chips`` chips is at most half its clean accuracy (coarse steps of ``COARSE x step`` first, then every step after
    the last coarse point still above half). ``data_root`` and ``backbones`` are :class:`SweepSpec`'s: the data
    folder, and a folder of backbones to use instead of the shipped ones.

    :raises RuntimeError: not reached up to ``max_sigma``.
    """
    from cim_gym.evaluation.methods import FixedDepth
    from cim_gym.evaluation.sweep import Engine, SweepSpec

    step = step or (0.005 if noise_source == "output" else 0.01)
    depths = shipped_depths(dataset, folder=backbones)
    if not depths:
        where = f" in backbones={backbones!r}" if backbones is not None else ""
        raise ValueError(f"dataset={dataset!r} has no block-drop backbone{where} to measure a grid on")
    sigmas = tuple(float(round(v, 6)) for v in np.arange(0.0, max_sigma + step / 2, step))
    spec = SweepSpec(dataset=dataset, sigmas=sigmas, noise_source=noise_source, cim=cim, chips=chips, images=images,
                     seed=seed, calibration_images=calibration_images, data_root=data_root, backbones=backbones)
    method = FixedDepth(depth=depths[-1])
    engine = Engine(spec, [method])

    def mean_accuracy(s: int) -> float:
        return float(np.mean([engine.run_cell(("blockdrop", depths[-1], s, c))["methods"][method.name]["accuracy"]
                              for c in range(chips)]))

    clean = mean_accuracy(0)
    log(f"{method.name} on {dataset}, {noise_source}: clean {clean:.1f} %")

    def below_half(s: int) -> bool:
        acc = mean_accuracy(s)
        log(f"  sigma {sigmas[s]:g}: {acc:.1f} %")
        return acc <= clean / 2

    # coarse steps of 5 x step, then the fine steps after the last coarse point still above half
    last_above = 0
    for s in [*range(COARSE, len(sigmas), COARSE), len(sigmas) - 1]:
        if s <= last_above:
            continue
        if below_half(s):
            return next((sigmas[f] for f in range(last_above + 1, s) if below_half(f)), sigmas[s])
        last_above = s
    raise RuntimeError(f"{method.name} keeps more than half its clean accuracy up to sigma {max_sigma:g}")


def default_grid(dataset: str, noise_source: str = "programming", cim: str | dict = "ideal",
                 **measure_kwargs: object) -> tuple[float, ...]:
    """The default grid of a data set, noise source and CIM config: the recorded limit (ideal preset and shipped
    backbones only), or one measured now (``measure_kwargs`` go to :func:`measure_limit`)."""
    recorded = (cim == "ideal" and measure_kwargs.get("backbones") is None
                and MEASURED_ON.get(dataset) == deepest_backbone_sha256(dataset))
    limit = MEASURED_LIMITS.get((dataset, noise_source)) if recorded else None
    if limit is None:
        limit = measure_limit(dataset, noise_source, cim, **measure_kwargs)  # type: ignore[arg-type]
    return grid_from_limit(limit)
