"""Chips: programming, fast path, exact path, ADC, drift, determinism, batch independence, model API."""

from __future__ import annotations

import math

import pytest
import torch
from hw_nets import make_qnet
from torch import nn

from cim_gym.hardware import CIMConfig, calibrate, get_preset, program, quantize_model, weight_noise_std
from cim_gym.hardware.adc import adc_convert
from cim_gym.hardware.chip import Calibration, ChipLayer
from cim_gym.hardware.exact import ExactEngine

MAPPINGS = [("offset", "rows"), ("offset", "neurosim"), ("differential", "rows"), ("differential", "neurosim")]


def layer_input(chip: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    seen = {}
    mod = dict(chip.model.named_modules())[name]
    h = mod.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        chip(x)
    h.remove()
    return seen["x"]


# ---- sigma = 0: the chip is the quantized model ---------------------------------------------------------------
@pytest.mark.parametrize(("mapping", "rows"), MAPPINGS)
@pytest.mark.parametrize("R", [10.0, 2.0])
def test_sigma0_chip_equals_quantized_model(mapping: str, rows: str, R: float) -> None:
    cfg = CIMConfig(mapping=mapping, row_mapping=rows, onoff_ratio=R, subarray_rows=32)
    q, x = make_qnet(cfg)
    chip = program(q, cfg, sigma=0.0, seed=1)
    with torch.no_grad():
        assert torch.equal(chip(x), q(x))
    assert not chip.exact


def test_sigma0_on_resnet_and_multiexit_with_masks_and_exits() -> None:
    from cim_gym.models import MultiExitResNet, ResNet

    cfg = get_preset("ideal")
    torch.manual_seed(0)
    x = torch.randn(6, 1, 12, 12)
    q = quantize_model(ResNet(8, 10, 1), cfg, example_input=x).eval()
    chip = program(q, cfg, 0.0, 5)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    with torch.no_grad():
        assert torch.equal(chip(x), q(x))
        assert torch.equal(chip(x, mask=mask), q(x, mask=mask))
        assert torch.equal(chip.features(x), q.features(x))
    assert chip.num_blocks == 3
    qm = quantize_model(MultiExitResNet(14, 10, 1), cfg, example_input=x).eval()
    chip = program(qm, cfg, 0.0, 5)
    with torch.no_grad():
        assert torch.equal(chip(x), qm(x))
        assert torch.equal(chip(x, exit=1), qm(x, exit=1))
        e = torch.tensor([0, 1, 2, 2, 1, 0])
        assert torch.equal(chip(x, exit=e), qm(x, exit=e))
    noisy = program(qm, cfg, 0.1, 5)
    with torch.no_grad():
        assert noisy(x, exit=e).shape == (6, 10) and not torch.allclose(noisy(x), qm(x))


# ---- exact path == fast path with an ideal ADC ------------------------------------------------------------------
@pytest.mark.parametrize(("mapping", "rows"), MAPPINGS)
@pytest.mark.parametrize("feeding", ["bit_serial", "parallel"])
def test_exact_path_with_ideal_adc_equals_fast_path(mapping: str, rows: str, feeding: str) -> None:
    base = CIMConfig(mapping=mapping, row_mapping=rows, input_feeding=feeding, subarray_rows=32, first_layer="analog",
                     drift_time=100.0, drift_nu_mean=0.05, drift_nu_std=0.02, drift_compensation=True)
    q, x = make_qnet(base)
    fast = program(q, base, sigma=0.1, seed=3)
    adc_cfg = base.replace(adc_bits=8, adc_range="full_scale")
    exact = program(q, adc_cfg, sigma=0.1, seed=3)
    assert exact.exact and not fast.exact
    multi = []
    for (name, f_layer), (_, e_layer) in zip(fast.analog_layers(), exact.analog_layers()):
        assert e_layer.engine is not None
        xin = layer_input(fast, x, name)
        e = e_layer.engine
        ideal = ExactEngine(e.geom, base, e_layer.u_t.flatten(3) if e_layer.u_t.dim() > 4 else e_layer.u_t, e.alpha,
                            e.scale, e.signed, use_adc=False, parallel=e.parallel)
        multi.append(ideal.num_subarrays > 1)  # several sub-arrays (rows > subarray_rows)
        from cim_gym.hardware.quant import input_levels

        qx, step = input_levels(xin, f_layer.input_range, f_layer.input_bits, bool(f_layer.signed_input))
        with torch.no_grad():
            ref = f_layer(xin)
            got = ideal.forward(qx, step, f_layer.bias)
        # agreement to ~1e-5: float rounding and the 2^-m fixed-point grid of the exact path (see exact.py)
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), name
    assert multi[1:] == [True, True]  # a conv and the linear span several sub-arrays


# ---- ADC ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 3, 5])
@pytest.mark.parametrize("mode", ["calibrated", "full_scale"])
def test_adc_output_takes_at_most_2_pow_b_values(bits: int, mode: str) -> None:
    cfg = CIMConfig(adc_bits=bits, adc_range=mode, subarray_rows=32)
    q, x = make_qnet(cfg)
    calib = calibrate(q, cfg, x)
    chip = program(q, cfg, 0.05, 0, calibration=calib)
    name, layer = list(chip.analog_layers())[1]
    e = layer.engine
    from cim_gym.hardware.quant import input_levels

    qx, _ = input_levels(layer_input(chip, x, name), layer.input_range, layer.input_bits, bool(layer.signed_input))
    vals = e.adc_outputs(qx)  # (sub-arrays, cols, Z, pixels)
    C = e.C_out
    for p in range(e.P):
        for k in range(e.S):
            for z in range(e.Z):
                v = vals[:, (p * e.S + k) * C:(p * e.S + k + 1) * C, z]
                assert v.unique().numel() <= 2**bits
    assert vals[:, -1].unique().numel() <= 2**bits * e.Z  # reference column, per plane


def test_adc_converges_to_ideal_with_many_bits() -> None:
    cfg = CIMConfig(subarray_rows=32)
    q, x = make_qnet(cfg)
    ideal = program(q, cfg, 0.05, 7)
    with torch.no_grad():
        ref = ideal(x)
    errs = []
    for bits in (4, 8, 12, 16):
        c = cfg.replace(adc_bits=bits, adc_range="calibrated")
        chip = program(q, c, 0.05, 7, calibration=calibrate(q, c, x))
        with torch.no_grad():
            errs.append(float((chip(x) - ref).norm() / ref.norm()))
    assert errs[-1] < 0.05 and errs[-1] < errs[1] < errs[0]
    v = torch.linspace(-3, 3, 1001)
    assert float((adc_convert(v, -3.0, 3.0, 16) - v).abs().max()) < 1e-4
    assert adc_convert(v, -1.0, 1.0, 3).unique().numel() == 8


def test_per_chip_and_shared_adc_calibration() -> None:
    """Shared ranges come from the noise-free chip: a varied chip's partial sums get clipped (an error floor);
    per-chip ranges follow the chip, so a fine ADC converges to the ideal one at any sigma."""
    cfg = CIMConfig(subarray_rows=32, adc_bits=16)
    q, x = make_qnet(cfg)
    calib = calibrate(q, cfg, x)
    with torch.no_grad():
        ref = program(q, cfg.replace(adc_bits=None), 0.1, 3)(x)
        err = {mode: float((program(q, cfg.replace(adc_calibration=mode), 0.1, 3, calibration=calib)(x) - ref).norm()
                           / ref.norm()) for mode in ("chip", "shared")}
    assert err["chip"] < 0.01 < err["shared"]


def test_per_chip_calibration_of_a_noise_free_chip_sees_the_shared_ranges() -> None:
    """At sigma 0 a chip's own calibration sees what the shared one saw: the whole batch by default (a few images
    give narrower ranges, and later images clip). Its first ADC layer gets exactly the shared ranges; deeper layers
    see the chip's own (ADC-quantized) activations, which a 16-bit ADC barely changes."""
    cfg = CIMConfig(subarray_rows=32, adc_bits=16)
    q, _ = make_qnet(cfg)
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    calib = calibrate(q, cfg.replace(adc_calibration="shared"), x)
    assert not calibrate(q, cfg, x).adc_ranges  # per-chip calibration needs no shared ranges
    chip = program(q, cfg, 0.0, 0, calibration=calib)
    exact = [(name, layer.engine.ranges) for name, layer in chip.analog_layers() if layer.engine is not None]
    assert len(exact) >= 2
    for i, (name, ranges) in enumerate(exact):
        shared = calib.adc_ranges[name]
        tol = {"rtol": 0.0, "atol": 0.0} if i == 0 else {"rtol": 0.02, "atol": 0.0}
        for field in ("lo", "hi", "ref_lo", "ref_hi"):
            torch.testing.assert_close(getattr(ranges, field), getattr(shared, field), **tol)
    with pytest.raises(ValueError, match="chip_batch=0"):
        calibrate(q, cfg, x, chip_batch=0)


def test_full_scale_and_calibrated_need_no_batch() -> None:
    cfg = CIMConfig(adc_bits=5, adc_range="calibrated")
    q, x = make_qnet(cfg)
    with pytest.raises(ValueError, match="calibrat"):
        program(q, cfg, 0.05, 0)
    program(q, cfg.replace(adc_range="full_scale"), 0.05, 0)


# ---- determinism and batch independence ---------------------------------------------------------------------
@pytest.mark.parametrize("adc", [None, 5])
def test_same_seed_same_chip_different_seed_different_chip(adc: int | None) -> None:
    cfg = CIMConfig(adc_bits=adc, drift_time=10.0, drift_nu_std=0.05, output_noise=0.01, read_noise=0.01)
    q, x = make_qnet(cfg)
    calib = calibrate(q, cfg, x)
    a, b, c = (program(q, cfg, 0.05, s, calibration=calib) for s in (11, 11, 12))
    with torch.no_grad():
        ya, yb, yc = a(x), b(x), c(x)
        assert torch.equal(ya, yb) and not torch.allclose(ya, yc)
        assert torch.equal(a(x), b(x))  # per-call noise streams advance identically
    for (_, la), (_, lb) in zip(a.analog_layers(), b.analog_layers()):
        assert torch.equal(la.u_t, lb.u_t)
    g = torch.get_rng_state()
    program(q, cfg, 0.05, 13, calibration=calib)
    assert torch.equal(g, torch.get_rng_state())  # the global RNG is never used


@pytest.mark.parametrize("adc_range", [None, "calibrated", "full_scale"])
def test_outputs_do_not_depend_on_other_images(adc_range: str | None) -> None:
    cfg = CIMConfig(subarray_rows=32) if adc_range is None else CIMConfig(subarray_rows=32, adc_bits=5, adc_range=adc_range)
    q, x = make_qnet(cfg)
    chip = program(q, cfg, 0.05, 2, calibration=calibrate(q, cfg, x))
    with torch.no_grad():
        full = chip(x)
        for i in (0, 5, 15):
            assert torch.allclose(chip(x[i:i + 1]), full[i:i + 1], rtol=1e-5, atol=1e-6)
        assert torch.allclose(chip(x[3:9]), full[3:9], rtol=1e-5, atol=1e-6)


def test_dynamic_adc_depends_on_the_batch() -> None:
    cfg = CIMConfig(subarray_rows=32, adc_bits=3, adc_range="dynamic")
    q, x = make_qnet(cfg)
    chip = program(q, cfg, 0.0, 2)
    with torch.no_grad():
        assert not torch.allclose(chip(x[:1]), chip(x)[:1])


# ---- variation models, drift ------------------------------------------------------------------------------------
def weight_probe(cfg: CIMConfig, n: int = 3000) -> tuple[nn.Module, torch.Tensor]:
    """A Linear layer whose weights sit at a few normalized values, each repeated n times."""
    values = torch.tensor([-1.0, -0.6, -0.2, 0.0, 0.3, 0.7, 1.0])
    lin = nn.Linear(n, len(values), bias=False)
    with torch.no_grad():
        lin.weight.copy_(values.view(-1, 1).expand(-1, n))
    q = quantize_model(nn.Sequential(lin), cfg, example_input=torch.rand(2, n))
    return q.eval(), values


@pytest.mark.parametrize("mapping", ["offset", "differential"])
@pytest.mark.parametrize("variation", ["relative", "absolute"])
def test_empirical_weight_noise_matches_weight_noise_std(mapping: str, variation: str) -> None:
    cfg = CIMConfig(mapping=mapping, variation=variation, onoff_ratio=10.0)
    q, values = weight_probe(cfg)
    sigma = 0.01
    chip = program(q, cfg, sigma, 0)
    (_, layer), = chip.analog_layers()
    s = layer.w_scale
    emp = ((layer.w_eff - q[0].quant_weight()) / s).std(dim=1) / sigma
    expected = torch.as_tensor(weight_noise_std(cfg, values), dtype=torch.float32)
    assert torch.allclose(emp, expected, rtol=0.06), (emp, expected)
    if variation == "absolute":
        assert float(expected.max() - expected.min()) < 1e-6  # state-independent
    elif mapping == "offset":
        assert bool((expected[1:] >= expected[:-1] - 1e-6).all())  # grows with the conductance


def test_sigma_table_values_from_spec() -> None:
    std = weight_noise_std(get_preset("neurosim"), [-1.0, 0.0, 1.0])
    assert [round(float(v), 2) for v in std] == [0.21, 1.21, 2.10] or [round(float(v), 2) for v in std] == [0.21, 1.21, 2.09]
    with pytest.raises(ValueError):
        weight_noise_std(get_preset("neurosim"), [0.0], source="output")


def test_clipping_at_zero_conductance() -> None:
    cfg = CIMConfig(variation="absolute")
    q, _ = weight_probe(cfg, 500)
    chip = program(q, cfg, 2.0, 0)  # huge noise: many cells would go negative
    (_, layer), = chip.analog_layers()
    from cim_gym.hardware.cells import g0

    u = program(q, cfg.replace(read_noise=1e-9), 2.0, 0).model[0].u_t
    assert float(u.min()) >= -g0(cfg) - 1e-6


@pytest.mark.parametrize("drift", [dict(drift_time=1.0, drift_nu_mean=0.2, drift_nu_std=0.1),
                                   dict(drift_time=1e4, drift_nu_mean=0.0, drift_nu_std=0.0),
                                   dict(drift_time=0.0, drift_nu_mean=0.3, drift_nu_std=0.1)])
def test_drift_identity_cases(drift: dict) -> None:
    cfg = CIMConfig()
    q, x = make_qnet(cfg)
    a = program(q, cfg, 0.05, 9)
    b = program(q, cfg.replace(**drift), 0.05, 9)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_drift_shrinks_weights_and_compensation_restores_them() -> None:
    cfg = CIMConfig(drift_time=1e4, drift_nu_mean=0.05)
    q, values = weight_probe(cfg, 50)
    (_, ref), = program(q, cfg.replace(drift_time=0.0), 0.0, 0).analog_layers()
    (_, drifted), = program(q, cfg, 0.0, 0).analog_layers()
    (_, comp), = program(q, cfg.replace(drift_compensation=True), 0.0, 0).analog_layers()
    f = 1e4 ** -0.05
    assert not torch.allclose(drifted.w_eff, ref.w_eff)
    # offset mapping: G(t) = f G; w_eff shifts since the reference column does not drift
    assert torch.allclose(comp.w_eff, ref.w_eff, atol=1e-5 * float(ref.w_eff.abs().max()))
    assert math.isclose(comp.alpha, 1 / f, rel_tol=1e-5)


# ---- noise per call, config plumbing ----------------------------------------------------------------------------
def test_output_noise_and_read_noise_are_fresh_per_call() -> None:
    cfg = CIMConfig()
    q, x = make_qnet(cfg)
    calib = calibrate(q, cfg, x)
    for source in ("output", "read"):
        chip = program(q, cfg, 0.05, 1, calibration=calib, noise_source=source)
        assert chip.sigma == 0.05 and chip.noise_source == source
        with torch.no_grad():
            assert not torch.equal(chip(x), chip(x))
    chip = program(q, cfg, 0.05, 1, calibration=calib, noise_source="output")
    (name, layer), *_ = chip.analog_layers()
    assert math.isclose(layer.out_std, 0.05 * calib.output_ranges[name])
    with pytest.raises(ValueError, match="calibrat"):
        program(q, cfg, 0.05, 1, noise_source="output")


def test_calibration_round_trip_and_layout_check() -> None:
    cfg = CIMConfig(adc_bits=4, adc_calibration="shared")
    q, x = make_qnet(cfg)
    calib = calibrate(q, cfg, x)
    back = Calibration.from_dict(calib.to_dict())
    with pytest.raises(ValueError, match="calibration batch"):
        program(q, cfg.replace(adc_calibration="chip"), 0.05, 4, calibration=back)
    assert back.output_ranges == calib.output_ranges
    for k, v in calib.adc_ranges.items():
        assert torch.equal(back.adc_ranges[k].lo, v.lo) and torch.equal(back.adc_ranges[k].ref_hi, v.ref_hi)
    with torch.no_grad():
        assert torch.equal(program(q, cfg, 0.05, 4, calibration=back)(x), program(q, cfg, 0.05, 4, calibration=calib)(x))
    with pytest.raises(ValueError, match="subarray_rows"):
        program(q, cfg.replace(subarray_rows=64), 0.05, 4, calibration=calib)


def test_chip_is_eval_only_shares_nothing_mutable_and_rejects_plain_models() -> None:
    cfg = CIMConfig()
    q, x = make_qnet(cfg)
    chip = program(q, cfg, 0.05, 0)
    chip.train()
    assert not chip.training and not any(m.training for m in chip.modules())
    q.train()
    assert not chip.training and not chip.model[1].training
    q.eval()
    (_, layer), *_ = chip.analog_layers()
    h = layer.register_forward_hook(lambda *a: None)
    assert not q[0]._forward_hooks and len(layer._forward_hooks) == 1
    h.remove()
    with pytest.raises(TypeError, match="quantize_model"):
        program(nn.Sequential(nn.Linear(3, 2)), cfg, 0.05, 0)
    with pytest.raises(ValueError, match="seed"):
        program(q, cfg, 0.05, -1)
    with pytest.raises(ValueError, match="sigma"):
        program(q, cfg, -0.05, 1)


def test_digital_first_and_last_layers_are_exact() -> None:
    cfg = CIMConfig(first_layer="digital", last_layer="digital")
    q, x = make_qnet(cfg)
    chip = program(q, cfg, 0.2, 0)
    names = [n for n, _ in chip.analog_layers()]
    assert names == ["3"]
    assert isinstance(chip.model[0], nn.Conv2d) and not isinstance(chip.model[0], ChipLayer)
