"""The shipped checkpoints: the exact training command of each, a driver that (re)trains them, and their table.

    python -m cim_gym.backbones.shipped train --dataset digits         # train (or resume) every digits checkpoint
    python -m cim_gym.backbones.shipped table                          # Markdown table of the shipped sidecars

Each entry is a list of arguments to ``python -m cim_gym.backbones.train`` (``--ship`` is added: the checkpoint
goes into ``cim_gym/backbones/weights``). Runs go one at a time; an interrupted one resumes from its run folder.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from cim_gym.backbones.checkpoint import SHIPPED_DIR

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
    args = p.parse_args(argv)
    if args.cmd == "table":
        print(table())
        return 0
    names = args.name or [n for n in SHIPPED if args.dataset is None or n.startswith(args.dataset + "-resnet")]
    unknown = [n for n in names if n not in SHIPPED]
    if unknown:
        p.error(f"unknown checkpoint(s) {unknown}; known: {list(SHIPPED)}")
    if not names:
        p.error(f"--dataset {args.dataset!r} has no shipped checkpoints; data sets: "
                f"{sorted({n.rsplit('-resnet', 1)[0] for n in SHIPPED})}")
    train(names, args.threads, args.skip_existing, None if args.out is None else Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
