"""Intervals over chips: the mean and 95 % t-interval of per-chip values, and paired differences.

Chips are the independent units of an evaluation (images are shared by every chip), so every interval here is over
chips: ``mean +- t(0.975, n-1) * sd / sqrt(n)``. Two methods evaluated on the very same chips are compared by the
per-chip differences (a paired interval), which removes the chip-to-chip spread they share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "mean_interval", "paired_interval"]


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and the half-width of its 95 % t-interval (0 for n = 1: no spread is measured)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, digits: int = 1) -> str:
        """``"mean +- half"`` (``"mean"`` alone for a single value)."""
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean and t-interval half-width of ``values`` (one per chip).

    :raises ValueError: no values, a non-finite value, or a confidence outside (0, 1).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"values={list(x)!r} is not allowed: expected at least one finite number")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} is not allowed: expected a number in (0, 1)")
    if x.size == 1:
        return Interval(float(x[0]), 0.0, 1)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, x.size - 1)) * sd / math.sqrt(x.size) if sd > 0 else 0.0
    return Interval(float(x.mean()), half, int(x.size))


def paired_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                    confidence: float = 0.95) -> Interval:
    """Interval of the mean per-chip difference ``a - b``; ``a[i]`` and ``b[i]`` must come from the same chip.

    :raises ValueError: the two do not have the same length.
    """
    x, y = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired values must have one entry per chip on both sides; got {x.size} and {y.size}")
    return mean_interval(x - y, confidence)
