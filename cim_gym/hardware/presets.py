"""Named chip configurations, each with the source of its numbers.

``get_preset(name)`` returns a :class:`CIMConfig`; ``PRESETS[name]`` holds the config and ``PRESET_SOURCES[name]``
says where its figures come from. Presets fix the *control* variables (bits, ADC, drift); the programming
variation sigma is the manipulated variable and is given per chip (``program(..., sigma=)``).
"""

from __future__ import annotations

from types import MappingProxyType

from cim_gym.hardware.config import CIMConfig

__all__ = ["PRESETS", "PRESET_SOURCES", "get_preset", "presets_table"]

_PRESETS: dict[str, CIMConfig] = {
    # Quantized network on an ideal array: 8-bit weights and inputs, ideal ADC, no noise, no drift. At sigma = 0
    # a chip computes exactly what the quantized model computes.
    "ideal": CIMConfig(),
    # DNN+NeuroSim V1.3 defaults (Inference_pytorch): wl_weight 8, wl_activate 8, cellBit 4, onoffratio 10,
    # subArray 128, ADCprecision 5, bit-serial input, first layer without bit-serial input and ADC, relative
    # variation. Our ADC range is calibrated once per chip (a chip property), not NeuroSim's per-batch min/max.
    "neurosim": CIMConfig(
        weight_bits=8, input_bits=8, cell_bits=4, onoff_ratio=10.0, mapping="offset", variation="relative",
        subarray_rows=128, row_mapping="rows", input_feeding="bit_serial", adc_bits=5, adc_range="calibrated",
        first_layer="analog_no_adc", last_layer="analog",
    ),
    # NeuroSim V1.3's Python layer exactly: per-kernel-position sub-arrays and per-batch ("dynamic") ADC range.
    # For reproducing its numbers only: an image's result depends on the other images of its batch.
    "neurosim_compat": CIMConfig(
        weight_bits=8, input_bits=8, cell_bits=4, onoff_ratio=10.0, mapping="offset", variation="relative",
        subarray_rows=128, row_mapping="neurosim", input_feeding="bit_serial", adc_bits=5, adc_range="dynamic",
        first_layer="analog_no_adc", last_layer="analog",
    ),
    # RRAM-like: NeuroSim's array and relative variation (sigma ~ 0.05 is typical of its examples) with slow
    # conductance relaxation one day after programming, modeled with NeuroSim V1.3's retention law
    # G(t) = G(t0) (t/t0)^-nu. nu = 0.01 +- 0.005 is illustrative (RRAM relaxation is an order of magnitude
    # slower than PCM drift), not a fit to one device. Ideal ADC, so chips use the fast path.
    "rram": CIMConfig(
        weight_bits=8, input_bits=8, cell_bits=4, onoff_ratio=10.0, mapping="offset", variation="relative",
        sigma=0.05, drift_time=86400.0, drift_t0=1.0, drift_nu_mean=0.01, drift_nu_std=0.005,
        drift_compensation=False,
    ),
    # PCM-like: aihwkit's PCMLikeNoiseModel (Nandakumar et al. ICECS 2019; Joshi et al. Nat. Commun. 2020): a
    # differential pair per weight (here per 4-bit slice), programming noise ~ 1 uS of g_max = 25 uS, i.e. an
    # absolute sigma ~ 0.04 G_max; drift one hour after programming with nu ~ N(0.05, 0.008) (its fitted mean
    # and std, clipped at 0.049 / 0.008 for most states), global drift compensation on; on/off ~ 100. Read noise
    # left at 0 (aihwkit's 1/f read noise at 1 h is ~1 % of G; set read_noise=0.01 to include it).
    "pcm": CIMConfig(
        weight_bits=8, input_bits=8, cell_bits=4, onoff_ratio=100.0, mapping="differential", variation="absolute",
        sigma=0.04, drift_time=3600.0, drift_t0=1.0, drift_nu_mean=0.05, drift_nu_std=0.008,
        drift_compensation=True,
    ),
}

PRESETS: MappingProxyType[str, CIMConfig] = MappingProxyType(_PRESETS)

PRESET_SOURCES: MappingProxyType[str, str] = MappingProxyType({
    "ideal": "No hardware effects: quantized 8b/8b network, ideal ADC, no noise or drift.",
    "neurosim": "DNN+NeuroSim V1.3 Inference_pytorch defaults (8b weights/inputs, cellBit 4, on/off 10, "
    "128-row sub-arrays, 5-bit ADC, bit-serial input); ADC range calibrated per chip instead of per batch.",
    "neurosim_compat": "DNN+NeuroSim V1.3 Python layer reproduced: per-kernel-position sub-arrays and per-batch "
    "(dynamic) ADC range. Compatibility only.",
    "rram": "NeuroSim V1.3 array and relative variation (sigma 0.05) plus its retention law G(t0)(t/t0)^-nu at "
    "t = 1 day, nu = 0.01 +- 0.005 (illustrative RRAM relaxation, not a device fit).",
    "pcm": "aihwkit PCMLikeNoiseModel (Nandakumar et al. 2019; Joshi et al. 2020): differential pairs, absolute "
    "programming noise ~0.04 G_max, drift at t = 1 h with nu ~ N(0.05, 0.008), global drift compensation, on/off 100.",
})


def get_preset(name: str) -> CIMConfig:
    """The preset ``name``; an unknown name raises a ``ValueError`` listing the known ones."""
    try:
        return _PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown CIM preset {name!r}; known presets: {sorted(_PRESETS)}") from None


def presets_table() -> str:
    """A Markdown table of the presets (the fields that differ from the defaults) and their sources."""
    default = CIMConfig().to_dict()
    rows = ["| preset | settings (differences from `CIMConfig()`) | source |", "| --- | --- | --- |"]
    for name, cfg in _PRESETS.items():
        diff = ", ".join(f"{k}={v!r}" for k, v in cfg.to_dict().items() if default[k] != v) or "(defaults)"
        rows.append(f"| `{name}` | {diff} | {PRESET_SOURCES[name]} |")
    return "\n".join(rows)
