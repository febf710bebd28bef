"""Streamed, atomic Cloud-Optimized GeoTIFF output.

Rows are written as they are produced into an uncompressed, tiled GeoTIFF in a work folder
next to the output (``<output>.ramen-partial``). That file is allocated in full when it is
created, so later writes overwrite blocks in place and a killed run leaves a readable file
for ``--resume``. When every row is written, rio-cogeo converts it to a compressed COG
with overviews, the result is validated, and only then renamed to the output path.

Two sinks share that scheme: :class:`CogSink` writes one COG, and :class:`CogTileFolderSink`
writes one COG per tile plus a STAC collection describing them, for outputs too large to
keep in one file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window as RasterioWindow

from ramen_core.errors import InputError, OutputError
from ramen_core.inference.tiling import TargetGrid, Tile

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".ramen-partial"
# The STAC collection that a folder of COG tiles holds; it marks such a folder as a ramen output.
TILE_COLLECTION = "collection.json"

# COG block side in pixels. Bands are stored separately (band interleave), so a block holds
# one band: 256 x 256 float32 values are 256 KiB before compression.
COG_BLOCK_SIZE = 256

OUTPUT_DTYPES = ("float32", "float16")
# Class maps: the raw file holds float32 class values, and the COG stores them as bytes.
CLASS_DTYPE = "uint8"


@dataclass(frozen=True)
class RasterMetadata:
    """Band count, data type, nodata, descriptions and tags of an output raster.

    Attributes:
        count: number of bands.
        dtype: ``float32`` or ``float16`` (stored as 16-bit floats in a Float32 GeoTIFF,
            GDAL's ``NBITS=16``), or ``uint8`` for class maps (written as whole numbers
            into the float32 raw file, stored as bytes in the COG).
        nodata: nodata value; NaN for float outputs.
        descriptions: one description per band.
        tags: dataset tags (GDAL metadata), strings only.
        overview_resampling: resampling of the COG overviews (``average`` for embeddings,
            ``mode`` or ``nearest`` for class maps).
        colormap: colour of each value, ``{value: (r, g, b, a)}``, for ``uint8`` class maps.
    """

    count: int
    dtype: str = "float32"
    nodata: float = float("nan")
    descriptions: Sequence[str] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    overview_resampling: str = "average"
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in (*OUTPUT_DTYPES, CLASS_DTYPE):
            raise InputError(f"output dtype {self.dtype!r} is not supported; use one of {', '.join(OUTPUT_DTYPES)}")
        if self.descriptions and len(self.descriptions) != self.count:
            raise ValueError(f"{len(self.descriptions)} band descriptions for {self.count} bands")


def describe_os_error(error: BaseException) -> str:
    """Name the cause of a failed write in plain words."""
    text = str(error)
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in text:
        return "no space left on device; free some space or write to another disk"
    if getattr(error, "errno", None) in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return "permission denied; choose a folder you can write to"
    return text or error.__class__.__name__


@contextlib.contextmanager
def output_errors(path: Path | str, action: str = "write") -> Iterator[None]:
    """Turn OS and GDAL write errors into :class:`OutputError` naming ``path`` and the cause."""
    try:
        yield
    except OutputError:
        raise
    except (OSError, RasterioError) as error:
        raise OutputError(f"failed to {action} {str(path)!r}: {describe_os_error(error)}") from error


def check_output_path(path: Path, overwrite: bool) -> None:
    """Check that ``path`` can be created, before any work starts.

    Raises:
        OutputError: the path exists and ``overwrite`` is False, the path is a folder other
            than a folder of COG tiles of an earlier run, or its folder cannot be created or
            written to.
    """
    if path.is_dir() and not path.is_symlink() and not (path / TILE_COLLECTION).is_file():
        # Only a folder of COG tiles written by an earlier run may be replaced: never delete
        # a folder of other files because its name was given as the output.
        raise OutputError(
            f"output {str(path)!r} is a folder that contains no ramen output (no {TILE_COLLECTION}); "
            f"give a file path for the output, such as {str(path / 'out.tif')!r}"
        )
    if path.exists() and not overwrite:
        raise OutputError(f"output {str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    # The output's folder is created when the run writes, so a run that fails early leaves
    # no empty folders: check here the deepest folder that exists.
    parent = Path(os.path.abspath(path)).parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"cannot create the output folder {str(path.parent)!r}: part of that path is a file, not a folder; "
            f"choose another output path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {str(existing)!r} is not writable; choose a folder you can write to")


def check_output_paths(paths: Mapping[str, Path | None], overwrite: bool) -> None:
    """Check several outputs of one run: distinct paths, each creatable (:func:`check_output_path`).

    Args:
        paths: the outputs by what they are (``output``, ``preview``, ...); None for an
            output that was not asked for.
        overwrite: whether existing outputs may be replaced.

    Raises:
        OutputError: two outputs share a path, or :func:`check_output_path` fails for one.
    """
    seen: dict[Path, str] = {}
    for what, path in paths.items():
        if path is None:
            continue
        key = Path(os.path.abspath(path))
        if key in seen:
            raise OutputError(
                f"the {seen[key]} and the {what} are both {str(path)!r}; give each output its own path"
            )
        seen[key] = what
    for path in paths.values():
        if path is not None:
            check_output_path(path, overwrite)


def partial_dir_for(output: Path) -> Path:
    """Return the work folder of an output: ``<output>.ramen-partial`` in the same folder."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree if it exists; log instead of raising on failure."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError as error:
        logger.warning("could not remove %s: %s", path, error)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file, flush it to disk, then rename it over ``path``."""
    temporary = path.with_name(path.name + ".tmp")
    with output_errors(path):
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


def _block_size(height: int, width: int) -> int:
    """COG block side: 256, or less (a multiple of 16) for rasters smaller than that."""
    longest = max(height, width)
    return int(min(COG_BLOCK_SIZE, max(16, -(-longest // 16) * 16)))


class RawRaster:
    """An uncompressed, tiled GeoTIFF that rows are written into, allocated in full at creation.

    Args:
        path: file to create (or reopen when ``reuse`` is True).
        grid: pixel grid of the file.
        metadata: bands, nodata, descriptions and tags.
        reuse: open an existing file from an interrupted run instead of creating it.
    """

    def __init__(self, path: Path, grid: TargetGrid, metadata: RasterMetadata, reuse: bool = False) -> None:
        self.path = path
        self.grid = grid
        self.metadata = metadata
        self._dataset: Any = None
        if not (reuse and path.exists()):
            self._create()

    def _create(self) -> None:
        block = _block_size(self.grid.height, self.grid.width)
        profile = {
            "driver": "GTiff",
            "width": self.grid.width,
            "height": self.grid.height,
            "count": self.metadata.count,
            "dtype": "float32",
            "crs": self.grid.crs,
            "transform": self.grid.transform,
            "nodata": self.metadata.nodata,
            "tiled": True,
            "blockxsize": block,
            "blockysize": block,
            "interleave": "band",
            "BIGTIFF": "IF_SAFER",
            "SPARSE_OK": "FALSE",  # write every block now, so that later writes land in place
        }
        logger.debug("allocating %s (%d x %d x %d float32)", self.path, self.grid.width, self.grid.height, self.metadata.count)
        with output_errors(self.path):
            with rasterio.open(self.path, "w", **profile) as dataset:
                for band, description in enumerate(self.metadata.descriptions, start=1):
                    dataset.set_band_description(band, description)
                dataset.update_tags(**dict(self.metadata.tags))

    def write(self, row: int, col: int, values: np.ndarray) -> None:
        """Write a [C, rows, cols] float32 array with its top-left pixel at (row, col)."""
        if values.shape[1] == 0 or values.shape[2] == 0:
            return
        with output_errors(self.path):
            if self._dataset is None:
                self._dataset = rasterio.open(self.path, "r+")
            window = RasterioWindow(col, row, values.shape[2], values.shape[1])
            self._dataset.write(np.ascontiguousarray(values, dtype=np.float32), window=window)

    def flush(self) -> None:
        """Write every pending block to disk (closes the file; the next write reopens it)."""
        if self._dataset is not None:
            with output_errors(self.path):
                self._dataset.close()
            self._dataset = None

    close = flush


def translate_to_cog(raw_path: Path, output: Path, metadata: RasterMetadata) -> None:
    """Convert a raw GeoTIFF to a validated COG at ``output``, atomically.

    The COG is written to a temporary name in the output's folder, validated with
    rio-cogeo, and renamed over ``output`` only when valid.

    Raises:
        OutputError: writing fails (disk full, permissions) or the result is not a valid COG.
    """
    from rio_cogeo.cogeo import cog_translate, cog_validate
    from rio_cogeo.profiles import cog_profiles

    with rasterio.open(raw_path) as source:
        block = _block_size(source.height, source.width)
    profile = cog_profiles.get("deflate")
    profile.update(blockxsize=block, blockysize=block, interleave="band", predictor=3, BIGTIFF="IF_SAFER")
    if metadata.dtype == "float16":
        profile["nbits"] = 16
    # Whole-number outputs use horizontal differencing (predictor 2) and are cast to bytes.
    byte_output = metadata.dtype == CLASS_DTYPE
    if byte_output:
        profile["predictor"] = 2
    temporary = output.with_name(f".{output.name}.ramen-tmp")
    logger.info("converting %s to a COG at %s", raw_path, output)
    try:
        with output_errors(output), rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
            output.parent.mkdir(parents=True, exist_ok=True)
            cog_translate(
                str(raw_path),
                str(temporary),
                profile,
                nodata=metadata.nodata,
                overview_resampling=metadata.overview_resampling,
                dtype=CLASS_DTYPE if byte_output else None,
                colormap=dict(metadata.colormap) if metadata.colormap else None,
                quiet=True,
                in_memory=False,
                use_cog_driver=False,
            )
        valid, errors, warnings = cog_validate(str(temporary), quiet=True)
        if not valid:
            raise OutputError(f"the COG written for {str(output)!r} is invalid: {'; '.join(errors)}")
        for warning in warnings:
            logger.debug("COG %s: %s", output, warning)
        with output_errors(output, "rename the finished file to"):
            os.replace(temporary, output)
    finally:
        if temporary.exists():
            remove_path(temporary)


class OutputSink:
    """Destination of blended rows: one COG, or one COG per tile. Coordinates are grid pixels."""

    def open(self, resume: bool) -> None:
        """Create (or, on resume, reopen) the raw files."""

    def write(self, tile: Tile, row: int, col: int, values: np.ndarray) -> None:
        """Write a [C, rows, cols] block of ``tile`` with its top-left pixel at grid (row, col)."""
        raise NotImplementedError

    def tile_done(self, tile: Tile) -> None:
        """Called once when every row of ``tile`` is written."""

    def flush(self) -> None:
        """Make every write so far durable, before a progress record counts it."""

    def finalize(self, output: Path, tiles: Sequence[Tile]) -> None:
        """Turn the raw files into the final output at ``output``, atomically."""
        raise NotImplementedError

    def close(self) -> None:
        """Release open files, keeping them on disk."""


class CogSink(OutputSink):
    """One COG over the whole grid."""

    def __init__(self, work_dir: Path, grid: TargetGrid, metadata: RasterMetadata) -> None:
        self.raw_path = work_dir / "raw.tif"
        self.grid = grid
        self.metadata = metadata
        self.raw: RawRaster | None = None

    def open(self, resume: bool) -> None:
        if resume and not self.raw_path.exists():
            raise InputError(
                f"the work folder {str(self.raw_path.parent)!r} has a progress record but no {self.raw_path.name}; "
                f"drop --resume to start again"
            )
        self.raw = RawRaster(self.raw_path, self.grid, self.metadata, reuse=resume)

    def write(self, tile: Tile, row: int, col: int, values: np.ndarray) -> None:
        assert self.raw is not None
        self.raw.write(row, col, values)

    def flush(self) -> None:
        if self.raw is not None:
            self.raw.flush()

    def finalize(self, output: Path, tiles: Sequence[Tile]) -> None:
        self.flush()
        if output.is_dir():
            remove_path(output)  # a tiled output of an earlier run, replaced as overwrite=True allows
        translate_to_cog(self.raw_path, output, self.metadata)

    def close(self) -> None:
        self.flush()


class CogTileFolderSink(OutputSink):
    """A folder of COGs, one per tile, with a STAC collection that describes them.

    The folder is assembled inside the work folder and renamed to the output path at the end.
    Each tile's COG is made as soon as its tile is complete, so only the tiles in progress
    exist as raw files.

    Args:
        work_dir: the run's work folder.
        grid: the whole target grid.
        metadata: bands, nodata, descriptions and tags of every tile.
        name: file name stem of the tiles and id of the collection.
        time_range: first and last acquisition time of the inputs, for the STAC items
            (which require a time).
    """

    def __init__(
        self,
        work_dir: Path,
        grid: TargetGrid,
        metadata: RasterMetadata,
        name: str,
        time_range: tuple[datetime, datetime],
    ) -> None:
        self.work_dir = work_dir
        self.folder = work_dir / "tiles"
        self.grid = grid
        self.metadata = metadata
        self.name = name
        self.time_range = time_range
        self._raw: dict[int, RawRaster] = {}

    def tile_name(self, tile: Tile) -> str:
        return f"{self.name}_r{tile.row:06d}_c{tile.col:06d}.tif"

    def _tile_grid(self, tile: Tile) -> TargetGrid:
        return TargetGrid(self.grid.crs, self.grid.rect_transform(tile.row, tile.col), tile.width, tile.height)

    def open(self, resume: bool) -> None:
        with output_errors(self.folder, "create"):
            self.folder.mkdir(parents=True, exist_ok=True)

    def _raw_for(self, tile: Tile) -> RawRaster:
        raw = self._raw.get(tile.index)
        if raw is None:
            path = self.work_dir / f"raw_{tile.index:06d}.tif"
            raw = RawRaster(path, self._tile_grid(tile), self.metadata, reuse=True)
            self._raw[tile.index] = raw
        return raw

    def write(self, tile: Tile, row: int, col: int, values: np.ndarray) -> None:
        self._raw_for(tile).write(row - tile.row, col - tile.col, values)

    def tile_done(self, tile: Tile) -> None:
        raw = self._raw_for(tile)
        raw.flush()
        translate_to_cog(raw.path, self.folder / self.tile_name(tile), self.metadata)
        remove_path(raw.path)
        del self._raw[tile.index]

    def flush(self) -> None:
        for raw in self._raw.values():
            raw.flush()

    def close(self) -> None:
        self.flush()

    def _write_collection(self, tiles: Sequence[Tile]) -> None:
        import pystac
        from pystac.extensions.projection import ProjectionExtension
        from rasterio.warp import transform_bounds, transform_geom
        from shapely.geometry import box, mapping

        start, end = self.time_range
        items = []
        for tile in tiles:
            path = self.folder / self.tile_name(tile)
            if not path.exists():
                continue
            bounds = self.grid.rect_bounds(tile.row, tile.col, tile.height, tile.width)
            geometry = transform_geom(self.grid.crs, "EPSG:4326", mapping(box(*bounds)))
            lonlat = list(transform_bounds(self.grid.crs, "EPSG:4326", *bounds))
            item = pystac.Item(id=path.stem, geometry=geometry, bbox=lonlat, datetime=None, properties={},
                               start_datetime=start, end_datetime=end)
            item.add_asset(
                "data",
                pystac.Asset(href=str(path.resolve()), media_type=pystac.MediaType.COG, roles=["data"]),
            )
            projection = ProjectionExtension.ext(item, add_if_missing=True)
            projection.code = f"EPSG:{self.grid.crs.to_epsg()}" if self.grid.crs.to_epsg() else None
            if projection.code is None:
                projection.wkt2 = self.grid.crs.to_wkt()
            projection.shape = [tile.height, tile.width]
            projection.transform = list(self.grid.rect_transform(tile.row, tile.col))[:6]
            items.append(item)

        collection = pystac.Collection(
            id=self.name,
            description=(
                f"{len(items)} COG tiles of one raster of {self.grid.width} x {self.grid.height} "
                f"pixels of {self.grid.gsd:g} m"
            ),
            extent=pystac.Extent(
                pystac.SpatialExtent([list(transform_bounds(self.grid.crs, "EPSG:4326", *self.grid.bounds))]),
                pystac.TemporalExtent([[start, end]]),
            ),
            extra_fields={"ramen:tags": dict(self.metadata.tags)},
        )
        for item in items:
            collection.add_item(item)
        collection.normalize_hrefs(str(self.folder))
        collection.make_all_asset_hrefs_relative()
        with output_errors(self.folder / TILE_COLLECTION):
            collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)

    def finalize(self, output: Path, tiles: Sequence[Tile]) -> None:
        """Write the STAC collection and rename the tile folder to ``output``."""
        self._write_collection(tiles)
        with output_errors(output, "rename the finished folder to"):
            if output.exists():
                remove_path(output)
            os.replace(self.folder, output)
