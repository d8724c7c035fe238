"""The native vector environment's autoreset modes, measured side by side: decisions (finished episodes) per second.

With one-step episodes every episode ends at every step. ``same_step`` starts the next episodes inside that step;
``next_step`` spends every other ``step`` call on starting them (its actions ignored), which Gymnasium's vector
observation wrappers need; ``disabled`` leaves it to the caller (``step`` then ``reset``). Medians over repeats,
read the ratios (the machine is shared).

    python benchmarks/bench_autoreset.py [--env-id CIMBlockDrop-v0] [--num-envs 256] [--decisions 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import torch
from tqdm import tqdm

import cim_gym  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="CIMBlockDrop-v0", help="a registered cim-gym id")
    parser.add_argument("--num-envs", type=int, default=256, help="episodes per step (default 256)")
    parser.add_argument("--decisions", type=int, default=20, help="batched decisions per timed repeat (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per mode (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    for name in ("num_envs", "decisions", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed: expected an integer >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    rates = {}
    for mode in tqdm(("same_step", "next_step", "disabled"), desc="modes"):
        envs = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="vector_entry_point",
                            autoreset_mode=mode, chip_seed=0)
        envs.reset(seed=0)
        envs.action_space.seed(0)
        actions = envs.action_space.sample()
        # Calls per decision: same_step one step; next_step a step and a reset step; disabled a step and a reset().
        one: Callable[[], object]
        if mode == "same_step":
            def one() -> None:
                envs.step(actions)
        elif mode == "next_step":
            def one() -> None:
                envs.step(actions)
                envs.step(actions)
        else:
            def one() -> None:
                envs.step(actions)
                envs.reset()
        for _ in range(3):  # warm-up: every chip programmed, features cached
            one()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(args.decisions):
                one()
            times.append(time.perf_counter() - start)
        rates[mode] = args.decisions * args.num_envs / statistics.median(times)
        envs.close()

    print(f"{args.env_id}, N={args.num_envs}, torch threads {torch.get_num_threads()}")
    print(f"{'autoreset_mode':<16} {'decisions/s':>12} {'vs same_step':>13} {'step calls per decision':>24}")
    calls = {"same_step": "1", "next_step": "2 (1 reset)", "disabled": "1 + reset()"}
    for mode, rate in rates.items():
        print(f"{mode:<16} {rate:>12.0f} {rate / rates['same_step']:>12.2f}x {calls[mode]:>24}")


if __name__ == "__main__":
    main()
