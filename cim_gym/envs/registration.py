"""Registration of every cim-gym environment id with Gymnasium (idempotent, nothing imported eagerly)."""

from __future__ import annotations

import gymnasium as gym

ENVIRONMENTS = {
    "CIMBlockDrop-v0": "cim_gym.envs.block_drop:CIMBlockDrop",
    "CIMEarlyExit-v0": "cim_gym.envs.early_exit:CIMEarlyExit",
    "CIMExitThresholds-v0": "cim_gym.envs.exit_thresholds:CIMExitThresholds",
}


def register_envs() -> None:
    """Register the ids; calling it again changes nothing. No ``max_episode_steps``: episodes end by themselves."""
    for env_id, target in ENVIRONMENTS.items():
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=f"{target}Env", vector_entry_point=f"{target}VectorEnv")
