"""``ramen pretrain``: MAE pre-training from a TOML recipe, encoder export and training statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ramen_cli.app import app
from ramen_cli.common import handle_errors
from ramen_core._atomic import atomic_path
from ramen_core.errors import InputError
from ramen_core.model import grid_shape
from ramen_core.training import export_encoder, load_recipe, pretrain, training_statistics
from ramen_core.training.data import PretrainData
from ramen_core.training.pretrain import steps_per_epoch
from ramen_core.weights import load_weights

pretrain_app = typer.Typer(
    help="Pre-train RAMEN as a masked auto-encoder on chip datasets, following a TOML recipe. "
    "Run it under torchrun for several GPUs or nodes.",
    no_args_is_help=True,
    invoke_without_command=True,
)
app.add_typer(pretrain_app, name="pretrain")


def _describe_plan(recipe_path: Path, overrides: list[str]) -> None:
    """Print what a recipe would train on, after checking every dataset."""
    recipe = load_recipe(recipe_path, overrides)
    data = PretrainData(recipe)
    per_epoch = steps_per_epoch(recipe, data)
    console = Console()
    config = recipe.model.config()
    console.print(
        f"recipe {recipe.name}: model {recipe.model.size} (width {config.embed_dim}, depth {config.depth}, "
        f"{config.num_experts} experts), mask ratio {recipe.mae.mask_ratio:g}, {per_epoch} steps per epoch, "
        f"{recipe.schedule.epochs} epochs",
        highlight=False,
    )
    for name, dataset in recipe.datasets.items():
        manifest = data.datasets[name].manifest
        first = manifest.modalities[dataset.modalities[0]]
        finest, coarsest = dataset.finest_and_coarsest_gsd()
        finest_grid = grid_shape(first.size[0], first.size[1], first.gsd, finest)
        coarsest_grid = grid_shape(first.size[0], first.size[1], first.gsd, coarsest)
        console.print(
            f"  {name}: {len(data.datasets[name])} chips, weight {dataset.weight:g}, batch {dataset.batch_size}, "
            f"modalities {', '.join(dataset.modalities)}, target GSD {finest:g} to {coarsest:g} m "
            f"({finest_grid[0]}x{finest_grid[1]} to {coarsest_grid[0]}x{coarsest_grid[1]} tokens per modality)",
            highlight=False,
        )


@pretrain_app.callback()
@handle_errors
def pretrain_command(
    ctx: typer.Context,
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="TOML recipe, such as recipes/tiny_mae.toml."),
    overrides: List[str] = typer.Option(
        [], "--set", help="Override a recipe key, such as --set optim.lr=1e-4 or --set train.max_steps=100.",
        metavar="KEY=VALUE",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in the recipe's checkpoint.dir."),
    resume_from: Optional[Path] = typer.Option(
        None, "--resume-from", help="Continue from this checkpoint folder or step-*.safetensors file."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh even if checkpoint.dir already contains a run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the recipe and its datasets, print the plan and exit."),
) -> None:
    """Pre-train from a recipe: ramen pretrain --recipe recipes/mae.toml [--set KEY=VALUE]... [--resume]."""
    if ctx.invoked_subcommand is not None:
        return
    if recipe is None:
        raise InputError("give a recipe with --recipe, for example --recipe recipes/tiny_mae.toml")
    if resume and resume_from is not None:
        raise InputError("give either --resume or --resume-from, not both")
    if dry_run:
        _describe_plan(recipe, overrides)
        return
    loaded = load_recipe(recipe, overrides)
    result = pretrain(loaded, resume=resume_from if resume_from is not None else resume, overwrite=overwrite, progress=True)
    if result.checkpoint is None:
        return
    console = Console()
    summary = result.summary
    if summary.get("loss_first") is not None:
        console.print(
            f"loss {summary['loss_first']:.4f} (first {summary['window']} batches) -> {summary['loss_last']:.4f} "
            f"(last {summary['window']}); checkpoint {result.checkpoint}",
            highlight=False,
        )
    if result.encoder is not None:
        console.print(f"encoder for `ramen embed`: {result.encoder}", highlight=False)
    console.print(f"metrics, summary and loss plot: {result.log_dir}", highlight=False)


@pretrain_app.command("export")
@handle_errors
def export_command(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder (its newest checkpoint) or step-*.safetensors file."),
    output: Path = typer.Option(..., "--out", "-o", help="Encoder weights file to write (.safetensors)."),
    description: Optional[str] = typer.Option(
        None, "--description", help="Text stored as the file's 'description' metadata, such as what the model is for."
    ),
) -> None:
    """Write the encoder of a pre-training checkpoint in the weights format that `ramen embed` loads."""
    path = export_encoder(checkpoint, output, {"description": description} if description else None)
    Console().print(f"wrote {path}", highlight=False)


@pretrain_app.command("statistics")
@handle_errors
def statistics_command(
    weights: Path = typer.Argument(..., help="Pre-training checkpoint or exported encoder (.safetensors)."),
    output: Path = typer.Option(..., "--out", "-o", help="JSON file to write, for `ramen embed --normalization FILE`."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Training dataset whose statistics to write (needed when there were several)."
    ),
) -> None:
    """Write the band statistics a model was pre-trained with, in the layout `ramen embed` reads."""
    table = training_statistics(load_weights(weights).metadata, dataset)
    with atomic_path(output, what="statistics file") as temporary:
        temporary.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    Console().print(f"wrote {output} ({', '.join(table)})", highlight=False)
