"""The exact path: partial sums per sub-array, per input bit and per weight slice, converted by the ADC.

One analog layer (conv or linear, ``groups = 1``) is laid out as in the array:

- **rows**: the unrolled rows (``C_in*kh*kw`` in the weight's own order, or ``in_features``) are split into
  sub-arrays of ``subarray_rows`` ("rows" mapping), or every kernel position gets its own sub-arrays of
  ``subarray_rows`` input channels ("neurosim" mapping);
- **columns**: one column per (column kind p, slice k, output channel): p = 0 for "offset" (plus one noise-free
  reference column at ``D``), p = 0/1 for the G+/G- cells of "differential";
- **input cycles**: bit-serial feeding stacks the input bits (``a`` planes, ``2(a-1)`` for signed inputs: the
  positive and the negative part) into the batch dimension; parallel feeding uses one multi-level plane.

Per chunk of the batch: the input planes are looked up once per input pixel (a table from input level to plane
values), unrolled by one strided copy into ``(rows, Z * pixels)``, and every sub-array's partial sums come from one
batched matmul ``cells (sub, cols, rows) @ planes (sub, rows, Z * pixels)``: no Python loop over kernel positions,
bits or slices. Partial sums are computed **exactly**: cell states are put on a fixed-point grid ``2^-m`` (``m``
chosen per layer so every sum stays below ``2^24``, far finer than any noise), so the float32 sums are exact
multiples of ``2^-m``, independent of summation order and batch size. The ADC then acts elementwise; the sum over
sub-arrays, shift-and-add over input bits and slices, reference subtraction and drift compensation are one matmul.

Per-read noise, independent for every image, output position, input plane (read cycle) and sub-array:
- read noise (relative, std ``r``) on every cell adds ``r sqrt(sum_i x_i^2 G_i^2) N`` to a partial sum
  ``sum_i x_i G_i``: the exact law of a sum of independent Gaussian terms (clipping of ``G (1 + r N)`` at 0, a
  ``Phi(-1/r)`` event, is neglected); one more batched matmul with the squared cells gives the variances;
- input noise (std ``e`` times the largest plane value) is added to every applied input plane value before the
  matmul, so that it is shared by all columns of a row, as a word line is;
- ADC mismatch: each ADC (one per sub-array column) has an offset ``o`` and a gain error ``g`` (LSB, drawn once per
  chip): ``code = clamp(round(c (1 + g / (2^bits - 1)) + o), 0, 2^bits - 1)`` for the ideal code ``c``; the
  digital periphery decodes with the nominal step.

The engine computes in the model's dtype: a float64 model gets float64 partial sums and outputs. NeuroSim's
"dynamic" ADC takes its floor on exact integers (grid units), so ties give NeuroSim's code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cim_gym.hardware import adc, cells
from cim_gym.hardware.config import CIMConfig

__all__ = ["CALIBRATION_MEMORY_BYTES", "ExactEngine", "Geometry", "PartialSumRanges", "input_planes"]

# target size (elements) of one chunk's partial-sum tensor: small enough to stay in cache
CHUNK_ELEMENTS = 1_200_000
# per-chip calibration keeps one layer's partial sums of the whole calibration batch when they fit in this many
# bytes (one pass: observe the ranges, then convert what was kept); larger layers are computed twice
CALIBRATION_MEMORY_BYTES = 512 * 2**20
# histogram bins over the full-scale range per (column kind, slice, input bit) group, for percentile ADC ranges
PERCENTILE_BINS = 16384


def input_planes(bits: int, signed: bool, parallel: bool) -> tuple[Tensor, Tensor, int]:
    """How input levels are applied to the word lines.

    :returns: ``lut (Z, levels)`` float64, the value every plane (read cycle) applies for each input level
        ``qmin .. qmax``; ``weights (Z,)`` float64, the digital weight of each plane (``2^z``, negative for the
        negative part of signed inputs; ``[1]`` for parallel feeding); ``qmin`` (the first level of the table).
    """
    top = max(2 ** (bits - 1) - 1, 1) if signed else 2**bits - 1
    qmin = -top if signed else 0
    levels = torch.arange(qmin, top + 1, dtype=torch.int64)
    if parallel:
        return levels.view(1, -1).double(), torch.ones(1, dtype=torch.float64), qmin
    nbits = max(bits - 1, 1) if signed else bits
    z = torch.arange(nbits).view(-1, 1)
    lut = (levels.clamp(min=0).view(1, -1) >> z) & 1
    wz = [2.0**k for k in range(nbits)]
    if signed:
        lut = torch.cat([lut, ((-levels).clamp(min=0).view(1, -1) >> z) & 1])
        wz = wz + [-w for w in wz]
    return lut.double(), torch.tensor(wz, dtype=torch.float64), qmin


@dataclass(frozen=True)
class Geometry:
    """Shape of one layer: conv (kernel, stride, padding, dilation) or linear."""

    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @staticmethod
    def of(module: nn.Module) -> Geometry:
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise NotImplementedError(f"the exact (ADC) path supports Conv2d with groups=1 only, not "
                                          f"groups={module.groups}: use adc_bits=None (fast path) for grouped convs")
            if isinstance(module.padding, str) or module.padding_mode != "zeros":
                raise NotImplementedError(f"the exact (ADC) path supports numeric zero padding only, not "
                                          f"padding={module.padding!r}, padding_mode={module.padding_mode!r}")
            return Geometry("conv", module.in_channels, module.out_channels, tuple(module.kernel_size),  # type: ignore[arg-type]
                            tuple(module.stride), tuple(module.padding), tuple(module.dilation))  # type: ignore[arg-type]
        if isinstance(module, nn.Linear):
            return Geometry("linear", module.in_features, module.out_features)
        raise TypeError(f"no geometry for {type(module).__name__}")

    @property
    def kk(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def rows(self) -> int:
        return self.in_channels * self.kk


@dataclass
class PartialSumRanges:
    """Calibrated ADC ranges of one layer (physical units, G_max = 2^c - 1), per input plane z (input bit, or the
    single plane of parallel feeding): ``lo``/``hi`` of shape (P, S, Z) for the weight columns of each column kind
    and slice, ``ref_lo``/``ref_hi`` of shape (Z,) for the reference column ("offset" mapping; zeros otherwise)."""

    lo: Tensor
    hi: Tensor
    ref_lo: Tensor
    ref_hi: Tensor

    def to_dict(self) -> dict[str, object]:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist(), "ref_lo": self.ref_lo.tolist(),
                "ref_hi": self.ref_hi.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PartialSumRanges:
        return cls(*(torch.tensor(d[k], dtype=torch.float64) for k in ("lo", "hi", "ref_lo", "ref_hi")))


class ExactEngine:
    """Computes one analog layer's output from its programmed cell states, input quantization levels and ADC.

    :param geom: layer shape.
    :param cfg: the chip config (mapping, rows, feeding, ADC, per-read noise, ADC mismatch).
    :param u: programmed cell states (level units), shape ``(P, S, C_out, rows)`` (rows in the weight's order);
        its dtype is the model's (float64 gives float64 partial sums and outputs).
    :param alpha: global drift compensation factor (1 when off), applied digitally to the weight columns.
    :param scale: the layer's weight scale ``s`` (weight = s * level / (2^b - 1)).
    :param signed_input: whether the layer's inputs are signed.
    :param use_adc: False for an ideal ADC (used to check the fast path and to calibrate).
    :param ranges: calibrated ADC ranges (required when ``cfg.adc_range == "calibrated"`` and ``use_adc``).
    :param parallel: feed inputs in parallel (one multi-level read) instead of bit-serially; default from cfg.
    :param deferred: "calibrated" ranges will be set later by :meth:`set_ranges` (per-chip calibration).
    :param generator: draws the ADC mismatch (once, here) when the config has some.
    """

    def __init__(self, geom: Geometry, cfg: CIMConfig, u: Tensor, alpha: float, scale: Tensor, signed_input: bool,
                 use_adc: bool, ranges: PartialSumRanges | None = None, parallel: bool | None = None,
                 deferred: bool = False, generator: torch.Generator | None = None) -> None:
        self.geom, self.cfg = geom, cfg
        self.alpha, self.scale, self.signed = float(alpha), scale, signed_input
        self.use_adc = use_adc and cfg.adc_bits is not None
        self.parallel = (cfg.input_feeding == "parallel") if parallel is None else parallel
        self.P, self.S = u.shape[0], u.shape[1]
        self.C_out = geom.out_channels
        self.has_ref = cfg.mapping == "offset"
        self.cols = self.P * self.S * self.C_out + (1 if self.has_ref else 0)
        self.device = u.device
        self.out_dtype = u.dtype if u.dtype == torch.float64 else torch.float32
        self.on = 1.0 - 1.0 / cfg.onoff_ratio
        self.read_std = float(cfg.read_noise)
        self._planes_table()
        self.input_std = float(cfg.input_noise) * self.plane_absmax
        self._layout()
        self.mismatch: list[tuple[Tensor, Tensor]] | None = None
        if self.use_adc and cfg.adc_range != "dynamic" and (cfg.adc_offset_std > 0 or cfg.adc_gain_std > 0):
            top = float(2 ** cfg.adc_bits - 1)  # type: ignore[operator]
            dev = generator.device if generator is not None else torch.device("cpu")
            self.mismatch = []
            for _, n, _ in self.groups:  # one ADC per sub-array column: (offset in LSB, relative gain error)
                off = torch.randn((n, self.cols, 1, 1), generator=generator, dtype=torch.float64, device=dev)
                gain = torch.randn((n, self.cols, 1, 1), generator=generator, dtype=torch.float64, device=dev)
                self.mismatch.append((off.mul_(cfg.adc_offset_std), gain.mul_(cfg.adc_gain_std / top)))
        self.set_cells(u)
        self.ranges = ranges
        self.pending = deferred and self.use_adc and cfg.adc_range == "calibrated"
        if not self.pending:
            self._adc_setup(ranges)

    def set_ranges(self, ranges: PartialSumRanges) -> None:
        """Fix the calibrated ADC ranges (per-chip calibration)."""
        self.ranges, self.pending = ranges, False
        self._adc_setup(ranges)

    def retarget(self, dtype: torch.dtype, device: torch.device) -> None:
        """Compute in ``dtype`` (float32 or float64) on ``device`` from now on (``chip.double()``, ``chip.to(...)``)."""
        self.out_dtype, self.device = dtype, device
        self.u = self.u.to(device=device, dtype=torch.float64 if dtype == torch.float64 else self.u.dtype)
        self.scale = self.scale.to(device=device, dtype=dtype)
        if self.mismatch is not None:
            self.mismatch = [(o.to(device), g.to(device)) for o, g in self.mismatch]
        self.set_cells(self.u)
        if not self.pending:
            self._adc_setup(self.ranges)

    # ---- input planes --------------------------------------------------------------------------------------
    def _planes_table(self) -> None:
        """``lut (Z, levels)``: plane values of every input level, and the planes' digital weights ``wz``."""
        lut, wz, self.qmin = input_planes(self.cfg.input_bits, self.signed, self.parallel)
        self.lut64 = lut
        self.plane_weights = wz
        self.Z = len(wz)
        self.plane_absmax = float(lut.abs().max())
        self.plane_min = float(lut.min())

    # ---- layout --------------------------------------------------------------------------------------------
    def _layout(self) -> None:
        g, R = self.geom, self.cfg.subarray_rows
        C = g.in_channels
        self.neurosim = self.cfg.row_mapping == "neurosim" and g.kind == "conv" and g.kk > 1
        if self.neurosim:
            rb = min(C, R)
            nb = -(-C // rb)
            self.c_pad = nb * rb
            self.rows_total = g.kk * self.c_pad
            self.groups = [(0, g.kk * nb, rb)]  # (first row, sub-arrays, rows each)
        else:
            self.c_pad = C
            self.rows_total = g.rows
            rb = min(g.rows, R)
            self.groups = [(0, g.rows // rb, rb)]
            if g.rows % rb:
                self.groups.append((self.groups[0][1] * rb, 1, g.rows % rb))
        self.num_subarrays = sum(n for _, n, _ in self.groups)
        self.max_rows = max(r for _, _, r in self.groups)

    def _row_order(self, v: Tensor) -> Tensor:
        """Rows of ``v`` (cols, C*kk in the weight's order) -> the planes' row order (padded for "neurosim")."""
        if not self.neurosim:
            return v
        g = self.geom
        v = v.view(v.shape[0], g.in_channels, g.kk).transpose(1, 2)
        v = F.pad(v, (0, self.c_pad - g.in_channels))
        return v.reshape(v.shape[0], self.rows_total)

    # ---- cells ---------------------------------------------------------------------------------------------
    def set_cells(self, u: Tensor) -> None:
        """Put cell states ``u`` (P, S, C_out, rows) on the fixed-point grid, laid out per sub-array group."""
        cfg = self.cfg
        self.u = u
        k0 = cells.g0(cfg)
        vmax = max(float((u + k0).abs().max()), k0 + cfg.g_max)
        bound = self.max_rows * self.plane_absmax * vmax
        m = math.floor(math.log2((2**24 - 1) / max(bound, 1e-30)))
        self.dtype = torch.float32
        if m < 12 or self.out_dtype == torch.float64:  # float32 would need a grid coarser than 2^-12 level units
            m = math.floor(math.log2((2**53 - 1) / max(bound, 1e-30)))
            self.dtype = torch.float64
        self.grid = 2.0 ** min(m, 40)
        q = self.grid
        v = torch.round((u.to(torch.float64) + k0) * q) / q  # u + g0 on the grid = G / (1 - 1/R)
        v = v.reshape(-1, self.geom.rows)
        if self.has_ref:  # the reference column, D / (1 - 1/R) = g0 + (2^c - 1)/2
            ref = round((k0 + cfg.g_max / 2.0) * q) / q
            v = torch.cat([v, torch.full((1, self.geom.rows), ref, dtype=v.dtype, device=v.device)])
        v = self._row_order(v)
        self.weights = [v[:, s:s + n * r].reshape(self.cols, n, r).transpose(0, 1).to(self.dtype).contiguous()
                        for s, n, r in self.groups]  # each (n, cols, r)
        self.weights_sq: list[Tensor] = []
        if self.read_std > 0:  # read noise variance per partial sum: sum_i x_i^2 v_i^2 (the reference is noise-free)
            for w in self.weights:
                w2 = w * w
                if self.has_ref:
                    w2[:, -1] = 0.0
                self.weights_sq.append(w2)
        self.lut = self.lut64.to(self.dtype).to(self.device)
        # noise-free integer levels: partial sums are A + B g0 exactly, with g0 = num / den (NeuroSim's floor ADC)
        self.g0_grid = round(k0 * q) / q
        ratio = Fraction(cfg.g_max) / (Fraction(cfg.onoff_ratio) - 1)
        integer = bool((u == torch.round(u)).all())
        small = ratio.numerator < 2**16 and ratio.denominator < 2**16
        self.exact_ratio = (ratio.numerator, ratio.denominator) if integer and small else None

    # ---- ADC -----------------------------------------------------------------------------------------------
    def full_scale(self) -> tuple[float, float]:
        """The largest possible partial sum (every row at G_max and the largest input plane) and its negative
        counterpart for signed parallel inputs."""
        hi = self.max_rows * self.cfg.g_max * self.plane_absmax
        return (-hi if self.plane_min < 0 else 0.0), hi

    def _adc_setup(self, ranges: PartialSumRanges | None) -> None:
        cfg, on = self.cfg, self.on
        P, S, C = self.P, self.S, self.C_out
        dt = torch.float64
        Z = self.Z
        if self.use_adc and cfg.adc_range == "calibrated":
            if ranges is None:
                raise ValueError("adc_range='calibrated' needs calibrated ADC ranges: pass calibration=calibrate(...)")
            lo_pk, hi_pk = ranges.lo.to(dt).cpu(), ranges.hi.to(dt).cpu()
            ref_lo, ref_hi = ranges.ref_lo.to(dt).cpu().view(1, Z), ranges.ref_hi.to(dt).cpu().view(1, Z)
            if cfg.adc_range_margin > 0:
                lo_pk, hi_pk = self._widen(lo_pk, hi_pk)
                ref_lo, ref_hi = self._widen(ref_lo, ref_hi)
        else:
            lo, hi = self.full_scale()
            lo_pk, hi_pk = torch.full((P, S, Z), lo, dtype=dt), torch.full((P, S, Z), hi, dtype=dt)
            ref_lo, ref_hi = torch.full((1, Z), lo, dtype=dt), torch.full((1, Z), hi, dtype=dt)
        lo_col = lo_pk.reshape(P, S, 1, Z).expand(P, S, C, Z).reshape(-1, Z)  # (cols, Z)
        hi_col = hi_pk.reshape(P, S, 1, Z).expand(P, S, C, Z).reshape(-1, Z)
        if self.has_ref:
            lo_col = torch.cat([lo_col, ref_lo])
            hi_col = torch.cat([hi_col, ref_hi])
        # digital recombination: physical partial sums (per column) -> signed weight levels (per output channel)
        M = torch.zeros(self.cols, C, dtype=dt)
        eye = torch.eye(C, dtype=dt)
        for p in range(P):
            for k in range(S):
                sign = 1.0 if p == 0 else -1.0
                coef = 2.0 ** (cfg.cell_bits * k) * (2.0 if self.has_ref else sign) / on * self.alpha
                M[(p * S + k) * C:(p * S + k + 1) * C] = coef * eye
        if self.has_ref:
            M[-1] = -sum(2.0 ** (cfg.cell_bits * k) for k in range(S)) * 2.0 / on
        self.M = M
        self.quantize = self.use_adc and cfg.adc_range != "dynamic"
        if self.quantize:
            step = adc.adc_step(lo_col, hi_col, cfg.adc_bits)  # type: ignore[arg-type]
            # code = round((O + b) * a): b = -lo/(1-1/R) on the grid (an exact add), a = (1-1/R)/step
            shift = torch.round(-lo_col / on * self.grid) / self.grid
            lo_col = -shift * on
            self.shift_col = shift.to(self.dtype).view(self.cols, Z, 1).to(self.device)
            self.a_col = (on / step).to(self.dtype).view(self.cols, Z, 1).to(self.device)
            if self.mismatch is not None:  # per ADC: the gain error scales the code, the offset adds to it
                a64 = (on / step).view(self.cols, Z, 1)
                self.adc_gain = [((1.0 + g.cpu()) * a64).to(self.dtype).to(self.device) for _, g in self.mismatch]
                self.adc_offset = [o.to(self.dtype).to(self.device) for o, _ in self.mismatch]
            value_step = step
        else:
            value_step = torch.full_like(lo_col, on)
            lo_col = torch.zeros_like(lo_col)
        wz = self.plane_weights.view(1, Z)
        # codes -> signed weight levels, with the weighted sum over input planes folded in:
        # Mz[co, col * Z + z] = wz[z] * step[col, z] * M[col, co]
        self.Mz = (M.t()[:, :, None] * (value_step * wz)[None]).reshape(C, -1).to(self.dtype).to(self.device)
        self.const = (self.num_subarrays * ((lo_col * wz).sum(1) @ M)).to(self.dtype).view(-1, 1).to(self.device)
        self.Mvalue = (M.t()[:, :, None] * wz[None]).reshape(C, -1).to(self.dtype).to(self.device)

    def _widen(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Calibrated range widened by ``adc_range_margin`` of its width on each side; never below the smallest
        possible partial sum (0 for non-negative planes) unless the calibration itself went there."""
        width = (hi - lo) * self.cfg.adc_range_margin
        floor = torch.minimum(lo, torch.full_like(lo, self.full_scale()[0]))
        return torch.maximum(lo - width, floor), hi + width

    # ---- forward ---------------------------------------------------------------------------------------------
    def out_hw(self, q: Tensor) -> tuple[int, int]:
        g = self.geom
        if g.kind == "linear":
            return 1, 1
        Ho = (q.shape[2] + 2 * g.padding[0] - g.dilation[0] * (g.kernel_size[0] - 1) - 1) // g.stride[0] + 1
        Wo = (q.shape[3] + 2 * g.padding[1] - g.dilation[1] * (g.kernel_size[1] - 1) - 1) // g.stride[1] + 1
        return Ho, Wo

    def _input_index(self, q: Tensor) -> Tensor:
        """Input levels of every (padded) input in the smallest integer dtype that holds them: (B, C_pad, Hp, Wp);
        padding is level 0 (no input)."""
        g = self.geom
        top = max(abs(self.qmin), int(self.lut64.shape[1]) - 1 + self.qmin)
        dtype = torch.uint8 if self.qmin == 0 and top <= 255 else torch.int16 if top <= 32767 else torch.int32
        idx = q.to(dtype)
        if g.kind == "linear":
            idx = idx.reshape(-1, g.in_channels, 1, 1)
        pad_c = self.c_pad - g.in_channels
        if g.padding != (0, 0) or pad_c:
            idx = F.pad(idx, (g.padding[1], g.padding[1], g.padding[0], g.padding[0], 0, pad_c), value=0)
        return idx

    def _chunk_planes(self, idx: Tensor, b0: int, bc: int, Ho: int, Wo: int) -> Tensor:
        """Plane values of images ``b0:b0+bc``, unrolled to (rows_total, Z * bc * Ho * Wo): the integer levels are
        unrolled first (one small copy), then split into bit planes (or used as they are for parallel feeding)."""
        lv = self._unrolled(idx, b0, bc, Ho, Wo)  # (rows_total, bc * L)
        if self.parallel:
            return lv.to(self.dtype)
        shifts = torch.arange(self.Z // 2 if self.signed else self.Z, dtype=lv.dtype, device=lv.device).view(1, -1, 1)
        if self.signed:
            pos, neg = lv.clamp(min=0).unsqueeze(1), lv.neg().clamp_(min=0).unsqueeze(1)
            planes = torch.cat([(pos >> shifts) & 1, (neg >> shifts) & 1], 1)
        else:
            planes = (lv.unsqueeze(1) >> shifts) & 1
        return planes.to(self.dtype).view(self.rows_total, -1)

    def _unrolled(self, idx: Tensor, b0: int, bc: int, Ho: int, Wo: int) -> Tensor:
        """Images ``b0:b0+bc`` of ``idx`` unrolled to (rows_total, bc * Ho * Wo) in the sub-arrays' row order."""
        g = self.geom
        sb, sc, sh, sw = idx.stride()
        kh, kw = g.kernel_size
        dh, dw = g.dilation[0] * sh, g.dilation[1] * sw
        th, tw = g.stride[0] * sh, g.stride[1] * sw
        off = idx.storage_offset() + b0 * sb
        if self.neurosim:
            v = idx.as_strided((kh, kw, self.c_pad, bc, Ho, Wo), (dh, dw, sc, sb, th, tw), off)
        else:
            v = idx.as_strided((g.in_channels, kh, kw, bc, Ho, Wo), (sc, dh, dw, sb, th, tw), off)
        return v.reshape(self.rows_total, -1).contiguous()

    def _sums(self, X: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """Partial sums per sub-array group: each (n, cols, Z * pixels), grid units (physical = (1-1/R) O).
        Exact without read/input noise; with them, one draw per partial sum / applied input (see module doc)."""
        var = None
        if self.read_std > 0:
            X2 = X * X if self.parallel else X  # bit planes are 0/1
            var = [torch.bmm(w, X2[s:s + n * r].view(n, r, -1)) for (s, n, r), w in zip(self.groups, self.weights_sq)]
        if self.input_std > 0:
            X = X + torch.randn(X.shape, generator=generator, dtype=X.dtype, device=X.device).mul_(self.input_std)
        out = [torch.bmm(w, X[s:s + n * r].view(n, r, -1)) for (s, n, r), w in zip(self.groups, self.weights)]
        if var is not None:
            for o, v in zip(out, var):
                noise = torch.randn(o.shape, generator=generator, dtype=o.dtype, device=o.device)
                o.add_(noise.mul_(v.clamp_(min=0).sqrt_()).mul_(self.read_std))
        return out

    def _convert(self, gi: int, o: Tensor) -> Tensor:
        """ADC codes (in place) of group ``gi``'s partial sums ``o`` (n, cols, Z * pixels), summed over its
        sub-arrays: (cols, Z * pixels). Without quantization, the sums themselves."""
        if self.quantize:
            ov = o.view(o.shape[0], self.cols, self.Z, -1)
            top = float(2 ** self.cfg.adc_bits - 1)  # type: ignore[operator]
            ov.add_(self.shift_col)
            if self.mismatch is not None:
                ov.mul_(self.adc_gain[gi]).add_(self.adc_offset[gi])
            else:
                ov.mul_(self.a_col)
            ov.clamp_(0.0, top).round_()
        return o.sum(0) if o.shape[0] > 1 else o[0]

    def _chunks(self, q: Tensor) -> tuple[Tensor, int, int, int, list[tuple[int, int]]]:
        Ho, Wo = self.out_hw(q)
        planes = self._input_index(q)
        B = planes.shape[0]
        per_image = self.rows_total * self.Z * Ho * Wo
        bc = max(1, CHUNK_ELEMENTS // max(per_image, 1))
        return planes, B, Ho, Wo, [(b, min(bc, B - b)) for b in range(0, B, bc)]

    def levels(self, q: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Signed output in units of (weight level x input level): (C_out, B * Ho * Wo)."""
        if self.use_adc and self.cfg.adc_range == "dynamic":
            return self._levels_dynamic(q, generator)
        planes, B, Ho, Wo, chunks = self._chunks(q)
        L = Ho * Wo
        out = torch.empty(self.C_out, B * L, dtype=self.dtype, device=self.device)
        for b0, bc in chunks:
            sums = self._sums(self._chunk_planes(planes, b0, bc, Ho, Wo), generator)
            self._accumulate(sums, out[:, b0 * L:(b0 + bc) * L])
        return out

    def _accumulate(self, sums: list[Tensor], out: Tensor) -> None:
        """Convert one chunk's partial sums and recombine them digitally into ``out`` (C_out, chunk pixels)."""
        acc = None
        for gi, o in enumerate(sums):
            o = self._convert(gi, o)
            acc = o if acc is None else acc.add_(o)
        assert acc is not None
        torch.addmm(self.const, self.Mz, acc.view(self.cols * self.Z, -1), out=out)

    def calibrate_forward(self, q: Tensor, step_in: Tensor, bias: Tensor | None,
                          generator: torch.Generator | None = None) -> Tensor:
        """Per-chip calibration and the layer's output in one pass: the partial sums of the whole batch are kept
        (when they fit in ``CALIBRATION_MEMORY_BYTES``), their min/max fix the ADC ranges, then they are converted.
        Larger layers observe first and compute again."""
        planes, B, Ho, Wo, chunks = self._chunks(q)
        L = Ho * Wo
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        if self.num_subarrays * self.cols * self.Z * B * L * itemsize > CALIBRATION_MEMORY_BYTES:
            self.set_ranges(self.observe_ranges(q, None, generator))
            return self.forward(q, step_in, bias, generator)
        kept = [self._sums(self._chunk_planes(planes, b0, bc, Ho, Wo), generator) for b0, bc in chunks]
        stats = None
        for sums in kept:
            stats = self._observe(sums, stats)
        assert stats is not None
        self.set_ranges(self._ranges(stats))
        out = torch.empty(self.C_out, B * L, dtype=self.dtype, device=self.device)
        for (b0, bc), sums in zip(chunks, kept):
            self._accumulate(sums, out[:, b0 * L:(b0 + bc) * L])
        return self._finish(out, q, step_in, bias)

    def adc_outputs(self, q: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """For inspection and tests: the physical values (G_max = 2^c - 1 units) the ADC outputs for every partial
        sum, as the digital periphery decodes them, shape (sub-arrays, cols, Z, B * Ho * Wo); with an ideal ADC,
        the partial sums themselves."""
        planes, _, Ho, Wo, chunks = self._chunks(q)
        parts = []
        for b0, bc in chunks:
            groups = []
            for gi, o in enumerate(self._sums(self._chunk_planes(planes, b0, bc, Ho, Wo), generator)):
                ov = o.view(o.shape[0], self.cols, self.Z, -1)
                if self.quantize:
                    self._convert(gi, o)
                    ov.div_(self.a_col).sub_(self.shift_col)
                groups.append(ov * self.on)
            parts.append(torch.cat(groups))
        return torch.cat(parts, dim=-1)

    def _levels_dynamic(self, q: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """NeuroSim's per-batch ADC: every (sub-array, plane, slice) partial sum is converted with the min/max of
        the whole batch (batch x channels x pixels); the reference column likewise. Two passes over the batch.

        With noise-free cells (integer levels) a partial sum is exactly ``A + B g0`` (``A`` the sum of the active
        rows' levels, ``B`` their count, ``g0 = (2^c - 1)/(R - 1)`` a rational number): the floor is then taken
        in integer arithmetic on ``2 den(g0) (A + B g0)``, so a partial sum on a step boundary gets NeuroSim's code
        exactly. Otherwise (noisy cells or inputs) it is taken in float64."""
        bits = self.cfg.adc_bits
        assert bits is not None
        planes, B, Ho, Wo, chunks = self._chunks(q)
        L, PS, C, Z = Ho * Wo, self.P * self.S, self.C_out, self.Z
        noisy = self.read_std > 0 or self.input_std > 0
        exact = self.exact_ratio is not None and not noisy

        def values(b0: int, bc: int) -> list[Tensor]:
            """Per group (n, cols, Z, bc * L) float64: exact integers ``2 den (A + B g0)``, or grid-unit sums."""
            X = self._chunk_planes(planes, b0, bc, Ho, Wo)
            sums = self._sums(X, generator)
            out = []
            for (s0, n, r), o in zip(self.groups, sums):
                v = o.view(n, self.cols, Z, bc * L).double()
                if exact:
                    assert self.exact_ratio is not None
                    num, den = self.exact_ratio
                    count = X[s0:s0 + n * r].view(n, r, -1).sum(1).double().view(n, 1, Z, bc * L)
                    twice_a = torch.round((v - count * self.g0_grid) * 2.0)  # 2A: integer (half-integer A: reference)
                    v = twice_a * den + count * (2 * num)
                out.append(v)
            return out

        def split(v: Tensor) -> tuple[Tensor, Tensor | None]:
            n = v.shape[0]
            return v[:, : PS * C].reshape(n, PS, C, Z, -1), (v[:, -1] if self.has_ref else None)

        kept: list[list[Tensor]] = []
        lo: list[Tensor] = []
        hi: list[Tensor] = []
        rlo: list[Tensor] = []
        rhi: list[Tensor] = []
        for i, (b0, bc) in enumerate(chunks):
            vals = values(b0, bc)
            if noisy:  # the noise draws that set the range must be the ones converted: keep them
                kept.append(vals)
            for gi, v in enumerate(vals):
                w, r = split(v)
                wl, wh = w.amin(dim=(2, 4)), w.amax(dim=(2, 4))  # (n, PS, Z)
                if i == 0:
                    lo.append(wl), hi.append(wh)
                    if r is not None:
                        rlo.append(r.amin(dim=2)), rhi.append(r.amax(dim=2))
                else:
                    lo[gi], hi[gi] = torch.minimum(lo[gi], wl), torch.maximum(hi[gi], wh)
                    if r is not None:
                        rlo[gi], rhi[gi] = torch.minimum(rlo[gi], r.amin(dim=2)), torch.maximum(rhi[gi], r.amax(dim=2))
        to_grid = 1.0 / (2.0 * self.exact_ratio[1]) if exact else 1.0  # type: ignore[index]
        out = torch.empty(C, B * L, dtype=self.dtype, device=self.device)
        for i, (b0, bc) in enumerate(chunks):
            acc = None
            for gi, v in enumerate(kept[i] if noisy else values(b0, bc)):
                w, r = split(v)
                wq = _floor_adc(w, lo[gi][:, :, None, :, None], hi[gi][:, :, None, :, None], bits, exact)
                parts = [wq.reshape(v.shape[0], PS * C, Z, bc * L)]
                if r is not None:
                    parts.append(_floor_adc(r, rlo[gi][:, :, None], rhi[gi][:, :, None], bits, exact).unsqueeze(1))
                summed = torch.cat(parts, dim=1).sum(0)
                acc = summed if acc is None else acc.add_(summed)
            assert acc is not None
            acc = acc.view(self.cols * Z, bc * L).mul_(self.on * to_grid).to(self.dtype)
            torch.mm(self.Mvalue, acc, out=out[:, b0 * L:(b0 + bc) * L])
        return out

    def forward(self, q: Tensor, step_in: Tensor, bias: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """Layer output from integer input levels ``q`` (the layer's input is ``q * step_in``); ``generator``
        draws the per-read noise."""
        return self._finish(self.levels(q, generator), q, step_in, bias)

    def _finish(self, lev: Tensor, q: Tensor, step_in: Tensor, bias: Tensor | None) -> Tensor:
        y = lev.to(self.out_dtype) * (self.scale / float(2**self.cfg.weight_bits - 1) * step_in)
        if self.geom.kind == "linear":
            y = y.t().reshape(*q.shape[:-1], self.C_out)
            return y if bias is None else y + bias
        B, (Ho, Wo) = q.shape[0], self.out_hw(q)
        y = y.view(self.C_out, B, Ho, Wo).transpose(0, 1)
        y = y + bias.view(1, -1, 1, 1) if bias is not None else y.contiguous()
        return y

    # ---- calibration -------------------------------------------------------------------------------------------
    def observe_ranges(self, q: Tensor, ranges: PartialSumRanges | None,
                       generator: torch.Generator | None = None) -> PartialSumRanges:
        """Min/max of the physical partial sums of input levels ``q`` per (P, S) and for the reference column,
        merged into ``ranges``."""
        planes, _, Ho, Wo, chunks = self._chunks(q)
        stats = None
        for b0, bc in chunks:
            stats = self._observe(self._sums(self._chunk_planes(planes, b0, bc, Ho, Wo), generator), stats)
        assert stats is not None
        out = self._ranges(stats)
        if ranges is not None:
            out = PartialSumRanges(torch.minimum(out.lo, ranges.lo.double()), torch.maximum(out.hi, ranges.hi.double()),
                                   torch.minimum(out.ref_lo, ranges.ref_lo.double()),
                                   torch.maximum(out.ref_hi, ranges.ref_hi.double()))
        return out

    def _observe(self, sums: list[Tensor], stats: list[Tensor] | None) -> list[Tensor]:
        """Running min/max (grid units) of one chunk's partial sums: [lo (PS, Z), hi, ref_lo (Z,), ref_hi]."""
        PS, C, Z = self.P * self.S, self.C_out, self.Z
        hist = stats[4] if stats is not None and len(stats) > 4 else None
        for o in sums:
            ov = o.view(o.shape[0], self.cols, Z, -1)
            mn, mx = ov.amin(dim=-1), ov.amax(dim=-1)  # (torch.aminmax is ~20x slower on CPU)
            w_lo = mn[:, : PS * C].reshape(-1, PS, C, Z).amin(dim=(0, 2)).double().cpu()
            w_hi = mx[:, : PS * C].reshape(-1, PS, C, Z).amax(dim=(0, 2)).double().cpu()
            r_lo = mn[:, -1].amin(dim=0).double().cpu() if self.has_ref else torch.zeros(Z, dtype=torch.float64)
            r_hi = mx[:, -1].amax(dim=0).double().cpu() if self.has_ref else torch.zeros(Z, dtype=torch.float64)
            new = [w_lo, w_hi, r_lo, r_hi]
            stats = new if stats is None else [torch.minimum(stats[0], w_lo), torch.maximum(stats[1], w_hi),
                                               torch.minimum(stats[2], r_lo), torch.maximum(stats[3], r_hi)]
        assert stats is not None
        if self.cfg.adc_range_percentile < 100:
            stats = stats[:4] + [self._histogram(sums, hist)]
        return stats

    def _histogram(self, sums: list[Tensor], hist: Tensor | None) -> Tensor:
        """Counts of the partial sums in ``PERCENTILE_BINS`` bins over the full-scale range (values outside go to
        the edge bins), per group (weight column kind and slice, or the reference column) and input plane."""
        nb, Z, PS = PERCENTILE_BINS, self.Z, self.P * self.S
        lo, hi = (v / self.on for v in self.full_scale())
        scale = nb / max(hi - lo, 1e-30)
        group = torch.arange(self.cols, device=self.device) // self.C_out  # PS for the reference column
        offsets = ((group.view(-1, 1) * Z + torch.arange(Z, device=self.device).view(1, -1)) * nb).view(1, -1, Z, 1)
        groups = (PS + (1 if self.has_ref else 0)) * Z
        for o in sums:
            ov = o.view(o.shape[0], self.cols, Z, -1)
            idx = ((ov - lo) * scale).clamp_(0, nb - 1).to(torch.int64).add_(offsets)
            counts = torch.bincount(idx.view(-1), minlength=groups * nb).cpu()
            hist = counts if hist is None else hist + counts
        assert hist is not None
        return hist

    def _ranges(self, stats: list[Tensor]) -> PartialSumRanges:
        """Physical ranges from the grid-unit statistics of :meth:`_observe`: min/max, or the
        ``adc_range_percentile`` from the histogram (never beyond min/max): the upper percentile, and the lower one
        (100 - percentile) only where partial sums can be negative (signed parallel inputs)."""
        lo, hi, rlo, rhi = stats[:4]
        if len(stats) > 4:
            nb, Z, PS = PERCENTILE_BINS, self.Z, self.P * self.S
            f_lo, f_hi = (v / self.on for v in self.full_scale())
            width = (f_hi - f_lo) / nb
            cum = stats[4].view(-1, nb).double().cumsum(1)
            share = self.cfg.adc_range_percentile / 100.0
            top = (cum < share * cum[:, -1:]).sum(1).double()  # first bin reaching the upper percentile
            bottom = (cum < (1.0 - share) * cum[:, -1:]).sum(1).double()
            p_hi, p_lo = (f_lo + (top + 1) * width).view(-1, Z), (f_lo + bottom * width).view(-1, Z)
            if f_lo >= 0:  # non-negative sums: the low end (many sums near 0) keeps its minimum
                p_lo = torch.full_like(p_lo, -math.inf)
            lo, hi = torch.maximum(lo, p_lo[:PS]), torch.minimum(hi, p_hi[:PS])
            if self.has_ref:
                rlo, rhi = torch.maximum(rlo, p_lo[PS]), torch.minimum(rhi, p_hi[PS])
        lo, hi, rlo, rhi = (t * self.on for t in (lo, hi, rlo, rhi))
        return PartialSumRanges(lo.view(self.P, self.S, self.Z), hi.view(self.P, self.S, self.Z), rlo, rhi)


def _floor_adc(v: Tensor, lo: Tensor, hi: Tensor, bits: int, exact: bool) -> Tensor:
    """NeuroSim's floor ADC with a given (batch) range: ``code = floor((v - lo) 2^bits / (hi - lo))`` clamped to
    ``[0, 2^bits - 1]``, decoded as ``lo + code (hi - lo) / 2^bits``; a zero-width range passes the values through.
    ``exact``: ``v``, ``lo``, ``hi`` hold integers and the floor is an integer division."""
    span = hi - lo
    if exact:
        num = (v - lo).to(torch.int64) * (2**bits)
        code = torch.div(num, span.clamp(min=1).to(torch.int64), rounding_mode="floor").to(v.dtype)
    else:
        code = torch.floor((v - lo) * 2.0**bits / torch.where(span > 0, span, torch.ones_like(span)))
    code = code.clamp_(0, 2**bits - 1)
    return torch.where(span > 0, lo + code * span / 2.0**bits, v)
