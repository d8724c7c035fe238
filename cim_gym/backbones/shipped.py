"""The shipped checkpoints: the exact training command of each, a driver that (re)trains them, and their table.

    python -m cim_gym.backbones.shipped train --dataset digits         # train (or resume) every digits checkpoint
    python -m cim_gym.backbones.shipped train --name X --out runs/new  # train into a folder, to check first
    python -m cim_gym.backbones.shipped ship --from runs/new --name X  # verify it, then put it in the package
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
# flip, stochastic depth (block-drop), float pretraining for 20 epochs then a 2-epoch quantization-aware finetune at
# the tail of one cosine schedule (a QAT step costs ~1.6x a float step: benchmarks/bench_training.py), trained with
# --threads 1 (2 CPU cores shared with other jobs). Weights are bitwise reproducible for the same torch build and
# thread count. The multi-exit one is a ResNet-32: a multi-exit ResNet-56 epoch costs ~1.8x as much.
FASHION_COMMON = "--dataset fashion-mnist --epochs 22 --float-epochs 20 --batch-size 128"

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
    # the training recipe as a variable (issue 9): stochastic depth off / on, a second seed
    "fashion-mnist-resnet20-blockdrop-no-stochastic-depth": f"{FASHION_COMMON} --depth 20 --variant blockdrop --survival 1.0",
    "fashion-mnist-resnet56-blockdrop-no-stochastic-depth": f"{FASHION_COMMON} --depth 56 --variant blockdrop --survival 1.0",
    "fashion-mnist-resnet32-multiexit-stochastic-depth": f"{FASHION_COMMON} --depth 32 --variant multiexit --survival 0.8",
    "fashion-mnist-resnet20-blockdrop-seed1": f"{FASHION_COMMON} --depth 20 --variant blockdrop --seed 1",
    "fashion-mnist-resnet56-blockdrop-seed1": f"{FASHION_COMMON} --depth 56 --variant blockdrop --seed 1",
}
"""Name -> training arguments of every checkpoint the package ships or is to ship, in training order: what
``train`` runs, and what made each shipped file (its sidecar records the command)."""


def command(name: str) -> str:
    """The command that trains ``name`` into the package."""
    return f"python -m cim_gym.backbones.train {SHIPPED[name]} --ship"


def canonical_command(args: str) -> str:
    """The command a sidecar records for these training arguments (defaults left out, a fixed option order)."""
    from cim_gym.backbones.train import parse_args

    return parse_args(shlex.split(args)).command()


def shipped_command(name: str) -> str | None:
    """The training command the package's checkpoint ``name`` records; None when it is not shipped."""
    path = SHIPPED_DIR / f"{name}.json"
    return json.loads(path.read_text())["training"]["command"] if path.is_file() else None


def train(names: Sequence[str], threads: int, skip_existing: bool = False, out: Path | None = None) -> None:
    """Train (or resume) ``names`` one after the other into the package (or ``out``), with ``threads`` torch threads;
    with ``skip_existing``, leave out those the package holds as made by their current command."""
    from cim_gym.backbones.train import main

    for name in names:
        recorded = shipped_command(name) if skip_existing else None
        if recorded is not None:
            if recorded == canonical_command(SHIPPED[name]):
                print(f"=== {name}: already shipped by its command, skipped", flush=True)
                continue
            print(f"=== {name}: shipped by another command ({recorded}), retrained", flush=True)
        args = shlex.split(SHIPPED[name]) + (["--ship"] if out is None else ["--out", str(out)]) + ["--no-progress"]
        if threads:
            args += ["--threads", str(threads)]
        print(f"=== {name}: {command(name)}", flush=True)
        main(args)


def ship(names: Sequence[str], source: Path, tolerance: float = 0.2) -> None:
    """Copy checkpoints from ``source`` into the package after checking each: it loads (hash, finite tensors,
    architecture), it was trained by its :data:`SHIPPED` command, and it reproduces its recorded clean test accuracy
    within ``tolerance`` points (multi-exit: every exit). Raises ``ValueError`` naming the first check that fails."""
    from cim_gym.backbones import load_backbone, save_checkpoint
    from cim_gym.backbones.train import evaluate
    from cim_gym.data import load_dataset

    for name in names:
        bb = load_backbone(name, folder=source)
        recorded, expected = bb.meta["training"]["command"], canonical_command(SHIPPED[name])
        if recorded != expected:
            raise ValueError(f"{name} in {source} was trained by {recorded!r}, not its shipped command {expected!r}")
        d = bb.meta["dataset"]
        data = load_dataset(d["name"], val_fraction=d["val_fraction"], seed=d["split_seed"], download=False)
        got = evaluate(bb.model, data.test.images, data.test.labels).flatten().tolist()
        want = bb.meta["accuracy"].get("test_per_exit", [bb.meta["accuracy"]["test"]])
        if len(got) != len(want) or any(abs(g - w) > tolerance for g, w in zip(got, want)):
            raise ValueError(f"{name} in {source}: test accuracy {got} does not reproduce the recorded {want}")
        meta = {k: v for k, v in bb.meta.items() if k not in ("file", "sha256")}
        path = save_checkpoint(bb.model, meta, SHIPPED_DIR, name)
        print(f"shipped {path} (test accuracy {got[-1]:.2f} %, recorded {want[-1]:.2f} %)", flush=True)


def table() -> str:
    """Markdown table of every shipped sidecar: clean test accuracy, random-mask accuracy, per-exit accuracy, epochs,
    wall time and command; a checkpoint not shipped yet is a row saying so."""
    rows = ["| checkpoint | blocks / exits | clean test acc. (%) | keep 1/3 of blocks | keep 2/3 of blocks | "
            "per-exit test acc. (%) | epochs (float + QAT) | training time (min) | command |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in SHIPPED:
        path = SHIPPED_DIR / f"{name}.json"
        if not path.is_file():
            rows.append(f"| {name} | | (not trained yet) | | | | | | `{command(name)}` |")
            continue
        meta = json.loads(path.read_text())
        acc, arch, training = meta["accuracy"], meta["architecture"], meta["training"]

        def fmt(key: str) -> str:
            d = acc.get(key)
            return f"{d['mean']:.1f} ± {d['std']:.1f} ({d['keep']}/{d['of']})" if d else "-"

        exits = " / ".join(f"{v:.1f}" for v in acc.get("test_per_exit", [])) or "-"
        size = f"{arch['num_blocks']} blocks" + (f", {arch['num_exits']} exits" if "num_exits" in arch else "")
        epochs, floats = training["settings"]["epochs"], training["settings"].get("float_epochs", 0)
        wall = training.get("wall_seconds")
        minutes = f"{wall / 60:.0f}" if wall is not None else "-"
        cmd = f"`{command(name)}`"
        rows.append(f"| {name} | {size} | {acc['test']:.2f} | {fmt('test_keep_1_3')} | {fmt('test_keep_2_3')} | "
                    f"{exits} | {floats} + {epochs - floats} | {minutes} | {cmd} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cim_gym.backbones.shipped", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (or resume) shipped checkpoints, one at a time")
    t.add_argument("--dataset", default=None, help="only this data set's checkpoints")
    t.add_argument("--name", nargs="+", default=None, help="only these checkpoints")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    t.add_argument("--skip-existing", action="store_true",
                   help="skip checkpoints the package holds as made by their current command (one made by "
                        "another command, e.g. an older recipe, is retrained)")
    t.add_argument("--out", default=None,
                   help="write the checkpoints to this folder instead of the package (check them, then `ship` them)")
    sh = sub.add_parser("ship", help="check checkpoints trained into a folder, then copy them into the package")
    sh.add_argument("--from", dest="source", required=True, help="the folder (the --out of `train`)")
    sh.add_argument("--name", nargs="+", required=True, help="the checkpoints to ship")
    sh.add_argument("--tolerance", type=float, default=0.2, help="allowed test-accuracy difference (points)")
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
    if args.cmd == "ship":
        if not Path(args.source).is_dir():
            p.error(f"--from {args.source!r} is not a folder")
        if not args.tolerance >= 0 or args.tolerance == float("inf"):
            p.error(f"--tolerance {args.tolerance!r} is not allowed: expected a finite number >= 0")
        ship(names, Path(args.source), args.tolerance)
        return 0
    if args.threads < 0:
        p.error(f"--threads {args.threads} is not allowed: expected an integer >= 0")
    if args.out is not None:
        from cim_gym.backbones.train import check_writable

        try:
            check_writable(Path(args.out), "out")
        except ValueError as exc:
            p.error(str(exc))
    train(names, args.threads, args.skip_existing, None if args.out is None else Path(args.out))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
