"""Rendering: frames of the episode when asked, nothing drawn otherwise, clear errors for modes that cannot work."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest

import cim_gym  # noqa: F401  (registers the ids)
from cim_gym.envs import CIMBlockDropEnv, render

SMALL = {"sigmas": [0.0, 0.05], "chips_per_sigma": 2, "chip_seed": 0}
IDS = ["CIMBlockDrop-v0", "CIMEarlyExit-v0", "CIMExitThresholds-v0"]


@pytest.mark.parametrize("env_id", IDS)
def test_rgb_array_draws_the_episode_before_and_after_the_decision(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array", **SMALL)
    env.reset(seed=0, options={"image": 5, "chip": 3})
    assert env.unwrapped._renderer is None  # nothing drawn until render() is called
    before = env.render()
    assert before.shape == (render.HEIGHT, render.WIDTH, 3) and before.dtype == np.uint8
    env.step(env.action_space.sample())
    after = env.render()
    assert after.shape == before.shape and not np.array_equal(before, after)  # the path and the outcome appear
    env.reset(options={"image": 6, "chip": 3})
    other = env.render()
    assert not np.array_equal(before, other)  # another image, another picture
    env.reset(options={"image": 5, "chip": 3})
    np.testing.assert_array_equal(env.render(), before)  # the same episode state, the same picture
    clone = pickle.loads(pickle.dumps(env))  # a drawing environment still pickles (async vector envs, checkpoints)
    np.testing.assert_array_equal(clone.render(), before)


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_checker_with_its_render_checks(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env

    env = gym.make(env_id, render_mode="rgb_array", **SMALL)
    assert "rgb_array" in env.metadata["render_modes"]
    assert ("human" in env.metadata["render_modes"]) == render.has_display()  # declared only where it works
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)  # makes the env again in every declared render mode and renders


def test_the_frame_shows_the_input_image() -> None:
    env = gym.make("CIMBlockDrop-v0", render_mode="rgb_array", **SMALL).unwrapped
    env.reset(seed=0, options={"image": 7})
    frame = env.render()
    side, top, left = 176, 44, 16  # where the renderer pastes the image
    pixels = frame[top: top + side, left: left + side, 0].astype(np.float64)
    core = env.core
    x = core.images[7, 0].cpu().double().numpy() * core.info.std[0] + core.info.mean[0]
    expected = np.clip(np.round(x * 255), 0, 255)
    scale = side // x.shape[0]
    np.testing.assert_allclose(pixels[::scale, ::scale], expected, atol=1)


def test_threshold_frames_and_info_carry_each_exits_entropy() -> None:
    env = gym.make("CIMExitThresholds-v0", render_mode="rgb_array", **SMALL)
    env.reset(seed=1)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    info = env.step(action)[-1]
    entropy = info["exit_entropy"]
    assert entropy.shape == env.action_space.shape and (entropy >= 0).all()
    threshold = env.unwrapped.act.thresholds(action)
    below = np.flatnonzero(entropy < threshold)
    assert info["path"] == (below[0] if len(below) else len(entropy))  # BranchyNet's rule, as recorded
    decision = env.unwrapped._shown[2]
    np.testing.assert_array_equal(decision.exit_entropy, entropy)
    assert env.render().shape == (render.HEIGHT, render.WIDTH, 3)


def test_no_render_mode_draws_nothing_and_says_so() -> None:
    env = gym.make("CIMEarlyExit-v0", **SMALL)
    env.reset(seed=0)
    env.step(0)
    assert env.unwrapped._renderer is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert env.unwrapped.render() is None
    assert any("render mode" in str(w.message) for w in caught)


def test_bad_render_modes_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="render_mode='ansi' is not allowed"):
        gym.make("CIMBlockDrop-v0", render_mode="ansi", **SMALL)
    monkeypatch.setattr(render.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(ValueError, match="no display"):
        CIMBlockDropEnv(render_mode="human", **SMALL)  # (gym.make would fall back to Gymnasium's HumanRendering)
    env = gym.make("CIMBlockDrop-v0", render_mode="rgb_array", **SMALL).unwrapped
    with pytest.raises(gym.error.ResetNeeded):
        env.render()
    with pytest.raises(ValueError, match="render_mode='human' is not allowed for the batched"):
        gym.make_vec("CIMBlockDrop-v0", num_envs=2, vectorization_mode="vector_entry_point", render_mode="human",
                     **SMALL)


def test_human_mode_shows_frames_in_a_window(monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no real window in tests: the same calls, drawn off-screen
    import matplotlib.pyplot as plt

    monkeypatch.setenv("DISPLAY", ":0")
    env = CIMBlockDropEnv(render_mode="human", **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Agg says it cannot show a window
        env.reset(seed=0)
        assert env.render() is None
        env.step(env.action_space.sample())
    figure, image = env.renderer._figure
    assert image.get_array().shape == (render.HEIGHT, render.WIDTH, 3)
    env.close()
    assert not plt.fignum_exists(figure.number)


def test_vector_env_renders_one_frame_per_episode() -> None:
    envs = gym.make_vec("CIMEarlyExit-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        autoreset_mode="next_step", render_mode="rgb_array", **SMALL)
    envs.reset(seed=0)
    before = envs.render()
    assert len(before) == 3 and all(f.shape == (render.HEIGHT, render.WIDTH, 3) for f in before)
    envs.step(np.array([0, 1, 2]))
    after = envs.render()  # next_step: the ended episodes, with their outcome
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
