"""Fidelity of the chip model: per-read noise against a cycle-by-cycle simulation, drift compensation as measured,
clipping in the sigma table, bare layers, float64 chips, NeuroSim's floor ADC on exact ties, stuck-at faults and ADC
mismatch."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hw_nets import make_qnet
from torch import nn

from cim_gym.hardware import CIMConfig, calibrate, get_preset, program, quantize_model
from cim_gym.hardware import exact as exact_mod
from cim_gym.hardware.cells import g0
from cim_gym.hardware.sigma import clipped_share, weight_noise_std

ROWS, OUT, BITS = 24, 3, 4


def probe_layer(cfg: CIMConfig) -> tuple[nn.Module, torch.Tensor]:
    """One bias-free Linear with unsigned inputs (so its input planes are plain bits) and one input image."""
    torch.manual_seed(3)
    lin = nn.Linear(ROWS, OUT, bias=False)
    q = quantize_model(nn.Sequential(lin), cfg).eval()
    q[0].signed_input.fill_(False)
    q[0].input_range.fill_(1.0)
    x = torch.randint(0, 2**BITS, (1, ROWS)).float() / (2**BITS - 1)
    return q, x


def simulate(q: nn.Module, cfg: CIMConfig, x: torch.Tensor, n: int, read: float = 0.0, inp: float = 0.0) -> torch.Tensor:
    """Reference: every read cycle (input bit) of every image is simulated cell by cell on the noise-free array
    (offset mapping, reference column noise-free): fresh read noise per cell and read, fresh word-line noise per row
    and read shared by the row's columns (reference column included). Returns (n, OUT) outputs."""
    gen = torch.Generator().manual_seed(99)
    layer = q[0]
    s = layer.weight.detach().abs().max().double()
    levels = torch.round((layer.weight.detach().double() / s + 1) * (2**cfg.weight_bits - 1) / 2)
    slices = torch.stack([(levels // 16**k) % 16 for k in range(cfg.num_slices)])  # (S, OUT, ROWS)
    k0 = g0(cfg)
    G = slices + k0  # conductance / (1 - 1/R)
    ref = k0 + cfg.g_max / 2
    xq = torch.round(x[0].double() * (2**BITS - 1))
    bits = torch.stack([(xq // 2**z) % 2 for z in range(BITS)])  # (Z, ROWS)
    Z, S = BITS, cfg.num_slices
    cells = G.expand(n, Z, S, OUT, ROWS)
    cells = cells * (1 + read * torch.randn(cells.shape, generator=gen, dtype=torch.float64))
    applied = bits.view(1, Z, ROWS) + inp * torch.randn((n, Z, ROWS), generator=gen, dtype=torch.float64)
    col = torch.einsum("bzr,bzsor->bzso", applied, cells)
    ref_col = applied.sum(-1) * ref  # (n, Z)
    w = torch.tensor([16.0**k for k in range(S)], dtype=torch.float64).view(1, 1, S, 1)
    per_bit = (2 * w * (col - ref_col.view(n, Z, 1, 1))).sum(2)  # (n, Z, OUT), signed weight levels x bits
    y_lev = (per_bit * torch.tensor([2.0**z for z in range(Z)], dtype=torch.float64).view(1, Z, 1)).sum(1)
    return (y_lev * s / (2**cfg.weight_bits - 1) / (2**BITS - 1)).float()


def chip_outputs(q: nn.Module, cfg: CIMConfig, x: torch.Tensor, n: int) -> torch.Tensor:
    chip = program(q, cfg, None, 4)
    with torch.no_grad():
        return chip(x.expand(n, -1).contiguous())


# ---- 1. read and input noise: per image and per read cycle ------------------------------------------------------
@pytest.mark.parametrize("adc", [None, 5])
def test_read_noise_differs_between_identical_images_of_a_batch(adc: int | None) -> None:
    cfg = CIMConfig(read_noise=0.05, adc_bits=adc, adc_range="full_scale")
    q, x = make_qnet(cfg)
    chip = program(q, cfg, None, 1)
    with torch.no_grad():
        y = chip(x[:1].expand(4, -1, -1, -1).contiguous())
    assert all(not torch.equal(y[0], y[i]) for i in (1, 2, 3))


@pytest.mark.parametrize("adc", [None, 16])
@pytest.mark.parametrize(("read", "inp"), [(0.1, 0.0), (0.0, 0.05)])
def test_per_read_noise_matches_a_cycle_by_cycle_simulation(adc: int | None, read: float, inp: float) -> None:
    """Fast path (ideal ADC) and exact path (16-bit full-scale ADC) against the reference: same mean, same
    covariance across output channels (input noise is shared by the columns of a row, so channels correlate)."""
    cfg = CIMConfig(first_layer="analog", input_bits=BITS, read_noise=read, input_noise=inp, adc_bits=adc,
                    adc_range="full_scale")
    q, x = probe_layer(cfg)
    n = 6000
    ref = simulate(q, cfg, x, n, read, inp)
    got = chip_outputs(q, cfg, x, n)
    clean = program(q, cfg.replace(read_noise=0.0, input_noise=0.0), None, 4)(x)
    assert torch.allclose(ref.mean(0), clean[0], atol=4 * float(ref.std(0).max()) / math.sqrt(n))
    assert torch.allclose(got.mean(0), clean[0], atol=4 * float(ref.std(0).max()) / math.sqrt(n) + 1e-3)
    c_ref, c_got = torch.cov(ref.t().double()), torch.cov(got.t().double())
    assert float((c_got - c_ref).norm() / c_ref.norm()) < 0.1, (c_got, c_ref)
    if inp > 0:  # correlated across channels
        corr = c_ref / torch.sqrt(torch.outer(c_ref.diag(), c_ref.diag()))
        assert float(corr.triu(1).abs().max()) > 0.2


def test_read_noise_without_adc_keeps_the_fast_path() -> None:
    cfg = CIMConfig(read_noise=0.05, input_noise=0.01)
    q, x = make_qnet(cfg)
    chip = program(q, cfg, None, 2)
    assert not chip.exact and all(layer.engine is None for _, layer in chip.analog_layers())


# ---- 2. drift compensation as the chip measures it -------------------------------------------------------------
def test_drift_compensation_uses_the_measured_programmed_state_in_float64() -> None:
    cfg = CIMConfig(drift_time=3600.0, drift_nu_mean=0.05, drift_nu_std=0.02, drift_compensation=True,
                    stuck_at_gmin=0.01)
    torch.manual_seed(0)
    lin = nn.Linear(400, 250, bias=False)  # 1e5 weights
    q = quantize_model(nn.Sequential(lin), cfg, example_input=torch.rand(2, 400)).eval()
    sigma = 0.1
    (_, comp), = program(q, cfg, sigma, 5).analog_layers()
    (_, programmed), = program(q, cfg.replace(drift_time=0.0), sigma, 5).analog_layers()  # same draws, t = t0
    (_, drifted), = program(q, cfg.replace(drift_compensation=False), sigma, 5).analog_layers()
    k0 = g0(cfg)
    expected = float((programmed.u_t.double() + k0).sum() / (drifted.u_t.double() + k0).sum())
    assert comp.alpha == pytest.approx(expected, rel=1e-9)  # float32 sums would be ~1e-4 off
    target = float((program(q, cfg.replace(drift_time=0.0), 0.0, 5).model[0].u_t.double() + k0).sum()
                   / (drifted.u_t.double() + k0).sum())
    assert abs(comp.alpha - target) > 1e-6  # the noise-free target is not what the chip measures


# ---- 3. the sigma table at a finite sigma: clipping at G >= 0 ---------------------------------------------------
def test_weight_noise_std_at_finite_sigma_matches_programmed_chips_with_clipping() -> None:
    cfg = get_preset("pcm").replace(drift_time=0.0)  # absolute variation, on/off 100: clips a lot
    values = torch.tensor([-1.0, -0.6, 0.0, 0.3, 1.0])
    n = 4000
    lin = nn.Linear(n, len(values), bias=False)
    with torch.no_grad():
        lin.weight.copy_(values.view(-1, 1).expand(-1, n))
    q = quantize_model(nn.Sequential(lin), cfg, example_input=torch.rand(2, n)).eval()
    sigma = 0.04
    (_, layer), = program(q, cfg, sigma, 0).analog_layers()
    emp = ((layer.w_eff - q[0].quant_weight()) / layer.w_scale).double().std(dim=1) / sigma
    exact = torch.as_tensor(weight_noise_std(cfg, values.double(), sigma=sigma))
    limit = torch.as_tensor(weight_noise_std(cfg, values.double()))
    assert torch.allclose(emp, exact, rtol=0.05), (emp, exact)
    assert bool(((limit - exact) / limit > 0.1).all())  # the small-sigma table overstates it by > 10 %
    share = clipped_share(cfg, [0.0], 0.01)  # the figures: 16 % / 40 % of zero-level cells
    zero_level = float(torch.special.ndtr(torch.tensor(-1.0)))
    assert zero_level == pytest.approx(0.1587, abs=1e-3) and 0 < float(share[0]) <= zero_level
    with pytest.raises(ValueError, match="sigma"):
        weight_noise_std(cfg, [0.0], sigma=-0.1)


# ---- 4. a bare layer is a model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_programming_a_bare_layer(kind: str) -> None:
    cfg = CIMConfig(first_layer="analog")
    torch.manual_seed(1)
    layer = nn.Conv2d(3, 8, 3, padding=1) if kind == "conv" else nn.Linear(20, 6)
    x = torch.randn(4, 3, 6, 6) if kind == "conv" else torch.randn(4, 20)
    q = quantize_model(layer, cfg, example_input=x).eval()
    chip = program(q, cfg, 0.1, 3)
    wrapped = program(quantize_model(nn.Sequential(layer), cfg, example_input=x).eval(), cfg, 0.1, 3)
    with torch.no_grad():
        assert not torch.allclose(chip(x), q(x))
        assert torch.equal(chip(x), wrapped(x))
    assert [n for n, _ in chip.analog_layers()] == [""]


# ---- 5. float64 chips, NeuroSim's floor on exact values ---------------------------------------------------------
@pytest.mark.parametrize("adc", [None, 5])
def test_chip_follows_the_model_dtype(adc: int | None) -> None:
    cfg = CIMConfig(adc_bits=adc, adc_range="full_scale", subarray_rows=32)
    q, x = make_qnet(cfg)
    chip = program(q, cfg, 0.05, 8)
    with torch.no_grad():
        y32 = chip(x)
        chip.double()
        y64 = chip(x.double())
    assert y64.dtype == torch.float64 and next(q.parameters()).dtype == torch.float32  # the source model is untouched
    assert torch.allclose(y64.float(), y32, rtol=1e-3, atol=1e-3 * float(y32.abs().max()))
    q64 = quantize_model(make_qnet(cfg)[0], cfg).double()
    direct = program(q64, cfg, 0.05, 8)
    with torch.no_grad():
        assert direct(x.double()).dtype == torch.float64
        with pytest.raises(TypeError, match="float64"):
            direct(x)
    with pytest.raises(TypeError, match="float32 or float64"):
        chip.half()


def neurosim_reference(levels: torch.Tensor, xq: torch.Tensor, cfg: CIMConfig) -> list[list[Fraction]]:
    """NeuroSim V1.3's floor ADC on exact rational partial sums (one sub-array, bit-serial, offset mapping)."""
    g0f = Fraction(int(cfg.g_max)) / (Fraction(cfg.onoff_ratio) - 1)
    S, Z, top = cfg.num_slices, cfg.input_bits, 2**cfg.adc_bits
    lv = [[int(v) for v in row] for row in levels.tolist()]
    xs = [[int(v) for v in row] for row in xq.tolist()]
    B, C, R = len(xs), len(lv), len(lv[0])
    out = [[Fraction(0)] * C for _ in range(B)]
    for z in range(Z):
        bits = [[(xs[b][i] >> z) & 1 for i in range(R)] for b in range(B)]
        ref = [sum(bits[b]) * (g0f + Fraction(int(cfg.g_max), 2)) for b in range(B)]
        sums = {k: [[sum(bits[b][i] * (((lv[c][i] >> (cfg.cell_bits * k)) & 15) + g0f) for i in range(R))
                     for c in range(C)] for b in range(B)] for k in range(S)}

        def adc(vals: list[Fraction], lo: Fraction, hi: Fraction) -> list[Fraction]:
            if hi == lo:
                return vals
            step = (hi - lo) / top
            return [lo + min(max(math.floor((v - lo) / step), 0), top - 1) * step for v in vals]

        ref_q = adc(ref, min(ref), max(ref))
        for k in range(S):
            flat = [v for row in sums[k] for v in row]
            lo, hi = min(flat), max(flat)
            for b in range(B):
                qv = adc(sums[k][b], lo, hi)
                for c in range(C):
                    out[b][c] += 2**z * 16**k * 2 * (qv[c] - ref_q[b])  # x (1 - 1/R) / (1 - 1/R)
    return out


def test_neurosim_dynamic_adc_takes_its_floor_on_exact_values() -> None:
    cfg = get_preset("neurosim_compat").replace(first_layer="analog", input_bits=4, adc_bits=3)
    torch.manual_seed(0)
    lin = nn.Linear(12, 5, bias=False)
    q = quantize_model(nn.Sequential(lin), cfg).eval()
    q[0].signed_input.fill_(False)
    q[0].input_range.fill_(1.0)
    gen = torch.Generator().manual_seed(1)
    xq = torch.randint(0, 16, (40, 12), generator=gen)
    xq[:, :6] = xq[:1, :6]  # shared bits: many equal partial sums, many exactly on step boundaries
    x = xq.float() / 15
    s = q[0].weight.detach().abs().max()
    levels = torch.round((q[0].weight.detach() / s + 1) * 255 / 2).long()
    ref = neurosim_reference(levels, xq, cfg)
    with torch.no_grad():
        y = program(q, cfg, 0.0, 0).double()(x.double())
        y32 = program(q, cfg, 0.0, 0)(x).double()
    expected = torch.tensor([[float(v) for v in row] for row in ref], dtype=torch.float64) * float(s) / 255 / 15
    top = float(expected.abs().max())
    assert torch.allclose(y, expected, rtol=0, atol=1e-9 * top), (y - expected).abs().max()
    assert torch.allclose(y32, expected, rtol=0, atol=1e-6 * top), (y32 - expected).abs().max()  # same codes


# ---- new non-idealities ------------------------------------------------------------------------------------------
def test_stuck_at_faults_are_drawn_once_per_chip() -> None:
    cfg = CIMConfig()
    q, x = make_qnet(cfg)
    ref = program(q, cfg, 0.0, 3)
    for field, state in (("stuck_at_gmin", 0.0), ("stuck_at_gmax", cfg.g_max)):
        a, b, c = (program(q, cfg.replace(**{field: 0.2}), 0.0, seed) for seed in (3, 3, 4))
        (_, la), (_, lb), (_, lc) = (next(iter(ch.analog_layers())) for ch in (a, b, c))
        stuck = (la.u_t == state) & (next(iter(ref.analog_layers()))[1].u_t != state)
        changed = la.u_t != next(iter(ref.analog_layers()))[1].u_t
        assert torch.equal(changed, changed & stuck)  # every change is a stuck cell
        share = float((la.u_t == state).double().mean())
        assert 0.15 < share < 0.45 and torch.equal(la.u_t, lb.u_t) and not torch.equal(la.u_t, lc.u_t)
    every = program(q, cfg.replace(stuck_at_gmin=1.0), 0.0, 3)
    assert all(bool((layer.u_t == 0).all()) for _, layer in every.analog_layers())


def test_adc_offset_and_gain_mismatch_are_fixed_per_chip() -> None:
    cfg = CIMConfig(adc_bits=5, adc_range="full_scale", subarray_rows=32)
    q, x = make_qnet(cfg)
    base = program(q, cfg, 0.0, 6)
    off = program(q, cfg.replace(adc_offset_std=0.7), 0.0, 6)
    with torch.no_grad():
        y0, y1 = base(x), off(x)
        assert not torch.allclose(y0, y1) and torch.equal(y1, off(x))  # fixed: no per-call draw
        assert torch.equal(y1, program(q, cfg.replace(adc_offset_std=0.7), 0.0, 6)(x))
    name, layer = list(off.analog_layers())[1]
    from cim_gym.hardware.quant import input_levels

    seen = {}
    h = dict(base.model.named_modules())[name].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        base(x)
    h.remove()
    qx, _ = input_levels(seen["x"], layer.input_range, layer.input_bits, bool(layer.signed_input))
    e0, e1 = dict(base.analog_layers())[name].engine, layer.engine
    lsb = e0.a_col.view(1, e0.cols, e0.Z, 1)
    codes0 = (e0.adc_outputs(qx) / e0.on + e0.shift_col) * lsb
    codes1 = (e1.adc_outputs(qx) / e1.on + e1.shift_col) * lsb
    shift = (codes1 - codes0).mean(dim=(2, 3))  # per ADC (sub-array, column)
    offsets = torch.cat([o.view(o.shape[0], o.shape[1]) for o, _ in e1.mismatch])
    inside = (codes0 > 2).all(dim=(2, 3)) & (codes0 < 29).all(dim=(2, 3))  # no clipping
    if int(inside.sum()) > 5:
        corr = torch.corrcoef(torch.stack([shift[inside].double(), offsets[inside].double()]))[0, 1]
        assert float(corr) > 0.9
    gain = program(q, cfg.replace(adc_gain_std=2.0), 0.0, 6)
    with torch.no_grad():
        assert not torch.allclose(gain(x), y0)


# ---- calibration: one pass, margin ----------------------------------------------------------------------------
def test_one_pass_calibration_equals_observe_then_convert(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = CIMConfig(adc_bits=5, subarray_rows=32, read_noise=0.0)
    q, x = make_qnet(cfg)
    calib = calibrate(q, cfg, x)
    one = program(q, cfg, 0.05, 2, calibration=calib)
    monkeypatch.setattr(exact_mod, "CALIBRATION_MEMORY_BYTES", 0)  # forces the two-pass fallback
    two = program(q, cfg, 0.05, 2, calibration=calib)
    with torch.no_grad():
        assert torch.equal(one(x), two(x))
    for (_, a), (_, b) in zip(one.analog_layers(), two.analog_layers()):
        if a.engine is not None:
            assert torch.equal(a.engine.ranges.hi, b.engine.ranges.hi)


def test_adc_range_margin_widens_the_calibrated_range() -> None:
    cfg = CIMConfig(adc_bits=5, subarray_rows=32)
    q, x = make_qnet(cfg)
    calib = calibrate(q, cfg, x)
    plain = program(q, cfg, 0.05, 2, calibration=calib)
    wide = program(q, cfg.replace(adc_range_margin=0.5), 0.05, 2, calibration=calib)
    (_, a), (_, b) = [next((n, la) for n, la in ch.analog_layers() if la.engine is not None) for ch in (plain, wide)]
    assert torch.equal(a.engine.ranges.hi, b.engine.ranges.hi)  # same calibration...
    lsb_a, lsb_b = a.engine.a_col, b.engine.a_col  # codes per physical unit
    # ...a range 1.5x (lo already at the smallest possible sum, 0) to 2x (0.5 of the width on each side) as wide
    ratio = lsb_a / lsb_b
    assert bool((ratio > 1.5 - 1e-5).all() and (ratio < 2.0 + 1e-5).all()), ratio.flatten()


# ---- hard edges -----------------------------------------------------------------------------------------------------
def test_bad_inputs_get_a_clear_error() -> None:
    cfg = CIMConfig(adc_bits=5, subarray_rows=32)
    q, x = make_qnet(cfg)
    nan = x.clone()
    nan[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        calibrate(q, cfg, nan)
    chip = program(q, cfg, 0.05, 0, calibration=calibrate(q, cfg, x))
    with pytest.raises(ValueError, match="non-finite"):
        chip(nan)
    with pytest.raises(ValueError, match=r"expects an input of shape \(batch, 3, height, width\)"):
        chip(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(batch, 3"):
        chip(torch.randn(3, 8, 8))
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(TypeError, match=f"dtype {dtype}.*float32"):
            chip(x.to(dtype))
    with pytest.raises(TypeError, match="floating-point"):
        chip((x * 100).to(torch.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        chip(x[:0])
    with pytest.raises(TypeError, match="CIMConfig"):
        program(q, cfg.to_dict(), 0.05, 0)  # type: ignore[arg-type]


def test_numpy_scalars_and_one_pattern_strings_in_program() -> None:
    cfg = CIMConfig(digital_layers="7")  # one pattern: the Linear named "7"
    q, x = make_qnet(cfg)
    chip = program(q, cfg, np.float32(0.05), np.int64(3))
    assert [n for n, _ in chip.analog_layers()] == ["0", "3"]
    with torch.no_grad():
        assert torch.equal(chip(x), program(q, cfg, float(np.float32(0.05)), 3)(x))
    calibrate(q, cfg, x, chip_batch=np.int64(4))
    with pytest.raises(ValueError, match="sigma='0.05'"):
        program(q, cfg, "0.05", 3)  # type: ignore[arg-type]


def test_hostile_arguments_get_clear_errors() -> None:
    from cim_gym.hardware import ChipPool, EnergyTable, count_costs, sigma_table
    from cim_gym.hardware.chip import Calibration

    cfg = CIMConfig()
    q, x = make_qnet(cfg)
    with pytest.raises(TypeError, match="mapping"):
        CIMConfig.from_dict("sigma")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown CIMConfig field"):
        cfg.replace(sigmaa=0.1)
    with pytest.raises(ValueError, match="example_input has 1 non-finite"):
        quantize_model(nn.Linear(3, 2), cfg, example_input=torch.tensor([[0.0, float("nan"), 1.0]]))
    other, _ = make_qnet(cfg, seed=1)
    calib = calibrate(quantize_model(nn.Sequential(nn.Flatten(), nn.Linear(192, 10)), cfg, example_input=x), cfg, x)
    with pytest.raises(ValueError, match="no output range"):
        program(other, cfg.replace(output_noise=0.1), None, 0, calib)
    with pytest.raises(ValueError, match="sigmas='0.1'"):
        ChipPool(q, cfg, "0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num=2.5"):
        ChipPool.from_range(q, cfg, 0.0, 0.1, 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="integer"):
        ChipPool(q, cfg, [0.1])["0"]  # type: ignore[index]
    with pytest.raises(ValueError, match="array_read_pj=-1"):
        EnergyTable(array_read_pj=-1)
    with pytest.raises(ValueError, match="adc_share=0"):
        EnergyTable(adc_share=0)
    with pytest.raises(ValueError, match="input_shape"):
        count_costs(q, cfg, "3x8x8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing"):
        Calibration.from_dict({})
    with pytest.raises(ValueError, match="weights=()"):
        sigma_table(cfg, ())


def test_noise_injection_covers_the_new_sources() -> None:
    from cim_gym.hardware import inject_noise

    cfg = CIMConfig()
    q, x = make_qnet(cfg)
    with torch.no_grad():
        clean = q(x)
        for source, value in (("input", 0.05), ("stuck_at_gmin", 0.1), ("stuck_at_gmax", 0.1)):
            with inject_noise(q, cfg, value, torch.Generator().manual_seed(0), source=source):
                assert not torch.allclose(q(x), clean), source
    with pytest.raises(ValueError, match="ADC mismatch"):
        with inject_noise(q, cfg.replace(adc_bits=5), 0.5, source="adc_offset"):
            pass


def test_percentile_adc_ranges_match_the_quantiles_of_the_partial_sums() -> None:
    from cim_gym.hardware.exact import PERCENTILE_BINS, ExactEngine
    from cim_gym.hardware.quant import input_levels

    cfg = CIMConfig(adc_bits=5, subarray_rows=32, adc_range_percentile=99.0)
    q, x = make_qnet(cfg)
    chip = program(q, cfg, 0.05, 2, calibration=calibrate(q, cfg, x))
    full = program(q, cfg.replace(adc_range_percentile=100.0), 0.05, 2, calibration=calibrate(q, cfg, x))
    name, layer = list(chip.analog_layers())[1]
    e = layer.engine
    seen = {}
    h = dict(chip.model.named_modules())[name].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        chip(x)
    h.remove()
    qx, _ = input_levels(seen["x"], layer.input_range, layer.input_bits, bool(layer.signed_input))
    ideal = ExactEngine(e.geom, cfg, e.u, e.alpha, e.scale, e.signed, use_adc=False, parallel=e.parallel)
    sums = ideal.adc_outputs(qx)  # (sub-arrays, cols, Z, pixels), physical units
    bin_width = (e.full_scale()[1] - e.full_scale()[0]) / PERCENTILE_BINS
    C = e.C_out
    for k in range(e.S):
        for z in range(e.Z):
            group = sums[:, k * C:(k + 1) * C, z].reshape(-1).double()
            hi = float(torch.quantile(group, 0.99))
            assert abs(float(e.ranges.hi[0, k, z]) - hi) <= 2 * bin_width, (k, z)  # the bin holding the quantile
    (_, wide), = [(n, la) for n, la in full.analog_layers() if n == name]
    assert bool((e.ranges.hi <= wide.engine.ranges.hi + 1e-9).all()) and bool((e.ranges.hi < wide.engine.ranges.hi).any())


def test_percentile_ranges_do_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = CIMConfig(adc_bits=5, subarray_rows=32, adc_range_percentile=99.0)
    q, x = make_qnet(cfg)
    calib = calibrate(q, cfg, x)

    def ranges() -> list[torch.Tensor]:
        chip = program(q, cfg, 0.05, 2, calibration=calib)
        return [layer.engine.ranges.hi for _, layer in chip.analog_layers() if layer.engine is not None]

    whole = ranges()
    monkeypatch.setattr(exact_mod, "CHUNK_ELEMENTS", 2000)  # many chunks: the histogram must add them all up
    for a, b in zip(whole, ranges()):
        assert torch.equal(a, b)


def test_shared_adc_ranges_are_computed_on_demand() -> None:
    cfg = CIMConfig(adc_bits=5, subarray_rows=32)
    q, x = make_qnet(cfg)
    calib = calibrate(q, cfg, x)  # per-chip calibration computes no shared ranges
    assert not calib.adc_ranges
    shared = cfg.replace(adc_calibration="shared")
    late = program(q, shared, 0.05, 1, calibration=calib)
    assert calib.adc_ranges
    with torch.no_grad():
        assert torch.equal(late(x), program(q, shared, 0.05, 1, calibration=calibrate(q, shared, x))(x))
