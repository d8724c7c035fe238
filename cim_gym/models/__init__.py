"""Backbones: CIFAR-style ResNet-(6n+2) with block masks, and its multi-exit variant. Uses only the generic layer
profiler of the hardware package (``cim_gym.hardware.profile``), none of its chip model."""

from cim_gym.models.multi_exit import MultiExitResNet
from cim_gym.models.resnet import (
    BasicBlock,
    ResNet,
    blocks_per_stage,
    count_layer_macs,
    layer_output_positions,
    macs_per_position,
)

__all__ = [
    "BasicBlock",
    "MultiExitResNet",
    "ResNet",
    "blocks_per_stage",
    "count_layer_macs",
    "layer_output_positions",
    "macs_per_position",
]
