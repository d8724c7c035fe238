"""The native vector environment's autoreset modes: declared truthfully, each following Gymnasium's semantics, and
all three giving the very same episodes for the same seed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import cim_gym  # noqa: F401  (registers the ids)

SMALL = {"sigmas": [0.0, 0.05], "chips_per_sigma": 2, "chip_seed": 0}
N = 4


def make(mode: object, env_id: str = "CIMBlockDrop-v0") -> gym.vector.VectorEnv:
    return gym.make_vec(env_id, num_envs=N, vectorization_mode="vector_entry_point", autoreset_mode=mode, **SMALL)


@pytest.mark.parametrize("mode", [AutoresetMode.SAME_STEP, "next_step", "Disabled"])
def test_metadata_declares_the_mode(mode: object) -> None:
    envs = make(mode)
    expected = mode if isinstance(mode, AutoresetMode) else AutoresetMode("Disabled" if mode == "Disabled" else "NextStep")
    assert envs.metadata["autoreset_mode"] is expected
    assert envs.unwrapped.autoreset_mode is expected
    assert type(envs.unwrapped).metadata["autoreset_mode"] is AutoresetMode.SAME_STEP  # the class default untouched


def test_a_bad_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="autoreset_mode='sometimes' is not allowed"):
        make("sometimes")


def decisions(mode: str, steps: int = 3) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(images, chips, rewards) of each batched decision, driving the env as its mode asks."""
    envs = make(mode)
    obs, info = envs.reset(seed=5)
    envs.action_space.seed(0)
    out = []
    for _ in range(steps):
        actions = envs.action_space.sample()
        obs_before = {k: v.copy() for k, v in obs.items()}
        obs, rewards, terminated, truncated, info = envs.step(actions)
        assert terminated.all() and not truncated.any()
        finished = info["final_info"] if mode == "same_step" else info
        out.append((finished["image_index"], finished["chip_id"], rewards))
        if mode == "same_step":
            for key in obs_before:
                np.testing.assert_array_equal(info["final_obs"][key], obs_before[key])
        else:  # the finished episodes' own observations come back
            for key in obs_before:
                np.testing.assert_array_equal(obs[key], obs_before[key])
        if mode == "next_step":
            obs, rewards, terminated, truncated, info = envs.step(actions)  # starts the next episodes
            assert not terminated.any() and not truncated.any() and (rewards == 0).all()
            assert info["_image_index"].all() and "correct" not in info
        elif mode == "disabled":
            with pytest.raises(gym.error.ResetNeeded, match=r"sub-environments \[0, 1, 2, 3\] have ended"):
                envs.step(actions)
            obs, info = envs.reset()
    return out


def test_every_mode_gives_the_same_episodes() -> None:
    same = decisions("same_step")
    for mode in ("next_step", "disabled"):
        for (ia, ca, ra), (ib, cb, rb) in zip(same, decisions(mode)):
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_array_equal(ca, cb)
            np.testing.assert_array_equal(ra, rb)


def test_disabled_mode_resets_by_mask() -> None:
    envs = make("disabled")
    obs, _ = envs.reset(seed=0)
    envs.step(envs.action_space.sample())
    mask = np.array([True, False, True, False])
    new_obs, info = envs.reset(options={"reset_mask": mask})
    assert info["_image_index"].all()  # every row reports the episode it now holds
    np.testing.assert_array_equal(new_obs["features"][~mask], obs["features"][~mask])
    with pytest.raises(gym.error.ResetNeeded, match=r"\[1, 3\]"):
        envs.step(envs.action_space.sample())
    envs.reset(options={"reset_mask": ~mask})
    _, rewards, terminated, _, _ = envs.step(envs.action_space.sample())
    assert terminated.all()


@pytest.mark.parametrize("mask", [np.array([1, 0, 1, 0]), np.zeros(N, dtype=bool), np.ones(N + 1, dtype=bool),
                                  [True] * N])
def test_bad_reset_masks_are_clear_errors(mask: object) -> None:
    envs = make("disabled")
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": mask})


def test_first_and_seeded_resets_must_reset_everything() -> None:
    envs = make("disabled")
    partial = np.array([True, False, False, False])
    with pytest.raises(ValueError, match="first reset"):
        envs.reset(seed=0, options={"reset_mask": partial})
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="seed=1 with a partial reset_mask is not allowed"):
        envs.reset(seed=1, options={"reset_mask": partial})


def test_vector_info_follows_gymnasiums_masks() -> None:
    envs = make("same_step", "CIMExitThresholds-v0")
    envs.reset(seed=0)
    _, _, _, _, info = envs.step(envs.action_space.sample())
    final = info["final_info"]
    for key in ("correct", "prediction", "path", "exit_entropy", "macs"):
        assert final[key].shape[0] == N and final[f"_{key}"].all()
    assert final["exit_entropy"].shape == (N, envs.single_action_space.shape[0])
