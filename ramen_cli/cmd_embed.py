"""``ramen embed``: an embedding map of an area at a chosen GSD, written as a COG."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Tuple

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ramen_cli.app import app, err_console
from ramen_cli.common import handle_errors
from ramen_core.embedding import CatalogQuery, FileInput, embed, plan_embedding
from ramen_core.embedding.api import DEFAULT_MAX_OUTPUT_SIZE, EmbedPlan
from ramen_core.errors import InputError
from ramen_core.inference.device import resolve_device
from ramen_core.inference.plan import available_memory, format_bytes, parse_bytes
from ramen_core.inference.progress import ProgressUpdate
from ramen_core.inference.sources import assignment_for, catalog_bands, catalog_orbit, parse_assignments

logger = logging.getLogger(__name__)

PER_MODALITY = "Give NAME=VALUE for one modality, or VALUE for all."


class _TokensPerSecond(ProgressColumn):
    """Encoder throughput of the run so far."""

    def render(self, task: Any) -> Text:
        rate = task.fields.get("tokens_per_second")
        return Text(f"{rate:,.0f} tokens/s" if rate else "", style="progress.data.speed")


class _ProgressBar:
    """A rich progress bar fed by ``embed``'s progress callback."""

    def __init__(self, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _TokensPerSecond(),
            TimeRemainingColumn(),
            console=err_console,
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, update: ProgressUpdate) -> None:
        stage = update.stage
        labels = {"statistics": "statistics", "windows": "windows", "writing": "windows"}
        label = labels.get(stage, stage)
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=update.windows_total)
        self.progress.update(
            self.tasks[label], completed=update.windows_done, total=update.windows_total,
            tokens_per_second=update.tokens_per_second,
            description="writing COG" if stage == "writing" else label,
        )


def _file_inputs(
    scene: Optional[Path],
    sensor: Optional[str],
    extra: list[str],
    bands: list[str],
    orbit: list[str],
    sar_units: list[str],
    scale: list[str],
    offset: list[str],
    dates: list[str],
) -> list[FileInput]:
    pairs: list[tuple[str, str]] = []
    if scene is not None:
        if sensor is None:
            raise InputError(f"give the sensor of {str(scene)!r} with --sensor (such as --sensor s2; see `ramen sensors`)")
        pairs.append((sensor, str(scene)))
    for text in extra:
        name, separator, path = str(text).rpartition("=")
        if not separator or not name or not path:
            raise InputError(f"--input {text!r} must be SENSOR=PATH, such as --input s1=vv_vh.tif")
        pairs.append((name, path))

    band_lists = parse_assignments(bands, "--bands")
    orbits = parse_assignments(orbit, "--orbit")
    units = parse_assignments(sar_units, "--sar-units")
    scales = parse_assignments(scale, "--scale")
    offsets = parse_assignments(offset, "--offset")
    acquired = parse_assignments(dates, "--date")

    def number(value: str | None, option: str) -> float | None:
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            raise InputError(f"{option} {value!r} must be a number") from None

    inputs = []
    for sensor_name, path in pairs:
        probe = FileInput(path=path, sensor=sensor_name)
        name = probe.label()
        band_text = assignment_for(band_lists, name)
        inputs.append(FileInput(
            path=path,
            sensor=sensor_name,
            name=name,
            bands=[part.strip() for part in band_text.split(",") if part.strip()] if band_text else None,
            orbit=assignment_for(orbits, name),
            sar_units=(assignment_for(units, name) or "auto").lower(),
            scale=number(assignment_for(scales, name), "--scale"),
            offset=number(assignment_for(offsets, name), "--offset"),
            date=assignment_for(acquired, name),
        ))
    return inputs


def _plan_table(embed_plan: EmbedPlan, memory_limit: float) -> Table:
    """Build the plan table: one column per GSD (half, chosen, double), one row per quantity."""
    table = Table(title="Window plan (estimates)", title_justify="left")
    table.add_column("")
    for estimate in embed_plan.estimates:
        chosen = abs(estimate.gsd - embed_plan.grid.gsd) < 1e-9
        table.add_column(f"{estimate.gsd:g} m" + (" (chosen)" if chosen else ""), justify="right", no_wrap=True)
    estimates = embed_plan.estimates

    def memory(value: float) -> str:
        return format_bytes(value) + (" (too much)" if value > memory_limit else "")

    rows = [
        ("grid (pixels)", [f"{e.grid_width} x {e.grid_height}" for e in estimates]),
        ("windows", [f"{e.windows:,}" for e in estimates]),
        ("tokens per window", [f"{e.tokens_per_window:,}" for e in estimates]),
        ("tokens", [f"{e.total_tokens:,}" for e in estimates]),
        ("TFLOP", [f"{e.flops / 1e12:.3g}" for e in estimates]),
        ("peak memory", [memory(e.peak_memory_bytes) for e in estimates]),
        ("output size", [format_bytes(e.output_bytes) for e in estimates]),
    ]
    for label, values in rows:
        table.add_row(label, *values)
    return table


def _set_log_level(verbose: int, quiet: bool) -> None:
    if not verbose and not quiet:
        return
    level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    logging.getLogger().setLevel(level)


@app.command("embed")
@handle_errors
def embed_command(
    scene: Optional[Path] = typer.Argument(
        None, help="Raster (GeoTIFF, VRT) or folder of one raster per band; omit it to search a catalog."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output COG (a folder when the output is tiled)."),
    gsd: float = typer.Option(..., "--gsd", help="Output GSD in metres: the size of one token and one output pixel."),
    sensor: Optional[str] = typer.Option(
        None, "--sensor", help="Sensor of SCENE: id or alias (s2), a sensor TOML file, or a description "
        "such as 'spot@1.5:red=665,green=560,blue=490'."
    ),
    extra_inputs: list[str] = typer.Option(
        [], "--input", help="Further modality as SENSOR=PATH (such as s1=vv_vh.tif); repeat for more."
    ),
    bbox: Optional[Tuple[float, float, float, float]] = typer.Option(
        None, "--bbox", metavar="W S E N", help="Area as WEST SOUTH EAST NORTH in WGS84 degrees (cuts file inputs)."
    ),
    datetime: Optional[str] = typer.Option(None, "--datetime", help="Catalog search: time range START/END."),
    sensors: Optional[str] = typer.Option(None, "--sensors", help="Catalog search: comma-separated sensors (s2,s1,dem)."),
    catalog: Optional[str] = typer.Option(
        None, "--catalog", help="Catalog search: catalog name, STAC API URL or local catalog path."
    ),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", help="Catalog search: maximum cloud cover in percent."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Catalog search: maximum items per sensor."),
    bands: list[str] = typer.Option([], "--bands", help=f"Bands to use, comma-separated. {PER_MODALITY}"),
    orbit: list[str] = typer.Option([], "--orbit", help=f"Radar orbit direction, asc or des. {PER_MODALITY}"),
    sar_units: list[str] = typer.Option(
        [], "--sar-units", help=f"Radar units: auto (negative values mean dB), db or linear. {PER_MODALITY}"
    ),
    scale: list[str] = typer.Option([], "--scale", help=f"Factor from stored values to physical units. {PER_MODALITY}"),
    offset: list[str] = typer.Option(
        [], "--offset", help=f"Added after --scale, in physical units (Sentinel-2 baseline 04.00 data: s2=-0.1). "
        f"{PER_MODALITY}"
    ),
    dates: list[str] = typer.Option([], "--date", help=f"Acquisition date YYYY-MM-DD, for the tags. {PER_MODALITY}"),
    crs: Optional[str] = typer.Option(
        None, "--crs", help="Output CRS (EPSG code); default the input's if projected, else the UTM zone of the centre."
    ),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="Weights file or hf:// URI. Default: the official RAMEN checkpoint, downloaded once."
    ),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="Allow pickled torch checkpoints (runs code in them; trusted files only)."
    ),
    normalization: str = typer.Option(
        "registry", "--normalization", help="Band statistics: registry, global (first pass over the input) or FILE.json."
    ),
    window: int = typer.Option(32, "--window", help="Window side in tokens."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Tokens shared by neighbouring windows (default window/4)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per model call."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 autocast on CUDA), fp32 or bf16."),
    dtype: str = typer.Option("float32", "--dtype", help="Output values: float32 or float16."),
    fuse: str = typer.Option("mean", "--fuse", help="Modalities: mean (D bands) or concat (M x D bands)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Encoder block to write, from 1 (default the last)."),
    vectors: Optional[Path] = typer.Option(
        None, "--vectors", help="Also write one GeoParquet row per window (footprint and pooled embedding)."
    ),
    pooling: str = typer.Option("mean", "--pooling", help="Vector of a window: mean of its tokens, or cls."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also write a PCA false-colour PNG."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of the same command."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="Dask scheduler address (tcp://host:8786); tiles run on its workers."
    ),
    tile_size: Optional[int] = typer.Option(
        None, "--tile-size", help="Tile side in pixels for Dask runs and tiled outputs (default 512)."
    ),
    max_output_size: str = typer.Option(
        DEFAULT_MAX_OUTPUT_SIZE, "--max-output-size",
        help="Above this uncompressed size, write a folder of COG tiles with a STAC collection.",
    ),
    max_memory: Optional[str] = typer.Option(
        None, "--max-memory", help="Memory a batch may use, such as 8GiB (default: what is available now)."
    ),
    checkpoint_interval: float = typer.Option(
        30.0, "--checkpoint-interval", help="Seconds between progress records for --resume."
    ),
    show_plan: bool = typer.Option(
        False, "--plan", help="Print the grid, windows, tokens, FLOPs and memory at GSD/2, GSD and 2xGSD, then exit."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors, and no progress bar."),
) -> None:
    """Embed an area at a chosen GSD and write the embeddings as a Cloud-Optimized GeoTIFF.

    From files: ramen embed scene.tif --sensor s2 --gsd 20 -o emb.tif [--input s1=vv_vh.tif --orbit s1=des].
    From a catalog: ramen embed --bbox W S E N --datetime START/END --sensors s2,s1 --gsd 20 -o emb.tif.
    """
    _set_log_level(verbose, quiet)
    if scene is not None or extra_inputs:
        if sensors is not None:
            raise InputError("give either files (SCENE --sensor, --input) or a catalog search (--sensors), not both")
        inputs: Any = _file_inputs(scene, sensor, extra_inputs, bands, orbit, sar_units, scale, offset, dates)
    else:
        if sensors is None or bbox is None:
            raise InputError("give a raster and its --sensor, or a catalog search with --bbox and --sensors")
        inputs = CatalogQuery(
            sensors=sensors, bbox=bbox, datetime=datetime, catalog=catalog, max_cloud=max_cloud, limit=limit,
            bands=catalog_bands(bands, sensors), orbit=catalog_orbit(orbit),
        )
        bbox = None

    if show_plan:
        _print_plan(inputs, gsd=gsd, weights=weights, trust_checkpoint=trust_checkpoint, bbox=bbox, crs=crs,
                    window=window, overlap=overlap, batch_size=batch_size, fuse=fuse, layer=layer, dtype=dtype,
                    scheduler=scheduler, tile_size=tile_size, max_output_size=max_output_size, device=device,
                    max_memory=max_memory)
        return
    if output is None:
        raise InputError("give the output file with -o/--output (or --plan to only print the plan)")

    try:
        with _ProgressBar(enabled=not quiet) as progress:
            result = embed(
                inputs, output, gsd=gsd, weights=weights, trust_checkpoint=trust_checkpoint, bbox=bbox, crs=crs,
                normalization=normalization, window=window, overlap=overlap, batch_size=batch_size, device=device,
                precision=precision, dtype=dtype, fuse=fuse, layer=layer, vectors=vectors, pooling=pooling,
                preview=preview, overwrite=overwrite, resume=resume, scheduler=scheduler, tile_size=tile_size,
                max_output_size=max_output_size, max_memory=max_memory, checkpoint_interval=checkpoint_interval,
                progress=progress,
            )
    except KeyboardInterrupt:
        err_console.print("Interrupted. Run the same command with --resume to continue.", highlight=False)
        raise typer.Exit(code=130) from None
    if not quiet:
        console = Console(stderr=True)
        kind = "folder of COG tiles" if result.tiled else "COG"
        console.print(
            f"Wrote {kind} {result.output}: {result.bands} bands, {result.grid.width} x {result.grid.height} "
            f"pixels of {result.grid.gsd:g} m, {result.report.tokens:,} tokens in {result.report.total_seconds:.1f} s",
            highlight=False,
        )
        for extra in (result.vectors, result.preview):
            if extra is not None:
                console.print(f"Wrote {extra}", highlight=False)


def _print_plan(inputs: Any, *, weights: Optional[str], device: str, max_memory: Optional[str], **options: Any) -> None:
    from ramen_core.model import RamenConfig
    from ramen_core.weights.hub import is_hub_uri

    config = None
    if weights is None or is_hub_uri(weights):
        # Planning must not download a checkpoint of about a gigabyte.
        config = RamenConfig.base()
    embed_plan = plan_embedding(inputs, weights=weights, config=config, **options)
    limit = parse_bytes(max_memory) if max_memory is not None else available_memory(resolve_device(device))
    console = Console()
    console.print(_plan_table(embed_plan, limit))
    grid = embed_plan.grid
    console.print(
        f"Grid: {grid.width} x {grid.height} pixels of {grid.gsd:g} m in {grid.crs.to_string()}, origin "
        f"({grid.transform.c:.3f}, {grid.transform.f:.3f}); windows of {embed_plan.plan.size} tokens with overlap "
        f"{embed_plan.plan.overlap}; {len(embed_plan.plan.tiles)} tile(s); memory available {format_bytes(limit)}.",
        highlight=False,
    )
    if config is not None:
        console.print("Model: ViT-Base assumed (the hub weights are not read by --plan).", highlight=False)
    if embed_plan.tiled_output:
        console.print("The output exceeds --max-output-size: it would be a folder of COG tiles.", highlight=False)
