"""What the chip descriptor costs, measured side by side per chip: programming the chip, one forward of the probe
batch on it, and the descriptor (the post-programming test). Goal: descriptor <= programming + one forward.

    python benchmarks/bench_descriptor.py [--env-id CIMBlockDrop-v0] [--cim ideal] [--chips 6] [--probe-images 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

import cim_gym  # noqa: F401
from cim_gym.hardware import program


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="CIMBlockDrop-v0", help="a registered cim-gym id")
    parser.add_argument("--dataset", default="digits", help="data set (default digits)")
    parser.add_argument("--cim", default="ideal", help="chip preset (default ideal; e.g. neurosim for an ADC)")
    parser.add_argument("--chips", type=int, default=6, help="chips measured (default 6)")
    parser.add_argument("--probe-images", type=int, default=64, help="probe batch size (default 64)")
    parser.add_argument("--sigma", type=float, default=0.1, help="sigma of the measured chips (default 0.1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.chips < 1 or args.probe_images < 1:
        parser.error("--chips and --probe-images must be integers >= 1")
    if not np.isfinite(args.sigma) or args.sigma < 0:
        parser.error(f"--sigma={args.sigma} is not allowed: expected a finite number >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    env = gym.make(args.env_id, dataset=args.dataset, cim=args.cim, sigmas=[args.sigma], chips_per_sigma=args.chips,
                   observe_chip=True, probe_images=args.probe_images, chip_seed=0).unwrapped
    env.reset(seed=0)
    core = env.core
    probe = core.probe  # the digital reference: once per environment, not per chip
    rows: dict[str, list[float]] = {"program": [], "forward": [], "descriptor": []}
    for chip_id in tqdm(range(args.chips), desc="chips"):
        pool = core.pool
        start = time.perf_counter()
        chip = program(pool.qmodel, pool.cfg, pool.sigma_of(chip_id), pool.seed_of(chip_id), pool.calibration,
                       pool.noise_source)
        rows["program"].append(time.perf_counter() - start)
        with torch.no_grad():
            start = time.perf_counter()
            chip(probe.images)
            rows["forward"].append(time.perf_counter() - start)
        start = time.perf_counter()
        probe.describe(chip)
        rows["descriptor"].append(time.perf_counter() - start)

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{args.env_id} on {args.dataset}, cim={args.cim}, sigma {args.sigma}, probe {args.probe_images} images, "
          f"{args.chips} chips, torch threads {torch.get_num_threads()}")
    print(f"{'per chip':<34} {'median ms':>10}")
    for name, label in (("program", "programming"), ("forward", "one forward of the probe batch"),
                        ("descriptor", "descriptor (the test)")):
        print(f"{label:<34} {med[name] * 1e3:>10.1f}")
    print(f"descriptor / (programming + one forward): {med['descriptor'] / (med['program'] + med['forward']):.2f}")


if __name__ == "__main__":
    main()
