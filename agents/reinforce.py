"""REINFORCE with a self-critical baseline, as BlockDrop (Wu et al., CVPR 2018) trains its policy; for block masks,
exits and exit thresholds.

Read top to bottom: the settings (defaults are BlockDrop's), the environment, the network, then a flat loop.

- Policy: a :class:`~agents.networks.PolicyNetwork` on the observation (features or image, plus sigma and the chip
  descriptor, each with its own embedding) and a head: a Bernoulli per block (masks), a categorical (exits) or a
  Beta per threshold.
- Exploration bound: masks are sampled from ``p' = alpha p + (1 - alpha)(1 - p)`` (exits from ``alpha p + (1 -
  alpha) / E``), so no probability leaves ``[1 - alpha, alpha]``.
- Self-critical baseline: the advantage of a sampled action is its reward minus the reward of the greedy action
  (``p >= 0.5``; the argmax exit; the Beta mean) *on the same episode*: the same image on the same chip. Both run
  in one batched step: the episodes are drawn, pinned twice through ``reset(options={"image", "chip"})``, and the
  first half takes the sampled actions, the second half the greedy ones. Where both are equal the advantage is 0.
- Loss: ``-mean(A * sum_k log pi(a_k)) - beta * mean(entropy)`` (for masks, the entropy term of BlockDrop's code
  by default, see :class:`~agents.networks.MaskHead`).
- Curriculum (masks): during stage 1 the policy controls only the last ``c`` blocks, ``c`` growing by one every
  ``curriculum_stage_updates`` updates; the other blocks always run.
- Stage 1 (curriculum) uses ``lr``, ``batch_size`` and ``curriculum_penalty``; stage 2 finetunes the policy with
  ``finetune_lr``, ``finetune_batch_size`` and the environment's own (final) ``penalty``. BlockDrop's second stage
  also finetunes the ResNet; here the backbone is the environment's and stays frozen.

Every random draw comes from generators seeded by ``seed`` (the network's initialization, the action samples, the
environment's episodes and chips): the same seed gives the same policy, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

import cim_gym  # noqa: F401  (registers the environment ids)
from agents.networks import Head, NetworkSettings, PolicyNetwork, make_head, obs_to_tensors
from cim_gym.devices import pick_device


@dataclass(frozen=True)
class ReinforceSettings:
    """Every setting of a REINFORCE run (BlockDrop's values by default)."""

    steps: int = 300_000
    """Training episodes in all, both stages (sampled actions; the greedy baseline's forwards come on top)."""
    batch_size: int = 2048
    """Episodes per update in stage 1 (BlockDrop: 2048)."""
    lr: float = 1e-3
    """Adam learning rate in stage 1 (BlockDrop: 1e-3)."""
    alpha: float = 0.8
    """Exploration bound: sampled probabilities stay in [1 - alpha, alpha] (BlockDrop: 0.8); 0.5 < alpha <= 1."""
    beta: float = 0.1
    """Entropy bonus (BlockDrop: 0.1)."""
    entropy: str = "blockdrop"
    """Masks: the entropy bonus's form, "blockdrop" (its code's sum of -p' log p') or "bernoulli" (see MaskHead)."""
    curriculum: bool = True
    """Masks only: during stage 1 the policy controls the last c blocks, c growing by one per curriculum stage."""
    curriculum_stage_updates: int | None = None
    """Updates per curriculum stage; None spreads the K stages over the first half of stage 1."""
    curriculum_penalty: float | None = 1.0
    """Penalty for a wrong prediction in stage 1 (BlockDrop: 1); None keeps the environment's penalty."""
    finetune_share: float = 0.2
    """Share of ``steps`` spent in stage 2; 0 skips it."""
    finetune_batch_size: int = 256
    """Episodes per update in stage 2 (BlockDrop: 256)."""
    finetune_lr: float = 1e-4
    """Adam learning rate in stage 2 (BlockDrop: 1e-4)."""
    network: NetworkSettings = field(default_factory=NetworkSettings)
    """Widths of the policy network."""
    checkpoint_every: int = 25
    """Updates between checkpoints (``--resume`` continues from the last one; Ctrl-C writes one too)."""
    seed: int = 0
    """Seed of the network's initialization, the action samples and the environment."""
    device: str = "auto"
    """Device of the policy network: "auto" (CUDA when present), "cpu" or "cuda"."""

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: expected {allowed}")

        for name in ("steps", "batch_size", "finetune_batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "an integer >= 1")
        if self.curriculum_stage_updates is not None and (
                isinstance(self.curriculum_stage_updates, bool) or not isinstance(self.curriculum_stage_updates, int)
                or self.curriculum_stage_updates < 1):
            fail("curriculum_stage_updates", "None or an integer >= 1")
        for name in ("lr", "finetune_lr"):
            if not _finite(getattr(self, name)) or getattr(self, name) <= 0:
                fail(name, "a finite number > 0")
        if not _finite(self.alpha) or not 0.5 < self.alpha <= 1:
            fail("alpha", "a number in (0.5, 1]")
        if not _finite(self.beta) or self.beta < 0:
            fail("beta", "a finite number >= 0")
        if not _finite(self.finetune_share) or not 0 <= self.finetune_share < 1:
            fail("finetune_share", "a number in [0, 1)")
        if self.curriculum_penalty is not None and (not _finite(self.curriculum_penalty) or self.curriculum_penalty < 0):
            fail("curriculum_penalty", "None or a finite number >= 0")
        if self.entropy not in ("blockdrop", "bernoulli"):
            fail("entropy", "'blockdrop' or 'bernoulli'")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", "an integer >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            fail("device", "one of ('auto', 'cpu', 'cuda')")
        if self.stage_updates[0] < 1:
            fail("steps", f"at least batch_size={self.batch_size} episodes for stage 1")
        if self.finetune_share > 0 and self.stage_updates[1] < 1:
            fail("steps", f"enough episodes for one stage-2 update ({self.finetune_batch_size} / finetune_share)")

    @property
    def stage_updates(self) -> tuple[int, int]:
        """Updates in stage 1 and stage 2."""
        finetune_steps = int(self.steps * self.finetune_share)
        return (self.steps - finetune_steps) // self.batch_size, finetune_steps // self.finetune_batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Stage:
    """One training stage: its updates, batch, learning rate and penalty."""

    index: int
    updates: int
    batch_size: int
    lr: float
    penalty: float | None


@dataclass
class UpdateStats:
    """What one update measured (means over its episodes); the callbacks log these."""

    stage: int
    update: int
    episodes: int
    controlled: int
    reward: float
    reward_greedy: float
    accuracy: float
    accuracy_greedy: float
    usage: float
    usage_greedy: float
    entropy: float
    loss: float
    mean_sigma: float

    def as_row(self) -> dict[str, float | int]:
        return asdict(self)


class Callback:
    """Hooks of the training loop (logging, progress, checkpoints); every method may be left as is."""

    def on_start(self, trainer: ReinforceTrainer) -> None:
        """Called once before the first update."""

    def on_update(self, trainer: ReinforceTrainer, stats: UpdateStats) -> None:
        """Called after every update."""

    def on_end(self, trainer: ReinforceTrainer, interrupted: bool) -> None:
        """Called once at the end (also after Ctrl-C, with ``interrupted=True``)."""


class ReinforceTrainer:
    """The REINFORCE loop over a Gymnasium environment id (the native vector entry point).

    :param env_id: ``CIMBlockDrop-v0``, ``CIMEarlyExit-v0`` or ``CIMExitThresholds-v0`` (any id whose action space is
        MultiBinary, Discrete or a 1-d Box and whose vector env pins ``image`` and ``chip`` through reset options).
    :param env_kwargs: the environment's keyword arguments (its ``penalty`` is the final one).
    :param settings: the algorithm's settings.
    :param callbacks: logging, progress and checkpoint hooks.
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], settings: ReinforceSettings,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.env_id, self.env_kwargs, self.settings = env_id, dict(env_kwargs), settings
        self.callbacks = list(callbacks)
        self.device = pick_device(settings.device)

        # Seeding: the network's initialization (torch's global generator, seeded right before it), the action
        # samples (rng) and the environments (reset seeds below).
        torch.manual_seed(settings.seed)
        self.rng = np.random.default_rng(settings.seed)

        probe = self._make_env(num_envs=1, penalty=None)
        self.observation_space: spaces.Dict = probe.single_observation_space  # type: ignore[assignment]
        self.action_space = probe.single_action_space
        config = getattr(probe.unwrapped, "config", None)  # the cim-gym environments' EnvConfig, all settings resolved
        self.env_config: dict[str, Any] = config.to_dict() if config is not None else dict(self.env_kwargs)
        self.backbone_sha256: str | None = getattr(probe.unwrapped, "backbone_sha256", None)
        probe.close()
        self.net = PolicyNetwork(self.observation_space, self.action_space, settings.network).to(self.device)
        self.head: Head = make_head(self.action_space, settings.alpha, settings.entropy)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=settings.lr)
        self.is_mask = isinstance(self.action_space, spaces.MultiBinary)
        self.num_blocks = int(np.prod(self.action_space.shape)) if self.is_mask else 0

        s = settings
        stage1, stage2 = s.stage_updates
        self.stages = [Stage(0, stage1, s.batch_size, s.lr, s.curriculum_penalty)]
        if stage2:
            self.stages.append(Stage(1, stage2, s.finetune_batch_size, s.finetune_lr, None))
        self.curriculum_updates = s.curriculum_stage_updates or max(1, stage1 // (2 * max(self.num_blocks, 1)))
        self.stage, self.update = 0, 0  # where training stands (the next update to run)

    # ---- environment -------------------------------------------------------------------------------------------
    def _make_env(self, num_envs: int, penalty: float | None) -> gym.vector.VectorEnv:
        kwargs = dict(self.env_kwargs)
        if penalty is not None:
            kwargs["penalty"] = penalty
        return gym.make_vec(self.env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)

    @property
    def total_updates(self) -> int:
        return sum(st.updates for st in self.stages)

    @property
    def episodes_done(self) -> int:
        """Sampled episodes so far (the greedy baseline's are not counted)."""
        return sum(st.updates * st.batch_size for st in self.stages[: self.stage]) + self.update * self.stages[
            min(self.stage, len(self.stages) - 1)].batch_size

    @property
    def updates_done(self) -> int:
        return sum(st.updates for st in self.stages[: self.stage]) + self.update

    def controlled(self, stage: int, update: int) -> np.ndarray | None:
        """Blocks the policy decides at this point of training (masks with a curriculum only; None: all)."""
        if not self.is_mask or not self.settings.curriculum or stage > 0:
            return None
        count = min(self.num_blocks, 1 + update // self.curriculum_updates)
        mask = np.zeros(self.num_blocks, dtype=bool)
        mask[self.num_blocks - count:] = True
        return mask

    # ---- the loop ----------------------------------------------------------------------------------------------
    def train(self) -> None:
        """Run (or continue) training; Ctrl-C stops after the callbacks saw ``on_end(interrupted=True)``."""
        for cb in self.callbacks:
            cb.on_start(self)
        interrupted = False
        try:
            while self.stage < len(self.stages):
                self._run_stage(self.stages[self.stage])
                self.stage, self.update = self.stage + 1, 0
        except KeyboardInterrupt:
            interrupted = True
        for cb in self.callbacks:
            cb.on_end(self, interrupted)
        if interrupted:
            raise KeyboardInterrupt

    def _run_stage(self, st: Stage) -> None:
        batch = st.batch_size
        for group in self.optimizer.param_groups:
            group["lr"] = st.lr
        envs = self._make_env(2 * batch, st.penalty)
        try:
            # A reset seed per (stage, update) where it starts: a resumed run draws what it would have drawn.
            _, info = envs.reset(seed=self.settings.seed + 7919 * st.index + self.update)
            while self.update < st.updates:
                info, stats = self._update(envs, info, st)
                self.update += 1
                for cb in self.callbacks:
                    cb.on_update(self, stats)
        finally:
            envs.close()

    def _update(self, envs: gym.vector.VectorEnv, info: dict[str, Any], st: Stage) -> tuple[dict[str, Any], UpdateStats]:
        batch, controlled = st.batch_size, self.controlled(st.index, self.update)
        # The next episodes, each pinned twice: the first half takes the sampled actions, the second the greedy ones.
        images, chips = info["image_index"][:batch], info["chip_id"][:batch]
        obs, _ = envs.reset(options={"image": np.tile(images, 2), "chip": np.tile(chips, 2)})
        out = self.net(obs_to_tensors({k: v[:batch] for k, v in obs.items()}, self.device))
        sampled = self.head.sample(out, self.rng, controlled)
        greedy = self.head.greedy(out, controlled)
        _, reward, _, _, step_info = envs.step(np.concatenate([sampled, greedy]))

        advantage = self_critical_advantage(sampled, greedy, reward[:batch], reward[batch:])
        log_prob, entropy = self.head.log_prob_entropy(out, sampled, controlled)
        adv = torch.as_tensor(advantage, dtype=out.dtype, device=self.device)
        loss = -(log_prob * adv).mean() - self.settings.beta * entropy.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        final = step_info["final_info"]
        stats = UpdateStats(
            stage=st.index + 1, update=self.updates_done + 1, episodes=self.episodes_done + batch,
            controlled=int(controlled.sum()) if controlled is not None else self.num_blocks,
            reward=float(reward[:batch].mean()), reward_greedy=float(reward[batch:].mean()),
            accuracy=float(final["correct"][:batch].mean()), accuracy_greedy=float(final["correct"][batch:].mean()),
            usage=float(final["usage"][:batch].mean()), usage_greedy=float(final["usage"][batch:].mean()),
            entropy=float(entropy.detach().mean()), loss=float(loss.detach()), mean_sigma=float(final["sigma"][:batch].mean()),
        )
        return step_info, stats

    # ---- the policy ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What ``--resume`` needs (tensors and plain values only: ``torch.load(weights_only=True)`` reads it)."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "stage": self.stage,
            "update": self.update,
            "rng": _rng_state(self.rng),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stage, self.update = int(state["stage"]), int(state["update"])
        self.rng.bit_generator.state = _rng_from(state["rng"])


def self_critical_advantage(sampled: np.ndarray, greedy: np.ndarray, reward_sampled: np.ndarray,
                            reward_greedy: np.ndarray) -> np.ndarray:
    """``R(sampled) - R(greedy)`` per episode, exactly 0 where both actions are the same (even when a per-read noise
    made their two forwards differ: the same action has the same expected reward)."""
    same = (np.asarray(sampled) == np.asarray(greedy)).reshape(len(reward_sampled), -1).all(1)
    return np.where(same, 0.0, np.asarray(reward_sampled, np.float64) - np.asarray(reward_greedy, np.float64))


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    state = rng.bit_generator.state
    return {"bit_generator": state["bit_generator"], "state": str(state["state"]["state"]),
            "inc": str(state["state"]["inc"]), "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def _rng_from(data: dict[str, Any]) -> dict[str, Any]:
    return {"bit_generator": data["bit_generator"], "state": {"state": int(data["state"]), "inc": int(data["inc"])},
            "has_uint32": int(data["has_uint32"]), "uinteger": int(data["uinteger"])}


def make_actor(net: PolicyNetwork, head: Head, device: torch.device, seed: int = 0) -> Callable[..., np.ndarray]:
    """``act(obs, deterministic=True)`` of a trained network (greedy, or sampled from its own generator)."""
    rng = np.random.default_rng(seed)

    def act(obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        with torch.no_grad():
            out = net(obs_to_tensors(obs, device))
        return head.greedy(out) if deterministic else head.sample(out, rng)

    return act
