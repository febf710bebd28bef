"""Training: MAE pre-training from recipes (:func:`pretrain`), checkpoints and encoder export."""

from ramen_core.training.checkpoint import (
    TrainState,
    export_encoder,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    training_statistics,
)
from ramen_core.training.pretrain import PretrainResult, parameter_fingerprint, pretrain
from ramen_core.training.recipe import DatasetRecipe, GSDRange, Recipe, load_recipe, recipe_from_dict

__all__ = [
    "DatasetRecipe",
    "GSDRange",
    "PretrainResult",
    "Recipe",
    "TrainState",
    "export_encoder",
    "find_checkpoint",
    "load_checkpoint",
    "load_recipe",
    "parameter_fingerprint",
    "pretrain",
    "recipe_from_dict",
    "save_checkpoint",
    "training_statistics",
]
