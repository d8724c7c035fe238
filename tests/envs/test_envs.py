"""Every registered cim-gym id gets the same battery, so a new environment is tested the moment it exists."""

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest

import cim_gym  # noqa: F401  (registers the ids)
from cim_gym.envs import ENVIRONMENTS

ENV_IDS = sorted(env_id for env_id in gym.registry if env_id in ENVIRONMENTS)
SMALL = {"sigmas": [0.0, 0.05], "chips_per_sigma": 2}


def make(env_id: str, **kwargs) -> gym.Env:
    return gym.make(env_id, **{**SMALL, **kwargs})


def test_every_id_is_registered() -> None:
    assert ENV_IDS == ["CIMBlockDrop-v0", "CIMEarlyExit-v0", "CIMExitThresholds-v0"]
    cim_gym.register_envs()  # idempotent
    assert sorted(k for k in gym.registry if k in ENVIRONMENTS) == ENV_IDS


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_checker(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env

    env = make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_checker(env_id: str) -> None:
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(make(env_id), warn=True)


def rollout(env: gym.Env, seed: int, n: int = 6) -> list:
    env.action_space.seed(seed)
    obs, info = env.reset(seed=seed)
    out = []
    for _ in range(n):
        action = env.action_space.sample()
        _, reward, terminated, truncated, step_info = env.step(action)
        assert terminated and not truncated
        out.append((obs, info, reward, {k: tuple(np.ravel(v)) if np.ndim(v) else v for k, v in step_info.items()}))
        obs, info = env.reset()
    return out


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_episodes(env_id: str) -> None:
    a, b = rollout(make(env_id), 7), rollout(make(env_id), 7)
    for (oa, ia, ra, sa), (ob, ib, rb, sb) in zip(a, b):
        assert ia == ib and ra == rb and sa == sb
        for key in oa:
            np.testing.assert_array_equal(oa[key], ob[key])
    c = rollout(make(env_id), 8)
    assert [x[1] for x in a] != [x[1] for x in c]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_info_and_observation(env_id: str) -> None:
    env = make(env_id)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"features", "sigma"}
    assert obs["sigma"][0] == pytest.approx(info["sigma"])
    _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    for key in ("correct", "label", "prediction", "sigma", "chip_id", "usage", "macs", "energy_pj", "latency_ns"):
        assert key in info
    assert reward == (1.0 if info["correct"] else -1.0)
    assert info["correct"] == (info["prediction"] == info["label"])
    assert info["macs"] > 0 and info["energy_pj"] > 0 and info["latency_ns"] > 0


def test_path_costs_match_the_models_own_accounting() -> None:
    import torch

    env = make("CIMBlockDrop-v0").unwrapped
    model, shape = env.core.model, env.core.info.input_shape
    env.reset(seed=0)
    mask = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=np.int8)
    info = env.step(mask)[-1]
    assert info["macs"] == model.path_macs(torch.as_tensor(mask[None]), shape)[0]
    assert info["usage"] == pytest.approx(5 / 9)
    np.testing.assert_array_equal(info["path"], mask)

    exits = make("CIMEarlyExit-v0").unwrapped
    exit_macs = exits.core.model.exit_macs(shape)
    for e in range(exits.core.model.num_exits):
        exits.reset(seed=e)
        info = exits.step(e)[-1]
        assert (info["path"], info["macs"]) == (e, exit_macs[e])
        assert info["usage"] == pytest.approx(float(exit_macs[e] / exit_macs[-1]))

    thresholds = make("CIMExitThresholds-v0").unwrapped
    n = thresholds.action_space.shape[0]
    for action, path in ((np.ones(n), 0), (-np.ones(n), n)):  # T = ln C takes everything at exit 0; T = 0 nothing
        thresholds.reset(seed=0)
        info = thresholds.step(action.astype(np.float32))[-1]
        assert (info["path"], info["macs"]) == (path, exit_macs[path])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_observe_sigma_false_removes_sigma(env_id: str) -> None:
    env = make(env_id, observe_sigma=False)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"features"} and set(env.observation_space.spaces) == {"features"}


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_image_observation(env_id: str) -> None:
    env = make(env_id, obs_mode="image")
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (1, 8, 8) and obs["image"] in env.observation_space["image"]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickle_and_spec_json_round_trip(env_id: str) -> None:
    env = make(env_id, reward="blockdrop")
    spec = gym.spec(env_id) if env.spec is None else env.spec
    assert gym.envs.registration.EnvSpec.from_json(spec.to_json()) == spec
    env.reset(seed=3)
    clone = pickle.loads(pickle.dumps(env))
    action = env.action_space.sample()
    assert env.step(action)[1] == clone.step(action)[1]
    remade = gym.make(spec)
    assert remade.unwrapped.config == env.unwrapped.config


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pinned_reset_options(env_id: str) -> None:
    env = make(env_id)
    _, info = env.reset(seed=0, options={"sigma": 0.05, "chip": 1, "image": 17})
    assert (info["sigma"], info["chip_id"], info["image_index"]) == (pytest.approx(0.05), 3, 17)
    with pytest.raises(ValueError, match="outside the configured range"):
        env.reset(options={"sigma": 0.5})
    with pytest.raises(ValueError, match="configured sigmas"):
        env.reset(options={"sigma": 0.01})
    with pytest.raises(ValueError, match="chip"):
        env.reset(options={"sigma": 0.0, "chip": 2})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"seed": 1})


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_step_before_reset(env_id: str) -> None:
    env = make(env_id).unwrapped
    with pytest.raises(gym.error.ResetNeeded):
        env.step(env.action_space.sample())


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_bad_actions_are_clear_errors(env_id: str) -> None:
    env = make(env_id).unwrapped
    env.reset(seed=0)
    good = np.asarray(env.action_space.sample())
    bad = [np.append(good.reshape(-1), good.reshape(-1)), np.array(["a"]), np.full(good.shape or (1,), 7.5)]
    for action in bad:
        with pytest.raises(ValueError, match="action must be"):
            env.step(action)


@pytest.mark.parametrize("kwargs,field", [
    ({"dataset": "imagenet"}, "dataset"), ({"cim": "nope"}, "nope"), ({"sigmas": [-1]}, "sigmas"),
    ({"reward": "speed"}, "reward"), ({"depth": 21}, "depth"), ({"colour": 1}, "unknown environment argument"),
])
def test_bad_settings_are_clear_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        gym.make("CIMBlockDrop-v0", **kwargs)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_vector_env_equals_single_env(env_id: str) -> None:
    n = 5
    venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **SMALL, chip_seed=11)
    images, chips = np.arange(10, 10 + n), np.array([0, 3, 1, 3, 2])
    venv.reset(seed=0, options={"image": images, "chip": chips})
    venv.action_space.seed(1)
    actions = venv.action_space.sample()
    obs, rewards, terminated, truncated, info = venv.step(actions)
    assert terminated.all() and not truncated.any() and info["_final_info"].all()
    env = make(env_id, chip_seed=11)
    for i in range(n):
        env.reset(seed=0, options={"image": int(images[i]), "chip": int(chips[i])})
        _, reward, _, _, single = env.step(actions[i])
        assert reward == rewards[i]
        assert single["prediction"] == info["final_info"]["prediction"][i]
        assert single["macs"] == info["final_info"]["macs"][i]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_vector_modes(env_id: str, mode: str) -> None:
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, **SMALL)
    try:
        obs, _ = venv.reset(seed=0)
        assert obs["sigma"].shape == (2, 1)
        _, rewards, terminated, _, _ = venv.step(venv.action_space.sample())
        assert rewards.shape == (2,) and terminated.all()
    finally:
        venv.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_short_ppo_run(env_id: str) -> None:
    from stable_baselines3 import PPO

    model = PPO("MultiInputPolicy", make(env_id), n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256


def test_the_classes_the_readme_names_are_exported() -> None:
    import cim_gym.envs as envs

    for env_id, target in ENVIRONMENTS.items():
        name = target.split(":")[1]
        for suffix, entry_point in (("Env", gym.spec(env_id).entry_point),
                                    ("VectorEnv", gym.spec(env_id).vector_entry_point)):
            cls = getattr(envs, f"{name}{suffix}")
            assert f"{cls.__module__}:{cls.__name__}" == entry_point  # the registered class, by its README name
        assert f"{name}Env" in envs.__all__ and f"{name}VectorEnv" in envs.__all__
    assert issubclass(envs.CIMBlockDropEnv, envs.CIMEnv) and issubclass(envs.CIMEarlyExitVectorEnv, envs.CIMVectorEnv)
    env = envs.CIMEarlyExitEnv(**SMALL)  # the class itself works, as gym.make builds it
    assert env.reset(seed=0)[0]["features"].shape == (16,)


def test_numpy_scalars_are_numbers() -> None:
    import json

    env = make("CIMBlockDrop-v0", sigmas=np.array([0.0, 0.05], dtype=np.float32), chips_per_sigma=np.int64(2),
               chip_seed=np.int64(3), depth=np.int64(20), penalty=np.float32(0.5), probe_images=np.int32(8))
    config = env.unwrapped.config
    assert config.chips_per_sigma == 2 and type(config.chips_per_sigma) is int and type(config.chip_seed) is int
    assert type(config.penalty) is float and all(type(s) is float for s in config.sigmas)
    json.dumps(config.to_dict())  # JSON-safe: the spec round-trips
    obs, info = env.reset(seed=np.int64(1), options={"sigma": np.float32(0.05), "chip": np.int64(1)})
    assert info["sigma"] == pytest.approx(0.05) and info["chip_id"] == 3
    env.reset(options={"sigma": obs["sigma"][0]})  # the observed float32 sigma pins its own group
    with pytest.raises(ValueError, match="chips_per_sigma=True"):
        make("CIMBlockDrop-v0", chips_per_sigma=True)


def test_backbone_kwargs_takes_a_folder_as_its_docstring_says() -> None:
    from pathlib import Path

    import cim_gym.backbones

    weights = Path(cim_gym.backbones.__file__).parent / "weights"
    env = make("CIMBlockDrop-v0", backbone_kwargs={"folder": str(weights)})
    assert env.unwrapped.core.backbone.name == "digits-resnet20-blockdrop"
    with pytest.raises(ValueError, match="backbone_kwargs=.*'variant' is not one"):
        make("CIMBlockDrop-v0", backbone_kwargs={"variant": "multiexit"})
    with pytest.raises(ValueError, match=r"backbone_kwargs\['folder'\]=3 is not allowed"):
        make("CIMBlockDrop-v0", backbone_kwargs={"folder": 3})


@pytest.mark.parametrize("kwargs,field", [
    ({"sigmas": 0.1}, "sigmas=0.1"), ({"sigmas": [float("nan")]}, "sigmas"), ({"data_root": 123}, "data_root=123"),
    ({"calibration_images": 10**6}, "calibration_images=1000000"), ({"observe_sigma": 1}, "observe_sigma=1"),
])
def test_more_bad_settings_are_clear_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        gym.make("CIMBlockDrop-v0", **kwargs)


def test_bad_reset_options_are_clear_errors() -> None:
    env = make("CIMEarlyExit-v0")
    env.reset(seed=0)
    for options, match in (([1], "options=\\[1\\] is not allowed"), ({"sigma": "a"}, "sigma='a'"),
                           ({"chip": True}, "chip=True"), ({"image": 1.5}, "image=1.5"), ({"image": -1}, "image=-1")):
        with pytest.raises(ValueError, match=match):
            env.reset(options=options)
