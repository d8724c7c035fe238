"""`CIMConfig`: every setting of the compute-in-memory (CIM) chip model, documented, validated and serializable.

Units: conductances are normalized so that the largest cell conductance is ``G_max = 2^cell_bits - 1``; times are
in seconds; every ``*_noise`` and ``sigma`` is a dimensionless standard deviation (relative or in units of
``G_max``, see each field). The physics is described in ``docs``/README ("The CIM model") and in
``cim_gym.hardware.cells``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = [
    "ADC_CALIBRATIONS",
    "ADC_RANGES",
    "CIMConfig",
    "FIRST_LAYER_MODES",
    "INPUT_FEEDINGS",
    "LAST_LAYER_MODES",
    "MAPPINGS",
    "NOISE_SOURCES",
    "ROW_MAPPINGS",
    "VARIATIONS",
    "is_integer",
    "is_number",
    "noise_field",
]

MAPPINGS = ("offset", "differential")
VARIATIONS = ("relative", "absolute")
ROW_MAPPINGS = ("rows", "neurosim")
INPUT_FEEDINGS = ("bit_serial", "parallel")
ADC_RANGES = ("calibrated", "full_scale", "dynamic")
ADC_CALIBRATIONS = ("chip", "shared")
FIRST_LAYER_MODES = ("analog_no_adc", "analog", "digital")
LAST_LAYER_MODES = ("analog", "digital")
NOISE_SOURCES: MappingProxyType[str, str] = MappingProxyType({
    "programming": "sigma",
    "read": "read_noise",
    "output": "output_noise",
    "input": "input_noise",
    "adc_offset": "adc_offset_std",
    "adc_gain": "adc_gain_std",
    "stuck_at_gmin": "stuck_at_gmin",
    "stuck_at_gmax": "stuck_at_gmax",
})
"""Every noise source a study or an environment can sweep, and the one ``CIMConfig`` field its value sets. The only
place this is written: :meth:`CIMConfig.scaled`, :func:`~cim_gym.hardware.program`, the pools, the environments and
the studies all read it (``source in NOISE_SOURCES``; ``tuple(NOISE_SOURCES)`` lists the names)."""


def noise_field(source: str) -> str:
    """The ``CIMConfig`` field that noise source ``source`` sets; an unknown source raises a ``ValueError``."""
    if not isinstance(source, str) or source not in NOISE_SOURCES:
        raise ValueError(f"noise_source={source!r} is not allowed: expected one of {tuple(NOISE_SOURCES)}")
    return NOISE_SOURCES[source]


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"CIMConfig.{name}={value!r} is not allowed: expected {allowed}")


def is_number(value: Any) -> bool:
    """True for a real number (Python or numpy int/float scalar), False for bools, strings, arrays and the rest."""
    if type(value) in (int, float):  # the common case, without the slower ABC check
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_integer(value: Any) -> bool:
    """True for a Python or numpy integer scalar (not a bool)."""
    if type(value) is int:
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if not is_integer(value) or not lo <= value <= hi:
        _fail(name, value, f"an integer in [{lo}, {hi}]")


def _check_float(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
    ok = is_number(value) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        lo_txt = f"> {lo}" if lo_open else f">= {lo}"
        _fail(name, value, f"a finite number {lo_txt}" + ("" if hi == math.inf else f" and <= {hi}"))


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(name, value, f"one of {choices}")


@dataclass(frozen=True)
class CIMConfig:
    """All settings of the simulated CIM chip. Frozen: derive variants with :meth:`replace` or :meth:`scaled`.

    Defaults are NeuroSim V1.3's (8-bit weights and inputs, 4-bit cells, on/off ratio 10, 128-row sub-arrays,
    bit-serial input) except that the ADC is ideal and all noise is off; see :mod:`cim_gym.hardware.presets`.
    Every value is checked on construction; an invalid one raises a ``ValueError`` naming the field, the value and
    what is allowed.
    """

    # --- quantization ----------------------------------------------------------------------------------------
    weight_bits: int = 8
    """Bits of a weight (per-layer symmetric quantization, 2^b levels); a multiple of ``cell_bits``. 1..16."""
    input_bits: int = 8
    """Bits of a layer input (activation): 2^a - 1 levels in [0, range] after ReLU, signed for the first layer. 1..16."""
    cell_bits: int = 4
    """Bits stored per memory cell; a weight uses ``weight_bits / cell_bits`` cells (slices), LSB first. 1..8."""
    # --- devices ---------------------------------------------------------------------------------------------
    onoff_ratio: float = 10.0
    """On/off ratio R = G_max / G_min (> 1): a zero level maps to G_min = G_max / R, not to 0."""
    mapping: str = "offset"
    """How a signed weight becomes conductances: "offset" (one cell per slice and a noise-free reference column at
    D = G_max (1 + 1/R) / 2, NeuroSim) or "differential" (a G+ and a G- cell per slice, aihwkit)."""
    variation: str = "relative"
    """Programming-variation model: "relative" (G' = G (1 + sigma N), NeuroSim) or "absolute"
    (G' = G + sigma G_max N, state-independent). Conductances are clipped at 0 afterwards (NeuroSim does not)."""
    sigma: float = 0.0
    """Std of the programming (device-to-device) variation, drawn once per chip; >= 0. Usually set per chip by
    ``program(..., sigma=)``; this field is the value used when a config alone describes the chip."""
    read_noise: float = 0.0
    """Std of the relative cycle-to-cycle read noise, G'' = G (1 + read_noise N): independent for every cell, read
    cycle (input bit), output position and image; drawn anew at every forward; >= 0. The reference column is
    noise-free; a partial sum gets the exact Gaussian law of its cells' noise (clipping at G = 0, a Phi(-1/r)
    event, neglected)."""
    output_noise: float = 0.0
    """Std of the additive Gaussian noise on each analog layer's output (before the activation), as a fraction of
    that layer's calibrated output range (max - min); Yang & Sze, IEDM 2019. Drawn anew at every forward; >= 0."""
    input_noise: float = 0.0
    """Std of the additive Gaussian noise on every value a word line applies (DAC / driver noise), in units of the
    largest value of one read (1 for a bit-serial pulse, the largest input level for parallel feeding): independent
    per row, read cycle, output position and image, shared by all columns the row drives; >= 0."""
    stuck_at_gmin: float = 0.0
    """Share of cells stuck at G_min (a fault, drawn once per chip, cell by cell), in [0, 1]; stuck cells ignore
    programming, variation and drift. The reference column has no faults."""
    stuck_at_gmax: float = 0.0
    """Share of cells stuck at G_max (drawn once per chip, like ``stuck_at_gmin``), in [0, 1]; the two shares sum
    to at most 1."""
    # --- drift -----------------------------------------------------------------------------------------------
    drift_time: float = 0.0
    """Time t since programming, seconds. 0 means no drift; otherwise t >= drift_t0 and G(t) = G(t0) (t/t0)^-nu."""
    drift_t0: float = 1.0
    """Reference time t0 of the drift law, seconds (> 0); conductances are as programmed at t0."""
    drift_nu_mean: float = 0.0
    """Mean of the per-cell drift exponent nu (dimensionless, >= 0)."""
    drift_nu_std: float = 0.0
    """Std of the per-cell drift exponent nu (dimensionless, >= 0); drawn once per chip."""
    drift_compensation: bool = False
    """Global drift compensation (aihwkit's GlobalDriftCompensation): per layer, the chip reads the total current of
    its weight columns for an all-ones reference input right after programming and again at time t (noise-free,
    ideal-ADC reads, summed in float64) and scales the weight columns digitally by their ratio."""
    # --- array -----------------------------------------------------------------------------------------------
    subarray_rows: int = 128
    """Rows (word lines) of one sub-array; a layer's unrolled rows are split into sub-arrays of this many. 1..4096."""
    row_mapping: str = "rows"
    """"rows": the unrolled rows (C_in*k*k for a conv, in the weight's own order) are split into chunks of
    ``subarray_rows``. "neurosim": every kernel position gets its own sub-arrays of ``subarray_rows`` input channels
    (NeuroSim V1.3's Python layout, without its bug of dropping channels beyond a multiple of 128)."""
    input_feeding: str = "bit_serial"
    """"bit_serial": one input bit per read cycle, partial sums weighted by 2^z digitally (NeuroSim). "parallel":
    one multi-level read per input."""
    # --- ADC -------------------------------------------------------------------------------------------------
    adc_bits: int | None = None
    """ADC resolution in bits (1..16), or None for an ideal ADC (then the fast path is exact)."""
    adc_range: str = "calibrated"
    """ADC input range, a property of the chip, per layer, column kind, slice and input bit: "calibrated" (min/max
    of the partial sums on the calibration batch, see ``adc_calibration``) or "full_scale" (0 to the largest
    possible partial sum). "dynamic" is NeuroSim V1.3's per-batch min/max, kept only for compatibility: an image's
    result then depends on the other images of its batch."""
    adc_calibration: str = "chip"
    """Where "calibrated" ADC ranges come from: "chip" (each chip, right after programming, runs the calibration
    batch and fixes the min/max of its own partial sums per layer, slice and input bit) or "shared" (the ranges of
    the noise-free chip, shared by all chips: partial sums of a varied chip that leave that range are clipped)."""
    adc_range_percentile: float = 100.0
    """Calibrated ADC ranges end at this percentile of each (column kind, slice, input bit) group's partial sums
    instead of their max (100): e.g. 99.9 clips the top 0.1 % for a finer step (and the bottom 0.1 % where sums can
    be negative; non-negative sums keep their minimum). In (50, 100]."""
    adc_range_margin: float = 0.0
    """Calibrated ADC ranges are widened by this fraction of their width on each side (>= 0): headroom for partial
    sums larger than any seen on the calibration batch, paid for with a coarser step."""
    adc_offset_std: float = 0.0
    """Std of the offset error of each ADC (one per sub-array column, reference columns included), in LSB; drawn
    once per chip at programming (comparator mismatch, CrossSim); >= 0; needs a static ADC (adc_bits set, range
    not "dynamic")."""
    adc_gain_std: float = 0.0
    """Std of the gain error of each ADC, in LSB at full scale (code = (1 + e / (2^adc_bits - 1)) x ideal code);
    drawn once per chip at programming (capacitor mismatch, CrossSim); >= 0; needs a static ADC like
    ``adc_offset_std``."""
    # --- which layers are analog -----------------------------------------------------------------------------
    first_layer: str = "analog_no_adc"
    """The first Conv2d/Linear (it sees signed, normalized pixels): "analog_no_adc" (analog, parallel input, no
    ADC: NeuroSim), "analog" (like every other analog layer) or "digital" (exact quantized arithmetic)."""
    last_layer: str = "analog"
    """The output layers (every nn.Linear that is the last Conv2d/Linear of its parent module: the classifier of
    each head): "analog" or "digital"."""
    digital_layers: tuple[str, ...] = ()
    """Extra layers kept digital, as fnmatch patterns on qualified module names (e.g. ``("exits.*",)``)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # numpy scalars (np.float32 sigma, np.int64 bits) are plain numbers
            value = getattr(self, f.name)
            if isinstance(value, np.generic) and is_number(value):
                object.__setattr__(self, f.name, value.item())
        _check_int("weight_bits", self.weight_bits, 1, 16)
        _check_int("input_bits", self.input_bits, 1, 16)
        _check_int("cell_bits", self.cell_bits, 1, 8)
        if self.weight_bits % self.cell_bits != 0:
            _fail("weight_bits", self.weight_bits, f"a multiple of cell_bits={self.cell_bits}")
        _check_float("onoff_ratio", self.onoff_ratio, 1.0, lo_open=True)
        _check_choice("mapping", self.mapping, MAPPINGS)
        _check_choice("variation", self.variation, VARIATIONS)
        _check_float("sigma", self.sigma, 0.0)
        _check_float("read_noise", self.read_noise, 0.0)
        _check_float("output_noise", self.output_noise, 0.0)
        _check_float("input_noise", self.input_noise, 0.0)
        _check_float("stuck_at_gmin", self.stuck_at_gmin, 0.0, 1.0)
        _check_float("stuck_at_gmax", self.stuck_at_gmax, 0.0, 1.0)
        if self.stuck_at_gmin + self.stuck_at_gmax > 1.0:
            _fail("stuck_at_gmax", self.stuck_at_gmax, f"at most 1 - stuck_at_gmin = {1.0 - self.stuck_at_gmin}")
        _check_float("drift_t0", self.drift_t0, 0.0, lo_open=True)
        _check_float("drift_time", self.drift_time, 0.0)
        if self.drift_time != 0 and self.drift_time < self.drift_t0:
            _fail("drift_time", self.drift_time, f"0 (no drift) or a time >= drift_t0={self.drift_t0} s")
        _check_float("drift_nu_mean", self.drift_nu_mean, 0.0)
        _check_float("drift_nu_std", self.drift_nu_std, 0.0)
        if not isinstance(self.drift_compensation, bool):
            _fail("drift_compensation", self.drift_compensation, "True or False")
        _check_int("subarray_rows", self.subarray_rows, 1, 4096)
        _check_choice("row_mapping", self.row_mapping, ROW_MAPPINGS)
        _check_choice("input_feeding", self.input_feeding, INPUT_FEEDINGS)
        if self.adc_bits is not None:
            _check_int("adc_bits", self.adc_bits, 1, 16)
        _check_choice("adc_range", self.adc_range, ADC_RANGES)
        _check_choice("adc_calibration", self.adc_calibration, ADC_CALIBRATIONS)
        _check_float("adc_range_percentile", self.adc_range_percentile, 50.0, 100.0, lo_open=True)
        _check_float("adc_range_margin", self.adc_range_margin, 0.0)
        for name in ("adc_offset_std", "adc_gain_std"):
            _check_float(name, getattr(self, name), 0.0)
            if getattr(self, name) > 0 and (self.adc_bits is None or self.adc_range == "dynamic"):
                _fail(name, getattr(self, name), f"0 with adc_bits={self.adc_bits!r}, adc_range={self.adc_range!r} "
                      "(ADC mismatch needs adc_bits set and a static range: 'calibrated' or 'full_scale')")
        _check_choice("first_layer", self.first_layer, FIRST_LAYER_MODES)
        _check_choice("last_layer", self.last_layer, LAST_LAYER_MODES)
        patterns = self.digital_layers
        if isinstance(patterns, str):  # one pattern, never its characters
            patterns = (patterns,)
        elif isinstance(patterns, list):
            patterns = tuple(patterns)
        object.__setattr__(self, "digital_layers", patterns)
        if not isinstance(patterns, tuple) or not all(isinstance(p, str) for p in patterns):
            _fail("digital_layers", self.digital_layers, "a tuple of fnmatch patterns (strings)")

    # --- derived quantities -------------------------------------------------------------------------------------
    @property
    def num_slices(self) -> int:
        """Cells per weight (per column kind): ``weight_bits / cell_bits``."""
        return self.weight_bits // self.cell_bits

    @property
    def g_max(self) -> float:
        """Largest cell conductance in normalized units: ``2^cell_bits - 1``."""
        return float(2**self.cell_bits - 1)

    @property
    def drift_active(self) -> bool:
        """True when drift changes conductances (t > 0, t != t0 and some nu is non-zero)."""
        return self.drift_time > 0 and self.drift_time != self.drift_t0 and (self.drift_nu_mean > 0 or self.drift_nu_std > 0)

    @property
    def needs_exact(self) -> bool:
        """True when inference must compute partial sums (an ADC): the exact path. Read and input noise do not need
        it: without an ADC they are drawn on the layer's output with the exact per-read statistics."""
        return self.adc_bits is not None

    # --- variants -----------------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> CIMConfig:
        """A validated copy with ``changes`` applied; an unknown field raises a ``ValueError`` listing the known ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown CIMConfig field(s) {unknown}; known fields: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def scaled(self, source: str, sigma: float) -> CIMConfig:
        """A copy where ``sigma`` sets one noise source: the field ``NOISE_SOURCES[source]``.

        :param source: a key of :data:`NOISE_SOURCES` ("programming" sets ``sigma``, "read" ``read_noise``,
            "output" ``output_noise``, "input" ``input_noise``, "adc_offset" ``adc_offset_std``, "adc_gain"
            ``adc_gain_std``, "stuck_at_gmin" / "stuck_at_gmax" the fault rates).
        :param sigma: the value, a real number in that field's range (units of that field).
        """
        key = noise_field(source)
        if not is_number(sigma):
            raise ValueError(f"sigma={sigma!r} is not allowed: expected a real number (the value of {key})")
        return self.replace(**{key: float(sigma)})

    def noise_level(self, source: str) -> float:
        """The value of the field that ``source`` sets (``getattr(self, NOISE_SOURCES[source])``)."""
        return float(getattr(self, noise_field(source)))

    # --- serialization ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["digital_layers"] = list(self.digital_layers)
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CIMConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` listing the known fields."""
        if not isinstance(d, Mapping):
            raise TypeError(f"CIMConfig.from_dict needs a mapping of field names to values, not {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CIMConfig field(s) {unknown}; known fields: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("digital_layers"), list):
            d["digital_layers"] = tuple(d["digital_layers"])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> CIMConfig:
        return cls.from_dict(json.loads(text))


def config_fields_table() -> str:
    """A Markdown table of every field: name, default, documentation (used for the README)."""
    import ast
    import inspect

    src = inspect.getsource(CIMConfig)
    tree = ast.parse(src)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr):
            if isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                docs[a.target.id] = " ".join(b.value.value.split())
    rows = ["| field | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(CIMConfig):
        rows.append(f"| `{f.name}` | `{f.default!r}` | {docs.get(f.name, '')} |")
    return "\n".join(rows)
