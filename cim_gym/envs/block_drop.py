"""CIMBlockDrop-v0: choose which residual blocks of a pretrained ResNet run on a noisy CIM chip."""

from __future__ import annotations

from cim_gym.envs.actions import BlockDropAction
from cim_gym.envs.base import CIMEnv, CIMVectorEnv


class CIMBlockDropEnv(CIMEnv):
    """
    ## Description
    BlockDrop (Wu et al., CVPR 2018) on a compute-in-memory chip. Each episode draws an image from the split and a
    chip from the pool (a sigma value and one programmed noise instance of the quantized backbone). The agent sees
    the image's features and the chip's sigma and picks a block mask; the image is then classified by the chip,
    running only the chosen blocks (a skipped block passes its shortcut through, BlockDrop's semantics).

    ## Action Space
    ``MultiBinary(K)``, K = 3n residual blocks of the ResNet-(6n+2) backbone: 1 runs block k, 0 skips it.

    ## Observation
    ``Dict``: ``features`` ``Box(float32, (16,))``, the clean backbone's stem and first stage, pooled (or ``image``
    ``Box(float32, (C, H, W))`` with ``obs_mode="image"``), and ``sigma`` ``Box(float32, (1,))``, the chip's noise
    level (absent with ``observe_sigma=False``), and with ``observe_chip=True`` ``chip`` ``Box(0, 1, (D,), float32)``,
    the chip's descriptor from its own test after programming (D = K + 2 = 11 for the default ResNet-20: per block
    the output error against the digital model, then the probe accuracy and mean entropy; see
    :mod:`cim_gym.envs.descriptor`). Any of sigma and chip, both or neither.

    ## Rewards
    ``reward="accuracy"`` (default): 1 if correct, ``-penalty`` if wrong. ``"blockdrop"``: ``1 - usage^2`` if
    correct, ``-penalty`` if wrong, usage = fraction of blocks run. ``"energy"``: the accuracy reward minus
    ``energy_price * energy / full-path energy``.

    ## Termination
    Every episode is one decision: ``terminated=True`` after the first step, never truncated. ``info`` holds
    correct, label, prediction, path (the mask), sigma, chip_id, image_index, usage, macs, energy_pj, latency_ns.
    ``reset(options={"sigma": s, "chip": c, "image": i})`` pins any of the three.

    ## Arguments
    Every field of :class:`cim_gym.envs.EnvConfig` (data set, depth, split, CIM preset or config, sigma grid, noise
    source, chips per sigma, chip seed and refresh, observation mode, observe_sigma, reward and penalties).
    Default backbone: ResNet-20 (K = 9) trained with stochastic depth, on digits.

    ## Rendering
    ``render_mode="rgb_array"``: ``render()`` returns the episode as an RGB array (the image, the chip's id and
    sigma, then the path taken, prediction against label, MACs); ``"human"`` shows it in a
    window where a display exists. Nothing is drawn unless asked.

    ## Registered Configurations
    ``CIMBlockDrop-v0`` (vector entry point: :class:`CIMBlockDropVectorEnv`).
    """

    action_type, env_id = BlockDropAction, "CIMBlockDrop-v0"


class CIMBlockDropVectorEnv(CIMVectorEnv):
    """Batched ``CIMBlockDrop-v0``: ``gym.make_vec("CIMBlockDrop-v0", num_envs=N)``; see :class:`CIMBlockDropEnv`.

    ``autoreset_mode`` ("same_step", "next_step", "disabled") and ``render_mode``: see
    :class:`cim_gym.envs.CIMVectorEnv`.
    """

    action_type, env_id = BlockDropAction, "CIMBlockDrop-v0"
