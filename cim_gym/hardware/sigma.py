"""What sigma means in weight units: the std of the effective (normalized) weight per unit sigma.

The programming variation acts on conductances, cell by cell, and the digital periphery recombines the cells of a
weight with weights ``2^(c k)``; so the resulting weight noise depends on the weight's value (state-dependent for
"relative" variation) and is dominated by the most significant cell. :func:`weight_noise_std` gives it exactly:
in the small-sigma limit (``sigma=None``), or at a given sigma including the clipping of conductances at
``G >= 0`` (a censored Gaussian per cell; the "absolute" model clips often: with on/off 100, 16 % of the zero-level
cells at sigma 0.01 and 40 % at 0.04, see :func:`clipped_share`). :func:`sigma_table` renders it for the docs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cim_gym.hardware import cells
from cim_gym.hardware.config import CIMConfig, is_number

__all__ = ["clipped_share", "sigma_table", "weight_noise_std"]


def _cell_laws(cfg: CIMConfig, w: Tensor | np.ndarray | float | list[float], source: str,
               sigma: float | None) -> tuple[Tensor, Tensor, Tensor, bool]:
    """Per cell of each weight: the noise-free conductance ``mu = u + g0`` (level units), the noise std per unit
    sigma, and each cell's digital gain; plus whether the input was a Tensor."""
    if source not in ("programming", "read"):
        raise ValueError(f"source={source!r} is not allowed: expected 'programming' or 'read' (the weight noises; "
                         "output, input and ADC noise act on partial sums or outputs, stuck-at faults are not noise)")
    if sigma is not None and (not is_number(sigma) or not math.isfinite(sigma) or sigma <= 0):
        raise ValueError(f"sigma={sigma!r} is not allowed: expected a finite number > 0, or None (small-sigma limit)")
    is_tensor = isinstance(w, Tensor)
    wt = torch.as_tensor(w if is_tensor else np.asarray(w, dtype=np.float64), dtype=torch.float64)
    if bool(((wt < -1) | (wt > 1) | wt.isnan()).any()):
        raise ValueError("weights must be normalized to [-1, 1] (w / max|w| of the layer)")
    levels = cells.weight_levels(wt, cfg.weight_bits)
    mu = cells.cell_states(levels, cfg) + cells.g0(cfg)  # (P, S, ...)
    k = torch.arange(cfg.num_slices, dtype=torch.float64).view(1, -1, *([1] * wt.dim()))
    gain = 2.0 ** (cfg.cell_bits * k) * (2.0 if cfg.mapping == "offset" else 1.0) / float(2**cfg.weight_bits - 1)
    relative = source == "read" or cfg.variation == "relative"
    per_sigma = mu if relative else torch.full_like(mu, cfg.g_max / (1.0 - 1.0 / cfg.onoff_ratio))
    return mu, per_sigma, gain.expand_as(mu), is_tensor


def _out(std: Tensor, w: object, is_tensor: bool) -> Tensor | np.ndarray:
    if not is_tensor:
        return std.numpy()
    assert isinstance(w, Tensor)
    return std.to(w.dtype if w.is_floating_point() else torch.float64)


def weight_noise_std(cfg: CIMConfig, w: Tensor | np.ndarray | float | list[float], source: str = "programming",
                     sigma: float | None = None) -> Tensor | np.ndarray:
    """Std of the effective normalized weight (weights in [-1, 1]) per unit sigma, as a function of the weight.

    :param w: normalized weight value(s) ``w / s`` in [-1, 1]; quantized like the model does.
    :param source: "programming" (``cfg.variation`` model) or "read" (read noise, relative, per read).
    :param sigma: None: the small-sigma limit (first order, no clipping). A value > 0: the exact std at that sigma
        divided by sigma, with every conductance clipped at 0 as ``program`` does (programming variation; read
        noise is not clipped, so there it equals the limit).
    :returns: same type as ``w`` (a numpy array for floats and lists).

    Offset mapping: ``w_eff = sum_k 2^(ck) (2 u_k - (2^c - 1)) / (2^b - 1)``; relative variation
    ``du_k = (u_k + g0) sigma N`` gives ``std = 2 sqrt(sum_k 4^(ck) (r_k + g0)^2) / (2^b - 1)`` with
    ``g0 = (2^c - 1)/(R - 1)``; absolute variation ``du_k = sigma (2^c - 1) R/(R - 1) N``. Differential mapping: both
    cells of each slice contribute, without the factor 2. Clipping: a cell ``X ~ N(mu, sd^2)`` stored as
    ``max(X, 0)`` has variance ``(mu^2 + sd^2) Phi(a) + mu sd phi(a) - (mu Phi(a) + sd phi(a))^2``, ``a = mu/sd``.
    """
    mu, per_sigma, gain, is_tensor = _cell_laws(cfg, w, source, sigma)
    if sigma is None or source == "read":
        var = per_sigma**2
    else:
        sd = per_sigma * float(sigma)
        a = mu / sd
        cdf, pdf = torch.special.ndtr(a), torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
        mean = mu * cdf + sd * pdf
        var = ((mu * mu + sd * sd) * cdf + mu * sd * pdf - mean * mean).clamp(min=0) / float(sigma) ** 2
    return _out(torch.sqrt((gain**2 * var).sum(dim=(0, 1))), w, is_tensor)


def clipped_share(cfg: CIMConfig, w: Tensor | np.ndarray | float | list[float], sigma: float) -> Tensor | np.ndarray:
    """Share of a weight's cells whose programmed conductance is clipped at 0 at programming variation ``sigma``
    (the mean over its cells of ``Phi(-mu / sd)``); same type as ``w``."""
    mu, per_sigma, _, is_tensor = _cell_laws(cfg, w, "programming", sigma)
    return _out(torch.special.ndtr(-mu / (per_sigma * float(sigma))).mean(dim=(0, 1)), w, is_tensor)


def sigma_table(cfg: CIMConfig, weights: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0), source: str = "programming",
                sigma: float | None = None) -> str:
    """A Markdown table of :func:`weight_noise_std` at a few normalized weights (and, at a given ``sigma``, of
    :func:`clipped_share`)."""
    if len(weights) == 0:
        raise ValueError("weights=() is not allowed: expected at least one normalized weight in [-1, 1]")
    std = weight_noise_std(cfg, list(weights), source, sigma)
    head = "| normalized weight w | " + " | ".join(f"{w:+.2f}" for w in weights) + " |"
    sep = "| --- |" + " --- |" * len(weights)
    label = "weight std per unit sigma" + ("" if sigma is None else f" at sigma {sigma:g}")
    rows = [head, sep, f"| {label} | " + " | ".join(f"{float(s):.3f}" for s in std) + " |"]
    if sigma is not None and source == "programming":
        share = clipped_share(cfg, list(weights), sigma)
        rows.append("| cells clipped at G = 0 | " + " | ".join(f"{100 * float(s):.1f} %" for s in share) + " |")
    return "\n".join(rows)
