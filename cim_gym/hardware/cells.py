"""The device model: weight levels -> bit slices -> cell conductances -> variation, drift, read noise -> weights.

Units. A cell's state is kept in *level units* ``u``: the noise-free state of a cell holding slice value ``r`` is
exactly ``u = r`` (an integer in ``[0, 2^c - 1]``), and the physical conductance (``G_max = 2^c - 1``) is

    G = (1 - 1/R) * (u + g0),    g0 = (2^c - 1) / (R - 1)     (so u = 0 -> G_min = G_max / R, u = 2^c-1 -> G_max).

Noise is added as a difference to the integer state, so that a zero draw leaves ``u`` exactly integer and the
noise-free chip reproduces the quantized weights bit for bit. Conductances are clipped at 0 (``u >= -g0``).

Readout (the digital periphery, exact):
- "offset": subtracting a noise-free reference column ``D = G_max (1 + 1/R) / 2`` gives per slice
  ``2/(1-1/R) (G - D) = 2u - (2^c - 1)``; the weight's signed level is ``Y = sum_k 2^(c k) (2 u_k - (2^c - 1))``.
- "differential": ``(G+ - G-)/(1-1/R) = u+ - u-`` and ``Y = sum_k 2^(c k) (u+_k - u-_k)``.
Without noise ``Y = 2X - (2^b - 1)`` with ``X`` the weight level, i.e. exactly the quantized weight
``w_q = s Y / (2^b - 1)``.

Per chip, in this order: programming variation, stuck-at faults (a stuck cell holds ``u = 0``, G_min, or
``u = 2^c - 1``, G_max, whatever was programmed), drift (stuck cells stay stuck). Read noise is drawn per read by the
chip layers (:mod:`cim_gym.hardware.chip`, :mod:`cim_gym.hardware.exact`); :func:`apply_read_noise` serves
noise-injection training, which perturbs weights once per forward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cim_gym.hardware.config import CIMConfig

__all__ = [
    "apply_drift",
    "apply_read_noise",
    "apply_stuck",
    "apply_variation",
    "cell_states",
    "dequantize",
    "g0",
    "readout_levels",
    "signed_levels",
    "slice_levels",
    "stuck_at_masks",
    "unslice_levels",
    "weight_levels",
]


def weight_levels(w_norm: Tensor, bits: int) -> Tensor:
    """Integer weight level ``X = round((2^b - 1) (clamp(w, -1, 1) + 1) / 2)`` in ``[0, 2^b - 1]`` (float dtype)."""
    top = float(2**bits - 1)
    return torch.round((w_norm.clamp(-1.0, 1.0) + 1.0) * (top / 2.0))


def signed_levels(levels: Tensor, bits: int) -> Tensor:
    """``Y = 2X - (2^b - 1)``: odd integers in ``[-(2^b - 1), 2^b - 1]``; the quantized weight is ``s Y / (2^b-1)``."""
    return 2.0 * levels - float(2**bits - 1)


def dequantize(signed: Tensor, scale: Tensor | float, bits: int) -> Tensor:
    """Weight value ``s Y / (2^b - 1)``. The one formula used by the quantizer and the chips (bitwise agreement)."""
    return signed * (scale / float(2**bits - 1))


def slice_levels(levels: Tensor, bits: int, cell_bits: int) -> Tensor:
    """Split integer levels in ``[0, 2^bits - 1]`` into ``bits / cell_bits`` cells, least significant first.

    :returns: float tensor of shape ``(S, *levels.shape)`` with ``r_k = floor(X / 2^(c k)) mod 2^c``.
    """
    n = bits // cell_bits
    x = levels.to(torch.int64)
    shifts = torch.arange(n, device=levels.device, dtype=torch.int64).mul_(cell_bits).view(-1, *([1] * x.dim()))
    return ((x.unsqueeze(0) >> shifts) & (2**cell_bits - 1)).to(levels.dtype)


def unslice_levels(slices: Tensor, cell_bits: int) -> Tensor:
    """Inverse of :func:`slice_levels`: ``sum_k 2^(c k) r_k`` over the first dimension."""
    w = torch.tensor([float(2 ** (cell_bits * k)) for k in range(slices.shape[0])], dtype=slices.dtype,
                     device=slices.device).view(-1, *([1] * (slices.dim() - 1)))
    return (slices * w).sum(0)


def g0(cfg: CIMConfig) -> float:
    """Offset between level units and scaled conductance: ``g0 = (2^c - 1) / (R - 1)`` (so G_min <-> u = 0)."""
    return cfg.g_max / (cfg.onoff_ratio - 1.0)


def cell_states(levels: Tensor, cfg: CIMConfig) -> Tensor:
    """Noise-free cell states (level units) of integer weight levels ``X``.

    :returns: ``(P, S, *X.shape)`` with P = 1 ("offset": the slices of X) or 2 ("differential": slices of the
        positive and of the negative part of ``Y = 2X - (2^b - 1)``).
    """
    if cfg.mapping == "offset":
        return slice_levels(levels, cfg.weight_bits, cfg.cell_bits).unsqueeze(0)
    y = signed_levels(levels, cfg.weight_bits)
    return torch.stack([slice_levels(y.clamp(min=0), cfg.weight_bits, cfg.cell_bits),
                        slice_levels((-y).clamp(min=0), cfg.weight_bits, cfg.cell_bits)])


def _clip(u: Tensor, cfg: CIMConfig) -> Tensor:
    return u.clamp_(min=-g0(cfg))


def apply_variation(u: Tensor, cfg: CIMConfig, sigma: float, generator: torch.Generator | None) -> Tensor:
    """Programming variation with std ``sigma`` (new tensor; ``u`` unchanged; sigma = 0 returns ``u`` itself).

    relative: ``G' = G (1 + sigma N)``; absolute: ``G' = G + sigma G_max N``; then ``G' >= 0``.
    """
    if sigma == 0:
        return u
    noise = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
    if cfg.variation == "relative":
        return _clip(torch.addcmul(u, u + g0(cfg), noise, value=sigma), cfg)
    return _clip(noise.mul_(sigma * cfg.g_max / (1.0 - 1.0 / cfg.onoff_ratio)).add_(u), cfg)


def apply_drift(u: Tensor, cfg: CIMConfig, generator: torch.Generator | None) -> Tensor:
    """Drift to ``cfg.drift_time``: ``G(t) = G(t0) (t/t0)^-nu``, ``nu ~ N(nu_mean, nu_std)`` per cell.

    Returns ``u`` itself when drift is inactive (t = 0, t = t0 or nu = 0).
    """
    if not cfg.drift_active:
        return u
    log_ratio = math.log(cfg.drift_time / cfg.drift_t0)
    if cfg.drift_nu_std > 0:
        nu = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
        nu = nu.mul_(cfg.drift_nu_std).add_(cfg.drift_nu_mean)
        factor = torch.exp(nu.mul_(-log_ratio))
    else:
        factor = torch.full_like(u, math.exp(-cfg.drift_nu_mean * log_ratio))
    return _clip(u + (u + g0(cfg)) * (factor - 1.0), cfg)


def stuck_at_masks(shape: torch.Size | tuple[int, ...], cfg: CIMConfig, generator: torch.Generator | None,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Which cells are stuck (drawn once per chip): one uniform draw ``U`` per cell, stuck at G_min when
    ``U < stuck_at_gmin``, at G_max when ``stuck_at_gmin <= U < stuck_at_gmin + stuck_at_gmax``."""
    draw = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    low = draw < cfg.stuck_at_gmin
    return low, (draw < cfg.stuck_at_gmin + cfg.stuck_at_gmax) & ~low


def apply_stuck(u: Tensor, masks: tuple[Tensor, Tensor], cfg: CIMConfig) -> Tensor:
    """Cells stuck at G_min (state ``u = 0``) and at G_max (``u = 2^c - 1``), whatever was programmed (new tensor)."""
    low, high = masks
    return u.masked_fill(low, 0.0).masked_fill(high, cfg.g_max)


def apply_read_noise(u: Tensor, cfg: CIMConfig, std: float, generator: torch.Generator | None) -> Tensor:
    """Cycle-to-cycle read noise ``G'' = G (1 + std N)`` (relative), clipped at 0; ``std = 0`` returns ``u``."""
    if std == 0:
        return u
    noise = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
    return _clip(torch.addcmul(u, u + g0(cfg), noise, value=std), cfg)


def readout_levels(u: Tensor, cfg: CIMConfig, alpha: Tensor | float | None = None) -> Tensor:
    """Signed level ``Y`` the digital periphery reads from cell states ``u`` of shape ``(P, S, ...)``.

    :param alpha: global drift compensation factor(s) applied to the weight columns (broadcast over ``...``).
    """
    if alpha is not None:
        u = torch.addcmul(u, u + g0(cfg), torch.as_tensor(alpha, dtype=u.dtype, device=u.device) - 1.0)
    if cfg.mapping == "offset":
        # sum_k 2^(ck) (2 u_k - (2^c - 1)) = 2 sum_k 2^(ck) u_k - (2^b - 1); exact for integer states
        y = u[0, -1].clone() if u.shape[1] > 1 else 2.0 * u[0, 0] - float(2**cfg.weight_bits - 1)
        if u.shape[1] == 1:
            return y
        for k in range(u.shape[1] - 2, -1, -1):  # Horner over the (few) slices
            y.mul_(float(2**cfg.cell_bits)).add_(u[0, k])
        return y.mul_(2.0).sub_(float(2**cfg.weight_bits - 1))
    d = u[0] - u[1]
    y = d[-1].clone()
    for k in range(d.shape[0] - 2, -1, -1):
        y.mul_(float(2**cfg.cell_bits)).add_(d[k])
    return y
