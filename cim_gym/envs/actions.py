"""The three action types: a block mask, an exit index, or per-exit entropy thresholds.

Each knows its Gymnasium space, how to validate an action (clear errors, no silent clamping), how to run a batch
of episodes that share a chip, and the compute cost of the path each episode took. ``forward`` returns the
predictions, the paths and a dict of extra per-episode arrays (the exits' entropies for the threshold action), which
reach ``info``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from cim_gym.envs.core import EnvCore


class PathCosts:
    """MACs, energy (pJ) and latency (ns) per image of groups of layers, from the hardware cost model."""

    def __init__(self, core: EnvCore) -> None:
        from cim_gym.hardware import EnergyTable, count_costs

        self.table = EnergyTable()
        self.layers = count_costs(core.model, core.cim, input_shape=core.info.input_shape)

    def of(self, prefixes: Sequence[str]) -> np.ndarray:
        """[macs, energy_pj, latency_ns] summed over the layers whose qualified name starts with a prefix."""
        total = np.zeros(3)
        for name, cost in self.layers.items():
            if name.startswith(tuple(prefixes)):
                total += (cost.macs, cost.energy_pj(self.table), cost.latency_ns(self.table))
        return total


def _numeric(action: object, what: str) -> np.ndarray:
    array = np.asarray(action)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"action must be {what}; got dtype {array.dtype} ({action!r})")
    return array


class BlockDropAction:
    """``MultiBinary(K)``: 1 runs residual block k on the chip, 0 skips it (BlockDrop semantics)."""

    variant, default_depth, render_kind = "blockdrop", 20, "blocks"

    def __init__(self, core: EnvCore) -> None:
        self.num_blocks = core.model.num_blocks
        self.space = spaces.MultiBinary(self.num_blocks)
        costs = PathCosts(core)
        self.base = costs.of(["stem.", "head."])
        self.blocks = np.stack([costs.of([f"blocks.{t}."]) for t in range(self.num_blocks)])  # (K, 3)
        self.full = self.base + self.blocks.sum(0)

    def check(self, actions: object, batch: int) -> np.ndarray:
        what = f"0/1 values of shape ({batch}, {self.num_blocks})" if batch > 1 else f"0/1 values of shape ({self.num_blocks},)"
        array = _numeric(actions, what)
        if batch == 1 and array.shape == (self.num_blocks,):
            array = array[None]
        if array.shape != (batch, self.num_blocks):
            raise ValueError(f"action must be {what} (MultiBinary({self.num_blocks})); got shape {np.shape(actions)}")
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"action must be {what}; got values {np.unique(array).tolist()}")
        return array.astype(np.int8)

    def forward(self, chip: torch.nn.Module, x: Tensor, actions: np.ndarray) -> tuple[Tensor, np.ndarray, dict[str, np.ndarray]]:
        return chip(x, mask=torch.as_tensor(actions, device=x.device)).argmax(1), actions, {}

    def cost(self, paths: np.ndarray) -> np.ndarray:
        """(B, 4): usage (fraction of blocks), MACs, energy pJ, latency ns."""
        totals = self.base + paths.astype(np.float64) @ self.blocks
        return np.column_stack([paths.mean(1), totals])


class _ExitCosts:
    def __init__(self, core: EnvCore) -> None:
        model = core.model
        self.num_exits = model.num_exits
        costs = PathCosts(core)
        per_exit = []
        for e, last_block in enumerate(model.exit_after):
            head = "head." if e == self.num_exits - 1 else f"exits.{e}."
            per_exit.append(costs.of(["stem.", head, *(f"blocks.{t}." for t in range(last_block + 1))]))
        self.exits = np.stack(per_exit)  # (E, 3)
        self.full = self.exits[-1]

    def cost(self, paths: np.ndarray) -> np.ndarray:
        """(B, 4): usage (fraction of the deepest path's MACs), MACs, energy pJ, latency ns."""
        totals = self.exits[paths]
        return np.column_stack([totals[:, 0] / self.exits[-1, 0], totals])


class EarlyExitAction(_ExitCosts):
    """``Discrete(E)``: the exit every sample leaves the network at (0 = shallowest, E-1 = the final head)."""

    variant, default_depth, render_kind = "multiexit", 32, "exit"

    def __init__(self, core: EnvCore) -> None:
        super().__init__(core)
        self.space = spaces.Discrete(self.num_exits)

    def check(self, actions: object, batch: int) -> np.ndarray:
        what = f"an integer exit index in [0, {self.num_exits - 1}]" + (f", shape ({batch},)" if batch > 1 else "")
        array = _numeric(actions, what)
        if batch == 1 and array.size == 1:
            array = array.reshape(1)
        if array.shape != (batch,) or array.dtype.kind == "b" or not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"action must be {what} (Discrete({self.num_exits})); got {actions!r}")
        if ((array < 0) | (array >= self.num_exits)).any():
            raise ValueError(f"action must be {what}; got {array.tolist()}")
        return array.astype(np.int64)

    def forward(self, chip: torch.nn.Module, x: Tensor, actions: np.ndarray) -> tuple[Tensor, np.ndarray, dict[str, np.ndarray]]:
        return chip(x, exit=torch.as_tensor(actions, device=x.device)).argmax(1), actions, {}


class ExitThresholdsAction(_ExitCosts):
    """``Box(-1, 1, (E-1,))``: entropy thresholds ``T_e = (action[e] + 1) / 2 * ln C``; a sample leaves at the
    first exit whose softmax entropy (natural log, on the noisy chip) is below ``T_e``, else at the final head
    (BranchyNet's rule). The symmetric, normalized box is what Gymnasium and SB3 recommend."""

    variant, default_depth, render_kind = "multiexit", 32, "thresholds"

    def __init__(self, core: EnvCore) -> None:
        super().__init__(core)
        self.max_entropy = math.log(core.info.num_classes)
        self.space = spaces.Box(-1.0, 1.0, shape=(self.num_exits - 1,), dtype=np.float32)

    def check(self, actions: object, batch: int) -> np.ndarray:
        n = self.num_exits - 1
        what = f"{n} values in [-1, 1] (entropy thresholds (a + 1) / 2 * ln C, ln C = {self.max_entropy:.4f})"
        array = _numeric(actions, what).astype(np.float64)
        if batch == 1 and array.shape == (n,):
            array = array[None]
        if array.shape != (batch, n):
            raise ValueError(f"action must be {what}, shape {(batch, n) if batch > 1 else (n,)}; got shape {np.shape(actions)}")
        tol = 1e-6
        if not np.isfinite(array).all() or (array < -1 - tol).any() or (array > 1 + tol).any():
            raise ValueError(f"action must be {what}; got {array.tolist()}")
        return array

    def thresholds(self, actions: np.ndarray) -> np.ndarray:
        """Entropy thresholds (nats) of actions in [-1, 1]."""
        return (np.asarray(actions) + 1.0) / 2.0 * self.max_entropy

    def forward(self, chip: torch.nn.Module, x: Tensor, actions: np.ndarray) -> tuple[Tensor, np.ndarray, dict[str, np.ndarray]]:
        """Predictions, exits taken and ``{"exit_entropy": (B, E-1)}``: the entropy (nats) at every early exit."""
        logits = chip(x)  # (E, B, classes): every exit in one pass
        logp = torch.log_softmax(logits.double(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)[:-1].T.cpu().numpy()  # (B, E-1)
        below = entropy < self.thresholds(actions)
        exits = np.where(below.any(1), below.argmax(1), self.num_exits - 1)
        rows = torch.arange(x.shape[0], device=x.device)
        return logits[torch.as_tensor(exits, device=x.device), rows].argmax(1), exits, {"exit_entropy": entropy}
