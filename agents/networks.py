"""Policy networks on the environments' Dict observations, and the action distributions on top of them.

The network has one *main* input, ``features`` (an MLP) or ``image`` (a small CNN), and *side* inputs, every other
key of the observation (``sigma``, and ``chip`` where the environment observes the chip). Each side input gets its
own small embedding, concatenated with the main embedding before the head: sigma is one number next to hundreds of
pixels or a dozen features, and a network that sees it only as one more input can learn to ignore it. With
``observe_sigma=False`` the observation has no ``sigma`` key and the network simply has no sigma embedding.

Heads (``make_head``): a Bernoulli per block for ``MultiBinary`` (BlockDrop), a categorical for ``Discrete`` (exits)
and a Beta per threshold for ``Box`` (the thresholds environment: the Beta lives on the box, no clipping).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

MAIN_KEYS = ("features", "image")


@dataclass(frozen=True)
class NetworkSettings:
    """Shape of a policy network (stored in the run folder, so a policy can be rebuilt)."""

    hidden: int = 64
    """Width of the main embedding and of the trunk."""
    side_dim: int = 16
    """Width of the embedding of each side input (sigma, chip)."""
    channels: tuple[int, ...] = (16, 32, 64)
    """Channels of the CNN's conv layers (``obs_mode="image"``); the second and later ones have stride 2."""

    def __post_init__(self) -> None:
        for name in ("hidden", "side_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not allowed: expected an integer >= 1")
        channels = tuple(self.channels)
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels={self.channels!r} is not allowed: expected a non-empty list of integers >= 1")
        object.__setattr__(self, "channels", channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BoxScaler(nn.Module):
    """Maps a Box observation to about [-1, 1] from its bounds (dimensions with infinite or empty bounds pass)."""

    def __init__(self, box: spaces.Box) -> None:
        super().__init__()
        low, high = np.asarray(box.low, np.float64), np.asarray(box.high, np.float64)
        finite = np.isfinite(low) & np.isfinite(high) & (high > low)
        center = np.where(finite, (low + high) / 2, 0.0)
        half = np.where(finite, (high - low) / 2, 1.0)
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("half_width", torch.as_tensor(half, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.center) / self.half_width


def _main_encoder(box: spaces.Box, key: str, s: NetworkSettings) -> nn.Sequential:
    if key == "features":
        (dim,) = box.shape
        return nn.Sequential(BoxScaler(box), nn.Linear(dim, s.hidden), nn.ReLU(), nn.Linear(s.hidden, s.hidden), nn.ReLU())
    layers: list[nn.Module] = [BoxScaler(box)]
    in_ch = box.shape[0]
    for i, out_ch in enumerate(s.channels):
        layers += [nn.Conv2d(in_ch, out_ch, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
        in_ch = out_ch
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, s.hidden), nn.ReLU())


def action_outputs(action_space: spaces.Space[Any]) -> int:
    """Number of head outputs the action space needs."""
    if isinstance(action_space, spaces.MultiBinary):
        return int(np.prod(action_space.shape))
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        return 2 * action_space.shape[0]
    raise ValueError(f"action_space={action_space!r} is not allowed: expected MultiBinary, Discrete or a 1-d Box")


class PolicyNetwork(nn.Module):
    """Observation dict -> head outputs (block logits, exit logits, or Beta concentrations).

    :param observation_space: the environment's ``Dict`` space with ``features`` or ``image`` and side Boxes.
    :param action_space: ``MultiBinary(K)``, ``Discrete(E)`` or ``Box(-1, 1, (E-1,))``.
    :param settings: the network's widths.
    """

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Space[Any],
                 settings: NetworkSettings | None = None) -> None:
        super().__init__()
        s = settings or NetworkSettings()
        if not isinstance(observation_space, spaces.Dict):
            raise ValueError(f"observation_space={observation_space!r} is not allowed: expected a gymnasium Dict")
        mains = [k for k in MAIN_KEYS if k in observation_space.spaces]
        if len(mains) != 1:
            raise ValueError(f"observation keys {sorted(observation_space.spaces)} are not allowed: expected exactly "
                             f"one of {MAIN_KEYS} plus side inputs (sigma, chip)")
        self.main_key = mains[0]
        self.side_keys = sorted(k for k in observation_space.spaces if k != self.main_key)
        for key in self.side_keys:
            box = observation_space[key]
            if not isinstance(box, spaces.Box) or len(box.shape) != 1:
                raise ValueError(f"observation key {key!r} has space {box!r}: expected a 1-d Box")
        self.settings = s
        self.main = _main_encoder(observation_space[self.main_key], self.main_key, s)
        self.sides = nn.ModuleDict({
            key: nn.Sequential(BoxScaler(observation_space[key]), nn.Linear(observation_space[key].shape[0], s.side_dim),
                               nn.Tanh(), nn.Linear(s.side_dim, s.side_dim), nn.Tanh())
            for key in self.side_keys
        })
        width = s.hidden + s.side_dim * len(self.side_keys)
        self.trunk = nn.Sequential(nn.Linear(width, s.hidden), nn.ReLU())
        self.out = nn.Linear(s.hidden, action_outputs(action_space))

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        parts = [self.main(obs[self.main_key])] + [self.sides[k](obs[k]) for k in self.side_keys]
        return self.out(self.trunk(torch.cat(parts, dim=1)))

    def macs(self, observation_space: spaces.Dict) -> int:
        """Multiply-accumulates of one forward (one observation): every Linear and Conv2d, counted by hooks."""
        total = 0

        def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            nonlocal total
            if isinstance(module, nn.Linear):
                total += module.in_features * module.out_features
            elif isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                total += output[0].numel() * kh * kw * module.in_channels // module.groups

        hooks = [m.register_forward_hook(count) for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        try:
            device = next(self.parameters()).device
            sample = {k: torch.zeros((1, *observation_space[k].shape), device=device) for k in observation_space.spaces}
            with torch.no_grad():
                self(sample)
        finally:
            for h in hooks:
                h.remove()
        return int(total)


def obs_to_tensors(obs: dict[str, np.ndarray], device: torch.device | str) -> dict[str, Tensor]:
    """A batched observation dict (numpy) as float32 tensors on ``device``."""
    return {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device) for k, v in obs.items()}


# ---- action distributions ----------------------------------------------------------------------------------------
class Head(ABC):
    """A policy's action distribution over head outputs: sampling (numpy generator), greedy action, log-prob, entropy.

    ``controlled`` (block masks only) marks the blocks the policy decides; the others always run and count neither in
    the log-probability nor in the entropy (BlockDrop's curriculum).
    """

    @abstractmethod
    def sample(self, out: Tensor, rng: np.random.Generator, controlled: np.ndarray | None = None) -> np.ndarray:
        """Actions drawn from the (exploration-bounded) policy with ``rng``."""

    @abstractmethod
    def greedy(self, out: Tensor, controlled: np.ndarray | None = None) -> np.ndarray:
        """The deterministic action."""

    @abstractmethod
    def log_prob_entropy(self, out: Tensor, actions: np.ndarray, controlled: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        """Per-episode log-probability of ``actions`` under the sampling distribution, and the policy's entropy."""


def bound(p: Tensor, alpha: float) -> Tensor:
    """BlockDrop's exploration bound ``p' = alpha p + (1 - alpha)(1 - p)``: p' stays in [1 - alpha, alpha]."""
    return alpha * p + (1 - alpha) * (1 - p)


class MaskHead(Head):
    """Independent Bernoulli per block (BlockDrop): keep probability ``p = sigmoid(logit)``, sampled through the
    exploration bound, greedy mask ``p >= 0.5``.

    :param entropy: the entropy bonus's form. "blockdrop" is BlockDrop's code: ``sum_k -p'_k log p'_k`` over every
        block's *bounded* probability (only the ``p log p`` half of the Bernoulli entropy: it peaks at ``p' = 1/e``,
        so the bonus leans towards dropping). "bernoulli" is the Bernoulli entropy of the controlled blocks.
    """

    ENTROPIES = ("blockdrop", "bernoulli")

    def __init__(self, alpha: float = 0.8, entropy: str = "blockdrop") -> None:
        if entropy not in self.ENTROPIES:
            raise ValueError(f"entropy={entropy!r} is not allowed: expected one of {self.ENTROPIES}")
        self.alpha, self.entropy = alpha, entropy

    @staticmethod
    def _force(actions: np.ndarray, controlled: np.ndarray | None) -> np.ndarray:
        if controlled is not None:
            actions[:, ~controlled] = 1
        return actions

    def sample(self, out: Tensor, rng: np.random.Generator, controlled: np.ndarray | None = None) -> np.ndarray:
        p = bound(torch.sigmoid(out.detach()), self.alpha).cpu().numpy().astype(np.float64)
        return self._force((rng.random(p.shape) < p).astype(np.int8), controlled)

    def greedy(self, out: Tensor, controlled: np.ndarray | None = None) -> np.ndarray:
        return self._force((out.detach() >= 0).cpu().numpy().astype(np.int8), controlled)

    def log_prob_entropy(self, out: Tensor, actions: np.ndarray, controlled: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        p = torch.sigmoid(out)
        pb = bound(p, self.alpha)
        a = torch.as_tensor(actions, dtype=out.dtype, device=out.device)
        log_prob = a * torch.log(pb) + (1 - a) * torch.log1p(-pb)
        keep = (torch.ones_like(out) if controlled is None
                else torch.as_tensor(controlled, dtype=out.dtype, device=out.device).expand_as(out))
        if self.entropy == "blockdrop":
            entropy = -pb * torch.log(pb)
        else:
            entropy = -(p * torch.log(p.clamp_min(1e-12)) + (1 - p) * torch.log((1 - p).clamp_min(1e-12))) * keep
        return (log_prob * keep).sum(1), entropy.sum(1)


class ExitHead(Head):
    """Categorical over exits: ``p = softmax(logits)``, sampled from ``alpha p + (1 - alpha) / E`` (the mask bound's
    analogue: every exit keeps a probability of at least ``(1 - alpha) / E``), greedy ``argmax p``."""

    def __init__(self, alpha: float = 0.8) -> None:
        self.alpha = alpha

    def _bounded(self, out: Tensor) -> Tensor:
        return self.alpha * torch.softmax(out, dim=1) + (1 - self.alpha) / out.shape[1]

    def sample(self, out: Tensor, rng: np.random.Generator, controlled: np.ndarray | None = None) -> np.ndarray:
        cdf = self._bounded(out.detach()).double().cumsum(1).cpu().numpy()
        u = rng.random((cdf.shape[0], 1))
        return np.minimum((u > cdf).sum(1), cdf.shape[1] - 1).astype(np.int64)

    def greedy(self, out: Tensor, controlled: np.ndarray | None = None) -> np.ndarray:
        return out.detach().argmax(1).cpu().numpy().astype(np.int64)

    def log_prob_entropy(self, out: Tensor, actions: np.ndarray, controlled: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        a = torch.as_tensor(actions, dtype=torch.long, device=out.device)
        log_prob = torch.log(self._bounded(out).gather(1, a[:, None]))[:, 0]
        logp = torch.log_softmax(out, dim=1)
        return log_prob, -(logp.exp() * logp).sum(1)


class ThresholdHead(Head):
    """A Beta per threshold on [0, 1], mapped to the action box [-1, 1]; concentrations ``1 + softplus(out)`` (>= 1,
    unimodal). Greedy action: the Beta's mean. The Beta's support is the box, so nothing is clipped."""

    def _beta(self, out: Tensor) -> torch.distributions.Beta:
        conc = 1.0 + nn.functional.softplus(out)
        n = out.shape[1] // 2
        return torch.distributions.Beta(conc[:, :n], conc[:, n:])

    def sample(self, out: Tensor, rng: np.random.Generator, controlled: np.ndarray | None = None) -> np.ndarray:
        beta = self._beta(out.detach().double())
        u = rng.beta(beta.concentration1.cpu().numpy(), beta.concentration0.cpu().numpy())
        return (2 * u - 1).astype(np.float32)

    def greedy(self, out: Tensor, controlled: np.ndarray | None = None) -> np.ndarray:
        return (2 * self._beta(out.detach()).mean - 1).cpu().numpy().astype(np.float32)

    def log_prob_entropy(self, out: Tensor, actions: np.ndarray, controlled: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        beta = self._beta(out)
        # Keep u strictly inside (0, 1): float32 actions at exactly +-1 would give log(0).
        u = ((torch.as_tensor(actions, dtype=out.dtype, device=out.device) + 1) / 2).clamp(1e-6, 1 - 1e-6)
        return beta.log_prob(u).sum(1), beta.entropy().sum(1)


def make_head(action_space: spaces.Space[Any], alpha: float, entropy: str = "blockdrop") -> Head:
    """The distribution head for an action space (``alpha``: exploration bound of masks and exits; ``entropy``: the
    masks' entropy bonus, see :class:`MaskHead`)."""
    if isinstance(action_space, spaces.MultiBinary):
        return MaskHead(alpha, entropy)
    if isinstance(action_space, spaces.Discrete):
        return ExitHead(alpha)
    action_outputs(action_space)  # raises for anything but a 1-d Box
    return ThresholdHead()
