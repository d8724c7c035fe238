"""Evaluate every method on the same noisy chips: fixed depths, static masks, BranchyNet exits, learned policies, oracles.

    python evaluate.py --sigma-grid                         # digits, the default grid, 5 chips per sigma
    python evaluate.py --dataset fashion-mnist --sigma-grid 0 0.02 0.05 0.08 0.1 --chips 8 --workers 2
    python evaluate.py --dataset cifar10 --data-root DATA --backbones BACKBONES --sigma-grid 0 0.05 0.1

For each sigma of the grid and each of ``--chips`` chips (the same chip seeds for every method, from one ChipPool
seed) every method runs on the same test images: the fixed block-drop models of every available depth (all blocks
run), static block masks (the last blocks of each stage dropped), BranchyNet entropy exits with a lenient and a
strict threshold chosen on the validation split, and the learned policies of the standard run folders
(``runs/<dataset>/<name>``, see ``--list-runs``) plus any ``--policies`` folder. Oracles (best fixed depth per
sigma, best static path per sigma and per chip, per image) are computed from those results.

A missing run folder is skipped with one line naming the ``train_agent.py`` command that makes it;
``--train-missing`` runs that command with a small budget first. Outputs (see ``cim_gym.evaluation.report``) go to
``--out``: results.csv, config.json, summary.md and PNG plots. Rerunning into the same folder resumes the same
sweep and refuses a different one.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cim_gym.envs.config import NOISE_SOURCES

POLICY_FILES = ("run.json", "policy.safetensors")
"""What makes a trained policy (agents.runs): its identity in a sweep; checkpoints and logs beside them are not."""

# name -> (role, train_agent.py arguments); the data set, CIM config, noise source, seed, sigmas and --out are added.
# "noisy" runs train over the evaluation's sigma range, "ideal" ones at sigma 0 only (the original BlockDrop).
LEARNED: dict[str, tuple[str, str, str]] = {
    # train_agent.py's own defaults: BlockDrop's usage reward (penalty 1, then 10) for masks, accuracy for exits.
    "blockdrop-sigma": ("noise-aware", "noisy", "--algo reinforce --env CIMBlockDrop-v0 --depth {bd}"),
    "blockdrop-nosigma": ("sigma-hidden", "noisy", "--algo reinforce --env CIMBlockDrop-v0 --depth {bd} --no-sigma"),
    # The same with the Bernoulli entropy bonus (BlockDrop's own -p' log p' settles on one mask on digits).
    "blockdrop-bernoulli-sigma": ("noise-aware", "noisy", "--algo reinforce --env CIMBlockDrop-v0 --depth {bd} "
                                                          "--entropy bernoulli"),
    "blockdrop-bernoulli-nosigma": ("sigma-hidden", "noisy", "--algo reinforce --env CIMBlockDrop-v0 --depth {bd} "
                                                             "--no-sigma --entropy bernoulli"),
    "blockdrop-chip": ("chip-aware", "noisy", "--algo reinforce --env CIMBlockDrop-v0 --depth {bd} --observe chip"),
    "blockdrop-chip-sigma": ("chip-aware", "noisy", "--algo reinforce --env CIMBlockDrop-v0 --depth {bd} --observe both"),
    "blockdrop-bernoulli-chip": ("chip-aware", "noisy", "--algo reinforce --env CIMBlockDrop-v0 --depth {bd} "
                                                        "--observe chip --entropy bernoulli"),
    "blockdrop-bernoulli-chip-sigma": ("chip-aware", "noisy", "--algo reinforce --env CIMBlockDrop-v0 --depth {bd} "
                                                              "--observe both --entropy bernoulli"),
    # The original BlockDrop: trained at sigma 0 with a low and a high final penalty.
    "blockdrop-ideal-lowpenalty": ("baseline", "ideal", "--algo reinforce --env CIMBlockDrop-v0 --depth {bd} --penalty 2"),
    "blockdrop-ideal-highpenalty": ("baseline", "ideal", "--algo reinforce --env CIMBlockDrop-v0 --depth {bd} --penalty 10"),
    "exit-sigma": ("noise-aware", "noisy", "--algo reinforce --env CIMEarlyExit-v0 --depth {ex}"),
    "exit-nosigma": ("sigma-hidden", "noisy", "--algo reinforce --env CIMEarlyExit-v0 --depth {ex} --no-sigma"),
    "thresholds-sigma": ("noise-aware", "noisy", "--algo reinforce --env CIMExitThresholds-v0 --depth {ex}"),
    "thresholds-nosigma": ("sigma-hidden", "noisy", "--algo reinforce --env CIMExitThresholds-v0 --depth {ex} --no-sigma"),
}
"""The standard learned methods: run folder name -> (role, "noisy" | "ideal", train_agent.py arguments)."""

COMPARISONS: dict[str, tuple[str, str]] = {
    "blockdrop-sigma": ("blockdrop-nosigma", "sigma"),
    "blockdrop-bernoulli-sigma": ("blockdrop-bernoulli-nosigma", "sigma"),
    "exit-sigma": ("exit-nosigma", "sigma"),
    "thresholds-sigma": ("thresholds-nosigma", "sigma"),
    "blockdrop-chip": ("blockdrop-nosigma", "the chip"),
    "blockdrop-chip-sigma": ("blockdrop-sigma", "the chip on top of sigma"),
    "blockdrop-bernoulli-chip": ("blockdrop-bernoulli-nosigma", "the chip"),
    "blockdrop-bernoulli-chip-sigma": ("blockdrop-bernoulli-sigma", "the chip on top of sigma"),
}
"""What observing buys: standard run -> (its twin that observes less, what the run observes on top), compared at
equal training settings on the same chips (the same training seed when both have several)."""

SEEDED_ROLES = ("noise-aware", "sigma-hidden")
"""Roles whose standard runs are trained with every ``--run-seeds`` seed (the others with the first)."""


def run_name(name: str, seed: int) -> str:
    """The run folder name of standard run ``name`` trained with ``seed`` (seed 0: the name itself)."""
    return name if seed == 0 else f"{name}-seed{seed}"


def standard_runs(a: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(run folder name, standard run name, training seed) of every standard run this evaluation looks for."""
    return [(run_name(name, seed), name, seed) for name, (role, _kind, args) in LEARNED.items()
            if (a.runs is None or name in a.runs) and (a.exit_depth or "{ex}" not in args)
            for seed in (a.run_seeds if role in SEEDED_ROLES else a.run_seeds[:1])]


def comparisons(names: Sequence[str]) -> list[tuple[str, str, str]]:
    """(method, its less-observing twin, what the method observes on top) for the run folders in ``names``."""
    from cim_gym.evaluation.report import split_seed

    present, pairs = set(names), []
    for folder, name, seed in ((n, *split_seed(n)) for n in names):
        # a standard run, or any pair of folders named <x>-sigma and <x>-nosigma (e.g. --policies of a variant)
        base, what = COMPARISONS.get(name, (name.removesuffix("-sigma") + "-nosigma", "sigma"))
        twin = run_name(base, seed)
        if twin not in present and seed:  # a seed-0-only twin (e.g. a chip-aware run has one seed)
            twin = base
        if twin in present and twin != folder:
            pairs.append((folder, twin, what))
    return pairs


def runs_root(dataset: str, noise_source: str, cim: str | dict[str, Any]) -> Path:
    """Folder of the standard run folders: ``runs/<dataset>`` for programming variation on the ideal preset, else
    ``runs/<dataset>-<noise source>-<chip>`` (the chip's :func:`~cim_gym.cli.cim_label`; a policy is only evaluated
    on the setting it was trained on)."""
    from cim_gym.cli import cim_label

    if noise_source == "programming" and cim == "ideal":
        return Path("runs") / dataset
    return Path("runs") / f"{dataset}-{noise_source}-{cim_label(cim)}"


def train_command(name: str, a: argparse.Namespace, sigmas: Sequence[float], steps: int | None = None,
                  seed: int = 0) -> list[str]:
    """The ``train_agent.py`` command line that makes the standard run ``name`` with training seed ``seed``."""
    _role, kind, args = LEARNED[name]
    sigma_args = ["--sigmas", "0"] if kind == "ideal" else ["--sigma-range", f"{min(sigmas):g}", f"{max(sigmas):g}"]
    cim = a.cim if isinstance(a.cim, str) else json.dumps(a.cim)
    cmd = ["python", "train_agent.py", *shlex.split(args.format(bd=a.blockdrop_depth, ex=a.exit_depth)),
           "--dataset", a.dataset, "--cim", cim, "--noise-source", a.noise_source, *sigma_args, "--seed", str(seed),
           "--out", str(runs_root(a.dataset, a.noise_source, a.cim) / run_name(name, seed))]
    for option, folder in (("--data-root", a.data_root), ("--backbones", a.backbones)):
        cmd += [option, folder] if folder is not None else []
    return cmd + (["--steps", str(steps)] if steps else [])


def mask_drops(depth: int) -> list[int]:
    """Default static masks: drop 1 .. n-1 blocks per stage (n blocks per stage), at most three sizes."""
    from cim_gym.models import blocks_per_stage

    n = blocks_per_stage(depth)
    drops = list(range(1, n))
    if len(drops) > 3:
        drops = sorted({max(1, round(n / 4)), round(n / 2), min(n - 1, round(3 * n / 4))})
    return drops


def run_status(folder: Path) -> str | None:
    """The ``status`` a run folder's ``run.json`` records (None when it has none or cannot be read)."""
    try:
        return json.loads((folder / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def load_policies(a: argparse.Namespace, sigmas: Sequence[float], spec: Any) -> tuple[list[Any], list[str]]:
    """The learned methods (standard run folders and ``--policies``) and the lines naming those skipped."""
    from cim_gym.evaluation import PolicyMethod, folder_hash
    from cim_gym.evaluation.methods import action_type_of
    from cim_gym.evaluation.sweep import policy_config_problems

    wanted: list[tuple[str, Path, str | None, list[str]]] = []
    if not a.no_standard_runs:
        root = runs_root(a.dataset, a.noise_source, a.cim)
        for folder_name, name, seed in standard_runs(a):
            folder, cmd = root / folder_name, train_command(name, a, sigmas, seed=seed)
            status = run_status(folder)
            unfinished = status not in (None, "complete")
            if a.train_missing and status != "complete":
                # an interrupted run (a cut session) is finished with the same command, not skipped as unloadable
                cmd = train_command(name, a, sigmas, a.train_steps, seed) + ["--no-report"] + (
                    ["--resume"] if unfinished else [])
                what = "finishing interrupted" if unfinished else "training missing"
                print(f"{what} {folder_name} with a small budget ({a.train_steps} steps): {shlex.join(cmd)}",
                      flush=True)
                subprocess.run([sys.executable, str(Path(__file__).resolve().parent / cmd[1]), *cmd[2:]], check=True)
            wanted.append((folder_name, folder, LEARNED[name][0], cmd))
    wanted += [(Path(p).name, Path(p), None, []) for p in a.policies]
    methods, skipped = [], []
    try:
        from agents import RunFolderError, load_policy
    except ImportError as exc:
        load_policy, RunFolderError = None, OSError
        reason = f"agents.load_policy is not available ({exc})"
    for name, folder, role, cmd in wanted:
        if not folder.is_dir():
            line = f"{name}: no run folder {folder}"
            if cmd:
                line += f"; make it with: {shlex.join(cmd)}"
            skipped.append(line)
            continue
        if load_policy is None:
            skipped.append(f"{name}: {reason}")
            continue
        try:
            policy = load_policy(folder)
        except RunFolderError as exc:  # e.g. a run still training, or broken weights
            skipped.append(f"{name}: {folder} cannot be loaded ({exc})")
            continue
        depth = policy.env_config.get("depth") or action_type_of(policy.env_id).default_depth
        sha = policy.meta.get("backbone_sha256")
        problems = policy_config_problems(spec, depth, policy.env_config, sha, action_type_of(policy.env_id).variant)
        if problems and a.train_missing:
            # --train-missing promises a report with every policy asked for: a stale one (e.g. trained over an older
            # grid) is neither left out silently nor overwritten
            again = "a standard run is then trained again" if cmd else "then retrain it or leave it out"
            raise ValueError(f"--train-missing: {folder} was trained on another setting ({'; '.join(problems)}); "
                             f"move it away ({again})")
        if problems:
            skipped.append(f"{name}: trained on another setting ({'; '.join(problems)})")
            continue
        methods.append(PolicyMethod.from_env(
            name, lambda obs, p=policy: p.act(obs, deterministic=True), policy.env_id, policy.env_config,
            policy.decision_macs, role=role, run_dir=str(folder), run_hash=folder_hash(folder, POLICY_FILES),
            backbone_sha256=sha))
    return methods, skipped


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``evaluate.py`` (checked further by :func:`parse_args`)."""
    from cim_gym.cli import cim_spec, existing_folder

    p = argparse.ArgumentParser(prog="python evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", help="data set (default digits)")
    p.add_argument("--data-root", type=existing_folder, default=None, metavar="DIR",
                   help="folder of the data set files (torchvision layout, e.g. DIR/cifar-10-batches-py; default "
                        "$CIM_GYM_DATA or ~/.cache/cim-gym/data); nothing is downloaded")
    p.add_argument("--backbones", type=existing_folder, default=None, metavar="DIR",
                   help="folder of backbone checkpoints (the --out of python -m cim_gym.backbones.train), used instead "
                        "of the shipped ones and the user cache; policies must have been trained on the same folder")
    p.add_argument("--sigma-grid", type=float, nargs="*", default=None, metavar="SIGMA",
                   help="the sigma grid, e.g. 0 0.02 0.05 0.1; without values (or without the option): the data set's "
                        "default grid, 0 to where the deepest fixed model has lost half its clean accuracy")
    p.add_argument("--noise-source", default="programming", choices=NOISE_SOURCES,
                   help="what sigma scales (default programming variation)")
    p.add_argument("--cim", type=cim_spec, default="ideal",
                   help="the chip: a preset name or a JSON CIMConfig dict, e.g. '{\"preset\": \"ideal\", \"adc_bits\": 5}' "
                        "(default ideal); sigma scales --noise-source on it")
    p.add_argument("--chips", type=int, default=5, help="chips per sigma (default 5)")
    p.add_argument("--images", type=int, default=1000, help="test images, a fixed random subset (default 1000; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="ChipPool seed of every chip (default 0)")
    p.add_argument("--calibration-images", type=int, default=256,
                   help="training images that calibrate output and ADC ranges (default 256, as the environments)")
    p.add_argument("--depths", type=int, nargs="+", default=None,
                   help="fixed block-drop models (default: every available depth of the data set)")
    p.add_argument("--blockdrop-depth", type=int, default=20,
                   help="backbone of the static masks and block-drop policies (default 20)")
    p.add_argument("--exit-depth", type=int, default=32,
                   help="multi-exit backbone (default 32; 0: no multi-exit methods, neither BranchyNet nor exit policies)")
    p.add_argument("--mask-drops", type=int, nargs="*", default=None,
                   help="static masks: blocks dropped at the end of every stage (default: up to three sizes)")
    p.add_argument("--lenient", type=float, default=0.8,
                   help="BranchyNet lenient setting: share of validation images leaving early (default 0.8)")
    p.add_argument("--strict", type=float, default=0.3,
                   help="BranchyNet strict setting: share of validation images leaving early (default 0.3)")
    p.add_argument("--policies", nargs="*", default=[], metavar="DIR", help="more learned policies: run folders")
    p.add_argument("--no-standard-runs", action="store_true", help="do not look for the standard run folders")
    p.add_argument("--runs", nargs="+", default=None, metavar="NAME",
                   help="only these standard runs (default: all of --list-runs)")
    p.add_argument("--list-runs", action="store_true", help="print the standard run folders and their commands, exit")
    p.add_argument("--train-missing", action="store_true",
                   help="train a missing standard run folder first (train_agent.py with --train-steps) and finish "
                        "an interrupted one; a policy trained on another setting (e.g. over another sigma range) is "
                        "then an error instead of a skipped method")
    p.add_argument("--train-steps", type=int, default=20000, help="training budget of --train-missing (default 20000)")
    p.add_argument("--run-seeds", type=int, nargs="+", default=[0], metavar="SEED",
                   help="training seeds of the standard noise-aware and sigma-hidden runs (default 0; seed k > 0 is "
                        "the run folder <name>-seed<k>); the other standard runs use the first")
    p.add_argument("--workers", type=int, default=0, help="run the cells on N Ray workers (default 0: serially here)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local one)")
    p.add_argument("--measure-grid", action="store_true",
                   help="measure where the deepest fixed model loses half its clean accuracy, print the grid, exit")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's default)")
    p.add_argument("--out", default=None, help="output folder (default runs/eval/<dataset>-<noise source>-<cim>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    for name in ("chips", "workers", "images", "train_steps", "threads", "exit_depth"):
        value, lo = getattr(a, name), 1 if name in ("chips", "train_steps") else 0
        if value < lo:
            p.error(f"--{name.replace('_', '-')} {value} is not allowed: expected an integer >= {lo}")
    from cim_gym.data import DATASETS
    from cim_gym.models import blocks_per_stage

    if a.dataset not in DATASETS:
        p.error(f"--dataset {a.dataset} is not allowed: expected one of {', '.join(sorted(DATASETS))}")
    for option, depths in (("--depths", a.depths or ()), ("--blockdrop-depth", [a.blockdrop_depth]),
                           ("--exit-depth", [a.exit_depth] if a.exit_depth else [])):
        try:
            [blocks_per_stage(d) for d in depths]
        except ValueError as err:
            p.error(f"{option} {' '.join(map(str, depths))} is not allowed: {str(err).split(': ', 1)[1]}")
    n = blocks_per_stage(a.blockdrop_depth)
    if a.mask_drops and not all(1 <= k < n for k in a.mask_drops):
        p.error(f"--mask-drops {' '.join(map(str, a.mask_drops))} is not allowed: a ResNet-{a.blockdrop_depth} has "
                f"{n} blocks per stage, so each value drops 1 to {n - 1} of them")
    for option, share in (("--lenient", a.lenient), ("--strict", a.strict)):
        if not 0 <= share <= 1:
            p.error(f"{option} {share:g} is not allowed: expected a share of validation images in [0, 1]")
    unknown = sorted(set(a.runs or ()) - set(LEARNED))
    if unknown:
        p.error(f"--runs {' '.join(unknown)} is not allowed: expected standard run names, from {', '.join(LEARNED)}")
    if any(v < 0 for v in a.run_seeds) or len(set(a.run_seeds)) != len(a.run_seeds):
        p.error(f"--run-seeds {' '.join(map(str, a.run_seeds))} is not allowed: expected distinct integers >= 0")
    from cim_gym.envs.core import resolve_cim

    try:
        resolve_cim(a.cim)
    except (ValueError, TypeError) as err:
        p.error(f"--cim {a.cim if isinstance(a.cim, str) else json.dumps(a.cim)} is not allowed: {err}")
    if a.backbones is not None:
        from cim_gym.evaluation.grids import shipped_depths

        if not shipped_depths(a.dataset, folder=a.backbones):
            p.error(f"--backbones {a.backbones} is not allowed: it holds no block-drop backbone of {a.dataset} "
                    f"(expected the --out of python -m cim_gym.backbones.train --dataset {a.dataset})")
    grid = a.sigma_grid or []
    if any(not math.isfinite(v) or v < 0 for v in grid) or grid != sorted(set(grid)):
        p.error(f"--sigma-grid {' '.join(f'{v:g}' for v in grid)} is not allowed: expected distinct increasing "
                "values >= 0, e.g. 0 0.02 0.05 0.1")
    if a.workers and not a.ray_address:
        try:
            import ray  # noqa: F401
        except ImportError:
            p.error('--workers needs Ray, which is not installed: pip install "cim-gym[ray]"  (or: pip install "ray>=2.9")')
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        return evaluate(a, command=shlex.join(["python", "evaluate.py", *(sys.argv[1:] if argv is None else argv)]))
    except (ValueError, FileNotFoundError) as err:
        # what only shows once the data and backbones are opened (a missing data set or checkpoint, a policy trained
        # on another setting): a CLI error naming it, not a traceback
        build_parser().error(str(err))


def evaluate(a: argparse.Namespace, command: str) -> int:
    """Run the evaluation ``a`` describes; ``command`` is recorded in its config.json."""
    from cim_gym.cli import cim_label
    from cim_gym.evaluation import EntropyExits, FixedDepth, StaticMask, SweepSpec, run_sweep
    from cim_gym.evaluation.grids import default_grid, grid_from_limit, measure_limit, shipped_depths

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.measure_grid:
        limit = measure_limit(a.dataset, a.noise_source, a.cim, a.chips, a.images, a.seed, data_root=a.data_root,
                              backbones=a.backbones)
        print(f"limit {limit:g}: grid {' '.join(f'{s:g}' for s in grid_from_limit(limit))}")
        return 0
    sigmas = tuple(a.sigma_grid) if a.sigma_grid else default_grid(
        a.dataset, a.noise_source, cim=a.cim, chips=a.chips, images=a.images, seed=a.seed, data_root=a.data_root,
        backbones=a.backbones)
    if a.list_runs:
        for folder_name, name, seed in standard_runs(a):
            print(f"{runs_root(a.dataset, a.noise_source, a.cim) / folder_name}: "
                  f"{shlex.join(train_command(name, a, sigmas, seed=seed))}")
        return 0
    spec = SweepSpec(dataset=a.dataset, sigmas=sigmas, noise_source=a.noise_source, cim=a.cim, chips=a.chips,
                     images=a.images, seed=a.seed, calibration_images=a.calibration_images, data_root=a.data_root,
                     backbones=a.backbones)
    methods: list[Any] = [FixedDepth(depth=d) for d in (a.depths or shipped_depths(a.dataset, folder=a.backbones))]
    drops = a.mask_drops if a.mask_drops is not None else mask_drops(a.blockdrop_depth)
    methods += [StaticMask(depth=a.blockdrop_depth, drop_per_stage=k) for k in drops]
    skipped: list[str] = []
    if a.exit_depth and a.exit_depth in shipped_depths(a.dataset, "multiexit", folder=a.backbones):
        methods += [EntropyExits(name=f"branchynet-lenient-resnet{a.exit_depth}", depth=a.exit_depth, target=a.lenient),
                    EntropyExits(name=f"branchynet-strict-resnet{a.exit_depth}", depth=a.exit_depth, target=a.strict)]
    elif a.exit_depth:
        skipped.append(f"branchynet: no multi-exit ResNet-{a.exit_depth} backbone for {a.dataset}")
    learned, not_found = load_policies(a, sigmas, spec)
    methods += learned
    skipped += not_found
    for line in skipped:
        print(f"skipped {line}", flush=True)
    out = Path(a.out or Path("runs") / "eval" / f"{a.dataset}-{a.noise_source}-{cim_label(a.cim)}")
    print(f"evaluating {len(methods)} methods on {a.dataset}, {a.noise_source} sigma grid "
          f"{' '.join(f'{s:g}' for s in sigmas)}, {a.chips} chips per sigma, into {out}", flush=True)
    result = run_sweep(spec, methods, out, workers=a.workers, ray_address=a.ray_address,
                       command=command,
                       skipped=skipped, progress=not a.no_progress,
                       comparisons=comparisons([m.name for m in learned]))
    resumed = len(result.cells) - result.ran
    note = f" ({resumed} of {len(result.cells)} cells resumed from the folder)" if resumed else ""
    print(f"wrote {out}/: summary.md, results.csv, config.json, accuracy_vs_sigma.png, compute_vs_sigma.png, "
          f"pareto.png, path_vs_sigma.png{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
