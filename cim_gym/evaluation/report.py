"""The report of a sweep: a tidy CSV, a Markdown summary and PNG plots, next to the sweep's config.json.

- ``results.csv``: one row per (method, sigma, chip): accuracy, blocks or exit used, MACs on the chip, decision MACs
  (digital feature encoder + policy network), their total, energy and latency on the chip, chip seed and chip
  fingerprint. Oracle rows (role "oracle") name the method they picked in ``choice``.
- ``summary.md``: per method and sigma the mean and 95 % interval over chips; per method the grid mean and the
  worst sigma; compute; paired differences (per chip) of every noise-aware, sigma-hidden and oracle method
  against every baseline, and of each fixed depth against the next shallower one; what observing sigma or the chip
  buys (each policy against its less-observing twin, per chip and across training seeds); each policy's distance to
  each oracle; where the noise-aware methods do not win.
- ``accuracy_vs_sigma.png`` (bands: 95 % intervals over chips), ``compute_vs_sigma.png``, ``pareto.png`` (per
  sigma, accuracy against total MACs, the Pareto front drawn), ``path_vs_sigma.png`` (blocks run or exit taken by
  each dynamic method per sigma).

Oracles pick among the methods' results on the test chips, so they are upper bounds, not methods: the best fixed
depth per sigma and the best static path (fixed depth or static mask) per sigma (what knowing sigma alone buys),
the best static path per chip (what knowing the chip buys), and the per-image oracle (an image counts as correct
when any method got it right on that chip). Where noise is drawn anew at every forward (read or output noise), the
per-image oracle would count lucky draws, so it is left out and the summary says so.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cim_gym.evaluation.stats import Interval, mean_interval, paired_interval

__all__ = ["FIELDS", "oracle_rows", "read_csv", "split_seed", "summary_markdown", "tidy_rows", "write_report"]

FIELDS = ["method", "role", "family", "backbone", "sigma", "sigma_index", "chip", "chip_seed", "chip_fingerprint",
          "accuracy", "n_images", "blocks", "exit", "usage", "backbone_macs", "decision_macs", "total_macs",
          "energy_pj", "latency_ns", "choice"]
ORACLE_FIXED_SIGMA = "oracle-best-fixed-depth-per-sigma"
ORACLE_STATIC_SIGMA = "oracle-best-static-path-per-sigma"
ORACLE_STATIC_CHIP = "oracle-best-static-path-per-chip"
ORACLE_IMAGE = "oracle-per-image"
STATIC_FAMILIES = ("fixed", "static-mask")


def tidy_rows(result: Any) -> list[dict[str, Any]]:
    """One row per (method, sigma, chip) from the sweep's cells (methods only, no oracles)."""
    meta = {m["name"]: m for m in result.config["sweep"]["methods"]}
    rows = []
    for cell in result.cells:
        for name, r in cell["methods"].items():
            rows.append({"method": name, "role": meta[name]["role"], "family": meta[name]["family"],
                         "backbone": cell["backbone"], "sigma": cell["sigma"], "sigma_index": cell["key"][2],
                         "chip": cell["chip"], "chip_seed": cell["chip_seed"], "chip_fingerprint": cell["fingerprint"],
                         "accuracy": r["accuracy"], "n_images": cell["n_images"], "blocks": r["blocks"], "exit": r["exit"],
                         "usage": r["usage"], "backbone_macs": r["backbone_macs"], "decision_macs": r["decision_macs"],
                         "total_macs": r["total_macs"], "energy_pj": r["energy_pj"], "latency_ns": r["latency_ns"],
                         "choice": ""})
    order = {name: i for i, name in enumerate(meta)}  # the sweep's method order
    return sorted(rows, key=lambda r: (order[r["method"]], r["sigma_index"], r["chip"]))


def _by(rows: Sequence[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def _pick(name: str, chosen: dict[str, Any]) -> dict[str, Any]:
    return {**chosen, "method": name, "role": "oracle", "family": "oracle", "choice": chosen["method"]}


def _best(candidates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Most accurate; ties go to the cheaper (fewer total MACs), then to the name."""
    return min(candidates, key=lambda r: (-r["accuracy"], r["total_macs"], r["method"]))


def _best_per_sigma(name: str, rows: Sequence[dict[str, Any]], families: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for (_s,), group in sorted(_by([r for r in rows if r["family"] in families], "sigma_index").items()):
        means = {m: (np.mean([r["accuracy"] for r in g]), np.mean([r["total_macs"] for r in g]))
                 for (m,), g in _by(group, "method").items()}
        chosen = min(means, key=lambda m: (-means[m][0], means[m][1], m))
        out += [_pick(name, r) for r in sorted(group, key=lambda r: r["chip"]) if r["method"] == chosen]
    return out


def oracle_rows(result: Any, rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The oracle rows and notes on what was left out."""
    from cim_gym.evaluation.sweep import SweepSpec

    out: list[dict[str, Any]] = []
    notes: list[str] = []
    families = {r["family"] for r in rows}
    if "fixed" in families:
        out += _best_per_sigma(ORACLE_FIXED_SIGMA, rows, ("fixed",))
    if families & set(STATIC_FAMILIES):
        out += _best_per_sigma(ORACLE_STATIC_SIGMA, rows, STATIC_FAMILIES)
        for _key, group in sorted(_by([r for r in rows if r["family"] in STATIC_FAMILIES], "sigma_index", "chip").items()):
            out.append(_pick(ORACLE_STATIC_CHIP, _best(group)))
    spec = SweepSpec(**result.config["sweep"]["spec"])
    if spec.per_read_noise():
        notes.append(f"{ORACLE_IMAGE} is not reported: noise is drawn anew at every forward here, so the best of many "
                     "paths per image would count lucky draws (see the evaluation protocol).")
        return out, notes
    by_cell: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for cell in result.cells:
        by_cell[(cell["key"][2], cell["key"][3])].append(cell)
    for (s, c), cells in sorted(by_cell.items()):
        correct = np.array([m["correct"] for cell in cells for m in cell["methods"].values()], dtype=bool)
        macs = np.array([m["image_macs"] for cell in cells for m in cell["methods"].values()], dtype=np.float64)
        any_correct = correct.any(0)
        cheapest = np.where(any_correct, np.where(correct, macs, np.inf).min(0), macs.min(0))
        first = cells[0]
        out.append({"method": ORACLE_IMAGE, "role": "oracle", "family": "oracle", "backbone": "any",
                    "sigma": first["sigma"], "sigma_index": s, "chip": c, "chip_seed": first["chip_seed"],
                    "chip_fingerprint": "", "accuracy": 100.0 * float(any_correct.mean()), "n_images": first["n_images"],
                    "blocks": None, "exit": None, "usage": None, "backbone_macs": float(cheapest.mean()),
                    "decision_macs": 0, "total_macs": float(cheapest.mean()), "energy_pj": None, "latency_ns": None,
                    "choice": "any method, per image"})
    return out, notes


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else ""
    return v


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _fmt(r[k]) for k in FIELDS})
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a results.csv (strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _Table:
    """Per-method arrays over (sigma index, chip) of one metric, for intervals and paired differences."""

    def __init__(self, rows: Sequence[dict[str, Any]], sigmas: Sequence[float], chips: int, metric: str) -> None:
        self.sigmas = list(sigmas)
        self.values: dict[str, np.ndarray] = {}
        for (m,), group in _by(rows, "method").items():
            a = np.full((len(sigmas), chips), np.nan)
            for r in group:
                a[r["sigma_index"], r["chip"]] = r[metric]
            self.values[m] = a

    def at(self, method: str, s: int) -> Interval:
        return mean_interval(self.values[method][s])

    def grid(self, method: str) -> Interval:
        return mean_interval(self.values[method].mean(0))  # per chip number: mean over the grid (independent chips)

    def paired(self, a: str, b: str, s: int | None = None) -> Interval:
        va, vb = self.values[a], self.values[b]
        return paired_interval(va.mean(0), vb.mean(0)) if s is None else paired_interval(va[s], vb[s])


def summary_markdown(result: Any, rows: Sequence[dict[str, Any]], notes: Sequence[str]) -> str:
    """The Markdown summary (see the module docstring)."""
    cfg = result.config
    spec = cfg["sweep"]["spec"]
    sigmas, chips = spec["sigmas"], spec["chips"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    role = {r["method"]: r["role"] for r in rows}
    acc = _Table(rows, sigmas, chips, "accuracy")
    macs = _Table(rows, sigmas, chips, "total_macs")
    head = " | ".join(f"σ {s:g}" for s in sigmas)
    source = {"programming": "programming variation (chip-fixed)", "read": "read noise (drawn at every forward)",
              "output": "output noise (drawn at every forward)"}[spec["noise_source"]]
    lines = [
        f"# Evaluation: {spec['dataset']}, {source}",
        "",
        f"`{cfg['command']}`",
        "",
        f"CIM config `{spec['cim']}`; sigma grid {', '.join(f'{s:g}' for s in sigmas)}; {chips} chips per sigma (seeds "
        f"from ChipPool seed {spec['seed']}, the same chips for every method); {cfg['images']['count']} of "
        f"{cfg['images']['of']} test images, the same for every "
        f"method and chip; cim-gym {cfg['package_version']}. Intervals: 95 % t-intervals over chips.",
        "",
        "Compute per image: **chip MACs** = the backbone's MACs on the chip for the path taken; **decision MACs** = "
        "digital MACs spent choosing it (the frozen feature encoder, i.e. the clean stem and first stage, plus the "
        "policy network; 0 for fixed paths, thresholds and oracles); **total** = both. Energy and latency are the "
        "chip's only. Oracles pick on the test chips: upper bounds, not methods.",
        "",
        f"## Accuracy (%) per sigma, mean ± 95 % interval over {chips} chips",
        "",
        f"| method | role | {head} | grid mean | worst σ |",
        "| --- | --- | " + " | ".join("---" for _ in sigmas) + " | --- | --- |",
    ]
    for m in methods:
        means = [acc.at(m, s).mean for s in range(len(sigmas))]
        worst = int(np.argmin(means))
        cells = " | ".join(acc.at(m, s).format() for s in range(len(sigmas)))
        lines.append(f"| {m} | {role[m]} | {cells} | {acc.grid(m).format()} | {acc.at(m, worst).format()} "
                     f"at σ {sigmas[worst]:g} |")
    lines += ["", "## Compute per image (mean over the grid and chips)", "",
              "| method | blocks run / exit taken (mean; exits count from 0) | chip MACs | decision MACs | total MACs "
              "| chip energy (nJ) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for m in methods:
        group = [r for r in rows if r["method"] == m]
        def mean(key: str, group: list[dict[str, Any]] = group) -> float | None:
            vals = [r[key] for r in group if r[key] is not None]
            return float(np.mean(vals)) if vals else None
        path = (f"{mean('blocks'):.2f} blocks" if mean("blocks") is not None else
                f"exit {mean('exit'):.2f}" if mean("exit") is not None else "-")
        energy = mean("energy_pj")
        lines.append(f"| {m} | {path} | {mean('backbone_macs'):,.0f} | {mean('decision_macs'):,.0f} | "
                     f"{mean('total_macs'):,.0f} | {'-' if energy is None else f'{energy / 1e3:.2f}'} |")
    baselines = [m for m in methods if role[m] == "baseline"]
    candidates = [m for m in methods if role[m] in ("noise-aware", "sigma-hidden", "chip-aware", "oracle")]
    lines += _paired_table("Paired differences in accuracy (points)", "the method minus the baseline on the very "
                           "same chips and images.", "minus", [(m, b) for m in candidates for b in baselines], acc, head)
    family = {r["method"]: r["family"] for r in rows}
    fixed = sorted((m for m in methods if family[m] == "fixed"), key=lambda m: np.nanmean(_blocks_of(rows, m)))
    if len(fixed) > 1:  # the proposal's premise, measured: does the deeper model lose more under noise?
        lines += _paired_table("Deeper against shallower fixed models (points)", "the deeper fixed model minus the "
                               "next shallower one, all blocks run, on the very same chips and images.", "minus",
                               list(zip(fixed[1:], fixed[:-1])), acc, head)
    learned = [m for m in methods if role[m] in ("noise-aware", "sigma-hidden", "chip-aware")]
    oracles = [m for m in methods if role[m] == "oracle"]
    if learned and oracles:
        lines += _paired_table("Distance to the oracles (points)", "the policy minus the oracle on the same chips "
                               "(negative: below the oracle).", "oracle", [(m, o) for m in learned for o in oracles],
                               acc, head)
    lines += _observing_lines(cfg.get("comparisons", []), acc, macs, sigmas, head)
    lines += ["", "## Where the noise-aware methods do not win", ""]
    aware = [m for m in methods if role[m] == "noise-aware"]
    if not aware:
        lines.append("No noise-aware method was evaluated in this sweep (see the skipped methods below), so no claim "
                     "about them can be read from it.")
    for m in aware:
        losses = []
        for s, sigma in enumerate(sigmas):
            beaten_by = [b for b in baselines if acc.at(b, s).mean >= acc.at(m, s).mean
                         and macs.at(b, s).mean <= macs.at(m, s).mean]
            if beaten_by:
                losses.append(f"σ {sigma:g}: {', '.join(beaten_by)}")
        lines.append(f"- **{m}**: " + ("wins or is not dominated at every sigma (no baseline is at least as accurate "
                                       "with no more total MACs)." if not losses else
                                       "a baseline is at least as accurate with no more total MACs at " + "; ".join(losses)))
    lines += ["", "## Pareto front per sigma (mean accuracy against mean total MACs)", ""]
    for s, sigma in enumerate(sigmas):
        pts = {m: (acc.at(m, s).mean, macs.at(m, s).mean) for m in methods if role[m] != "oracle"}
        front = [m for m in pts if not any(o != m and pts[o][0] >= pts[m][0] and pts[o][1] <= pts[m][1]
                                           and pts[o] != pts[m] for o in pts)]
        front.sort(key=lambda m: pts[m][1])
        lines.append(f"- σ {sigma:g}: " + ", ".join(f"{m} ({pts[m][0]:.1f} %, {pts[m][1]:,.0f} MACs)" for m in front))
    if notes or cfg.get("skipped"):
        lines += ["", "## Left out", ""] + [f"- {n}" for n in [*notes, *cfg.get("skipped", [])]]
    return "\n".join(lines) + "\n"


def _blocks_of(rows: Sequence[dict[str, Any]], method: str) -> list[float]:
    """Blocks run by ``method`` in each of its rows (NaN where it has none)."""
    return [float("nan") if r["blocks"] is None else float(r["blocks"]) for r in rows if r["method"] == method]


def split_seed(method: str) -> tuple[str, int]:
    """(method name without its training seed, the seed) for run folders named ``<name>-seed<k>`` (else seed 0)."""
    base, _, seed = method.rpartition("-seed")
    return (base, int(seed)) if base and seed.isdigit() else (method, 0)


def _observing_lines(pairs: Sequence[Sequence[str]], acc: _Table, macs: _Table, sigmas: Sequence[float],
                     head: str) -> list[str]:
    """What observing sigma (or the chip) buys: each method minus its less-observing twin, per chip, then the
    same difference per training seed, so that a gain can be held against the seed-to-seed spread."""
    if not pairs:
        return []
    cols = " | ".join("---" for _ in sigmas)
    lines = ["", "## What observing sigma or the chip buys (points), per chip, mean ± 95 % interval", "",
             "Each row: a policy minus its twin trained identically but observing less, on the same chips and "
             "images; the MACs column is the difference in total MACs per image (grid mean).", "",
             f"| method | minus | observes on top | grid mean | {head} | Δ total MACs |",
             f"| --- | --- | --- | --- | {cols} | --- |"]
    seeds: dict[tuple[str, str, str], dict[int, Interval]] = defaultdict(dict)
    for m, twin, what in pairs:
        per = " | ".join(acc.paired(m, twin, s).format() for s in range(len(sigmas)))
        dmacs = float(np.nanmean(macs.values[m]) - np.nanmean(macs.values[twin]))
        lines.append(f"| {m} | {twin} | {what} | {acc.paired(m, twin).format()} | {per} | {dmacs:+,.0f} |")
        (base, seed), (twin_base, _) = split_seed(m), split_seed(twin)
        seeds[(base, twin_base, what)][seed] = acc.paired(m, twin)
    multi = {k: v for k, v in seeds.items() if len(v) > 1}
    if multi:
        lines += ["", "### The same across training seeds", "",
                  "Grid-mean paired difference per training seed; the spread between seeds is what a difference must "
                  "exceed before it says more than which seed was drawn.", "",
                  "| method | minus | per seed | mean over seeds | seed spread (max - min) |",
                  "| --- | --- | --- | --- | --- |"]
        for (base, twin_base, _what), by_seed in multi.items():
            means = [iv.mean for iv in by_seed.values()]
            per_seed = ", ".join(f"seed {k}: {iv.format()}" for k, iv in sorted(by_seed.items()))
            lines.append(f"| {base} | {twin_base} | {per_seed} | {np.mean(means):+.1f} | {max(means) - min(means):.1f} |")
    return lines


def _paired_table(title: str, note: str, minus: str, pairs: Sequence[tuple[str, str]], acc: _Table,
                  head: str) -> list[str]:
    """A table of per-chip paired differences in accuracy, grid mean and per sigma, one row per (method, other)."""
    cols = " | ".join("---" for _ in acc.sigmas)
    lines = ["", f"## {title}, per chip, mean ± 95 % interval", "", f"Each row: {note}", "",
             f"| method | {minus} | grid mean | {head} |", f"| --- | --- | --- | {cols} |"]
    for m, other in pairs:
        per = " | ".join(acc.paired(m, other, s).format() for s in range(len(acc.sigmas)))
        lines.append(f"| {m} | {other} | {acc.paired(m, other).format()} | {per} |")
    return lines


def _plots(result: Any, rows: Sequence[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cim_gym.files import atomic_write

    spec = result.config["sweep"]["spec"]
    sigmas, chips = spec["sigmas"], spec["chips"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    role = {r["method"]: r["role"] for r in rows}
    family = {r["method"]: r["family"] for r in rows}
    acc, macs = _Table(rows, sigmas, chips, "accuracy"), _Table(rows, sigmas, chips, "total_macs")
    colors = plt.get_cmap("tab10")
    # line style and marker say the family, colour tells methods apart within it
    look = {"fixed": ("-", "o", 1.2), "static-mask": ("-.", "^", 1.2), "entropy-exit": (":", "v", 1.5),
            "policy": ("-", "D", 2.4), "oracle": ("--", "s", 1.2)}
    style = {m: {"color": colors(i % 10), "linestyle": look.get(family[m], ("-", "o", 1.2))[0],
                 "marker": look.get(family[m], ("-", "o", 1.2))[1],
                 "linewidth": look.get(family[m], ("-", "o", 1.2))[2]} for i, m in enumerate(methods)}
    title = f"{spec['dataset']}, {spec['noise_source']} noise, {chips} chips"

    def save(fig: Any, name: str) -> None:
        atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight"))
        plt.close(fig)

    for table, ylabel, name in ((acc, "test accuracy (%)", "accuracy_vs_sigma.png"),
                                (macs, "total MACs per image (chip + decision)", "compute_vs_sigma.png")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for m in methods:
            iv = [table.at(m, s) for s in range(len(sigmas))]
            ax.plot(sigmas, [i.mean for i in iv], label=m, markersize=3, **style[m])
            if table is acc:
                ax.fill_between(sigmas, [i.low for i in iv], [i.high for i in iv], color=style[m]["color"], alpha=0.08)
        ax.set_xlabel(f"sigma ({spec['noise_source']})")
        ax.set_ylabel(ylabel)
        ax.set_title(title + (" (bands: 95 % intervals over chips)" if table is acc else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        save(fig, name)
    _path_plot(methods, family, rows, sigmas, style, title, save)
    cols = min(4, len(sigmas))
    nrows = math.ceil(len(sigmas) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.2 * nrows), squeeze=False)
    for s, sigma in enumerate(sigmas):
        ax = axes[s // cols][s % cols]
        pts = {}
        for m in methods:
            a, c = acc.at(m, s), macs.at(m, s)
            pts[m] = (c.mean, a.mean)
            ax.errorbar(c.mean, a.mean, yerr=a.half_width, color=style[m]["color"], marker=style[m]["marker"],
                        markersize=4, label=m, linestyle="none")
        real = {m: p for m, p in pts.items() if role[m] != "oracle"}
        front = sorted((p for m, p in real.items() if not any(q[0] <= p[0] and q[1] >= p[1] and q != p
                                                                for q in real.values())))
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="k", alpha=0.4, linewidth=1)
        ax.set_title(f"σ = {sigma:g}", fontsize=9)
        ax.set_xlabel("total MACs / image", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for k in range(len(sigmas), nrows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"{title}: accuracy vs compute per sigma (line: Pareto front of the non-oracle methods)", fontsize=10)
    fig.tight_layout()
    save(fig, "pareto.png")


def _path_plot(methods: Sequence[str], family: dict[str, str], rows: Sequence[dict[str, Any]],
               sigmas: Sequence[float], style: dict[str, dict[str, Any]], title: str, save: Any) -> None:
    """path_vs_sigma.png: blocks run (block-drop policies) and exit taken (exit policies, BranchyNet) per sigma."""
    import matplotlib.pyplot as plt

    dynamic = [m for m in methods if family[m] in ("policy", "entropy-exit")]
    series: dict[str, dict[str, list[float]]] = {"blocks": {}, "exit": {}}
    for key, per_method in series.items():
        for m in dynamic:
            per = [[r[key] for r in rows if r["method"] == m and r["sigma_index"] == s and r[key] is not None]
                   for s in range(len(sigmas))]
            if all(per):
                per_method[m] = [float(np.mean(v)) for v in per]
    labels = {"blocks": "residual blocks run (mean)", "exit": "exit taken (mean, from 0)"}
    keys = [k for k in series if series[k]] or ["blocks"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for m, values in series[key].items():
            ax.plot(sigmas, values, label=m, markersize=3, **style[m])
        ax.set_xlabel("sigma")
        ax.set_ylabel(labels[key])
        ax.grid(alpha=0.3)
        if series[key]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}: the path each dynamic method takes", fontsize=10)
    fig.tight_layout()
    save(fig, "path_vs_sigma.png")


def write_report(result: Any) -> list[dict[str, Any]]:
    """Write results.csv, summary.md and the plots into the sweep's folder; returns every row (oracles included)."""
    from cim_gym.files import atomic_write

    rows = tidy_rows(result)
    extra, notes = oracle_rows(result, rows)
    rows = rows + extra
    out = Path(result.out)
    atomic_write(out / "results.csv", lambda tmp: tmp.write_text(_csv_text(rows)))
    md = summary_markdown(result, rows, notes)
    atomic_write(out / "summary.md", lambda tmp: tmp.write_text(md))
    _plots(result, rows, out)
    return rows
