"""The chip descriptor (``observe_chip=True``): a chip's own post-programming test, in the observation."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import cim_gym  # noqa: F401  (registers the ids)

IDS = ["CIMBlockDrop-v0", "CIMEarlyExit-v0", "CIMExitThresholds-v0"]
SMALL = {"sigmas": [0.0, 0.1], "chips_per_sigma": 2, "probe_images": 32}


def descriptor(env_id: str = "CIMBlockDrop-v0", chip: int = 2, **kwargs: object) -> np.ndarray:
    env = gym.make(env_id, observe_chip=True, **{**SMALL, **kwargs})
    obs, _ = env.reset(seed=0, options={"chip": chip})
    return obs["chip"]


def test_same_chip_seed_same_descriptor_and_chips_differ() -> None:
    a, b = descriptor(chip_seed=3), descriptor(chip_seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (9 + 2,) and ((a >= 0) & (a <= 1)).all()
    assert not np.array_equal(a, descriptor(chip_seed=3, chip=3))  # another chip of the same sigma
    assert not np.array_equal(a, descriptor(chip_seed=4))  # the same slot of another pool


@pytest.mark.parametrize("env_id,blocks,exits", [("CIMBlockDrop-v0", 9, 1), ("CIMEarlyExit-v0", 15, 3)])
def test_a_sigma_zero_ideal_chip_has_no_error(env_id: str, blocks: int, exits: int) -> None:
    d = descriptor(env_id, chip=0, cim="ideal", chip_seed=0)
    assert d.shape == (blocks + 2 * exits,)
    np.testing.assert_array_equal(d[:blocks], 0.0)  # exactly the digital model's outputs
    assert (d[blocks + 2 * exits - 1] > 0) and d[blocks: blocks + exits].min() > 0.5  # accuracy and entropy measured
    noisy = descriptor(env_id, chip=2, cim="ideal", chip_seed=0)
    assert (noisy[:blocks] > 0).all()


def test_it_reads_no_test_image() -> None:
    env = gym.make("CIMBlockDrop-v0", observe_chip=True, split="test", chip_seed=1, **SMALL).unwrapped
    obs, _ = env.reset(seed=0, options={"chip": 2})
    train = descriptor(split="train", chip_seed=1)
    np.testing.assert_array_equal(obs["chip"], train)  # the split the episodes use does not matter
    env.core.images.fill_(float("nan"))  # the episodes' images are poisoned; a fresh pool recomputes
    env.core.make_pool(env.core.pool_seed)
    np.testing.assert_array_equal(env.core.chip_descriptors(np.array([2]))[0], train)


def test_observing_the_chip_changes_no_episode_under_read_noise() -> None:
    def rollout(observe_chip: bool) -> list:
        env = gym.make("CIMEarlyExit-v0", noise_source="read", observe_chip=observe_chip, chip_seed=0,
                       **{**SMALL, "sigmas": [0.2]})
        env.reset(seed=0)
        out = []
        for _ in range(4):
            info = env.step(1)[-1]
            out.append((info["chip_id"], info["prediction"]))
            env.reset()
        return out

    assert rollout(True) == rollout(False)


def test_vector_env_observes_the_same_descriptor() -> None:
    envs = gym.make_vec("CIMEarlyExit-v0", num_envs=3, vectorization_mode="vector_entry_point", observe_chip=True,
                        chip_seed=2, **SMALL)
    obs, info = envs.reset(seed=0, options={"chip": np.array([0, 2, 2])})
    assert obs["chip"].shape == (3, 15 + 6) and obs["chip"] in envs.observation_space["chip"]
    np.testing.assert_array_equal(obs["chip"][1], obs["chip"][2])
    np.testing.assert_array_equal(obs["chip"][1], descriptor("CIMEarlyExit-v0", chip=2, chip_seed=2))


@pytest.mark.parametrize("observe_sigma,observe_chip", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("env_id", IDS)
def test_every_observation_combination_passes_both_checkers(env_id: str, observe_sigma: bool, observe_chip: bool) -> None:
    """(True, False), sigma alone, is the default that test_envs.py checks."""
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = gym.make(env_id, observe_sigma=observe_sigma, observe_chip=observe_chip, **SMALL)
    expected = {"features"} | ({"sigma"} if observe_sigma else set()) | ({"chip"} if observe_chip else set())
    assert set(env.observation_space.spaces) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check(env.unwrapped, skip_render_check=True)
        sb3_check(env, warn=True)


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="observe_chip='yes' is not allowed"):
        gym.make("CIMBlockDrop-v0", observe_chip="yes")
    with pytest.raises(ValueError, match="probe_images=0 is not allowed"):
        gym.make("CIMBlockDrop-v0", probe_images=0)
    with pytest.raises(ValueError, match="probe_images=100000 is not allowed: the 'digits' training split has"):
        gym.make("CIMBlockDrop-v0", probe_images=100_000)


def test_a_core_that_does_not_observe_the_chip_still_describes_it() -> None:
    """Evaluation observes policies' chips through the core of an environment made without observe_chip."""
    env = gym.make("CIMBlockDrop-v0", chip_seed=5, **SMALL).unwrapped
    env.reset(seed=0)
    assert "chip" not in env.observation_space.spaces
    np.testing.assert_array_equal(env.core.chip_descriptors(np.array([2]))[0], descriptor(chip_seed=5))
