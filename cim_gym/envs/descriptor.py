"""The chip descriptor: what a chip's own test right after programming measures, as an observation.

Sigma describes a chip *population*; one chip is one draw, and chips of one sigma differ a lot. Real chips are
tested after programming; this module models such a test. A fixed probe batch of training images (never an
episode's image: the probe is the first ``probe_images`` images of the training split, whatever split the episodes
use) runs once through the chip and once through the digital (noise-free, quantized) model, and the test reads:

- per residual block ``t``, the relative error of the block's output on the chip against the digital model's,
  ``r_t = ||h_t(chip) - h_t(digital)||_F / ||h_t(digital)||_F`` over the probe batch (the error the chip has
  accumulated by that block's output; a real test reads it at the block's output buffer), observed as
  ``r_t / (1 + r_t)`` so that the observation is bounded in [0, 1);
- per exit ``e`` (the final head only, for a single-exit network): the chip's accuracy on the probe batch and its
  mean softmax entropy divided by ``ln C`` (both in [0, 1]).

The descriptor has ``K + 2E`` entries. The digital model's outputs are computed once per environment; each chip
costs one forward of the probe batch (measured in ``benchmarks/bench_descriptor.py``), is computed the first time
the chip is observed, and is cached with the chip. The random state of the chip's per-read noise is restored after
the test, so observing the chip does not change the episodes it then runs. A sigma-0 chip of the ideal preset
computes exactly what the digital model computes: its errors are 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def _block_outputs(model: nn.Module, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """Every residual block's output and every exit's logits (E, B, C) of one full forward of ``model``."""
    blocks = model.blocks
    outputs: list[Tensor | None] = [None] * len(blocks)
    hooks = []
    for t, block in enumerate(blocks):
        def keep(_mod: nn.Module, _inp: object, out: Tensor, t: int = t) -> None:
            outputs[t] = out.detach()
        hooks.append(block.register_forward_hook(keep))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    if logits.ndim == 2:  # a single-exit network
        logits = logits[None]
    if any(o is None for o in outputs):
        raise RuntimeError("the probe forward skipped a residual block; the descriptor needs every block's output")
    return [o for o in outputs if o is not None], logits


def _generators(chip: nn.Module) -> list[torch.Generator]:
    """The distinct random generators a chip draws its per-read noise from."""
    found: dict[int, torch.Generator] = {}
    for module in [chip, *chip.modules()]:
        g = module.__dict__.get("generator")
        if isinstance(g, torch.Generator):
            found[id(g)] = g
    return list(found.values())


class ChipProbe:
    """The post-programming test of the chips of one environment.

    :param model: the digital (quantized, noise-free) model the chips are programmed from; has ``blocks``.
    :param images: the probe batch (training images), already on the model's device.
    :param labels: their labels.
    :param num_classes: C, for the entropy normalization ``ln C``.
    """

    def __init__(self, model: nn.Module, images: Tensor, labels: Tensor, num_classes: int) -> None:
        if images.shape[0] != labels.shape[0] or images.shape[0] < 1:
            raise ValueError(f"probe batch of {images.shape[0]} images and {labels.shape[0]} labels is not allowed: "
                             "expected the same number >= 1")
        self.images, self.labels = images, labels
        self.log_classes = math.log(num_classes)
        reference, logits = _block_outputs(model, images)
        self.reference = [r.double() for r in reference]
        self.norms = [float(r.norm()) for r in self.reference]
        self.num_blocks, self.num_exits = len(reference), int(logits.shape[0])

    @property
    def dim(self) -> int:
        """Length of a descriptor: K block errors, then E accuracies, then E normalized mean entropies."""
        return self.num_blocks + 2 * self.num_exits

    def describe(self, chip: nn.Module) -> np.ndarray:
        """The descriptor of one programmed chip, float32 in [0, 1]; see the module docstring."""
        generators = _generators(chip)
        states = [g.get_state() for g in generators]
        try:
            outputs, logits = _block_outputs(chip, self.images)
        finally:
            for g, state in zip(generators, states):
                g.set_state(state)
        errors = []
        for out, ref, norm in zip(outputs, self.reference, self.norms):
            diff = float((out.double() - ref).norm())
            r = diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)
            errors.append(1.0 if math.isinf(r) else r / (1.0 + r))
        logp = torch.log_softmax(logits.double(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1).mean(1) / self.log_classes  # (E,)
        accuracy = (logits.argmax(-1) == self.labels[None]).double().mean(1)  # (E,)
        values = np.concatenate([errors, accuracy.cpu().numpy(), entropy.clamp(0, 1).cpu().numpy()])
        return values.astype(np.float32)

    def names(self) -> list[str]:
        """A name for every entry of a descriptor."""
        return ([f"block{t}_error" for t in range(self.num_blocks)] + [f"exit{e}_accuracy" for e in range(self.num_exits)]
                + [f"exit{e}_entropy" for e in range(self.num_exits)])


def describe_chips(probe: ChipProbe, chips: Any, ids: np.ndarray, cache: dict[int, np.ndarray]) -> np.ndarray:
    """Descriptors (B, D) of the chips ``ids`` from a pool ``chips`` (indexable by id), computing each missing one
    once and keeping it in ``cache``."""
    for chip_id in np.unique(ids):
        if int(chip_id) not in cache:
            cache[int(chip_id)] = probe.describe(chips[int(chip_id)])
    return np.stack([cache[int(i)] for i in np.asarray(ids).reshape(-1)])
