"""A toy batched environment with a known optimum, speaking the cim-gym vector protocol the agents rely on.

Two "chips": sigma 0 and sigma 1. The best block mask is ``TARGETS[chip]``; the reward is 1 minus the number of
blocks that differ from it (so 1 only for the target), plus optional Gaussian noise drawn at every step (a per-read
noise: the same action on the same episode gets another reward). ``reset(options={"image", "chip"})`` pins episodes.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space

TARGETS = np.array([[1, 1, 0], [0, 1, 1]], dtype=np.int8)
SIGMAS = np.array([0.0, 1.0])
TOY_ID = "ToyMask-v0"


class ToyMaskVectorEnv(VectorEnv):
    metadata: dict[str, Any] = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, noise: float = 0.0, penalty: float = 1.0) -> None:
        self.num_envs, self.noise = num_envs, noise
        self.single_observation_space = spaces.Dict({
            "features": spaces.Box(-1.0, 1.0, (2,), np.float32), "sigma": spaces.Box(0.0, 1.0, (1,), np.float32)})
        self.single_action_space = spaces.MultiBinary(3)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.features = np.random.default_rng(123).uniform(-1, 1, (50, 2)).astype(np.float32)
        self.episodes: tuple[np.ndarray, np.ndarray] | None = None

    def _start(self, options: dict[str, Any] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        images = self.np_random.integers(len(self.features), size=self.num_envs)
        chips = self.np_random.integers(2, size=self.num_envs)
        options = options or {}
        if options.get("image") is not None:
            images = np.broadcast_to(np.asarray(options["image"]), (self.num_envs,)).copy()
        if options.get("chip") is not None:
            chips = np.broadcast_to(np.asarray(options["chip"]), (self.num_envs,)).copy()
        self.episodes = (images, chips)
        obs = {"features": self.features[images], "sigma": SIGMAS[chips].astype(np.float32)[:, None]}
        return obs, {"image_index": images, "chip_id": chips, "sigma": SIGMAS[chips]}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        return self._start(options)

    def step(self, actions: Any) -> Any:
        assert self.episodes is not None
        images, chips = self.episodes
        actions = np.asarray(actions)
        wrong = (actions != TARGETS[chips]).sum(1)
        reward = 1.0 - wrong + self.noise * self.np_random.standard_normal(self.num_envs)
        final = {"correct": wrong == 0, "usage": actions.mean(1), "sigma": SIGMAS[chips], "path": actions}
        obs, info = self._start(None)
        done = np.ones(self.num_envs, dtype=bool)
        return obs, reward, done, np.zeros(self.num_envs, dtype=bool), {**info, "final_info": final}


def register_toy() -> None:
    if TOY_ID not in gym.registry:
        gym.register(id=TOY_ID, vector_entry_point=f"{__name__}:ToyMaskVectorEnv")
