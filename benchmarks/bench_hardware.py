"""Benchmarks of the CIM hardware model, measured side by side in one run (ratios, so the machine cancels out).

1. Programming a ResNet-56 chip (sigma > 0): median time, target <= 50 ms.
2. Fast-path chip forward vs the clean quantized forward, same batch: target <= 1.10x.
3. Exact path with NeuroSim V1.3 defaults (8b/8b, 4-bit cells, 128 rows, 5-bit ADC, bit-serial) vs the clean
   quantized forward: target <= 25x.

Inputs: a Fashion-MNIST-shaped 1x28x28 batch and a CIFAR-shaped 3x32x32 batch. Timings are medians over repeats,
with the two sides of each ratio interleaved. Usage::

    python benchmarks/bench_hardware.py [--depth 56] [--batch 128] [--threads N] [--repeats 7] [--exact-repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

try:
    import cim_gym  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cim_gym.hardware import calibrate, get_preset, program, quantize_model  # noqa: E402
from cim_gym.models import ResNet  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, run alternately after one warm-up each."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a))
        tb.append(timed(b))
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: what the machine gives)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--exact-repeats", type=int, default=3)
    parser.add_argument("--sigma", type=float, default=0.05)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, threads {threads}, cpus {os.cpu_count()}, load avg {load:.2f}, "
          f"ResNet-{args.depth}, batch {args.batch}, sigma {args.sigma}")
    rows: list[tuple[str, str, float, str, str]] = []
    ideal_cfg = get_preset("neurosim").replace(adc_bits=None)  # the fast path: ideal ADC, no read noise
    exact_cfg = get_preset("neurosim")
    for shape in ((1, 28, 28), (3, 32, 32)):
        torch.manual_seed(0)
        model = ResNet(args.depth, 10, shape[0])
        x = torch.randn(args.batch, *shape)
        qmodel = quantize_model(model, exact_cfg, example_input=x[:32]).eval()
        tag = "x".join(map(str, shape))

        # 1. programming
        program(qmodel, ideal_cfg, args.sigma, 0)
        times = [timed(lambda i=i: program(qmodel, ideal_cfg, args.sigma, i + 1)) for i in range(max(args.repeats, 11) * 2)]
        t_prog = statistics.median(times)
        rows.append((f"program ResNet-{args.depth} chip ({tag} model)", f"{t_prog * 1e3:.1f} ms", t_prog * 1e3,
                     "<= 50 ms", "ok" if t_prog <= 0.050 else "MISS"))

        # 2. fast path vs clean quantized forward
        chip = program(qmodel, ideal_cfg, args.sigma, 1)
        with torch.no_grad():
            t_clean, t_fast = paired(lambda: qmodel(x), lambda: chip(x), args.repeats)
        r = t_fast / t_clean
        rows.append((f"fast path / clean quantized forward ({tag})", f"{t_fast * 1e3:.0f} / {t_clean * 1e3:.0f} ms", r,
                     "<= 1.10x", "ok" if r <= 1.10 else "MISS"))

        # 3. exact path (NeuroSim defaults, per-chip calibrated 5-bit ADC) vs clean quantized forward
        calib = calibrate(qmodel, exact_cfg, x[:32], chip_batch=16)
        t0 = time.perf_counter()
        echip = program(qmodel, exact_cfg, args.sigma, 1, calibration=calib)
        t_eprog = time.perf_counter() - t0
        with torch.no_grad():
            t_clean, t_exact = paired(lambda: qmodel(x), lambda: echip(x), args.exact_repeats)
        r = t_exact / t_clean
        rows.append((f"exact path (neurosim) / clean forward ({tag})", f"{t_exact * 1e3:.0f} / {t_clean * 1e3:.0f} ms",
                     r, "<= 25x", "ok" if r <= 25 else "MISS"))
        rows.append((f"  (programming + per-chip ADC calibration on 16 images, {tag})", f"{t_eprog * 1e3:.0f} ms",
                     t_eprog * 1e3, "", ""))

    w = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{w}} | times | value | target | |")
    print(f"| {'-' * w} | --- | --- | --- | --- |")
    for name, times_txt, value, target, ok in rows:
        unit = "ms" if "ms" in target or not target else "x"
        val = f"{value:.1f} ms" if unit == "ms" else f"{value:.2f}x"
        print(f"| {name:<{w}} | {times_txt} | {val} | {target} | {ok} |")


if __name__ == "__main__":
    main()
