"""stable-baselines3 on the batched adapter against SB3's DummyVecEnv of N single environments, side by side.

Both vector environments hold N episodes over the same chips (same ``chip_seed``); the adapter runs a step as one
forward per distinct chip, the DummyVecEnv as N forwards of one image. Two measurements, each the median over
interleaved repeats (batched, dummy, batched, dummy, ...), after a warm-up that programs every chip:

- raw stepping: ``VecEnv.step`` with random actions, episodes per second;
- PPO training: ``model.learn`` (rollouts + updates, :func:`agents.sb3.default_algo_kwargs`), episodes per second.

    python benchmarks/bench_sb3.py [--env-id CIMBlockDrop-v0] [--num-envs 64] [--repeats 5] [--threads 1]

The machine is shared and noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from tqdm.auto import tqdm

import cim_gym  # noqa: F401  (registers the environment ids)
from agents.sb3 import ALGOS, SB3VecEnvAdapter, ScaledCombinedExtractor, default_algo_kwargs


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: expected an integer >= 1")
    return value


def make_envs(env_id: str, num_envs: int, kwargs: dict) -> dict[str, VecEnv]:
    batched = SB3VecEnvAdapter(gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs))
    dummy = DummyVecEnv([lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)])
    return {"batched adapter": batched, "DummyVecEnv": dummy}


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, bar: tqdm) -> dict[str, float]:
    """Median seconds of each function, the repeats interleaved so that load changes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            bar.update(1)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="CIMBlockDrop-v0",
                        choices=["CIMBlockDrop-v0", "CIMEarlyExit-v0", "CIMExitThresholds-v0"])
    parser.add_argument("--algo", default="ppo", choices=["ppo", "a2c"], help="the on-policy algorithm timed")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--num-envs", type=positive, default=64, help="N, the same for both vector environments")
    parser.add_argument("--chips-per-sigma", type=positive, default=1,
                        help="chips per sigma (every single env of the DummyVecEnv programs its own copy)")
    parser.add_argument("--step-repeats", type=positive, default=20, help="vector steps per timed raw-stepping repeat")
    parser.add_argument("--rollouts", type=positive, default=8, help="PPO rollouts (+ updates) per timed repeat")
    parser.add_argument("--repeats", type=positive, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the envs and the policy run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.num_envs
    kwargs = {"dataset": args.dataset, "chips_per_sigma": args.chips_per_sigma, "chip_seed": 0, "device": args.device}

    print(f"building the batched env and {n} single envs ...", flush=True)
    envs = make_envs(args.env_id, n, kwargs)
    space = envs["batched adapter"].action_space
    space.seed(0)
    actions = [np.stack([space.sample() for _ in range(n)]) for _ in range(args.step_repeats)]

    def stepper(env: VecEnv) -> Callable[[], None]:
        def run() -> None:
            for a in actions:
                env.step(a)
        return run

    algo_kwargs = default_algo_kwargs(args.algo, n)
    rollout = algo_kwargs["n_steps"] * n
    models = {name: ALGOS[args.algo]("MultiInputPolicy", env, seed=0, device=args.device,
                                     policy_kwargs={"features_extractor_class": ScaledCombinedExtractor},
                                     **{**algo_kwargs, **({"batch_size": rollout // 4} if args.algo == "ppo" else {})})
              for name, env in envs.items()}

    def learner(name: str) -> Callable[[], None]:
        return lambda: models[name].learn(args.rollouts * rollout, reset_num_timesteps=False)

    with tqdm(total=2 * (2 * args.repeats + 2), desc="bench_sb3", unit="run") as bar:
        for name, env in envs.items():  # warm-up: every chip programmed, every feature cached, SB3 set up
            env.seed(0)
            env.reset()
            for _ in range(3):
                stepper(env)()
            bar.update(1)
            learner(name)()
            bar.update(1)
        step_s = interleaved({name: stepper(env) for name, env in envs.items()}, args.repeats, bar)
        learn_s = interleaved({name: learner(name) for name in envs}, args.repeats, bar)

    episodes_step, episodes_learn = args.step_repeats * n, args.rollouts * rollout
    print(f"\n{args.env_id}, {args.dataset}, N = {n} envs, {args.chips_per_sigma} chip(s) per sigma, "
          f"{torch.get_num_threads()} torch thread(s), median of {args.repeats}")
    print(f"{'':28s}{'batched adapter':>18s}{'DummyVecEnv':>15s}{'ratio':>9s}")
    for label, times, episodes in (("raw stepping (episodes/s)", step_s, episodes_step),
                                   (f"{args.algo.upper()} learn (episodes/s)", learn_s, episodes_learn)):
        fast, slow = episodes / times["batched adapter"], episodes / times["DummyVecEnv"]
        print(f"{label:28s}{fast:18.0f}{slow:15.0f}{fast / slow:8.1f}x")
    for env in envs.values():
        env.close()


if __name__ == "__main__":
    main()
