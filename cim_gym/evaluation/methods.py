"""The methods an evaluation compares, each a small object: given a backbone context, a chip and test images, the
actions to run (a block mask, an exit, or entropy thresholds); the environment's own action types execute them.

- :class:`FixedDepth`: a block-drop backbone of one depth, every block run (the proposal's ordinary model);
- :class:`FixedExit`: a multi-exit backbone, every image leaving at one exit (the last: the full network);
- :class:`StaticMask`: one fixed block mask for every image and chip (here: the last blocks of each stage dropped);
- :class:`EntropyExits`: BranchyNet's entropy rule with thresholds chosen on the validation split;
- :class:`PolicyMethod`: a learned policy as a callable from an observation batch to an action batch. Its
  observation comes from the environment's own :meth:`cim_gym.envs.core.EnvCore.observe`, configured like the
  environment it was trained on, so it is exactly what training showed it for that chip and image.

Oracles are not methods: they pick among the methods' results after the sweep (:mod:`cim_gym.evaluation.report`).
Every method names its backbone by ``(variant, depth)``; the methods of one backbone share its chips.
"""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from cim_gym.evaluation.sweep import BackboneContext

__all__ = [
    "ROLES",
    "EntropyExits",
    "FixedDepth",
    "FixedExit",
    "Method",
    "PolicyMethod",
    "StaticMask",
    "action_type_of",
    "THRESHOLD_RULES",
    "choose_entropy_threshold",
    "exit_by_entropy",
    "method_seed",
    "static_mask",
]

ROLES = ("baseline", "noise-aware", "sigma-hidden", "chip-aware", "oracle")
"""What a method is in the comparison: literature or fixed baselines, the noise-aware policies (this project's
contribution), their sigma-hidden controls, chip-aware policies, and oracles (upper bounds, not implementable)."""

Policy = Callable[[dict[str, np.ndarray]], np.ndarray]
"""A learned policy: a batch of observations as the native vector environment returns them -> a batch of actions."""


def method_seed(chip_seed: int, method: str) -> int:
    """Seed of a method's per-call noise draws on one chip (read and output noise are drawn at every forward): every
    method draws independently of the others and of the order the methods run in (so serial and parallel sweeps
    agree)."""
    return int(np.random.SeedSequence([int(chip_seed) & 0xFFFFFFFF, int(chip_seed) >> 32,
                                       zlib.crc32(method.encode())]).generate_state(1, np.uint64)[0] >> 1)


def action_type_of(env_id: str) -> type:
    """The action type (``cim_gym.envs.actions``) of a registered environment id, read from the registry."""
    import gymnasium as gym

    import cim_gym.envs  # noqa: F401  (registers the ids)

    try:
        spec = gym.spec(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"env_id={env_id!r} is not a registered cim-gym environment: {exc}") from exc
    entry = spec.entry_point
    if not isinstance(entry, str):
        raise ValueError(f"env_id={env_id!r} has no importable entry point")
    env_cls = gym.envs.registration.load_env_creator(entry)
    action_type = getattr(env_cls, "action_type", None)
    if action_type is None:
        raise ValueError(f"env_id={env_id!r} is not a cim-gym environment (its class has no action_type)")
    return action_type


def static_mask(stage_starts: list[int] | tuple[int, ...], num_blocks: int, drop_per_stage: int) -> np.ndarray:
    """The block mask (K,) int8 that drops the last ``drop_per_stage`` blocks of every stage.

    :raises ValueError: ``drop_per_stage`` outside [0, blocks per stage - 1] (every stage keeps at least one block).
    """
    bounds = [*stage_starts, num_blocks]
    per_stage = min(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    if isinstance(drop_per_stage, bool) or not isinstance(drop_per_stage, int) or not 0 <= drop_per_stage < per_stage:
        raise ValueError(f"drop_per_stage={drop_per_stage!r} is not allowed: expected an integer in [0, {per_stage - 1}]")
    mask = np.ones(num_blocks, dtype=np.int8)
    for end in bounds[1:]:
        mask[end - drop_per_stage:end] = 0
    return mask


def exit_by_entropy(logits: torch.Tensor, thresholds: np.ndarray) -> np.ndarray:
    """BranchyNet's rule on all exits' logits (E, B, C): the first exit whose softmax entropy (nats) is below its
    threshold, else the last exit. ``thresholds`` has E-1 entries (or one per sample, (B, E-1))."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)[:-1].T.detach().cpu().numpy()  # (B, E-1)
    below = entropy < np.asarray(thresholds, dtype=np.float64)
    return np.where(below.any(1), below.argmax(1), logits.shape[0] - 1)


THRESHOLD_RULES = ("exit-rate", "accuracy-drop")


def choose_entropy_threshold(logits: torch.Tensor, labels: torch.Tensor, exit_macs: np.ndarray, rule: str,
                             target: float, candidates: int = 201) -> tuple[float, dict[str, float]]:
    """One entropy threshold T for every intermediate exit, chosen on *validation* outputs.

    - ``rule="exit-rate"``: the smallest T at which at least ``target`` (a fraction in [0, 1]) of the images leave
      before the last exit (labels are not used);
    - ``rule="accuracy-drop"``: the largest T (most early exits) whose accuracy is within ``target`` points of the
      last exit's.

    :param logits: all exits' logits (E, B, C) of the validation images on the tuning chip.
    :param labels: their labels (B,).
    :param exit_macs: MACs of the path ending at each exit (E,).
    :returns: (T in nats, {"val_accuracy", "val_full_accuracy", "val_macs", "val_early_exit_rate"}).
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule={rule!r} is not allowed: expected one of {THRESHOLD_RULES}")
    hi = 1.0 if rule == "exit-rate" else math.inf
    if (not isinstance(target, (int, float)) or isinstance(target, bool) or not math.isfinite(target)
            or not 0 <= target <= hi):
        raise ValueError(f"target={target!r} is not allowed: expected "
                         + ("a fraction in [0, 1]" if rule == "exit-rate" else "a finite number of accuracy points >= 0"))
    num_exits, _, num_classes = logits.shape
    preds = logits.argmax(-1).detach().cpu().numpy()  # (E, B)
    y = labels.cpu().numpy()
    full = 100.0 * float((preds[-1] == y).mean())
    chosen: tuple[float, dict[str, float]] | None = None
    for t in np.linspace(0.0, math.log(num_classes), candidates):
        exits = exit_by_entropy(logits, np.full(num_exits - 1, t))
        acc = 100.0 * float((preds[exits, np.arange(len(y))] == y).mean())
        rate = float((exits < num_exits - 1).mean())
        stats = {"val_accuracy": acc, "val_full_accuracy": full, "val_macs": float(np.asarray(exit_macs)[exits].mean()),
                 "val_early_exit_rate": rate}
        if rule == "exit-rate" and rate >= target - 1e-12:
            return float(t), stats
        if rule == "accuracy-drop" and acc >= full - target - 1e-9:
            chosen = (float(t), stats)
    if chosen is None:  # exit-rate never reached (only when target > the rate at T = ln C)
        return float(t), stats
    return chosen


@dataclass
class Method(ABC):
    """Base of the methods: a name, a role, a family and the backbone ``(variant, depth)`` it runs on."""

    name: str
    role: str
    family: str
    variant: str
    depth: int

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role={self.role!r} is not allowed: expected one of {ROLES}")

    @property
    def backbone(self) -> tuple[str, int]:
        return (self.variant, int(self.depth))

    @abstractmethod
    def env_id(self) -> str:
        """The environment whose action type executes this method."""

    def prepare(self, ctx: BackboneContext) -> None:
        """Tune on the validation split when the method needs it (never reads the test split). Idempotent."""
        return None  # most methods need no tuning

    @abstractmethod
    def actions(self, ctx: BackboneContext, image_ids: np.ndarray, chip_ids: np.ndarray) -> np.ndarray:
        """The batch of actions for these test images on these chips."""

    def decision_macs(self, ctx: BackboneContext) -> int:
        """Digital MACs per image spent deciding the path (feature encoder + policy network); 0 for fixed paths."""
        return 0

    def describe(self) -> dict[str, Any]:
        """JSON-safe description (goes into the evaluation's config.json)."""
        return {"name": self.name, "role": self.role, "family": self.family, "backbone": [self.variant, self.depth],
                "env_id": self.env_id()}


@dataclass
class FixedDepth(Method):
    """The block-drop backbone of ``depth``, every block run on the chip."""

    name: str = ""
    role: str = "baseline"
    family: str = "fixed"
    variant: str = "blockdrop"
    depth: int = 20

    def __post_init__(self) -> None:
        self.name = self.name or f"fixed-resnet{self.depth}"
        super().__post_init__()

    def env_id(self) -> str:
        return "CIMBlockDrop-v0"

    def actions(self, ctx: BackboneContext, image_ids: np.ndarray, chip_ids: np.ndarray) -> np.ndarray:
        return np.ones((len(image_ids), ctx.core.model.num_blocks), dtype=np.int8)


@dataclass
class FixedExit(Method):
    """A multi-exit backbone with every image leaving at one exit (default: the last, i.e. the full network)."""

    name: str = ""
    role: str = "baseline"
    family: str = "fixed"
    variant: str = "multiexit"
    depth: int = 32
    exit: int = -1
    """The exit (0 = shallowest; negative counts from the last)."""

    def __post_init__(self) -> None:
        if isinstance(self.exit, bool) or not isinstance(self.exit, int):
            raise ValueError(f"exit={self.exit!r} is not allowed: expected an integer exit index")
        self.name = self.name or f"fixed-multiexit-resnet{self.depth}-exit{self.exit}"
        super().__post_init__()

    def env_id(self) -> str:
        return "CIMEarlyExit-v0"

    def actions(self, ctx: BackboneContext, image_ids: np.ndarray, chip_ids: np.ndarray) -> np.ndarray:
        num_exits = ctx.core.model.num_exits
        if not -num_exits <= self.exit < num_exits:
            raise ValueError(f"exit={self.exit} is not allowed: the backbone has {num_exits} exits")
        return np.full(len(image_ids), self.exit % num_exits, dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "exit": self.exit}


@dataclass
class StaticMask(Method):
    """The same block mask for every image and chip: the last ``drop_per_stage`` blocks of each stage dropped."""

    name: str = ""
    role: str = "baseline"
    family: str = "static-mask"
    variant: str = "blockdrop"
    depth: int = 20
    drop_per_stage: int = 1

    def __post_init__(self) -> None:
        self.name = self.name or f"mask-resnet{self.depth}-drop{self.drop_per_stage}per-stage"
        super().__post_init__()

    def env_id(self) -> str:
        return "CIMBlockDrop-v0"

    def mask(self, ctx: BackboneContext) -> np.ndarray:
        model = ctx.core.model
        return static_mask(list(model.stage_starts), model.num_blocks, self.drop_per_stage)

    def actions(self, ctx: BackboneContext, image_ids: np.ndarray, chip_ids: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.mask(ctx), (len(image_ids), ctx.core.model.num_blocks)).copy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "drop_per_stage": self.drop_per_stage}


@dataclass
class EntropyExits(Method):
    """BranchyNet (Teerapittayanon et al. 2016): leave at the first exit whose softmax entropy is below T.

    T is one threshold for every intermediate exit, chosen on the validation split on the noise-free chip (the
    literature method knows nothing of noise) by ``rule`` and ``target`` (see :func:`choose_entropy_threshold`): a
    lenient setting (high T, many early exits) and a strict one (low T) are the two the proposal's figure 13 shows.
    """

    name: str = ""
    role: str = "baseline"
    family: str = "entropy-exit"
    variant: str = "multiexit"
    depth: int = 32
    rule: str = "exit-rate"
    target: float = 0.5
    threshold: float | None = None
    """Chosen by :meth:`prepare` (nats); set it to skip tuning."""
    tuning: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in THRESHOLD_RULES:
            raise ValueError(f"rule={self.rule!r} is not allowed: expected one of {THRESHOLD_RULES}")
        self.name = self.name or f"branchynet-resnet{self.depth}-{self.rule}{self.target:g}"
        super().__post_init__()

    def env_id(self) -> str:
        return "CIMExitThresholds-v0"

    def prepare(self, ctx: BackboneContext) -> None:
        if self.threshold is not None:
            return
        chip = ctx.tuning_chip()
        with torch.no_grad():
            logits = chip(ctx.val.images.to(ctx.core.device))
        act = ctx.action("CIMExitThresholds-v0")
        self.threshold, self.tuning = choose_entropy_threshold(logits, ctx.val.labels, act.exits[:, 0], self.rule,
                                                                 self.target)

    def actions(self, ctx: BackboneContext, image_ids: np.ndarray, chip_ids: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            raise RuntimeError(f"{self.name}: prepare() must choose the threshold first")
        act = ctx.action("CIMExitThresholds-v0")
        a = 2.0 * self.threshold / act.max_entropy - 1.0  # the action space's encoding of T
        return np.full((len(image_ids), act.num_exits - 1), a, dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rule": self.rule, "target": self.target, "threshold_nats": self.threshold,
                "tuned_on": "validation split, noise-free chip", **{f"tuning_{k}": v for k, v in self.tuning.items()}}


@dataclass
class PolicyMethod(Method):
    """A learned policy: ``policy(obs) -> actions`` on the observations of the environment it was trained on.

    :param env_id: that environment's id (its action type runs the actions).
    :param env_config: its ``EnvConfig.to_dict()``; data set, backbone, CIM config and noise source must match the
        sweep's (checked in :meth:`prepare`), ``obs_mode`` and ``observe_sigma`` shape the observation.
    :param policy_macs: MACs of the policy network per decision (digital); the feature encoder is added.
    :param backbone_sha256: the backbone checkpoint the policy was trained on (its run.json), when recorded: a
        backbone retrained since is refused in :meth:`prepare`.
    """

    name: str = ""
    role: str = "noise-aware"
    family: str = "policy"
    variant: str = "blockdrop"
    depth: int = 20
    policy: Policy | None = None
    env: str = "CIMBlockDrop-v0"
    env_config: Mapping[str, Any] = field(default_factory=dict)
    policy_macs: int = 0
    run_dir: str | None = None
    run_hash: str | None = None
    backbone_sha256: str | None = None

    @classmethod
    def from_env(cls, name: str, policy: Policy, env_id: str, env_config: Mapping[str, Any], policy_macs: int,
                 role: str | None = None, run_dir: str | None = None, run_hash: str | None = None,
                 backbone_sha256: str | None = None) -> PolicyMethod:
        """Backbone and role from the environment: (variant, depth) of its action type and config; role
        "chip-aware" when the chip descriptor is observed, "noise-aware" when sigma is, else "sigma-hidden" (unless
        given)."""
        from cim_gym.envs.config import EnvConfig

        config = EnvConfig(**dict(env_config))
        action_type = action_type_of(env_id)
        depth = config.depth or action_type.default_depth
        role = role or ("chip-aware" if config.observe_chip else "noise-aware" if config.observe_sigma else "sigma-hidden")
        return cls(name=name, role=role, family="policy", variant=action_type.variant, depth=int(depth),
                   policy=policy, env=env_id, env_config=config.to_dict(), policy_macs=int(policy_macs),
                   run_dir=run_dir, run_hash=run_hash, backbone_sha256=backbone_sha256)

    def env_id(self) -> str:
        return self.env

    def prepare(self, ctx: BackboneContext) -> None:
        ctx.check_policy_config(self.name, self.env_config, self.backbone_sha256)

    def actions(self, ctx: BackboneContext, image_ids: np.ndarray, chip_ids: np.ndarray) -> np.ndarray:
        if self.policy is None:
            raise RuntimeError(f"{self.name}: no policy callable")
        obs = ctx.observe(self.env_config, image_ids, chip_ids)
        return np.asarray(self.policy(obs))

    def decision_macs(self, ctx: BackboneContext) -> int:
        encoder = ctx.encoder_macs() if self.env_config.get("obs_mode", "features") == "features" else 0
        return int(encoder + self.policy_macs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "run_dir": self.run_dir, "run_hash": self.run_hash,
                "policy_macs": self.policy_macs, "env_config": dict(self.env_config)}
