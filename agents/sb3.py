"""stable-baselines3 on the batched cim-gym environments: a VecEnv adapter, training, safe saving and loading.

SB3 steps a :class:`~stable_baselines3.common.vec_env.VecEnv`. Its ``DummyVecEnv`` of N single environments runs N
forwards of one image per step; :class:`SB3VecEnvAdapter` instead wraps the environments' *native* vector
environment (``gym.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``), which runs the N episodes
of a step in one forward per distinct chip (``benchmarks/bench_sb3.py`` measures the difference).

Every episode is one decision, so the algorithms see a contextual bandit: the return of a step is its reward. The
defaults of :func:`default_algo_kwargs` follow from that (see the comments there).

Saving never pickles: :func:`save_sb3_policy` writes the policy's weights as ``policy.safetensors`` and returns a
JSON description; :func:`load_sb3_policy` rebuilds the policy from both. :func:`save_sb3_checkpoint` adds what a
resumed run needs (optimizer states in ``checkpoint.pt``, read with ``torch.load(weights_only=True)``, and an
off-policy replay buffer as ``replay_buffer.safetensors``); ``train_sb3(..., resume_from=folder)`` continues it.

Agents use the environments only through Gymnasium; importing :mod:`cim_gym` just registers the ids.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.torch_layers import CombinedExtractor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn
from torch import nn

import cim_gym  # noqa: F401  (registers the environment ids)
from agents.runs import space_to_json
from cim_gym.files import atomic_write, file_sha256

__all__ = [
    "ALGOS",
    "SUPPORTED_ENVS",
    "EpisodeStatsCallback",
    "SB3Interrupted",
    "SB3Policy",
    "SB3VecEnvAdapter",
    "ScaledCombinedExtractor",
    "default_algo_kwargs",
    "load_sb3_policy",
    "make_sb3",
    "restore_sb3_checkpoint",
    "save_sb3_checkpoint",
    "save_sb3_policy",
    "train_sb3",
]

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "sac": SAC}
"""The stable-baselines3 algorithms :func:`train_sb3` trains, by their CLI names."""

_ALL_ENVS = ("CIMBlockDrop-v0", "CIMEarlyExit-v0", "CIMExitThresholds-v0")
SUPPORTED_ENVS: dict[str, tuple[str, ...]] = {
    "ppo": _ALL_ENVS,
    "a2c": _ALL_ENVS,
    "dqn": ("CIMEarlyExit-v0",),  # DQN needs a Discrete action space: only the exit choice has one
    "sac": ("CIMExitThresholds-v0",),  # SAC needs a Box action space: only the thresholds have one
}
"""Which environment ids each algorithm trains on."""

POLICY_FILE = "policy.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
REPLAY_FILE = "replay_buffer.safetensors"
FORMAT = "stable-baselines3"
FORMAT_VERSION = 1

# Classes a saved description may name (policy, activation, optimizer, feature extractor): nothing else is imported.
_ALLOWED_MODULES = ("stable_baselines3.", "torch.nn.", "torch.optim.", "agents.")


# ---- the adapter ----------------------------------------------------------------------------------------------------
def _split_info(info: Mapping[str, Any], n: int, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Gymnasium's batched info dict (``info[k][i]``, present where ``info["_k"][i]``) as N per-env dicts."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    skip = set(skip)
    for key, value in info.items():
        if key.startswith("_") or key in skip:
            continue
        mask = info.get(f"_{key}")
        rows = range(n) if mask is None else np.flatnonzero(mask)
        if isinstance(value, Mapping):
            nested = _split_info(value, n)
            for i in rows:
                out[i][key] = nested[i]
            continue
        array = np.asarray(value)
        if array.ndim == 0 or array.shape[0] != n:
            raise ValueError(f"info[{key!r}] has shape {array.shape}: a vector environment's info must hold "
                             f"{n} entries per key")
        items = array.tolist() if array.ndim == 1 else list(array)  # Python scalars, or one row per env
        for i in rows:
            out[i][key] = items[i]
    return out


class SB3VecEnvAdapter(VecEnv):
    """A Gymnasium vector environment as a stable-baselines3 ``VecEnv``: one batched call per step.

    :param env: a Gymnasium ``VectorEnv`` with same-step autoreset, e.g.
        ``gym.make_vec("CIMBlockDrop-v0", num_envs=N, vectorization_mode="vector_entry_point")``.

    Conventions mapped onto SB3's:

    - ``step`` returns the observations of the next episodes (same-step autoreset); the info dict of a finished
      episode holds its last step's info (``correct``, ``usage``, ...), ``terminal_observation`` and
      ``TimeLimit.truncated``; the new episode's reset info is in ``reset_infos``.
    - :meth:`seed` (SB3 stores seed, seed+1, ...) seeds the batched environment's one generator with the first
      seed at the next :meth:`reset`; :meth:`set_options` per-env dicts are passed as one options dict (equal
      dicts as they are; different ones stacked key by key into arrays of N values, e.g. per-env ``sigma``).
    - The N environments are one object: :meth:`get_attr` returns its attribute for each index;
      :meth:`set_attr` and :meth:`env_method` act on all of them at once, so they refuse a strict subset of indices.
    """

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        if not isinstance(env, gym.vector.VectorEnv):
            raise TypeError(f"env={env!r} is not allowed: expected a gymnasium.vector.VectorEnv (use gym.make_vec)")
        mode = env.metadata.get("autoreset_mode")
        if isinstance(mode, str):
            mode = AutoresetMode(mode)
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(f"env autoreset_mode={mode!r} is not allowed: the adapter needs AutoresetMode.SAME_STEP "
                             "(the cim-gym native vector environments use it)")
        self.env = env
        self._actions: np.ndarray | None = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

    # -- stepping --
    def reset(self) -> VecEnvObs:
        """Reset every episode, seeding with the first stored seed (if any) and passing the stored options."""
        seed = self._seeds[0]
        options = self._merged_options()
        obs, info = self.env.reset(seed=seed, options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = _split_info(info, self.num_envs)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() was called without step_async(actions)")
        actions, self._actions = self._actions, None
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        terminated, truncated = np.asarray(terminated, dtype=bool), np.asarray(truncated, dtype=bool)
        dones = terminated | truncated
        infos = _split_info(info, self.num_envs, skip=("final_obs", "final_info"))
        if dones.any():
            final_infos = _split_info(info["final_info"], self.num_envs) if "final_info" in info else infos
            final_obs = info["final_obs"]
            # A copy, so that terminal observations never alias arrays the caller may still modify.
            final_obs = ({k: np.array(v) for k, v in final_obs.items()} if isinstance(final_obs, Mapping)
                         else np.array(final_obs))
            for i in np.flatnonzero(dones):
                self.reset_infos[i] = infos[i]
                terminal = ({k: v[i] for k, v in final_obs.items()} if isinstance(final_obs, dict) else final_obs[i])
                infos[i] = {**final_infos[i], "terminal_observation": terminal,
                            "TimeLimit.truncated": bool(truncated[i] and not terminated[i])}
        for i in np.flatnonzero(~dones):
            infos[i]["TimeLimit.truncated"] = False
        return obs, np.asarray(rewards, dtype=np.float32), dones, infos

    def _merged_options(self) -> dict[str, Any] | None:
        options = self._options
        if all(not o for o in options):
            return None
        first = options[0]
        if all(o.keys() == first.keys() and all(_same(o[k], first[k]) for k in first) for o in options):
            return dict(first)
        keys = set().union(*(o.keys() for o in options))
        if any(o.keys() != keys for o in options):
            raise ValueError(f"set_options({options!r}) is not allowed here: the batched environment takes one "
                             "options dict, so per-env options must all name the same keys")
        return {k: np.asarray([o[k] for o in options]) for k in sorted(keys)}

    # -- the VecEnv plumbing --
    def close(self) -> None:
        self.env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs  # the environments do not render

    def _all_or_fail(self, what: str, indices: VecEnvIndices) -> list[int]:
        targets = list(self._get_indices(indices))
        if sorted(targets) != list(range(self.num_envs)):
            raise ValueError(f"{what} with indices={indices!r} is not allowed: the {self.num_envs} environments are one "
                             "batched environment, so it applies to all of them (indices=None)")
        return targets

    def _attr(self, name: str) -> Any:
        try:
            return getattr(self.env, name)
        except AttributeError:
            return getattr(self.env.unwrapped, name)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The batched environment's attribute, once per requested index."""
        value = self._attr(attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set the attribute on the batched environment (all indices)."""
        self._all_or_fail("set_attr", indices)
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        """Call the method once on the batched environment; its result is returned once per index."""
        targets = self._all_or_fail("env_method", indices)
        result = self._attr(method_name)(*method_args, **method_kwargs)
        return [result for _ in targets]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Whether a wrapper of ``wrapper_class`` is in the batched environment's vector-wrapper chain."""
        env, found = self.env, False
        while True:
            found = found or isinstance(env, wrapper_class)
            if not isinstance(env, gym.vector.VectorWrapper):
                break
            env = env.env
        return [found for _ in self._get_indices(indices)]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return a == b


# ---- the policy's input scaling ---------------------------------------------------------------------------------
class ScaledCombinedExtractor(CombinedExtractor):
    """SB3's ``CombinedExtractor`` after an affine map of every bounded Box entry onto [-1, 1].

    The features span [0, ~15] and sigma [0, 0.15]: without the map, sigma would be a hundred times smaller than
    its neighbours at the first layer. The map comes from the observation space's bounds (fixed, no statistics
    to save; an entry whose bounds are equal maps to 0, an unbounded one passes unchanged).
    """

    def __init__(self, observation_space: spaces.Dict, cnn_output_dim: int = 256, normalized_image: bool = False) -> None:
        super().__init__(observation_space, cnn_output_dim=cnn_output_dim, normalized_image=normalized_image)
        self._scaled: dict[str, str] = {}
        for i, (key, sub) in enumerate(observation_space.spaces.items()):
            if not isinstance(sub, spaces.Box) or not (np.isfinite(sub.low).all() and np.isfinite(sub.high).all()):
                continue
            low, high = sub.low.astype(np.float64), sub.high.astype(np.float64)
            half = (high - low) / 2
            scale = np.where(half > 0, 1 / np.where(half > 0, half, 1), 0.0)
            self.register_buffer(f"center_{i}", torch.as_tensor((low + high) / 2, dtype=torch.float32), persistent=False)
            self.register_buffer(f"scale_{i}", torch.as_tensor(scale, dtype=torch.float32), persistent=False)
            self._scaled[key] = str(i)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        scaled = dict(observations)
        for key, i in self._scaled.items():
            scaled[key] = (observations[key] - getattr(self, f"center_{i}")) * getattr(self, f"scale_{i}")
        return super().forward(scaled)


# ---- training ---------------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} is not allowed: expected an integer >= {low}")
    return int(value)


def check_pairing(algo: str, env_id: str) -> None:
    """Raise a ``ValueError`` naming both when ``algo`` does not train on ``env_id``."""
    if algo not in ALGOS:
        raise ValueError(f"algo={algo!r} is not allowed: expected one of {sorted(ALGOS)}")
    if env_id not in SUPPORTED_ENVS[algo]:
        raise ValueError(f"algo={algo!r} does not train on env_id={env_id!r}: {algo} supports "
                         f"{list(SUPPORTED_ENVS[algo])}")


def default_algo_kwargs(algo: str, num_envs: int) -> dict[str, Any]:
    """Hyper-parameters for one-decision episodes (override any of them through ``algo_kwargs``).

    Every episode ends after its first step, so the return is the immediate reward and nothing bootstraps: the
    discount ``gamma`` and GAE's ``lambda`` never multiply anything (``gamma=0`` states it), target networks and
    their update rate do not matter (the TD target is the reward itself), and "rollout length" only sets how many
    independent (context, action, reward) samples an update sees.
    """
    if algo not in ALGOS:
        raise ValueError(f"algo={algo!r} is not allowed: expected one of {sorted(ALGOS)}")
    num_envs = _check_int("num_envs", num_envs, 1)
    if algo == "ppo":
        # About 256 samples per update (at least 4 steps per env) in 4 equal minibatches (n_steps a multiple of 4
        # makes them divide exactly): PPO's clip bounds each update's step, so on a bandit more, smaller updates
        # learn faster per episode (measured on CIMBlockDrop-v0, blockdrop reward, N=64: mean reward 0.56 after 24k
        # episodes with 256 per update against 0.49 with 1024). A little entropy keeps the bandit exploring; a
        # larger step than SB3's 3e-4 since the budgets are short.
        n_steps = 4 * math.ceil(64 / num_envs)
        return {"n_steps": n_steps, "batch_size": n_steps * num_envs // 4, "n_epochs": 4, "gamma": 0.0,
                "gae_lambda": 1.0, "ent_coef": 0.01, "learning_rate": 1e-3}
    if algo == "a2c":
        # One synchronous update per ~128 samples (A2C has no minibatches; N envs x n_steps is its batch).
        return {"n_steps": math.ceil(128 / num_envs), "gamma": 0.0, "gae_lambda": 1.0, "ent_coef": 0.01,
                "learning_rate": 1e-3}
    # Off-policy: a replay buffer of recent decisions, learning once it holds a few batches; a gradient step per
    # vector step, one per 64 new episodes when N >= 64, so each sample is replayed about batch_size / 64 times
    # there (2 for DQN, 4 for SAC; more when N < 64). More did not
    # pay: SAC on CIMExitThresholds-v0 (blockdrop reward, N=64, 12k episodes) ended at mean reward 0.32-0.33 with
    # 1, 4 or 8 gradient steps per vector step (the best constant thresholds give 0.30 there).
    common = {"buffer_size": 50_000, "learning_starts": max(512, 4 * num_envs), "train_freq": 1,
              "gradient_steps": max(1, num_envs // 64), "gamma": 0.0}
    if algo == "dqn":
        return {**common, "batch_size": 128, "learning_rate": 1e-3, "exploration_fraction": 0.2,
                "exploration_final_eps": 0.05}
    return {**common, "batch_size": 256, "learning_rate": 1e-3, "ent_coef": "auto"}


def make_sb3(
    algo: str,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    num_envs: int = 64,
    seed: int = 0,
    device: str = "auto",
    tensorboard_log: str | os.PathLike[str] | None = None,
    policy_kwargs: Mapping[str, Any] | None = None,
    algo_kwargs: Mapping[str, Any] | None = None,
    verbose: int = 0,
) -> BaseAlgorithm:
    """An untrained SB3 model (``MultiInputPolicy``) on the batched environment, seeded; see :func:`train_sb3`."""
    check_pairing(algo, env_id)
    num_envs = _check_int("num_envs", num_envs, 1)
    seed = _check_int("seed", seed, 0)
    venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **dict(env_kwargs or {}))
    env = SB3VecEnvAdapter(venv)
    given = dict(algo_kwargs or {})
    kwargs = {**default_algo_kwargs(algo, num_envs), **given}
    if algo == "ppo" and "batch_size" not in given:
        # Four equal minibatches of the rollout when they divide it, else the whole rollout as one.
        rollout = int(kwargs["n_steps"]) * num_envs
        kwargs["batch_size"] = rollout // 4 if rollout % 4 == 0 and rollout >= 8 else rollout
    pkw = {"features_extractor_class": ScaledCombinedExtractor, **dict(policy_kwargs or {})}
    return ALGOS[algo]("MultiInputPolicy", env, policy_kwargs=pkw, seed=seed, device=device,
                       tensorboard_log=None if tensorboard_log is None else str(tensorboard_log), verbose=verbose,
                       **kwargs)


def train_sb3(
    algo: str,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    num_envs: int = 64,
    total_timesteps: int = 50_000,
    seed: int = 0,
    device: str = "auto",
    tensorboard_log: str | os.PathLike[str] | None = None,
    callback: BaseCallback | list[BaseCallback] | None = None,
    policy_kwargs: Mapping[str, Any] | None = None,
    algo_kwargs: Mapping[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    verbose: int = 0,
) -> BaseAlgorithm:
    """Train PPO or A2C (any environment), DQN (``CIMEarlyExit-v0``) or SAC (``CIMExitThresholds-v0``).

    :param algo: "ppo", "a2c", "dqn" or "sac".
    :param env_id: a registered cim-gym id; ``env_kwargs`` are its ``gym.make`` arguments (an ``EnvConfig``).
    :param num_envs: episodes per batched step (one forward per distinct chip).
    :param total_timesteps: episodes of the whole run (one decision each); a resumed run stops at the same total.
    :param seed: seeds SB3 (torch, numpy, the action space) and the environment (hence the chip pool, unless
        ``chip_seed`` pins it).
    :param device: "auto", "cpu" or "cuda": where the policy trains (the environment has its own ``device``).
    :param tensorboard_log: folder of SB3's TensorBoard logs (None: none).
    :param callback: SB3 callbacks, e.g. :class:`EpisodeStatsCallback` for accuracy and path usage.
    :param policy_kwargs: ``MultiInputPolicy`` arguments (default feature extractor: :class:`ScaledCombinedExtractor`).
    :param algo_kwargs: algorithm arguments over :func:`default_algo_kwargs`.
    :param checkpoint_dir: on Ctrl-C, write a resumable checkpoint here (:func:`save_sb3_checkpoint`).
    :param resume_from: a folder written by :func:`save_sb3_checkpoint`: continue that run (pass the same
        settings). The environment is re-seeded with ``seed``, so an unpinned chip pool is the same pool again.
    :return: the trained model (``model.env`` is the :class:`SB3VecEnvAdapter`).
    :raises SB3Interrupted: on Ctrl-C (a ``KeyboardInterrupt`` carrying the model and the checkpoint's description).
    """
    total_timesteps = _check_int("total_timesteps", total_timesteps, 1)
    model = make_sb3(algo, env_id, env_kwargs, num_envs=num_envs, seed=seed, device=device,
                     tensorboard_log=tensorboard_log, policy_kwargs=policy_kwargs, algo_kwargs=algo_kwargs,
                     verbose=verbose)
    if resume_from is not None:
        restore_sb3_checkpoint(model, resume_from)
    remaining = total_timesteps - model.num_timesteps
    try:
        if remaining > 0:
            model.learn(remaining, callback=callback, reset_num_timesteps=resume_from is None, tb_log_name=algo)
    except KeyboardInterrupt as err:
        description = save_sb3_checkpoint(model, checkpoint_dir) if checkpoint_dir is not None else None
        raise SB3Interrupted(model, description) from err
    return model


class SB3Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`train_sb3`: ``model`` as it stood, and the description of the policy the checkpoint
    holds (None without ``checkpoint_dir``), for the caller's run record. A ``KeyboardInterrupt`` still."""

    def __init__(self, model: BaseAlgorithm, description: dict[str, Any] | None) -> None:
        super().__init__("training interrupted" + ("" if description is None else "; checkpoint saved"))
        self.model = model
        self.description = description


class EpisodeStatsCallback(BaseCallback):
    """Means of reward, accuracy, path usage and MACs over finished episodes, one row every ``every`` episodes.

    Each row goes to SB3's logger (``cim/*``: TensorBoard, CSV, stdout, whatever it is configured with), to
    ``rows`` and to ``on_row`` (e.g. a progress bar or a CSV writer). With ``progress=True`` a tqdm bar counts
    the timesteps and shows the latest means.
    """

    KEYS = ("correct", "usage", "macs")

    def __init__(self, every: int = 1024, on_row: Callable[[dict[str, float]], None] | None = None,
                 progress: bool = False, total_timesteps: int | None = None) -> None:
        super().__init__()
        self.every = _check_int("every", every, 1)
        self.on_row = on_row
        self.progress, self.total = progress, total_timesteps
        self.rows: list[dict[str, float]] = []
        self._sums = np.zeros(4)
        self._count = 0
        self._bar: Any = None

    def _on_training_start(self) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            total = self.total if self.total is not None else self.locals.get("total_timesteps")
            self._bar = tqdm(total=total, initial=self.num_timesteps, unit="ep", desc=type(self.model).__name__.lower())

    def _on_step(self) -> bool:
        dones, rewards, infos = self.locals["dones"], self.locals["rewards"], self.locals["infos"]
        for i in np.flatnonzero(dones):
            info = infos[i]
            self._sums += (float(rewards[i]), float(info.get("correct", np.nan)), float(info.get("usage", np.nan)),
                           float(info.get("macs", np.nan)))
            self._count += 1
        if self._bar is not None:
            self._bar.update(len(dones))
        if self._count >= self.every:
            self._emit()
        return True

    def _emit(self) -> None:
        means = self._sums / self._count
        row = {"timesteps": float(self.num_timesteps), "reward": float(means[0]), "accuracy": float(means[1]),
               "usage": float(means[2]), "macs": float(means[3])}
        self._sums[:], self._count = 0, 0
        self.rows.append(row)
        for key, value in row.items():
            if key != "timesteps":
                self.logger.record(f"cim/{key}", value)
        if self.on_row is not None:
            self.on_row(row)
        if self._bar is not None:
            self._bar.set_postfix(reward=f"{row['reward']:+.3f}", acc=f"{row['accuracy']:.3f}",
                                  used=f"{row['usage']:.2f}", refresh=False)

    def _on_training_end(self) -> None:
        if self._count:
            self._emit()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ---- descriptions: JSON that names classes without pickling them --------------------------------------------------
def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_class(name: str) -> type:
    module, _, qualname = name.partition(":")
    if not qualname or not (module + ".").startswith(_ALLOWED_MODULES):
        raise ValueError(f"class {name!r} is not allowed in a policy description: expected 'module:Class' from "
                         f"{[m.rstrip('.') for m in _ALLOWED_MODULES]}")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"{name!r} in a policy description is not a class")
    return obj


def _to_json(value: Any, where: str) -> Any:
    if isinstance(value, type):
        return {"__class__": _class_name(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{where}={value!r} cannot be saved as JSON: expected numbers, strings, lists, dicts or classes")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__class__"}:
            return _resolve_class(value["__class__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _algo_name(model: BaseAlgorithm) -> str:
    for name, cls in ALGOS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"model={type(model).__name__} is not allowed: expected one of {[c.__name__ for c in ALGOS.values()]}")


def _constructor_kwargs(policy: nn.Module) -> dict[str, Any]:
    """The policy's constructor arguments, less what the loader passes itself (spaces, schedule, module objects)."""
    params = dict(policy._get_constructor_parameters())
    for key in ("observation_space", "action_space", "lr_schedule", "features_extractor"):
        params.pop(key, None)
    return params


# ---- saving and loading the policy ----------------------------------------------------------------------------------
def save_sb3_policy(model: BaseAlgorithm, folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``model.policy``'s weights as ``<folder>/policy.safetensors`` (atomically); return its description.

    The description (JSON-serializable: algo, policy class, constructor arguments, spaces, file hash) is what
    :func:`load_sb3_policy` needs besides the file; the caller stores it (e.g. as the run's ``network``).
    """
    from safetensors.torch import save_model

    algo = _algo_name(model)
    policy = model.policy
    path = Path(folder) / POLICY_FILE
    atomic_write(path, lambda tmp: save_model(policy, str(tmp), metadata={"format": FORMAT, "algo": algo}))
    import stable_baselines3

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": algo,
        "policy_class": _class_name(type(policy)),
        "policy_kwargs": _to_json(_constructor_kwargs(policy), "policy_kwargs"),
        "observation_space": space_to_json(policy.observation_space),
        "action_space": space_to_json(policy.action_space),
        "file": POLICY_FILE,
        "sha256": file_sha256(path),
        "sb3_version": stable_baselines3.__version__,
    }


def _macs_of(module: nn.Module, observation_space: spaces.Space[Any], run: Callable[[Any], Any]) -> int:
    """MACs of the Linear and Conv layers that ``run(obs)`` executes for one observation (forward hooks)."""
    total = [0]

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        batch = inputs[0].shape[0]
        if isinstance(layer, nn.Linear):
            total[0] += output.numel() // batch * layer.in_features
        else:
            assert isinstance(layer, nn.modules.conv._ConvNd)
            total[0] += output.numel() // batch * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        sample = _zero_observation(observation_space)
        run(sample)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _zero_observation(space: spaces.Space[Any]) -> Any:
    if isinstance(space, spaces.Dict):
        return {k: _zero_observation(v) for k, v in space.spaces.items()}
    assert isinstance(space, spaces.Box)
    return np.clip(np.zeros(space.shape), space.low, space.high).astype(space.dtype)[None]


class SB3Policy:
    """A loaded SB3 policy: batched ``act`` in the environment's action space, and its decision cost.

    :param policy: the SB3 policy module (eval mode).
    :param description: its description from :func:`save_sb3_policy`.
    :param seed: seed of the generator of stochastic actions (``deterministic=False``), kept apart from torch's
        global one.
    """

    def __init__(self, policy: Any, description: Mapping[str, Any], seed: int = 0) -> None:
        self.policy = policy
        self.description = dict(description)
        self.algo: str = description["algo"]
        self.observation_space: spaces.Space[Any] = policy.observation_space
        self.action_space: spaces.Space[Any] = policy.action_space
        self.decision_macs: int = _macs_of(policy, self.observation_space,
                                           lambda obs: policy.predict(obs, deterministic=True))
        """MACs of one deterministic decision: the Linear/Conv layers the actor path runs for one observation
        (features extractor, actor MLP, action head; the critic is not run). SAC's actor also computes its
        log-std head, so it is counted."""
        generator = torch.Generator().manual_seed(_check_int("seed", seed, 0))
        self._cpu_state = generator.get_state()
        self._device = policy.device

    def act(self, obs_batch: Mapping[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of observations (dict of arrays with a leading batch axis), as the action space's
        dtype: (B, K) 0/1 masks, (B,) exits or (B, E-1) thresholds."""
        space = self.observation_space
        assert isinstance(space, spaces.Dict)
        if not isinstance(obs_batch, Mapping) or set(obs_batch) != set(space.spaces):
            got = sorted(obs_batch) if isinstance(obs_batch, Mapping) else type(obs_batch).__name__
            raise ValueError(f"obs_batch keys {got} are not allowed: expected {sorted(space.spaces)}")
        batch = None
        for key, sub in space.spaces.items():
            shape = np.shape(obs_batch[key])
            if shape[1:] != sub.shape or (batch is not None and shape[0] != batch) or len(shape) != len(sub.shape) + 1:
                raise ValueError(f"obs_batch[{key!r}] has shape {shape}: expected (B, *{sub.shape}) with one B for all keys")
            batch = shape[0]
        obs = {k: np.asarray(v, dtype=space.spaces[k].dtype) for k, v in obs_batch.items()}
        if deterministic:
            actions, _ = self.policy.predict(obs, deterministic=True)
        else:
            devices = [self._device] if self._device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.set_rng_state(self._cpu_state)
                if devices:
                    torch.cuda.manual_seed(int(torch.randint(2**31 - 1, ())))
                actions, _ = self.policy.predict(obs, deterministic=False)
                self._cpu_state = torch.get_rng_state()
        return np.asarray(actions).reshape(batch, *self.action_space.shape).astype(self.action_space.dtype)

    __call__ = act


def load_sb3_policy(
    folder: str | os.PathLike[str],
    description: Mapping[str, Any],
    observation_space: spaces.Space[Any],
    action_space: spaces.Space[Any],
    device: str = "cpu",
    seed: int = 0,
) -> SB3Policy:
    """Rebuild the policy that :func:`save_sb3_policy` wrote to ``folder`` (no pickle: JSON + safetensors).

    :param device: "cpu", "cuda[:index]" or "auto" (CUDA when present).
    :param seed: seed of the loaded policy's own generator of stochastic actions.

    :raises ValueError: the description is not an SB3 one, names a class outside SB3/torch/agents, or the spaces
        differ from the ones the policy was trained on; the file is missing, altered, or holds non-finite weights.
    """
    from safetensors.torch import load_model

    if description.get("format") != FORMAT or description.get("algo") not in ALGOS:
        raise ValueError(f"description format={description.get('format')!r} algo={description.get('algo')!r} is not "
                         f"allowed: expected format {FORMAT!r} and algo in {sorted(ALGOS)}")
    for name, given in (("observation_space", observation_space), ("action_space", action_space)):
        if space_to_json(given) != description[name]:
            raise ValueError(f"{name}={given} does not match the space the policy was trained on "
                             f"({description[name]})")
    path = Path(folder) / description.get("file", POLICY_FILE)
    if not path.is_file():
        raise ValueError(f"{path} is missing: the folder holds no saved SB3 policy")
    if "sha256" in description and file_sha256(path) != description["sha256"]:
        raise ValueError(f"{path} does not match the sha256 in its description: the file was changed or replaced")
    policy_class = _resolve_class(description["policy_class"])
    kwargs = _from_json(description["policy_kwargs"])
    policy = policy_class(observation_space, action_space, lr_schedule=lambda _: 0.0, **kwargs)
    load_model(policy, str(path), strict=True, device="cpu")
    bad = [k for k, v in policy.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path} holds non-finite weights in {bad[:3]}: refusing to load a broken policy")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device={device!r} is not allowed: expected 'auto', 'cpu' or 'cuda[:index]'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    policy.to(torch.device(device)).set_training_mode(False)
    return SB3Policy(policy, description, seed=seed)


# ---- resumable checkpoints --------------------------------------------------------------------------------------
_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def save_sb3_checkpoint(model: BaseAlgorithm, folder: str | os.PathLike[str], replay_buffer: bool = True) -> dict[str, Any]:
    """Write what resuming ``model``'s training needs to ``folder``; return the policy's description.

    ``policy.safetensors`` (as :func:`save_sb3_policy`: the checkpoint also loads as a policy), ``checkpoint.pt``
    (the optimizers' states, SAC's entropy coefficient, progress counters; tensors, numbers and strings only, read
    with ``torch.load(weights_only=True)``) and, for DQN and SAC with ``replay_buffer``, the filled part of the
    replay buffer as ``replay_buffer.safetensors``. Each file is written atomically; ``checkpoint.pt`` last.
    """
    folder = Path(folder)
    description = save_sb3_policy(model, folder)
    state_names, variable_names = model._get_torch_save_params()
    params = model.get_parameters()
    state: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": description["algo"],
        "num_envs": model.n_envs,
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "episode_num": int(model._episode_num),
        "policy_sha256": description["sha256"],
        "state_dicts": {name: params[name] for name in state_names if name != "policy"},
        "variables": {name: _get_path(model, name).detach().cpu() for name in variable_names},
        "replay_buffer": None,
    }
    buffer = getattr(model, "replay_buffer", None)
    if replay_buffer and isinstance(model, OffPolicyAlgorithm) and buffer is not None:
        filled = buffer.buffer_size if buffer.full else buffer.pos
        arrays: dict[str, np.ndarray] = {}
        for name in _BUFFER_FIELDS:
            value = getattr(buffer, name, None)
            if isinstance(value, dict):
                arrays.update({f"{name}.{k}": np.ascontiguousarray(v[:filled]) for k, v in value.items()})
            elif isinstance(value, np.ndarray):
                arrays[name] = np.ascontiguousarray(value[:filled])
        from safetensors.numpy import save_file

        atomic_write(folder / REPLAY_FILE, lambda tmp: save_file(arrays, str(tmp)))
        state["replay_buffer"] = {"file": REPLAY_FILE, "sha256": file_sha256(folder / REPLAY_FILE), "filled": int(filled),
                                  "pos": int(buffer.pos), "full": bool(buffer.full)}
    atomic_write(folder / CHECKPOINT_FILE, lambda tmp: torch.save(state, tmp))
    return description


def restore_sb3_checkpoint(model: BaseAlgorithm, folder: str | os.PathLike[str]) -> None:
    """Load a :func:`save_sb3_checkpoint` folder into ``model``, built with the same settings (algo, env, N)."""
    from safetensors.torch import load_model

    folder = Path(folder)
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        raise ValueError(f"resume_from={str(folder)!r} is not allowed: {path} is missing (no SB3 checkpoint there)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    algo = _algo_name(model)
    if state.get("format") != FORMAT or state.get("algo") != algo or state.get("num_envs") != model.n_envs:
        raise ValueError(f"resume_from={str(folder)!r} holds a {state.get('algo')!r} checkpoint with "
                         f"num_envs={state.get('num_envs')!r}: it does not resume {algo!r} with num_envs={model.n_envs}")
    policy_path = folder / POLICY_FILE
    if not policy_path.is_file() or file_sha256(policy_path) != state["policy_sha256"]:
        raise ValueError(f"{policy_path} is missing or is not the policy {path} was saved with")
    load_model(model.policy, str(policy_path), strict=True, device=str(model.device))
    model.set_parameters(deepcopy(state["state_dicts"]), exact_match=False, device=model.device)
    for name, tensor in state["variables"].items():
        _get_path(model, name).data.copy_(tensor.to(model.device))
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state["n_updates"])
    model._episode_num = int(state["episode_num"])
    info = state.get("replay_buffer")
    if info is not None:
        from safetensors.numpy import load_file

        buffer = model.replay_buffer
        file = folder / info["file"]
        if not file.is_file() or file_sha256(file) != info["sha256"]:
            raise ValueError(f"{file} is missing or is not the replay buffer {path} was saved with")
        arrays = load_file(str(file))
        filled = int(info["filled"])
        if filled > buffer.buffer_size or (info["full"] and filled != buffer.buffer_size):
            raise ValueError(f"the checkpoint's replay buffer (size {filled}, full={info['full']}) does not fit "
                             f"buffer_size={buffer.buffer_size}: resume with the buffer_size it was saved with")
        for key, array in arrays.items():
            name, _, sub = key.partition(".")
            target = getattr(buffer, name)
            (target[sub] if sub else target)[:filled] = array
        buffer.pos, buffer.full = int(info["pos"]) % buffer.buffer_size, bool(info["full"])


def _get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
