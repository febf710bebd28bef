"""``ramen chips``: write a chip dataset from rasters, compute its statistics, or describe it."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ramen_cli.app import app
from ramen_cli.common import handle_errors
from ramen_core.chips import Manifest, build_chips, compute_stats, load_chip_spec, read_manifest
from ramen_core.chips.spec import with_labels
from ramen_core.errors import InputError


def _split(text: Optional[str]) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--ignore-values {text!r} must be whole numbers, such as -1,255") from None


def _manifest_table(manifest: Manifest, folder: Path) -> Table:
    table = Table(title=f"{manifest.name}: {manifest.num_chips} chips in {len(manifest.shards)} shards ({folder})",
                  title_justify="left")
    table.add_column("modality")
    table.add_column("sensor")
    table.add_column("bands")
    table.add_column("GSD (m)", justify="right")
    table.add_column("chip (px)", justify="right")
    table.add_column("dates", justify="right")
    table.add_column("statistics")
    for name, info in manifest.modalities.items():
        stats = manifest.stats.get(name) if manifest.stats else None
        table.add_row(
            name,
            info.sensor or "-",
            ", ".join(band.name for band in info.bands),
            f"{info.gsd:g}",
            f"{info.size[0]}x{info.size[1]}",
            str(info.num_dates),
            "yes" if stats else "no",
        )
    return table


@app.command("chips")
@handle_errors
def chips_command(
    folder: Path = typer.Argument(..., help="Chip dataset folder to write, or to read with --stats or alone."),
    spec: Optional[Path] = typer.Option(
        None, "--spec", help="Chip spec TOML naming the modalities, the chip size and the scenes' files."
    ),
    overrides: List[str] = typer.Option(
        [], "--set", help="Override a spec key, such as --set size=64 or --set modalities.s2.gsd=20.", metavar="KEY=VALUE"
    ),
    stats: bool = typer.Option(
        False, "--stats", help="Compute per-channel mean and standard deviation over valid pixels and store them in the manifest."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset in FOLDER."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="Label raster of the spec's single scene (values are class indices): store a label "
        "chip with every chip, for `ramen finetune`."
    ),
    classes: Optional[str] = typer.Option(
        None, "--classes", help="Comma-separated class names of --labels (needed when the spec has no [label] table)."
    ),
    ignore_values: Optional[str] = typer.Option(
        None, "--ignore-values", help="Comma-separated label values that mean unlabelled, besides the raster's nodata."
    ),
) -> None:
    """Write aligned multimodal chips as sharded safetensors with a manifest.

    With --spec, cut the spec's scenes into chips and write them to FOLDER (and compute
    statistics with --stats). Without --spec, --stats computes the statistics of the
    existing dataset in FOLDER, and no option prints what FOLDER holds.
    """
    console = Console(stderr=True)
    if spec is None and (overrides or labels is not None):
        raise InputError("--set and --labels change a chip spec; give the spec with --spec")
    if spec is not None:
        chip_spec = load_chip_spec(spec, overrides)
        if labels is not None:
            chip_spec = with_labels(
                chip_spec, labels, classes=_split(classes), ignore_values=[_integer(v) for v in _split(ignore_values)]
            )
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("cutting chips", total=None)
            manifest = build_chips(
                chip_spec, folder, stats=False, overwrite=overwrite,
                progress=lambda scene, count: bar.update(task, description=f"scene {scene}: {count} chips"),
            )
    else:
        manifest = read_manifest(folder)
    if stats:
        with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("computing statistics", total=len(manifest.shards))
            compute_stats(folder, progress=lambda done, total: bar.update(task, completed=done))
        manifest = read_manifest(folder)
    Console().print(_manifest_table(manifest, folder))
