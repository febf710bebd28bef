"""Input modalities read window by window onto the target grid.

A modality is one sensor's bands over the area. :class:`FileModality` reads local rasters:
one multi-band file, a folder of one file per band (matched by band name), or a VRT.
:class:`CubeModality` (in :mod:`ramen_core.inference.cube_source`) reads a cube loaded
from a STAC catalog.

Every modality is read, for each window, onto a grid aligned with the target grid, at a
pixel size that divides the target GSD: ``GSD_target / p`` with ``p = round(GSD_target /
GSD_native)`` (at least 1). So a window of N×N tokens is exactly N·p × N·p input pixels,
and the encoder's token grid lands on the output pixels. Bands are warped to that grid
with bilinear resampling, so bands at coarser native GSDs (Sentinel-2 B01 at 60 m) are
resampled to the modality's finest GSD before the model, as are inputs in another CRS.

Band order comes from the band descriptions of a file when it has them, and from the
sensor definition (or the ``bands`` given) otherwise; a description that names no band
of the sensor is an error.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window as RasterioWindow

from ramen_core.bands import BandSpec
from ramen_core.errors import InputError
from ramen_core.inference.tiling import TargetGrid
from ramen_core.sensors import Sensor, get_sensor, slope_degrees
from ramen_core.sensors.radiometry import Scaling, linear_to_db, resolve_db_conversion

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")

SAR_UNITS = ("auto", "db", "linear")

# A file's pixel size within this share of the registry's GSD for its band counts as that GSD
# (an EPSG:4326 file of Sentinel-2 at 8.98e-5 degrees is about 8 to 10 m in a UTM zone).
GSD_TOLERANCE = 0.25


# Side in pixels of the decimated read used to check data and sample values.
_SAMPLE_SIDE = 512


def pixels_per_token(native_gsd: float, target_gsd: float) -> int:
    """Input pixels per token side: round(target / native), at least 1."""
    return max(1, int(round(target_gsd / native_gsd)))


def open_raster(path: str | Path) -> Any:
    """Open a raster with rasterio, turning failures into :class:`InputError`."""
    text = str(path)
    if "://" not in text and not Path(text).exists():
        raise InputError(f"input file {text!r} not found")
    try:
        return rasterio.open(text)
    except RasterioError as error:
        raise InputError(f"cannot read {text!r} as a raster ({error}); give a GeoTIFF, a VRT or a folder of them") from None


@dataclass(frozen=True)
class BandFile:
    """Location of one band: file and band index.

    Attributes:
        band: canonical band name in the sensor.
        path: raster file.
        index: 1-based band index in the file.
        nodata: stored nodata value (file tag, else the sensor's), or None.
        gsd: native GSD of the file in metres, in the output CRS.
    """

    band: str
    path: str
    index: int
    nodata: float | None
    gsd: float


@dataclass
class ReadResult:
    """Pixels of one window of one modality.

    Attributes:
        data: [T, C, h, w] float32 in physical units, NaN where invalid.
        valid: [T, h, w] bool, True where every band is valid.
    """

    data: np.ndarray
    valid: np.ndarray


@dataclass
class FileModality:
    """One modality read from local rasters.

    Attributes:
        name: modality label (``s2``), used in outputs and normalisation files.
        sensor: the sensor.
        bands: canonical band names in model order, derived bands (slope) included.
        files: where each stored band is.
        gsd: native GSD of the modality in metres (its finest band).
        scalings: the scaling applied to each stored band, by band name.
        orbit: ``asc`` or ``des`` for radar modalities, else None.
        date: acquisition date, if known.
        crs: CRS of the first file.
    """

    name: str
    sensor: Sensor
    bands: list[str]
    files: list[BandFile]
    gsd: float
    scalings: dict[str, Scaling]
    orbit: str | None = None
    date: date | None = None
    crs: CRS | None = None
    _vrts: dict[Any, Any] = field(default_factory=dict, repr=False)
    _datasets: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_vrts"] = {}
        state["_datasets"] = {}
        return state

    @property
    def dates(self) -> list[date | None]:
        return [self.date]

    @property
    def ids(self) -> list[str]:
        """Names of the files read, for output tags."""
        return sorted({Path(band_file.path).name for band_file in self.files})

    def band_specs(self) -> list[BandSpec]:
        return [self.sensor.band(name).spec(orbit=self.orbit) for name in self.bands]

    def footprint(self, crs: CRS) -> tuple[float, float, float, float]:
        """Bounds of the first file in ``crs``."""
        dataset = self._dataset(self.files[0].path)
        # A south-up raster (positive row step) has its "bottom" above its "top": order them.
        left, bottom, right, top = dataset.bounds
        return transform_bounds(
            dataset.crs, crs, min(left, right), min(bottom, top), max(left, right), max(bottom, top), densify_pts=21
        )

    def describe(self) -> dict[str, Any]:
        return {
            "sensor": self.sensor.id,
            "bands": self.bands,
            "gsd": self.gsd,
            "files": self.ids,
            "orbit": self.orbit,
            "date": None if self.date is None else self.date.isoformat(),
        }

    def close(self) -> None:
        for handle in list(self._vrts.values()) + list(self._datasets.values()):
            handle.close()
        self._vrts.clear()
        self._datasets.clear()

    # ------------------------------------------------------------------ reading
    def _dataset(self, path: str) -> Any:
        dataset = self._datasets.get(path)
        if dataset is None:
            dataset = open_raster(path)
            self._datasets[path] = dataset
        return dataset

    def _vrt(self, path: str, nodata: float | None, grid: TargetGrid, pixel: int) -> Any:
        """Return a warped view of ``path`` on the target grid at ``GSD / pixel``, one pixel wider on each side."""
        key = (path, grid.transform, grid.width, grid.height, pixel)
        vrt = self._vrts.get(key)
        if vrt is None:
            size = grid.gsd / pixel
            left, top = grid.transform.c - size, grid.transform.f + size
            vrt = WarpedVRT(
                self._dataset(path),
                crs=grid.crs,
                transform=Affine(size, 0.0, left, 0.0, -size, top),
                width=grid.width * pixel + 2,
                height=grid.height * pixel + 2,
                src_nodata=nodata,
                nodata=float("nan"),
                dtype="float32",
                resampling=Resampling.bilinear,
            )
            self._vrts[key] = vrt
        return vrt

    def read_window(self, grid: TargetGrid, row: int, col: int, height: int, width: int) -> ReadResult:
        """Read the window (rows, columns of the target grid) at ``GSD_target / p``.

        Raises:
            InputError: a file cannot be read (a corrupt or truncated raster).
        """
        pixel = pixels_per_token(self.gsd, grid.gsd)
        h, w = height * pixel, width * pixel
        derived = [name for name in self.bands if self.sensor.band(name).derived_from is not None]
        margin = 1 if derived else 0
        stored: dict[str, np.ndarray] = {}
        by_file: dict[tuple[str, float | None], list[BandFile]] = {}
        for band_file in self.files:
            by_file.setdefault((band_file.path, band_file.nodata), []).append(band_file)
        for (path, nodata), band_files in by_file.items():
            indexes = [band_file.index for band_file in band_files]
            try:
                values = self._read_aligned(path, nodata, indexes, grid, pixel, row, col, h, w, margin)
                if values is None:
                    vrt = self._vrt(path, nodata, grid, pixel)
                    window = RasterioWindow(col * pixel + 1 - margin, row * pixel + 1 - margin, w + 2 * margin,
                                            h + 2 * margin)
                    values = vrt.read(indexes, window=window)
            except RasterioError as error:
                raise InputError(f"failed to read {path!r} ({error}); the file may be corrupt or truncated") from None
            for band_file, raw in zip(band_files, values):
                stored[band_file.band] = self._scale(band_file.band, raw)

        channels = []
        for name in self.bands:
            band = self.sensor.band(name)
            if band.derived_from is not None:
                source = stored[self.sensor.band(band.derived_from).name]
                values = slope_degrees(source, grid.gsd / pixel)
            else:
                values = stored[name]
            channels.append(values[margin : margin + h, margin : margin + w])
        data = np.stack(channels)[None]  # [1, C, h, w]
        valid = np.isfinite(data).all(axis=1)
        return ReadResult(data=data.astype(np.float32, copy=False), valid=valid)

    def _read_aligned(
        self,
        path: str,
        nodata: float | None,
        indexes: list[int],
        grid: TargetGrid,
        pixel: int,
        row: int,
        col: int,
        h: int,
        w: int,
        margin: int,
    ) -> np.ndarray | None:
        """Read a window without resampling when the file's pixels are the read grid's pixels.

        That is the case when the file is in the output CRS, its pixel size is
        ``GSD_target / p`` and its pixel corners fall on the read grid's. Returns None
        otherwise, and the caller warps. Pixels outside the file, and nodata, are NaN.
        """
        dataset = self._dataset(path)
        size = grid.gsd / pixel
        transform = dataset.transform
        if dataset.crs != grid.crs or transform.b != 0 or transform.d != 0:
            return None
        if abs(transform.a - size) > 1e-9 * size or abs(transform.e + size) > 1e-9 * size:
            return None
        left = grid.transform.c + col * grid.gsd - margin * size
        top = grid.transform.f - row * grid.gsd + margin * size
        col_offset = (left - transform.c) / size
        row_offset = (transform.f - top) / size
        if abs(col_offset - round(col_offset)) > 1e-6 or abs(row_offset - round(row_offset)) > 1e-6:
            return None
        col_offset, row_offset = int(round(col_offset)), int(round(row_offset))
        height, width = h + 2 * margin, w + 2 * margin
        values = np.full((len(indexes), height, width), np.nan, dtype=np.float32)
        r0, r1 = max(0, row_offset), min(dataset.height, row_offset + height)
        c0, c1 = max(0, col_offset), min(dataset.width, col_offset + width)
        if r0 >= r1 or c0 >= c1:
            return values
        read_window = RasterioWindow(c0, r0, c1 - c0, r1 - r0)
        # A mask band or alpha band marks invalid pixels too; plain nodata is compared below, faster.
        has_mask = any(
            MaskFlags.per_dataset in dataset.mask_flag_enums[index - 1] or MaskFlags.alpha in dataset.mask_flag_enums[index - 1]
            for index in indexes
        )
        block = dataset.read(indexes, window=read_window, masked=has_mask)
        data = np.ma.getdata(block).astype(np.float32, copy=False)
        invalid = np.ma.getmaskarray(block) if has_mask else np.zeros(data.shape, dtype=bool)
        if nodata is not None:
            invalid |= np.isnan(data) if math.isnan(nodata) else data == np.float32(nodata)
        data[invalid] = np.nan
        values[:, r0 - row_offset : r1 - row_offset, c0 - col_offset : c1 - col_offset] = data
        return values

    def _scale(self, band: str, raw: np.ndarray) -> np.ndarray:
        scaling = self.scalings[band]
        values = raw * np.float32(scaling.scale) + np.float32(scaling.offset)
        if scaling.to_db:
            values = linear_to_db(values)
        return values.astype(np.float32, copy=False)

    def sample(self, bounds: Sequence[float], crs: CRS) -> dict[str, np.ndarray]:
        """Read every stored band decimated to at most 512 pixels a side over ``bounds``.

        Returns raw stored values (before scaling) as float32 with NaN for nodata, by band.
        """
        samples: dict[str, np.ndarray] = {}
        for band_file in self.files:
            dataset = self._dataset(band_file.path)
            left, bottom, right, top = transform_bounds(crs, dataset.crs, *bounds, densify_pts=21)
            # Pixel coordinates of the corners, which works for south-up and rotated rasters too.
            corners = [~dataset.transform * (x, y) for x in (left, right) for y in (bottom, top)]
            columns, rows = [c for c, _ in corners], [r for _, r in corners]
            window = RasterioWindow(min(columns), min(rows), max(columns) - min(columns), max(rows) - min(rows))
            window = window.intersection(RasterioWindow(0, 0, dataset.width, dataset.height))
            scale = max(1.0, max(window.width, window.height) / _SAMPLE_SIDE)
            shape = (max(1, int(window.height / scale)), max(1, int(window.width / scale)))
            try:
                raw = dataset.read(band_file.index, window=window, out_shape=shape, masked=True)
            except RasterioError as error:
                raise InputError(
                    f"failed to read {band_file.path!r} ({error}); the file may be corrupt or truncated"
                ) from None
            values = raw.astype(np.float32).filled(np.nan)
            if band_file.nodata is not None and not math.isnan(band_file.nodata):
                values[values == np.float32(band_file.nodata)] = np.nan
            samples[band_file.band] = values
        return samples


# ---------------------------------------------------------------------- building modalities


def _file_gsd(dataset: Any, crs: CRS) -> float:
    """Pixel size of a raster in metres once warped to ``crs`` (GDAL's suggested resolution)."""
    if dataset.crs == crs:
        return float(min(abs(dataset.transform.a), abs(dataset.transform.e)))
    transform, _, _ = calculate_default_transform(dataset.crs, crs, dataset.width, dataset.height, *dataset.bounds)
    return float(abs(transform.a))


def _file_native_gsd(sensor: Sensor, bands: Sequence[str], path: Path, file_gsd: float, override: float | None) -> float:
    """The native GSD of a file's bands: the override; else the registry's GSD of the finest
    band in the file when the file's pixel size agrees with it; else the file's pixel size."""
    if override is not None:
        return float(override)
    registry = min(sensor.band_gsd(band) for band in bands)
    if abs(file_gsd - registry) <= GSD_TOLERANCE * registry:
        return registry
    logger.info(
        "%s: pixel size %.4g m differs from the %g m of sensor %s; using the file's",
        path.name, file_gsd, registry, sensor.id,
    )
    return file_gsd


def _match_band(sensor: Sensor, text: str) -> str | None:
    for band in sensor.bands:
        if band.matches(text):
            return band.name
    return None


def _bands_in_file_name(sensor: Sensor, path: Path) -> list[str]:
    """Sensor bands named by a token of the file name (``..._B02.tif``, ``VV.tif``)."""
    tokens = [path.stem] + re.split(r"[_\-.\s]+", path.stem)
    found = []
    for token in tokens:
        name = _match_band(sensor, token) if token else None
        if name is not None and name not in found:
            found.append(name)
    return found


def _stored_bands(sensor: Sensor, names: Sequence[str]) -> list[str]:
    """The bands that must be read from files: derived bands are replaced by their source."""
    stored: list[str] = []
    for name in names:
        band = sensor.band(name)
        source = sensor.band(band.derived_from).name if band.derived_from is not None else band.name
        if source not in stored:
            stored.append(source)
    return stored


def _requested_bands(sensor: Sensor, bands: Sequence[str] | None) -> list[str] | None:
    if bands is None or len(bands) == 0:
        return None
    names = [band.name for band in sensor.select(bands)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(
            f"band {repeated[0]} of sensor {sensor.id!r} is listed twice in the bands "
            f"({', '.join(map(str, bands))}); name each band once"
        )
    return names


def _layout_folder(sensor: Sensor, folder: Path, requested: list[str] | None) -> list[tuple[str, Path, int]]:
    """Match the rasters of a folder to bands by file name."""
    candidates: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in RASTER_SUFFIXES or not path.is_file():
            continue
        names = _bands_in_file_name(sensor, path)
        if len(names) > 1:
            logger.debug("skipping %s: its name matches several bands (%s)", path.name, ", ".join(names))
            continue
        if not names:
            logger.debug("skipping %s: its name matches no band of %s", path.name, sensor.id)
            continue
        candidates.setdefault(names[0], []).append(path)
    for name, paths in candidates.items():
        if len(paths) > 1:
            raise InputError(
                f"folder {str(folder)!r} has several files for band {name}: "
                f"{', '.join(path.name for path in paths)}; keep one file per band"
            )
    wanted = _stored_bands(sensor, requested) if requested else [
        band.name for band in sensor.bands if band.name in candidates
    ]
    if not wanted:
        raise InputError(
            f"folder {str(folder)!r} has no raster named after a band of sensor {sensor.id!r} "
            f"({', '.join(band.name for band in sensor.bands)}); name files like B02.tif or scene_B02.tif"
        )
    missing = [name for name in wanted if name not in candidates]
    if missing:
        raise InputError(
            f"folder {str(folder)!r} has no file for band {', '.join(missing)} of sensor {sensor.id!r}; "
            f"found {', '.join(sorted(candidates)) or 'none'}"
        )
    return [(name, candidates[name][0], 1) for name in wanted]


def _layout_file(sensor: Sensor, path: Path, dataset: Any, requested: list[str] | None) -> list[tuple[str, Path, int]]:
    """Map the bands of one multi-band file to sensor bands."""
    descriptions = [description or "" for description in dataset.descriptions]
    if any(descriptions):
        described: dict[str, int] = {}
        for index, description in enumerate(descriptions, start=1):
            name = _match_band(sensor, description) if description else None
            if name is None:
                raise InputError(
                    f"band {index} of {str(path)!r} is described as {description!r}, which names no band of "
                    f"sensor {sensor.id!r} ({', '.join(band.name for band in sensor.bands)}); fix the band "
                    f"descriptions or choose the right sensor"
                )
            if name in described:
                raise InputError(f"bands {described[name]} and {index} of {str(path)!r} are both described as {name}")
            described[name] = index
        wanted = _stored_bands(sensor, requested) if requested else list(described)
        missing = [name for name in wanted if name not in described]
        if missing:
            raise InputError(
                f"{str(path)!r} has no band {', '.join(missing)}; its band descriptions are "
                f"{', '.join(descriptions)}"
            )
        return [(name, path, described[name]) for name in wanted]

    expected = _stored_bands(sensor, requested) if requested else _stored_bands(
        sensor, sensor.default_bands or [band.name for band in sensor.bands]
    )
    if dataset.count != len(expected):
        raise InputError(
            f"{str(path)!r} has {dataset.count} bands without descriptions, but sensor {sensor.id!r} "
            f"expects {len(expected)} ({', '.join(expected)}); list the file's bands in order "
            f"(--bands {sensor.aliases[0] if sensor.aliases else sensor.id}=B1,B2,...) or set band descriptions"
        )
    return [(name, path, index) for index, name in enumerate(expected, start=1)]


def _scaling_for(
    sensor: Sensor,
    band: str,
    path: str,
    nodata: float | None,
    scale: float | None,
    offset: float | None,
    to_db: bool,
) -> Scaling:
    source = "user" if scale is not None or offset is not None else "registry"
    return Scaling(
        band=band,
        asset=Path(path).name,
        scale=float(sensor.scale if scale is None else scale),
        offset=float(sensor.offset if offset is None else offset),
        nodata=nodata,
        source=source,
        to_db=to_db,
        db_source=None,
    )


def open_file_modality(
    name: str,
    sensor: Sensor | str,
    path: str | Path,
    *,
    bands: Sequence[str] | None = None,
    orbit: str | None = None,
    sar_units: str = "auto",
    scale: float | None = None,
    offset: float | None = None,
    acquired: date | None = None,
    gsd: float | None = None,
    crs: CRS | None = None,
) -> FileModality:
    """Describe a modality stored in local rasters.

    Args:
        name: modality label (``s2``).
        sensor: sensor, or its name, TOML path or one-line description.
        path: a multi-band raster (GeoTIFF, VRT) or a folder of one raster per band.
        bands: bands to use, in the sensor's names; None uses every band found (folders
            and described files) or the sensor's default bands (files without descriptions).
        orbit: ``asc`` or ``des``; required for radar sensors.
        sar_units: ``db``, ``linear`` or ``auto`` (dB when more than 5 % of valid pixels
            are negative, since linear backscatter never is).
        scale: factor from stored values to physical units; default the sensor's.
        offset: added after scaling, in physical units; default the sensor's (for
            Sentinel-2 that is none: pass -0.1 for data with the +1000 DN offset of
            processing baseline 04.00).
        acquired: acquisition date, recorded in the output tags.
        gsd: native GSD in metres, overriding what is read from the files.
        crs: CRS the GSD is measured in; default the file's own.

    Raises:
        InputError: a path is missing, unreadable or has no CRS, or bands do not match.
    """
    sensor = get_sensor(sensor)
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {str(path)!r} for modality {name!r} not found")
    requested = _requested_bands(sensor, bands)
    if path.is_dir():
        layout = _layout_folder(sensor, path, requested)
    else:
        with open_raster(path) as dataset:
            layout = _layout_file(sensor, path, dataset, requested)
    wanted = requested or [band for band, _, _ in layout]
    # Derived bands (slope) come with their source unless bands were named explicitly.
    if requested is None:
        wanted = [band.name for band in sensor.bands if band.name in wanted or (
            band.derived_from is not None and sensor.band(band.derived_from).name in wanted
            and band.name in (sensor.default_bands or ())
        )]

    kinds = {sensor.band(band).kind for band in wanted}
    if len(kinds) > 1:
        raise InputError(f"modality {name!r} mixes band kinds {sorted(kinds)}; give each kind as its own modality")
    if "radar" in kinds:
        if orbit is None:
            raise InputError(
                f"radar modality {name!r} needs the orbit direction, which files do not state; "
                f"pass --orbit {name}=asc or --orbit {name}=des"
            )
        orbit = str(orbit).lower()[:3]
        if orbit not in ("asc", "des"):
            raise InputError(f"orbit direction {orbit!r} of modality {name!r} must be asc or des")
    if sar_units not in SAR_UNITS:
        raise InputError(f"SAR units {sar_units!r} must be one of {', '.join(SAR_UNITS)}")

    files: list[BandFile] = []
    first_crs = None
    bands_of_file: dict[Path, list[str]] = {}
    for band, file_path, _ in layout:
        bands_of_file.setdefault(file_path, []).append(band)
    for band, file_path, index in layout:
        with open_raster(file_path) as dataset:
            if dataset.crs is None:
                raise InputError(
                    f"{str(file_path)!r} has no CRS; georeference it (for example with gdal_edit.py -a_srs) "
                    f"before embedding"
                )
            first_crs = first_crs or dataset.crs
            nodata = dataset.nodatavals[index - 1]
            if nodata is None:
                nodata = sensor.nodata
            file_gsd = _file_gsd(dataset, crs or first_crs)
        native = _file_native_gsd(sensor, bands_of_file[file_path], file_path, file_gsd, gsd)
        files.append(BandFile(band, str(file_path), index, None if nodata is None else float(nodata), native))

    to_db = "radar" in kinds and sar_units == "linear"
    scalings = {
        band_file.band: _scaling_for(sensor, band_file.band, band_file.path, band_file.nodata, scale, offset, to_db)
        for band_file in files
    }
    modality = FileModality(
        name=name,
        sensor=sensor,
        bands=wanted,
        files=files,
        gsd=min(band_file.gsd for band_file in files),
        scalings=scalings,
        orbit=orbit if "radar" in kinds else None,
        date=acquired,
        crs=first_crs,
    )
    if "radar" in kinds and sar_units == "auto":
        _resolve_sar_units(modality)
    logger.info(
        "modality %s: sensor %s, bands %s, native GSD %g m, from %s",
        name, sensor.id, ", ".join(wanted), modality.gsd, path,
    )
    return modality


def _resolve_sar_units(modality: FileModality) -> None:
    """Decide per radar band whether the data is linear power (convert to dB) or already dB."""
    dataset = modality._dataset(modality.files[0].path)
    samples = modality.sample(dataset.bounds, dataset.crs) if dataset.crs else {}
    for band, scaling in list(modality.scalings.items()):
        linear = Scaling(**{**scaling.to_dict(), "to_db": True, "db_source": "linear unless pixels are negative"})
        resolved = resolve_db_conversion(linear, samples.get(band, np.array([], dtype=np.float32)))
        modality.scalings[band] = resolved
        logger.info("band %s of %s: %s", band, modality.name, "converted to dB" if resolved.to_db else "already in dB")


def parse_assignments(values: Sequence[str] | None, what: str) -> dict[str | None, str]:
    """Parse ``NAME=VALUE`` options; a bare ``VALUE`` applies to every modality (key None)."""
    parsed: dict[str | None, str] = {}
    for text in values or ():
        key, separator, value = str(text).partition("=")
        if separator and key.strip() and not re.search(r"[\\/]", key):
            parsed[key.strip().lower()] = value.strip()
        else:
            parsed[None] = str(text).strip()
    return parsed


def assignment_for(assignments: Mapping[str | None, str], name: str) -> str | None:
    """Return the value given for modality ``name``, else the one given for all, else None."""
    return assignments.get(name.lower(), assignments.get(None))


def catalog_bands(values: Sequence[str] | None, sensors: str | Sequence[str]) -> dict[str, list[str]] | None:
    """Read ``--bands`` of a catalog search: ``B02,B03`` for every sensor, or ``s2=B02,B03`` per sensor.

    Returns:
        The bands of each sensor that has some, keyed by the sensor names given (``s2``),
        or None when no bands were given.
    """
    parsed = parse_assignments(values, "--bands")
    names = [part.strip() for part in sensors.split(",")] if isinstance(sensors, str) else [str(s) for s in sensors]
    table = {key: value for key, value in parsed.items() if key is not None}
    if None in parsed:
        table.update({name.lower(): parsed[None] for name in names if name and name.lower() not in table})
    lists = {key: [part.strip() for part in value.split(",") if part.strip()] for key, value in table.items()}
    return {key: value for key, value in lists.items() if value} or None


def catalog_orbit(values: Sequence[str] | None) -> str | None:
    """Read ``--orbit`` of a catalog search: one direction, as ``des`` or ``s1=des``.

    Raises:
        InputError: several different directions are given.
    """
    directions = sorted(set(parse_assignments(values, "--orbit").values()))
    if len(directions) > 1:
        raise InputError(
            f"a catalog search keeps one orbit direction for its radar items, but --orbit gives "
            f"{', '.join(directions)}; give one"
        )
    return directions[0] if directions else None
