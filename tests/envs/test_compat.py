"""The environments with the tools their users already have: each ``test_client_*`` drives them with a real client.

README.md's compatibility table (between ``<!-- compat:start -->`` and ``<!-- compat:end -->``) names one of these
tests per row; :func:`test_the_readme_table_names_exactly_these_tests` keeps the two in step. CI also runs this file
in a second virtual environment with the oldest supported Gymnasium and RLlib installed (``.ci/run``).
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import cim_gym  # noqa: F401  (registers the ids)

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"sigmas": [0.0, 0.05], "chips_per_sigma": 2, "chip_seed": 0}


def test_client_sb3_make_vec_env_vecnormalize_ppo() -> None:
    """SB3's tutorial path, unchanged: make_vec_env asks for render_mode="rgb_array" by default."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    plain = make_vec_env("CIMBlockDrop-v0", n_envs=4)  # the tutorial's exact call
    plain.reset()
    plain.step(np.stack([plain.action_space.sample() for _ in range(4)]))
    plain.close()
    venv = make_vec_env("CIMBlockDrop-v0", n_envs=4, seed=0, env_kwargs=SMALL)
    assert venv.render_mode == "rgb_array"
    venv = VecNormalize(venv, norm_obs_keys=["features"])
    model = PPO("MultiInputPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    assert venv.obs_rms["features"].count > 256  # the running statistics saw every observation
    frames = venv.get_images()
    assert len(frames) == 4 and frames[0].ndim == 3
    venv.close()


def test_client_cleanrl_sync_vector_env() -> None:
    """CleanRL's pattern: a make_env thunk that wraps each env, then gym.vector.SyncVectorEnv."""
    def make_env(seed: int):
        def thunk() -> gym.Env:
            env = gym.make("CIMEarlyExit-v0", **SMALL)
            env = gym.wrappers.FlattenObservation(env)
            env = gym.wrappers.RecordEpisodeStatistics(env)
            env.action_space.seed(seed)
            return env
        return thunk

    envs = gym.vector.SyncVectorEnv([make_env(i) for i in range(3)])
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (3, envs.single_observation_space.shape[0])
    episodes = 0
    for step in range(8):  # SyncVectorEnv resets at the next step: decisions at even steps, resets at odd ones
        obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
        assert terminated.all() == (step % 2 == 0) and not truncated.any()
        if "episode" in infos:  # Gymnasium >= 1.0: vector info dict with a mask
            episodes += int(infos["_episode"].sum())
            np.testing.assert_array_equal(infos["episode"]["l"][infos["_episode"]], 1)
            np.testing.assert_array_equal(infos["episode"]["r"][infos["_episode"]], rewards[infos["_episode"]])
    assert episodes == 12
    envs.close()


@pytest.mark.parametrize("env_id", ["CIMBlockDrop-v0", "CIMExitThresholds-v0"])
def test_client_gymnasium_vector_wrappers_flatten_then_normalize(env_id: str) -> None:
    """The native vector env with autoreset_mode="next_step": FlattenObservation, then NormalizeObservation,
    then RecordEpisodeStatistics (the chain the README shows)."""
    from gymnasium.wrappers.vector import FlattenObservation, NormalizeObservation, RecordEpisodeStatistics

    envs = gym.make_vec(env_id, num_envs=8, vectorization_mode="vector_entry_point", autoreset_mode="next_step",
                        **SMALL)
    envs = RecordEpisodeStatistics(NormalizeObservation(FlattenObservation(envs)))
    obs, _ = envs.reset(seed=0)
    dim = envs.single_observation_space.shape[0]
    assert obs.shape == (8, dim)
    envs.action_space.seed(0)
    finished, decisions = 0, 0
    for _ in range(10):
        obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
        assert obs.shape == (8, dim) and np.isfinite(obs).all()
        decisions += int(terminated.sum())
        if "episode" in infos:
            finished += int(infos["_episode"].sum())
    assert decisions == 40 and finished == 40  # next_step: every other call starts the next episodes
    rms = envs.env.obs_rms  # NormalizeObservation's running statistics
    assert rms.mean.shape == (dim,) and rms.count > 40
    envs.close()


def test_client_gymnasium_vector_wrappers_refuse_same_step() -> None:
    """The default (same-step) autoreset is declared truthfully, so Gymnasium's observation wrappers refuse it."""
    from gymnasium.wrappers.vector import FlattenObservation, NormalizeObservation

    envs = gym.make_vec("CIMBlockDrop-v0", num_envs=2, vectorization_mode="vector_entry_point", **SMALL)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    with pytest.raises((AssertionError, ValueError)) as refused:  # Gymnasium 1.2 asserts, 1.3+ explains
        NormalizeObservation(FlattenObservation(envs))
    assert isinstance(refused.value, AssertionError) or "autoreset" in str(refused.value)


def test_client_record_video(tmp_path: Path) -> None:
    """gymnasium.wrappers.RecordVideo over render_mode="rgb_array" writes playable videos."""
    pytest.importorskip("moviepy", reason="RecordVideo needs moviepy (pip install 'cim-gym[video]')")
    env = gym.make("CIMExitThresholds-v0", render_mode="rgb_array", **SMALL)
    env = gym.wrappers.RecordVideo(env, str(tmp_path / "videos"), episode_trigger=lambda e: e < 2, disable_logger=True)
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
        env.reset()
    env.close()
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 2 and all(v.stat().st_size > 0 for v in videos)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the RLlib tests of this module (starting Ray takes seconds)."""
    pytest.importorskip("ray.rllib", reason="RLlib is not installed (pip install 'cim-gym[rllib]'; CI installs it)")
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("env_id", ["CIMBlockDrop-v0", "CIMEarlyExit-v0"])
def test_client_rllib_ppo(env_id: str, local_ray: object) -> None:
    """RLlib's PPO (new API stack, local Ray), flattened observations, as examples/rllib_ppo.py does it."""
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from rllib_ppo import build_ppo
    finally:
        sys.path.pop(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        algo = build_ppo(env_id, SMALL, batch=128, seed=0)
    try:
        module = algo.get_module()
        before = [p.detach().clone() for p in module.parameters()]
        for _ in range(2):
            result = algo.train()
        after = list(module.parameters())
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= 256
        assert np.isfinite(result["env_runners"]["episode_return_mean"])
        assert any(not torch.equal(a, b) for a, b in zip(after, before)), "PPO did not update the policy"
    finally:
        algo.stop()


def test_the_readme_table_names_exactly_these_tests() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- compat:start -->\n(.*?)\n<!-- compat:end -->", readme, re.S)
    assert match, "README.md has no compat block"
    named = set(re.findall(r"`(test_client_\w+)`", match.group(1)))
    here = {name for name in globals() if name.startswith("test_client_")}
    assert named == here, f"README compat table names {sorted(named - here)} not here; missing {sorted(here - named)}"
