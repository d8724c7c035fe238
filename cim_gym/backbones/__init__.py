"""Pretrained, quantized backbones: checkpoint format, registry and the training entry point.

>>> from cim_gym.backbones import load_backbone
>>> bb = load_backbone("digits", depth=20, variant="blockdrop")   # doctest: +SKIP
>>> bb.model, bb.meta["accuracy"]["test"], bb.quant_config          # doctest: +SKIP
>>> load_backbone("fashion-mnist", depth=20, recipe="no-stochastic-depth")  # doctest: +SKIP

Shipped checkpoints live in ``cim_gym/backbones/weights``; ``python -m cim_gym.backbones.train`` makes new ones
(into ``$CIM_GYM_HOME/backbones`` or ``~/.cache/cim-gym/backbones``), ``list_backbones()`` lists both and
``recipes_of(dataset, depth, variant)`` the training recipes available for one architecture.
"""

from cim_gym.backbones.checkpoint import (
    SHIPPED_DIR,
    STANDARD_RECIPE,
    VARIANTS,
    Backbone,
    BackboneError,
    BackboneNotFoundError,
    CorruptCheckpointError,
    backbone_name,
    cache_dir,
    list_backbones,
    load_backbone,
    parse_name,
    parse_recipe,
    recipe_label,
    recipes_of,
    save_checkpoint,
    split_name,
    train_command,
)

__all__ = [
    "SHIPPED_DIR",
    "STANDARD_RECIPE",
    "VARIANTS",
    "Backbone",
    "BackboneError",
    "BackboneNotFoundError",
    "CorruptCheckpointError",
    "backbone_name",
    "cache_dir",
    "list_backbones",
    "load_backbone",
    "parse_name",
    "parse_recipe",
    "recipe_label",
    "recipes_of",
    "save_checkpoint",
    "split_name",
    "train_command",
]
