"""Agents for the cim-gym environments: BlockDrop's REINFORCE (masks, exits, thresholds) and stable-baselines3.

Agents see the environments only through Gymnasium (``gym.make_vec`` and the spaces). A trained agent lives in a
run folder (see :mod:`agents.runs`); :func:`load_policy` reads one back, whatever algorithm trained it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.runs import RunFolderError, read_meta, read_policy_tensors, space_from_json

__all__ = ["ALGORITHMS", "LoadedPolicy", "RunFolderError", "load_policy"]

ALGORITHMS = ("reinforce", "ppo", "a2c", "dqn", "sac")
"""Algorithms ``train_agent.py --algo`` trains."""


@dataclass
class LoadedPolicy:
    """A trained policy and the environment it was trained on.

    Call it (or :meth:`act`) on a batch of observations exactly as the native vector environment returns them; it
    returns a batch of actions of the environment's action space.
    """

    run_dir: Path
    algo: str
    env_id: str
    env_config: dict[str, Any]
    """``EnvConfig.to_dict()`` of the training environment."""
    decision_macs: int
    """Multiply-accumulates of the policy network for one decision (digital; the feature encoder not included)."""
    meta: dict[str, Any] = field(repr=False)
    """The whole ``run.json``."""
    _act: Any = field(repr=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of observations (greedy by default)."""
        return self._act(obs, deterministic)

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.act(obs, True)


def load_policy(run_dir: str | os.PathLike[str], device: str = "cpu") -> LoadedPolicy:
    """Load the policy of a run folder written by ``train_agent.py`` (any algorithm).

    Raises :class:`RunFolderError` when the folder is not a run, has no saved policy, or holds broken weights.
    """
    import torch

    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    obs_space, action_space = space_from_json(meta["observation_space"]), space_from_json(meta["action_space"])
    if meta["algo"] == "reinforce":
        from agents.networks import NetworkSettings, PolicyNetwork, make_head
        from agents.reinforce import make_actor

        net_meta = meta["network"]
        settings = NetworkSettings(**{**net_meta["settings"], "channels": tuple(net_meta["settings"]["channels"])})
        net = PolicyNetwork(obs_space, action_space, settings)
        net.load_state_dict(read_policy_tensors(run_dir))
        net.to(device).eval()
        head = make_head(action_space, net_meta["alpha"], net_meta.get("entropy", "blockdrop"))
        act, macs = make_actor(net, head, torch.device(device)), net.macs(obs_space)
    elif meta["algo"] in ALGORITHMS:
        from agents.sb3 import load_sb3_policy

        actor = load_sb3_policy(run_dir, meta["network"], obs_space, action_space, device)
        act, macs = actor.act, actor.decision_macs
    else:
        raise RunFolderError(f"{run_dir}: algo={meta['algo']!r} is not one of {ALGORITHMS}")
    return LoadedPolicy(run_dir, meta["algo"], meta["env_id"], meta["env_config"], int(macs), meta, act)
