"""Gymnasium environments: a CIM-noisy pretrained ResNet, observed as (image features, sigma, chip descriptor).

The environment classes are importable by name (``from cim_gym.envs import CIMBlockDropEnv``); ``gym.make`` and
``gym.make_vec`` with the registered ids are the usual way to build them. The classes load on first access, so
``import cim_gym`` (which registers the ids) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cim_gym.envs.config import EnvConfig
from cim_gym.envs.registration import ENVIRONMENTS, register_envs

if TYPE_CHECKING:
    from cim_gym.envs.base import CIMEnv, CIMVectorEnv
    from cim_gym.envs.block_drop import CIMBlockDropEnv, CIMBlockDropVectorEnv
    from cim_gym.envs.early_exit import CIMEarlyExitEnv, CIMEarlyExitVectorEnv
    from cim_gym.envs.exit_thresholds import CIMExitThresholdsEnv, CIMExitThresholdsVectorEnv

_LAZY = {
    "CIMEnv": "cim_gym.envs.base",
    "CIMVectorEnv": "cim_gym.envs.base",
    "CIMBlockDropEnv": "cim_gym.envs.block_drop",
    "CIMBlockDropVectorEnv": "cim_gym.envs.block_drop",
    "CIMEarlyExitEnv": "cim_gym.envs.early_exit",
    "CIMEarlyExitVectorEnv": "cim_gym.envs.early_exit",
    "CIMExitThresholdsEnv": "cim_gym.envs.exit_thresholds",
    "CIMExitThresholdsVectorEnv": "cim_gym.envs.exit_thresholds",
}

__all__ = [
    "ENVIRONMENTS",
    "CIMBlockDropEnv",
    "CIMBlockDropVectorEnv",
    "CIMEarlyExitEnv",
    "CIMEarlyExitVectorEnv",
    "CIMEnv",
    "CIMExitThresholdsEnv",
    "CIMExitThresholdsVectorEnv",
    "CIMVectorEnv",
    "EnvConfig",
    "register_envs",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
