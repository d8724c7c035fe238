"""Quick start: make CIMBlockDrop-v0 on the embedded default (digits, a shipped ResNet-20, NeuroSim-like cells with
programming variation) and compare two fixed policies on the same chips: run every block, or a random half.

    python examples/quickstart.py [--episodes 2048] [--seed 0]
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import cim_gym  # noqa: F401  (registers the environments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=2048, help="episodes per policy (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed of images, chips and random masks")
    args = parser.parse_args()
    # Batches of 8x8 images: one thread is as fast, and immune to other processes keeping the cores busy.
    torch.set_num_threads(1)

    envs = gym.make_vec("CIMBlockDrop-v0", num_envs=256, vectorization_mode="vector_entry_point", chip_seed=args.seed)
    blocks = envs.single_action_space.n
    rng = np.random.default_rng(args.seed)
    policies = {
        "all blocks": lambda n: np.ones((n, blocks), dtype=np.int8),
        "random half": lambda n: (rng.random((n, blocks)) < 0.5).astype(np.int8),
    }
    print(f"CIMBlockDrop-v0: {blocks} blocks, sigma grid {envs.unwrapped.core.sigmas}")
    for name, policy in policies.items():
        envs.reset(seed=args.seed)  # same images and chips for both policies
        sigma, correct, usage = [], [], []
        for _ in range(args.episodes // envs.num_envs):
            _, _, _, _, info = envs.step(policy(envs.num_envs))
            final = info["final_info"]
            sigma.append(final["sigma"]), correct.append(final["correct"]), usage.append(final["usage"])
        sigma, correct, usage = map(np.concatenate, (sigma, correct, usage))
        by_sigma = "  ".join(f"{s:.3f}: {correct[sigma == s].mean():.1%}" for s in np.unique(sigma))
        print(f"{name:<12} accuracy {correct.mean():.1%}, blocks used {usage.mean():.0%} | by sigma {by_sigma}")


if __name__ == "__main__":
    main()
