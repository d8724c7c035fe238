"""Small quantized nets for the hardware tests."""

from __future__ import annotations

import torch
from torch import nn

from cim_gym.hardware import CIMConfig, quantize_model


def make_qnet(cfg: CIMConfig, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A conv net with several sub-arrays per layer (rows > 128 and > 32) and a linear head; and a batch."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 20, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(20), nn.ReLU(),
        nn.Flatten(), nn.Linear(20 * 4 * 4, 10),
    )
    x = torch.randn(16, 3, 8, 8)
    q = quantize_model(net, cfg, example_input=x).eval()
    return q, x
