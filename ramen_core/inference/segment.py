"""``segment``: a class map of a scene from a fine-tuned segmentation model, streamed to a COG.

This is the library call behind ``ramen segment``. It runs on the window engine of
``ramen embed`` (:mod:`ramen_core.inference.run`), with the same inputs, streaming,
resume, atomic writing and determinism. Steps:

1. load the model (:func:`ramen_core.heads.bundle.load_segmentation_model`) and check that
   the inputs are the modalities and sensors it was trained on;
2. choose the output grid: the first input's own pixel grid (the default, in its own CRS,
   geographic or not), or the area snapped to ``output_gsd`` metres. The encoder works at
   ``gsd`` metres (default: the GSD the model was fine-tuned at);
3. plan windows of ``window`` × ``window`` tokens with ``overlap`` on the output grid;
4. for each batch of windows, read and normalise the inputs with the model's statistics,
   run encoder and head, and turn the logits on the window's output pixels into class
   probabilities with a softmax;
5. blend the probabilities of overlapping windows with the engine's smooth weights, take
   the most probable class of each pixel, and write it as a uint8 COG with a colour map,
   the class names in its tags, and 255 where no input is valid. ``probabilities`` also
   writes the blended probabilities as a float32 COG of one band per class.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

from ramen_core import __version__
from ramen_core.embedding.api import DEFAULT_BATCH_SIZE, DEFAULT_LOCAL_TILE_WIDTH, DEFAULT_WINDOW, _input_identity
from ramen_core.embedding.inputs import CatalogQuery, FileInput, check_has_data, open_catalog_inputs, open_file_inputs
from ramen_core.embedding.task import EmbeddingTask, WindowInputs
from ramen_core.errors import EmptyResultError, InputError
from ramen_core.heads.bundle import NODATA_CLASS, SegmentationModel, load_segmentation_model
from ramen_core.heads.upernet import Segmenter
from ramen_core.inference.device import autocast, resolve_device, resolve_precision
from ramen_core.inference.normalization import Normalization
from ramen_core.inference.progress import ProgressCallback, ProgressRecord, fingerprint_of
from ramen_core.inference.run import BatchResult, RunReport, run_plan
from ramen_core.inference.sources import open_raster, pixels_per_token
from ramen_core.inference.tiling import TargetGrid, Tile, Window, plan_windows, snap_grid
from ramen_core.inference.writer import (
    CLASS_DTYPE,
    CogSink,
    OutputSink,
    RasterMetadata,
    check_output_paths,
    partial_dir_for,
    remove_path,
)
from ramen_core.model import ModalityInput
from ramen_core.sensors import get_sensor

logger = logging.getLogger(__name__)


Inputs = FileInput | Sequence[FileInput] | CatalogQuery


# ---------------------------------------------------------------------------------- task
@dataclass
class SegmentationTask(EmbeddingTask):
    """Reader, encoder and head for the windows of one ``segment`` run.

    Reading and normalisation are those of ``embed`` (:meth:`EmbeddingTask.read`); the
    output is one class-probability channel per class on the window's output pixels.

    Attributes:
        segmenter: encoder and head, in eval mode, on ``device``.
        model_gsd: GSD in metres at which the encoder works.
        pixel_m: size of an output pixel in metres.
    """

    segmenter: Segmenter | None = None
    model_gsd: float = 0.0
    pixel_m: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        assert self.segmenter is not None
        self.channels = self.segmenter.num_classes
        self.groups = 1
        # A modality is read at grid.gsd / p (p input pixels per output pixel), so its
        # pixels are pixel_m / p metres, also when the grid is in degrees (p is then 1).
        self._gsds = [self.pixel_m / pixels_per_token(m.gsd, self.grid.gsd) for m in self.modalities]

    def run(self, windows: Sequence[Window], inputs: WindowInputs) -> BatchResult:
        assert self.segmenter is not None
        count = len(windows)
        height, width = windows[0].height, windows[0].width
        values = np.zeros((count, self.channels, height, width), dtype=np.float32)
        valid = np.zeros((count, 1, height, width), dtype=bool)
        selected = np.flatnonzero(inputs.has_data)
        if selected.size == 0:
            return BatchResult(values, valid, [None] * count, 0)

        modalities = []
        pixel_valid = torch.zeros(selected.size, height, width, dtype=torch.bool)
        for index, modality in enumerate(self.modalities):
            data = torch.from_numpy(inputs.data[index][selected]).to(self.device)
            mask = torch.from_numpy(inputs.valid[index][selected])
            days = self._day_of_year[index]
            dates = torch.from_numpy(np.broadcast_to(days, (selected.size, days.size)).copy()).to(self.device)
            modalities.append(ModalityInput(
                name=modality.name, data=data, bands=self._specs[index],
                gsd=self._gsds[index], dates=dates, valid=mask.to(self.device),
            ))
            pixel_valid |= _any_valid_per_pixel(mask, height, width)

        with torch.inference_mode(), autocast(self.device, self.precision):
            output = self.segmenter.predict(modalities, self.model_gsd, output_size=(height, width), output_gsd=self.pixel_m)
        probabilities = torch.softmax(output.logits.float(), dim=1)
        values[selected] = probabilities.cpu().numpy()
        valid[selected, 0] = (output.valid.cpu() & pixel_valid).numpy()
        token_rows = int(height * self.pixel_m / self.model_gsd)
        token_cols = int(width * self.pixel_m / self.model_gsd)
        tokens = int(selected.size) * (1 + len(self.modalities) * token_rows * token_cols)
        return BatchResult(values, valid, [None] * count, tokens)


def _any_valid_per_pixel(valid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reduce validity [b, T, h·p, w·p] to [b, h, w]: an output pixel is valid where any input pixel is."""
    per_pixel = valid.any(dim=1)
    b, rows, cols = per_pixel.shape
    factor_rows, factor_cols = rows // height, cols // width
    if (factor_rows, factor_cols) == (1, 1):
        return per_pixel
    return per_pixel.reshape(b, height, factor_rows, width, factor_cols).any(dim=4).any(dim=2)


@dataclass
class SegmentationTaskFactory:
    """Builds a :class:`SegmentationTask`, loading the model; picklable for Dask workers.

    Attributes:
        key: identity of the model, inputs and options.
        model: path or URI of the segmentation model.
        modalities: the inputs, in model order.
        grid: the output grid.
        normalization: the model's statistics.
        model_gsd: working GSD of the encoder in metres.
        pixel_m: output pixel size in metres.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``, resolved where the task is built.
        precision: ``fp32`` or ``bf16``.
        loaded: the model already loaded in this process (not pickled).
    """

    key: str
    model: str
    modalities: Sequence[Any]
    grid: TargetGrid
    normalization: Normalization
    model_gsd: float
    pixel_m: float
    device: str
    precision: str
    loaded: SegmentationModel | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["loaded"] = None
        return state

    def __call__(self) -> SegmentationTask:
        device = resolve_device(self.device)
        precision = self.precision if device.type == "cuda" else "fp32"
        loaded = self.loaded or load_segmentation_model(self.model, device)
        segmenter = loaded.segmenter.to(device).eval()
        return SegmentationTask(
            encoder=segmenter.encoder, modalities=self.modalities, grid=self.grid, normalization=self.normalization,
            layer=segmenter.encoder.config.depth, device=device, precision=precision, segmenter=segmenter,
            model_gsd=self.model_gsd, pixel_m=self.pixel_m,
        )


# ---------------------------------------------------------------------------------- output
class SegmentationSink(OutputSink):
    """Blended class probabilities in, a class map (and optionally the probabilities) out.

    Each row block of probabilities becomes the index of its most probable class, or 255
    where the probabilities are NaN (no valid input). Both outputs use the engine's
    streamed raw files and atomic COG conversion.

    Args:
        work_dir: the run's work folder.
        grid: the output grid.
        classes: metadata of the class map (uint8, colour map).
        probabilities: metadata of the probability raster, or None to write none.
        probabilities_path: where the probability COG goes.
    """

    def __init__(
        self,
        work_dir: Path,
        grid: TargetGrid,
        classes: RasterMetadata,
        probabilities: RasterMetadata | None = None,
        probabilities_path: Path | None = None,
    ) -> None:
        self.class_sink = CogSink(work_dir / "classes", grid, classes)
        self.probability_sink = CogSink(work_dir / "probabilities", grid, probabilities) if probabilities else None
        self.probabilities_path = probabilities_path
        self.folders = [work_dir / "classes", work_dir / "probabilities"]

    def _sinks(self) -> list[CogSink]:
        return [sink for sink in (self.class_sink, self.probability_sink) if sink is not None]

    def open(self, resume: bool) -> None:
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
        for sink in self._sinks():
            sink.open(resume)

    def write(self, tile: Tile, row: int, col: int, values: np.ndarray) -> None:
        finite = np.isfinite(values).all(axis=0)
        classes = np.argmax(np.nan_to_num(values, nan=-1.0), axis=0).astype(np.float32)
        classes[~finite] = NODATA_CLASS
        self.class_sink.write(tile, row, col, classes[None])
        if self.probability_sink is not None:
            self.probability_sink.write(tile, row, col, values)

    def tile_done(self, tile: Tile) -> None:
        for sink in self._sinks():
            sink.tile_done(tile)

    def flush(self) -> None:
        for sink in self._sinks():
            sink.flush()

    def finalize(self, output: Path, tiles: Sequence[Tile]) -> None:
        self.class_sink.finalize(output, tiles)
        if self.probability_sink is not None:
            assert self.probabilities_path is not None
            self.probability_sink.finalize(self.probabilities_path, tiles)

    def close(self) -> None:
        for sink in self._sinks():
            sink.close()


# ---------------------------------------------------------------------------------- planning
@dataclass
class SegmentResult:
    """Outputs and counters of a ``segment`` run.

    Attributes:
        output: the class map COG.
        probabilities: the probability COG, if requested.
        grid: the output grid.
        gsd: the encoder's working GSD in metres.
        tags: the tags of the class map.
        report: counters and timings of the run.
    """

    output: Path
    probabilities: Path | None
    grid: TargetGrid
    gsd: float
    tags: dict[str, str]
    report: RunReport


def _check_file_inputs(model: SegmentationModel, inputs: Sequence[FileInput]) -> list[FileInput]:
    """Match file inputs to the model's modalities, by name, and check their sensors.

    An input without a name takes the name of the model's modality in the same position.
    Bands are the model's, and the radar orbit, scale and offset default to those the model
    was trained with.

    Raises:
        InputError: an input is missing or unknown to the model, or its sensor differs.
    """
    expected = [spec.name for spec in model.modalities]
    named = []
    for position, item in enumerate(inputs):
        name = item.name or (expected[position] if position < len(expected) else item.label())
        named.append(replace(item, name=name))
    names = [item.name for item in named]
    missing = [name for name in expected if name not in names]
    unknown = [name for name in names if name not in expected]
    if missing or unknown:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"not an input of the model: {', '.join(str(name) for name in unknown)}"] if unknown else []
        )
        raise InputError(
            f"the model was trained on inputs {', '.join(expected)}, but got {', '.join(map(str, names))} "
            f"({'; '.join(problems)}); give each with --input NAME=FILE"
        )

    by_name = {item.name: item for item in named}
    ordered = []
    for spec in model.modalities:
        item = by_name[spec.name]
        trained = get_sensor(spec.sensor)
        given = get_sensor(item.sensor) if item.sensor else trained
        if given.id != trained.id:
            raise InputError(
                f"input {spec.name!r} is {given.id}, but the model was trained on {trained.id} for {spec.name!r}; "
                f"use a model fine-tuned on {given.id}, or give {trained.id} data"
            )
        ordered.append(replace(
            item, sensor=trained, bands=list(spec.bands), orbit=item.orbit or spec.orbit,
            scale=spec.scale if item.scale is None else item.scale,
            offset=spec.offset if item.offset is None else item.offset,
        ))
    return ordered


def _input_grid(path: str, bbox: Sequence[float] | None) -> TargetGrid:
    """Return the pixel grid of a raster, cut to a bbox in degrees (snapped outward to whole pixels).

    Raises:
        InputError: the pixels are not square and north-up, or the bbox misses the raster.
    """
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    from ramen_core.embedding.inputs import LONLAT

    with open_raster(path) as dataset:
        transform, crs, width, height = dataset.transform, dataset.crs, dataset.width, dataset.height
    if transform.b or transform.d or not math.isclose(transform.a, -transform.e, rel_tol=1e-6):
        raise InputError(
            f"{path!r} has pixels of {transform.a:.6g} x {-transform.e:.6g} (or a rotation); the class map can "
            f"only follow square, north-up pixels: give --output-gsd to write it on a snapped metric grid"
        )
    if bbox is None:
        return TargetGrid(crs, transform, width, height)
    from ramen_core.catalog import parse_bbox

    bounds = transform_bounds(LONLAT, crs, *parse_bbox(bbox), densify_pts=21)
    # The raster's whole pixels that the bbox touches (rasterio's rounding helpers changed
    # between versions, so round here).
    exact = from_bounds(*bounds, transform=transform)
    col_start = max(0, math.floor(exact.col_off + 1e-9))
    row_start = max(0, math.floor(exact.row_off + 1e-9))
    col_stop = min(width, math.ceil(exact.col_off + exact.width - 1e-9))
    row_stop = min(height, math.ceil(exact.row_off + exact.height - 1e-9))
    if col_stop <= col_start or row_stop <= row_start:
        raise InputError(f"{path!r} does not overlap the bbox {tuple(bbox)}; check the bbox (west south east north in degrees)")
    window = rasterio.windows.Window(col_start, row_start, col_stop - col_start, row_stop - row_start)
    return TargetGrid(crs, rasterio.windows.transform(window, transform), int(window.width), int(window.height))


def _tags(model: SegmentationModel, model_path: str, modalities: Sequence[Any], grid: TargetGrid,
          gsd: float, pixel_m: float, window: int, overlap: int, precision: str,
          normalization: Normalization) -> dict[str, str]:
    classes = model.classes
    return {
        "RAMEN_VERSION": __version__,
        "RAMEN_TASK": "segmentation",
        "RAMEN_MODEL": model_path,
        "RAMEN_MODEL_SHA256": model.metadata.get("sha256", ""),
        "RAMEN_CLASSES": json.dumps(classes.to_dict()["classes"]),
        "RAMEN_CLASS_NAMES": json.dumps(list(classes.names)),
        "RAMEN_NODATA_CLASS": str(NODATA_CLASS),
        "RAMEN_GSD": f"{gsd:g}",
        "RAMEN_OUTPUT_PIXEL_M": f"{pixel_m:g}",
        "RAMEN_WINDOW": str(window),
        "RAMEN_OVERLAP": str(overlap),
        "RAMEN_PRECISION": precision,
        "RAMEN_SENSORS": json.dumps([{"name": m.name, **m.describe()} for m in modalities], sort_keys=True),
        "RAMEN_NORMALIZATION": json.dumps(normalization.to_dict(), sort_keys=True),
    }


def _model_normalization(model: SegmentationModel) -> Normalization:
    statistics = {
        spec.name: {band: (mean, std) for band, mean, std in zip(spec.bands, spec.mean, spec.std)}
        for spec in model.modalities
    }
    return Normalization(mode="model", statistics=statistics, source="the segmentation model")


def _catalog_modalities(model: SegmentationModel, query: CatalogQuery, crs: Any, pixel_gsd: float, chunk: int) -> tuple[list[Any], Any, Any, dict[str, Any]]:
    """Search and load one cube per model input, named as the model names them."""
    # NOTE: no test runs segment on a catalog search yet; the search and cube loading are
    # those of embed, which its tests cover.
    sensors = [spec.sensor for spec in model.modalities]
    bands = {spec.sensor: list(spec.bands) for spec in model.modalities}
    query = replace(query, sensors=sensors, bands=bands)
    modalities, out_crs, area, record = open_catalog_inputs(query, crs=crs, gsd=pixel_gsd, chunk_size=chunk)
    by_sensor: dict[str, Any] = {}
    for modality in modalities:
        by_sensor.setdefault(modality.sensor.id, modality)
    ordered = []
    for spec in model.modalities:
        found = by_sensor.get(get_sensor(spec.sensor).id)
        if found is None:
            raise EmptyResultError(f"the catalog search found no {spec.sensor} item for the model's input {spec.name!r}")
        found.name = spec.name
        ordered.append(found)
    return ordered, out_crs, area, record


# ---------------------------------------------------------------------------------- entry point
def segment(
    inputs: Inputs,
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str],
    gsd: float | None = None,
    output_gsd: float | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    bbox: Sequence[float] | None = None,
    crs: Any = None,
    window: int = DEFAULT_WINDOW,
    overlap: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_interval: float = 30.0,
    progress: ProgressCallback | None = None,
) -> SegmentResult:
    """Segment a scene with a fine-tuned model and write a uint8 class-map COG.

    Args:
        inputs: a :class:`FileInput`, a list of them (one per model input; an input without
            a name takes the name of the model's input at its position), or a
            :class:`CatalogQuery` (its sensors and bands come from the model).
        output: the class-map COG to write.
        model: segmentation model file or ``hf://`` URI written by ``ramen finetune``.
        gsd: working GSD of the encoder in metres; default the model's.
        output_gsd: pixel size of the output in metres, on the area snapped to it in a
            metric CRS; default the first input's own grid (catalog inputs: its native GSD).
        probabilities: also write the class probabilities (one float32 band per class).
        bbox: cut the area to ``west south east north`` in degrees (required for catalogs).
        crs: output CRS for ``output_gsd`` and catalog runs; default the input's if
            projected, else the UTM zone of the area's centre.
        window: window side in tokens of ``gsd``.
        overlap: tokens shared by neighbouring windows; default ``window // 4``.
        batch_size: windows per model call.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        precision: ``auto``, ``fp32`` or ``bf16``.
        overwrite: replace existing outputs.
        resume: continue an interrupted run of the same command from its work folder.
        checkpoint_interval: seconds between progress records for ``resume``.
        progress: called with a :class:`ProgressUpdate` after each batch.

    Raises:
        InputError: the inputs do not match the model (missing inputs, other sensors,
            missing bands), or invalid options.
        EmptyResultError: the input is all nodata.
        OutputError: an output exists (without ``overwrite``) or cannot be written.
        WeightsError: the model cannot be read or is not a segmentation model.
    """
    output = Path(output)
    probabilities_path = Path(probabilities) if probabilities is not None else None
    check_output_paths({"class map": output, "probabilities": probabilities_path}, overwrite)
    if not (isinstance(window, int) and window >= 1):
        raise InputError(f"window must be a positive number of tokens, got {window!r}")
    overlap = window // 4 if overlap is None else overlap
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    torch_device = resolve_device(device)
    used_precision = resolve_precision(precision, torch_device)
    loaded = load_segmentation_model(model, torch_device)
    gsd = float(gsd or loaded.gsd)
    if not (math.isfinite(gsd) and gsd > 0):
        raise InputError(f"GSD must be a positive number of metres, got {gsd!r}")

    # Inputs and the output grid.
    if isinstance(inputs, CatalogQuery):
        if inputs.bbox is None:
            raise InputError("a catalog search needs --bbox")
        first_gsd = output_gsd or get_sensor(loaded.modalities[0].sensor).gsd
        chunk = max(64, min(1024, 2 * window * max(1, round(gsd / first_gsd))))
        modalities, out_crs, area, _ = _catalog_modalities(loaded, inputs, crs, first_gsd, chunk)
        grid = snap_grid(area, out_crs, first_gsd)
        pixel_m = grid.gsd
    else:
        items = _check_file_inputs(loaded, [inputs] if isinstance(inputs, FileInput) else list(inputs))
        modalities, out_crs, area = open_file_inputs(items, crs=crs, bbox=bbox)
        if output_gsd is None and crs is None:
            grid = _input_grid(modalities[0].files[0].path, bbox)
            pixel_m = float(grid.gsd) if grid.crs.is_projected else float(modalities[0].gsd)
        else:
            grid = snap_grid(area, out_crs, float(output_gsd or modalities[0].gsd))
            pixel_m = grid.gsd
        check_has_data(modalities, grid.crs, grid.bounds)
    snap_grid(area, out_crs, gsd)  # raises when the area holds no token at the working GSD
    finest = min(m.gsd for m in modalities)
    if gsd < finest * (1 - 1e-9):
        logger.warning(
            "GSD %g m is finer than the finest input (%g m); the inputs are upsampled, which costs more tokens "
            "and adds no detail beyond %g m", gsd, finest, finest,
        )

    # Windows: a whole number of output pixels per window, as close to `window` tokens as it gets.
    pixels_per_model_token = gsd / pixel_m
    window_px = max(1, round(window * pixels_per_model_token))
    overlap_px = min(window_px - 1, max(0, round(overlap * pixels_per_model_token)))
    if window_px < pixels_per_model_token:
        raise InputError(f"a window of {window} tokens at {gsd:g} m is smaller than one token; raise --window")
    # NOTE: unlike embed, segment neither estimates the batch's memory before running nor
    # offers --plan or a Dask scheduler yet.
    plan = plan_windows(grid, window_px, overlap_px, None, DEFAULT_LOCAL_TILE_WIDTH)
    logger.info(
        "segmenting %d x %d pixels of %.4g m (%s) at GSD %g m: %d windows of %d pixels",
        grid.width, grid.height, pixel_m, grid.crs, gsd, len(plan), window_px,
    )

    normalization = _model_normalization(loaded)
    tags = _tags(loaded, str(model), modalities, grid, gsd, pixel_m, window, overlap, used_precision, normalization)
    classes = loaded.classes
    colormap = {index: (*colour, 255) for index, colour in enumerate(classes.colours)}
    colormap[NODATA_CLASS] = (0, 0, 0, 0)
    class_metadata = RasterMetadata(
        count=1, dtype=CLASS_DTYPE, nodata=float(NODATA_CLASS), descriptions=["class"], tags=tags,
        overview_resampling="mode", colormap=colormap,
    )
    probability_metadata = None
    if probabilities_path is not None:
        probability_metadata = RasterMetadata(
            count=classes.num_classes, descriptions=[f"probability_{name}" for name in classes.names], tags=tags,
        )

    fingerprint = fingerprint_of({
        "tags": {key: value for key, value in tags.items() if key != "RAMEN_VERSION"},
        "version": __version__,
        "inputs": _input_identity(modalities),
        "plan": plan.fingerprint(),
        "batch_size": batch_size,
        "device": torch_device.type,
        "probabilities": probabilities_path is not None,
    })
    factory = SegmentationTaskFactory(
        key=fingerprint, model=str(model), modalities=modalities, grid=grid, normalization=normalization,
        model_gsd=gsd, pixel_m=pixel_m, device=str(torch_device), precision=used_precision, loaded=loaded,
    )
    work_dir = partial_dir_for(output)
    if not resume and work_dir.exists():
        logger.info("removing the work folder %s of an earlier run (pass resume=True to continue it)", work_dir)
        remove_path(work_dir)
    sink = SegmentationSink(work_dir, grid, class_metadata, probability_metadata, probabilities_path)
    if resume:
        # A record of another run is an error that must keep that run's work folder.
        try:
            ProgressRecord.load(work_dir, fingerprint)
        except InputError:
            for modality in modalities:
                modality.close()
            raise

    finished = False
    try:
        report = run_plan(
            factory, plan, sink, work_dir, output, fingerprint=fingerprint, batch_size=batch_size, resume=resume,
            checkpoint_interval_s=checkpoint_interval, progress=progress, finalize=False,
        )
        if report.valid_pixels == 0 and report.resumed_tiles == 0:
            raise EmptyResultError(
                "no window had valid input, so the class map would be all nodata; check the inputs' nodata "
                "values and the area"
            )
        finished = True
        with warnings.catch_warnings():
            # rio-cogeo notes that a colour map sets the colour interpretation to palette: intended here.
            warnings.filterwarnings("ignore", message="Dataset color interpretation was set to", category=UserWarning)
            sink.finalize(output, plan.tiles)
    except KeyboardInterrupt:
        logger.warning("interrupted; the work folder %s is kept, rerun with --resume to continue", work_dir)
        raise
    except BaseException:
        # Leave nothing half-made behind: no output, no work folder.
        if finished:
            for path in (output, probabilities_path):
                if path is not None:
                    remove_path(path)
        remove_path(work_dir)
        raise
    finally:
        for modality in modalities:
            modality.close()
    remove_path(work_dir)
    logger.info("wrote %s (%d x %d pixels, %d classes)", output, grid.width, grid.height, classes.num_classes)
    return SegmentResult(output, probabilities_path, grid, gsd, tags, report)
