"""The compute-in-memory (CIM) hardware model: configuration and presets, quantizers, chips, ADC, drift, chip
pools, energy counters. Works on any module made of ``nn.Conv2d`` / ``nn.Linear``; imports nothing of envs/agents.
"""

from cim_gym.hardware.config import CIMConfig
from cim_gym.hardware.presets import PRESET_SOURCES, PRESETS, get_preset
from cim_gym.hardware.quant import (
    QuantConv2d,
    QuantLinear,
    analog_layer_names,
    init_input_ranges,
    inject_noise,
    quantize_model,
)

__all__ = [
    "PRESETS",
    "PRESET_SOURCES",
    "CIMConfig",
    "QuantConv2d",
    "QuantLinear",
    "analog_layer_names",
    "get_preset",
    "init_input_ranges",
    "inject_noise",
    "quantize_model",
]
