"""Quantization-aware layers (straight-through estimator) and noise injection for hardware-aware training.

``quantize_model(model, cfg)`` returns a deep copy whose every ``nn.Conv2d`` / ``nn.Linear`` is a
:class:`QuantConv2d` / :class:`QuantLinear` (subclasses of the torch classes):

- weights: per-layer symmetric scale ``s = max|w|`` (detached), levels exactly those the offset bit slicing
  represents, ``X = round((2^b-1)(clamp(w/s,-1,1)+1)/2)``, ``w_q = s (2X - (2^b-1)) / (2^b-1)``; the gradient
  passes straight through to ``w``.
- inputs: unsigned (after ReLU) with ``2^a - 1`` levels on ``[0, input_range]``; the first layer (signed,
  normalized pixels) and any layer that saw negative inputs while training are signed with
  ``2^(a-1) - 1`` levels each side. ``input_range`` is a buffer: the EMA (momentum 0.1) of the batch max of
  ``|x|`` in training mode, frozen in eval mode. Gradient: straight through inside the range, 0 outside.
- bias (Linear heads) stays in floating point: it is added digitally.

``qmodel.state_dict()`` holds the float weights plus the ``input_range`` and ``signed_input`` buffers, so it
round-trips through ``quantize_model(model, cfg).load_state_dict(...)``.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cim_gym.hardware import cells
from cim_gym.hardware.config import CIMConfig, noise_field
from cim_gym.hardware.exact import input_planes

__all__ = [
    "QuantConv2d",
    "QuantLayer",
    "QuantLinear",
    "analog_layer_names",
    "check_batch",
    "check_layer_input",
    "inject_noise",
    "init_input_ranges",
    "input_levels",
    "layer_roles",
    "quant_layers",
    "quantize_input",
    "quantize_model",
    "quantize_weight",
    "weight_scale",
]

EMA_MOMENTUM = 0.1


# ---- pure functions (shared with the chips so that both compute bit-identical values) ----------------------------
def weight_scale(weight: Tensor) -> Tensor:
    """Per-layer symmetric scale ``s = max|w|`` (detached, 0-dim; at least 1e-12)."""
    return weight.detach().abs().max().clamp_min(1e-12)


def quantize_weight(weight: Tensor, bits: int, scale: Tensor | None = None) -> Tensor:
    """Fake-quantized weight ``s (2X - (2^b-1)) / (2^b-1)``; straight-through gradient to ``weight`` when it needs one."""
    s = weight_scale(weight) if scale is None else scale
    levels = cells.weight_levels(weight.detach() / s, bits)
    wq = cells.dequantize(cells.signed_levels(levels, bits), s, bits)
    if weight.requires_grad and torch.is_grad_enabled():
        return weight + (wq - weight).detach()
    return wq


def input_levels(x: Tensor, input_range: Tensor, bits: int, signed: bool) -> tuple[Tensor, Tensor]:
    """Integer input levels and their step: ``x_q = q * step``.

    unsigned: ``q = round(clamp(x, 0, r) (2^a-1)/r)`` in ``[0, 2^a-1]``; signed: ``q`` in ``[-(2^(a-1)-1), 2^(a-1)-1]``.
    """
    top = float(max(2 ** (bits - 1) - 1, 1) if signed else 2**bits - 1)
    r = input_range.clamp_min(1e-12)
    q = torch.clamp(x, -r if signed else torch.zeros_like(r), r)  # a new tensor: the rest is in place
    return q.mul_(top / r).round_(), r / top


def quantize_input(x: Tensor, input_range: Tensor, bits: int, signed: bool) -> Tensor:
    """Fake-quantized input ``q * step`` (see :func:`input_levels`), gradient straight through inside the range."""
    q, step = input_levels(x.detach(), input_range, bits, signed)
    xq = q.mul_(step)
    if x.requires_grad and torch.is_grad_enabled():
        r = input_range.clamp_min(1e-12)
        xc = torch.minimum(torch.maximum(x, -r if signed else torch.zeros_like(r)), r)
        return xc + (xq - xc).detach()
    return xq


def check_batch(x: object, what: str, dtype: torch.dtype | None = None) -> None:
    """A clear error for what a chip or calibration cannot take: not a tensor, not floating point, a dtype other than
    the model's, an empty batch, or non-finite values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, not {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} has dtype {x.dtype}: expected a floating-point tensor"
                        + (f" of dtype {dtype}" if dtype is not None else ""))
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{what} has dtype {x.dtype} but the model computes in {dtype}: convert the input "
                        f"(x.to({dtype})) or the model/chip (.to({x.dtype}))")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{what} has shape {tuple(x.shape)}: expected a non-empty batch")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{what} has {bad} non-finite value(s) (NaN or inf): a chip converts finite inputs only")


def check_layer_input(layer: nn.Module, x: Tensor) -> None:
    """A clear error when ``x`` cannot be the input of ``layer`` (a Conv2d takes ``(batch, C_in, H, W)``, a Linear
    ``(..., in_features)``, both in the layer's dtype), instead of a failure deep inside torch."""
    weight = layer.weight
    name = getattr(layer, "layer_name", None)
    who = f"layer {name!r}" if name else f"the {type(layer).__name__}"
    if isinstance(layer, nn.Conv2d):
        ok = isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] == layer.in_channels
        expect = f"shape (batch, {layer.in_channels}, height, width)"
    else:
        ok = isinstance(x, Tensor) and x.dim() >= 1 and x.shape[-1] == layer.in_features  # type: ignore[union-attr]
        expect = f"shape (..., {layer.in_features})"  # type: ignore[union-attr]
    if not ok or x.dtype != weight.dtype:
        got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else f"a {type(x).__name__}"
        raise ValueError(f"{who} expects an input of {expect} and dtype {weight.dtype}; got {got}")


# ---- noise injection state ---------------------------------------------------------------------------------
@dataclass
class _NoiseSpec:
    cfg: CIMConfig
    generator: torch.Generator | None


class QuantLayer:
    """Mixin of :class:`QuantConv2d` and :class:`QuantLinear`: input/weight fake quantization and noise hooks."""

    weight: Tensor
    bias: Tensor | None
    input_range: Tensor
    signed_input: Tensor
    weight_bits: int
    input_bits: int
    training: bool
    _noise: _NoiseSpec | None

    def _init_quant(self, weight_bits: int, input_bits: int, signed: bool) -> None:
        self.weight_bits = weight_bits
        self.input_bits = input_bits
        self._noise = None
        dev = self.weight.device
        self.register_buffer("input_range", torch.zeros((), device=dev))  # type: ignore[attr-defined]
        self.register_buffer("signed_input", torch.tensor(bool(signed), device=dev))  # type: ignore[attr-defined]

    # -- inputs ------------------------------------------------------------------------------------------------
    def observe_input(self, x: Tensor) -> None:
        """Update ``input_range`` (EMA of the batch max |x|) and detect signed inputs; used in training mode."""
        with torch.no_grad():
            if not bool(self.signed_input) and bool((x < 0).any()):
                warnings.warn(f"{type(self).__name__} saw negative inputs: switching it to signed input quantization",
                              stacklevel=3)
                self.signed_input.fill_(True)
            m = x.abs().max() if bool(self.signed_input) else x.max().clamp_min(0)
            if not bool(torch.isfinite(m)):
                raise ValueError(f"{getattr(self, 'layer_name', type(self).__name__)!r}: non-finite input (NaN or inf) "
                                 "while setting its input range")
            if float(self.input_range) <= 0:
                self.input_range.copy_(m)
            else:
                self.input_range.mul_(1 - EMA_MOMENTUM).add_(m * EMA_MOMENTUM)

    def check_calibrated(self) -> None:
        if float(self.input_range) <= 0:
            raise RuntimeError(
                f"{type(self).__name__}.input_range is not set: train the quantized model (QAT), or call "
                "cim_gym.hardware.calibrate(qmodel, cfg, x) (or quantize_model(..., example_input=x)) first"
            )

    def quant_input(self, x: Tensor) -> Tensor:
        check_layer_input(self, x)  # type: ignore[arg-type]
        if self.training:
            self.observe_input(x)
        else:
            self.check_calibrated()
        xq = quantize_input(x, self.input_range, self.input_bits, bool(self.signed_input))
        spec = self._noise
        if spec is not None and spec.cfg.input_noise > 0:
            xq = xq + self._input_noise(xq, spec)
        return xq

    def _input_noise(self, x: Tensor, spec: _NoiseSpec) -> Tensor:
        """Word-line noise in input units: ``input_noise`` x the largest plane value, summed over read cycles with
        their digital weights (bit-serial) -- a detached additive term."""
        parallel = spec.cfg.input_feeding == "parallel"
        lut, wz, _ = input_planes(self.input_bits, bool(self.signed_input), parallel)
        top = float(max(2 ** (self.input_bits - 1) - 1, 1) if bool(self.signed_input) else 2**self.input_bits - 1)
        step = self.input_range.clamp_min(1e-12) / top
        std = spec.cfg.input_noise * float(lut.abs().max()) * float(wz.square().sum().sqrt()) * step
        with torch.no_grad():
            noise = torch.randn(x.shape, generator=spec.generator, dtype=x.dtype, device=x.device)
        return noise * std

    # -- weights -----------------------------------------------------------------------------------------------
    def quant_weight(self) -> Tensor:
        if self._noise is None:
            return quantize_weight(self.weight, self.weight_bits)
        spec = self._noise
        s = weight_scale(self.weight)
        wq = quantize_weight(self.weight, self.weight_bits, s)
        with torch.no_grad():
            levels = cells.weight_levels(self.weight.detach() / s, self.weight_bits)
            u = cells.cell_states(levels, spec.cfg)
            u = cells.apply_variation(u, spec.cfg, spec.cfg.sigma, spec.generator)
            stuck = None
            if spec.cfg.stuck_at_gmin > 0 or spec.cfg.stuck_at_gmax > 0:
                stuck = cells.stuck_at_masks(u.shape, spec.cfg, spec.generator, u.device)
                u = cells.apply_stuck(u, stuck, spec.cfg)
            programmed = u
            u = cells.apply_drift(u, spec.cfg, spec.generator)
            if stuck is not None:
                u = cells.apply_stuck(u, stuck, spec.cfg)
            alpha = None
            if spec.cfg.drift_compensation and spec.cfg.drift_active:
                alpha = _compensation(programmed, u, spec.cfg)
            u = cells.apply_read_noise(u, spec.cfg, spec.cfg.read_noise, spec.generator)
            noisy = cells.dequantize(cells.readout_levels(u, spec.cfg, alpha), s, self.weight_bits)
        return wq + (noisy - wq).detach()

    def _output_noise(self, y: Tensor) -> Tensor:
        spec = self._noise
        if spec is None or spec.cfg.output_noise == 0:
            return y
        with torch.no_grad():
            span = (y.max() - y.min()).detach()
            noise = torch.randn(y.shape, generator=spec.generator, dtype=y.dtype, device=y.device)
        return y + noise * (span * spec.cfg.output_noise)


def _compensation(programmed: Tensor, u: Tensor, cfg: CIMConfig) -> Tensor:
    """Global drift compensation of one layer as the chip measures it: total weight-column current for an all-ones
    input right after programming / the same at time t (float64 sums)."""
    k = cells.g0(cfg)
    return ((programmed.double() + k).sum() / (u.double() + k).sum()).to(u.dtype)


class QuantConv2d(nn.Conv2d, QuantLayer):
    """``nn.Conv2d`` with fake-quantized inputs and weights (see module docstring)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        y = self._conv_forward(self.quant_input(x), self.quant_weight(), self.bias)
        return self._output_noise(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}, input_bits={self.input_bits}"


class QuantLinear(nn.Linear, QuantLayer):
    """``nn.Linear`` with fake-quantized inputs and weights (see module docstring)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        y = F.linear(self.quant_input(x), self.quant_weight(), self.bias)
        return self._output_noise(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}, input_bits={self.input_bits}"


# ---- model conversion ----------------------------------------------------------------------------------------
def quant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every Conv2d / Linear, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_roles(model: nn.Module, layers: list[tuple[str, nn.Module]] | None = None) -> dict[str, set[str]]:
    """Roles of each Conv2d/Linear: "first" (first registered) and "last" (an nn.Linear that is the last
    Conv2d/Linear registered in its parent module: the classifier of each head)."""
    layers = quant_layers(model) if layers is None else layers
    roles: dict[str, set[str]] = {n: set() for n, _ in layers}
    if layers:
        roles[layers[0][0]].add("first")
    last_in_parent: dict[str, str] = {}
    for name, _ in layers:
        last_in_parent[name.rpartition(".")[0]] = name
    modules = dict(layers)
    for name in last_in_parent.values():
        if isinstance(modules[name], nn.Linear):
            roles[name].add("last")
    return roles


def analog_layer_names(model: nn.Module, cfg: CIMConfig, roles_map: dict[str, set[str]] | None = None) -> list[str]:
    """Names of the layers the chip computes in analog (the rest is exact digital arithmetic)."""
    out = []
    for name, roles in (layer_roles(model) if roles_map is None else roles_map).items():
        if "first" in roles and cfg.first_layer == "digital":
            continue
        if "last" in roles and cfg.last_layer == "digital":
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in cfg.digital_layers):
            continue
        out.append(name)
    return out


def _convert(module: nn.Module, cfg: CIMConfig, signed: bool) -> nn.Module:
    if isinstance(module, QuantLayer):
        return module
    if type(module) is nn.Conv2d:
        module.__class__ = QuantConv2d
    elif type(module) is nn.Linear:
        module.__class__ = QuantLinear
    else:
        raise TypeError(f"cannot quantize {type(module).__name__}: only plain nn.Conv2d and nn.Linear are supported")
    module._init_quant(cfg.weight_bits, cfg.input_bits, signed)  # type: ignore[attr-defined]
    return module


def quantize_model(model: nn.Module, cfg: CIMConfig, example_input: Tensor | None = None) -> nn.Module:
    """A deep copy of ``model`` with every Conv2d/Linear replaced by QuantConv2d/QuantLinear (same parameters).

    :param example_input: optional batch; if given, one forward in eval mode (BatchNorm statistics untouched)
        sets every layer's ``input_range`` to the max |input| it sees.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
    if not isinstance(cfg, CIMConfig):
        raise TypeError(f"cfg must be a CIMConfig, not {type(cfg).__name__}")
    qmodel = copy.deepcopy(model)
    layers = quant_layers(qmodel)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d / nn.Linear layer to quantize")
    for i, (name, m) in enumerate(layers):
        _convert(m, cfg, signed=(i == 0))
        m.__dict__["layer_name"] = name
    if example_input is not None:
        check_batch(example_input, "example_input", next(qmodel.parameters()).dtype)
        init_input_ranges(qmodel, example_input)
    return qmodel


def init_input_ranges(qmodel: nn.Module, x: Tensor, **forward_kwargs: object) -> None:
    """Set ``input_range`` of every layer that has none yet (0) from one forward of ``x`` (model state kept)."""
    layers = [m for _, m in quant_layers(qmodel) if isinstance(m, QuantLayer)]
    todo = [m for m in layers if float(m.input_range) <= 0]
    if not todo:
        return
    hooks = []
    for m in todo:
        def hook(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
            mod.observe_input(args[0])  # type: ignore[attr-defined]
        hooks.append(m.register_forward_pre_hook(hook))
    try:
        was_training = qmodel.training
        qmodel.eval()
        with torch.no_grad():
            # layers not yet calibrated would refuse to run in eval mode: the hook above sets them first
            qmodel(x, **forward_kwargs)
        qmodel.train(was_training)
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def inject_noise(
    qmodel: nn.Module,
    cfg: CIMConfig,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
    source: str = "programming",
) -> Iterator[nn.Module]:
    """Noise-injection (hardware-aware) training: inside the context, every analog layer's forward uses weights
    perturbed through the chip model (bit slicing, variation, drift and compensation, read noise) and adds output
    noise, with a **fresh draw at every forward call** from ``generator``. Gradients flow to the clean weights
    (straight-through: the perturbation is a detached additive term).

    :param sigma: if given, ``cfg.scaled(source, sigma)`` sets the std of that noise source.
    :param generator: a ``torch.Generator`` on the model's device (None: the global RNG; avoid for reproducibility).
    :param source: which noise ``sigma`` sets: a key of ``NOISE_SOURCES`` except the ADC mismatch ones.

    Output noise uses the current batch's output range (max - min, detached) in place of a calibrated range.
    Read noise is drawn per weight and forward (not per read, as a chip draws it); input noise is added to each
    input value once (not once per read of it); stuck-at faults are drawn anew at every forward.
    """
    noise_field(source)
    if source in ("adc_offset", "adc_gain"):
        raise ValueError(f"source={source!r} is not allowed here: ADC mismatch acts on a chip's partial sums, which "
                         "noise injection does not compute; program chips to study it")
    if sigma is not None:
        cfg = cfg.scaled(source, sigma)
    modules = dict(quant_layers(qmodel))
    names = analog_layer_names(qmodel, cfg)
    touched = []
    try:
        for name in names:
            m = modules[name]
            if not isinstance(m, QuantLayer):
                raise TypeError(f"layer {name!r} is not quantized: call quantize_model first")
            m._noise = _NoiseSpec(cfg, generator)
            touched.append(m)
        yield qmodel
    finally:
        for m in touched:
            m._noise = None
