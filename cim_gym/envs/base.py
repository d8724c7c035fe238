"""Generic single and batched environments over :class:`EnvCore` and an action type.

An episode is one decision: ``reset`` draws an image and a chip (sigma and its noise instance) and observes them,
``step`` runs the image on the chip with the action and ends the episode (``terminated=True``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from cim_gym.envs.config import EnvConfig
from cim_gym.envs.core import EnvCore, Outcome

OPTION_KEYS = ("sigma", "chip", "image")


def observation_space(core: EnvCore) -> spaces.Dict:
    cfg = core.config
    if cfg.obs_mode == "features":
        low, high = core.feature_bounds
        obs: dict[str, spaces.Space[Any]] = {"features": spaces.Box(low, high, (core.feature_dim,), np.float32)}
    else:
        # Normalized pixels: (0 - mean) / std to (1 - mean) / std, per channel.
        mean, std = (np.asarray(v, dtype=np.float32).reshape(-1, 1, 1) for v in (core.info.mean, core.info.std))
        shape = core.info.input_shape
        low, high = np.broadcast_to(-mean / std, shape), np.broadcast_to((1 - mean) / std, shape)
        obs = {"image": spaces.Box(low, high, shape, np.float32)}
    if cfg.observe_sigma:
        obs["sigma"] = spaces.Box(0.0, max(core.sigmas), (1,), np.float32)
    return spaces.Dict(obs)


class EpisodeDrawer:
    """Draws (image, chip) pairs for n episodes from a generator, honouring pinned ``reset`` options."""

    def __init__(self, core: EnvCore) -> None:
        self.core = core
        self.episodes_done = 0
        self.pool_version = 0

    def ensure_pool(self, rng: np.random.Generator, reseeded: bool) -> None:
        """Build the chip pool on first use or after a re-seed; refresh it every ``refresh_chips_every`` episodes."""
        cfg, core = self.core.config, self.core
        every = cfg.refresh_chips_every
        version = self.episodes_done // every if every else 0
        if core.pool is None or reseeded or version != self.pool_version:
            if reseeded:
                self.episodes_done, version = 0, 0
            base = cfg.chip_seed if cfg.chip_seed is not None else int(rng.integers(2**31 - 1))
            seed = base + version if cfg.chip_seed is not None else base
            if seed != core.pool_seed or core.pool is None:
                core.make_pool(seed)
            self.pool_version = version

    def draw(self, rng: np.random.Generator, n: int, options: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        core, per_sigma = self.core, self.core.config.chips_per_sigma
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}: expected some of {OPTION_KEYS}")
        images = rng.integers(len(core.labels), size=n)
        chips = self.draw_chips(rng, n)
        if options.get("image") is not None:
            images = self._pinned("image", options["image"], n, len(core.labels))
        if options.get("sigma") is not None:
            sigma = np.broadcast_to(np.asarray(options["sigma"], dtype=np.float64), (n,))
            groups = np.array([core.sigma_index(float(s)) for s in sigma])
            chips = groups * per_sigma + chips % per_sigma
        if options.get("chip") is not None:
            limit = per_sigma if options.get("sigma") is not None else core.num_chips
            chips = chips - chips % limit + self._pinned("chip", options["chip"], n, limit)
        return images, chips

    def draw_chips(self, rng: np.random.Generator, n: int) -> np.ndarray:
        limit = self.core.config.chips_per_batch
        if limit is None or limit >= n:
            return rng.integers(self.core.num_chips, size=n)
        chosen = rng.integers(self.core.num_chips, size=limit)
        return chosen[rng.integers(limit, size=n)]

    @staticmethod
    def _pinned(name: str, value: Any, n: int, limit: int) -> np.ndarray:
        array = np.broadcast_to(np.asarray(value), (n,)) if np.ndim(value) == 0 else np.asarray(value)
        if array.shape != (n,) or array.dtype.kind not in "iu" or ((array < 0) | (array >= limit)).any():
            raise ValueError(f"reset option {name}={value!r} is not allowed: "
                             f"expected an integer in [0, {limit - 1}] (or {n} of them)")
        return array.astype(np.int64)


def episode_info(core: EnvCore, images: np.ndarray, chips: np.ndarray) -> dict[str, np.ndarray]:
    return {"image_index": images, "chip_id": chips, "sigma": core.chip_sigma(chips)}


def outcome_info(core: EnvCore, images: np.ndarray, chips: np.ndarray, out: Outcome) -> dict[str, np.ndarray]:
    return {
        **episode_info(core, images, chips),
        "correct": out.correct,
        "label": out.label,
        "prediction": out.prediction,
        "path": out.path,
        "usage": out.usage,
        "macs": out.macs,
        "energy_pj": out.energy_pj,
        "latency_ns": out.latency_ns,
    }


class CIMEnv(gym.Env[dict[str, np.ndarray], Any]):
    """Base of the single environments; subclasses set ``action_type`` and document themselves."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    action_type: ClassVar[type]

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r} is not allowed: these environments do not render (None)")
        self.config = EnvConfig.from_kwargs(kwargs)
        self.core = EnvCore(self.config, self.action_type.variant, self.action_type.default_depth)
        self.act = self.action_type(self.core)
        self.action_space = self.act.space
        self.observation_space = observation_space(self.core)
        self.drawer = EpisodeDrawer(self.core)
        self._episode: tuple[np.ndarray, np.ndarray] | None = None
        self._obs: dict[str, np.ndarray] | None = None

    @property
    def num_images(self) -> int:
        """Images in the configured split: the ``image`` reset option takes 0 to ``num_images - 1``."""
        return len(self.core.labels)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self.drawer.ensure_pool(self.np_random, reseeded=seed is not None)
        images, chips = self.drawer.draw(self.np_random, 1, options)
        self._episode = (images, chips)
        self._obs = {k: v[0] for k, v in self.core.observe(images, chips).items()}
        return self._obs, {k: v[0].item() for k, v in episode_info(self.core, images, chips).items()}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._episode is None or self._obs is None:
            raise gym.error.ResetNeeded("step() was called before reset() (every episode is one step: reset again)")
        actions = self.act.check(action, 1)
        images, chips = self._episode
        out = self.core.run(images, chips, self.act, actions)
        self._episode = None
        self.drawer.episodes_done += 1
        info = {k: v[0].item() if v[0].ndim == 0 else v[0] for k, v in outcome_info(self.core, images, chips, out).items()}
        return {k: v.copy() for k, v in self._obs.items()}, float(out.reward[0]), True, False, info


class CIMVectorEnv(VectorEnv[dict[str, np.ndarray], Any, np.ndarray]):
    """Native batched version: N episodes per step in one forward per distinct chip, same-step autoreset.

    ``step`` returns the observations of the *next* episodes (every episode ends after one step); the finished
    episodes' observations and infos are in ``info["final_obs"]`` and ``info["final_info"]``.
    """

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
    action_type: ClassVar[type]

    def __init__(self, num_envs: int = 1, render_mode: str | None = None, **kwargs: Any) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} is not allowed: expected an integer >= 1")
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r} is not allowed: these environments do not render (None)")
        self.num_envs = num_envs
        self.config = EnvConfig.from_kwargs(kwargs)
        self.core = EnvCore(self.config, self.action_type.variant, self.action_type.default_depth)
        self.act = self.action_type(self.core)
        self.single_action_space = self.act.space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.single_observation_space = observation_space(self.core)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.drawer = EpisodeDrawer(self.core)
        self._episodes: tuple[np.ndarray, np.ndarray] | None = None
        self._obs: dict[str, np.ndarray] | None = None

    @property
    def num_images(self) -> int:
        """Images in the configured split: the ``image`` reset option takes 0 to ``num_images - 1``."""
        return len(self.core.labels)

    def _start(self, options: dict[str, Any] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        images, chips = self.drawer.draw(self.np_random, self.num_envs, options)
        self._episodes = (images, chips)
        self._obs = self.core.observe(images, chips)
        return self._obs, episode_info(self.core, images, chips)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        self.drawer.ensure_pool(self.np_random, reseeded=seed is not None)
        return self._start(options)

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._episodes is None or self._obs is None:
            raise gym.error.ResetNeeded("step() was called before reset()")
        checked = self.act.check(actions, self.num_envs)
        images, chips = self._episodes
        out = self.core.run(images, chips, self.act, checked)
        final_obs, final_info = self._obs, outcome_info(self.core, images, chips, out)
        self.drawer.episodes_done += self.num_envs
        self.drawer.ensure_pool(self.np_random, reseeded=False)
        obs, info = self._start(None)
        done = np.ones(self.num_envs, dtype=bool)
        info = {**info, "final_obs": final_obs, "_final_obs": done, "final_info": final_info, "_final_info": done}
        return obs, out.reward, done, np.zeros(self.num_envs, dtype=bool), info
