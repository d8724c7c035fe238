"""Evaluation: every method on the same chips and images, paired intervals, Pareto views, one sweep engine.

>>> from cim_gym.evaluation import FixedDepth, SweepSpec, run_sweep
>>> spec = SweepSpec(dataset="digits", sigmas=(0.0, 0.1), chips=3, images=100)          # doctest: +SKIP
>>> run_sweep(spec, [FixedDepth(depth=8), FixedDepth(depth=20)], "runs/eval-demo")      # doctest: +SKIP

``python evaluate.py --sigma-grid`` (top level) runs the standard comparison; the depth x noise study and the sigma
table of the shipped checkpoints live here too (``python -m cim_gym.evaluation.noise_study``,
``python -m cim_gym.evaluation.sigma_table``).
"""

from cim_gym.evaluation.methods import (
    ROLES,
    EntropyExits,
    FixedDepth,
    FixedExit,
    Method,
    PolicyMethod,
    StaticMask,
    choose_entropy_threshold,
    static_mask,
)
from cim_gym.evaluation.stats import Interval, mean_interval, paired_interval
from cim_gym.evaluation.sweep import (
    BackboneContext,
    Engine,
    SweepMismatchError,
    SweepResult,
    SweepSpec,
    folder_hash,
    run_sweep,
)

__all__ = [
    "ROLES",
    "BackboneContext",
    "Engine",
    "EntropyExits",
    "FixedDepth",
    "FixedExit",
    "Interval",
    "Method",
    "PolicyMethod",
    "StaticMask",
    "SweepMismatchError",
    "SweepResult",
    "SweepSpec",
    "choose_entropy_threshold",
    "folder_hash",
    "mean_interval",
    "paired_interval",
    "run_sweep",
    "static_mask",
]
