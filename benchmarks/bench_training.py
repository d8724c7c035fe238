"""Cost of one backbone training step, measured side by side in one run (ratios, so the machine cancels out).

Every row is the time per image of one SGD step (forward, backward, optimizer step; stochastic-depth masks as in
training) relative to the quantization-aware (QAT) step at the reference batch size:

- ``qat``: fake-quantized inputs and weights (straight-through), channels-first -- what training did before;
- ``float``: the plain model (float pretraining, ``--float-epochs``);
- ``float channels_last`` / ``qat channels_last``: the same with the model and inputs in channels-last memory layout;
- ``float batch 2B`` / ``float batch 4B``: larger batches (the learning rate would scale with the batch);
- ``qat, fused input fake-quant``: the QAT step with the input quantizer as one autograd node (same values, the
  straight-through gradient from a saved in-range mask) -- a candidate for ``cim_gym.hardware.quant``;
- ``data``: drawing the batch from the in-memory training tensor and augmenting it (random crop + flip,
  vectorized), with no per-sample Python work.

Timings are medians over ``--repeats`` rounds; within a round every row runs once, in the same order, so
background load hits all rows alike. Usage::

    python benchmarks/bench_training.py [--depth 20] [--batch 128] [--threads 1] [--repeats 7] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import cim_gym  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cim_gym.backbones.train import TrainSettings, augment_batch, make_optimizer, quant_config, survival_mask  # noqa: E402
from cim_gym.hardware import quantize_model  # noqa: E402
from cim_gym.models import ResNet  # noqa: E402


def step_fn(model: nn.Module, batch: int, *, channels_last: bool, seed: int) -> Callable[[], None]:
    """One training step of ``model`` on a fixed random 1x28x28 batch of size ``batch``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    opt = make_optimizer(model, TrainSettings(dataset="fashion-mnist"))
    mgen = torch.Generator().manual_seed(seed + 1)

    def step() -> None:
        mask = survival_mask(batch, model.num_blocks, 0.8, mgen)
        loss = F.cross_entropy(model(x, mask=mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class _FusedInputQuant(torch.autograd.Function):
    """Input fake quantization in one autograd node: the same values as ``quantize_input`` (clamp, scale, round,
    rescale), the straight-through gradient as a saved in-range mask (one pass) instead of the ``minimum`` /
    ``maximum`` / add / subtract graph of the reference. The gradients are equal except for inputs exactly on a
    range edge, where the reference's ``maximum`` / ``minimum`` pass half (after a ReLU those get none anyway)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, input_range: Tensor, bits: int, signed: bool) -> Tensor:  # type: ignore[override]
        top = float(max(2 ** (bits - 1) - 1, 1) if signed else 2**bits - 1)
        r = input_range.clamp_min(1e-12)
        lo = -r if signed else torch.zeros_like(r)
        ctx.save_for_backward((x >= lo) & (x <= r))
        return torch.clamp(x, lo, r).mul_(top / r).round_().mul_(r / top)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fused_quantize_input(x: Tensor, input_range: Tensor, bits: int, signed: bool) -> Tensor:
    """Drop-in for ``cim_gym.hardware.quant.quantize_input`` (benchmark candidate: is a fused op cheaper?)."""
    return _FusedInputQuant.apply(x, input_range, bits, signed)


def with_fused_input_quant(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` run with :func:`fused_quantize_input` in place of the reference input quantizer."""
    from cim_gym.hardware import quant

    def run() -> None:
        original = quant.quantize_input
        quant.quantize_input = fused_quantize_input
        try:
            fn()
        finally:
            quant.quantize_input = original

    return run


def data_fn(batch: int, seed: int) -> Callable[[], Tensor]:
    """Draw a batch from a 54000-image in-memory tensor and augment it (crop + flip), as the trainer does."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(54000, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (54000,), generator=gen)
    fill = torch.tensor([-0.81])

    def draw() -> Tensor:
        idx = torch.randint(0, 54000, (batch,), generator=gen)
        x, _ = images[idx], labels[idx]
        return augment_batch(x, gen, 4, True, fill)

    return draw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20, help="ResNet depth 6n+2")
    parser.add_argument("--batch", type=int, default=128, help="reference batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=7, help="rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=3, help="steps per row per round")
    args = parser.parse_args(argv)
    for name in ("depth", "batch", "threads", "repeats", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} is not allowed: expected a positive integer")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    b = args.batch
    cfg = quant_config(TrainSettings(dataset="fashion-mnist"))

    def fresh() -> ResNet:
        torch.manual_seed(0)
        return ResNet(args.depth, 10, 1)

    rows: dict[str, tuple[Callable[[], object], int]] = {
        f"qat batch {b}": (step_fn(quantize_model(fresh(), cfg), b, channels_last=False, seed=1), b),
        f"float batch {b}": (step_fn(fresh(), b, channels_last=False, seed=1), b),
        f"qat, fused input fake-quant, batch {b}": (
            with_fused_input_quant(step_fn(quantize_model(fresh(), cfg), b, channels_last=False, seed=1)), b),
        f"qat channels_last batch {b}": (step_fn(quantize_model(fresh(), cfg), b, channels_last=True, seed=1), b),
        f"float channels_last batch {b}": (step_fn(fresh(), b, channels_last=True, seed=1), b),
        f"float batch {2 * b}": (step_fn(fresh(), 2 * b, channels_last=False, seed=1), 2 * b),
        f"float batch {4 * b}": (step_fn(fresh(), 4 * b, channels_last=False, seed=1), 4 * b),
        f"qat batch {2 * b}": (step_fn(quantize_model(fresh(), cfg), 2 * b, channels_last=False, seed=1), 2 * b),
        f"data (index + crop + flip) batch {b}": (data_fn(b, 2), b),
    }
    for fn, _ in rows.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    from tqdm import tqdm

    for _ in tqdm(range(args.repeats), desc="rounds", file=sys.stderr):
        for key, (fn, n) in rows.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[key].append((time.perf_counter() - t) / (args.steps * n))
    ref = statistics.median(times[f"qat batch {b}"])
    print(f"ResNet-{args.depth}, 1x28x28, {args.threads} thread(s), median of {args.repeats} rounds x {args.steps} steps")
    print("| step | ms / image | relative to QAT batch %d |" % b)
    print("| --- | --- | --- |")
    for key in rows:
        med = statistics.median(times[key])
        print(f"| {key} | {1000 * med:.3f} | {med / ref:.2f}x |")


if __name__ == "__main__":
    main()
