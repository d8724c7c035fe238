"""Programming chips: ``program(qmodel, cfg, sigma, seed) -> Chip`` and the calibration pass they share.

A chip is one programmed instance of a quantized model. Its programming variation, stuck-at faults, drift
coefficients and ADC mismatch are drawn once, from its own generators seeded by ``seed`` (never the global RNG):
same seed, bitwise the same chip.

- **Fast path** (ideal ADC): slicing, on/off mapping, variation, faults, drift and its compensation are folded into
  one effective weight per layer at programming time; inference is a plain conv/linear on the quantized input.
  Read noise and input noise are then drawn on the layer's output with their exact per-read law (independent per
  image, output position and read cycle): read noise as ``sqrt(conv(x2, V)) N`` with ``x2`` the sum over read
  cycles of the squared applied inputs and ``V`` the squared cell conductances; input noise as ``N L^T`` with
  ``L L^T`` the covariance that word-line noise shared by all columns of a row gives (an eigendecomposition of
  ``W W^T``, once per chip).
- **Exact path** (an ADC): partial sums per sub-array, input bit and slice (:mod:`cim_gym.hardware.exact`).
- Output noise (Yang & Sze) is added to each analog layer's output at every call from the chip's own generator.

The programmed copy shares BatchNorm, biases, buffers and digital layers with the source model (a shallow copy of
the module tree; programming a ResNet-56 takes milliseconds). Chips are inference-only: ``train()`` keeps them in
eval mode. ``chip.double()`` / ``chip.to(device)`` convert the chip alone (never the source model). Do not modify
the source model's parameters while its chips are in use.
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
from cim_gym.hardware.config import CIMConfig, is_integer, noise_field
from cim_gym.hardware.exact import ExactEngine, Geometry, PartialSumRanges, input_planes
from cim_gym.hardware.quant import (
    QuantLayer,
    analog_layer_names,
    check_batch,
    check_layer_input,
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
    """Six independent 63-bit seeds (variation, drift, per-call noise, ADC mismatch, stuck-at faults, spare) derived
    from ``seed``; the first four are those of earlier versions, so existing chips keep their draws."""
    state = np.random.SeedSequence(int(seed)).generate_state(12, dtype=np.uint32)
    return [int((int(state[2 * i]) << 31) ^ int(state[2 * i + 1])) & ((1 << 63) - 1) for i in range(6)]


def _model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


# ---- calibration -------------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """What all chips of one (model, config) share: per analog layer, the clean quantized output range
    (max - min, for output noise), the ADC ranges of the noise-free chip (``adc_calibration="shared"``: computed by
    :func:`calibrate` for such a config, or on first use by :func:`program`), and the calibration batch each chip
    runs at programming time to fix its own ADC ranges (``adc_calibration="chip"``).

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
        """Inverse of :meth:`to_dict` (ranges only: no calibration batch)."""
        missing = [k for k in ("config", "output_ranges", "adc_ranges") if not isinstance(d, dict) or k not in d]
        if missing:
            raise ValueError(f"not a Calibration.to_dict(): missing {missing}")
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
    noise) and, when ``cfg`` has an ADC with ``adc_calibration="shared"``, the min/max of every (column kind, slice,
    input bit) partial sum of the noise-free chip (the "shared" ADC ranges). Keeps ``x[:chip_batch]`` (all of ``x``
    by default) for per-chip ADC calibration (``adc_calibration="chip"``: each exact chip runs it once when
    programmed, in one pass). A smaller ``chip_batch`` programs faster but sees narrower ranges, so partial sums of
    later images clip: 32 of 256 images cost a Fashion-MNIST ResNet-20 4.5 points even with a 16-bit ADC (see also
    ``CIMConfig.adc_range_margin``). Also sets any unset ``input_range``. ``forward_kwargs`` go to the model; the
    default forward should reach every layer. ``x`` must be a non-empty, finite batch in the model's dtype."""
    _check_config(cfg)
    if chip_batch is not None and (not is_integer(chip_batch) or chip_batch < 1):
        raise ValueError(f"chip_batch={chip_batch!r} is not allowed: expected a positive integer or None (all of x)")
    _check_quantized(qmodel)
    check_batch(x, "the calibration batch x", _model_dtype(qmodel))
    init_input_ranges(qmodel, x, **forward_kwargs)
    names = analog_layer_names(qmodel, cfg)
    roles = layer_roles(qmodel)
    shared = cfg.adc_bits is not None and cfg.adc_range == "calibrated" and cfg.adc_calibration == "shared"
    exact = _exact_layers(names, roles, cfg) if shared else set()
    result = Calibration(cfg, inputs=x[:None if chip_batch is None else int(chip_batch)].detach(),
                         forward_kwargs=dict(forward_kwargs))
    result.output_ranges, result.adc_ranges = _observe_clean(qmodel, cfg, x, names, exact, roles, forward_kwargs)
    return result


def _observe_clean(qmodel: nn.Module, cfg: CIMConfig, x: Tensor, names: list[str], exact: set[str],
                   roles: dict[str, set[str]], forward_kwargs: dict[str, Any]
                   ) -> tuple[dict[str, float], dict[str, PartialSumRanges]]:
    """Output ranges of ``names`` and the noise-free chip's partial-sum ranges of ``exact``, from one forward."""
    modules = dict(quant_layers(qmodel))
    output_ranges: dict[str, float] = {}
    adc_ranges: dict[str, PartialSumRanges] = {}
    engines: dict[str, ExactEngine] = {}
    hooks = []
    for name in names:
        def hook(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor, name: str = name) -> None:
            span = float(out.max() - out.min())
            output_ranges[name] = max(output_ranges.get(name, 0.0), span)
            if name in exact:
                if name not in engines:
                    engines[name] = _clean_engine(mod, cfg, _engine_parallel(name, roles, cfg))
                q, _ = input_levels(args[0], mod.input_range, mod.input_bits, bool(mod.signed_input))  # type: ignore[attr-defined]
                adc_ranges[name] = engines[name].observe_ranges(q, adc_ranges.get(name))
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
    return output_ranges, adc_ranges


def _clean_engine(mod: nn.Module, cfg: CIMConfig, parallel: bool) -> ExactEngine:
    s = weight_scale(mod.weight)  # type: ignore[arg-type]
    levels = cells.weight_levels(mod.weight.detach() / s, cfg.weight_bits)  # type: ignore[operator]
    u = cells.cell_states(levels, cfg).flatten(3) if isinstance(mod, nn.Conv2d) else cells.cell_states(levels, cfg)
    return ExactEngine(Geometry.of(mod), cfg, u, 1.0, s, bool(mod.signed_input), use_adc=False, parallel=parallel)  # type: ignore[attr-defined]


def _check_config(cfg: Any) -> None:
    if not isinstance(cfg, CIMConfig):
        raise TypeError(f"cfg must be a CIMConfig (e.g. get_preset('neurosim')), not {type(cfg).__name__}")


def _check_quantized(qmodel: nn.Module) -> None:
    if not isinstance(qmodel, nn.Module):
        raise TypeError(f"qmodel must be an nn.Module from quantize_model(model, cfg), not {type(qmodel).__name__}")
    if not quant_layers(qmodel):
        raise ValueError(f"{type(qmodel).__name__} has no nn.Conv2d / nn.Linear layer: nothing to put on a chip")
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
    plan = _Plan(names, mods, scales, [m.weight.shape for m in mods], counts, u0, layer_index, w_q)  # type: ignore[union-attr]
    _PLANS[qmodel] = (key, plan)
    return plan


def column_currents(u: Tensor, cfg: CIMConfig, layer_index: Tensor, layers: int) -> Tensor:
    """What global drift compensation measures, per layer: the total current of the weight columns for an all-ones
    reference input (every row driven at full scale), ``sum G / (1 - 1/R) = sum (u + g0)`` over the layer's cells,
    read noise-free with an ideal ADC and accumulated in float64. (L,) float64."""
    per_weight = (u.to(torch.float64) + cells.g0(cfg)).sum((0, 1))
    return torch.zeros(layers, dtype=torch.float64, device=u.device).index_add_(0, layer_index, per_weight)


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
    layer_name: str
    w_eff: Tensor | None  # fast path: the effective weight
    u_t: Tensor  # cell states after variation, faults and drift, (P, S, *weight.shape) (for inspection)
    alpha: float
    w_scale: Tensor
    engine: ExactEngine | None
    out_std: float
    generator: torch.Generator | None
    read_var: Tensor | None  # fast path read noise: sum over cells of (gain alpha (u + g0))^2 read_noise^2, weight-shaped
    x2_table: Tensor | None  # per input level: sum over read cycles of (plane weight x plane value)^2
    input_factor: Tensor | None  # fast path input noise: L with L L^T = c^2 Y Y^T, (C_out, C_out)
    qmin: int

    def _linear_op(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's own operation (conv or linear) with weight ``w``: supplied by ChipConv2d / ChipLinear."""
        raise NotImplementedError(f"{type(self).__name__} is abstract: use ChipConv2d or ChipLinear")

    def forward(self, x: Tensor) -> Tensor:
        check_layer_input(self, x)  # type: ignore[arg-type]
        q, step = input_levels(x, self.input_range, self.input_bits, bool(self.signed_input))
        if self.engine is None:
            assert self.w_eff is not None
            x2 = None
            if self.read_var is not None:  # sum over read cycles of the squared applied inputs, per input level
                assert self.x2_table is not None
                x2 = self.x2_table[(q - self.qmin).long()]
            y = self._linear_op(q.mul_(step), self.w_eff, self.bias)
            if x2 is not None or self.input_factor is not None:
                unit = self.w_scale / float(2**self.weight_bits - 1) * step  # signed level x input level -> output
                if x2 is not None:
                    sd = self._linear_op(x2, self.read_var, None).clamp_(min=0).sqrt_()  # type: ignore[arg-type]
                    noise = torch.randn(sd.shape, generator=self.generator, dtype=sd.dtype, device=sd.device)
                    y = y + sd.mul_(noise) * unit
                if self.input_factor is not None:
                    y = y + self._position_noise(y, self.input_factor) * unit
        elif self.engine.pending:  # per-chip ADC calibration: the first batch this chip sees fixes its ranges
            y = self.engine.calibrate_forward(q, step, self.bias, self.generator)
        else:
            y = self.engine.forward(q, step, self.bias, self.generator)
        if self.out_std > 0:
            y = y + torch.randn(y.shape, generator=self.generator, dtype=y.dtype, device=y.device) * self.out_std
        return y

    def _position_noise(self, y: Tensor, factor: Tensor) -> Tensor:
        """Gaussian noise with covariance ``factor factor^T`` across output channels, independent per position."""
        if y.dim() == 4:  # conv: (B, C, H, W), channels last for the matmul
            n = torch.randn((y.shape[0], y.shape[2], y.shape[3], y.shape[1]), generator=self.generator,
                            dtype=y.dtype, device=y.device)
            return (n @ factor.t()).permute(0, 3, 1, 2)
        n = torch.randn(y.shape, generator=self.generator, dtype=y.dtype, device=y.device)
        return n @ factor.t()

    def _retarget(self, dtype: torch.dtype, device: torch.device) -> None:
        """Follow ``chip.double()`` / ``chip.to(device)``."""
        for key in ("w_eff", "read_var", "x2_table", "input_factor", "w_scale", "u_t"):
            t = self.__dict__.get(key)
            if isinstance(t, Tensor):
                self.__dict__[key] = t.to(device=device, dtype=dtype)
        if self.engine is not None:
            self.engine.retarget(dtype, device)


class ChipConv2d(ChipLayer, nn.Conv2d):
    """A programmed analog ``nn.Conv2d``."""

    def _linear_op(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv_forward(x, w, bias)

    forward = ChipLayer.forward  # type: ignore[assignment]

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, exact={self.engine is not None}"


class ChipLinear(ChipLayer, nn.Linear):
    """A programmed analog ``nn.Linear``."""

    def _linear_op(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        return torch.nn.functional.linear(x, w, bias)

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

    Attributes: ``sigma`` (the value that ``noise_source`` was set to), ``seed``, ``config`` (the chip's config,
    sigma applied), ``exact`` (True when some layer computes partial sums with an ADC), ``noise_source``.
    A call checks its batch first (a finite floating-point tensor in the chip's dtype; each layer then checks its
    input's shape) and says what it expects instead of failing inside torch.
    """

    def __init__(self, model: nn.Module, config: CIMConfig, sigma: float, seed: int, exact: bool,
                 noise_source: str, generator: torch.Generator) -> None:
        super().__init__()
        self.model = model
        self.config, self.sigma, self.seed, self.exact = config, float(sigma), int(seed), bool(exact)
        self.noise_source = noise_source
        self.generator = generator
        self.compute_dtype = _model_dtype(model)
        self.training = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], Tensor):
            check_batch(args[0], "the chip's input", self.compute_dtype)
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True) -> Chip:
        """Chips are inference-only: stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    def _apply(self, fn: Any, recurse: bool = True) -> Chip:
        """``chip.double()``, ``chip.float()``, ``chip.to(device)``: converts this chip only (its parameters are
        first made its own, so the source model and other chips keep theirs), programmed state included."""
        gen_dev = self.generator.device
        probe = fn(torch.zeros((), dtype=self.compute_dtype, device=gen_dev))
        if probe.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"chips compute in float32 or float64, not {probe.dtype}")
        for m in self.model.modules():
            for k, p in list(m._parameters.items()):
                if p is not None:
                    m._parameters[k] = nn.Parameter(p.data, requires_grad=p.requires_grad)
        super()._apply(fn, recurse)
        if probe.device != gen_dev:  # the per-call stream continues on the new device from a seed of the old one
            seed = int(torch.randint(0, 2**62, (), generator=self.generator))
            self.generator = torch.Generator(device=probe.device).manual_seed(seed)
        self.compute_dtype = probe.dtype
        for _, layer in self.analog_layers():
            layer.generator = self.generator
            layer._retarget(probe.dtype, probe.device)
        return self

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


def _gain(cfg: CIMConfig, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Digital weight of each (column kind, slice) in the signed level: ``2^(c k)`` (x 2 for "offset"), (1, S, 1)."""
    k = torch.arange(cfg.num_slices, dtype=dtype, device=device)
    return (2.0 ** (cfg.cell_bits * k) * (2.0 if cfg.mapping == "offset" else 1.0)).view(1, -1, 1)


def program(qmodel: nn.Module, cfg: CIMConfig, sigma: float | None = None, seed: int = 0,
            calibration: Calibration | None = None, noise_source: str = "programming") -> Chip:
    """Program a chip from a quantized model.

    :param qmodel: output of :func:`quantize_model` (trained or with input ranges set); a bare quantized
        ``Conv2d`` / ``Linear`` works too.
    :param cfg: the chip config.
    :param sigma: the value of ``noise_source`` (``cfg.scaled(noise_source, sigma)``); None keeps cfg's value.
    :param seed: the chip's seed (any non-negative integer, numpy integers too): same seed, bitwise the same chip.
    :param calibration: output of :func:`calibrate`; required for output noise and for "calibrated" ADC ranges.
    :param noise_source: a key of :data:`~cim_gym.hardware.NOISE_SOURCES` ("programming" by default).
    """
    _check_config(cfg)
    noise_field(noise_source)
    if not is_integer(seed) or seed < 0:
        raise ValueError(f"seed={seed!r} is not allowed: expected a non-negative integer")
    if calibration is not None and not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a Calibration from calibrate(qmodel, cfg, x), not {type(calibration).__name__}")
    chip_cfg = cfg if sigma is None else cfg.scaled(noise_source, sigma)
    used = chip_cfg.noise_level(noise_source)
    _check_quantized(qmodel)
    layers = quant_layers(qmodel)
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
        if calibration is not None and not exact_names <= set(calibration.adc_ranges) and calibration.inputs is not None:
            _, ranges = _observe_clean(qmodel, chip_cfg, calibration.inputs, names, exact_names, roles,
                                       calibration.forward_kwargs)  # shared ranges, computed once on demand
            calibration.adc_ranges.update(ranges)
        if calibration is None or not exact_names <= set(calibration.adc_ranges):
            raise ValueError("adc_range='calibrated' needs ADC ranges: pass calibration=calibrate(qmodel, cfg, x) "
                             "computed with a config that has adc_bits set")
    for name in names:
        modules[name].check_calibrated()  # type: ignore[operator]
    if chip_cfg.output_noise > 0:
        assert calibration is not None
        missing = [n for n in names if n not in calibration.output_ranges]
        if missing:
            raise ValueError(f"the calibration has no output range for layers {missing}: it was computed for another "
                             "model or path; calibrate(qmodel, cfg, x) on this model")

    s_var, s_drift, s_call, s_adc, s_stuck, _ = chip_seeds(int(seed))
    plan = _plan(qmodel, chip_cfg, names, modules)
    dev = plan.u0.device
    g_call = torch.Generator(device=dev).manual_seed(s_call)
    g_adc = torch.Generator(device=dev).manual_seed(s_adc)
    faults = chip_cfg.stuck_at_gmin > 0 or chip_cfg.stuck_at_gmax > 0
    noisy = chip_cfg.sigma > 0 or chip_cfg.drift_active or faults
    with torch.no_grad():
        u = plan.u0
        if chip_cfg.sigma > 0:
            u = cells.apply_variation(u, chip_cfg, chip_cfg.sigma, torch.Generator(device=dev).manual_seed(s_var))
        stuck = None
        if faults:
            stuck = cells.stuck_at_masks(u.shape, chip_cfg, torch.Generator(device=dev).manual_seed(s_stuck), dev)
            u = cells.apply_stuck(u, stuck, chip_cfg)
        u_programmed = u
        if chip_cfg.drift_active:
            u = cells.apply_drift(u, chip_cfg, torch.Generator(device=dev).manual_seed(s_drift))
            if stuck is not None:
                u = cells.apply_stuck(u, stuck, chip_cfg)
        fast_noise = chip_cfg.read_noise > 0 or chip_cfg.input_noise > 0
        compensate = chip_cfg.drift_compensation and chip_cfg.drift_active
        alphas = [1.0] * len(names)
        if compensate:  # what the chip measures: reference reads right after programming and at time t
            i0 = column_currents(u_programmed, chip_cfg, plan.layer_index, len(names))
            alphas = (i0 / column_currents(u, chip_cfg, plan.layer_index, len(names))).tolist()
        Y = None
        if (noisy or chip_cfg.input_noise > 0) and len(exact_names) < len(names):
            alpha_w = torch.tensor(alphas, dtype=u.dtype, device=dev)[plan.layer_index] if compensate else None
            Y = cells.readout_levels(u, chip_cfg, alpha_w)
        replace: dict[str, nn.Module] = {}
        offset = 0
        P, S = u.shape[0], u.shape[1]
        for i, (name, mod) in enumerate(zip(plan.names, plan.modules)):
            n, shape = plan.counts[i], plan.shapes[i]
            layer: Any = _shallow(mod, ChipConv2d if isinstance(mod, nn.Conv2d) else ChipLinear)
            u_layer = u[:, :, offset:offset + n]
            engine = w_eff = read_var = x2_table = input_factor = None
            parallel = _engine_parallel(name, roles, chip_cfg)
            signed = bool(mod.signed_input)  # type: ignore[attr-defined]
            qmin = 0
            if fast_noise and name not in exact_names:
                lut, wz, qmin = input_planes(chip_cfg.input_bits, signed, parallel)
            if name in exact_names:
                ranges = calibration.adc_ranges.get(name) if calibration is not None and not per_chip else None
                engine = ExactEngine(Geometry.of(mod), chip_cfg, u_layer.reshape(P, S, shape[0], -1), alphas[i],
                                     plan.scales[i], signed, use_adc=True, ranges=ranges, parallel=parallel,
                                     deferred=per_chip, generator=g_adc)
            else:
                w_eff = (cells.dequantize(Y[offset:offset + n].view(shape), plan.scales[i], chip_cfg.weight_bits)
                         if Y is not None else plan.w_q[i])
                if chip_cfg.read_noise > 0:
                    v = (u_layer + cells.g0(chip_cfg)) * (_gain(chip_cfg, u.dtype, dev) * alphas[i])
                    read_var = (v * v).sum((0, 1)).mul_(chip_cfg.read_noise**2).view(shape)
                    x2_table = ((lut * wz.view(-1, 1)) ** 2).sum(0).to(u.dtype).to(dev)
                if chip_cfg.input_noise > 0:
                    assert Y is not None
                    y_lv = Y[offset:offset + n].view(shape[0], -1).double()
                    evals, evecs = torch.linalg.eigh(y_lv @ y_lv.t())
                    c = chip_cfg.input_noise * float(lut.abs().max()) * float(wz.square().sum().sqrt())
                    input_factor = (evecs * evals.clamp(min=0).sqrt()).mul_(c).to(u.dtype)
            layer.__dict__.update(
                _modules={}, _noise=None, training=False, chip_cfg=chip_cfg, alpha=alphas[i], w_scale=plan.scales[i],
                generator=g_call, engine=engine, w_eff=w_eff, u_t=u_layer.reshape(P, S, *shape), layer_name=name,
                read_var=read_var, x2_table=x2_table, input_factor=input_factor, qmin=qmin,
                out_std=chip_cfg.output_noise * calibration.output_ranges.get(name, 0.0) if calibration else 0.0,
            )
            replace[name] = layer
            offset += n
        model = replace[""] if "" in replace else _copy_tree(qmodel, "", replace)  # a bare layer is its own model
        chip = Chip(model, chip_cfg, used, int(seed), bool(exact_names), noise_source, g_call)
        if per_chip:
            assert calibration is not None and calibration.inputs is not None
            chip(calibration.inputs.to(chip.compute_dtype), **calibration.forward_kwargs)  # each exact layer fixes its ranges
            missed = [n for n, layer in chip.analog_layers() if layer.engine is not None and layer.engine.pending]
            if missed:
                raise ValueError(f"the calibration forward did not reach layers {missed}: calibrate with forward "
                                 "arguments that run every layer")
    return chip
