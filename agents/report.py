"""The end-of-training check of a policy: greedy actions on the test split, every sigma of its grid, the same chips
for the policy and for the full path (every block, the last exit, or thresholds that never exit early).

This is a training report, not the comparison of methods (that is ``python evaluate.py --sigma-grid``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from tqdm.auto import tqdm

from cim_gym.files import atomic_write


@dataclass(frozen=True)
class ReportRow:
    """Mean over the test images and chips of one sigma, for the policy and for the full path."""

    sigma: float
    chips: int
    images: int
    accuracy: float
    accuracy_full: float
    used: float
    """Blocks run (masks), exit index (exits, 0 = the first), or share of the full path's MACs (thresholds)."""
    used_of: int
    macs: float
    macs_full: float


def full_path_action(action_space: spaces.Space[Any], n: int) -> np.ndarray:
    """The action that runs the whole network: every block, the last exit, or thresholds of 0 nats (-1)."""
    if isinstance(action_space, spaces.MultiBinary):
        return np.ones((n, *action_space.shape), dtype=np.int8)
    if isinstance(action_space, spaces.Discrete):
        return np.full(n, action_space.n - 1, dtype=np.int64)
    return np.full((n, *action_space.shape), -1.0, dtype=np.float32)


def used_of(action_space: spaces.Space[Any]) -> int:
    """What "used" counts out of: K blocks for masks; 1 for the exit index and the MAC share (printed as is)."""
    return int(np.prod(action_space.shape)) if isinstance(action_space, spaces.MultiBinary) else 1


def _used(action_space: spaces.Space[Any], final: dict[str, Any]) -> np.ndarray:
    """Per episode: blocks run (masks), the exit index (exits), the share of the full path's MACs (thresholds)."""
    if isinstance(action_space, spaces.MultiBinary):
        return np.asarray(final["path"]).sum(1)
    if isinstance(action_space, spaces.Discrete):
        return np.asarray(final["path"], dtype=np.float64)
    return np.asarray(final["usage"], dtype=np.float64)


def greedy_report(act: Callable[[dict[str, np.ndarray]], np.ndarray], env_id: str, env_kwargs: dict[str, Any], *,
                  chips_per_sigma: int = 4, chip_seed: int = 10_007, max_images: int | None = None,
                  batch: int = 512, progress: bool = True) -> list[ReportRow]:
    """Run ``act`` (observation batch -> actions) and the full path on the test split, chip by chip.

    :param env_kwargs: the training environment's settings; split, chip pool and refresh are replaced.
    :param chip_seed: seed of the report's chip pool (any seed other than the training chips').
    :param max_images: the first this many test images (None: all of them).
    """
    kwargs = {**env_kwargs, "split": "test", "chip_seed": chip_seed, "chips_per_sigma": chips_per_sigma,
              "refresh_chips_every": None, "chips_per_batch": None}
    probe = gym.make_vec(env_id, num_envs=1, vectorization_mode="vector_entry_point", **kwargs)
    n_images = probe.num_images if max_images is None else min(max_images, probe.num_images)  # type: ignore[attr-defined]
    sigmas = probe.config.sigma_grid  # type: ignore[attr-defined]
    probe.close()
    size = min(batch, n_images)
    envs = gym.make_vec(env_id, num_envs=2 * size, vectorization_mode="vector_entry_point", **kwargs)
    action_space = envs.single_action_space
    rows = []
    envs.reset(seed=0)
    cells = [(s, c) for s in sigmas for c in range(chips_per_sigma)]
    sums: dict[float, np.ndarray] = {s: np.zeros(6) for s in sigmas}  # correct, correct_full, used, macs, macs_full, n
    for sigma, chip in tqdm(cells, desc="report", unit="chip", disable=not progress):
        for start in range(0, n_images, size):
            ids = np.arange(start, start + size) % n_images  # the last chunk wraps; its extra rows are dropped
            keep = min(size, n_images - start)
            obs, _ = envs.reset(options={"sigma": sigma, "chip": chip, "image": np.tile(ids, 2)})
            actions = np.asarray(act({k: v[:size] for k, v in obs.items()}))
            _, _, _, _, info = envs.step(np.concatenate([actions, full_path_action(action_space, size)]))
            final = info["final_info"]
            used = _used(action_space, final)
            correct, macs = np.asarray(final["correct"], dtype=np.float64), np.asarray(final["macs"], dtype=np.float64)
            sums[sigma] += [correct[:keep].sum(), correct[size:size + keep].sum(), used[:keep].sum(),
                            macs[:keep].sum(), macs[size:size + keep].sum(), keep]
    envs.close()
    for sigma in sigmas:
        c, cf, u, m, mf, n = sums[sigma]
        rows.append(ReportRow(float(sigma), chips_per_sigma, n_images, c / n, cf / n, u / n, used_of(action_space),
                              m / n, mf / n))
    return rows


def report_markdown(rows: list[ReportRow], what: str) -> str:
    """The report as a Markdown table (``what`` names the used column: blocks, exit, MAC share)."""
    lines = [f"| sigma | accuracy | full path | difference | {what} | MACs | full-path MACs |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        used = f"{r.used:.2f} / {r.used_of}" if r.used_of > 1 else f"{r.used:.3f}"
        lines.append(f"| {r.sigma:g} | {100 * r.accuracy:.1f} % | {100 * r.accuracy_full:.1f} % | "
                     f"{100 * (r.accuracy - r.accuracy_full):+.1f} | {used} | {r.macs / 1e6:.3f} M | {r.macs_full / 1e6:.3f} M |")
    n = rows[0] if rows else None
    note = f"\nTest split, {n.images} images x {n.chips} chips per sigma (the same chips for both columns).\n" if n else ""
    return "\n".join(lines) + "\n" + note


def write_report(rows: list[ReportRow], folder: Path, what: str) -> str:
    """``evaluation.csv`` and ``evaluation.md`` in the run folder; returns the Markdown."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0])))
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    text = buffer.getvalue()
    atomic_write(folder / "evaluation.csv", lambda tmp: tmp.write_text(text))
    md = report_markdown(rows, what)
    atomic_write(folder / "evaluation.md", lambda tmp: tmp.write_text(md))
    return md
