"""``embed``: an embedding map of an area at a chosen GSD, streamed to a Cloud-Optimized GeoTIFF.

This is the library call behind ``ramen embed``; see ``docs/python-api.md`` for a worked
example. Steps:

1. open the inputs (local rasters, or a STAC search loaded as lazy cubes), choose the
   output CRS and the area, and snap the area outward to whole multiples of the GSD;
2. plan windows of ``window`` x ``window`` tokens with ``overlap`` and check that the plan
   fits in memory;
3. compute the normalisation statistics (registry, a global first pass, or a file);
4. run the window engine (:mod:`ramen_core.inference.run`): read each batch of windows,
   encode it, blend overlapping windows, and write rows to a raw GeoTIFF as they finish;
5. convert to a validated COG (or a folder of COG tiles with a STAC collection when the
   output is larger than ``max_output_size``) and rename it into place; then write the
   optional per-window vectors (GeoParquet) and the PCA preview (PNG).

Nothing is left at the output paths when a step fails. An interrupted run keeps its work
folder (``<output>.ramen-partial``) for ``resume=True``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ramen_core import __version__
from ramen_core.embedding.inputs import CatalogQuery, FileInput, check_has_data, open_catalog_inputs, open_file_inputs
from ramen_core.embedding.task import FUSE_MODES, POOLING_MODES, EmbeddingTaskFactory
from ramen_core.errors import EmptyResultError, InputError
from ramen_core.inference.device import resolve_device, resolve_precision
from ramen_core.inference.normalization import Normalization, resolve_normalization
from ramen_core.inference.plan import (
    ModalityCost,
    PlanEstimate,
    available_memory,
    check_memory,
    estimate_plan,
    format_bytes,
    parse_bytes,
)
from ramen_core.inference.progress import ProgressCallback, ProgressRecord, ProgressUpdate, fingerprint_of
from ramen_core.inference.run import ExtrasStore, RunReport, run_plan
from ramen_core.inference.tiling import TargetGrid, WindowPlan, plan_windows, snap_grid
from ramen_core.inference.writer import (
    OUTPUT_DTYPES,
    CogSink,
    CogTileFolderSink,
    OutputSink,
    RasterMetadata,
    check_output_paths,
    partial_dir_for,
    remove_path,
)

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 32
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_OUTPUT_SIZE = "16GiB"
# Width in pixels of the column bands a local run blends at a time (bounds the blending buffers).
DEFAULT_LOCAL_TILE_WIDTH = 2048
# Side in pixels of the square tiles of Dask runs and of tile-folder outputs.
DEFAULT_TILE_SIZE = 512

Inputs = FileInput | Sequence[FileInput] | CatalogQuery


@dataclass
class EmbedPlan:
    """Everything decided before a run: inputs, grid, windows and cost estimates.

    Attributes:
        modalities: the opened inputs, in model order.
        grid: the target grid.
        plan: windows and tiles.
        estimates: cost at GSD/2, GSD and 2·GSD (in that order; a GSD whose area holds no
            token is left out).
        config: the model config.
        sha256: SHA-256 of the weights file.
        weights: the weights path or URI as given.
        tiled_output: whether the output is a folder of COG tiles.
        search: record of the catalog search, for catalog inputs.
    """

    modalities: list[Any]
    grid: TargetGrid
    plan: WindowPlan
    estimates: list[PlanEstimate]
    config: Any
    sha256: str
    weights: str
    tiled_output: bool
    search: dict[str, Any] = field(default_factory=dict)

    @property
    def estimate(self) -> PlanEstimate:
        """The estimate at the chosen GSD."""
        return next(e for e in self.estimates if math.isclose(e.gsd, self.grid.gsd))


@dataclass
class EmbedResult:
    """Outputs of an ``embed`` run.

    Attributes:
        output: the COG (or the folder of COG tiles).
        grid: the output grid.
        bands: number of output bands.
        tags: the tags written into the output.
        report: counters and timings of the run.
        vectors: the GeoParquet file, if requested.
        preview: the PNG quicklook, if requested.
        tiled: whether ``output`` is a folder of tiles.
    """

    output: Path
    grid: TargetGrid
    bands: int
    tags: dict[str, str]
    report: RunReport
    vectors: Path | None = None
    preview: Path | None = None
    tiled: bool = False


def _as_inputs(inputs: Inputs) -> list[FileInput] | CatalogQuery:
    if isinstance(inputs, CatalogQuery):
        return inputs
    if isinstance(inputs, FileInput):
        return [inputs]
    items = list(inputs)
    if not all(isinstance(item, FileInput) for item in items):
        raise InputError("inputs must be FileInput objects, a list of them, or a CatalogQuery")
    return items


def _load_model_info(weights: str, trust_checkpoint: bool) -> Any:
    from ramen_core.weights import load_weights

    return load_weights(weights, trust_checkpoint)


def _costs(modalities: Sequence[Any]) -> list[ModalityCost]:
    return [ModalityCost(len(m.dates), len(m.bands), m.gsd) for m in modalities]


def plan_embedding(
    inputs: Inputs,
    *,
    gsd: float,
    weights: str | os.PathLike[str] | None = None,
    config: Any = None,
    trust_checkpoint: bool = False,
    bbox: Sequence[float] | None = None,
    crs: Any = None,
    window: int = DEFAULT_WINDOW,
    overlap: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fuse: str = "mean",
    layer: int | None = None,
    dtype: str = "float32",
    scheduler: str | None = None,
    tile_size: int | None = None,
    max_output_size: str | float = DEFAULT_MAX_OUTPUT_SIZE,
    loaded_weights: Any = None,
) -> EmbedPlan:
    """Open the inputs and plan a run without running it.

    Takes the arguments of :func:`embed` that decide the plan. ``config`` (a
    :class:`~ramen_core.model.RamenConfig`) replaces reading the weights, which lets a plan
    be made before the weights are downloaded; the SHA-256 is then empty.

    Raises:
        InputError, EmptyResultError, WeightsError: as :func:`embed`.
    """
    from ramen_core.weights import DEFAULT_WEIGHTS

    weights = str(weights or DEFAULT_WEIGHTS)
    if not (isinstance(window, int) and window >= 1):
        raise InputError(f"window must be a positive number of tokens, got {window!r}")
    overlap = window // 4 if overlap is None else overlap
    if fuse not in FUSE_MODES:
        raise InputError(f"fuse {fuse!r} must be one of {', '.join(FUSE_MODES)}")
    if dtype not in OUTPUT_DTYPES:
        raise InputError(f"dtype {dtype!r} must be one of {', '.join(OUTPUT_DTYPES)}")

    sha256 = ""
    if config is None:
        loaded = loaded_weights or _load_model_info(weights, trust_checkpoint)
        config, sha256 = loaded.config, loaded.sha256
    depth = config.depth if layer is None else layer
    if not (isinstance(depth, int) and 1 <= depth <= config.depth):
        raise InputError(f"layer {layer!r} does not exist; the encoder has blocks 1 to {config.depth}")

    parsed = _as_inputs(inputs)
    search_record: dict[str, Any] = {}
    if isinstance(parsed, CatalogQuery):
        chunk = max(64, min(1024, 2 * window * max(1, round(gsd / 10.0))))
        modalities, out_crs, area, search_record = open_catalog_inputs(parsed, crs=crs, gsd=gsd, chunk_size=chunk)
    else:
        modalities, out_crs, area = open_file_inputs(parsed, crs=crs, bbox=bbox)
    grid = snap_grid(area, out_crs, gsd)
    finest = min(m.gsd for m in modalities)
    if gsd < finest * (1 - 1e-9):
        logger.warning(
            "GSD %g m is finer than the finest input (%g m); the inputs are upsampled and the output "
            "holds no detail beyond %g m", gsd, finest, finest,
        )

    channels = config.embed_dim * (1 if fuse == "mean" else len(modalities))
    value_bytes = 4 if dtype == "float32" else 2
    output_bytes = float(grid.width) * grid.height * channels * value_bytes
    tiled_output = output_bytes > parse_bytes(max_output_size)
    if tiled_output and _time_range(modalities)[0] is None:
        raise InputError(
            f"the output ({format_bytes(output_bytes)}) exceeds max_output_size {max_output_size}, so it would be "
            f"a folder of COG tiles described by STAC items, which need a date; give the acquisition date "
            f"(--date NAME=YYYY-MM-DD) or raise --max-output-size"
        )
    if scheduler or tiled_output:
        tile_height = tile_width = tile_size or DEFAULT_TILE_SIZE
    else:
        tile_height, tile_width = None, tile_size or DEFAULT_LOCAL_TILE_WIDTH
    plan = plan_windows(grid, window, overlap, tile_height, tile_width)

    estimates = []
    for factor in (0.5, 1.0, 2.0):
        try:
            other = grid if factor == 1.0 else snap_grid(area, out_crs, gsd * factor)
        except InputError:
            continue
        estimates.append(estimate_plan(
            config, _costs(modalities), other, window=window, overlap=overlap, batch_size=batch_size,
            channels=channels, depth=depth, tile_width=tile_width, tile_height=tile_height,
            output_bytes_per_value=value_bytes,
        ))
    return EmbedPlan(modalities, grid, plan, estimates, config, sha256, weights, tiled_output, search_record)


def _tags(
    embed_plan: EmbedPlan,
    normalization: Normalization,
    *,
    layer: int,
    fuse: str,
    precision: str,
    window: int,
    overlap: int,
) -> dict[str, str]:
    modalities = embed_plan.modalities
    dates = {m.name: [day.isoformat() for day in m.dates if day is not None] for m in modalities}
    scaling = {
        m.name: (m.scalings_record if hasattr(m, "scalings_record") else [s.to_dict() for s in m.scalings.values()])
        for m in modalities
    }
    tags = {
        "RAMEN_VERSION": __version__,
        "RAMEN_WEIGHTS": embed_plan.weights,
        "RAMEN_MODEL_SHA256": embed_plan.sha256,
        "RAMEN_MODEL_CONFIG": json.dumps(embed_plan.config.to_dict(), sort_keys=True),
        "RAMEN_GSD": f"{embed_plan.grid.gsd:g}",
        "RAMEN_LAYER": str(layer),
        "RAMEN_FUSE": fuse,
        "RAMEN_WINDOW": str(window),
        "RAMEN_OVERLAP": str(overlap),
        "RAMEN_PRECISION": precision,
        "RAMEN_SENSORS": json.dumps([{"name": m.name, **m.describe()} for m in modalities], sort_keys=True),
        "RAMEN_ITEMS": json.dumps({m.name: m.ids for m in modalities}, sort_keys=True),
        "RAMEN_DATES": json.dumps(dates, sort_keys=True),
        "RAMEN_NORMALIZATION": json.dumps(normalization.to_dict(), sort_keys=True),
        "RAMEN_SCALING": json.dumps(scaling, sort_keys=True, default=str),
    }
    if embed_plan.search:
        tags["RAMEN_SEARCH"] = json.dumps(embed_plan.search, sort_keys=True)
    return tags


def _descriptions(modalities: Sequence[Any], dim: int, fuse: str) -> list[str]:
    if fuse == "mean":
        return [f"embedding_{index:03d}" for index in range(dim)]
    return [f"{m.name}_embedding_{index:03d}" for m in modalities for index in range(dim)]


def _input_identity(modalities: Sequence[Any]) -> list[Any]:
    """Files (with size and modification time) or item ids, so a resume notices changed inputs."""
    identity = []
    for modality in modalities:
        files = getattr(modality, "files", None)
        if files is not None:
            stats = []
            for band_file in files:
                status = os.stat(band_file.path)
                stats.append([band_file.path, band_file.index, status.st_size, status.st_mtime_ns])
            identity.append({"name": modality.name, "files": stats})
        else:
            identity.append({"name": modality.name, "items": modality.ids})
    return identity


def embed(
    inputs: Inputs,
    output: str | os.PathLike[str],
    *,
    gsd: float,
    weights: str | os.PathLike[str] | None = None,
    trust_checkpoint: bool = False,
    bbox: Sequence[float] | None = None,
    crs: Any = None,
    normalization: str | os.PathLike[str] = "registry",
    window: int = DEFAULT_WINDOW,
    overlap: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    precision: str = "auto",
    dtype: str = "float32",
    fuse: str = "mean",
    layer: int | None = None,
    vectors: str | os.PathLike[str] | None = None,
    pooling: str = "mean",
    preview: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    scheduler: str | None = None,
    tile_size: int | None = None,
    max_output_size: str | float = DEFAULT_MAX_OUTPUT_SIZE,
    max_memory: str | float | None = None,
    checkpoint_interval: float = 30.0,
    progress: ProgressCallback | None = None,
) -> EmbedResult:
    """Embed an area at ``gsd`` metres and write the embeddings as a Cloud-Optimized GeoTIFF.

    Args:
        inputs: a :class:`FileInput`, a list of them (one per modality; the first one
            decides the CRS and area), or a :class:`CatalogQuery`.
        output: the COG to write (a folder when the output is tiled, see
            ``max_output_size``).
        gsd: output pixel size (one token) in metres.
        weights: weights file or ``hf://`` URI; default the official RAMEN checkpoint,
            downloaded once into the cache.
        trust_checkpoint: allow pickled torch checkpoints (only from a trusted source).
        bbox: cut file inputs to ``west south east north`` in degrees.
        crs: output CRS; default the input's if projected, else the UTM zone of the centre.
        normalization: ``registry``, ``global`` (statistics of the whole input, computed
            in a first pass), or a JSON file (see :mod:`ramen_core.inference.normalization`).
        window: window side in tokens.
        overlap: tokens shared by neighbouring windows; default ``window // 4``.
        batch_size: windows per model call.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32`` or ``bf16``.
        dtype: ``float32`` or ``float16`` output values.
        fuse: ``mean`` (D bands, mean over the modalities valid at a pixel) or ``concat``
            (M·D bands, one group per modality).
        layer: encoder block whose features are written, from 1; default the last.
        vectors: also write one GeoParquet row per window (footprint and pooled embedding).
        pooling: ``mean`` (of the window's valid tokens) or ``cls`` (the CLS token).
        preview: also write a PCA false-colour PNG.
        overwrite: replace existing outputs.
        resume: continue an interrupted run of the same command from its work folder.
        scheduler: Dask scheduler address (``tcp://host:8786``); tiles then run on its
            workers, which must be able to read the inputs and the weights.
        tile_size: tile side in pixels for Dask runs and tiled outputs (default 512), or
            the column-band width of local runs (default 2048).
        max_output_size: above this uncompressed size (``16GiB``, bytes as a number), the
            output is a folder of COG tiles with a STAC ``collection.json``.
        max_memory: memory a batch may use (``8GiB``); default the memory available now.
        checkpoint_interval: seconds between progress records for ``resume``.
        progress: called with a :class:`ProgressUpdate` after each batch.

    Returns:
        What was written.

    Raises:
        InputError: invalid inputs or options, including a plan that does not fit in memory.
        EmptyResultError: the input is all nodata, or a search found nothing.
        OutputError: an output exists (without ``overwrite``), its folder cannot be written,
            or writing fails (a full disk).
        WeightsError: the weights cannot be read.
    """
    output = Path(output)
    vectors_path = Path(vectors) if vectors is not None else None
    preview_path = Path(preview) if preview is not None else None
    if pooling not in POOLING_MODES:
        raise InputError(f"pooling {pooling!r} must be one of {', '.join(POOLING_MODES)}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    check_output_paths({"output": output, "vectors": vectors_path, "preview": preview_path}, overwrite)
    torch_device = resolve_device(device)
    used_precision = resolve_precision(precision, torch_device)

    loaded = _load_model_info(str(weights) if weights is not None else _default_weights(), trust_checkpoint)
    embed_plan = plan_embedding(
        inputs, gsd=gsd, weights=weights, trust_checkpoint=trust_checkpoint, bbox=bbox, crs=crs,
        window=window, overlap=overlap, batch_size=batch_size, fuse=fuse, layer=layer, dtype=dtype,
        scheduler=scheduler, tile_size=tile_size, max_output_size=max_output_size, loaded_weights=loaded,
    )
    overlap = embed_plan.plan.overlap
    layer = embed_plan.config.depth if layer is None else layer
    limit = parse_bytes(max_memory) if max_memory is not None else available_memory(torch_device)
    check_memory(embed_plan.estimate, limit, torch_device)
    modalities = embed_plan.modalities
    if not isinstance(_as_inputs(inputs), CatalogQuery):
        check_has_data(modalities, embed_plan.grid.crs, embed_plan.grid.bounds)
    logger.info(
        "grid %d x %d pixels of %g m in %s, %d windows of %d tokens, estimated %.3g GFLOP",
        embed_plan.grid.width, embed_plan.grid.height, gsd, embed_plan.grid.crs, embed_plan.estimate.windows,
        embed_plan.estimate.tokens_per_window, embed_plan.estimate.flops / 1e9,
    )

    work_dir = partial_dir_for(output)
    if not resume and work_dir.exists():
        logger.info("removing the work folder %s of an earlier run (pass resume=True to continue it)", work_dir)
        remove_path(work_dir)

    def statistics_progress(done: int, total: int) -> None:
        if progress is not None:
            progress(ProgressUpdate(done, total, 0, 0.0, "statistics"))

    normalized = resolve_normalization(normalization, modalities, embed_plan.grid, statistics_progress)
    tags = _tags(embed_plan, normalized, layer=layer, fuse=fuse, precision=used_precision, window=window, overlap=overlap)
    dim = embed_plan.config.embed_dim
    descriptions = _descriptions(modalities, dim, fuse)
    metadata = RasterMetadata(count=len(descriptions), dtype=dtype, descriptions=descriptions, tags=tags)

    fingerprint = fingerprint_of({
        "tags": {key: value for key, value in tags.items() if key != "RAMEN_VERSION"},
        "version": __version__,
        "inputs": _input_identity(modalities),
        "plan": embed_plan.plan.fingerprint(),
        "batch_size": batch_size,
        "dtype": dtype,
        "pooling": pooling if vectors_path is not None else None,
        "device": torch_device.type,
        "tiled": embed_plan.tiled_output,
    })
    factory = EmbeddingTaskFactory(
        key=fingerprint, weights=embed_plan.weights, trust_checkpoint=trust_checkpoint, modalities=modalities,
        grid=embed_plan.grid, normalization=normalized, layer=layer, fuse=fuse,
        pooling=pooling if vectors_path is not None else None, device=str(torch_device) if not scheduler else device,
        precision=used_precision, encoder=None if scheduler else _encoder_from(loaded, torch_device),
    )
    sink: OutputSink
    if embed_plan.tiled_output:
        time_range = _time_range(modalities)
        assert time_range[0] is not None  # checked in plan_embedding
        logger.info("output of %s exceeds %s: writing a folder of COG tiles", format_bytes(embed_plan.estimate.output_bytes),
                    max_output_size)
        sink = CogTileFolderSink(work_dir, embed_plan.grid, metadata, output.stem, time_range)
    else:
        sink = CogSink(work_dir, embed_plan.grid, metadata)
    extras = ExtrasStore(work_dir) if vectors_path is not None else None
    if resume:
        # A record of another run is an error that must keep that run's work folder.
        ProgressRecord.load(work_dir, fingerprint)

    finished = False
    try:
        report = run_plan(
            factory, embed_plan.plan, sink, work_dir, output, fingerprint=fingerprint, batch_size=batch_size,
            resume=resume, checkpoint_interval_s=checkpoint_interval, progress=progress, scheduler=scheduler,
            extras=extras, finalize=False,
        )
        if report.valid_pixels == 0 and not report.resumed:
            raise EmptyResultError(
                "no window had valid input, so the output would be all nodata; check the inputs' nodata "
                "values and the area"
            )
        sink.finalize(output, embed_plan.plan.tiles)
        finished = True
        if vectors_path is not None and extras is not None:
            from ramen_core.embedding.vectors import write_vectors

            write_vectors(vectors_path, embed_plan.plan, extras.load(), pooling, tags)
        if preview_path is not None:
            from ramen_core.embedding.preview import write_preview

            rasters = sorted(output.glob("*.tif")) if embed_plan.tiled_output else [output]
            write_preview(rasters, preview_path)
    except KeyboardInterrupt:
        logger.warning("interrupted; the work folder %s is kept, rerun with --resume to continue", work_dir)
        raise
    except BaseException:
        # Leave nothing half-made behind: no output, no work folder.
        if finished:
            for path in (output, vectors_path, preview_path):
                if path is not None:
                    remove_path(path)
        remove_path(work_dir)
        raise
    for modality in modalities:
        modality.close()
    remove_path(work_dir)
    logger.info("wrote %s (%d bands, %d x %d pixels of %g m)", output, len(descriptions), embed_plan.grid.width,
                embed_plan.grid.height, gsd)
    return EmbedResult(output, embed_plan.grid, len(descriptions), tags, report, vectors_path, preview_path,
                       embed_plan.tiled_output)


def _default_weights() -> str:
    from ramen_core.weights import DEFAULT_WEIGHTS

    return DEFAULT_WEIGHTS


def _encoder_from(loaded: Any, device: Any) -> Any:
    from ramen_core.weights import build_encoder

    return build_encoder(loaded, device)


def _time_range(modalities: Sequence[Any]) -> tuple[Any, Any]:
    import datetime as dt

    days = [day for m in modalities for day in m.dates if day is not None]
    if not days:
        return (None, None)
    start = dt.datetime.combine(min(days), dt.time(), tzinfo=dt.timezone.utc)
    end = dt.datetime.combine(max(days), dt.time(23, 59, 59), tzinfo=dt.timezone.utc)
    return (start, end)


__all__ = [
    "CatalogQuery",
    "EmbedPlan",
    "EmbedResult",
    "FileInput",
    "embed",
    "plan_embedding",
]
