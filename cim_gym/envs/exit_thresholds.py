"""CIMExitThresholds-v0: choose per-exit entropy thresholds of a multi-exit ResNet on a noisy CIM chip."""

from __future__ import annotations

from cim_gym.envs.actions import ExitThresholdsAction
from cim_gym.envs.base import CIMEnv, CIMVectorEnv


class CIMExitThresholdsEnv(CIMEnv):
    """
    ## Description
    The proposal's own formulation of the multi-exit model (its figure 10): BranchyNet's exit rule with thresholds
    decided by a policy from the image and the chip's noise level. Each episode draws an image and a chip; the
    agent sets one entropy threshold per intermediate exit; the chip computes the exits and the sample leaves at the
    first exit whose softmax entropy ``H = -sum p ln p`` (on the noisy chip) is below its threshold, else at the
    final head.

    ## Action Space
    ``Box(-1, 1, (E-1,), float32)``: the thresholds of exits 0 .. E-2, mapped to entropies
    ``T_e = (action[e] + 1) / 2 * ln C`` (C classes): exit e takes a sample when its entropy is below ``T_e``.
    -1 never exits early; 1 takes every sample at exit 0.

    ## Observation
    ``Dict``: ``features`` ``Box(float32, (16,))`` (or ``image`` with ``obs_mode="image"``) and ``sigma``
    ``Box(float32, (1,))`` (absent with ``observe_sigma=False``); with ``observe_chip=True`` also ``chip``
    ``Box(0, 1, (D,), float32)``, the chip's descriptor from its own test after programming (D = K + 2E = 21 for the
    default ResNet-32: per block the output error against the digital model, then per exit the probe accuracy and
    mean entropy; see :mod:`cim_gym.envs.descriptor`).

    ## Rewards
    As in ``CIMEarlyExit-v0``: ``"accuracy"`` (default), ``"blockdrop"`` (usage = MACs of the path taken / MACs of
    the deepest path) or ``"energy"``. Costs count the path up to the exit taken.

    ## Termination
    One decision per episode: ``terminated=True`` after the first step. ``info`` holds correct, label, prediction,
    path (the exit taken), exit_entropy (the entropy in nats at each early exit, shape (E-1,)), sigma, chip_id,
    image_index, usage, macs, energy_pj, latency_ns.

    ## Arguments
    Every field of :class:`cim_gym.envs.EnvConfig`. Default backbone: the multi-exit ResNet-32 on digits.

    ## Rendering
    ``render_mode="rgb_array"``: ``render()`` returns the episode as an RGB array (the image, the chip's id and
    sigma, then the path taken with each exit's entropy against its threshold, prediction against label, MACs);
    ``"human"`` shows it in a window where a display exists. Nothing is drawn unless asked.

    ## Registered Configurations
    ``CIMExitThresholds-v0`` (vector entry point: :class:`CIMExitThresholdsVectorEnv`).
    """

    action_type, env_id = ExitThresholdsAction, "CIMExitThresholds-v0"


class CIMExitThresholdsVectorEnv(CIMVectorEnv):
    """Batched ``CIMExitThresholds-v0``; see :class:`CIMExitThresholdsEnv`.

    ``autoreset_mode`` ("same_step", "next_step", "disabled") and ``render_mode``: see
    :class:`cim_gym.envs.CIMVectorEnv`.
    """

    action_type, env_id = ExitThresholdsAction, "CIMExitThresholds-v0"
