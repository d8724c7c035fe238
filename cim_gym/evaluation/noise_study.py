"""How depth and noise interact: accuracy of every backbone depth vs the level of each noise source.

    python -m cim_gym.evaluation.noise_study --dataset fashion-mnist --depths 8 20 32 56 --chips 5
    python -m cim_gym.evaluation.noise_study --depths 20 56 --recipes standard no-stochastic-depth seed1

For each training recipe and depth (a shipped or cached block-drop backbone, all blocks run; a multi-exit one with
``--variant multiexit``: its last exit) and each noise source of the simulator, programme ``--chips`` chips per level
(seeds 0..chips-1, the same seeds for every backbone) and measure test accuracy on a fixed subset of the test split:

- ``programming``: programming variation sigma (per cell, fixed per chip; ``CIMConfig.variation``, relative);
- ``read``: cycle-to-cycle read noise (relative, drawn at every forward call and shared by the images of that
  call: evaluated in batches of 25 images so that each point averages many draws);
- ``output``: Yang & Sze's additive output noise (fraction of each layer's calibrated output range);
- ``adc``: ADC precision in bits, calibrated range, no other noise (deterministic: one chip per level).

Everything else is the backbone's own quantization config (ideal ADC, no drift) unless ``--preset`` names a hardware
preset. Output and ADC ranges are calibrated on the first ``--calibration-images`` training images of the data set's
split seed 0, the same images for every backbone (a second training seed splits differently). Writes ``<out>.csv``
(one row per backbone, source, level, chip) and ``<out>.png`` (mean and range over chips), and prints one Markdown
table per source (mean over chips; ``--replot`` redraws both from the CSV).
Nothing is tuned toward an expected outcome: the levels are fixed grids given on the command line.

A point is measured once: ``--reuse`` names CSVs of earlier studies (a cut-short one's ``<out>.csv.partial``, or a
study of other recipes) whose rows are copied where everything that decides the number matches (backbone weights'
SHA-256, source, level, chip seed, image count, preset, calibration images); every other point is measured.

Unlike a sigma sweep (:mod:`cim_gym.evaluation.sweep`), a level here is not always a noise std (ADC bits), read
noise is evaluated in small batches to average many draws, and chip seeds are 0..chips-1 (the seeds of the recorded
studies in ``benchmarks/results``); the test images come from the same :func:`~cim_gym.evaluation.sweep.image_subset`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cim_gym.files import atomic_write

DEFAULT_LEVELS: dict[str, list[float]] = {
    "programming": [0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15],
    "read": [0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1],
    "output": [0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1],
    "adc": [16, 8, 7, 6, 5, 4],  # 16 bits: nearly no rounding, what is left is clipping at the calibrated range
}
SOURCES = tuple(DEFAULT_LEVELS)
READ_NOISE_BATCH = 25
FIELDS = ["dataset", "depth", "variant", "recipe", "source", "level", "chip_seed", "accuracy", "n_images", "seconds",
          "backbone_sha256", "preset", "calibration_images"]
# what decides a point's accuracy: a row of an earlier study with the same values is reused, not remeasured
POINT_KEY = ("dataset", "backbone_sha256", "variant", "source", "level", "chip_seed", "n_images", "preset",
             "calibration_images")
BackboneKey = tuple[int, str]
"""(depth, recipe) of one backbone of a study."""


def chip_config(base: Any, source: str, level: float) -> tuple[Any, float]:
    """(config, sigma for ``program``) of one point of the sweep."""
    from cim_gym.hardware.config import NOISE_SOURCES

    if source in NOISE_SOURCES:  # the hardware's one mapping of noise source -> config field
        return base.scaled(source, float(level)), float(level) if source == "programming" else 0.0
    if source == "adc":
        return base.replace(adc_bits=int(level)), 0.0
    raise ValueError(f"source={source!r} is not allowed: expected one of {SOURCES}")


def chips_at(source: str, level: float, chips: int) -> int:
    """Chips measured at one point: one where nothing is random (ADC, or a zero noise level)."""
    return 1 if source == "adc" or float(level) == 0.0 else chips


def point_key(row: dict[str, Any]) -> tuple[str, ...]:
    """The row's :data:`POINT_KEY` values as text, levels as numbers (``0.10`` and ``0.1`` are one level)."""
    return tuple(f"{float(row[k]):g}" if k == "level" else str(row[k]) for k in POINT_KEY)


def reusable_rows(paths: Sequence[Path]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Rows of earlier studies by point; rows of CSVs older than the backbone hash column cannot be matched."""
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("backbone_sha256"):
                    found.setdefault(point_key(row), row)
    return found


def subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed random subset of ``n`` test indices (all of them when n <= 0 or n >= len): the sweeps' rule."""
    from cim_gym.evaluation.sweep import image_subset

    return torch.as_tensor(image_subset(len(labels), n, seed))


def load_backbones(dataset: str, depths: Sequence[int], variant: str = "blockdrop",
                   recipes: Sequence[str] = ("standard",), folder: str | None = None) -> list[tuple[BackboneKey, Any]]:
    """((depth, recipe), backbone) of every recipe and depth, all loaded before a study starts: a missing or malformed
    one fails in seconds (``load_backbone``'s ValueError or BackboneNotFoundError), not hours into it."""
    from cim_gym.backbones import load_backbone

    return [((depth, recipe), load_backbone(dataset, depth=depth, variant=variant, recipe=recipe, folder=folder))
            for recipe in recipes for depth in depths]


def run_study(
    dataset: str,
    backbones: Sequence[tuple[BackboneKey, Any]],
    sources: Sequence[str],
    levels: dict[str, list[float]],
    chips: int,
    images: int,
    images_exact: int,
    calibration_images: int,
    preset: str | None,
    out: Path,
    reuse: dict[tuple[str, ...], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    from cim_gym.backbones.train import evaluate
    from cim_gym.data import load_dataset
    from cim_gym.hardware import get_preset
    from cim_gym.hardware.chip import calibrate, program

    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    data = None
    # rows go to a ".partial" file as they come (a long study can be watched); it replaces the CSV only when done
    csv_path, partial = out.with_suffix(".csv"), out.with_suffix(".csv.partial")
    reuse = reuse or {}
    points = len(backbones) * sum(chips_at(s, v, chips) for s in sources for v in levels[s])
    with open(partial, "w", newline="") as f, tqdm(total=points, desc=f"{dataset} noise study", unit="chip") as bar:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for (depth, recipe), bb in backbones:
            if data is None:  # split seed 0 whatever the backbone's: every backbone calibrates on the same images
                data = load_dataset(dataset, val_fraction=bb.meta["dataset"]["val_fraction"], seed=0)
            base = get_preset(preset).replace(weight_bits=bb.quant_config.weight_bits,
                                              input_bits=bb.quant_config.input_bits) if preset else bb.quant_config
            calib = data.train.images[:calibration_images]
            for source in sources:
                cal = None  # calibrated when a point is first measured: a fully reused source needs none
                n = images_exact if source in ("read", "adc") else images
                idx = subset(data.test.labels, n)
                x, y = data.test.images[idx], data.test.labels[idx]
                for level in levels[source]:
                    cfg, sigma = chip_config(base, source, level)
                    for seed in range(chips_at(source, level, chips)):
                        row = {"dataset": dataset, "depth": depth, "variant": bb.variant, "recipe": recipe,
                               "source": source, "level": level, "chip_seed": seed, "n_images": len(y),
                               "backbone_sha256": bb.meta["sha256"][:16], "preset": preset or "",
                               "calibration_images": calibration_images}
                        earlier = reuse.get(point_key(row))
                        if earlier is not None:
                            row.update(accuracy=earlier["accuracy"], seconds=earlier["seconds"])
                        else:
                            if cal is None:
                                cal = calibrate(bb.model, chip_config(base, source, levels[source][0])[0], calib)
                            t0 = time.perf_counter()
                            chip = program(bb.model, cfg, sigma=sigma, seed=seed, calibration=cal)
                            # read noise is drawn once per forward call (shared by a batch): small batches give more
                            # independent draws; the expected accuracy is the same either way
                            bs = READ_NOISE_BATCH if source == "read" else 500
                            acc = float(evaluate(chip, x, y, batch_size=bs).flatten()[-1])
                            row.update(accuracy=round(acc, 3), seconds=round(time.perf_counter() - t0, 2))
                        writer.writerow(row)
                        f.flush()
                        rows.append(row)
                        bar.write(json.dumps(row))
                        bar.update()
    os.replace(partial, csv_path)
    plot(rows, out.with_suffix(".png"))
    return rows


def backbone_of(row: dict[str, Any]) -> BackboneKey:
    return int(row["depth"]), row.get("recipe") or "standard"  # rows of older CSVs have no recipe: the standard one


def label(backbone: BackboneKey) -> str:
    """``ResNet-<depth>``, followed by the recipe unless it is the standard one."""
    depth, recipe = backbone
    return f"ResNet-{depth}" + ("" if recipe == "standard" else f" ({recipe})")


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[BackboneKey, list[tuple[float, float, float, float, int]]]]:
    """source -> backbone -> [(level, mean, min, max, chips)] over chips, sources and backbones in row order."""
    groups: dict[str, dict[BackboneKey, dict[float, list[float]]]] = {}
    for r in rows:
        by_level = groups.setdefault(r["source"], {}).setdefault(backbone_of(r), {})
        by_level.setdefault(float(r["level"]), []).append(float(r["accuracy"]))
    return {source: {bb: [(lv, sum(a) / len(a), min(a), max(a), len(a)) for lv, a in by_level.items()]
                     for bb, by_level in per_bb.items()} for source, per_bb in groups.items()}


def markdown(rows: list[dict[str, Any]]) -> str:
    """One Markdown table per noise source: mean test accuracy (%) over the chips of each point."""
    parts = []
    for source, per_bb in summarize(rows).items():
        levels = list(dict.fromkeys(p[0] for pts in per_bb.values() for p in pts))  # a cut-short study: "-" cells
        images = next(r["n_images"] for r in rows if r["source"] == source)
        chips = max(p[4] for pts in per_bb.values() for p in pts)
        over = f"over {chips} chips per point (one at level 0: nothing is random)" if chips > 1 else "one chip per point"
        head = [f"{source}: test accuracy (%), {over}, {images} test images", "",
                "| backbone | " + " | ".join(f"{lv:g}" for lv in levels) + " |", "| --- |" + " --- |" * len(levels)]
        body = []
        for bb, pts in per_bb.items():
            mean = {p[0]: p[1] for p in pts}
            body.append(f"| {label(bb)} | " + " | ".join(f"{mean[lv]:.1f}" if lv in mean else "-" for lv in levels) + " |")
        parts.append("\n".join(head + body))
    return "\n\n".join(parts)


def parse_point(text: str) -> tuple[str, float]:
    """``source=level`` (e.g. ``programming=0.1``) of ``--at``."""
    source, _, level = text.partition("=")
    try:
        value = float(level)
    except ValueError:
        value = float("nan")
    if source not in SOURCES or not value >= 0:
        raise ValueError(f"--at {text!r} is not allowed: expected SOURCE=LEVEL with SOURCE one of {SOURCES} and "
                         "LEVEL a number >= 0, e.g. programming=0.1")
    return source, value


def table_at(rows: list[dict[str, Any]], points: Sequence[tuple[str, float]]) -> str:
    """One Markdown table, a row per backbone and a column per (source, level): mean accuracy over the chips, "-"
    where the study has no such point; the first column is the clean accuracy (the first source's level 0)."""
    summary = summarize(rows)
    backbones = list(dict.fromkeys(backbone_of(r) for r in rows))
    first = next(iter(summary))
    cols = [(first, 0.0), *points]
    head = ["| backbone | clean | " + " | ".join(f"{s} {lv:g}" for s, lv in points) + " |",
            "| --- |" + " --- |" * len(cols)]
    body = []
    for bb in backbones:
        cells = []
        for source, level in cols:
            mean = {p[0]: p[1] for p in summary.get(source, {}).get(bb, [])}
            cells.append(f"{mean[level]:.1f}" if level in mean else "-")
        body.append(f"| {label(bb)} | " + " | ".join(cells) + " |")
    return "\n".join(head + body)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    sources = [s for s in SOURCES if s in summary]
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.6), squeeze=False)
    labels = {"programming": "programming variation sigma", "read": "read noise (relative std)",
              "output": "output noise (fraction of range)", "adc": "ADC bits"}
    backbones = list(dict.fromkeys(backbone_of(r) for r in rows))
    depths = sorted({bb[0] for bb in backbones})
    recipes = list(dict.fromkeys(bb[1] for bb in backbones))
    for ax, source in zip(axes[0], sources):
        for bb, pts in summary[source].items():
            lv = [p[0] for p in pts]
            if source == "adc":  # bit counts as evenly spaced categories, finest first
                bits = sorted(lv, reverse=True)
                ax.set_xticks(range(len(bits)), [f"{b:g}" for b in bits])
                lv = [bits.index(b) for b in lv]
            style = dict(color=f"C{depths.index(bb[0]) % 10}", linestyle=["-", "--", ":", "-."][recipes.index(bb[1]) % 4])
            ax.plot(lv, [p[1] for p in pts], marker="o", label=label(bb), **style)
            ax.fill_between(lv, [p[2] for p in pts], [p[3] for p in pts], alpha=0.15, color=style["color"])
        ax.set_xlabel(labels[source])
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{path.stem}: accuracy vs noise by backbone (mean, band = min..max over chips)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cim_gym.evaluation.noise_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", help="data set of the backbones (default fashion-mnist)")
    p.add_argument("--depths", type=int, nargs="+", default=[8, 20, 32, 56], help="backbone depths (default 8 20 32 56)")
    p.add_argument("--variant", default="blockdrop", help="backbone variant (default blockdrop)")
    p.add_argument("--recipes", nargs="+", default=["standard"],
                   help="training recipes of the backbones, e.g. standard no-stochastic-depth seed1 (default standard)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="load the backbones from this folder only (default: shipped, then the user cache)")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES, help="noise sources (default all)")
    for source in SOURCES:
        p.add_argument(f"--{source}-levels", type=float, nargs="+", default=DEFAULT_LEVELS[source],
                       help=f"levels of {source} (default {' '.join(map(str, DEFAULT_LEVELS[source]))})")
    p.add_argument("--chips", type=int, default=5, help="chips (seeds) per noisy level")
    p.add_argument("--images", type=int, default=2000, help="test images per point, fast path (0: all)")
    p.add_argument("--images-exact", type=int, default=500, help="test images per point for read noise and ADC (0: all)")
    p.add_argument("--calibration-images", type=int, default=1024,
                   help="training images that calibrate output and ADC ranges (min/max: too few clip later images)")
    p.add_argument("--preset", default=None, help="hardware preset as the base config (default: the backbone's)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help="output path without suffix (default benchmarks/results/"
                   "noise_study_<dataset>, then _<variant> unless blockdrop, then _<recipes> unless standard)")
    p.add_argument("--reuse", nargs="+", type=Path, default=[], metavar="CSV",
                   help="CSVs of earlier studies (e.g. a cut-short <out>.csv.partial): their matching points are "
                        "copied, not remeasured")
    p.add_argument("--at", nargs="+", default=[], metavar="SOURCE=LEVEL",
                   help="also print one table of these points, a row per backbone (e.g. programming=0.1 adc=5)")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG and print the tables from the CSV")
    a = p.parse_args(argv)
    for name, least in (("chips", 1), ("images", 0), ("images_exact", 0), ("calibration_images", 1), ("threads", 0)):
        if getattr(a, name) < least:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)} is not allowed: expected an integer >= {least}")
    for source in ("programming", "read", "output"):
        bad = [v for v in getattr(a, f"{source}_levels") if not 0 <= v < float("inf")]
        if bad:
            p.error(f"--{source}-levels {bad[0]} is not allowed: expected finite numbers >= 0")
    bad = [v for v in a.adc_levels if v != int(v) or not 1 <= v <= 32]
    if bad:
        p.error(f"--adc-levels {bad[0]} is not allowed: expected whole numbers of bits from 1 to 32")
    try:
        points = [parse_point(text) for text in a.at]
    except ValueError as exc:
        p.error(str(exc))
    if a.threads:
        torch.set_num_threads(a.threads)
    suffix = ("" if a.variant == "blockdrop" else f"_{a.variant}") + (
        "" if a.recipes == ["standard"] else "_" + "_".join(a.recipes))
    out = Path(a.out) if a.out else Path("benchmarks") / "results" / f"noise_study_{a.dataset}{suffix}"
    if a.replot:
        if a.reuse:  # a replot measures nothing, so there is nothing to reuse: say so rather than ignore it
            p.error("--reuse is not allowed with --replot: --replot only redraws the study at --out from its CSV")
        if not out.with_suffix(".csv").is_file():
            p.error(f"--replot: no study at {out.with_suffix('.csv')} (--out names it without the suffix)")
        with open(out.with_suffix(".csv")) as f:
            rows = list(csv.DictReader(f))
        plot(rows, out.with_suffix(".png"))
    else:
        missing = [str(path) for path in a.reuse if not path.is_file()]
        if missing:
            p.error(f"--reuse {missing[0]} is not allowed: no such file (expected the CSV of an earlier study)")
        reuse = reusable_rows(a.reuse)  # read before the study opens (and truncates) its own .partial file
        levels = {s: getattr(a, f"{s}_levels") for s in SOURCES}
        levels["adc"] = [int(v) for v in levels["adc"]]
        try:
            backbones = load_backbones(a.dataset, a.depths, a.variant, a.recipes, a.checkpoint_dir)
        except (ValueError, FileNotFoundError) as exc:  # load_backbone's message names what is wrong and what exists
            p.error(str(exc))
        rows = run_study(a.dataset, backbones, a.sources, levels, a.chips, a.images, a.images_exact,
                         a.calibration_images, a.preset, out, reuse)
    print(markdown(rows))
    if points:
        print("\n" + table_at(rows, points))
    print(f"\nwrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
