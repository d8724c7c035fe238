"""Benchmarks of the CIM hardware model, measured side by side in one run (ratios, so the machine cancels out).

1. Programming a ResNet-56 chip (sigma > 0): median time, target <= 50 ms.
2. Fast-path chip forward vs the clean quantized forward, same batch: target <= 1.10x.
3. Exact path with NeuroSim V1.3 defaults (8b/8b, 4-bit cells, 128 rows, 5-bit ADC, bit-serial) vs the clean
   quantized forward: target <= 25x.
4. Per-chip ADC calibration (programming an exact chip, which runs the calibration batch once) vs one exact
   forward of the same batch on an already calibrated chip: target <= 1.5x.
5. Integer GEMM (int8 x int8 -> int32, ``torch._int_mm``; and int32) vs float32 for one partial-sum GEMM of the
   exact path (a 128-row sub-array, 64 output channels x 2 slices + reference, 8 bit planes of 512 pixels): the
   exact path uses float32, which wins on CPU; the row says by how much (and on CUDA when one is present).

Inputs: a Fashion-MNIST-shaped 1x28x28 batch and a CIFAR-shaped 3x32x32 batch. Timings are medians over repeats,
with the two sides of each ratio interleaved. ``--margin-study`` instead measures what the ADC range options buy on
the shipped digits ResNet-56 (test accuracy of ``neurosim`` chips, 256 calibration images). Usage::

    python benchmarks/bench_hardware.py [--depth 56] [--batch 128] [--threads N] [--repeats 7] [--exact-repeats 3]
    python benchmarks/bench_hardware.py --margin-study [--chips 2]
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected an integer >= 1")
    return value


def gemm_row(device: str, repeats: int) -> tuple[str, str, float, str, str]:
    """float32 vs int8 (``torch._int_mm``) vs int32 matmul of one partial-sum GEMM; ratio int8 time / float time."""
    gen = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 16, (64 * 2 + 1, 128), generator=gen, dtype=torch.int8).to(device)
    planes = torch.randint(0, 2, (128, 8 * 512), generator=gen, dtype=torch.int8).to(device)
    cf, pf = cells.float(), planes.float()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def run_float() -> None:
        torch.mm(cf, pf)
        sync()

    def run_int8() -> None:
        torch._int_mm(cells, planes)
        sync()

    t_float, t_int8 = paired(run_float, run_int8, min(repeats, 3))
    ci, pi = cells.int(), planes.int()
    t_int32 = statistics.median(timed(lambda: (torch.mm(ci, pi), sync())) for _ in range(max(1, repeats // 2)))
    r = t_int8 / t_float
    return (f"integer / float32 GEMM of partial sums ({device}; int32: {t_int32 / t_float:.1f}x)",
            f"{t_int8 * 1e3:.1f} / {t_float * 1e3:.1f} ms", r, "< 1x to adopt", "float kept" if r >= 1 else "int wins")


def margin_study(chips: int) -> None:
    """Test accuracy of the shipped digits ResNet-56 on ``neurosim`` chips (sigma 0) for ADC range options."""
    from tqdm import tqdm

    from cim_gym.backbones import load_backbone
    from cim_gym.data import load_dataset

    bb = load_backbone("digits", 56)
    data = load_dataset("digits")
    x_cal, x_test, y_test = data.train.images[:256], data.test.images, data.test.labels
    base = get_preset("neurosim")
    options = [("ideal ADC (adc_bits=None)", base.replace(adc_bits=None), 256),
               ("5-bit, min/max of 256 images (default)", base, 256),
               ("5-bit, min/max of 1024 images", base, 1024)]
    options += [(f"5-bit, 256 images, adc_range_margin={m:g}", base.replace(adc_range_margin=m), 256) for m in (0.1, 0.5)]
    options += [(f"5-bit, 256 images, adc_range_percentile={p:g}", base.replace(adc_range_percentile=p), 256)
                for p in (99.99, 99.9, 99.5, 99.0, 98.0)]
    options += [("5-bit, full_scale", base.replace(adc_range="full_scale"), 256)]
    print(f"digits ResNet-56, neurosim preset, sigma 0, {chips} chip(s) each, {len(y_test)} test images")
    print("| ADC range option | accuracy (%) |\n| --- | --- |")
    for label, cfg, n_cal in tqdm(options, desc="options", leave=False):
        calib = calibrate(bb.model, cfg, data.train.images[:n_cal] if n_cal != 256 else x_cal)
        accs = []
        for seed in range(chips):
            chip = program(bb.model, cfg, 0.0, seed, calibration=calib)
            with torch.no_grad():
                accs.append(float((chip(x_test).argmax(1) == y_test).float().mean()) * 100)
        print(f"| {label} | {statistics.mean(accs):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=positive_int, default=56, help="ResNet depth 6n+2 (default 56)")
    parser.add_argument("--batch", type=positive_int, default=128, help="images per timed forward (default 128)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: what the machine gives)")
    parser.add_argument("--repeats", type=positive_int, default=7, help="repeats of the fast timings (default 7)")
    parser.add_argument("--exact-repeats", type=positive_int, default=3, help="repeats of the exact-path timings")
    parser.add_argument("--calib-images", type=positive_int, default=32,
                        help="calibration batch of the calibration-cost row (default 32)")
    parser.add_argument("--sigma", type=float, default=0.05, help="programming sigma of the chips (default 0.05)")
    parser.add_argument("--margin-study", action="store_true",
                        help="measure the ADC range options on the digits ResNet-56 instead of timing")
    parser.add_argument("--chips", type=positive_int, default=2, help="chips per option in --margin-study")
    args = parser.parse_args()
    if not 0 <= args.sigma < 10:
        parser.error(f"--sigma {args.sigma} is not allowed: expected a number in [0, 10)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.margin_study:
        margin_study(args.chips)
        return
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

        # 4. per-chip calibration vs one exact forward of the calibration batch
        x_cal = x[:args.calib_images]
        calib = calibrate(qmodel, exact_cfg, x_cal)
        seeds = iter(range(100, 10_000))
        with torch.no_grad():
            t_cal, t_fwd = paired(lambda: program(qmodel, exact_cfg, args.sigma, next(seeds), calibration=calib),
                                  lambda: echip(x_cal), args.exact_repeats)
        r = t_cal / t_fwd
        rows.append((f"per-chip calibration / exact forward of its {len(x_cal)} images ({tag})",
                     f"{t_cal * 1e3:.0f} / {t_fwd * 1e3:.0f} ms", r, "<= 1.5x", "ok" if r <= 1.5 else "MISS"))

    rows.append(gemm_row("cpu", args.repeats))
    if torch.cuda.is_available():
        rows.append(gemm_row("cuda", args.repeats))

    w = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{w}} | times | value | target | |")
    print(f"| {'-' * w} | --- | --- | --- | --- |")
    for name, times_txt, value, target, ok in rows:
        unit = "ms" if "ms" in target or not target else "x"
        val = f"{value:.1f} ms" if unit == "ms" else f"{value:.2f}x"
        print(f"| {name:<{w}} | {times_txt} | {val} | {target} | {ok} |")


if __name__ == "__main__":
    main()
