"""Environment throughput, measured side by side in one run.

Prints single-env steps/s, batched vector-env steps/s, and the batched env's time against a bare batched masked
forward of the same backbone on the same chips with the same masks (the env's overhead; target <= 25%).
Medians over repeats; the machine is noisy, so read the ratios.

    python benchmarks/bench_envs.py [--dataset digits] [--num-envs 256] [--repeats 7]
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
    parser.add_argument("--chips-per-sigma", type=int, default=4)
    args = parser.parse_args()
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
        t_env = median_time(lambda: venv.step(batch_actions), args.repeats)

        # The bare work: the same chips, images and actions, one forward per distinct chip, nothing else.
        images, chips = venv.unwrapped._episodes
        checked = act.check(batch_actions, args.num_envs)
        groups = [(core.pool[int(c)], core.images[torch.as_tensor(images[chips == c])], checked[chips == c])
                  for c in np.unique(chips)]

        def bare() -> None:
            with torch.no_grad():
                for chip, x, a in groups:
                    act.forward(chip, x, a)

        t_bare = median_time(bare, args.repeats)
        label = f"vector env N={args.num_envs}, " + ("chip per episode" if chips_per_batch is None else f"{chips_per_batch} chips/step")
        rows.append((label, args.num_envs / t_env, t_env / t_bare - 1))
        rows.append((f"  bare masked forward ({len(groups)} chips)", args.num_envs / t_bare, None))

    print(f"{args.env_id} on {args.dataset}, torch threads {torch.get_num_threads()}")
    print(f"{'what':<48} {'steps/s':>10} {'env overhead':>13}")
    for label, rate, overhead in rows:
        print(f"{label:<48} {rate:>10.0f} {'' if overhead is None else f'{overhead:+.1%}':>13}")
    print(f"batched / single throughput: {rows[1][1] / rows[0][1]:.1f}x")


if __name__ == "__main__":
    main()
