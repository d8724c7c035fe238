"""Environment throughput, measured side by side in one run.

Prints single-env steps/s, batched vector-env steps/s, and the batched env's time against a bare batched masked
forward of the same backbone on the same chips with the same masks (the env's overhead; target <= 25%).
Medians over repeats; the machine is noisy, so read the ratios.

    python benchmarks/bench_envs.py [--dataset digits] [--num-envs 256] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

import cim_gym  # noqa: F401


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: chips programmed, features cached
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="CIMBlockDrop-v0")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--num-envs", type=int, default=256)
    parser.add_argument("--single-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="vector steps per timed repeat")
    parser.add_argument("--chips-per-sigma", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {"dataset": args.dataset, "chips_per_sigma": args.chips_per_sigma, "chip_seed": 0}

    env = gym.make(args.env_id, **kwargs)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(args.single_steps)]

    def single() -> None:
        for a in actions:
            env.reset()
            env.step(a)

    t_single = median_time(single, max(3, args.repeats // 2)) / args.single_steps

    rows = [("single env", 1 / t_single, None)]
    for chips_per_batch in (None, 8):
        venv = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="vector_entry_point",
                            chips_per_batch=chips_per_batch, **kwargs)
        venv.reset(seed=0)
        venv.action_space.seed(0)
        batch_actions = venv.action_space.sample()
        core, act = venv.unwrapped.core, venv.unwrapped.act
        checked = act.check(batch_actions, args.num_envs)
        for _ in range(3):  # warm-up: every chip programmed, most features cached
            venv.step(batch_actions)

        env_times, bare_times, groups_seen = [], [], []
        for _ in range(args.repeats):
            # The env's steps, recording which images and chips each step ran ...
            episodes = []
            start = time.perf_counter()
            for _ in range(args.steps):
                episodes.append(venv.unwrapped._episodes)
                venv.step(batch_actions)
            env_times.append(time.perf_counter() - start)
            # ... then the bare work of the very same steps: one masked forward per distinct chip, nothing else.
            start = time.perf_counter()
            with torch.no_grad():
                for images, chips in episodes:
                    for c in np.unique(chips):
                        sel = chips == c
                        act.forward(core.pool[int(c)], core.images[torch.as_tensor(images[sel])], checked[sel])
            bare_times.append(time.perf_counter() - start)
            groups_seen.append(np.mean([len(np.unique(chips)) for _, chips in episodes]))
        t_env, t_bare = statistics.median(env_times), statistics.median(bare_times)
        per_step = args.steps * args.num_envs
        grouping = "chip per episode" if chips_per_batch is None else f"{chips_per_batch} chips/step"
        label = f"vector env N={args.num_envs}, {grouping}"
        rows.append((label, per_step / t_env, t_env / t_bare - 1))
        rows.append((f"  bare masked forward (~{statistics.median(groups_seen):.0f} chips/step)", per_step / t_bare, None))

    print(f"{args.env_id} on {args.dataset}, torch threads {torch.get_num_threads()}")
    print(f"{'what':<48} {'steps/s':>10} {'env overhead':>13}")
    for label, rate, overhead in rows:
        print(f"{label:<48} {rate:>10.0f} {'' if overhead is None else f'{overhead:+.1%}':>13}")
    print(f"batched / single throughput: {rows[1][1] / rows[0][1]:.1f}x")


if __name__ == "__main__":
    main()
