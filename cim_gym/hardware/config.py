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
from dataclasses import dataclass
from typing import Any

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
]

MAPPINGS = ("offset", "differential")
VARIATIONS = ("relative", "absolute")
ROW_MAPPINGS = ("rows", "neurosim")
INPUT_FEEDINGS = ("bit_serial", "parallel")
ADC_RANGES = ("calibrated", "full_scale", "dynamic")
ADC_CALIBRATIONS = ("chip", "shared")
FIRST_LAYER_MODES = ("analog_no_adc", "analog", "digital")
LAST_LAYER_MODES = ("analog", "digital")
NOISE_SOURCES = ("programming", "read", "output")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"CIMConfig.{name}={value!r} is not allowed: expected {allowed}")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _fail(name, value, f"an integer in [{lo}, {hi}]")


def _check_float(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
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
    """Std of the relative cycle-to-cycle read noise, G'' = G (1 + read_noise N), drawn anew at every forward; >= 0."""
    output_noise: float = 0.0
    """Std of the additive Gaussian noise on each analog layer's output (before the activation), as a fraction of
    that layer's calibrated output range (max - min); Yang & Sze, IEDM 2019. Drawn anew at every forward; >= 0."""
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
    """Global drift compensation: one digital scalar per layer, sum of programmed conductances / sum at time t
    (aihwkit's GlobalDriftCompensation idea)."""
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
        _check_choice("first_layer", self.first_layer, FIRST_LAYER_MODES)
        _check_choice("last_layer", self.last_layer, LAST_LAYER_MODES)
        patterns = self.digital_layers
        if isinstance(patterns, list):
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
        """True when inference must compute partial sums (an ADC or read noise): the exact path."""
        return self.adc_bits is not None or self.read_noise > 0

    # --- variants -----------------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> CIMConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def scaled(self, source: str, sigma: float) -> CIMConfig:
        """A copy where ``sigma`` sets the std of one noise source.

        :param source: "programming" (field ``sigma``), "read" (``read_noise``) or "output" (``output_noise``).
        :param sigma: the std, >= 0 (units of that field).
        """
        if source not in NOISE_SOURCES:
            raise ValueError(f"source={source!r} is not allowed: expected one of {NOISE_SOURCES}")
        key = {"programming": "sigma", "read": "read_noise", "output": "output_noise"}[source]
        return self.replace(**{key: float(sigma)})

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CIMConfig field(s) {unknown}; known fields: {sorted(known)}")
        d = dict(d)
        if "digital_layers" in d:
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
