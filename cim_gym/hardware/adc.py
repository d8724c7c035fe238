"""ADC models: uniform quantization of partial sums over a range fixed per chip, and NeuroSim's dynamic range.

A ``bits``-bit ADC with range ``[lo, hi]`` has ``2^bits`` output codes ``i`` standing for ``lo + i * step``,
``step = (hi - lo) / (2^bits - 1)``; a partial sum ``v`` converts to the nearest code, clamped to the range
(mid-tread rounding, so an ADC with many bits converges to the identity on ``[lo, hi]``).

NeuroSim V1.3's "dynamic" ADC (compatibility only) instead takes ``lo, hi`` as the min and max of the whole batch's
partial sums of that (sub-array, input bit, slice), ``step = (hi - lo) / 2^bits``, code ``floor((v - lo)/step)``
clamped to ``[0, 2^bits - 1]``, and ``delta = 0`` passes the values through.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adc_convert", "adc_dynamic", "adc_step"]


def adc_step(lo: Tensor | float, hi: Tensor | float, bits: int) -> Tensor | float:
    """``(hi - lo) / (2^bits - 1)``, at least a tiny positive number (a degenerate range still converts)."""
    span = hi - lo
    if isinstance(span, Tensor):
        return span.clamp_min(1e-12) / float(2**bits - 1)
    return max(float(span), 1e-12) / float(2**bits - 1)


def adc_convert(v: Tensor, lo: Tensor | float, hi: Tensor | float, bits: int) -> Tensor:
    """Convert partial sums ``v`` with a ``bits``-bit ADC on ``[lo, hi]`` (broadcast); returns the analog values
    the codes stand for: at most ``2^bits`` distinct values per range."""
    step = adc_step(lo, hi, bits)
    code = torch.clamp(torch.round((v - lo) / step), 0, 2**bits - 1)
    return code * step + lo


def adc_dynamic(v: Tensor, bits: int, dims: tuple[int, ...]) -> Tensor:
    """NeuroSim V1.3's per-batch ADC: min/max over ``dims`` (the batch, channel and pixel dimensions of one
    sub-array / input bit / slice), ``floor`` quantization with ``step = (max - min) / 2^bits``."""
    lo = v.amin(dim=dims, keepdim=True)
    hi = v.amax(dim=dims, keepdim=True)
    step = (hi - lo) / float(2**bits)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    code = torch.clamp(torch.floor((v - lo) / safe), 0, 2**bits - 1)
    return torch.where(step > 0, code * step + lo, v)
