"""``ramen chips``: write a chip dataset from rasters, compute its statistics, or describe it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

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


def _per_sensor(values: list[str], convert: Callable[[str], Any], option: str) -> Any:
    """Read ``VALUE`` (for every sensor) or repeated ``SENSOR=VALUE`` options."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return convert(values[0])
    table = {}
    for value in values:
        sensor, separator, text = value.partition("=")
        if not separator or not sensor.strip():
            raise InputError(f"{option} {value!r}: give one VALUE for every sensor, or SENSOR=VALUE per sensor")
        table[sensor.strip()] = convert(text)
    return table


def _gsd(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--gsd {text!r} must be a number of metres") from None


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
        None, "--classes", help="Comma-separated class names of --labels (needed when the spec has no \\[label] table)."
    ),
    ignore_values: Optional[str] = typer.Option(
        None, "--ignore-values", help="Comma-separated label values that mean unlabelled, besides the raster's nodata."
    ),
    sensors: Optional[str] = typer.Option(
        None, "--sensors", help="STAC: comma-separated sensors, one modality each (s2,s1,dem); the first sets the grid."
    ),
    bbox: Optional[Tuple[float, float, float, float]] = typer.Option(
        None, "--bbox", help="STAC: area WEST SOUTH EAST NORTH in degrees.", metavar="W S E N"
    ),
    datetime: Optional[str] = typer.Option(None, "--datetime", help="STAC: time range START/END (2023-08-01/2023-08-31)."),
    catalog: Optional[str] = typer.Option(
        None, "--catalog", help="STAC: catalog name, STAC API URL or local catalog path (default: each sensor's catalog)."
    ),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", help="STAC: maximum cloud cover in percent."),
    limit: Optional[int] = typer.Option(None, "--limit", help="STAC: maximum items per sensor."),
    bands: List[str] = typer.Option(
        [], "--bands", help="STAC: bands, comma-separated, for every sensor or as SENSOR=B02,B03 per sensor."
    ),
    gsd: List[str] = typer.Option(
        [], "--gsd", help="STAC: chip GSD in metres, for every sensor or as SENSOR=GSD (default: native GSDs)."
    ),
    crs: Optional[str] = typer.Option(None, "--crs", help="STAC: output CRS, such as EPSG:32633 (default: the UTM zone)."),
    size: int = typer.Option(32, "--size", help="STAC: chip side in pixels of the first sensor."),
    stride: Optional[int] = typer.Option(None, "--stride", help="STAC: step between chips in pixels (default: --size)."),
    min_valid: float = typer.Option(
        0.5, "--min-valid", help="STAC: minimum share of valid pixels in every modality of a chip."
    ),
    shard_size: int = typer.Option(256, "--shard-size", help="STAC: chips per shard file."),
    name: Optional[str] = typer.Option(None, "--name", help="STAC: dataset name (default: the folder name)."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="STAC: Dask scheduler address (tcp://host:8786) that loads the pixels."
    ),
) -> None:
    """Write aligned multimodal chips as sharded safetensors with a manifest.

    With --spec, cut the spec's scenes (local rasters) into chips and write them to FOLDER.
    With --sensors and --bbox, search a STAC catalog, load aligned cubes and cut those.
    --stats then computes the per-channel statistics. Without either source, --stats
    computes the statistics of the existing dataset in FOLDER, and no option prints what
    FOLDER contains.
    """
    console = Console(stderr=True)
    if spec is None and (overrides or labels is not None):
        raise InputError("--set and --labels change a chip spec; give the spec with --spec")
    from_stac = sensors is not None or bbox is not None
    if from_stac and spec is not None:
        raise InputError("give either --spec (local rasters) or --sensors and --bbox (a STAC search), not both")
    if from_stac:
        if sensors is None or bbox is None:
            raise InputError("a STAC source needs both --sensors (such as s2,s1) and --bbox WEST SOUTH EAST NORTH")
        from ramen_core.chips.stac import build_chips_from_stac

        band_lists = _per_sensor(bands, lambda text: _split(text), "--bands")
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("searching and loading", total=None)
            manifest = build_chips_from_stac(
                folder, sensors=sensors, bbox=bbox, datetime=datetime, catalog=catalog, max_cloud=max_cloud,
                limit=limit, bands=band_lists, gsd=_per_sensor(gsd, _gsd, "--gsd"), crs=crs, scheduler=scheduler,
                size=size, stride=stride, min_valid=min_valid, shard_size=shard_size, name=name or folder.name,
                overwrite=overwrite,
                progress=lambda dataset, count: bar.update(task, description=f"{dataset}: {count} chips"),
            )
    elif spec is not None:
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
