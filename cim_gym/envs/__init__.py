"""Gymnasium environments: a CIM-noisy pretrained ResNet, observed as (image features, sigma)."""

from cim_gym.envs.config import EnvConfig
from cim_gym.envs.registration import ENVIRONMENTS, register_envs

__all__ = ["ENVIRONMENTS", "EnvConfig", "register_envs"]
