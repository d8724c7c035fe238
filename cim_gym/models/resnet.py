"""CIFAR-style ResNet-(6n+2) with per-sample block masks (BlockDrop) and a multi-exit variant (BranchyNet).

Layers are plain ``nn.Conv2d`` / ``nn.Linear`` so that the hardware layer can quantize and program any of them.
MAC accounting uses the generic layer profiler of :mod:`cim_gym.hardware.profile` (re-exported here).
Shortcuts are parameter-free (stride-2 subsampling plus zero-padded channels, He et al. 2016 option A), so a
dropped block costs nothing and a dropped first block of a stage still downsamples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cim_gym.hardware.profile import count_layer_macs, layer_output_positions, macs_per_position

__all__ = ["BasicBlock", "ResNet", "blocks_per_stage", "count_layer_macs", "layer_output_positions",
           "macs_per_position"]

WIDTHS = (16, 32, 64)


def blocks_per_stage(depth: int) -> int:
    """Return n for a ResNet of depth 6n+2, or raise a ValueError naming the allowed depths."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"depth={depth!r} is not allowed: "
                         "a CIFAR ResNet has depth 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110, ...)")
    return (depth - 2) // 6


class Shortcut(nn.Module):
    """Identity, or subsample by ``stride`` and zero-pad the channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = Shortcut(in_channels, out_channels, stride)

    def residual(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.shortcut(x) + self.residual(x))

    def masked(self, x: Tensor, keep: Tensor) -> Tensor:
        """BlockDrop: ``keep*relu(shortcut(x) + F(x)) + (1-keep)*shortcut(x)``, F computed only where kept."""
        if bool(keep.all()):
            return self(x)
        out = self.shortcut(x)
        if bool(keep.any()):
            idx = keep.nonzero(as_tuple=True)[0]
            out = out.index_copy(0, idx, self(x.index_select(0, idx)))
        return out


class ResNet(nn.Module):
    """ResNet-(6n+2) for inputs of any size and channel count.

    :param depth: 6n+2 (8, 14, 20, 32, 56, 110, ...); the net has ``K = 3n`` residual blocks.
    :param num_classes: number of output classes.
    :param in_channels: image channels (1 for digits / Fashion-MNIST, 3 for CIFAR).
    """

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not allowed: expected a positive integer")
        self.depth, self.num_classes, self.in_channels = depth, num_classes, in_channels
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_channels, WIDTHS[0], 3, 1, 1, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(WIDTHS[0]))
        self.stem.add_module("relu", nn.ReLU())
        blocks, stage_starts, width = [], [], WIDTHS[0]
        for stage, out_width in enumerate(WIDTHS):
            stage_starts.append(len(blocks))
            for i in range(n):
                blocks.append(BasicBlock(width, out_width, 2 if stage > 0 and i == 0 else 1))
                width = out_width
        self.blocks = nn.ModuleList(blocks)
        self.stage_starts: tuple[int, ...] = tuple(stage_starts)
        self.head = make_head(WIDTHS[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def check_mask(self, mask: Tensor, batch: int) -> Tensor:
        """Return ``mask`` as a bool tensor of shape (batch, K), or raise a ValueError saying what is expected."""
        if not isinstance(mask, Tensor):
            mask = torch.as_tensor(mask)
        if mask.shape != (batch, self.num_blocks):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected (batch, K) = ({batch}, {self.num_blocks})")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("mask values must be 0 or 1")
            mask = mask != 0
        return mask.to(device=self.head.fc.weight.device)

    def run_blocks(self, x: Tensor, mask: Tensor | None, start: int = 0, stop: int | None = None) -> Tensor:
        for t in range(start, self.num_blocks if stop is None else stop):
            x = self.blocks[t](x) if mask is None else self.blocks[t].masked(x, mask[:, t])
        return x

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits; with ``mask`` (B, K) of 0/1, sample b runs block t only where ``mask[b, t]`` is 1."""
        if mask is not None:
            mask = self.check_mask(mask, x.shape[0])
        return self.head(self.run_blocks(self.stem(x), mask))

    def features(self, x: Tensor) -> Tensor:
        """A fixed-length description of the image: the stem and first stage, global-average-pooled, (B, 16)."""
        x = self.run_blocks(self.stem(x), None, 0, self.stage_starts[1])
        return x.mean(dim=(2, 3))

    # ---- compute accounting -------------------------------------------------------------------------------
    def layer_macs(self, input_shape: Sequence[int]) -> dict[str, int]:
        """MACs per image of every Conv2d / Linear (qualified name -> MACs), measured on a full forward."""
        return count_layer_macs(self, input_shape)

    def _group_macs(self, input_shape: Sequence[int], prefixes: Sequence[str]) -> list[int]:
        macs = self.layer_macs(input_shape)
        return [sum(v for k, v in macs.items() if k.startswith(p)) for p in prefixes]

    def block_macs(self, input_shape: Sequence[int]) -> Tensor:
        """MACs per image of each residual block, shape (K,)."""
        return torch.tensor(self._group_macs(input_shape, [f"blocks.{t}." for t in range(self.num_blocks)]))

    def base_macs(self, input_shape: Sequence[int]) -> int:
        """MACs per image that every path pays: stem and final head."""
        return sum(self._group_macs(input_shape, ["stem.", "head."]))

    def path_macs(self, mask: Tensor, input_shape: Sequence[int]) -> Tensor:
        """MACs per image of each sample's path, shape (B,)."""
        mask = torch.as_tensor(mask)
        if mask.ndim != 2 or mask.shape[1] != self.num_blocks:
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected (batch, {self.num_blocks})")
        return self.base_macs(input_shape) + (mask.long() * self.block_macs(input_shape)).sum(dim=1)


def make_head(in_channels: int, num_classes: int) -> nn.Sequential:
    head = nn.Sequential()
    head.add_module("pool", nn.AdaptiveAvgPool2d(1))
    head.add_module("flatten", nn.Flatten())
    head.add_module("fc", nn.Linear(in_channels, num_classes))
    return head
