"""Train a backbone: float pretraining and/or quantization-aware training, with stochastic depth (block-drop) or
joint exit losses (multi-exit).

Usage (``--help`` lists every setting)::

    python -m cim_gym.backbones.train --dataset digits --depth 20 --variant blockdrop
    python -m cim_gym.backbones.train --dataset fashion-mnist --depth 20 --epochs 12 --float-epochs 10
    python -m cim_gym.backbones.train --dataset fashion-mnist --depth 56 --survival 1.0   # no stochastic depth
    python -m cim_gym.backbones.train --dataset digits --depth 20 --noise-aware-training 0.1

What it does, in order: check every setting and that the output folder can be written (before any work: a bad
value leaves no run folder behind); seed everything from ``--seed``; build the plain ResNet / MultiExitResNet; train
it in float for ``--float-epochs`` epochs, then quantize it with the simulator's fake quantizers
(``quantize_model``, straight-through estimator, per-layer input ranges tracked by EMA in train mode) and finetune
it quantization-aware for the remaining epochs (without ``--float-epochs``: quantization-aware throughout); SGD +
Nesterov momentum under one warm-up + cosine (or one-cycle) schedule spanning both phases, random-crop (+ flip for
Fashion-MNIST and CIFAR) augmentation, per-sample per-block Bernoulli survival masks (stochastic depth, BlockDrop's
drop semantics; on by default for block-drop, with ``--survival`` for multi-exit), a weighted sum of exit losses
for multi-exit, and optionally noise injection through the chip model at a sigma drawn per batch (QAT epochs);
keep the quantization-aware epoch with the best validation accuracy; at the end measure test accuracy (and, for
block-drop, accuracy with random masks keeping a third and two thirds of the blocks) and write the checkpoint
(``save_checkpoint``) to the output folder, the wall time per phase in its sidecar.

The checkpoint's name is ``<dataset>-resnet<depth>-<variant>[-<recipe>]``: a survival probability other than the
variant's default or a seed other than 0 is part of it (``recipe_label``: ``no-stochastic-depth``,
``stochastic-depth``, ``seed1``, ...), so differently trained models never share a name.

The run folder (``--run-dir``, default ``runs/backbones/<name>-seed<seed>``) holds ``settings.json``,
``last.pt`` (written atomically after every epoch: model, optimizer, schedule, RNG states, phase, best so far),
``log.jsonl`` (one line per epoch). Running the same command again resumes from ``last.pt``; the result is the
same as an uninterrupted run. Every random choice (initialization, shuffling, augmentation, masks, noise) comes
from generators seeded by ``--seed``; the global RNG is used only for the initialization, seeded first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cim_gym.backbones.checkpoint import (
    DEFAULT_SURVIVAL,
    VARIANTS,
    architecture_of,
    atomic_write,
    backbone_name,
    cache_dir,
    recipe_label,
    save_checkpoint,
)
from cim_gym.devices import pick_device
from cim_gym.hardware.config import NOISE_SOURCES

FLIP_DATASETS = ("fashion-mnist", "cifar10", "cifar100")
"""Data sets trained with random horizontal flips (not digits / MNIST: a flipped digit is another symbol)."""

KEEP_FRACTIONS = (1 / 3, 2 / 3)
"""Random-mask robustness is reported for masks keeping these fractions of the blocks."""


@dataclass
class TrainSettings:
    """Every setting of a backbone training run (one source of truth: the CLI, the run folder and the sidecar)."""

    dataset: str = "digits"
    """Data set name (``cim_gym.data``): digits, fashion-mnist, mnist, cifar10, cifar100."""
    depth: int = 20
    """ResNet depth 6n+2 (8, 14, 20, 32, 56, 110, ...)."""
    variant: str = "blockdrop"
    """"blockdrop" (ResNet, stochastic depth) or "multiexit" (MultiExitResNet, joint exit losses)."""
    epochs: int = 60
    """Training epochs (the schedule spans exactly these)."""
    float_epochs: int = 0
    """Float pretraining: the first ``float_epochs`` epochs train the plain model (no fake quantization, ~1.5x
    cheaper per step); the remaining ``epochs - float_epochs`` are the quantization-aware finetune, at the tail of
    the same learning-rate schedule. 0: quantization-aware throughout. The model kept is the best of the QAT epochs."""
    channels_last: bool = False
    """Model and batches in channels-last memory layout (see ``benchmarks/bench_training.py`` for what it costs)."""
    batch_size: int = 128
    """Mini-batch size."""
    lr: float = 0.1
    """Peak learning rate (SGD, Nesterov momentum 0.9)."""
    weight_decay: float = 5e-4
    """L2 weight decay (on weights only, not BatchNorm or biases)."""
    schedule: str = "cosine"
    """"cosine" (linear warm-up over ``warmup_epochs``, then cosine to 0) or "onecycle" (torch's OneCycleLR)."""
    warmup_epochs: float = 1.0
    """Linear warm-up length in epochs, for the cosine schedule."""
    survival: float | None = None
    """Per-sample per-block survival probability of stochastic depth; None: 0.8 for blockdrop, 1.0 (off) for
    multiexit. Dropped blocks follow BlockDrop's semantics (the block becomes its shortcut). A value other than the
    variant's default is part of the checkpoint's name (its recipe: ``no-stochastic-depth``, ``stochastic-depth``)."""
    exit_weights: tuple[float, ...] | None = None
    """Weights of the exit losses (normalized to sum 1), shallowest exit first; None: (1.0, 0.6, 0.3) for 3 exits,
    else linear from 1.0 to 0.3 (the proposal's decreasing weights). ``1 1 1`` gives BranchyNet's equal weights."""
    exit_after: tuple[int, ...] | None = None
    """Multi-exit only: block indices after which an intermediate exit sits; None: the end of every stage but the last."""
    noise_aware_sigma: float = 0.0
    """Noise-injection (hardware-aware) training: > 0 draws sigma ~ U(0, this) per batch and perturbs the weights
    through the chip model (``inject_noise``) for that batch. 0: off."""
    noise_source: str = "programming"
    """What that sigma scales: "programming", "read" or "output" (``CIMConfig.scaled``)."""
    weight_bits: int = 8
    """Weight bits of quantization-aware training (``CIMConfig.weight_bits``)."""
    input_bits: int = 8
    """Input (activation) bits of quantization-aware training (``CIMConfig.input_bits``)."""
    augment: bool = True
    """Random crop with padding (+ horizontal flip for Fashion-MNIST and CIFAR)."""
    val_fraction: float = 0.1
    """Share of the training set held out (stratified) for validation and model selection."""
    seed: int = 0
    """Seed of everything: initialization, the train/val split, shuffling, augmentation, masks, noise. A seed other
    than 0 is part of the checkpoint's name (recipe ``seed<n>``)."""
    mask_eval_draws: int = 5
    """Random masks per test image (each a different draw) when measuring accuracy at 1/3 and 2/3 of the blocks."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu", "cuda", "cuda:1", ..."""
    threads: int = 0
    """torch CPU threads; 0 leaves torch's default."""
    data_root: str | None = None
    """Data folder (``cim_gym.data.load_dataset(root=)``)."""
    run_dir: str | None = None
    """Run folder (resume state, logs); None: ``runs/backbones/<name>-seed<seed>``."""
    out: str | None = None
    """Folder of the final checkpoint; None: the user cache (``$CIM_GYM_HOME/backbones``)."""
    progress: bool = True
    """Show a tqdm progress bar per epoch."""
    flush_denormal: bool = True
    """Flush denormal floats to zero on CPU (``torch.set_flush_denormal``): late in training, denormal gradients
    and momenta made CPU steps up to 4x slower here; the effect on the weights is below 1e-38."""

    # settings that do not change the result (a run may be resumed with other values)
    RUNTIME_FIELDS = ("device", "threads", "data_root", "run_dir", "out", "progress", "flush_denormal")

    def __post_init__(self) -> None:
        from cim_gym.data import dataset_info
        from cim_gym.models import blocks_per_stage

        for name in ("dataset", "variant", "schedule", "noise_source", "device"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: expected a string")
        dataset_info(self.dataset)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is not allowed: expected one of {VARIANTS}")
        if self.schedule not in ("cosine", "onecycle"):
            raise ValueError(f"schedule={self.schedule!r} is not allowed: expected 'cosine' or 'onecycle'")
        if self.noise_source not in NOISE_SOURCES:
            raise ValueError(f"noise_source={self.noise_source!r} is not allowed: expected one of {NOISE_SOURCES}")
        for name in ("depth", "epochs", "batch_size", "float_epochs", "weight_bits", "input_bits", "seed",
                     "mask_eval_draws", "threads"):
            _check_int(name, getattr(self, name))
            setattr(self, name, int(getattr(self, name)))
        blocks_per_stage(self.depth)
        for name in ("epochs", "batch_size", "mask_eval_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: expected a positive integer")
        for name in ("seed", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: expected an integer >= 0")
        if not 0 <= self.float_epochs < self.epochs:
            raise ValueError(f"float_epochs={self.float_epochs!r} is not allowed: expected 0 <= float_epochs < "
                             f"epochs={self.epochs} (at least one quantization-aware epoch)")
        for name in ("lr", "weight_decay", "warmup_epochs", "noise_aware_sigma", "val_fraction"):
            _check_float(name, getattr(self, name))
            setattr(self, name, float(getattr(self, name)))
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r} is not allowed: expected a finite number > 0")
        for name in ("weight_decay", "warmup_epochs", "noise_aware_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: expected a finite number >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction!r} is not allowed: expected a number in (0, 1)")
        if self.survival is not None:
            _check_float("survival", self.survival)
            self.survival = float(self.survival)
            if not 0.0 < self.survival <= 1.0:
                raise ValueError(f"survival={self.survival!r} is not allowed: expected a probability in (0, 1]")
        for name in ("augment", "progress", "flush_denormal", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: expected True or False")
        pick_device(self.device)
        quant_config(self)  # the weight / input bits, validated by CIMConfig
        if self.exit_after is not None or self.exit_weights is not None:
            if self.variant != "multiexit":
                raise ValueError(f"exit_after / exit_weights need variant='multiexit' (variant={self.variant!r})")
        if self.exit_after is not None:
            for t in self.exit_after:
                _check_int("exit_after", t)
            self.exit_after = tuple(int(t) for t in self.exit_after)
        num_exits = None
        if self.variant == "multiexit":
            from cim_gym.models import MultiExitResNet

            num_exits = MultiExitResNet(self.depth, 10, 1, exit_after=self.exit_after).num_exits  # validates exit_after
        if self.exit_weights is not None:
            for w in self.exit_weights:
                _check_float("exit_weights", w)
            self.exit_weights = tuple(float(w) for w in self.exit_weights)
            if any(w < 0 for w in self.exit_weights) or sum(self.exit_weights) <= 0:
                raise ValueError(f"exit_weights={self.exit_weights!r} is not allowed: expected finite, non-negative, "
                                 "not all 0")
            if len(self.exit_weights) != num_exits:
                raise ValueError(f"exit_weights={self.exit_weights!r} is not allowed: the model has {num_exits} exits, "
                                 f"so {num_exits} weights are needed")

    @property
    def name(self) -> str:
        """The checkpoint's name: ``<dataset>-resnet<depth>-<variant>[-<recipe>]``."""
        return backbone_name(self.dataset, self.depth, self.variant, self.recipe)

    @property
    def recipe(self) -> str:
        """The recipe part of the name (``recipe_label``): "standard", "no-stochastic-depth", "seed1", ..."""
        return recipe_label(self.variant, self.survival_p, self.seed)

    @property
    def survival_p(self) -> float:
        """The survival probability in effect (``survival``, else the variant's default)."""
        if self.survival is not None:
            return float(self.survival)
        return DEFAULT_SURVIVAL[self.variant]

    def result_fields(self) -> dict[str, Any]:
        """The settings that determine the trained weights (everything but the runtime ones)."""
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k not in self.RUNTIME_FIELDS}

    def command(self) -> str:
        """The command line that reproduces this run (non-default result settings spelled out)."""
        default = TrainSettings(dataset=self.dataset, depth=self.depth, variant=self.variant)
        parts = ["python -m cim_gym.backbones.train", f"--dataset {self.dataset}", f"--depth {self.depth}",
                 f"--variant {self.variant}"]
        for f in dataclasses.fields(self):
            if f.name in ("dataset", "depth", "variant") or f.name in self.RUNTIME_FIELDS:
                continue
            value = getattr(self, f.name)
            if value == getattr(default, f.name):
                continue
            flag = "--" + ("noise-aware-training" if f.name == "noise_aware_sigma" else f.name.replace("_", "-"))
            if isinstance(value, bool):
                parts.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, tuple):
                parts.append(flag + " " + " ".join(_fmt(v) for v in value))
            else:
                parts.append(f"{flag} {_fmt(value)}")
        return " ".join(parts)


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} is not allowed: expected an integer")


def _check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not allowed: expected a finite number")


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


# ---- pieces -----------------------------------------------------------------------------------------------------
def crop_padding(image_size: int) -> int:
    """Padding of the random crop: 4 pixels for 28x28 / 32x32 images, 1 for 8x8 digits."""
    return max(1, image_size // 7)


def augment_batch(x: Tensor, gen: torch.Generator, pad: int, flip: bool, fill: Tensor) -> Tensor:
    """Random crop of size (H, W) from ``x`` padded by ``pad`` with ``fill`` (per channel: the normalized value of
    a black pixel), per sample; then a horizontal flip with probability 1/2 when ``flip``. Vectorized."""
    b, c, h, w = x.shape
    padded = fill.view(1, c, 1, 1).expand(b, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad : pad + h, pad : pad + w] = x
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    out = out.gather(3, cols)
    if flip:
        flips = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        out = torch.where(flips.view(b, 1, 1, 1), out.flip(3), out)
    return out


def survival_mask(batch: int, blocks: int, p: float, gen: torch.Generator) -> Tensor:
    """Per-sample, per-block Bernoulli(p) keep mask (bool, (batch, blocks))."""
    return torch.rand(batch, blocks, generator=gen) < p


def random_keep_masks(batch: int, blocks: int, keep: int, gen: torch.Generator) -> Tensor:
    """Masks keeping exactly ``keep`` blocks per sample, the kept set uniform at random (bool, (batch, blocks))."""
    order = torch.rand(batch, blocks, generator=gen).argsort(dim=1)
    mask = torch.zeros(batch, blocks, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], True)
    return mask


def multiexit_logits(model: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """Every exit's logits (E, B, classes) of a (quantized) MultiExitResNet with per-sample block masks (B, K):
    stochastic depth for multi-exit training (a dropped block becomes its shortcut, as in block-drop)."""
    h, start, outputs = model.stem(x), 0, []
    for e, stop in enumerate(model.exit_after):
        h = model.run_blocks(h, mask, start, stop + 1)
        start = stop + 1
        outputs.append(model.exit_module(e)(h))
    return torch.stack(outputs)


def default_exit_weights(num_exits: int) -> tuple[float, ...]:
    if num_exits == 3:
        return (1.0, 0.6, 0.3)
    if num_exits == 1:
        return (1.0,)
    return tuple(round(1.0 - 0.7 * e / (num_exits - 1), 4) for e in range(num_exits))


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, *, mask: Tensor | None = None,
             batch_size: int = 1000, device: torch.device | str = "cpu") -> Tensor:
    """Accuracy in percent: a scalar tensor for a ResNet, (E,) for a MultiExitResNet (one per exit).

    ``mask`` (N, K) applies per-sample block masks (ResNet only). The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    correct: Tensor | None = None
    for i in range(0, len(labels), batch_size):
        x = images[i : i + batch_size].to(device)
        y = labels[i : i + batch_size].to(device)
        out = model(x) if mask is None else model(x, mask=mask[i : i + batch_size].to(device))
        hits = (out.argmax(-1) == y).sum(-1).cpu()
        correct = hits if correct is None else correct + hits
    model.train(was_training)
    assert correct is not None
    return correct.double() * 100.0 / len(labels)


def random_mask_accuracy(model: nn.Module, images: Tensor, labels: Tensor, keep_fraction: float, draws: int,
                         seed: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Accuracy with random masks keeping ``round(keep_fraction * K)`` blocks per sample: mean and std over
    ``draws`` independent draws (every test image gets a new mask in each draw), seeded by ``seed``."""
    K = model.num_blocks
    keep = max(1, round(keep_fraction * K))
    gen = torch.Generator().manual_seed(seed)
    accs = [float(evaluate(model, images, labels, mask=random_keep_masks(len(labels), K, keep, gen), device=device))
            for _ in range(draws)]
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / max(1, len(accs) - 1))
    return {"keep": keep, "of": K, "mean": round(mean, 3), "std": round(std, 3), "draws": [round(a, 3) for a in accs]}


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=s.lr, momentum=0.9, nesterov=True)


def make_scheduler(opt: torch.optim.Optimizer, s: TrainSettings, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    total = s.epochs * steps_per_epoch
    if s.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=total)
    warm = min(total - 1, int(round(s.warmup_epochs * steps_per_epoch)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def quant_config(s: TrainSettings) -> Any:
    """The ``CIMConfig`` of training: ideal hardware (no noise, ideal ADC) at the run's weight and input bits."""
    from cim_gym.hardware import CIMConfig

    return CIMConfig(weight_bits=s.weight_bits, input_bits=s.input_bits, cell_bits=_cell_bits(s.weight_bits))


def _cell_bits(weight_bits: int) -> int:
    return 4 if weight_bits % 4 == 0 else (2 if weight_bits % 2 == 0 else 1)


# ---- the run ----------------------------------------------------------------------------------------------------
def build_plain(s: TrainSettings, info: Any) -> nn.Module:
    """The seeded plain model (ResNet or MultiExitResNet) of run ``s`` on data set ``info``."""
    from cim_gym.models import MultiExitResNet, ResNet

    torch.manual_seed(s.seed)
    if s.variant == "multiexit":
        return MultiExitResNet(s.depth, info.num_classes, info.in_channels, exit_after=s.exit_after)
    return ResNet(s.depth, info.num_classes, info.in_channels)


def build(s: TrainSettings, info: Any) -> tuple[nn.Module, Any]:
    """Seeded plain model, quantized for QAT; returns (quantized model, CIMConfig)."""
    from cim_gym.hardware import quantize_model

    cfg = quant_config(s)
    return quantize_model(build_plain(s, info), cfg), cfg


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write (then remove) a probe file in it; a clear error if that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"{what}={str(folder)!r} is not allowed: it cannot be written ({exc})") from exc


def train_backbone(s: TrainSettings) -> Path:
    """Run (or resume) the training described by ``s``; return the path of the written checkpoint's sidecar."""
    flush = s.flush_denormal and pick_device(s.device).type == "cpu"
    if flush:
        torch.set_flush_denormal(True)
    try:
        return _train(s)
    finally:
        if flush:  # processor-wide state: give the rest of the process torch's default back
            torch.set_flush_denormal(False)


def _settings_differ(previous: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Settings whose value differs between a run folder's ``settings.json`` and this run (a setting the folder
    does not record -- one added after it was written -- counts as its default)."""
    defaults = TrainSettings(dataset=result["dataset"], depth=result["depth"], variant=result["variant"]).result_fields()
    return {k: (previous.get(k, defaults.get(k)), v) for k, v in result.items() if previous.get(k, defaults.get(k)) != v}


def default_run_dir(s: TrainSettings) -> Path:
    """``runs/backbones/<name>-seed<seed>``, the seed not repeated when the name already ends with it."""
    suffix = f"-seed{s.seed}"
    return Path("runs") / "backbones" / (s.name if s.name.endswith(suffix) else s.name + suffix)


def _train(s: TrainSettings) -> Path:
    from tqdm import tqdm

    from cim_gym.data import load_dataset
    from cim_gym.hardware import quantize_model

    t_start = time.perf_counter()
    if s.threads > 0:
        torch.set_num_threads(s.threads)
    device = pick_device(s.device)
    run_dir = Path(s.run_dir) if s.run_dir else default_run_dir(s)
    out_dir = Path(s.out) if s.out else cache_dir()
    settings_path = run_dir / "settings.json"
    result = s.result_fields()
    if settings_path.is_file():
        diff = _settings_differ(json.loads(settings_path.read_text()), result)
        if diff:
            raise ValueError(f"{run_dir} holds a run with other settings {diff} (old, new); use another --run-dir")
    check_writable(out_dir, "out")  # before any work: a folder that cannot be written fails now, not after training
    data = load_dataset(s.dataset, s.data_root, val_fraction=s.val_fraction, seed=s.seed)
    check_writable(run_dir, "run_dir")
    if not settings_path.is_file():
        atomic_write(settings_path, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))

    info = data.info
    cfg = quant_config(s)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    model = build_plain(s, info).to(device=device, memory_format=memory_format)
    qat = s.float_epochs == 0
    if qat:
        model = quantize_model(model, cfg)
    plain_arch = architecture_of(model)
    multi = s.variant == "multiexit"
    weights: tuple[float, ...] = ()
    if multi:
        weights = s.exit_weights or default_exit_weights(model.num_exits)
        exit_w = torch.tensor(weights, dtype=torch.float32, device=device)
        exit_w = exit_w / exit_w.sum()
    opt = make_optimizer(model, s)
    n_train = len(data.train)
    steps = math.ceil(n_train / s.batch_size)
    sched = make_scheduler(opt, s, steps)

    def to_qat(model: nn.Module, opt: torch.optim.Optimizer, sched: Any) -> tuple[nn.Module, Any, Any]:
        """The QAT finetune starts: the quantized copy (same parameter order) takes over the optimizer's momenta
        and the schedule's position."""
        qmodel = quantize_model(model, cfg)
        qopt = make_optimizer(qmodel, s)
        qsched = make_scheduler(qopt, s, steps)
        qopt.load_state_dict(opt.state_dict())  # after the scheduler: restores the learning rate it reset
        qsched.load_state_dict(sched.state_dict())
        return qmodel, qopt, qsched

    gen = torch.Generator().manual_seed(s.seed + 1)        # shuffling, augmentation, masks
    noise_gen = torch.Generator().manual_seed(s.seed + 2)  # noise injection
    fill = ((0.0 - torch.tensor(info.mean)) / torch.tensor(info.std)).to(device)
    pad, flip = crop_padding(info.image_size), info.name in FLIP_DATASETS
    start_epoch, best_acc, best_state, best_epoch = 0, -1.0, None, -1
    last_path = run_dir / "last.pt"
    if last_path.is_file():
        state = torch.load(last_path, map_location=device, weights_only=True)
        if state.get("qat", True) and not qat:
            model, opt, sched = to_qat(model, opt, sched)
            qat = True
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["gen"])
        noise_gen.set_state(state["noise_gen"])
        start_epoch, best_acc, best_epoch = state["epoch"], state["best_acc"], state["best_epoch"]
        best_state = state["best_model"]
        print(f"resuming {run_dir} at epoch {start_epoch}/{s.epochs} (best val {best_acc:.2f}% at epoch {best_epoch})",
              file=sys.stderr)

    p_keep = s.survival_p
    epochs_here = 0.0  # seconds of the epochs run by this process (already in log.jsonl)
    for epoch in range(start_epoch, s.epochs):
        if not qat and epoch >= s.float_epochs:
            model, opt, sched = to_qat(model, opt, sched)
            qat = True
            best_acc, best_state, best_epoch = -1.0, None, -1  # the model kept is a QAT one
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        order = torch.randperm(n_train, generator=gen)
        total_loss, total_hits, seen = 0.0, 0, 0
        phase = "qat" if qat else "float"
        bar = tqdm(range(steps), desc=f"{s.name} epoch {epoch + 1}/{s.epochs} ({phase})", disable=not s.progress,
                   leave=False, file=sys.stderr, dynamic_ncols=True)
        for i in bar:
            idx = order[i * s.batch_size : (i + 1) * s.batch_size]
            x, y = data.train.images[idx].to(device), data.train.labels[idx].to(device)
            if s.augment:
                x = augment_batch(x, gen, pad, flip, fill)
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            mask = survival_mask(len(idx), model.num_blocks, p_keep, gen) if p_keep < 1.0 else None
            sigma = float(torch.rand((), generator=noise_gen)) * s.noise_aware_sigma if s.noise_aware_sigma > 0 else 0.0
            with _noise(model, cfg, s.noise_source, sigma if qat else 0.0, noise_gen):
                if mask is None:
                    out = model(x)
                elif multi:
                    out = multiexit_logits(model, x, mask.to(device))
                else:
                    out = model(x, mask=mask.to(device))
            if multi:
                losses = torch.stack([F.cross_entropy(o, y) for o in out])
                loss = (exit_w * losses).sum()
                pred = out[-1].argmax(-1)
            else:
                loss = F.cross_entropy(out, y)
                pred = out.argmax(-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
            total_hits += int((pred == y).sum())
            seen += len(idx)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * total_hits / seen:.1f}")
        bar.close()
        if not math.isfinite(total_loss):
            raise FloatingPointError(f"{s.name}: the training loss is {total_loss} in epoch {epoch + 1}: the run "
                                     f"diverged (lower --lr, now {s.lr}); {run_dir} keeps the last finite epoch")
        val = evaluate(model, data.val.images, data.val.labels, device=device)
        val_score = float(val.mean())  # multi-exit: mean over exits
        if val_score >= best_acc:  # ties go to the later epoch (further down the schedule)
            best_acc, best_epoch = val_score, epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        epochs_here += time.perf_counter() - t0
        record = {"epoch": epoch + 1, "phase": phase, "train_loss": round(total_loss / seen, 5),
                  "train_acc": round(100 * total_hits / seen, 3), "val_acc": [round(float(v), 3) for v in val.flatten()],
                  "val_score": round(val_score, 3), "lr": opt.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1)}
        print(json.dumps(record), file=sys.stderr, flush=True)
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "gen": gen.get_state(), "noise_gen": noise_gen.get_state(), "epoch": epoch + 1, "qat": qat,
                 "best_acc": best_acc, "best_epoch": best_epoch, "best_model": best_state}
        atomic_write(last_path, lambda tmp: torch.save(state, tmp))

    assert best_state is not None and qat
    model.load_state_dict(best_state)
    model.eval()
    accuracy = final_accuracy(model, data, s, device)
    accuracy["best_epoch"] = best_epoch
    timing = _epoch_seconds(run_dir)
    meta = {
        "name": s.name,
        "variant": s.variant,
        "architecture": plain_arch,
        "dataset": {"name": info.name, "input_shape": list(info.input_shape), "num_classes": info.num_classes,
                    "mean": list(info.mean), "std": list(info.std), "val_fraction": s.val_fraction, "split_seed": s.seed,
                    "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}},
        "quantization": cfg.to_dict(),
        "training": {"command": s.command(), "settings": s.result_fields(),
                     "survival": p_keep, "exit_weights": list(weights) if multi else None,
                     "torch_version": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
                     **timing,
                     # every epoch's time (earlier processes of a resumed run included), plus this process's set-up
                     # and final evaluation
                     "wall_seconds": round(timing["train_seconds"] + time.perf_counter() - t_start - epochs_here, 1)},
        "accuracy": accuracy,
    }
    return save_checkpoint(model, meta, out_dir, s.name)


def final_accuracy(model: nn.Module, data: Any, s: TrainSettings, device: torch.device) -> dict[str, Any]:
    """Clean (ideal hardware, quantized) accuracies of the selected model, as recorded in the sidecar."""
    test = evaluate(model, data.test.images, data.test.labels, device=device)
    val = evaluate(model, data.val.images, data.val.labels, device=device)
    acc: dict[str, Any] = {"test": round(float(test.flatten()[-1]), 3), "val": round(float(val.flatten()[-1]), 3)}
    if s.variant == "multiexit":
        acc["test_per_exit"] = [round(float(v), 3) for v in test]
        acc["val_per_exit"] = [round(float(v), 3) for v in val]
    else:
        for frac, key in zip(KEEP_FRACTIONS, ("test_keep_1_3", "test_keep_2_3")):
            acc[key] = random_mask_accuracy(model, data.test.images, data.test.labels, frac, s.mask_eval_draws,
                                            seed=s.seed + 3, device=device)
    return acc


def _epoch_seconds(run_dir: Path) -> dict[str, Any]:
    """Timing of a run from its ``log.jsonl``: mean wall seconds per epoch (all, float, QAT), their sum, and the
    processor time of the epochs (``train_cpu_seconds``: the cost without the waits of a shared machine; None when
    an epoch was logged without it)."""
    path = run_dir / "log.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def mean(rs: list[dict[str, Any]]) -> float | None:
        return round(sum(r["seconds"] for r in rs) / len(rs), 1) if rs else None

    return {"epoch_seconds": mean(records),
            "float_epoch_seconds": mean([r for r in records if r.get("phase") == "float"]),
            "qat_epoch_seconds": mean([r for r in records if r.get("phase", "qat") == "qat"]),
            "train_seconds": round(sum(r["seconds"] for r in records), 1),
            "train_cpu_seconds": (round(sum(r["cpu_seconds"] for r in records), 1)
                                  if records and all("cpu_seconds" in r for r in records) else None)}


class _noise:
    """Context: noise injection through the chip model at ``sigma`` (no-op when sigma is 0)."""

    def __init__(self, model: nn.Module, cfg: Any, source: str, sigma: float, gen: torch.Generator) -> None:
        self.ctx = None
        if sigma > 0:
            from cim_gym.hardware import inject_noise

            self.ctx = inject_noise(model, cfg, sigma, gen, source=source)

    def __enter__(self) -> None:
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


# ---- command line -----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> TrainSettings:
    p = argparse.ArgumentParser(
        prog="python -m cim_gym.backbones.train",
        description="Train a quantized backbone (block-drop ResNet or multi-exit ResNet) and write its checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = TrainSettings()
    p.add_argument("--dataset", default=d.dataset, help="data set: digits, fashion-mnist, mnist, cifar10, cifar100")
    p.add_argument("--depth", type=int, default=d.depth, help="ResNet depth 6n+2")
    p.add_argument("--variant", default=d.variant, choices=VARIANTS, help="blockdrop (stochastic depth) or multiexit")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--float-epochs", type=int, default=d.float_epochs,
                   help="leading epochs trained in float (no fake quantization); the rest is the QAT finetune")
    p.add_argument("--channels-last", default=d.channels_last, action=argparse.BooleanOptionalAction,
                   help="channels-last memory layout for the model and batches")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per SGD step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (SGD, Nesterov 0.9)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 on conv and linear weights")
    p.add_argument("--schedule", default=d.schedule, choices=("cosine", "onecycle"), help="learning-rate schedule")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up (cosine schedule)")
    p.add_argument("--survival", type=float, default=None,
                   help="stochastic-depth survival probability per block (default 0.8 blockdrop, 1.0 multiexit)")
    p.add_argument("--exit-weights", type=float, nargs="+", default=None,
                   help="exit loss weights, shallowest first (default 1.0 0.6 0.3); 1 1 1 = BranchyNet")
    p.add_argument("--exit-after", type=int, nargs="+", default=None, help="blocks after which intermediate exits sit")
    p.add_argument("--noise-aware-training", dest="noise_aware_sigma", type=float, default=0.0, metavar="SIGMA_MAX",
                   help="inject chip noise at sigma ~ U(0, SIGMA_MAX) per batch (0: off)")
    p.add_argument("--noise-source", default=d.noise_source, choices=("programming", "read", "output"),
                   help="what the injected sigma scales")
    p.add_argument("--weight-bits", type=int, default=d.weight_bits, help="weight quantization bits")
    p.add_argument("--input-bits", type=int, default=d.input_bits, help="activation quantization bits")
    p.add_argument("--augment", default=d.augment, action=argparse.BooleanOptionalAction,
                   help="the data set's augmentation (random crop, and flips where they keep the class)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="training images held out for validation")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of initialization, data order, augmentation, masks")
    p.add_argument("--mask-eval-draws", type=int, default=d.mask_eval_draws,
                   help="random masks per keep ratio when the final accuracy with dropped blocks is measured")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--data-root", default=None, help="folder of the data set files (default: the package's search)")
    p.add_argument("--run-dir", default=None, help="default runs/backbones/<name>-seed<seed>")
    p.add_argument("--out", default=None, help="checkpoint folder (default: the user cache)")
    p.add_argument("--ship", action="store_true", help="write the checkpoint into the package (cim_gym/backbones/weights)")
    p.add_argument("--progress", default=True, action=argparse.BooleanOptionalAction, help="progress bars")
    p.add_argument("--flush-denormals", dest="flush_denormal", default=d.flush_denormal,
                   action=argparse.BooleanOptionalAction, help="flush denormal floats to zero on CPU (faster)")
    args = vars(p.parse_args(argv))
    if args.pop("ship"):
        from cim_gym.backbones.checkpoint import SHIPPED_DIR

        args["out"] = str(SHIPPED_DIR)
    for key in ("exit_weights", "exit_after"):
        if args[key] is not None:
            args[key] = tuple(args[key])
    try:
        return TrainSettings(**args)
    except ValueError as err:
        p.error(str(err))


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        path = train_backbone(settings)
    except (ValueError, FileNotFoundError) as err:  # e.g. missing data, a run folder of other settings
        raise SystemExit(f"python -m cim_gym.backbones.train: error: {err}") from None
    meta = json.loads(path.read_text())
    print(f"wrote {path}: {json.dumps(meta['accuracy'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
