"""CIMConfig validation, serialization, presets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cim_gym.hardware import NOISE_SOURCES, PRESET_SOURCES, PRESETS, CIMConfig, get_preset
from cim_gym.hardware.config import config_fields_table
from cim_gym.hardware.presets import presets_table

BAD = [
    ("weight_bits", 0), ("weight_bits", 7), ("weight_bits", 2.0), ("input_bits", 0), ("input_bits", True),
    ("cell_bits", 0), ("cell_bits", 9), ("onoff_ratio", 1.0), ("onoff_ratio", 0.5), ("onoff_ratio", float("inf")),
    ("mapping", "diff"), ("variation", "gaussian"), ("sigma", -0.1), ("sigma", float("nan")), ("read_noise", -1),
    ("output_noise", -1e-3), ("drift_time", -1.0), ("drift_time", 0.5), ("drift_t0", 0.0), ("drift_nu_mean", -0.1),
    ("drift_nu_std", -0.1), ("drift_compensation", 1), ("subarray_rows", 0), ("subarray_rows", 10000),
    ("row_mapping", "cols"), ("input_feeding", "serial"), ("adc_bits", 0), ("adc_bits", 17), ("adc_bits", 4.0),
    ("adc_range", "auto"), ("first_layer", "analogue"), ("last_layer", "analog_no_adc"), ("digital_layers", 3),
    ("digital_layers", ("fc", 1)), ("input_noise", -0.1), ("stuck_at_gmin", 1.5), ("stuck_at_gmax", -0.01),
    ("adc_range_margin", -0.5), ("adc_offset_std", 0.5), ("adc_gain_std", 1.0), ("sigma", "0.1"),
]


@pytest.mark.parametrize(("field", "value"), BAD)
def test_invalid_values_name_field_value_and_allowed(field: str, value: object) -> None:
    with pytest.raises(ValueError) as err:
        CIMConfig(**{field: value})
    msg = str(err.value)
    assert field in msg and repr(value) in msg and "expected" in msg


def test_defaults_valid_and_derived() -> None:
    cfg = CIMConfig()
    assert cfg.num_slices == 2 and cfg.g_max == 15.0
    assert not cfg.drift_active and not cfg.needs_exact
    assert CIMConfig(adc_bits=5).needs_exact
    assert not CIMConfig(read_noise=0.01).needs_exact and not CIMConfig(input_noise=0.01).needs_exact
    assert not CIMConfig(drift_time=1.0, drift_nu_mean=0.1).drift_active  # t = t0
    assert not CIMConfig(drift_time=100.0).drift_active  # nu = 0
    assert CIMConfig(drift_time=100.0, drift_nu_std=0.01).drift_active


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_json(name: str) -> None:
    cfg = get_preset(name)
    assert CIMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert CIMConfig.from_json(cfg.to_json()) == cfg
    assert PRESET_SOURCES[name]


def test_preset_values() -> None:
    ns = get_preset("neurosim")
    assert (ns.weight_bits, ns.input_bits, ns.cell_bits, ns.onoff_ratio, ns.subarray_rows, ns.adc_bits) == (8, 8, 4, 10.0, 128, 5)
    assert ns.input_feeding == "bit_serial" and ns.adc_range == "calibrated"
    assert get_preset("ideal").adc_bits is None and get_preset("ideal").sigma == 0
    assert get_preset("pcm").drift_active and get_preset("rram").drift_active


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(ValueError, match="ideal.*neurosim.*pcm.*rram"):
        get_preset("sram")


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown CIMConfig field"):
        CIMConfig.from_dict({"weight_bit": 8})


def test_scaled_and_replace() -> None:
    cfg = get_preset("neurosim")
    assert cfg.scaled("programming", 0.1).sigma == 0.1
    assert cfg.scaled("read", 0.02).read_noise == 0.02
    assert cfg.scaled("output", 0.03).output_noise == 0.03
    with pytest.raises(ValueError, match="source"):
        cfg.scaled("thermal", 0.1)
    with pytest.raises(ValueError, match="sigma"):
        cfg.scaled("programming", -1.0)
    assert cfg.replace(digital_layers=["head.*"]).digital_layers == ("head.*",)


def test_doc_tables_cover_every_field() -> None:
    table = config_fields_table()
    for f in CIMConfig().to_dict():
        assert f"`{f}`" in table
    assert all(f"`{n}`" in presets_table() for n in PRESETS)


def test_digital_layers_string_is_one_pattern() -> None:
    """A string is one fnmatch pattern, never split into characters (``"*"`` would make every layer digital)."""
    assert CIMConfig(digital_layers="head.*").digital_layers == ("head.*",)
    assert CIMConfig.from_dict({"digital_layers": "head.*"}).digital_layers == ("head.*",)
    assert get_preset("neurosim").replace(digital_layers="exits.*").digital_layers == ("exits.*",)


def test_numpy_scalars_are_numbers() -> None:
    cfg = CIMConfig(sigma=np.float32(0.25), weight_bits=np.int64(8), adc_bits=np.int32(5), onoff_ratio=np.float64(10))
    assert cfg.sigma == 0.25 and type(cfg.sigma) is float and type(cfg.weight_bits) is int and type(cfg.adc_bits) is int
    assert CIMConfig.from_json(cfg.to_json()) == cfg
    assert cfg.scaled("read", np.float32(0.5)).read_noise == 0.5
    with pytest.raises(ValueError, match="sigma='0.1'.*real number"):
        cfg.scaled("programming", "0.1")
    with pytest.raises(ValueError, match="weight_bits"):
        CIMConfig(weight_bits=np.float64(8.0))


def test_every_noise_source_sets_its_one_field() -> None:
    cfg = get_preset("neurosim")
    assert {"programming", "read", "output"} <= set(NOISE_SOURCES)
    assert NOISE_SOURCES["programming"] == "sigma" and NOISE_SOURCES["read"] == "read_noise"
    for source, field in NOISE_SOURCES.items():
        scaled = cfg.scaled(source, 0.125)
        assert getattr(scaled, field) == 0.125 and scaled.noise_level(source) == 0.125
        changed = {k for k, v in scaled.to_dict().items() if v != cfg.to_dict()[k]}
        assert changed == {field}, source
    with pytest.raises(ValueError, match="stuck_at_gmax"):
        CIMConfig(stuck_at_gmin=0.6, stuck_at_gmax=0.5)
