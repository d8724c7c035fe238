"""What sigma means in weight units: the std of the effective (normalized) weight per unit sigma.

The programming variation acts on conductances, cell by cell, and the digital periphery recombines the cells of a
weight with weights ``2^(c k)``; so the resulting weight noise depends on the weight's value (state-dependent for
"relative" variation) and is dominated by the most significant cell. :func:`weight_noise_std` gives it exactly
(first order in sigma, i.e. ignoring the clipping of conductances at 0, which only matters when sigma is large),
for the current config; :func:`sigma_table` renders it for the docs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cim_gym.hardware import cells
from cim_gym.hardware.config import CIMConfig

__all__ = ["sigma_table", "weight_noise_std"]


def weight_noise_std(
    cfg: CIMConfig, w: Tensor | np.ndarray | float | list[float], source: str = "programming"
) -> Tensor | np.ndarray:
    """Std of the effective normalized weight (weights in [-1, 1]) per unit sigma, as a function of the weight.

    :param w: normalized weight value(s) ``w / s`` in [-1, 1]; quantized like the model does.
    :param source: "programming" (``cfg.variation`` model) or "read" (read noise, relative). "output" noise is not a
        weight noise and raises a ``ValueError``.
    :returns: same type as ``w`` (a numpy array for floats and lists): ``std(w_eff) / sigma`` for small sigma.

    Offset mapping: ``w_eff = sum_k 2^(ck) (2 u_k - (2^c - 1)) / (2^b - 1)``; relative variation
    ``du_k = (u_k + g0) sigma N`` gives ``std = 2 sqrt(sum_k 4^(ck) (r_k + g0)^2) / (2^b - 1)`` with
    ``g0 = (2^c - 1)/(R - 1)``; absolute variation ``du_k = sigma (2^c - 1) R/(R - 1) N``. Differential mapping: both
    cells of each slice contribute, without the factor 2.
    """
    if source not in ("programming", "read"):
        raise ValueError(f"source={source!r} is not allowed: expected 'programming' or 'read' (output noise is added to "
                         "layer outputs, not to weights)")
    as_numpy = not isinstance(w, Tensor)
    wt = torch.as_tensor(np.asarray(w, dtype=np.float64) if as_numpy else w, dtype=torch.float64)
    if bool(((wt < -1) | (wt > 1)).any()):
        raise ValueError("weights must be normalized to [-1, 1] (w / max|w| of the layer)")
    levels = cells.weight_levels(wt, cfg.weight_bits)
    u = cells.cell_states(levels, cfg)  # (P, S, ...)
    k = torch.arange(cfg.num_slices, dtype=torch.float64).view(1, -1, *([1] * wt.dim()))
    gain = 2.0 ** (cfg.cell_bits * k) * (2.0 if cfg.mapping == "offset" else 1.0)
    relative = source == "read" or cfg.variation == "relative"
    per_cell = (u + cells.g0(cfg)) if relative else torch.full_like(u, cfg.g_max / (1.0 - 1.0 / cfg.onoff_ratio))
    std = torch.sqrt(((gain * per_cell) ** 2).sum(dim=(0, 1))) / float(2**cfg.weight_bits - 1)
    return std.numpy() if as_numpy else std.to(w.dtype if isinstance(w, Tensor) and w.is_floating_point() else torch.float64)


def sigma_table(cfg: CIMConfig, weights: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0), source: str = "programming") -> str:
    """A Markdown table of :func:`weight_noise_std` at a few normalized weights (as documented in the README)."""
    std = weight_noise_std(cfg, list(weights), source)
    head = "| normalized weight w | " + " | ".join(f"{w:+.2f}" for w in weights) + " |"
    sep = "| --- |" + " --- |" * len(weights)
    row = "| weight std per unit sigma | " + " | ".join(f"{float(s):.3f}" for s in std) + " |"
    return "\n".join([head, sep, row])
