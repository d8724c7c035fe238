"""Multi-exit ResNet (BranchyNet-style): exit heads after chosen blocks, the final head being the last exit."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cim_gym.models.resnet import ResNet, make_head

EXIT_HEADS = ("conv", "linear")


def make_exit_head(kind: str, in_channels: int, width: int, num_classes: int) -> nn.Sequential:
    """``linear``: pool + Linear. ``conv``: 3x3 conv + BN + ReLU, then pool + Linear (BranchyNet's branches)."""
    if kind == "linear":
        return make_head(in_channels, num_classes)
    if kind != "conv":
        raise ValueError(f"exit_head={kind!r} is not allowed: expected one of {EXIT_HEADS}")
    head = nn.Sequential()
    head.add_module("conv", nn.Conv2d(in_channels, width, 3, 1, 1, bias=False))
    head.add_module("bn", nn.BatchNorm2d(width))
    head.add_module("relu", nn.ReLU())
    for name, module in make_head(width, num_classes).named_children():
        head.add_module(name, module)
    return head


class MultiExitResNet(ResNet):
    """ResNet-(6n+2) with E exits; exit ``e`` sits after block ``exit_after[e]``, the last exit is the final head.

    :param exit_after: block indices (0-based, increasing, < K-1) after which an intermediate exit sits;
        ``None`` puts one at the end of every stage but the last (E = 3).
    :param exit_head: ``"conv"`` (default) or ``"linear"``, the form of the intermediate heads.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int = 3,
        exit_after: Sequence[int] | None = None,
        exit_head: str = "conv",
    ) -> None:
        super().__init__(depth, num_classes, in_channels)
        K = self.num_blocks
        if exit_after is None:
            exit_after = [s - 1 for s in self.stage_starts[1:]]
        exit_after = [int(t) for t in exit_after]
        if any(not 0 <= t < K - 1 for t in exit_after) or sorted(set(exit_after)) != exit_after:
            raise ValueError(
                f"exit_after={exit_after!r} is not allowed: expected increasing, distinct block indices in [0, {K - 2}]"
            )
        self.exit_after: tuple[int, ...] = (*exit_after, K - 1)
        self.exit_head = exit_head
        self.exits = nn.ModuleList(
            make_exit_head(exit_head, self.blocks[t].conv2.out_channels, self.head.fc.in_features, num_classes)
            for t in exit_after
        )

    @property
    def num_exits(self) -> int:
        return len(self.exit_after)

    def exit_module(self, e: int) -> nn.Module:
        return self.head if e == self.num_exits - 1 else self.exits[e]

    def forward(self, x: Tensor, exit: int | Tensor | None = None) -> Tensor:  # noqa: A002 (the natural name)
        """All exits' logits (E, B, classes) when ``exit`` is None, else (B, classes) with sample b stopping at
        exit ``exit[b]`` (an int applies to every sample); blocks past a sample's exit are not computed."""
        if exit is None:
            return torch.stack(self._run(x, None))
        exits = self.check_exit(exit, x.shape[0])
        return self._run(x, exits)[0]

    def check_exit(self, exit: int | Tensor, batch: int) -> Tensor:  # noqa: A002
        exits = torch.as_tensor(exit, device=self.head.fc.weight.device)
        if exits.ndim == 0:
            exits = exits.expand(batch)
        if exits.shape != (batch,) or exits.dtype.is_floating_point or exits.dtype == torch.bool:
            raise ValueError(f"exit must be an int or an integer tensor of shape ({batch},); got {exit!r}")
        if bool(((exits < 0) | (exits >= self.num_exits)).any()):
            raise ValueError(f"exit values must lie in [0, {self.num_exits - 1}]; got {exits.tolist()}")
        return exits.long()

    def _run(self, x: Tensor, exits: Tensor | None) -> list[Tensor]:
        """Without ``exits``: every exit's logits. With them: one (B, classes) tensor, stopping samples early."""
        h, start, outputs = self.stem(x), 0, []
        active = torch.arange(x.shape[0], device=x.device)
        result: Tensor | None = None
        for e, stop in enumerate(self.exit_after):
            h = self.run_blocks(h, None, start, stop + 1)
            start = stop + 1
            if exits is None:
                outputs.append(self.exit_module(e)(h))
                continue
            leaving = exits[active] == e
            if bool(leaving.any()):
                logits = self.exit_module(e)(h[leaving])
                if result is None:
                    result = logits.new_empty(x.shape[0], logits.shape[1])
                result[active[leaving]] = logits
                h, active = h[~leaving], active[~leaving]
            if active.numel() == 0:
                break
        return outputs if exits is None else [result]

    def exit_macs(self, input_shape: Sequence[int]) -> Tensor:
        """MACs per image of the path that ends at each exit (stem, blocks up to it, its head), shape (E,)."""
        macs = self.layer_macs(input_shape)
        stem = sum(v for k, v in macs.items() if k.startswith("stem."))
        blocks = self.block_macs(input_shape).cumsum(0)
        prefixes = [f"exits.{i}." for i in range(len(self.exits))] + ["head."]
        heads = [sum(v for k, v in macs.items() if k.startswith(p)) for p in prefixes]
        return torch.tensor([stem + int(blocks[t]) + heads[e] for e, t in enumerate(self.exit_after)])
