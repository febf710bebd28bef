"""``ramen segment``: a class map of a scene from a fine-tuned model, written as a COG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import typer
from rich.console import Console

from ramen_cli.app import app
from ramen_cli.cmd_embed import PER_MODALITY, _ProgressBar, _set_log_level
from ramen_cli.common import handle_errors
from ramen_core.embedding.inputs import CatalogQuery, FileInput
from ramen_core.errors import InputError
from ramen_core.inference.segment import DEFAULT_BATCH_SIZE, DEFAULT_WINDOW, segment
from ramen_core.inference.sources import assignment_for, catalog_orbit, parse_assignments


def _number(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise InputError(f"{option} {value!r} must be a number") from None


def _file_inputs(
    scene: Optional[Path],
    extra: list[str],
    sensors: list[str],
    orbit: list[str],
    sar_units: list[str],
    scale: list[str],
    offset: list[str],
    dates: list[str],
) -> list[FileInput]:
    """Build the inputs: SCENE is the model's first input, ``--input NAME=PATH`` the others."""
    pairs: list[tuple[str | None, str]] = []
    if scene is not None:
        pairs.append((None, str(scene)))
    for text in extra:
        name, separator, path = str(text).partition("=")
        if not separator or not name.strip() or not path:
            raise InputError(f"--input {text!r} must be NAME=PATH with NAME an input of the model, such as --input s1=vv_vh.tif")
        pairs.append((name.strip().lower(), path))

    sensor_names = parse_assignments(sensors, "--sensor")
    orbits = parse_assignments(orbit, "--orbit")
    units = parse_assignments(sar_units, "--sar-units")
    scales = parse_assignments(scale, "--scale")
    offsets = parse_assignments(offset, "--offset")
    acquired = parse_assignments(dates, "--date")
    inputs = []
    for name, path in pairs:
        # A bare --sensor value describes SCENE; NAME=VALUE describes input NAME.
        sensor = sensor_names.get(None) if name is None else sensor_names.get(name)
        key = name or ""
        inputs.append(FileInput(
            path=path,
            sensor=sensor or "",
            name=name,
            orbit=assignment_for(orbits, key),
            sar_units=(assignment_for(units, key) or "auto").lower(),
            scale=_number(assignment_for(scales, key), "--scale"),
            offset=_number(assignment_for(offsets, key), "--offset"),
            date=assignment_for(acquired, key),
        ))
    return inputs


@app.command("segment")
@handle_errors
def segment_command(
    scene: Optional[Path] = typer.Argument(
        None, help="Raster (GeoTIFF, VRT) or folder of one raster per band for the model's first input; "
        "omit it to search a catalog."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output class map (uint8 COG)."),
    model: str = typer.Option(..., "--model", "-m", help="Segmentation model written by `ramen finetune` (file or hf:// URI)."),
    extra_inputs: list[str] = typer.Option(
        [], "--input", help="Another input of the model as NAME=PATH (such as s1=vv_vh.tif); repeat for more."
    ),
    sensors: list[str] = typer.Option(
        [], "--sensor", help="Sensor of an input, checked against the model's (default: the model's). "
        "NAME=SENSOR, or SENSOR for SCENE."
    ),
    gsd: Optional[float] = typer.Option(
        None, "--gsd", help="Working GSD of the encoder in metres (default: the GSD the model was fine-tuned at)."
    ),
    output_gsd: Optional[float] = typer.Option(
        None, "--output-gsd", help="Output pixel size in metres on a snapped metric grid (default: the input's grid)."
    ),
    probabilities: Optional[Path] = typer.Option(
        None, "--probabilities", help="Also write the class probabilities (float32 COG, one band per class)."
    ),
    bbox: Optional[Tuple[float, float, float, float]] = typer.Option(
        None, "--bbox", metavar="W S E N", help="Area as WEST SOUTH EAST NORTH in WGS84 degrees (cuts file inputs)."
    ),
    datetime: Optional[str] = typer.Option(None, "--datetime", help="Catalog search: time range START/END."),
    catalog: Optional[str] = typer.Option(
        None, "--catalog", help="Catalog search: catalog name, STAC API URL or local catalog path."
    ),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", help="Catalog search: maximum cloud cover in percent."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Catalog search: maximum items per sensor."),
    orbit: list[str] = typer.Option([], "--orbit", help=f"Radar orbit direction, asc or des. {PER_MODALITY}"),
    sar_units: list[str] = typer.Option(
        [], "--sar-units", help=f"Radar units: auto (negative values mean dB), db or linear. {PER_MODALITY}"
    ),
    scale: list[str] = typer.Option([], "--scale", help=f"Factor from stored values to physical units. {PER_MODALITY}"),
    offset: list[str] = typer.Option([], "--offset", help=f"Added after --scale, in physical units. {PER_MODALITY}"),
    dates: list[str] = typer.Option([], "--date", help=f"Acquisition date YYYY-MM-DD, for the tags. {PER_MODALITY}"),
    crs: Optional[str] = typer.Option(
        None, "--crs", help="Output CRS (EPSG code) of a snapped metric grid; implies --output-gsd's grid."
    ),
    window: int = typer.Option(DEFAULT_WINDOW, "--window", help="Window side in tokens of --gsd."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Tokens shared by neighbouring windows (default window/4)."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", help="Windows per model call."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 autocast on CUDA), fp32 or bf16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of the same command."),
    checkpoint_interval: float = typer.Option(
        30.0, "--checkpoint-interval", help="Seconds between progress records for --resume."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors, and no progress bar."),
) -> None:
    """Segment a scene with a fine-tuned model and write a uint8 class map COG with a colour map.

    From files: ramen segment scene.tif --model model.safetensors [--input s1=vv_vh.tif] -o classes.tif.
    From a catalog: ramen segment --model model.safetensors --bbox W S E N --datetime START/END -o classes.tif.
    """
    _set_log_level(verbose, quiet)
    if output is None:
        raise InputError("give the output file with -o/--output")
    inputs: Any
    if scene is not None or extra_inputs:
        if datetime is not None or catalog is not None:
            raise InputError("give either files (SCENE, --input) or a catalog search (--bbox, --datetime), not both")
        inputs = _file_inputs(scene, extra_inputs, sensors, orbit, sar_units, scale, offset, dates)
    else:
        if bbox is None:
            raise InputError("give a raster for the model's first input, or a catalog search with --bbox and --datetime")
        inputs = CatalogQuery(
            sensors=[], bbox=bbox, datetime=datetime, catalog=catalog, max_cloud=max_cloud, limit=limit,
            orbit=catalog_orbit(orbit),
        )
    with _ProgressBar(enabled=not quiet) as progress:
        result = segment(
            inputs, output, model=model, gsd=gsd, output_gsd=output_gsd, probabilities=probabilities,
            bbox=bbox, crs=crs, window=window, overlap=overlap, batch_size=batch_size, device=device,
            precision=precision, overwrite=overwrite, resume=resume, checkpoint_interval=checkpoint_interval,
            progress=progress,
        )
    if not quiet:
        console = Console(stderr=True)
        console.print(
            f"Wrote {result.output}: {result.grid.width} x {result.grid.height} pixels, GSD {result.gsd:g} m, "
            f"{result.report.tokens:,} tokens in {result.report.total_seconds:.1f} s",
            highlight=False,
        )
        if result.probabilities is not None:
            console.print(f"Wrote {result.probabilities}", highlight=False)
