"""cim-gym: noise-aware dynamic inference on simulated compute-in-memory (CIM) chips, as Gymnasium environments.

Importing the package registers the environment ids (``CIMBlockDrop-v0``, ``CIMEarlyExit-v0``,
``CIMExitThresholds-v0``) and loads nothing heavy: data, weights and chips are made on first use.
"""

__version__ = "0.1.0"

from cim_gym.envs.registration import register_envs

register_envs()

__all__ = ["__version__", "register_envs"]
