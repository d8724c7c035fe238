"""The shipped checkpoints: the exact training command of each, a driver that (re)trains them, and their table.

    python -m cim_gym.backbones.shipped train --dataset digits         # train (or resume) every digits checkpoint
    python -m cim_gym.backbones.shipped table                          # Markdown table of the shipped sidecars
    python -m cim_gym.backbones.shipped sigma-table                    # their accuracy on noisy chips

Each entry is a list of arguments to ``python -m cim_gym.backbones.train`` (``--ship`` is added: the checkpoint
goes into ``cim_gym/backbones/weights``). Runs go one at a time; an interrupted one resumes from its run folder.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cim_gym.backbones.checkpoint import SHIPPED_DIR, atomic_write

DIGITS_COMMON = "--dataset digits --epochs 60 --batch-size 64 --seed 0"
# Digits were trained with --threads 2 (QAT throughout). Fashion-MNIST: one recipe for every depth -- random crop +
# flip, stochastic depth (block-drop), float pretraining for 10 epochs then a 2-epoch quantization-aware finetune at
# the tail of one cosine schedule (a QAT step costs ~1.6x a float step: benchmarks/bench_training.py), trained with
# --threads 1 (2 CPU cores shared with other jobs). Weights are bitwise reproducible for the same torch build and
# thread count. The multi-exit one is a ResNet-32: a multi-exit ResNet-56 epoch costs ~1.8x as much and did not fit.
FASHION_COMMON = "--dataset fashion-mnist --epochs 12 --float-epochs 10 --batch-size 128 --seed 0"

SHIPPED: dict[str, str] = {
    "digits-resnet8-blockdrop": f"{DIGITS_COMMON} --depth 8 --variant blockdrop",
    "digits-resnet14-blockdrop": f"{DIGITS_COMMON} --depth 14 --variant blockdrop",
    "digits-resnet20-blockdrop": f"{DIGITS_COMMON} --depth 20 --variant blockdrop",
    "digits-resnet32-blockdrop": f"{DIGITS_COMMON} --depth 32 --variant blockdrop",
    "digits-resnet56-blockdrop": f"{DIGITS_COMMON} --depth 56 --variant blockdrop",
    "digits-resnet32-multiexit": f"{DIGITS_COMMON} --depth 32 --variant multiexit",
    "fashion-mnist-resnet8-blockdrop": f"{FASHION_COMMON} --depth 8 --variant blockdrop",
    "fashion-mnist-resnet20-blockdrop": f"{FASHION_COMMON} --depth 20 --variant blockdrop",
    "fashion-mnist-resnet32-blockdrop": f"{FASHION_COMMON} --depth 32 --variant blockdrop",
    "fashion-mnist-resnet56-blockdrop": f"{FASHION_COMMON} --depth 56 --variant blockdrop",
    "fashion-mnist-resnet32-multiexit": f"{FASHION_COMMON} --depth 32 --variant multiexit",
}
"""Name -> training arguments of every shipped checkpoint (the recorded commands), in training order."""


def command(name: str) -> str:
    return f"python -m cim_gym.backbones.train {SHIPPED[name]} --ship"


def train(names: Sequence[str], threads: int, skip_existing: bool = False, out: Path | None = None) -> None:
    """Train (or resume) ``names`` one after the other into the package (or ``out``), with ``threads`` torch threads."""
    from cim_gym.backbones.train import main

    for name in names:
        if skip_existing and (SHIPPED_DIR / f"{name}.json").is_file():
            print(f"=== {name}: already shipped, skipped", flush=True)
            continue
        args = shlex.split(SHIPPED[name]) + (["--ship"] if out is None else ["--out", str(out)]) + ["--no-progress"]
        if threads:
            args += ["--threads", str(threads)]
        print(f"=== {name}: {command(name)}", flush=True)
        main(args)


def table() -> str:
    """Markdown table of every shipped sidecar: clean test accuracy, random-mask accuracy, per-exit accuracy, command."""
    rows = ["| checkpoint | blocks / exits | clean test acc. (%) | keep 1/3 of blocks | keep 2/3 of blocks | "
            "per-exit test acc. (%) | epochs | command |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in SHIPPED:
        path = SHIPPED_DIR / f"{name}.json"
        if not path.is_file():
            rows.append(f"| {name} | | (not trained yet) | | | | | `{command(name)}` |")
            continue
        meta = json.loads(path.read_text())
        acc, arch = meta["accuracy"], meta["architecture"]
        def fmt(key: str) -> str:
            d = acc.get(key)
            return f"{d['mean']:.1f} ± {d['std']:.1f} ({d['keep']}/{d['of']})" if d else "-"
        exits = " / ".join(f"{v:.1f}" for v in acc.get("test_per_exit", [])) or "-"
        size = f"{arch['num_blocks']} blocks" + (f", {arch['num_exits']} exits" if "num_exits" in arch else "")
        rows.append(f"| {name} | {size} | {acc['test']:.2f} | {fmt('test_keep_1_3')} | {fmt('test_keep_2_3')} | "
                    f"{exits} | {meta['training']['settings']['epochs']} | `{command(name)}` |")
    return "\n".join(rows)


def sigma_table(names: Sequence[str], sigmas: Sequence[float], chips: int, images: int, out: Path) -> str:
    """Test accuracy of shipped checkpoints on noisy chips (programming variation, seeds 0..chips-1; mean, min and
    max over chips), written to ``out`` (CSV) and returned as a Markdown table. Multi-exit: the last exit."""
    import csv

    import torch
    from tqdm import tqdm

    from cim_gym.backbones import load_backbone
    from cim_gym.backbones.noise_study import subset
    from cim_gym.backbones.train import evaluate
    from cim_gym.data import load_dataset
    from cim_gym.hardware.chip import calibrate, program

    rows, md = [], ["| checkpoint | test images | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " |",
                    "| --- | --- | " + " | ".join("---" for _ in sigmas) + " |"]
    bar = tqdm(total=len(names) * sum(chips if s > 0 else 1 for s in sigmas), desc="sigma table", unit="chip")
    datasets: dict[tuple, Any] = {}  # checkpoints of one data set share its (slow to read) splits
    for name in names:
        bb = load_backbone(name)
        m = bb.meta["dataset"]
        key = (m["name"], m["val_fraction"], m["split_seed"])
        if key not in datasets:
            datasets[key] = load_dataset(m["name"], val_fraction=m["val_fraction"], seed=m["split_seed"])
        data = datasets[key]
        idx = subset(data.test.labels, images)
        x, y = data.test.images[idx], data.test.labels[idx]
        cal = calibrate(bb.model, bb.quant_config, data.train.images[:256])
        cells = []
        for sigma in sigmas:
            accs = []
            for seed in range(chips if sigma > 0 else 1):
                chip = program(bb.model, bb.quant_config, sigma=sigma, seed=seed, calibration=cal)
                with torch.no_grad():
                    accs.append(float(evaluate(chip, x, y, batch_size=500).flatten()[-1]))
                rows.append({"name": name, "sigma": sigma, "chip_seed": seed, "accuracy": round(accs[-1], 3),
                             "n_images": len(y)})
                bar.update()
            mean = sum(accs) / len(accs)
            cells.append(f"{mean:.1f}" + (f" ({min(accs):.1f}-{max(accs):.1f})" if len(accs) > 1 else ""))
        md.append(f"| {name} | {len(y)} | " + " | ".join(cells) + " |")
        bar.write(md[-1])
    bar.close()

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["name", "sigma", "chip_seed", "accuracy", "n_images"])
            writer.writeheader()
            writer.writerows(rows)

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, write)
    return "\n".join(md)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cim_gym.backbones.shipped", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (or resume) shipped checkpoints, one at a time")
    t.add_argument("--dataset", default=None, help="only this data set's checkpoints")
    t.add_argument("--name", nargs="+", default=None, help="only these checkpoints")
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--skip-existing", action="store_true", help="skip checkpoints already in the package")
    t.add_argument("--out", default=None,
                   help="write the checkpoints to this folder instead of the package (check them, then copy them in)")
    sub.add_parser("table", help="print the Markdown table of the shipped checkpoints")
    st = sub.add_parser("sigma-table", help="accuracy of shipped checkpoints on noisy chips (programming variation)")
    st.add_argument("--dataset", default=None, help="only this data set's checkpoints")
    st.add_argument("--name", nargs="+", default=None, help="checkpoints (default: every shipped one)")
    st.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    st.add_argument("--chips", type=int, default=5)
    st.add_argument("--images", type=int, default=2000, help="test images (fixed random subset; 0: all)")
    st.add_argument("--out", default=None, help="CSV path (default benchmarks/results/shipped_sigma_<dataset>.csv)")
    st.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.cmd == "table":
        print(table())
        return 0
    if args.cmd == "sigma-table":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
    names = args.name or [n for n in SHIPPED if args.dataset is None or n.startswith(args.dataset + "-resnet")]
    unknown = [n for n in names if n not in SHIPPED]
    if unknown:
        p.error(f"unknown checkpoint(s) {unknown}; known: {list(SHIPPED)}")
    if not names:
        p.error(f"--dataset {args.dataset!r} has no shipped checkpoints; data sets: "
                f"{sorted({n.rsplit('-resnet', 1)[0] for n in SHIPPED})}")
    if args.cmd == "sigma-table":
        names = [n for n in names if (SHIPPED_DIR / f"{n}.json").is_file()]
        out = Path(args.out or f"benchmarks/results/shipped_sigma_{args.dataset or 'all'}.csv")
        print(sigma_table(names, args.sigmas, args.chips, args.images, out))
        return 0
    train(names, args.threads, args.skip_existing, None if args.out is None else Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
