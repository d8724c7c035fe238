"""Test accuracy of the shipped checkpoints on noisy chips: a sweep of fixed models, as a Markdown table.

    python -m cim_gym.evaluation.sigma_table --dataset fashion-mnist --images 1000
    python -m cim_gym.evaluation.sigma_table --dataset digits --images 0

Every standard-recipe checkpoint (the recipe variants: ``noise_study --recipes``) runs its full path (a multi-exit
model: its last exit) on the sweep engine's chips: programming variation at each sigma, ``--chips`` chips per sigma
from one ChipPool seed (the same chips for every checkpoint of a data set, see :mod:`cim_gym.evaluation.sweep`), the
ideal CIM preset otherwise (the checkpoints' own quantization config), on a fixed subset of the test split. A
noise-free sigma is one chip (nothing is random there). Writes a CSV (one row per checkpoint, sigma and chip) and
prints the table: mean and min-max over chips.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

__all__ = ["main", "sigma_table", "standard_names"]


def sigma_table(names: Sequence[str], sigmas: Sequence[float], chips: int, images: int, out: Path, seed: int = 0,
                progress: bool = True) -> str:
    """Run the sweep for the standard-recipe checkpoints ``names`` (any data sets), write ``out`` (CSV) and return the
    Markdown table."""
    from cim_gym.backbones import split_name
    from cim_gym.evaluation.methods import FixedDepth, FixedExit, Method
    from cim_gym.evaluation.sweep import Engine, SweepSpec
    from cim_gym.files import atomic_write

    grid = sorted({float(s) for s in sigmas})
    by_dataset: dict[str, list[Method]] = {}
    for name in names:
        dataset, depth, variant, recipe = split_name(name)
        if recipe != "standard":  # the engine's methods name a depth, and it loads that depth's standard model
            raise ValueError(f"checkpoint {name!r} has recipe {recipe!r}: the sigma table runs standard-recipe "
                             "checkpoints only; noise_study --recipes measures the others")
        method = FixedDepth(name=name, depth=depth) if variant == "blockdrop" else FixedExit(name=name, depth=depth)
        by_dataset.setdefault(dataset, []).append(method)
    rows: list[dict[str, object]] = []
    accuracy: dict[tuple[str, float], list[float]] = {}
    n_images: dict[str, int] = {}
    total = sum(len(ms) * sum(1 if s == 0 else chips for s in grid) for ms in by_dataset.values())
    bar = tqdm(total=total, desc="sigma table", unit="chip", disable=not progress)
    for dataset, methods in by_dataset.items():
        engine = Engine(SweepSpec(dataset=dataset, sigmas=tuple(grid), chips=chips, images=images, seed=seed), methods)
        for key in engine.cells():
            if grid[key[2]] == 0 and key[3] > 0:  # a noise-free chip is the same chip whatever its seed
                continue
            cell = engine.run_cell(key)
            for name, r in cell["methods"].items():
                rows.append({"name": name, "sigma": cell["sigma"], "chip": cell["chip"], "chip_seed": cell["chip_seed"],
                             "accuracy": round(r["accuracy"], 3), "n_images": cell["n_images"]})
                accuracy.setdefault((name, cell["sigma"]), []).append(r["accuracy"])
                n_images[name] = cell["n_images"]
                bar.update()
    bar.close()
    md = ["| checkpoint | test images | " + " | ".join(f"sigma {s:g}" for s in grid) + " |",
          "| --- | --- | " + " | ".join("---" for _ in grid) + " |"]
    for name in names:
        cells = []
        for s in grid:
            accs = accuracy[(name, s)]
            cells.append(f"{np.mean(accs):.1f}" + (f" ({min(accs):.1f}-{max(accs):.1f})" if len(accs) > 1 else ""))
        md.append(f"| {name} | {n_images[name]} | " + " | ".join(cells) + " |")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["name", "sigma", "chip", "chip_seed", "accuracy", "n_images"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(buf.getvalue()))
    return "\n".join(md)


def standard_names(dataset: str | None = None) -> list[str]:
    """The standard-recipe checkpoints of :data:`~cim_gym.backbones.shipped.SHIPPED` (of ``dataset`` when given)."""
    from cim_gym.backbones import split_name
    from cim_gym.backbones.shipped import SHIPPED

    return [n for n in SHIPPED if split_name(n)[3] == "standard" and dataset in (None, split_name(n)[0])]


def main(argv: Sequence[str] | None = None) -> int:
    from cim_gym.backbones.checkpoint import SHIPPED_DIR
    from cim_gym.backbones.shipped import SHIPPED

    p = argparse.ArgumentParser(prog="python -m cim_gym.evaluation.sigma_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=None, help="only this data set's checkpoints")
    p.add_argument("--name", nargs="+", default=None,
                   help="standard-recipe checkpoints (default: every shipped standard one)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1],
                   help="programming variation sigmas (default 0 0.02 0.05 0.1)")
    p.add_argument("--chips", type=int, default=5, help="chips per noisy sigma (default 5)")
    p.add_argument("--images", type=int, default=2000, help="test images (fixed random subset; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="ChipPool seed of the chips (default 0)")
    p.add_argument("--out", default=None, help="CSV path (default benchmarks/results/shipped_sigma_<dataset>.csv)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.chips < 1:
        p.error(f"--chips {a.chips} is not allowed: expected an integer >= 1")
    standard = standard_names()
    names = a.name or standard_names(a.dataset)
    unknown = [n for n in names if n not in SHIPPED]
    if unknown:
        p.error(f"unknown checkpoint(s) {unknown}; known: {list(SHIPPED)}")
    variants = [n for n in names if n not in standard]
    if variants:
        p.error(f"--name {variants}: recipe variants are not allowed here (the sweep engine loads each depth's "
                f"standard model); use noise_study --recipes for them. Allowed: {standard}")
    names = [n for n in names if (SHIPPED_DIR / f"{n}.json").is_file()]
    if not names:
        p.error(f"--dataset {a.dataset!r} has no shipped checkpoints; data sets: "
                f"{sorted({n.rsplit('-resnet', 1)[0] for n in SHIPPED})}")
    out = Path(a.out or f"benchmarks/results/shipped_sigma_{a.dataset or 'all'}.csv")
    print(sigma_table(names, a.sigmas, a.chips, a.images, out, a.seed, progress=not a.no_progress))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
