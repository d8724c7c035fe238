"""Chip pool (seeds, determinism, cache) and the energy/latency counters."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hw_nets import make_qnet
from torch import nn

from cim_gym.hardware import (
    ChipPool,
    CIMConfig,
    EnergyTable,
    LayerCost,
    count_costs,
    get_preset,
    group_costs,
    program,
    quantize_model,
    sigma_table,
    sum_costs,
)
from cim_gym.hardware.costs import energy_table_markdown
from cim_gym.hardware.pool import pool_seed


def test_pool_indexing_seeds_and_cache() -> None:
    cfg = CIMConfig()
    q, x = make_qnet(cfg)
    pool = ChipPool(q, cfg, sigmas=[0.0, 0.02, 0.05], chips_per_sigma=4, seed=7, cache_size=2)
    assert len(pool) == 12
    i = pool.chip_index(2, 3)
    assert i == 11 and pool.sigma_of(i) == 0.05 and pool.sigma_index_of(i) == 2
    assert pool.seed_of(i) == pool_seed(7, 2, 3)
    seeds = [pool.seed_of(k) for k in range(len(pool))]
    assert len(set(seeds)) == len(seeds)
    chip = pool[i]
    assert chip.sigma == 0.05 and chip.seed == pool.seed_of(i)
    assert pool[i] is chip  # cached
    pool[0], pool[1]
    assert pool[i] is not chip  # evicted (cache_size 2), reprogrammed identically
    with torch.no_grad():
        assert torch.equal(pool[i](x), chip(x))
    other = ChipPool(q, cfg, sigmas=[0.0, 0.02, 0.05], chips_per_sigma=4, seed=7)
    with torch.no_grad():
        assert torch.equal(other[5](x), pool[5](x))
        assert not torch.equal(other[5](x), pool[6](x))
    with pytest.raises(IndexError):
        pool[12]
    with pytest.raises(ValueError, match="sigmas"):
        ChipPool(q, cfg, sigmas=[-0.1])
    with pytest.raises(ValueError, match="chips_per_sigma"):
        ChipPool(q, cfg, sigmas=[0.1], chips_per_sigma=0)
    rng_pool = ChipPool.from_range(q, cfg, 0.0, 0.1, 5, chips_per_sigma=2)
    assert np.allclose(rng_pool.sigmas, [0, 0.025, 0.05, 0.075, 0.1])


def test_pool_seeds_are_stable_across_processes() -> None:
    code = "from cim_gym.hardware.pool import pool_seed; print(pool_seed(7, 2, 3))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert int(out) == pool_seed(7, 2, 3)


def test_costs_names_and_counts() -> None:
    from cim_gym.models import MultiExitResNet, ResNet

    cfg = get_preset("neurosim")
    m = ResNet(8, 10, 1)
    costs = count_costs(m, cfg, (1, 12, 12))
    assert set(costs) == set(m.layer_macs((1, 12, 12)))
    assert all(costs[k].macs == v for k, v in m.layer_macs((1, 12, 12)).items())
    # a 16->16 3x3 conv on 12x12: rows 144 -> 2 sub-arrays, cols 32 -> 1 column block, 8 bits serial
    c = costs["blocks.0.conv1"]
    assert c.array_reads == 144 * 2 * 1 * 8 and c.read_cycles == 144 * 8
    assert c.adc_conversions == 144 * 2 * 8 * (32 + 1) and c.adc_bits == 5
    # the first layer: analog, no ADC, parallel input
    s = costs["stem.conv"]
    assert s.adc_conversions == 0 and s.read_cycles == 144 and s.array_reads == 144
    # digital layers cost digital MACs only
    d = count_costs(m, cfg.replace(last_layer="digital"), (1, 12, 12))["head.fc"]
    assert d.digital_macs == d.macs and d.array_reads == 0 and not d.analog
    total = sum_costs(costs)
    assert total.macs == sum(m.layer_macs((1, 12, 12)).values())
    t = EnergyTable()
    assert math.isclose(total.energy_pj(t), sum(v.energy_pj(t) for v in costs.values()), rel_tol=1e-9)
    assert total.latency_ns(t) > 0
    blocks = group_costs(costs, [f"blocks.{k}." for k in range(3)])
    assert [b.macs for b in blocks] == m.block_macs((1, 12, 12)).tolist()
    # a quantized model and a chip give the same counts; an exit path costs less than the full net
    q = quantize_model(m, cfg)
    assert count_costs(q, cfg, (1, 12, 12)) == costs
    mm = MultiExitResNet(8, 10, 1)
    full = sum_costs(count_costs(mm, cfg, (1, 12, 12))).energy_pj()
    early = sum_costs(count_costs(mm, cfg, (1, 12, 12), exit=0)).energy_pj()
    assert early < full
    assert "adc_pj_per_step" in energy_table_markdown() and "Murmann" in energy_table_markdown()


def test_costs_of_a_chip_and_ideal_adc_charge() -> None:
    cfg = CIMConfig()
    q, _ = make_qnet(cfg)
    chip = program(q, cfg, 0.05, 0)
    assert count_costs(chip, cfg, (3, 8, 8)) == count_costs(q, cfg, (3, 8, 8))
    c = LayerCost(adc_conversions=10)
    t = EnergyTable()
    assert math.isclose(c.energy_pj(t), 10 * (t.adc_pj_per_step * 2**t.ideal_adc_bits + t.shift_add_pj))


def test_sigma_table_markdown() -> None:
    table = sigma_table(get_preset("neurosim"))
    assert "0.210" in table and "1.213" in table and "2.096" in table


def test_plain_module_support() -> None:
    net = nn.Sequential(nn.Linear(300, 40), nn.ReLU(), nn.Linear(40, 5))
    cfg = get_preset("neurosim")
    x = torch.randn(8, 300)
    q = quantize_model(net, cfg, example_input=x).eval()
    from cim_gym.hardware import calibrate

    chip = program(q, cfg, 0.02, 1, calibration=calibrate(q, cfg, x))
    with torch.no_grad():
        y = chip(x)
    assert y.shape == (8, 5) and chip.exact


def test_docs_tables_are_generated_by_the_package() -> None:
    from cim_gym.hardware.docs import markdown

    text = markdown()
    assert "| `ideal`, `neurosim`, `neurosim_compat`, `rram` | offset, relative, 8/4, 10 | 0.210 |" in text
    assert "`adc_calibration`" in text and "Murmann" in text and "`pcm`" in text


def test_hardware_imports_no_model_module() -> None:
    """The simulator works on any nn.Module: importing it (costs included) loads none of our backbones."""
    import subprocess
    import sys

    code = ("import sys, cim_gym; before = set(sys.modules); import cim_gym.hardware, cim_gym.hardware.costs; "
            "print(sorted(m for m in set(sys.modules) - before if m.startswith(('cim_gym.models', 'cim_gym.envs', "
            "'cim_gym.backbones', 'agents'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
