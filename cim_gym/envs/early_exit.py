"""CIMEarlyExit-v0: choose the exit of a multi-exit ResNet on a noisy CIM chip."""

from __future__ import annotations

from cim_gym.envs.actions import EarlyExitAction
from cim_gym.envs.base import CIMEnv, CIMVectorEnv


class CIMEarlyExitEnv(CIMEnv):
    """
    ## Description
    A multi-exit network (BranchyNet, Teerapittayanon et al., ICPR 2016) on a compute-in-memory chip, where a policy
    rather than a hand-set threshold picks the exit. Each episode draws an image and a chip (sigma and one
    programmed noise instance); the agent sees the image's features and sigma and picks the exit; the chip computes
    up to that exit only.

    ## Action Space
    ``Discrete(E)``: the exit, 0 the shallowest, E-1 the final head (E = 3 by default: after each stage).

    ## Observation
    ``Dict``: ``features`` ``Box(float32, (16,))`` (or ``image`` with ``obs_mode="image"``) and ``sigma``
    ``Box(float32, (1,))`` (absent with ``observe_sigma=False``).

    ## Rewards
    ``"accuracy"`` (default): 1 if correct, ``-penalty`` if wrong. ``"blockdrop"``: ``1 - usage^2`` if correct,
    usage = MACs of the path / MACs of the deepest path. ``"energy"``: accuracy reward minus
    ``energy_price * energy / full-path energy``.

    ## Termination
    One decision per episode: ``terminated=True`` after the first step. ``info`` holds correct, label, prediction,
    path (the exit), sigma, chip_id, image_index, usage, macs, energy_pj, latency_ns. ``reset(options=...)`` pins
    ``sigma``, ``chip`` and ``image``.

    ## Arguments
    Every field of :class:`cim_gym.envs.EnvConfig`. Default backbone: the multi-exit ResNet-32 on digits.

    ## Registered Configurations
    ``CIMEarlyExit-v0`` (vector entry point: :class:`CIMEarlyExitVectorEnv`).
    """

    action_type, env_id = EarlyExitAction, "CIMEarlyExit-v0"


class CIMEarlyExitVectorEnv(CIMVectorEnv):
    """Batched ``CIMEarlyExit-v0``: ``gym.make_vec("CIMEarlyExit-v0", num_envs=N)``; see :class:`CIMEarlyExitEnv`."""

    action_type, env_id = EarlyExitAction, "CIMEarlyExit-v0"
