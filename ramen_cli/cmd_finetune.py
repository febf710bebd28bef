"""``ramen finetune``: train a UPerNet segmentation head from a TOML recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ramen_cli.app import app
from ramen_cli.common import handle_errors
from ramen_core.training.finetune import finetune
from ramen_core.training.finetune_recipe import load_finetune_recipe
from ramen_core.training.metrics import MIOU_DEFINITION


def _epoch_line(record: dict[str, Any]) -> str:
    ious = ", ".join(f"{name} {value:.3f}" if value is not None else f"{name} -" for name, value in record["iou"].items())
    mark = " (best so far, saved)" if record.get("improved") else ""
    return (
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
        f"mIoU {record['miou']:.4f} (majority class {record['majority_class_miou']:.4f}), "
        f"OA {record['overall_accuracy']:.4f}; IoU {ious}{mark}"
    )


@app.command("finetune")
@handle_errors
def finetune_command(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="TOML recipe, such as recipes/finetune_sen1floods11.toml."),
    overrides: List[str] = typer.Option(
        [], "--set", help="Override a recipe key, such as --set schedule.epochs=5 or --set data.gsd=20.",
        metavar="KEY=VALUE",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the model and results of an earlier run in the recipe's output.dir."
    ),
) -> None:
    """Fine-tune a segmentation head on labelled chips and save the best epoch as one model file.

    Every epoch's validation (mIoU, per-class IoU, overall accuracy, confusion matrix) is
    printed and appended to metrics.jsonl in the recipe's output folder.
    """
    loaded = load_finetune_recipe(recipe, overrides)
    console = Console()
    console.print(f"{MIOU_DEFINITION}.", highlight=False)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task("training", total=None, loss="-")
        saved: dict[str, Any] = {}

        def on_event(event: dict[str, Any]) -> None:
            kind = event["event"]
            if kind == "start":
                bar.update(task, total=event["epochs"] * event["steps_per_epoch"])
            elif kind == "step":
                bar.update(task, completed=event["step"], description=f"epoch {event['epoch']}", loss=f"{event['loss']:.4f}")
            elif kind == "epoch":
                bar.console.print(_epoch_line(event), highlight=False)
                if event.get("improved"):
                    saved.update(epoch=event["epoch"], miou=event["miou"])

        try:
            result = finetune(loaded, on_event=on_event, overwrite=overwrite)
        except KeyboardInterrupt:
            if saved:
                text = (f"Interrupted. The best epoch so far, {saved['epoch']} (mIoU {saved['miou']:.4f}), is saved in "
                        f"{Path(loaded.output.dir) / 'model.safetensors'}.")
            else:
                text = "Interrupted before the first epoch ended; no model was saved."
            console.print(text, highlight=False)
            raise typer.Exit(code=130) from None
    console.print(
        f"best epoch {result.best_epoch}: mIoU {result.best_scores.miou:.4f}; model {result.model_path}; "
        f"metrics, summary and plot in {result.output_dir}",
        highlight=False,
    )
