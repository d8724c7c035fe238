"""REINFORCE training throughput against the bare batched environment steps of the same episodes.

    python benchmarks/bench_agents.py [--batch 2048] [--updates 20] [--repeats 3] [--threads 1]

Both sides run the same episodes on the same chips (digits ResNet-20, the default sigma grid, chip seed 0): per
update, ``batch`` episodes pinned twice through ``reset(options=...)`` and one step of 2 x batch actions (sampled
and greedy). The REINFORCE side records its resets and actions; the bare side replays exactly those without the
agent (no network, sampling, loss or optimizer). The overhead is the ratio of the medians, minus one (goal <= 30 %).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import cim_gym  # noqa: F401  (registers the environment ids)
from agents.reinforce import ReinforceSettings, ReinforceTrainer

ENV_KWARGS = {"reward": "blockdrop", "penalty": 10.0, "chip_seed": 0}


class Recorder(gym.vector.VectorWrapper):
    """Records every pinned reset and every step of the trainer, and when each update ended."""

    def __init__(self, env: gym.vector.VectorEnv, log: list[tuple[dict[str, Any], np.ndarray, float]]) -> None:
        super().__init__(env)
        self.log, self.options = log, None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        self.options = options
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: Any) -> Any:
        out = self.env.step(actions)
        self.log.append((self.options, np.array(actions), time.perf_counter()))
        return out


def reinforce_run(batch: int, updates: int) -> tuple[float, list[tuple[dict[str, Any], np.ndarray, float]]]:
    """Seconds of ``updates`` REINFORCE updates (after a first one that programs the chips), and what they ran."""
    log: list[tuple[dict[str, Any], np.ndarray, float]] = []

    class Recording(ReinforceTrainer):
        def _make_env(self, num_envs: int, penalty: float | None) -> gym.vector.VectorEnv:
            return Recorder(super()._make_env(num_envs, penalty), log)

    settings = ReinforceSettings(steps=batch * (updates + 1), batch_size=batch, finetune_share=0.0, curriculum=False)
    Recording("CIMBlockDrop-v0", ENV_KWARGS, settings).train()
    return log[-1][2] - log[0][2], log


def bare_seconds(batch: int, log: list[tuple[dict[str, Any], np.ndarray, float]]) -> float:
    """Seconds of the same pinned resets and steps, with the same actions, without the agent."""
    envs = gym.make_vec("CIMBlockDrop-v0", num_envs=2 * batch, vectorization_mode="vector_entry_point", **ENV_KWARGS)
    envs.reset(seed=0)
    options, actions, _ = log[0]
    envs.reset(options=options)
    envs.step(actions)  # programs the chips outside the timing, like the trainer's first update
    start = time.perf_counter()
    for options, actions, _ in log[1:]:
        envs.reset(options=options)
        envs.step(actions)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2048, help="episodes per update (default 2048, BlockDrop's)")
    parser.add_argument("--updates", type=int, default=20, help="timed updates per repeat (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bare, rl = [], []
    for _ in range(args.repeats):  # interleaved, so a busy spell of the machine hits both sides
        seconds, log = reinforce_run(args.batch, args.updates)
        rl.append(seconds)
        bare.append(bare_seconds(args.batch, log))
    b, r = statistics.median(bare), statistics.median(rl)
    episodes = args.batch * args.updates
    print(f"| what (batch {args.batch}, {args.updates} updates, median of {args.repeats}) | episodes/s | overhead |")
    print("| --- | --- | --- |")
    print(f"| bare batched env steps (reset pinned x2 + step of 2 x batch) | {episodes / b:.0f} | |")
    print(f"| REINFORCE (policy, sampling, greedy baseline, loss, Adam) | {episodes / r:.0f} | {100 * (r / b - 1):+.1f} % |")


if __name__ == "__main__":
    main()
