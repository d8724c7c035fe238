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
    ``Box(float32, (1,))`` (absent with ``observe_sigma=False``); with ``observe_chip=True`` also ``chip``
    ``Box(0, 1, (D,), float32)``, the chip's descriptor from its own test after programming (D = K + 2E = 21 for the
    default ResNet-32: per block the output error against the digital model, then per exit the probe accuracy and
    mean entropy; see :mod:`cim_gym.envs.descriptor`).

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

    ## Rendering
    ``render_mode="rgb_array"``: ``render()`` returns the episode as an RGB array (the image, the chip's id and
    sigma, then the path taken, prediction against label, MACs); ``"human"`` shows it in a
    window where a display exists. Nothing is drawn unless asked.

    ## Registered Configurations
    ``CIMEarlyExit-v0`` (vector entry point: :class:`CIMEarlyExitVectorEnv`).
    """

    action_type, env_id = EarlyExitAction, "CIMEarlyExit-v0"


class CIMEarlyExitVectorEnv(CIMVectorEnv):
    """Batched ``CIMEarlyExit-v0``: ``gym.make_vec("CIMEarlyExit-v0", num_envs=N)``; see :class:`CIMEarlyExitEnv`.

    ``autoreset_mode`` ("same_step", "next_step", "disabled") and ``render_mode``: see
    :class:`cim_gym.envs.CIMVectorEnv`.
    """

    action_type, env_id = EarlyExitAction, "CIMEarlyExit-v0"
