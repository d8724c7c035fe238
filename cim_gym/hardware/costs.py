"""Energy and latency counters: MACs, array reads and ADC conversions per inference, and a per-operation table.

Counting model (per image, per layer), with ``L`` output positions, ``rows = C_in k k`` unrolled rows,
``cols = C_out x slices x (2 if differential else 1)`` weight columns and square sub-arrays of
``subarray_rows`` rows and columns:

- sub-arrays: ``ceil(rows / subarray_rows)`` row blocks ("rows" mapping) or ``k k ceil(C_in / subarray_rows)``
  ("neurosim"), times ``ceil(cols / subarray_rows)`` column blocks;
- input cycles ``Z``: ``input_bits`` for bit-serial feeding (``2 (input_bits - 1)`` for signed inputs), 1 for
  parallel feeding and for a first layer in "analog_no_adc" mode;
- ``array_reads = L x row_blocks x col_blocks x Z`` (sub-array activations x input cycles);
- ``adc_conversions = L x row_blocks x Z x (cols + reference columns)`` (0 for a layer without ADC); an ideal ADC
  (``adc_bits=None``) is charged as ``EnergyTable.ideal_adc_bits`` bits;
- ``read_cycles = L x Z``: sequential read cycles (all sub-arrays of a layer work in parallel);
- digital layers: ``digital_macs = MACs``.

Energy: ``array_reads e_read + adc_conversions (e_adc_step 2^bits + e_shift_add) + digital_macs e_mac``.
Latency: ``read_cycles (t_read + adc_share t_adc)`` for analog layers (``adc_share`` columns multiplexed per ADC),
``digital_macs / digital_macs_per_ns`` for digital ones; layers run one after the other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from cim_gym.hardware.config import CIMConfig, is_integer, is_number
from cim_gym.hardware.profile import layer_output_positions, macs_per_position
from cim_gym.hardware.quant import QuantLayer, analog_layer_names, layer_roles

__all__ = ["EnergyTable", "LayerCost", "count_costs", "energy_table_markdown", "group_costs", "sum_costs"]


@dataclass(frozen=True)
class EnergyTable:
    """Energy (pJ) and latency (ns) per operation. Defaults are order-of-magnitude figures; see ``sources``."""

    array_read_pj: float = 1.0
    """One sub-array activation (word lines, bit lines, sense) for one input cycle, pJ."""
    adc_pj_per_step: float = 0.01
    """ADC energy per conversion step (Walden figure of merit), pJ: one b-bit conversion costs ``2^b`` steps."""
    shift_add_pj: float = 0.05
    """Digital shift-and-add of one conversion result (accumulator), pJ."""
    digital_mac_pj: float = 0.23
    """One 8-bit multiply-accumulate in digital logic (for digital layers), pJ."""
    ideal_adc_bits: int = 8
    """Bits charged for an ideal ADC (``adc_bits=None``)."""
    read_ns: float = 10.0
    """One read cycle of a sub-array (word-line pulse and settling), ns."""
    adc_ns: float = 1.0
    """One ADC conversion, ns."""
    adc_share: int = 8
    """Columns multiplexed onto one ADC (conversions per read cycle done one after the other)."""
    digital_macs_per_ns: float = 64.0
    """Throughput of the digital MAC unit used for digital layers, MACs per ns."""
    sources: Mapping[str, str] = field(default_factory=lambda: dict(_SOURCES))
    """Where each figure comes from (free text per field)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "sources":
                if not isinstance(value, Mapping):
                    raise ValueError(f"EnergyTable.sources={value!r} is not allowed: expected a mapping of field names to text")
            elif f.name in ("ideal_adc_bits", "adc_share"):
                lo, hi = (1, 16) if f.name == "ideal_adc_bits" else (1, 1 << 20)
                if not is_integer(value) or not lo <= value <= hi:
                    raise ValueError(f"EnergyTable.{f.name}={value!r} is not allowed: expected an integer in [{lo}, {hi}]")
            elif not is_number(value) or not math.isfinite(value) or value < 0 or (
                    f.name == "digital_macs_per_ns" and value == 0):
                allowed = "> 0" if f.name == "digital_macs_per_ns" else ">= 0"
                raise ValueError(f"EnergyTable.{f.name}={value!r} is not allowed: expected a finite number {allowed}")

    def adc_pj(self, bits: int | None) -> float:
        return self.adc_pj_per_step * 2.0 ** (self.ideal_adc_bits if bits is None else bits)


_SOURCES = {
    "array_read_pj": "Order of magnitude of NeuroSim-style estimates for a 128x128 RRAM sub-array read cycle "
    "(tens of fJ per cell row at 0.1-0.2 V; illustrative, technology dependent).",
    "adc_pj_per_step": "Walden FoM of ~10 fJ/conversion-step, typical of moderate-speed SAR ADCs "
    "(B. Murmann, ADC Performance Survey 1997-2023).",
    "shift_add_pj": "A 16-bit add at 45 nm is ~0.05 pJ (M. Horowitz, ISSCC 2014).",
    "digital_mac_pj": "8-bit multiply 0.2 pJ + 8-bit add 0.03 pJ at 45 nm (M. Horowitz, ISSCC 2014).",
    "ideal_adc_bits": "Convention of this package: an ideal ADC is charged like an 8-bit one.",
    "read_ns": "Read pulse of ~10 ns (order of NeuroSim's default read pulse width).",
    "adc_ns": "~1 GS/s-class SAR conversion; illustrative.",
    "adc_share": "NeuroSim's default column multiplexing of 8 columns per ADC.",
    "digital_macs_per_ns": "A 64-MAC digital unit at 1 GHz; illustrative.",
}


@dataclass
class LayerCost:
    """Counts for one layer (or a sum of layers), per image."""

    macs: int = 0
    array_reads: int = 0
    adc_conversions: int = 0
    read_cycles: int = 0
    digital_macs: int = 0
    adc_bits: int | None = None
    analog: bool = False

    def energy_pj(self, table: EnergyTable | None = None) -> float:
        """Energy per image, pJ."""
        t = table or EnergyTable()
        return (self.array_reads * t.array_read_pj + self.adc_conversions * (t.adc_pj(self.adc_bits) + t.shift_add_pj)
                + self.digital_macs * t.digital_mac_pj)

    def latency_ns(self, table: EnergyTable | None = None) -> float:
        """Latency per image, ns (layers sequential; sub-arrays of a layer in parallel)."""
        t = table or EnergyTable()
        per_cycle = t.read_ns + (t.adc_share * t.adc_ns if self.adc_conversions else 0.0)
        return self.read_cycles * per_cycle + self.digital_macs / t.digital_macs_per_ns

    def __add__(self, other: LayerCost) -> LayerCost:
        bits = self.adc_bits if self.adc_bits is not None else other.adc_bits
        return LayerCost(self.macs + other.macs, self.array_reads + other.array_reads,
                         self.adc_conversions + other.adc_conversions, self.read_cycles + other.read_cycles,
                         self.digital_macs + other.digital_macs, bits, self.analog or other.analog)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sum_costs(costs: Mapping[str, LayerCost], names: Iterable[str] | None = None, prefix: str | None = None) -> LayerCost:
    """Sum of the costs of ``names`` (default: all), optionally only those starting with ``prefix``.

    Energy sums exactly; latency of the sum is the sum of the layers' latencies only when all layers share the same
    ADC bits (they do within one config)."""
    total = LayerCost()
    for name in (costs if names is None else names):
        if prefix is None or name.startswith(prefix):
            total = total + costs[name]
    return total


def group_costs(costs: Mapping[str, LayerCost], prefixes: Sequence[str]) -> list[LayerCost]:
    """One summed cost per prefix (e.g. ``[f"blocks.{t}." for t in range(K)]``)."""
    return [sum_costs(costs, prefix=p) for p in prefixes]


def count_costs(model: nn.Module, cfg: CIMConfig, input_shape: Sequence[int], **forward_kwargs: Any) -> dict[str, LayerCost]:
    """Per-image costs of every Conv2d/Linear of ``model`` (plain, quantized or a chip) on one forward of a zero
    image of ``input_shape`` (``forward_kwargs`` select a path, e.g. ``mask=`` or ``exit=``; the default forward
    runs every layer). Keys equal ``model.layer_macs(input_shape)`` of the plain model."""
    if isinstance(input_shape, (str, bytes)) or not all(is_integer(d) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape={input_shape!r} is not allowed: expected the positive sizes of one image, "
                         "e.g. (1, 28, 28)")
    inner = getattr(model, "model", model) if type(model).__name__ == "Chip" else model
    roles = layer_roles(inner)
    analog = set(analog_layer_names(inner, cfg))
    # count_costs also serves models whose input ranges are not calibrated yet: give them a placeholder range.
    restore: list[tuple[Tensor, float]] = []
    for m in inner.modules():
        rng = getattr(m, "input_range", None)
        if isinstance(rng, Tensor) and float(rng) <= 0:
            restore.append((rng, float(rng)))
            rng.fill_(1.0)
    try:
        positions = layer_output_positions(model, input_shape, root=inner, **forward_kwargs)
    finally:
        for t, v in restore:
            t.fill_(v)
    modules = dict(inner.named_modules())
    out: dict[str, LayerCost] = {}
    R = cfg.subarray_rows
    for name, L in positions.items():
        m = modules[name]
        if isinstance(m, nn.Conv2d):
            kk = m.kernel_size[0] * m.kernel_size[1]
            cin, cout = m.in_channels // m.groups, m.out_channels
        else:
            kk, cin, cout = 1, m.in_features, m.out_features
        macs = L * macs_per_position(m)
        if name not in analog:
            out[name] = LayerCost(macs=macs, digital_macs=macs)
            continue
        first = "first" in roles[name]
        no_adc = first and cfg.first_layer == "analog_no_adc"
        signed = bool(m.signed_input) if isinstance(m, QuantLayer) or hasattr(m, "signed_input") else first
        if no_adc or cfg.input_feeding == "parallel":
            Z = 1
        else:
            Z = 2 * max(cfg.input_bits - 1, 1) if signed else cfg.input_bits
        rows = cin * kk
        row_blocks = kk * math.ceil(cin / R) if (cfg.row_mapping == "neurosim" and kk > 1) else math.ceil(rows / R)
        cols = cout * cfg.num_slices * (2 if cfg.mapping == "differential" else 1)
        col_blocks = math.ceil(cols / R)
        adc_cols = cols + (col_blocks if cfg.mapping == "offset" else 0)
        out[name] = LayerCost(macs=macs, array_reads=L * row_blocks * col_blocks * Z,
                              adc_conversions=0 if no_adc else L * row_blocks * Z * adc_cols, read_cycles=L * Z,
                              adc_bits=None if no_adc else cfg.adc_bits, analog=True)
    return out


def energy_table_markdown(table: EnergyTable | None = None) -> str:
    """The per-operation table with sources, as Markdown."""
    t = table or EnergyTable()
    rows = ["| figure | value | source |", "| --- | --- | --- |"]
    for f in dataclasses.fields(t):
        if f.name == "sources":
            continue
        rows.append(f"| `{f.name}` | {getattr(t, f.name)} | {t.sources.get(f.name, '')} |")
    return "\n".join(rows)
