"""RLlib PPO (new API stack, local Ray) on a cim-gym environment: the path for training beyond one machine.

RLlib's default model catalog has no encoder for Dict observations and no distribution for ``MultiBinary``
actions, so each environment is wrapped in Gymnasium's ``FlattenObservation`` (features, sigma and, with
``--observe-chip``, the chip descriptor in one vector) and a block mask is offered as ``MultiDiscrete([2] * K)``
(the same masks; :class:`BlocksAsMultiDiscrete`). Needs the optional extra: ``pip install "cim-gym[rllib]"``
(RLlib pins its own Gymnasium release; cim-gym supports it).

    python examples/rllib_ppo.py [--env-id CIMEarlyExit-v0] [--iterations 5] [--batch 512] [--observe-chip]
"""

from __future__ import annotations

import argparse
from typing import Any

import gymnasium as gym
import numpy as np


class BlocksAsMultiDiscrete(gym.ActionWrapper):
    """Offers a ``MultiBinary(K)`` block mask as ``MultiDiscrete([2] * K)``: the same K choices of 0 or 1."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, gym.spaces.MultiBinary):
            raise ValueError(f"BlocksAsMultiDiscrete needs a MultiBinary action space; got {env.action_space}")
        self.action_space = gym.spaces.MultiDiscrete(np.full(env.action_space.n, 2))

    def action(self, action: Any) -> np.ndarray:
        return np.asarray(action, dtype=np.int8)


def make_flat_env(env_config: dict[str, Any]) -> gym.Env:
    """RLlib's env creator: a registered cim-gym id, its keyword arguments, observations flattened, block masks
    as MultiDiscrete."""
    import cim_gym  # noqa: F401  (registers the ids inside every Ray worker)

    kwargs = {k: v for k, v in env_config.items() if k != "env_id"}
    env: gym.Env = gym.wrappers.FlattenObservation(gym.make(env_config["env_id"], **kwargs))
    if isinstance(env.action_space, gym.spaces.MultiBinary):
        env = BlocksAsMultiDiscrete(env)
    return env


def build_ppo(env_id: str, env_kwargs: dict[str, Any], batch: int, seed: int) -> Any:
    """A PPO algorithm on ``env_id`` (flattened observations), sampling in the driver process (no remote runners)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    register_env("cim-gym-flat", make_flat_env)
    config = (
        PPOConfig()
        .environment("cim-gym-flat", env_config={"env_id": env_id, **env_kwargs})
        .framework("torch")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=batch, minibatch_size=min(128, batch), num_epochs=2, lr=3e-4)
        .debugging(seed=seed)
    )
    return config.build_algo()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="CIMEarlyExit-v0", help="a registered cim-gym id (default CIMEarlyExit-v0)")
    parser.add_argument("--iterations", type=int, default=5, help="PPO training iterations (default 5)")
    parser.add_argument("--batch", type=int, default=512, help="episodes (= steps) per iteration (default 512)")
    parser.add_argument("--observe-chip", action="store_true", help="add the chip descriptor to the observation")
    parser.add_argument("--seed", type=int, default=0, help="seed of RLlib and of the chip pool (default 0)")
    args = parser.parse_args()
    for name in ("iterations", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} is not allowed: expected an integer >= 1")

    try:
        import ray
        import ray.rllib  # noqa: F401
    except ImportError as err:
        parser.error(f"RLlib is not installed ({err}): pip install 'cim-gym[rllib]'")
    import torch

    torch.set_num_threads(1)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        algo = build_ppo(args.env_id, {"chip_seed": args.seed, "observe_chip": args.observe_chip}, args.batch, args.seed)
        for i in range(args.iterations):
            result = algo.train()
            runners = result["env_runners"]
            print(f"iteration {i + 1}: mean reward {runners['episode_return_mean']:+.3f} over "
                  f"{runners['num_episodes']} episodes")
        algo.stop()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
