"""stable-baselines3 glue: the VecEnv adapter over the native batched environments, training, saving, resuming.

Tiny budgets on the digits defaults with two sigmas and one chip each: these test the plumbing, not learning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

import cim_gym  # noqa: F401
from agents.sb3 import (
    SUPPORTED_ENVS,
    EpisodeStatsCallback,
    SB3Interrupted,
    SB3VecEnvAdapter,
    load_sb3_policy,
    make_sb3,
    save_sb3_checkpoint,
    save_sb3_policy,
    train_sb3,
)

SMALL = {"sigmas": [0.0, 0.05], "chips_per_sigma": 1, "chip_seed": 0}
N = 8
# Small rollouts / early learning so that a few hundred episodes run several updates.
FAST = {"ppo": {"n_steps": 4}, "a2c": {"n_steps": 2}, "dqn": {"learning_starts": 64}, "sac": {"learning_starts": 64}}
RUNS = [("ppo", "CIMBlockDrop-v0"), ("ppo", "CIMEarlyExit-v0"), ("ppo", "CIMExitThresholds-v0"),
        ("a2c", "CIMBlockDrop-v0"), ("dqn", "CIMEarlyExit-v0"), ("sac", "CIMExitThresholds-v0")]
STEPS = 256


def adapter(env_id: str = "CIMEarlyExit-v0", num_envs: int = 4, **kwargs: Any) -> SB3VecEnvAdapter:
    return SB3VecEnvAdapter(gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                                         **{**SMALL, **kwargs}))


def train(algo: str, env_id: str, seed: int = 0, steps: int = STEPS, **kwargs: Any) -> Any:
    return train_sb3(algo, env_id, SMALL, num_envs=N, total_timesteps=steps, seed=seed, device="cpu",
                     algo_kwargs=FAST[algo], **kwargs)


@pytest.fixture(scope="module")
def trained() -> dict[tuple[str, str], Any]:
    """One tiny training per (algo, env) pair, shared by the tests below."""
    return {}


def get_model(trained: dict[tuple[str, str], Any], algo: str, env_id: str) -> Any:
    if (algo, env_id) not in trained:
        stats = EpisodeStatsCallback(every=64)
        trained[(algo, env_id)] = (train(algo, env_id, callback=stats), stats)
    return trained[(algo, env_id)]


def observations(model: Any) -> dict[str, np.ndarray]:
    env = model.get_env()
    env.seed(123)
    return env.reset()


# ---- the adapter --------------------------------------------------------------------------------------------------
def test_step_maps_same_step_autoreset_onto_sb3() -> None:
    env = adapter(num_envs=4)
    env.seed(1)
    first = env.reset()
    assert set(env.reset_infos[0]) == {"image_index", "chip_id", "sigma"}
    obs, rewards, dones, infos = env.step(np.array([0, 1, 2, 1]))
    assert rewards.dtype == np.float32 and rewards.shape == (4,)
    assert dones.dtype == bool and dones.all()  # every episode is one decision
    assert len(infos) == 4
    for i, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is False
        assert info["path"] == [0, 1, 2, 1][i]  # the finished episode's step info, not the new episode's
        assert set(info["terminal_observation"]) == {"features", "sigma"}
        for key in first:
            np.testing.assert_array_equal(info["terminal_observation"][key], first[key][i])
        assert rewards[i] == (1.0 if info["correct"] else -1.0)
    assert {k: v.shape for k, v in obs.items()} == {"features": (4, 16), "sigma": (4, 1)}
    assert all(set(r) == {"image_index", "chip_id", "sigma"} for r in env.reset_infos)
    # Terminal observations are copies: changing the batch the caller still holds does not change them.
    infos = env.step(np.zeros(4, dtype=np.int64))[3]
    obs["features"][:] = -7
    assert not (infos[0]["terminal_observation"]["features"] == -7).any()
    env.close()


def test_seed_and_options_reach_the_batched_env() -> None:
    env = adapter(num_envs=4)
    env.seed(5)
    a = env.reset()
    env.seed(5)
    b = env.reset()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    env.set_options({"sigma": 0.05})
    obs = env.reset()
    assert np.all(obs["sigma"] == np.float32(0.05))
    env.set_options([{"sigma": s} for s in (0.0, 0.05, 0.05, 0.0)])  # per-env options are stacked
    obs = env.reset()
    np.testing.assert_array_equal(obs["sigma"][:, 0], np.float32([0.0, 0.05, 0.05, 0.0]))
    assert env.reset()["sigma"].shape == (4, 1)  # options are used once
    env.set_options([{"sigma": 0.0}, {}, {}, {}])
    with pytest.raises(ValueError, match="same keys"):
        env.reset()


def test_attributes_and_methods_of_the_one_batched_env() -> None:
    env = adapter(num_envs=3)
    assert env.get_attr("num_envs") == [3, 3, 3]
    assert env.get_attr("render_mode", indices=[1]) == [None]
    assert env.get_attr("config")[0].chips_per_sigma == 1
    assert env.env_is_wrapped(Monitor) == [False] * 3
    with pytest.raises(AttributeError):
        env.get_attr("no_such_attribute")
    env.set_attr("marker", 7)
    assert env.get_attr("marker") == [7, 7, 7]
    with pytest.raises(ValueError, match="one batched environment"):
        env.set_attr("marker", 8, indices=[0])
    with pytest.raises(ValueError, match="one batched environment"):
        env.env_method("reset", indices=1)
    assert len(env.env_method("reset", seed=0)) == 3


def test_adapter_refuses_what_it_cannot_serve() -> None:
    with pytest.raises(TypeError, match="VectorEnv"):
        SB3VecEnvAdapter(gym.make("CIMEarlyExit-v0", **SMALL))
    with pytest.raises(ValueError, match="SAME_STEP"):
        adapter(autoreset_mode="next_step")


def test_every_observation_reaches_the_policy_scaled() -> None:
    """Sigma hidden, or the chip descriptor added: the policy's input follows the space, mapped onto [-1, 1]."""
    for extra, keys in (({"observe_sigma": False}, {"features"}), ({"observe_chip": True}, {"features", "sigma", "chip"})):
        model = make_sb3("ppo", "CIMEarlyExit-v0", {**SMALL, **extra}, num_envs=4, device="cpu", algo_kwargs=FAST["ppo"])
        assert set(model.observation_space.spaces) == keys
        model.learn(16)
        extractor = model.policy.features_extractor
        obs = {k: torch.as_tensor(np.stack([s.low, s.high])) for k, s in model.observation_space.spaces.items()}
        out = extractor(obs)
        assert out.shape == (2, sum(s.shape[0] for s in model.observation_space.spaces.values()))
        # low -> -1, high -> +1 (an entry whose bounds are equal -> 0), keys in the extractor's order
        spread = torch.cat([(obs[k][1] > obs[k][0]).float() for k in extractor.extractors])
        torch.testing.assert_close(out, torch.stack([-spread, spread]))


def test_vec_normalize_and_vec_monitor_work_on_it() -> None:
    from stable_baselines3 import PPO

    venv = VecNormalize(VecMonitor(adapter("CIMBlockDrop-v0", num_envs=4)), norm_obs=True, norm_reward=False)
    model = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    assert model.num_timesteps == 64
    assert len(model.ep_info_buffer) == 64  # VecMonitor saw every one-step episode end
    assert venv.obs_rms["features"].count > 64
    obs = venv.reset()
    assert np.abs(obs["features"].mean()) < 5  # normalized


# ---- training ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("algo", "env_id"), RUNS)
def test_trains_on_the_batched_env(trained: dict, algo: str, env_id: str) -> None:
    model, stats = get_model(trained, algo, env_id)
    assert model.num_timesteps >= STEPS
    assert isinstance(model.get_env(), SB3VecEnvAdapter) and model.get_env().num_envs == N
    assert model.policy_kwargs["features_extractor_class"].__name__ == "ScaledCombinedExtractor"
    assert stats.rows and all(0 <= r["accuracy"] <= 1 and 0 < r["usage"] <= 1 for r in stats.rows)
    actions, _ = model.predict(observations(model), deterministic=True)
    space = model.get_env().action_space
    assert all(space.contains(np.asarray(a, dtype=space.dtype)) for a in actions)


def test_episode_stats_reach_the_logger_and_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows: list[dict[str, float]] = []
    stats = EpisodeStatsCallback(every=32, on_row=rows.append, progress=True)
    model = train("ppo", "CIMEarlyExit-v0", steps=96, callback=stats, tensorboard_log=tmp_path)
    assert rows == stats.rows and len(rows) == 3
    assert [r["timesteps"] for r in rows] == [32, 64, 96]
    assert all(isinstance(v, float) for r in rows for v in r.values())
    assert all(r["reward"] == 2 * r["accuracy"] - 1 for r in rows)  # accuracy reward, penalty 1
    runs = list(tmp_path.glob("ppo_*"))
    assert len(runs) == 1 and model.num_timesteps == 96
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    assert {"cim/accuracy", "cim/usage", "cim/macs", "cim/reward"} <= set(events.Tags()["scalars"])


@pytest.mark.parametrize(("algo", "env_id"), [("dqn", "CIMBlockDrop-v0"), ("dqn", "CIMExitThresholds-v0"),
                                              ("sac", "CIMBlockDrop-v0"), ("sac", "CIMEarlyExit-v0"),
                                              ("ppo", "CartPole-v1")])
def test_wrong_algo_env_pairing_names_both(algo: str, env_id: str) -> None:
    with pytest.raises(ValueError, match=f"algo='{algo}' does not train on env_id='{env_id}'"):
        train_sb3(algo, env_id, SMALL, num_envs=2, total_timesteps=10)
    assert env_id not in SUPPORTED_ENVS[algo]


@pytest.mark.parametrize(("name", "kwargs"), [("algo", {"algo": "td3"}), ("num_envs", {"num_envs": 0}),
                                              ("total_timesteps", {"total_timesteps": 0}), ("seed", {"seed": -1})])
def test_bad_arguments_name_the_parameter(name: str, kwargs: dict[str, Any]) -> None:
    args = {"algo": "ppo", "num_envs": 2, "total_timesteps": 10, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=f"{name}="):
        train_sb3(args.pop("algo"), "CIMEarlyExit-v0", SMALL, **args)


def test_same_seed_same_policy_other_seed_other_policy(trained: dict) -> None:
    first, _ = get_model(trained, "ppo", "CIMEarlyExit-v0")
    again = train("ppo", "CIMEarlyExit-v0")
    other = train("ppo", "CIMEarlyExit-v0", seed=1)
    a, b, c = (m.policy.state_dict() for m in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    obs = observations(first)
    np.testing.assert_array_equal(first.predict(obs, deterministic=True)[0], again.predict(obs, deterministic=True)[0])


# ---- saving and loading --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("algo", "env_id"), [("ppo", "CIMBlockDrop-v0"), ("dqn", "CIMEarlyExit-v0"),
                                              ("sac", "CIMExitThresholds-v0")])
def test_saved_and_loaded_policies_act_identically(trained: dict, tmp_path: Path, algo: str, env_id: str) -> None:
    model, _ = get_model(trained, algo, env_id)
    description = save_sb3_policy(model, tmp_path)
    assert json.loads(json.dumps(description)) == description  # JSON as it is
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.safetensors"]
    # As the run folder serves it: the description and the spaces read back from JSON.
    from agents.runs import space_from_json, space_to_json

    spaces_back = [space_from_json(json.loads(json.dumps(space_to_json(s))))
                   for s in (model.observation_space, model.action_space)]
    loaded = load_sb3_policy(tmp_path, json.loads(json.dumps(description)), *spaces_back)
    obs = observations(model)
    actions = loaded.act(obs)
    expected = np.asarray(model.predict(obs, deterministic=True)[0]).astype(model.action_space.dtype)
    np.testing.assert_array_equal(actions, expected)
    assert actions.dtype == model.action_space.dtype and actions.shape[0] == N
    # Stochastic actions come from the loaded policy's own seeded generator.
    again = load_sb3_policy(tmp_path, description, model.observation_space, model.action_space)
    np.testing.assert_array_equal(loaded.act(obs, deterministic=False), again.act(obs, deterministic=False))


def test_decision_macs_count_the_actor_path(trained: dict, tmp_path: Path) -> None:
    model, _ = get_model(trained, "ppo", "CIMBlockDrop-v0")
    loaded = load_sb3_policy(tmp_path, save_sb3_policy(model, tmp_path), model.observation_space, model.action_space)
    k = model.action_space.n
    # 16 features + sigma -> 64 -> 64 -> K logits; the value head is not part of a decision.
    assert loaded.decision_macs == 17 * 64 + 64 * 64 + 64 * k
    wide = make_sb3("ppo", "CIMBlockDrop-v0", SMALL, num_envs=2, device="cpu",
                    policy_kwargs={"net_arch": {"pi": [32], "vf": [256, 256]}})
    loaded = load_sb3_policy(tmp_path, save_sb3_policy(wide, tmp_path), wide.observation_space, wide.action_space)
    assert loaded.decision_macs == 17 * 32 + 32 * k


def test_loading_refuses_altered_or_mismatched_policies(trained: dict, tmp_path: Path) -> None:
    model, _ = get_model(trained, "ppo", "CIMEarlyExit-v0")
    description = save_sb3_policy(model, tmp_path)
    obs_space, act_space = model.observation_space, model.action_space
    with pytest.raises(ValueError, match="action_space"):
        load_sb3_policy(tmp_path, description, obs_space, gym.spaces.Discrete(act_space.n + 1))
    with pytest.raises(ValueError, match="not allowed in a policy description"):
        load_sb3_policy(tmp_path, {**description, "policy_class": "os:system"}, obs_space, act_space)
    with pytest.raises(ValueError, match="format"):
        load_sb3_policy(tmp_path, {**description, "format": "pickle"}, obs_space, act_space)
    with pytest.raises(ValueError, match="device='gpu'"):
        load_sb3_policy(tmp_path, description, obs_space, act_space, device="gpu")
    with pytest.raises(ValueError, match="obs_batch"):
        load_sb3_policy(tmp_path, description, obs_space, act_space).act({"features": np.zeros((2, 16))})
    data = bytearray((tmp_path / "policy.safetensors").read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # a NaN in the last weight
    (tmp_path / "policy.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_sb3_policy(tmp_path, description, obs_space, act_space)
    with pytest.raises(ValueError, match="non-finite"):
        load_sb3_policy(tmp_path, {k: v for k, v in description.items() if k != "sha256"}, obs_space, act_space)


# ---- checkpoints ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("algo", "env_id"), [("ppo", "CIMBlockDrop-v0"), ("sac", "CIMExitThresholds-v0")])
def test_checkpoint_resumes_training(trained: dict, tmp_path: Path, algo: str, env_id: str) -> None:
    model, _ = get_model(trained, algo, env_id)
    description = save_sb3_checkpoint(model, tmp_path)
    load_sb3_policy(tmp_path, description, model.observation_space, model.action_space)  # loads as a policy too
    fresh = make_sb3(algo, env_id, SMALL, num_envs=N, device="cpu", algo_kwargs=FAST[algo])
    from agents.sb3 import restore_sb3_checkpoint

    restore_sb3_checkpoint(fresh, tmp_path)
    assert fresh.num_timesteps == model.num_timesteps
    for name, state in model.get_parameters().items():
        restored = fresh.get_parameters()[name]
        if name == "policy":
            assert all(torch.equal(state[k], restored[k]) for k in state)
        else:  # an optimizer: its moments are back
            assert restored["state"].keys() == state["state"].keys()
            for idx in state["state"]:
                assert all(torch.equal(v, restored["state"][idx][key]) for key, v in state["state"][idx].items())
    if algo == "sac":
        assert torch.equal(fresh.log_ent_coef.detach(), model.log_ent_coef.detach())
        filled = model.replay_buffer.pos
        np.testing.assert_array_equal(fresh.replay_buffer.actions[:filled], model.replay_buffer.actions[:filled])
        np.testing.assert_array_equal(fresh.replay_buffer.observations["sigma"][:filled],
                                      model.replay_buffer.observations["sigma"][:filled])
        assert fresh.replay_buffer.pos == filled
    resumed = train(algo, env_id, steps=model.num_timesteps + 64, resume_from=tmp_path)
    assert model.num_timesteps + 64 <= resumed.num_timesteps < model.num_timesteps + 64 + 64
    with pytest.raises(ValueError, match="does not resume"):
        restore_sb3_checkpoint(make_sb3("a2c", "CIMBlockDrop-v0", SMALL, num_envs=N, device="cpu"), tmp_path)


class Interrupt(BaseCallback):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.after:
            raise KeyboardInterrupt
        return True


def test_ctrl_c_leaves_a_loadable_resumable_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt) as caught:
        train("a2c", "CIMEarlyExit-v0", steps=10_000, callback=Interrupt(after=48), checkpoint_dir=tmp_path)
    assert isinstance(caught.value, SB3Interrupted) and caught.value.model.num_timesteps == 48
    assert {"policy.safetensors", "checkpoint.pt"} <= {p.name for p in tmp_path.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    model = caught.value.model
    policy = load_sb3_policy(tmp_path, caught.value.description, model.observation_space, model.action_space)
    obs = observations(model)
    np.testing.assert_array_equal(policy.act(obs), model.predict(obs, deterministic=True)[0])
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["num_timesteps"] == 48
    resumed = train("a2c", "CIMEarlyExit-v0", steps=64, resume_from=tmp_path)
    assert resumed.num_timesteps == 64
