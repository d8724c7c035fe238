"""Generic single and batched environments over :class:`EnvCore` and an action type.

An episode is one decision: ``reset`` draws an image and a chip (sigma and its noise instance) and observes them,
``step`` runs the image on the chip with the action and ends the episode (``terminated=True``).

The batched environment offers Gymnasium's three autoreset modes. With one-step episodes every episode ends at every
step, so the choice is a trade-off: ``same_step`` (the default) starts the next episodes inside the step that ends
the current ones (one decision per step, the finished episodes' observations in ``info["final_obs"]``);
``next_step`` returns the finished episodes' observations and starts new ones at the *next* call, which ignores its
actions (so half the steps are resets: half the throughput per ``step`` call), but it is what Gymnasium's vector
observation wrappers (``FlattenObservation``, ``NormalizeObservation``, ...) require; ``disabled`` leaves the
resets to the caller (``reset(options={"reset_mask": mask})``).
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
from cim_gym.envs.render import RENDER_MODES, Decision, EpisodeRenderer, available_render_modes, check_render_mode

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
    if cfg.observe_chip:
        obs["chip"] = spaces.Box(0.0, 1.0, (core.descriptor_dim,), np.float32)
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
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options={options!r} is not allowed: expected None or a dict of {OPTION_KEYS}")
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}: expected some of {OPTION_KEYS}")
        images = rng.integers(len(core.labels), size=n)
        chips = self.draw_chips(rng, n)
        if options.get("image") is not None:
            images = self._pinned("image", options["image"], n, len(core.labels))
        pool = core.pool
        if options.get("sigma") is not None:
            sigma = self._pinned_sigma(options["sigma"], n)
            groups = np.array([core.sigma_index(float(s)) for s in sigma], dtype=np.int64)
            chips = pool.indices(groups, pool.locate(chips)[1])
        if options.get("chip") is not None:
            if options.get("sigma") is not None:  # the chip number within the pinned sigma
                chips = pool.indices(pool.locate(chips)[0], self._pinned("chip", options["chip"], n, per_sigma))
            else:  # the chip's index in the whole pool
                chips = self._pinned("chip", options["chip"], n, core.num_chips)
        return images, chips

    @staticmethod
    def _pinned_sigma(value: Any, n: int) -> np.ndarray:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            array = np.array([np.nan])
        if array.ndim == 0:
            array = np.broadcast_to(array, (n,))
        if array.shape != (n,) or not np.isfinite(array).all():
            raise ValueError(f"reset option sigma={value!r} is not allowed: expected a finite number (or {n} of them)")
        return array

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


def plain_seed(seed: Any) -> int | None:
    """A ``reset`` seed as Gymnasium wants it: numpy integers become Python ints (anything else is checked by it)."""
    return int(seed) if isinstance(seed, np.integer) else seed


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
        **out.extras,
    }


def decision_of(act: Any, out: Outcome, row: int, action: np.ndarray) -> Decision:
    """What episode ``row`` of a batch did, for its frame."""
    entropy = out.extras.get("exit_entropy")
    thresholds = act.thresholds(action) if hasattr(act, "thresholds") else None
    return Decision(
        path=np.asarray(out.path[row]), prediction=int(out.prediction[row]), label=int(out.label[row]),
        macs=float(out.macs[row]), usage=float(out.usage[row]), energy_pj=float(out.energy_pj[row]),
        exit_entropy=None if entropy is None else np.asarray(entropy[row]),
        thresholds=None if thresholds is None else np.asarray(thresholds),
    )


class _CoreFacts:
    """What the single and the vector environments tell about their shared :class:`EnvCore`."""

    core: EnvCore

    @property
    def num_images(self) -> int:
        """Images in the configured split: the ``image`` reset option takes 0 to ``num_images - 1``."""
        return len(self.core.labels)

    @property
    def backbone_sha256(self) -> str | None:
        """Content hash of the backbone checkpoint: a policy's run folder records it, so that a policy is never
        evaluated on a backbone retrained since."""
        return self.core.backbone.meta.get("sha256")


class CIMEnv(_CoreFacts, gym.Env[dict[str, np.ndarray], Any]):
    """Base of the single environments; subclasses set ``action_type`` and ``env_id`` and document themselves.

    :param render_mode: None (nothing is ever drawn), "rgb_array" (``render()`` returns the current episode as an
        RGB array: the image, the chip, and once the action is taken, the path, the prediction against the label
        and the MACs) or "human" (the same picture in a window; needs a display).
    :param kwargs: the fields of :class:`EnvConfig`.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": available_render_modes(), "render_fps": 2}
    """``render_modes``: "rgb_array", and "human" where a display exists (as this machine was when imported)."""
    action_type: ClassVar[type]
    env_id: ClassVar[str]

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        self.render_mode = check_render_mode(render_mode)
        self.config = EnvConfig.from_kwargs(kwargs)
        self.core = EnvCore(self.config, self.action_type.variant, self.action_type.default_depth)
        self.act = self.action_type(self.core)
        self.action_space = self.act.space
        self.observation_space = observation_space(self.core)
        self.drawer = EpisodeDrawer(self.core)
        self._episode: tuple[np.ndarray, np.ndarray] | None = None
        self._obs: dict[str, np.ndarray] | None = None
        self._renderer: EpisodeRenderer | None = None
        self._shown: tuple[int, int, Decision | None] | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=plain_seed(seed))
        self.drawer.ensure_pool(self.np_random, reseeded=seed is not None)
        images, chips = self.drawer.draw(self.np_random, 1, options)
        self._episode = (images, chips)
        self._obs = {k: v[0] for k, v in self.core.observe(images, chips).items()}
        self._shown = (int(images[0]), int(chips[0]), None)
        if self.render_mode == "human":
            self.render()
        return self._obs, {k: v[0].item() for k, v in episode_info(self.core, images, chips).items()}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._episode is None or self._obs is None:
            raise gym.error.ResetNeeded("step() was called before reset() (every episode is one step: reset again)")
        actions = self.act.check(action, 1)
        images, chips = self._episode
        out = self.core.run(images, chips, self.act, actions)
        self._episode = None
        self.drawer.episodes_done += 1
        if self.render_mode is not None:
            self._shown = (int(images[0]), int(chips[0]), decision_of(self.act, out, 0, actions[0]))
            if self.render_mode == "human":
                self.render()
        info = {k: v[0].item() if v[0].ndim == 0 else v[0] for k, v in outcome_info(self.core, images, chips, out).items()}
        return {k: v.copy() for k, v in self._obs.items()}, float(out.reward[0]), True, False, info

    @property
    def renderer(self) -> EpisodeRenderer:
        """The frame drawer, built on first use."""
        if self._renderer is None:
            self._renderer = EpisodeRenderer(self.env_id, self.core, self.act.render_kind)
        return self._renderer

    def render(self) -> np.ndarray | None:
        """The current episode as an RGB array (HEIGHT, WIDTH, 3) uint8 ("rgb_array"), or shown in a window
        ("human", returns None). Right after ``reset`` the frame shows the image and the chip; after ``step`` it adds
        the path taken, the prediction against the label and the cost."""
        if self.render_mode is None:
            gym.logger.warn(f"{self.env_id}: render() was called without a render mode; "
                            f"make the environment with render_mode in {list(RENDER_MODES)}")
            return None
        if self._shown is None:
            raise gym.error.ResetNeeded("render() was called before reset(): there is no episode to draw")
        frame = self.renderer.frame(*self._shown)
        if self.render_mode == "human":
            self.renderer.show(frame, self.metadata["render_fps"])
            return None
        return frame

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
        super().close()


AUTORESET_MODES = {"same_step": AutoresetMode.SAME_STEP, "next_step": AutoresetMode.NEXT_STEP,
                   "disabled": AutoresetMode.DISABLED}


def parse_autoreset_mode(value: Any) -> AutoresetMode:
    """An :class:`~gymnasium.vector.AutoresetMode` from the enum itself, its value ("NextStep") or its snake-case
    name ("next_step"); anything else is a ValueError."""
    if isinstance(value, AutoresetMode):
        return value
    if isinstance(value, str):
        for name, mode in AUTORESET_MODES.items():
            if value in (name, mode.value, mode.name):
                return mode
    raise ValueError(f"autoreset_mode={value!r} is not allowed: expected a gymnasium.vector.AutoresetMode or one of "
                     f"{sorted(AUTORESET_MODES)}")


def vector_info(num_envs: int, parts: list[tuple[np.ndarray, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Gymnasium's vector info: for every key an array over the sub-environments and a ``_key`` mask of the rows
    that have it; ``parts`` are (rows, values of those rows)."""
    info: dict[str, np.ndarray] = {}
    for rows, values in parts:
        for key, value in values.items():
            value = np.asarray(value)
            if key not in info:
                info[key] = np.zeros((num_envs, *value.shape[1:]), dtype=value.dtype)
                info[f"_{key}"] = np.zeros(num_envs, dtype=bool)
            info[key][rows] = value
            info[f"_{key}"][rows] = True
    return info


class CIMVectorEnv(_CoreFacts, VectorEnv[dict[str, np.ndarray], Any, np.ndarray]):
    """Native batched version: N episodes per step in one forward per distinct chip.

    :param num_envs: episodes per step (N >= 1).
    :param autoreset_mode: ``"same_step"`` (default): ``step`` returns the observations of the *next* episodes and
        the finished ones' in ``info["final_obs"]`` / ``info["final_info"]``. ``"next_step"``: ``step`` returns the
        finished episodes' observations, and the next call starts new episodes (its actions are ignored, its rewards
        are 0): what Gymnasium's vector observation wrappers need, at half the decisions per call. ``"disabled"``:
        the caller resets (``reset()`` or ``reset(options={"reset_mask": mask})``) before stepping again.
        ``metadata["autoreset_mode"]`` says which is in force. Also accepts a ``gymnasium.vector.AutoresetMode``.
    :param render_mode: None or "rgb_array": ``render()`` returns one frame per sub-environment (see
        :meth:`CIMEnv.render`).
    :param kwargs: the fields of :class:`EnvConfig`.
    """

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"],
                                          "render_fps": 2}
    action_type: ClassVar[type]
    env_id: ClassVar[str]

    def __init__(self, num_envs: int = 1, render_mode: str | None = None,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP, **kwargs: Any) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} is not allowed: expected an integer >= 1")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r} is not allowed for the batched environment: expected None "
                             "or 'rgb_array' (one frame per sub-environment)")
        self.render_mode = render_mode
        self.autoreset_mode = parse_autoreset_mode(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self.num_envs = int(num_envs)
        self.config = EnvConfig.from_kwargs(kwargs)
        self.core = EnvCore(self.config, self.action_type.variant, self.action_type.default_depth)
        self.act = self.action_type(self.core)
        self.single_action_space = self.act.space
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = observation_space(self.core)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.drawer = EpisodeDrawer(self.core)
        self._episodes: tuple[np.ndarray, np.ndarray] | None = None
        self._obs: dict[str, np.ndarray] | None = None
        self._ended = np.zeros(self.num_envs, dtype=bool)
        self._decisions: list[Decision | None] = [None] * self.num_envs
        self._renderer: EpisodeRenderer | None = None

    def _start(self, rows: np.ndarray, options: dict[str, Any] | None) -> None:
        """Draw new episodes for ``rows`` (a bool mask) and observe them."""
        images, chips = self.drawer.draw(self.np_random, self.num_envs, options)
        obs = self.core.observe(images[rows], chips[rows])
        if self._episodes is None or self._obs is None:
            self._episodes, self._obs = (images, chips), obs
        else:
            self._episodes[0][rows], self._episodes[1][rows] = images[rows], chips[rows]
            for key, value in obs.items():
                self._obs[key][rows] = value
        self._ended[rows] = False
        for i in np.flatnonzero(rows):
            self._decisions[i] = None

    def _current(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        assert self._episodes is not None and self._obs is not None
        every = np.arange(self.num_envs)
        info = vector_info(self.num_envs, [(every, episode_info(self.core, *self._episodes))])
        return {k: v.copy() for k, v in self._obs.items()}, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start new episodes: all of them, or those of ``options["reset_mask"]`` (a bool array of shape (N,));
        ``options`` may also pin ``sigma``, ``chip`` and ``image`` (a value, or N of them)."""
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options={options!r} is not allowed: expected None or a dict of "
                             f"{(*OPTION_KEYS, 'reset_mask')}")
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        elif not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (self.num_envs,) or not mask.any():
            raise ValueError(f"reset option reset_mask={mask!r} is not allowed: expected a numpy bool array of shape "
                             f"({self.num_envs},) with at least one True")
        elif self._episodes is None and not mask.all():
            raise ValueError("reset option reset_mask is not allowed on the first reset: every sub-environment starts "
                             "an episode then (leave reset_mask out)")
        elif seed is not None and not mask.all():
            raise ValueError(f"seed={seed!r} with a partial reset_mask is not allowed: a seed draws the chip pool "
                             "that every sub-environment shares, so seed a reset of all of them (no reset_mask)")
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(plain_seed(seed))
        self.drawer.ensure_pool(self.np_random, reseeded=seed is not None)
        self._start(mask, options)
        return self._current()

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._episodes is None or self._obs is None:
            raise gym.error.ResetNeeded("step() was called before reset()")
        n, mode = self.num_envs, self.autoreset_mode
        if mode is AutoresetMode.DISABLED and self._ended.any():
            raise gym.error.ResetNeeded(
                f"sub-environments {np.flatnonzero(self._ended).tolist()} have ended and autoreset_mode is disabled: "
                "reset them first (reset(), or reset(options={'reset_mask': mask}))")
        checked = self.act.check(actions, n)
        resetting = self._ended.copy() if mode is AutoresetMode.NEXT_STEP else np.zeros(n, dtype=bool)
        running = np.flatnonzero(~resetting)
        rewards, terminated = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=bool)
        finished: dict[str, np.ndarray] = {}
        if len(running):
            images, chips = self._episodes[0][running], self._episodes[1][running]
            out = self.core.run(images, chips, self.act, checked[running])
            rewards[running], terminated[running] = out.reward, True
            finished = outcome_info(self.core, images, chips, out)
            self.drawer.episodes_done += len(running)
            if self.render_mode is not None:
                for j, i in enumerate(running):
                    self._decisions[i] = decision_of(self.act, out, j, checked[i])
        truncated = np.zeros(n, dtype=bool)
        if mode is AutoresetMode.SAME_STEP:
            final_obs = {k: v.copy() for k, v in self._obs.items()}
            self.drawer.ensure_pool(self.np_random, reseeded=False)
            self._start(np.ones(n, dtype=bool), None)
            obs, info = self._current()
            info.update(final_obs=final_obs, _final_obs=terminated.copy(),
                        final_info=vector_info(n, [(running, finished)]), _final_info=terminated.copy())
            return obs, rewards, terminated, truncated, info
        parts = [(running, finished)] if len(running) else []
        if resetting.any():
            self.drawer.ensure_pool(self.np_random, reseeded=False)
            self._start(resetting, None)
            rows = np.flatnonzero(resetting)
            parts.append((rows, episode_info(self.core, self._episodes[0][rows], self._episodes[1][rows])))
        self._ended[running] = True
        return {k: v.copy() for k, v in self._obs.items()}, rewards, terminated, truncated, vector_info(n, parts)

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One RGB frame per sub-environment's current episode (with its outcome once it has ended and not yet
        been replaced: after a ``next_step`` or ``disabled`` step); None without a render mode."""
        if self.render_mode is None:
            gym.logger.warn(f"{self.env_id}: render() was called without a render mode; make the vector environment "
                            "with render_mode='rgb_array'")
            return None
        if self._episodes is None:
            raise gym.error.ResetNeeded("render() was called before reset(): there is no episode to draw")
        if self._renderer is None:
            self._renderer = EpisodeRenderer(self.env_id, self.core, self.act.render_kind)
        images, chips = self._episodes
        return tuple(self._renderer.frame(int(images[i]), int(chips[i]), self._decisions[i] if self._ended[i] else None)
                     for i in range(self.num_envs))
