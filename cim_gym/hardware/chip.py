"""Programming chips: ``program(qmodel, cfg, sigma, seed) -> Chip`` and the calibration pass they share.

A chip is one programmed instance of a quantized model. Its programming variation and drift coefficients are drawn
once, from its own generators seeded by ``seed`` (never the global RNG): same seed, bitwise the same chip.

- **Fast path** (ideal ADC): slicing, on/off mapping, variation, drift and its compensation are folded into one
  effective weight per layer at programming time; inference is a plain conv/linear on the quantized input.
  Read noise (ideal ADC) re-folds the weights at every call (the computation is linear, so this is exact).
- **Exact path** (an ADC): partial sums per sub-array, input bit and slice (:mod:`cim_gym.hardware.exact`).
- Output noise (Yang & Sze) is added to each analog layer's output at every call from the chip's own generator.

The programmed copy shares BatchNorm, biases, buffers and digital layers with the source model (a shallow copy of
the module tree; programming a ResNet-56 takes milliseconds). Chips are inference-only: ``train()`` keeps them in
eval mode. Do not modify the source model's parameters while its chips are in use.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cim_gym.hardware import cells
from cim_gym.hardware.config import NOISE_SOURCES, CIMConfig
from cim_gym.hardware.exact import ExactEngine, Geometry, PartialSumRanges
from cim_gym.hardware.quant import (
    QuantLayer,
    analog_layer_names,
    init_input_ranges,
    input_levels,
    layer_roles,
    quant_layers,
    weight_scale,
)

__all__ = ["Calibration", "Chip", "ChipConv2d", "ChipLinear", "calibrate", "chip_seeds", "program"]

# config fields that fix the array layout; a calibration is valid for configs that agree on them
LAYOUT_FIELDS = ("weight_bits", "input_bits", "cell_bits", "onoff_ratio", "mapping", "subarray_rows", "row_mapping",
                 "input_feeding", "first_layer", "last_layer", "digital_layers")


def _layout_key(cfg: CIMConfig) -> tuple[Any, ...]:
    return tuple(getattr(cfg, f) for f in LAYOUT_FIELDS)


def chip_seeds(seed: int) -> list[int]:
    """Four independent 63-bit seeds (variation, drift, per-call noise, spare) derived from ``seed``."""
    state = np.random.SeedSequence(int(seed)).generate_state(8, dtype=np.uint32)
    return [int((int(state[2 * i]) << 31) ^ int(state[2 * i + 1])) & ((1 << 63) - 1) for i in range(4)]


# ---- calibration -------------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """What all chips of one (model, config) share: per analog layer, the clean quantized output range
    (max - min, for output noise), the ADC ranges of the noise-free chip (``adc_calibration="shared"``), and the
    calibration batch each chip runs at programming time to fix its own ADC ranges (``adc_calibration="chip"``).

    ``to_dict`` stores the ranges, not the batch: a calibration read back with ``from_dict`` serves "shared" ADC
    ranges and output noise; per-chip ADC calibration needs ``calibrate`` again (or ``inputs`` set)."""

    config: CIMConfig
    output_ranges: dict[str, float] = field(default_factory=dict)
    adc_ranges: dict[str, PartialSumRanges] = field(default_factory=dict)
    inputs: Tensor | None = None
    forward_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "output_ranges": dict(self.output_ranges),
                "adc_ranges": {k: v.to_dict() for k, v in self.adc_ranges.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        adc = {k: PartialSumRanges.from_dict(v) for k, v in d["adc_ranges"].items()}
        return cls(CIMConfig.from_dict(d["config"]), {k: float(v) for k, v in d["output_ranges"].items()}, adc)

    def check(self, cfg: CIMConfig) -> None:
        if _layout_key(cfg) != _layout_key(self.config):
            diff = [f for f in LAYOUT_FIELDS if getattr(cfg, f) != getattr(self.config, f)]
            raise ValueError(f"calibration was computed for a config that differs in {diff}; calibrate again")


def _exact_layers(names: list[str], roles: dict[str, set[str]], cfg: CIMConfig) -> set[str]:
    """Analog layers that use the ADC (all but a first layer in "analog_no_adc" mode), when there is an ADC."""
    if cfg.adc_bits is None:
        return set()
    return {n for n in names if not ("first" in roles[n] and cfg.first_layer == "analog_no_adc")}


def _engine_parallel(name: str, roles: dict[str, set[str]], cfg: CIMConfig) -> bool:
    return cfg.input_feeding == "parallel" or ("first" in roles[name] and cfg.first_layer == "analog_no_adc")


def calibrate(qmodel: nn.Module, cfg: CIMConfig, x: Tensor, chip_batch: int | None = None,
              **forward_kwargs: Any) -> Calibration:
    """One pass of the clean quantized model on the batch ``x``: per analog layer, the output range (for output
    noise) and, when ``cfg`` has an ADC in "calibrated" mode, the min/max of every (column kind, slice, input bit)
    partial sum of the noise-free chip (the "shared" ADC ranges). Keeps ``x[:chip_batch]`` (all of ``x`` by
    default) for per-chip ADC calibration (``adc_calibration="chip"``: each exact chip runs it once when
    programmed). A smaller ``chip_batch`` programs faster but sees narrower ranges, so partial sums of later images
    clip: 32 of 256 images cost a Fashion-MNIST ResNet-20 4.5 points even with a 16-bit ADC. Also sets any unset
    ``input_range``. ``forward_kwargs`` go to the model; the default forward should reach every layer."""
    if chip_batch is not None and (isinstance(chip_batch, bool) or not isinstance(chip_batch, int) or chip_batch < 1):
        raise ValueError(f"chip_batch={chip_batch!r} is not allowed: expected a positive integer or None (all of x)")
    _check_quantized(qmodel)
    init_input_ranges(qmodel, x, **forward_kwargs)
    names = analog_layer_names(qmodel, cfg)
    roles = layer_roles(qmodel)
    modules = dict(quant_layers(qmodel))
    need_adc = cfg.adc_bits is not None and cfg.adc_range == "calibrated"
    exact = _exact_layers(names, roles, cfg) if need_adc else set()
    result = Calibration(cfg, inputs=x[:chip_batch].detach(), forward_kwargs=dict(forward_kwargs))
    engines: dict[str, ExactEngine] = {}
    hooks = []
    for name in names:
        def hook(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor, name: str = name) -> None:
            span = float(out.max() - out.min())
            result.output_ranges[name] = max(result.output_ranges.get(name, 0.0), span)
            if name in exact:
                if name not in engines:
                    engines[name] = _clean_engine(mod, cfg, _engine_parallel(name, roles, cfg))
                q, _ = input_levels(args[0], mod.input_range, mod.input_bits, bool(mod.signed_input))  # type: ignore[attr-defined]
                result.adc_ranges[name] = engines[name].observe_ranges(q, result.adc_ranges.get(name))
        hooks.append(modules[name].register_forward_hook(hook))
    was_training = qmodel.training
    try:
        qmodel.eval()
        with torch.no_grad():
            qmodel(x, **forward_kwargs)
    finally:
        qmodel.train(was_training)
        for h in hooks:
            h.remove()
    return result


def _clean_engine(mod: nn.Module, cfg: CIMConfig, parallel: bool) -> ExactEngine:
    s = weight_scale(mod.weight)  # type: ignore[arg-type]
    levels = cells.weight_levels(mod.weight.detach() / s, cfg.weight_bits)  # type: ignore[operator]
    u = cells.cell_states(levels, cfg).flatten(3) if isinstance(mod, nn.Conv2d) else cells.cell_states(levels, cfg)
    return ExactEngine(Geometry.of(mod), cfg, u, 1.0, s, bool(mod.signed_input), use_adc=False, parallel=parallel)  # type: ignore[attr-defined]


def _check_quantized(qmodel: nn.Module) -> None:
    for name, m in quant_layers(qmodel):
        if not isinstance(m, (QuantLayer, ChipLayer)):
            raise TypeError(f"layer {name!r} is a plain {type(m).__name__}: pass quantize_model(model, cfg) first")


# ---- programming plan (what does not change between chips of one model) --------------------------------------------
@dataclass
class _Plan:
    names: list[str]
    modules: list[nn.Module]
    scales: list[Tensor]
    shapes: list[torch.Size]
    counts: list[int]
    u0: Tensor  # (P, S, N) noise-free cell states of all analog weights, concatenated
    layer_index: Tensor  # (N,) layer of every weight
    ref_sums: Tensor  # (L,) sum over the layer's cells of (u0 + g0): programmed conductance for compensation
    w_q: list[Tensor]  # noise-free quantized weights (what a sigma = 0, drift-free chip uses)


_PLANS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], _Plan]] = weakref.WeakKeyDictionary()


def _plan(qmodel: nn.Module, cfg: CIMConfig, names: list[str], modules: dict[str, nn.Module]) -> _Plan:
    mods = [modules[n] for n in names]
    key = (cfg.weight_bits, cfg.cell_bits, cfg.mapping, cfg.onoff_ratio, tuple(names),
           tuple((m.weight.data_ptr(), m.weight._version) for m in mods))  # type: ignore[union-attr]
    hit = _PLANS.get(qmodel)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        scales = [weight_scale(m.weight) for m in mods]  # type: ignore[arg-type]
        levels = [cells.weight_levels(m.weight.detach().reshape(-1) / s, cfg.weight_bits) for m, s in zip(mods, scales)]  # type: ignore[union-attr]
        w_q = [cells.dequantize(cells.signed_levels(lv, cfg.weight_bits), s, cfg.weight_bits).view(m.weight.shape)  # type: ignore[union-attr]
               for lv, s, m in zip(levels, scales, mods)]
        counts = [lv.numel() for lv in levels]
        flat = torch.cat(levels) if levels else torch.zeros(0)
        u0 = cells.cell_states(flat, cfg)
        dev = flat.device
        layer_index = torch.repeat_interleave(torch.arange(len(names), device=dev), torch.tensor(counts, device=dev))
        per_weight = (u0 + cells.g0(cfg)).sum((0, 1))
        ref_sums = torch.zeros(len(names), dtype=u0.dtype, device=dev).index_add_(0, layer_index, per_weight)
    plan = _Plan(names, mods, scales, [m.weight.shape for m in mods], counts, u0, layer_index, ref_sums, w_q)  # type: ignore[union-attr]
    _PLANS[qmodel] = (key, plan)
    return plan


# ---- chip layers ------------------------------------------------------------------------------------------------
class ChipLayer:
    """Mixin of :class:`ChipConv2d` / :class:`ChipLinear`: one programmed analog layer."""

    weight: Tensor
    bias: Tensor | None
    input_range: Tensor
    signed_input: Tensor
    input_bits: int
    weight_bits: int
    chip_cfg: CIMConfig
    w_eff: Tensor | None  # fast path, static effective weight
    u_t: Tensor | None  # cell states after variation/drift (read noise re-folds from these), (P, S, *weight.shape)
    alpha: float
    w_scale: Tensor
    engine: ExactEngine | None
    out_std: float
    generator: torch.Generator | None

    def _linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        """The layer's own operation (conv or linear) with weight ``w``: supplied by ChipConv2d / ChipLinear."""
        raise NotImplementedError(f"{type(self).__name__} is abstract: use ChipConv2d or ChipLinear")

    def _effective_weight(self) -> Tensor:
        if self.w_eff is not None:
            return self.w_eff
        assert self.u_t is not None
        cfg = self.chip_cfg
        u = cells.apply_read_noise(self.u_t, cfg, cfg.read_noise, self.generator)
        return cells.dequantize(cells.readout_levels(u, cfg, self.alpha if self.alpha != 1.0 else None),
                                self.w_scale, cfg.weight_bits)

    def forward(self, x: Tensor) -> Tensor:
        q, step = input_levels(x, self.input_range, self.input_bits, bool(self.signed_input))
        if self.engine is None:
            y = self._linear_op(q.mul_(step), self._effective_weight())
        else:
            if self.chip_cfg.read_noise > 0:
                assert self.u_t is not None
                u = cells.apply_read_noise(self.u_t, self.chip_cfg, self.chip_cfg.read_noise, self.generator)
                self.engine.set_cells(u.flatten(3) if u.dim() > 4 else u)
            if self.engine.pending:  # per-chip ADC calibration: the first batch this chip sees fixes its ranges
                self.engine.set_ranges(self.engine.observe_ranges(q, None))
            y = self.engine.forward(q, step, self.bias)
        if self.out_std > 0:
            y = y + torch.randn(y.shape, generator=self.generator, dtype=y.dtype, device=y.device) * self.out_std
        return y


class ChipConv2d(ChipLayer, nn.Conv2d):
    """A programmed analog ``nn.Conv2d``."""

    def _linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        return self._conv_forward(x, w, self.bias)

    forward = ChipLayer.forward  # type: ignore[assignment]

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, exact={self.engine is not None}"


class ChipLinear(ChipLayer, nn.Linear):
    """A programmed analog ``nn.Linear``."""

    def _linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, w, self.bias)

    forward = ChipLayer.forward  # type: ignore[assignment]

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, exact={self.engine is not None}"


def _shallow(mod: nn.Module, cls: type | None = None) -> nn.Module:
    """A new module object sharing ``mod``'s tensors; its dicts (parameters, buffers, hooks) are copies, so hooks
    registered on a chip do not leak into the source model or other chips."""
    new = object.__new__(cls or type(mod))
    d = mod.__dict__.copy()
    for k, v in d.items():
        if isinstance(v, (dict, set)):
            d[k] = v.copy()
    new.__dict__ = d
    return new


def _copy_tree(mod: nn.Module, prefix: str, replace: dict[str, nn.Module]) -> nn.Module:
    """Shallow copy of the module tree (eval mode), with the modules named in ``replace`` substituted."""
    new = _shallow(mod)
    new.__dict__["training"] = False
    if isinstance(new, QuantLayer):
        new.__dict__["_noise"] = None
    new.__dict__["_modules"] = {}
    for name, child in mod._modules.items():
        full = f"{prefix}{name}"
        if child is None:
            new._modules[name] = None
        elif full in replace:
            new._modules[name] = replace[full]
        else:
            new._modules[name] = _copy_tree(child, full + ".", replace)
    return new


# ---- the chip ---------------------------------------------------------------------------------------------------
class Chip(nn.Module):
    """One programmed chip: calls go to the programmed copy of the model (``chip(x, mask=m)``,
    ``chip(x, exit=e)``, ``chip.features(x)`` and any other attribute of the model work).

    Attributes: ``sigma`` (the std that ``noise_source`` was set to), ``seed``, ``config`` (the chip's config,
    sigma applied), ``exact`` (True when some layer computes partial sums with an ADC), ``noise_source``.
    """

    def __init__(self, model: nn.Module, config: CIMConfig, sigma: float, seed: int, exact: bool,
                 noise_source: str, generator: torch.Generator) -> None:
        super().__init__()
        self.model = model
        self.config, self.sigma, self.seed, self.exact = config, float(sigma), int(seed), bool(exact)
        self.noise_source = noise_source
        self.generator = generator
        self.training = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True) -> Chip:
        """Chips are inference-only: stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None:
                raise
            return getattr(model, name)

    def analog_layers(self) -> Iterator[tuple[str, ChipLayer]]:
        for name, m in self.model.named_modules():
            if isinstance(m, ChipLayer):
                yield name, m

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, seed={self.seed}, exact={self.exact}, noise_source={self.noise_source!r}"


def program(qmodel: nn.Module, cfg: CIMConfig, sigma: float | None = None, seed: int = 0,
            calibration: Calibration | None = None, noise_source: str = "programming") -> Chip:
    """Program a chip from a quantized model.

    :param qmodel: output of :func:`quantize_model` (trained or with input ranges set).
    :param cfg: the chip config.
    :param sigma: std of ``noise_source`` (``cfg.scaled(noise_source, sigma)``); None keeps cfg's value.
    :param seed: the chip's seed (any non-negative int): same seed, bitwise the same chip.
    :param calibration: output of :func:`calibrate`; required for output noise and for "calibrated" ADC ranges.
    :param noise_source: "programming" (default), "read" or "output".
    """
    if noise_source not in NOISE_SOURCES:
        raise ValueError(f"noise_source={noise_source!r} is not allowed: expected one of {NOISE_SOURCES}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} is not allowed: expected a non-negative integer")
    chip_cfg = cfg if sigma is None else cfg.scaled(noise_source, sigma)
    used = {"programming": chip_cfg.sigma, "read": chip_cfg.read_noise, "output": chip_cfg.output_noise}[noise_source]
    layers = quant_layers(qmodel)
    for name, m in layers:
        if not isinstance(m, QuantLayer):
            raise TypeError(f"layer {name!r} is a plain {type(m).__name__}: pass quantize_model(model, cfg) first")
    if calibration is not None:
        calibration.check(chip_cfg)
    roles = layer_roles(qmodel, layers)
    names = analog_layer_names(qmodel, chip_cfg, roles)
    modules = dict(layers)
    exact_names = _exact_layers(names, roles, chip_cfg)
    if chip_cfg.output_noise > 0 and calibration is None:
        raise ValueError("output noise needs the layers' output ranges: pass calibration=calibrate(qmodel, cfg, x)")
    per_chip = bool(exact_names) and chip_cfg.adc_range == "calibrated" and chip_cfg.adc_calibration == "chip"
    if per_chip and (calibration is None or calibration.inputs is None):
        raise ValueError("adc_range='calibrated' with adc_calibration='chip' needs a calibration batch: pass "
                         "calibration=calibrate(qmodel, cfg, x)")
    if exact_names and chip_cfg.adc_range == "calibrated" and not per_chip:
        if calibration is None or not exact_names <= set(calibration.adc_ranges):
            raise ValueError("adc_range='calibrated' needs ADC ranges: pass calibration=calibrate(qmodel, cfg, x) "
                             "computed with a config that has adc_bits set")
    for name in names:
        modules[name].check_calibrated()  # type: ignore[operator]

    s_var, s_drift, s_call, _ = chip_seeds(int(seed))
    plan = _plan(qmodel, chip_cfg, names, modules)
    dev = plan.u0.device
    g_call = torch.Generator(device=dev).manual_seed(s_call)
    noisy = chip_cfg.sigma > 0 or chip_cfg.drift_active
    with torch.no_grad():
        u = plan.u0
        if chip_cfg.sigma > 0:
            u = cells.apply_variation(u, chip_cfg, chip_cfg.sigma, torch.Generator(device=dev).manual_seed(s_var))
        if chip_cfg.drift_active:
            u = cells.apply_drift(u, chip_cfg, torch.Generator(device=dev).manual_seed(s_drift))
        compensate = chip_cfg.drift_compensation and chip_cfg.drift_active
        alphas = [1.0] * len(names)
        if compensate:
            per_weight = (u + cells.g0(chip_cfg)).sum((0, 1))
            now = torch.zeros_like(plan.ref_sums).index_add_(0, plan.layer_index, per_weight)
            alphas = (plan.ref_sums / now).tolist()
        Y = None
        if noisy and chip_cfg.read_noise == 0 and len(exact_names) < len(names):
            alpha_w = torch.tensor(alphas, dtype=u.dtype, device=dev)[plan.layer_index] if compensate else None
            Y = cells.readout_levels(u, chip_cfg, alpha_w)
        replace: dict[str, nn.Module] = {}
        offset = 0
        P, S = u.shape[0], u.shape[1]
        for i, (name, mod) in enumerate(zip(plan.names, plan.modules)):
            n, shape = plan.counts[i], plan.shapes[i]
            layer: Any = _shallow(mod, ChipConv2d if isinstance(mod, nn.Conv2d) else ChipLinear)
            u_layer = u[:, :, offset:offset + n]
            engine = w_eff = None
            if name in exact_names:
                ranges = calibration.adc_ranges.get(name) if calibration is not None and not per_chip else None
                engine = ExactEngine(Geometry.of(mod), chip_cfg, u_layer.reshape(P, S, shape[0], -1), alphas[i],
                                     plan.scales[i], bool(mod.signed_input), use_adc=True, ranges=ranges,  # type: ignore[attr-defined]
                                     parallel=_engine_parallel(name, roles, chip_cfg), deferred=per_chip)
            elif chip_cfg.read_noise == 0:
                w_eff = (cells.dequantize(Y[offset:offset + n].view(shape), plan.scales[i], chip_cfg.weight_bits)
                         if Y is not None else plan.w_q[i])
            needs_cells = chip_cfg.read_noise > 0 or engine is not None
            layer.__dict__.update(
                _modules={}, _noise=None, training=False, chip_cfg=chip_cfg, alpha=alphas[i], w_scale=plan.scales[i],
                generator=g_call, engine=engine, w_eff=w_eff,
                u_t=u_layer.reshape(P, S, *shape) if needs_cells else None,
                out_std=chip_cfg.output_noise * calibration.output_ranges.get(name, 0.0) if calibration else 0.0,
            )
            replace[name] = layer
            offset += n
        model = _copy_tree(qmodel, "", replace)
        chip = Chip(model, chip_cfg, used, int(seed), bool(exact_names), noise_source, g_call)
        if per_chip:
            assert calibration is not None and calibration.inputs is not None
            chip(calibration.inputs, **calibration.forward_kwargs)  # each exact layer fixes its ADC ranges
            missed = [n for n, layer in chip.analog_layers() if layer.engine is not None and layer.engine.pending]
            if missed:
                raise ValueError(f"the calibration forward did not reach layers {missed}: calibrate with forward "
                                 "arguments that run every layer")
    return chip
