"""Train an agent on a cim-gym environment and write its run folder.

    python train_agent.py --algo reinforce                       # noise-aware BlockDrop on the embedded default
    python train_agent.py --algo reinforce --no-sigma            # the same, sigma hidden (the noise-unaware control)
    python train_agent.py --algo reinforce --env CIMEarlyExit-v0 --dataset fashion-mnist
    python train_agent.py --algo ppo --env CIMExitThresholds-v0 --steps 200000
    python train_agent.py --algo reinforce --sigmas 0 --reward blockdrop --out runs/blockdrop-ideal   # BlockDrop
    python train_agent.py --algo reinforce --dataset cifar10 --data-root DATA --backbones BACKBONES --depth 20

The run folder (``--out``, default ``runs/<algo>-<env>-<dataset>-seed<seed>``) receives the policy
(``policy.safetensors``), ``run.json`` (algorithm, environment id and settings, network, training arguments,
version, seed, wall time), ``metrics.csv`` and TensorBoard logs (``tb/``), and at the end a greedy evaluation on the
test split, every sigma, the same chips for the policy and the full path (``evaluation.csv`` / ``.md``, printed).
Ctrl-C saves a checkpoint; ``--resume`` continues it. ``agents.load_policy(folder)`` loads any run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ENV_IDS = {"blockdrop": "CIMBlockDrop-v0", "early-exit": "CIMEarlyExit-v0", "exit-thresholds": "CIMExitThresholds-v0"}
DEFAULT_ENV = {"reinforce": "CIMBlockDrop-v0", "ppo": "CIMBlockDrop-v0", "a2c": "CIMBlockDrop-v0",
               "dqn": "CIMEarlyExit-v0", "sac": "CIMExitThresholds-v0"}
DEFAULT_PENALTY = {"blockdrop": 10.0, "accuracy": 1.0, "energy": 1.0}
"""Final penalty per reward: BlockDrop's gamma of its finetuning stage; the proposal's -1 otherwise."""
OBSERVE = {"sigma": {"observe_sigma": True}, "none": {"observe_sigma": False},
           "chip": {"observe_sigma": False, "observe_chip": True}, "both": {"observe_sigma": True, "observe_chip": True}}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: expected an integer >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: expected an integer >= 0")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: expected a finite number")
    return value


def _env_id(text: str) -> str:
    if text in ENV_IDS.values():
        return text
    if text in ENV_IDS:
        return ENV_IDS[text]
    raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected one of {sorted(ENV_IDS.values())} "
                                     f"(or {sorted(ENV_IDS)})")


def build_parser() -> argparse.ArgumentParser:
    from cim_gym.cli import cim_spec, existing_folder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=("reinforce", "ppo", "a2c", "dqn", "sac"), default="reinforce",
                   help="reinforce (BlockDrop's, every env), ppo / a2c (every env), dqn (CIMEarlyExit-v0), "
                        "sac (CIMExitThresholds-v0); default reinforce")
    env = p.add_argument_group("environment (every option is a field of cim_gym.envs.EnvConfig)")
    env.add_argument("--env", type=_env_id, default=None,
                     help="environment id or short name (blockdrop, early-exit, exit-thresholds); default: "
                          "CIMBlockDrop-v0, CIMEarlyExit-v0 for dqn, CIMExitThresholds-v0 for sac")
    env.add_argument("--dataset", default="digits", help="data set of images and backbone (default digits)")
    env.add_argument("--data-root", type=existing_folder, default=None, metavar="DIR",
                     help="folder of the data set files (torchvision layout, e.g. DIR/cifar-10-batches-py; default "
                          "$CIM_GYM_DATA or ~/.cache/cim-gym/data); nothing is downloaded")
    env.add_argument("--backbones", type=existing_folder, default=None, metavar="DIR",
                     help="folder of backbone checkpoints (the --out of python -m cim_gym.backbones.train), used "
                          "instead of the shipped ones and the user cache")
    env.add_argument("--depth", type=_positive_int, default=None, help="backbone depth (default: the env's)")
    env.add_argument("--cim", type=cim_spec, default=None,
                     help="chip: a preset name or a JSON CIMConfig dict, e.g. '{\"preset\": \"neurosim\", \"adc_bits\": 6}' "
                          "(default: the env's, 'ideal')")
    env.add_argument("--noise-source", default=None, help="what sigma scales (default programming)")
    grid = env.add_mutually_exclusive_group()
    grid.add_argument("--sigmas", type=_finite, nargs="+", default=None, help="the training sigmas, e.g. 0 0.05 0.1")
    grid.add_argument("--sigma-range", type=_finite, nargs=2, metavar=("LOW", "HIGH"), default=None,
                      help="an evenly spaced grid from LOW to HIGH (with --num-sigmas; default: the env's 0 to 0.15)")
    env.add_argument("--num-sigmas", type=_positive_int, default=None, help="points of --sigma-range (default 7)")
    env.add_argument("--chips-per-sigma", type=_positive_int, default=None, help="chips per sigma in the pool (default 4)")
    env.add_argument("--refresh-chips-every", type=_non_negative_int, default=100_000,
                     help="program new chips every this many episodes so the policy sees many chips, not a few "
                          "(0: never; default 100000)")
    env.add_argument("--reward", choices=("accuracy", "blockdrop", "energy"), default=None,
                     help="default: blockdrop (1 - usage^2 or -penalty) for CIMBlockDrop-v0, accuracy otherwise")
    env.add_argument("--penalty", type=_finite, default=None,
                     help="final penalty for a wrong prediction (default: 10 with the blockdrop reward, BlockDrop's "
                          "finetuning gamma; 1 otherwise)")
    obs = env.add_mutually_exclusive_group()
    obs.add_argument("--no-sigma", action="store_true", help="hide sigma (the noise-unaware control), same as --observe none")
    obs.add_argument("--observe", choices=tuple(OBSERVE), default="sigma",
                     help="what the policy sees besides the image: sigma (default), none, chip (the chip's own "
                          "post-programming test), both")
    env.add_argument("--obs-mode", choices=("features", "image"), default=None,
                     help="features (an MLP policy, default) or image (a CNN policy)")
    env.add_argument("--env-device", choices=("auto", "cpu", "cuda"), default=None, help="device of the chips")

    train = p.add_argument_group("training")
    train.add_argument("--steps", type=_positive_int, default=None,
                       help="training episodes (default: 300000 for reinforce, 100000 for SB3)")
    train.add_argument("--num-envs", type=_positive_int, default=None,
                       help="SB3: episodes per batched step (default 64); reinforce: use --batch-size")
    train.add_argument("--batch-size", type=_positive_int, default=None,
                       help="reinforce: episodes per update in stage 1 (default 2048, BlockDrop's)")
    train.add_argument("--lr", type=_finite, default=None, help="learning rate (reinforce default 1e-3; SB3: its default)")
    rf = p.add_argument_group("reinforce (BlockDrop's defaults)")
    rf.add_argument("--alpha", type=_finite, default=None, help="exploration bound (default 0.8)")
    rf.add_argument("--beta", type=_finite, default=None, help="entropy bonus (default 0.1)")
    rf.add_argument("--entropy", choices=("blockdrop", "bernoulli"), default=None,
                    help="masks: the entropy bonus of BlockDrop's code, sum of -p' log p' (default), or the Bernoulli entropy")
    rf.add_argument("--no-curriculum", action="store_true", help="control every block from the start")
    rf.add_argument("--curriculum-stage-updates", type=_positive_int, default=None,
                    help="updates per curriculum stage (default: the K stages fill half of stage 1)")
    rf.add_argument("--curriculum-penalty", type=_finite, default=None, help="stage-1 penalty (default 1)")
    rf.add_argument("--finetune-share", type=_finite, default=None, help="share of --steps in stage 2 (default 0.2)")
    rf.add_argument("--finetune-lr", type=_finite, default=None, help="stage-2 learning rate (default 1e-4)")
    rf.add_argument("--finetune-batch-size", type=_positive_int, default=None, help="stage-2 batch (default 256)")
    rf.add_argument("--hidden", type=_positive_int, default=None, help="policy network width (default 64)")

    out = p.add_argument_group("run")
    out.add_argument("--seed", type=_non_negative_int, default=0, help="seed of everything random (default 0)")
    out.add_argument("--out", type=Path, default=None, help="run folder (default runs/<algo>-<env>-<dataset>-seed<seed>)")
    out.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    out.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device of the policy (default auto)")
    out.add_argument("--threads", type=_positive_int, default=1,
                     help="torch threads (default 1: the tensors are small, and one thread is immune to busy cores)")
    out.add_argument("--report-chips", type=_positive_int, default=4, help="chips per sigma of the final report")
    out.add_argument("--report-images", type=_non_negative_int, default=2000,
                     help="the first N test images in the report (default 2000: all of digits, a fifth of Fashion-MNIST's "
                          "10000, which would take 15 minutes on a CPU core; 0: all)")
    out.add_argument("--no-report", action="store_true", help="skip the final report")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def env_kwargs_from(args: argparse.Namespace, env_id: str) -> dict[str, Any]:
    """The environment's keyword arguments: only what the command line sets; the env's defaults do the rest."""
    reward = args.reward or ("blockdrop" if env_id == "CIMBlockDrop-v0" else "accuracy")
    kwargs: dict[str, Any] = {"dataset": args.dataset, "reward": reward,
                              "penalty": DEFAULT_PENALTY[reward] if args.penalty is None else args.penalty,
                              **OBSERVE["none" if args.no_sigma else args.observe]}
    if not kwargs.get("observe_chip"):
        kwargs.pop("observe_chip", None)
    if args.data_root is not None:
        kwargs["data_root"] = args.data_root
    if args.backbones is not None:
        kwargs["backbone_kwargs"] = {"folder": args.backbones}
    optional = {"depth": args.depth, "cim": args.cim, "noise_source": args.noise_source, "obs_mode": args.obs_mode,
                "num_sigmas": args.num_sigmas, "chips_per_sigma": args.chips_per_sigma, "device": args.env_device,
                "sigmas": tuple(args.sigmas) if args.sigmas else None,
                "sigma_range": tuple(args.sigma_range) if args.sigma_range else None,
                "refresh_chips_every": args.refresh_chips_every or None}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs


def reinforce_settings(args: argparse.Namespace) -> Any:
    from agents.networks import NetworkSettings
    from agents.reinforce import ReinforceSettings

    given = {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "alpha": args.alpha, "beta": args.beta,
        "entropy": args.entropy,
        "curriculum_stage_updates": args.curriculum_stage_updates, "curriculum_penalty": args.curriculum_penalty,
        "finetune_share": args.finetune_share, "finetune_lr": args.finetune_lr,
        "finetune_batch_size": args.finetune_batch_size,
    }
    network = NetworkSettings(hidden=args.hidden) if args.hidden else NetworkSettings()
    return ReinforceSettings(**{k: v for k, v in given.items() if v is not None}, curriculum=not args.no_curriculum,
                             network=network, seed=args.seed, device=args.device)


def check_algo_args(p: argparse.ArgumentParser, args: argparse.Namespace, env_id: str) -> None:
    if args.algo == "dqn" and env_id != "CIMEarlyExit-v0":
        p.error(f"--algo dqn needs a Discrete action space: --env CIMEarlyExit-v0 (got --env {env_id})")
    if args.algo == "sac" and env_id != "CIMExitThresholds-v0":
        p.error(f"--algo sac needs a continuous action space: --env CIMExitThresholds-v0 (got --env {env_id})")
    reinforce_only = ("batch_size", "alpha", "beta", "entropy", "curriculum_stage_updates", "curriculum_penalty",
                      "finetune_share", "finetune_lr", "finetune_batch_size", "hidden")
    if args.algo != "reinforce":
        given = [k for k in reinforce_only if getattr(args, k) is not None] + (["no_curriculum"] if args.no_curriculum else [])
        if given:
            p.error(f"--{given[0].replace('_', '-')} is a reinforce option; --algo {args.algo} does not take it")
    elif args.num_envs is not None:
        p.error("--num-envs is an SB3 option; reinforce batches --batch-size episodes per update")


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    env_id = args.env or DEFAULT_ENV[args.algo]
    check_algo_args(p, args, env_id)

    import torch

    torch.set_num_threads(args.threads)

    env_kwargs = env_kwargs_from(args, env_id)
    short = {v: k for k, v in ENV_IDS.items()}[env_id]
    out = args.out or Path("runs") / f"{args.algo}-{short}-{args.dataset}-seed{args.seed}"
    try:
        settings = reinforce_settings(args) if args.algo == "reinforce" else None
        if args.algo == "reinforce":
            trained = run_reinforce(args, env_id, env_kwargs, settings, out)
        else:
            trained = run_sb3(args, env_id, env_kwargs, out)
    except KeyboardInterrupt:
        print(f"\ninterrupted: checkpoint saved in {out} (continue with the same command and --resume)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        # bad settings (EnvConfig, ReinforceSettings, run folder), missing data or backbone (the environments raise
        # FileNotFoundError subclasses naming what is missing and how to get it): a CLI error, not a traceback
        p.error(str(err))
    if not args.no_report:
        report(args, env_id, trained, out)
    print(f"run folder: {out}")
    return 0


def run_reinforce(args: argparse.Namespace, env_id: str, env_kwargs: dict[str, Any], settings: Any, out: Path) -> Any:
    import cim_gym
    from agents.callbacks import Checkpointer, CSVLogger, ProgressBar, TensorBoardLogger
    from agents.reinforce import ReinforceTrainer
    from agents.runs import RunFolder, space_to_json

    trainer = ReinforceTrainer(env_id, env_kwargs, settings)
    meta = {
        "algo": "reinforce", "env_id": env_id, "env_config": trainer.env_config, "env_kwargs": env_kwargs,
        "backbone_sha256": trainer.backbone_sha256,
        "observation_space": space_to_json(trainer.observation_space), "action_space": space_to_json(trainer.action_space),
        "network": {"class": "PolicyNetwork", "settings": settings.network.to_dict(), "alpha": settings.alpha,
                    "entropy": settings.entropy},
        "settings": settings.to_dict(), "package_version": cim_gym.__version__, "seed": args.seed,
        "command": " ".join(["python", "train_agent.py", *sys.argv[1:]]), "torch_threads": args.threads,
    }
    run = RunFolder.create(out, meta, resume=args.resume)
    if args.resume:
        trainer.load_state(run.load_checkpoint())
    trainer.callbacks = [ProgressBar(disable=args.no_progress), CSVLogger(run), TensorBoardLogger(run),
                         Checkpointer(run, settings.checkpoint_every)]
    started = time.perf_counter()
    trainer.train()
    run.write_meta(status="complete", train_seconds_this_session=round(time.perf_counter() - started, 3))
    from agents import load_policy

    return load_policy(out)


def run_sb3(args: argparse.Namespace, env_id: str, env_kwargs: dict[str, Any], out: Path) -> Any:
    import gymnasium as gym

    import cim_gym
    from agents import load_policy
    from agents.runs import MetricsCSV, RunFolder, space_to_json
    from agents.sb3 import EpisodeStatsCallback, SB3Interrupted, save_sb3_checkpoint, train_sb3

    probe = gym.make_vec(env_id, num_envs=1, vectorization_mode="vector_entry_point", **env_kwargs)
    settings = {"steps": args.steps or 100_000, "num_envs": args.num_envs or 64, "lr": args.lr, "seed": args.seed,
                "device": args.device}
    meta = {
        "algo": args.algo, "env_id": env_id, "env_config": probe.config.to_dict(), "env_kwargs": env_kwargs,  # type: ignore[attr-defined]
        "backbone_sha256": getattr(probe, "backbone_sha256", None),
        "observation_space": space_to_json(probe.single_observation_space),
        "action_space": space_to_json(probe.single_action_space),
        "network": None, "settings": settings, "package_version": cim_gym.__version__, "seed": args.seed,
        "command": " ".join(["python", "train_agent.py", *sys.argv[1:]]), "torch_threads": args.threads,
    }
    probe.close()
    run = RunFolder.create(out, meta, resume=args.resume)
    csv_log = MetricsCSV(run.path / "metrics.csv")
    stats = EpisodeStatsCallback(every=max(1024, settings["num_envs"]), on_row=csv_log.write,
                                 progress=not args.no_progress, total_timesteps=settings["steps"])
    try:
        model = train_sb3(args.algo, env_id, env_kwargs, total_timesteps=settings["steps"], num_envs=settings["num_envs"],
                          seed=args.seed, device=args.device,
                          algo_kwargs={"learning_rate": args.lr} if args.lr is not None else None,
                          tensorboard_log=run.path / "tb", callback=stats, checkpoint_dir=run.path,
                          resume_from=run.path if args.resume else None)
    except SB3Interrupted as stop:  # train_sb3 wrote the checkpoint; record it
        run.write_meta(network=stop.description, status="interrupted",
                       progress={"timesteps": int(stop.model.num_timesteps), "of": settings["steps"]})
        raise
    finally:
        csv_log.close()
    run.write_meta(network=save_sb3_checkpoint(model, run.path), status="complete",
                   progress={"timesteps": int(model.num_timesteps), "of": settings["steps"]})
    return load_policy(out)


def report(args: argparse.Namespace, env_id: str, policy: Any, out: Path) -> None:
    from agents.report import greedy_report, write_report

    what = {"CIMBlockDrop-v0": "blocks", "CIMEarlyExit-v0": "exit (0 = first)", "CIMExitThresholds-v0": "MAC share"}[env_id]
    rows = greedy_report(policy, env_id, policy.env_config, chips_per_sigma=args.report_chips,
                         max_images=args.report_images or None, progress=not args.no_progress)
    print(write_report(rows, out, what))


if __name__ == "__main__":
    sys.exit(main())
