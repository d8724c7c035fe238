"""A layer profiler for any ``nn.Module``: output positions and multiply-accumulates of every Conv2d / Linear on one
forward. The cost counters (:mod:`cim_gym.hardware.costs`) and the backbones (:mod:`cim_gym.models`) both use it;
it depends on torch only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["count_layer_macs", "layer_output_positions", "macs_per_position"]


def layer_output_positions(
    model: nn.Module, input_shape: Sequence[int], root: nn.Module | None = None, **forward_kwargs: object
) -> dict[str, int]:
    """Output positions per image (pixels times calls) of every Conv2d / Linear of ``root`` (default ``model``),
    from one eval-mode forward of ``model`` on a zero image of ``input_shape``; ``forward_kwargs`` pick a path."""
    root = model if root is None else root
    positions: dict[str, int] = {}
    hooks = []
    for name, module in root.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def hook(mod: nn.Module, _inp: object, out: Tensor, name: str = name) -> None:
                width = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
                positions[name] = positions.get(name, 0) + out[0].numel() // width
            hooks.append(module.register_forward_hook(hook))
    was_training = root.training
    try:
        root.eval()
        param = next(root.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype), **forward_kwargs)
    finally:
        for h in hooks:
            h.remove()
        root.train(was_training)
    return positions


def macs_per_position(module: nn.Conv2d | nn.Linear) -> int:
    """Multiply-accumulates of one output position (all output channels) of a Conv2d or Linear."""
    if isinstance(module, nn.Conv2d):
        return module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1] * module.out_channels
    return module.in_features * module.out_features


def count_layer_macs(model: nn.Module, input_shape: Sequence[int], **forward_kwargs: object) -> dict[str, int]:
    """MACs per image of every Conv2d / Linear of ``model``, from one forward of a zero image of ``input_shape``."""
    modules = dict(model.named_modules())
    positions = layer_output_positions(model, input_shape, **forward_kwargs)
    return {name: p * macs_per_position(modules[name]) for name, p in positions.items()}
