"""Quantizers (property-based), quantize_model, STE gradients, noise injection."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cim_gym.hardware import CIMConfig, cells, get_preset, inject_noise, quantize_model
from cim_gym.hardware.quant import (
    QuantConv2d,
    QuantLinear,
    analog_layer_names,
    input_levels,
    quantize_input,
    quantize_weight,
)

floats = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=1, max_size=64), st.sampled_from([2, 4, 6, 8]))
def test_weight_quantizer_levels(values: list[float], bits: int) -> None:
    w = torch.tensor(values)
    wq = quantize_weight(w, bits)
    s = w.abs().max().clamp_min(1e-12)
    top = 2**bits - 1
    y = wq / s * top  # signed level: odd integers in [-top, top]
    assert torch.allclose(y, y.round(), atol=1e-3)
    yi = y.round().long()
    assert bool((yi.abs() <= top).all()) and bool((yi % 2 == 1).all())
    # nearest representable level: error at most half a step (step 2s/top)
    assert bool(((wq - w).abs() <= s / top * (1 + 1e-4)).all())
    # idempotent
    assert torch.equal(quantize_weight(wq, bits, s), wq)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=32),
       st.sampled_from([(8, 4), (8, 2), (8, 1), (8, 8), (12, 4), (16, 8), (6, 3)]))
def test_bit_slicing_round_trip(levels: list[int], bits_cell: tuple[int, int]) -> None:
    bits, c = bits_cell
    x = torch.tensor(levels, dtype=torch.float32) % (2**bits)
    r = cells.slice_levels(x, bits, c)
    assert r.shape == (bits // c, len(levels))
    assert bool((r >= 0).all()) and bool((r <= 2**c - 1).all()) and torch.equal(r, r.round())
    assert torch.equal(cells.unslice_levels(r, c), x)


@settings(max_examples=40, deadline=None)
@given(st.lists(floats, min_size=1, max_size=32), st.sampled_from([1, 2, 4, 8]), st.sampled_from(["offset", "differential"]),
       st.sampled_from([(8, 4), (8, 2), (4, 4), (6, 3)]), st.floats(1.5, 1000))
def test_noise_free_cells_read_back_the_quantized_weight(
    values: list[float], _: int, mapping: str, bc: tuple[int, int], R: float
) -> None:
    bits, c = bc
    cfg = CIMConfig(weight_bits=bits, cell_bits=c, mapping=mapping, onoff_ratio=R)
    w = torch.tensor(values).clamp(-1, 1)
    x = cells.weight_levels(w, bits)
    u = cells.cell_states(x, cfg)
    assert torch.equal(cells.readout_levels(u, cfg), cells.signed_levels(x, bits))
    # physical conductances are in [G_min, G_max]
    g = (1 - 1 / R) * (u + cells.g0(cfg))
    assert bool((g >= cfg.g_max / R - 1e-4).all()) and bool((g <= cfg.g_max + 1e-4).all())


@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=1, max_size=64), st.floats(0.1, 10), st.sampled_from([2, 4, 8]), st.booleans())
def test_input_quantizer(values: list[float], rng: float, bits: int, signed: bool) -> None:
    x = torch.tensor(values)
    r = torch.tensor(rng)
    q, step = input_levels(x, r, bits, signed)
    top = max(2 ** (bits - 1) - 1, 1) if signed else 2**bits - 1
    assert torch.equal(q, q.round()) and bool((q <= top).all()) and bool((q >= (-top if signed else 0)).all())
    xq = quantize_input(x, r, bits, signed)
    assert torch.equal(xq, q * step)
    inside = (x <= rng) & (x >= (-rng if signed else 0))
    assert bool(((xq - x).abs()[inside] <= step / 2 * (1 + 1e-4) + 1e-6).all())


def test_ste_gradients() -> None:
    w = torch.randn(20, requires_grad=True)
    quantize_weight(w, 4).mul(torch.arange(20.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(20.0))
    x = torch.tensor([-1.0, 0.5, 2.0, 5.0], requires_grad=True)
    quantize_input(x, torch.tensor(3.0), 4, False).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_quantize_model_converts_and_round_trips() -> None:
    torch.manual_seed(0)
    net = small_net()
    q = quantize_model(net, CIMConfig())
    assert isinstance(q[0], QuantConv2d) and isinstance(q[0], nn.Conv2d)
    assert isinstance(q[3], QuantLinear) and isinstance(q[3], nn.Linear)
    assert isinstance(net[0], nn.Conv2d) and not isinstance(net[0], QuantConv2d)  # the source is untouched
    assert bool(q[0].signed_input) and not bool(q[3].signed_input)
    x = torch.randn(16, 1, 6, 6)
    q.train()
    for _ in range(3):
        q(x).sum().backward()
    assert float(q[0].input_range) > 0 and float(q[3].input_range) > 0
    assert q[0].weight.grad is not None
    q.eval()
    q2 = quantize_model(small_net(), CIMConfig())
    q2.load_state_dict(q.state_dict())
    q2.eval()
    with torch.no_grad():
        assert torch.equal(q(x), q2(x))


def test_eval_without_range_raises_and_example_input_sets_it() -> None:
    q = quantize_model(small_net(), CIMConfig()).eval()
    try:
        q(torch.randn(2, 1, 6, 6))
    except RuntimeError as e:
        assert "calibrate" in str(e)
    else:
        raise AssertionError("expected a RuntimeError")
    q = quantize_model(small_net(), CIMConfig(), example_input=torch.randn(4, 1, 6, 6)).eval()
    assert q(torch.randn(2, 1, 6, 6)).shape == (2, 3)


def test_inject_noise_perturbs_forward_and_keeps_gradient() -> None:
    torch.manual_seed(0)
    q = quantize_model(small_net(), CIMConfig(), example_input=torch.randn(8, 1, 6, 6)).eval()
    x = torch.randn(8, 1, 6, 6)
    clean = q(x)
    g = torch.Generator().manual_seed(1)
    with inject_noise(q, CIMConfig(), 0.1, g):
        a = q(x)
        b = q(x)
        (a.sum()).backward()
    assert not torch.allclose(a, clean) and not torch.allclose(a, b)  # fresh draw per call
    assert q[0].weight.grad is not None and q[0].weight.grad.abs().sum() > 0
    assert torch.equal(q(x), clean)  # restored on exit
    with inject_noise(q, CIMConfig(), 0.0, g):
        assert torch.allclose(q(x), clean, atol=1e-6)
    with inject_noise(q, CIMConfig(), 0.05, g, source="output"):
        assert not torch.allclose(q(x), clean)
    # digital layers are not perturbed
    cfg = CIMConfig(first_layer="digital", last_layer="digital")
    assert analog_layer_names(q, cfg) == []
    with inject_noise(q, cfg, 0.5, g):
        assert torch.equal(q(x), clean)


def test_layer_roles_on_models() -> None:
    from cim_gym.models import MultiExitResNet, ResNet

    names = analog_layer_names(ResNet(8, 10, 1), get_preset("neurosim").replace(first_layer="digital", last_layer="digital"))
    assert "stem.conv" not in names and "head.fc" not in names and "blocks.0.conv1" in names
    mm = MultiExitResNet(8, 10, 1)
    names = analog_layer_names(mm, CIMConfig(last_layer="digital"))
    assert "head.fc" not in names and not any(n.endswith(".fc") for n in names) and "exits.0.conv" in names
