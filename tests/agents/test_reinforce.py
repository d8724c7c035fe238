"""BlockDrop's REINFORCE: learning a known optimum, the curriculum, the exploration bound, the self-critical baseline,
determinism, and the policy networks' inputs."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from toy_env import TARGETS, TOY_ID, register_toy

from agents.networks import ExitHead, MaskHead, NetworkSettings, PolicyNetwork, ThresholdHead, bound
from agents.reinforce import ReinforceSettings, ReinforceTrainer, self_critical_advantage

ROOT = Path(__file__).resolve().parents[2]


def toy_trainer(env_kwargs: dict[str, object] | None = None, **settings: object) -> ReinforceTrainer:
    register_toy()
    base = {"steps": 256 * 150, "batch_size": 256, "lr": 1e-2, "finetune_share": 0.0, "curriculum": False}
    return ReinforceTrainer(TOY_ID, env_kwargs or {}, ReinforceSettings(**{**base, **settings}))


def greedy_on(trainer: ReinforceTrainer, sigma: float) -> np.ndarray:
    obs = {"features": np.zeros((4, 2), np.float32), "sigma": np.full((4, 1), sigma, np.float32)}
    with torch.no_grad():
        return trainer.head.greedy(trainer.net({k: torch.as_tensor(v) for k, v in obs.items()}))


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_reinforce_learns_the_best_mask_of_each_sigma(noise: float) -> None:
    trainer = toy_trainer({"noise": noise})
    trainer.train()
    # The optimum differs per sigma: only a policy that uses sigma finds both.
    assert (greedy_on(trainer, 0.0) == TARGETS[0]).all()
    assert (greedy_on(trainer, 1.0) == TARGETS[1]).all()


def test_an_untrained_policy_is_not_already_optimal() -> None:
    trainer = toy_trainer()
    hits = [(greedy_on(trainer, s) == TARGETS[i]).all() for i, s in enumerate((0.0, 1.0))]
    assert not all(hits)


def test_curriculum_controls_the_last_blocks_one_more_per_stage() -> None:
    trainer = toy_trainer(curriculum=True, curriculum_stage_updates=2, finetune_share=0.2)
    expected = {0: [0, 0, 1], 1: [0, 0, 1], 2: [0, 1, 1], 3: [0, 1, 1], 4: [1, 1, 1], 40: [1, 1, 1]}
    for update, mask in expected.items():
        assert trainer.controlled(0, update).tolist() == [bool(m) for m in mask]
    assert trainer.controlled(1, 0) is None  # stage 2: the policy decides every block
    # Blocks outside the control always run, whatever the policy says, and do not enter the log-probability.
    out = torch.full((5, 3), -20.0)
    controlled = trainer.controlled(0, 0)
    assert (MaskHead(0.8).sample(out, np.random.default_rng(0), controlled)[:, :2] == 1).all()
    assert (MaskHead(0.8).greedy(out, controlled) == [1, 1, 0]).all()
    log_prob, entropy = MaskHead(0.8).log_prob_entropy(out, np.ones((5, 3), np.int8), controlled)
    assert torch.allclose(log_prob, torch.full((5,), float(np.log(0.2))))


def test_curriculum_default_spreads_the_blocks_over_half_of_stage_one() -> None:
    trainer = toy_trainer(curriculum=True)
    stage1, _ = trainer.settings.stage_updates
    assert trainer.curriculum_updates == stage1 // 6
    assert trainer.controlled(0, 3 * trainer.curriculum_updates - 1).all()


@pytest.mark.parametrize("alpha", [0.8, 0.95])
def test_exploration_bound_keeps_probabilities_in_range(alpha: float) -> None:
    p = torch.tensor([0.0, 1e-9, 0.3, 0.5, 1 - 1e-9, 1.0])
    bounded = bound(p, alpha)
    assert bounded.min() >= 1 - alpha - 1e-7 and bounded.max() <= alpha + 1e-7
    # Sampling follows the bound: saturated logits still explore with probability 1 - alpha.
    draws = MaskHead(alpha).sample(torch.tensor([[50.0, -50.0]]).repeat(20000, 1), np.random.default_rng(0))
    assert draws[:, 0].mean() == pytest.approx(alpha, abs=0.01)
    assert draws[:, 1].mean() == pytest.approx(1 - alpha, abs=0.01)
    exits = ExitHead(alpha).sample(torch.tensor([[50.0, -50.0, -50.0]]).repeat(20000, 1), np.random.default_rng(0))
    assert np.bincount(exits, minlength=3)[1:] / 20000 == pytest.approx([(1 - alpha) / 3] * 2, abs=0.01)


def test_self_critical_advantage_is_zero_where_sampled_and_greedy_agree() -> None:
    sampled = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 1]])
    greedy = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1]])
    advantage = self_critical_advantage(sampled, greedy, np.array([0.3, 1.0, -1.0]), np.array([0.9, 0.2, 0.5]))
    assert advantage.tolist() == [0.0, pytest.approx(0.8), 0.0]
    exits = self_critical_advantage(np.array([2, 1]), np.array([2, 2]), np.array([1.0, 1.0]), np.array([-1.0, -1.0]))
    assert exits.tolist() == [0.0, 2.0]


def test_thresholds_head_stays_inside_the_box_and_its_greedy_action_is_the_mean() -> None:
    head, out = ThresholdHead(), torch.tensor([[3.0, -2.0, 0.5, 4.0]])
    samples = head.sample(out.repeat(5000, 1), np.random.default_rng(0))
    assert samples.min() >= -1 and samples.max() <= 1
    assert samples.mean(0) == pytest.approx(head.greedy(out)[0], abs=0.02)
    log_prob, _ = head.log_prob_entropy(out.repeat(2, 1), np.array([[-1.0, 1.0], [0.0, 0.0]], np.float32))
    assert torch.isfinite(log_prob).all()


def test_same_seed_same_policy_bitwise_on_the_real_environment() -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        settings = ReinforceSettings(steps=64 * 6, batch_size=64, finetune_batch_size=32, finetune_share=0.25, seed=seed)
        trainer = ReinforceTrainer("CIMBlockDrop-v0", {"depth": 8, "sigmas": (0.0, 0.1), "chips_per_sigma": 1,
                                                       "reward": "blockdrop", "penalty": 5.0}, settings)
        trainer.train()
        return trainer.net.state_dict()

    first, again, other = run(3), run(3), run(4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_sigma_has_its_own_embedding_and_is_absent_when_hidden() -> None:
    box = spaces.Box(0.0, 1.0, (16,), np.float32)
    with_sigma = spaces.Dict({"features": box, "sigma": spaces.Box(0.0, 0.15, (1,), np.float32)})
    net = PolicyNetwork(with_sigma, spaces.MultiBinary(9))
    assert net.side_keys == ["sigma"] and "sigma" in net.sides
    obs = {"features": torch.rand(4, 16), "sigma": torch.zeros(4, 1)}
    moved = {**obs, "sigma": torch.full((4, 1), 0.15)}
    assert not torch.equal(net(obs), net(moved))  # sigma reaches the output
    hidden = PolicyNetwork(spaces.Dict({"features": box}), spaces.MultiBinary(9))
    assert hidden.side_keys == [] and hidden(obs).shape == (4, 9)
    chip = spaces.Dict({"features": box, "sigma": with_sigma["sigma"], "chip": spaces.Box(0.0, 1.0, (6,), np.float32)})
    assert PolicyNetwork(chip, spaces.Discrete(3)).side_keys == ["chip", "sigma"]


def test_cnn_policy_on_images_and_its_macs() -> None:
    space = spaces.Dict({"image": spaces.Box(-1.0, 3.0, (1, 28, 28), np.float32),
                         "sigma": spaces.Box(0.0, 0.1, (1,), np.float32)})
    net = PolicyNetwork(space, spaces.Box(-1, 1, (2,), np.float32), NetworkSettings(hidden=32, channels=(8, 16)))
    out = net({"image": torch.zeros(2, 1, 28, 28), "sigma": torch.zeros(2, 1)})
    assert out.shape == (2, 4)
    conv = 28 * 28 * 9 * 1 * 8 + 14 * 14 * 9 * 8 * 16
    linear = 16 * 32 + (1 * 16 + 16 * 16) + (32 + 16) * 32 + 32 * 4
    assert net.macs(space) == conv + linear


@pytest.mark.parametrize("field, value", [("alpha", 0.4), ("alpha", float("nan")), ("lr", 0.0), ("beta", -1.0),
                                          ("steps", 10), ("finetune_share", 1.0), ("batch_size", 0), ("seed", -1)])
def test_bad_settings_name_themselves(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ReinforceSettings(**{field: value})


def test_agents_see_the_environments_only_through_gymnasium() -> None:
    forbidden = ("cim_gym.hardware", "cim_gym.backbones", "cim_gym.envs", "cim_gym.models", "cim_gym.data",
                 "cim_gym.evaluation")
    for path in [*sorted((ROOT / "agents").glob("*.py")), ROOT / "train_agent.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_cim_gym_never_imports_agents() -> None:
    for path in sorted((ROOT / "cim_gym").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "agents" or n.startswith("agents.") for n in names), f"{path} imports {names}"


def test_mask_entropy_bonus_is_blockdrops_by_default_or_the_bernoulli_entropy() -> None:
    out, controlled = torch.tensor([[0.0, 2.0, -1.0]]), np.array([False, True, True])
    pb = bound(torch.sigmoid(out), 0.8)
    _, faithful = MaskHead(0.8).log_prob_entropy(out, np.ones((1, 3), np.int8), controlled)
    assert torch.allclose(faithful, (-pb * torch.log(pb)).sum(1))  # every block, bounded p', the p log p half
    _, proper = MaskHead(0.8, "bernoulli").log_prob_entropy(out, np.ones((1, 3), np.int8), controlled)
    p = torch.sigmoid(out)[:, 1:]
    assert torch.allclose(proper, -(p * torch.log(p) + (1 - p) * torch.log(1 - p)).sum(1))
    with pytest.raises(ValueError, match="entropy"):
        MaskHead(0.8, "shannon")
