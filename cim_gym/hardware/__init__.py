"""The compute-in-memory (CIM) hardware model: configuration and presets, quantizers, chips (fast and exact paths),
ADC, drift, chip pools, energy counters. Works on any module made of ``nn.Conv2d`` / ``nn.Linear``; imports nothing
of envs/agents/backbones.

Typical use::

    cfg = get_preset("neurosim")
    qmodel = quantize_model(model, cfg)            # QAT-ready copy; train it, or load a checkpoint into it
    calib = calibrate(qmodel, cfg, x_batch)         # shared by all chips
    chip = program(qmodel, cfg, sigma=0.05, seed=123, calibration=calib)
    logits = chip(x)

``NOISE_SOURCES`` maps each noise a study or an environment can sweep ("programming", "read", "output", "input",
"adc_offset", "adc_gain", "stuck_at_gmin", "stuck_at_gmax") to the one ``CIMConfig`` field it sets.
"""

from cim_gym.hardware.chip import Calibration, Chip, calibrate, program
from cim_gym.hardware.config import NOISE_SOURCES, CIMConfig
from cim_gym.hardware.costs import EnergyTable, LayerCost, count_costs, group_costs, sum_costs
from cim_gym.hardware.pool import ChipPool
from cim_gym.hardware.presets import PRESET_SOURCES, PRESETS, get_preset
from cim_gym.hardware.quant import (
    QuantConv2d,
    QuantLinear,
    analog_layer_names,
    init_input_ranges,
    inject_noise,
    quantize_model,
)
from cim_gym.hardware.sigma import clipped_share, sigma_table, weight_noise_std

__all__ = [
    "NOISE_SOURCES",
    "PRESETS",
    "PRESET_SOURCES",
    "CIMConfig",
    "Calibration",
    "Chip",
    "ChipPool",
    "EnergyTable",
    "LayerCost",
    "QuantConv2d",
    "QuantLinear",
    "analog_layer_names",
    "calibrate",
    "clipped_share",
    "count_costs",
    "get_preset",
    "group_costs",
    "init_input_ranges",
    "inject_noise",
    "program",
    "quantize_model",
    "sigma_table",
    "sum_costs",
    "weight_noise_std",
]
