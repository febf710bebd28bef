"""Cut aligned multimodal chips from local GeoTIFFs (any raster GDAL reads).

For each scene the chip grid lives in one projected CRS: the first file's CRS when it is
projected, otherwise the UTM zone of the scene's centre (or the spec's ``crs``). The grid
covers the intersection of every file's footprint, and its origin is snapped to the first
file's pixels when that file is already on the grid, so its pixels are copied exactly.
Every modality is read through a GDAL warped VRT onto its own grid at its own GSD with the
same origin, so the chips of all modalities cover the same ground.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import CRS as ProjCRS
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.crs import CRS
from rasterio.enums import Resampling as RioResampling
from rasterio.errors import RasterioIOError
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ramen_core.chips.spec import ChipSpec, SceneSpec, SourceSpec
from ramen_core.errors import ConfigError, InputError
from ramen_core.sensors import Sensor, slope_degrees

logger = logging.getLogger(__name__)

_EPOCH = datetime.date(1970, 1, 1)
# Relative tolerance when a chip size or offset in another modality's pixels must be whole.
_WHOLE_TOLERANCE = 1e-6
_METRES_PER_DEGREE = 111_320.0


@dataclass
class ChipArrays:
    """One chip as numpy arrays, before it becomes tensors.

    Attributes:
        data: modality to float32 [T, C, H, W], 0 where invalid.
        valid: modality to bool [T, H, W].
        dates: modality to int32 [T], days since 1970-01-01.
        bounds: (left, bottom, right, top) in the scene CRS.
        label: int16 [H, W] on the label grid, or None.
    """

    data: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    dates: dict[str, np.ndarray]
    bounds: tuple[float, float, float, float]
    label: np.ndarray | None = None


@dataclass(frozen=True)
class SceneGrid:
    """The chip grid of one scene.

    Attributes:
        crs: projected CRS of the grid.
        left: x of the grid's top-left corner in CRS units (metres).
        top: y of the grid's top-left corner.
        gsd: GSD of the first modality in metres.
        rows: grid rows in pixels of the first modality.
        cols: grid columns in pixels of the first modality.
    """

    crs: CRS
    left: float
    top: float
    gsd: float
    rows: int
    cols: int

    def shape_at(self, gsd: float) -> tuple[int, int]:
        """Rows and columns of the same extent at another GSD."""
        return math.ceil(self.rows * self.gsd / gsd - 1e-6), math.ceil(self.cols * self.gsd / gsd - 1e-6)


def whole(value: float, what: str) -> int:
    """Round ``value`` to an integer, raising when it is not one (within a relative 1e-6)."""
    rounded = round(value)
    if abs(value - rounded) > _WHOLE_TOLERANCE * max(1.0, abs(value)):
        raise ConfigError(what)
    return int(rounded)


def chip_positions(rows: int, cols: int, size: int, step: int) -> list[tuple[int, int]]:
    """Return the top-left (row, col) of every whole chip of ``size`` px on a grid, row by row."""
    return [(row, col) for row in range(0, rows - size + 1, step) for col in range(0, cols - size + 1, step)]


def _open(path: Path, stack: contextlib.ExitStack) -> Any:
    try:
        return stack.enter_context(rasterio.open(path))
    except RasterioIOError as error:
        if not Path(path).exists():
            raise InputError(f"raster {str(path)!r} not found; check the paths in the chip spec") from error
        raise InputError(f"cannot read raster {str(path)!r}: {error}") from error


def pixel_size_m(dataset: Any) -> float:
    """Pixel size of a raster in metres; an estimate at the raster's centre for a grid in degrees."""
    res_x, res_y = (abs(value) for value in dataset.res)
    crs = dataset.crs
    if crs is not None and crs.is_geographic:
        bounds = dataset.bounds
        latitude = math.radians((bounds.top + bounds.bottom) / 2)
        return float(math.sqrt(res_x * math.cos(latitude) * res_y) * _METRES_PER_DEGREE)
    factor = crs.linear_units_factor[1] if crs is not None else 1.0
    return float(math.sqrt(res_x * res_y) * factor)


def _utm_crs(dataset: Any) -> CRS:
    bounds = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds)
    lon, lat = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
    found = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    if not found:
        raise InputError(f"no UTM zone found for lon {lon:.4f}, lat {lat:.4f}; set crs in the chip spec")
    return CRS.from_user_input(ProjCRS.from_epsg(int(found[0].code)).to_wkt())


def _date_files(entry: Path | list[Path]) -> list[Path]:
    return list(entry) if isinstance(entry, list) else [entry]


@dataclass
class BandSource:
    """Source of one band of one date: an open dataset and a 1-based band index."""

    dataset: Any
    index: int


class SceneReader:
    """Read the chips of one scene, with every file open for the reader's lifetime.

    Use it as a context manager::

        with SceneReader(spec, scene) as reader:
            for chip in reader.chips():
                ...
    """

    def __init__(self, spec: ChipSpec, scene: SceneSpec) -> None:
        self.spec = spec
        self.scene = scene
        self._stack = contextlib.ExitStack()
        self._vrts: dict[tuple[int, str, str], Any] = {}
        self.grid: SceneGrid | None = None
        self.gsd: dict[str, float] = {}
        self.bands: dict[str, list[list[BandSource | None]]] = {}
        self.masks: dict[str, list[Any]] = {}
        self.dates: dict[str, np.ndarray] = {}
        self.label_dataset: Any = None

    def __enter__(self) -> SceneReader:
        try:
            self._open_sources()
            self.grid = self._scene_grid()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    # ------------------------------------------------------------------ opening
    def _where(self, modality: str, date_index: int | None = None) -> str:
        where = f"scene {self.scene.name!r}, modality {modality!r}"
        if date_index is not None:
            where += f", date {self.scene.sources[modality].dates[date_index]}"
        return where

    def _open_sources(self) -> None:
        for modality in self.spec.modalities:
            source = self.scene.sources[modality]
            sensor = self.spec.sensor(modality)
            wanted = self.spec.band_names(modality)
            per_date = []
            for date_index, entry in enumerate(source.files):
                datasets = [_open(path, self._stack) for path in _date_files(entry)]
                per_date.append(self._match_bands(modality, date_index, source, sensor, wanted, datasets))
            self.bands[modality] = per_date
            self.masks[modality] = [_open(path, self._stack) for path in source.masks]
            days = [(datetime.date.fromisoformat(date) - _EPOCH).days for date in source.dates]
            self.dates[modality] = np.asarray(days, dtype=np.int32)
            first = per_date[0][0] if per_date[0][0] is not None else next(s for s in per_date[0] if s is not None)
            self.gsd[modality] = self._modality_gsd(modality, first.dataset)
        if self.scene.label is not None:
            self.label_dataset = _open(self.scene.label, self._stack)

    def _modality_gsd(self, modality: str, dataset: Any) -> float:
        gsd = self.spec.modalities[modality].gsd
        if gsd is not None:
            return float(gsd)
        if dataset.crs is None or dataset.crs.is_geographic:
            raise ConfigError(
                f"chip spec key 'modalities.{modality}.gsd': {dataset.name!r} is on a grid in degrees, so its "
                f"GSD in metres is not one number (about {pixel_size_m(dataset):.1f} m here); set it"
            )
        return pixel_size_m(dataset)

    def _match_bands(
        self, modality: str, date_index: int, source: SourceSpec, sensor: Sensor | None, wanted: list[str], datasets: list[Any]
    ) -> list[BandSource | None]:
        """Find the dataset and band index of every wanted band of one date."""
        found: list[tuple[str, BandSource]] = []
        names_given = list(source.file_bands)
        position = 0
        for dataset in datasets:
            for index in range(1, dataset.count + 1):
                if names_given:
                    if position >= len(names_given):
                        raise ConfigError(
                            f"{self._where(modality, date_index)}: file_bands names {len(names_given)} bands but the "
                            f"files hold more; name every band of every file in order"
                        )
                    name = names_given[position]
                else:
                    name = dataset.descriptions[index - 1] or ""
                    if not name and dataset.count == 1:
                        name = Path(dataset.name).stem.split("_")[-1]
                found.append((name, BandSource(dataset, index)))
                position += 1

        if sensor is None:
            # Bands given as tokens describe the file bands in order.
            if len(found) != len(wanted):
                raise ConfigError(
                    f"{self._where(modality, date_index)}: the files hold {len(found)} bands but "
                    f"modalities.{modality}.bands lists {len(wanted)}"
                )
            return [band_source for _, band_source in found]

        sources: list[BandSource | None] = []
        for name in wanted:
            band = sensor.band(name)
            match = next((s for file_name, s in found if file_name and band.matches(file_name)), None)
            if match is None and band.derived_from is not None:
                sources.append(None)  # computed from band.derived_from when the chip is read
                continue
            if match is None:
                held = ", ".join(file_name or "?" for file_name, _ in found)
                raise InputError(
                    f"{self._where(modality, date_index)}: no file contains band {name!r} (the files contain {held}); "
                    f"set file_bands to name the bands of the files in order"
                )
            sources.append(match)
        derived = [name for name, s in zip(wanted, sources) if s is None]
        for name in derived:
            parent = sensor.band(name).derived_from
            if parent not in [sensor.band(other).name for other, s in zip(wanted, sources) if s is not None]:
                raise ConfigError(
                    f"modalities.{modality}.bands: {name!r} is computed from {parent!r}; list {parent!r} too"
                )
        return sources

    def _all_datasets(self) -> Iterator[tuple[str, Any]]:
        for modality, per_date in self.bands.items():
            for sources in per_date:
                for source in sources:
                    if source is not None:
                        yield modality, source.dataset

    def _scene_grid(self) -> SceneGrid:
        reference = self.spec.modalities and next(iter(self.spec.modalities))
        first = next(dataset for modality, dataset in self._all_datasets() if modality == reference)
        if self.spec.crs != "auto":
            try:
                crs = CRS.from_user_input(self.spec.crs)
            except Exception as error:  # rasterio raises CRSError, a subclass of ValueError in some versions
                raise ConfigError(f"chip spec key 'crs': cannot read {self.spec.crs!r} ({error})") from error
            if crs.is_geographic:
                raise ConfigError(f"chip spec key 'crs': {self.spec.crs!r} is geographic; chips need a projected CRS in metres")
        elif first.crs is not None and first.crs.is_projected:
            crs = first.crs
        else:
            crs = _utm_crs(first)

        left, bottom, right, top = -math.inf, -math.inf, math.inf, math.inf
        datasets = [dataset for _, dataset in self._all_datasets()]
        datasets += [dataset for masks in self.masks.values() for dataset in masks]
        for dataset in datasets:
            if dataset.crs is None:
                raise InputError(f"raster {dataset.name!r} has no CRS; chips need georeferenced rasters")
            b = transform_bounds(dataset.crs, crs, *dataset.bounds, densify_pts=21)
            left, bottom, right, top = max(left, b[0]), max(bottom, b[1]), min(right, b[2]), min(top, b[3])
        if not (left < right and bottom < top):
            raise InputError(f"scene {self.scene.name!r}: the files of its modalities do not overlap")
        if self.label_dataset is not None:
            label = self.label_dataset
            if label.crs is None:
                raise InputError(f"label raster {label.name!r} has no CRS; chips need georeferenced rasters")
            b = transform_bounds(label.crs, crs, *label.bounds, densify_pts=21)
            if not (max(left, b[0]) < min(right, b[2]) and max(bottom, b[1]) < min(top, b[3])):
                raise InputError(
                    f"scene {self.scene.name!r}: the label raster {label.name!r} does not overlap the scene's files; "
                    f"give the label raster of this scene"
                )

        gsd = self.gsd[reference]
        if first.crs == crs and abs(pixel_size_m(first) - gsd) < 1e-6 * gsd:
            # Snap the origin to the first file's pixels so that they are copied exactly.
            origin_x, origin_y = first.transform.c, first.transform.f
            left = origin_x + math.ceil((left - origin_x) / gsd - 1e-6) * gsd
            top = origin_y - math.ceil((origin_y - top) / gsd - 1e-6) * gsd
        rows = int(math.floor((top - bottom) / gsd + 1e-6))
        cols = int(math.floor((right - left) / gsd + 1e-6))
        grid = SceneGrid(crs=crs, left=left, top=top, gsd=gsd, rows=rows, cols=cols)
        logger.info("scene %s: grid %dx%d px at %g m in %s", self.scene.name, rows, cols, gsd, crs.to_string())
        return grid

    # ------------------------------------------------------------------ reading
    def _resampling(self, modality: str, dataset: Any, gsd: float, categorical: bool = False) -> RioResampling:
        assert self.grid is not None
        source_gsd = pixel_size_m(dataset)
        aligned = (
            dataset.crs == self.grid.crs
            and abs(source_gsd - gsd) < 1e-6 * gsd
            and abs(((self.grid.left - dataset.transform.c) / gsd) % 1.0 - 0.5) > 0.5 - 1e-6
            and abs(((dataset.transform.f - self.grid.top) / gsd) % 1.0 - 0.5) > 0.5 - 1e-6
        )
        if aligned or categorical:
            return RioResampling.nearest
        choice = self.spec.modalities[modality].resampling if modality in self.spec.modalities else "auto"
        if choice == "auto":
            choice = "average" if gsd > source_gsd * 1.01 else "bilinear"
        return RioResampling[choice]

    def _vrt(self, dataset: Any, modality: str, gsd: float, categorical: bool = False) -> Any:
        """Return a warped view of ``dataset`` on the scene grid at ``gsd`` (float32 with NaN for nodata, except for categorical layers)."""
        key = (id(dataset), f"{gsd:.9g}", "categorical" if categorical else modality)
        if key not in self._vrts:
            assert self.grid is not None
            rows, cols = self.grid.shape_at(gsd)
            options: dict[str, Any] = {}
            if not categorical:
                options = {"nodata": np.nan, "dtype": "float32"}
            self._vrts[key] = self._stack.enter_context(
                WarpedVRT(
                    dataset,
                    crs=self.grid.crs,
                    transform=from_origin(self.grid.left, self.grid.top, gsd, gsd),
                    width=cols,
                    height=rows,
                    resampling=self._resampling(modality, dataset, gsd, categorical),
                    **options,
                )
            )
        return self._vrts[key]

    def _window(self, modality_gsd: float, row: int, col: int, what: str) -> Window:
        """Window on a modality grid of the chip at (row, col) in first-modality pixels."""
        assert self.grid is not None
        ratio = self.grid.gsd / modality_gsd
        hint = f"; choose size and stride so that they are whole numbers of {what} pixels"
        size = whole(self.spec.size * ratio, f"{what}: a chip of {self.spec.size} px at {self.grid.gsd:g} m is "
                     f"{self.spec.size * ratio:g} px at {modality_gsd:g} m, not a whole number{hint}")
        row_off = whole(row * ratio, f"{what}: chip offset {row} px is not a whole number of pixels at {modality_gsd:g} m{hint}")
        col_off = whole(col * ratio, f"{what}: chip offset {col} px is not a whole number of pixels at {modality_gsd:g} m{hint}")
        return Window(col_off, row_off, size, size)

    def _read_band(self, source: BandSource, modality: str, gsd: float, window: Window) -> np.ndarray:
        vrt = self._vrt(source.dataset, modality, gsd)
        return vrt.read(source.index, window=window).astype(np.float32)

    def _read_derived(self, modality: str, name: str, date_index: int, gsd: float, window: Window) -> np.ndarray:
        """Compute a derived band (slope from the DSM) with a one-pixel margin, so chip edges are exact."""
        sensor = self.spec.sensor(modality)
        assert sensor is not None and self.grid is not None
        parent = sensor.band(name).derived_from
        names = self.spec.band_names(modality)
        parent_index = [sensor.band(other).name for other in names].index(sensor.band(str(parent)).name)
        source = self.bands[modality][date_index][parent_index]
        assert source is not None
        vrt = self._vrt(source.dataset, modality, gsd)
        row0, col0 = max(0, window.row_off - 1), max(0, window.col_off - 1)
        row1 = min(vrt.height, window.row_off + window.height + 1)
        col1 = min(vrt.width, window.col_off + window.width + 1)
        heights = vrt.read(source.index, window=Window(col0, row0, col1 - col0, row1 - row0)).astype(np.float32)
        heights = heights * self._scale(modality) + self._offset(modality)
        slope = slope_degrees(heights, gsd)
        top, left = window.row_off - row0, window.col_off - col0
        return slope[top : top + window.height, left : left + window.width]

    def _scale(self, modality: str) -> float:
        spec = self.spec.modalities[modality]
        if spec.scale is not None:
            return float(spec.scale)
        sensor = self.spec.sensor(modality)
        return float(sensor.scale) if sensor else 1.0

    def _offset(self, modality: str) -> float:
        spec = self.spec.modalities[modality]
        if spec.offset is not None:
            return float(spec.offset)
        sensor = self.spec.sensor(modality)
        return float(sensor.offset) if sensor else 0.0

    def _read_mask(self, modality: str, date_index: int, gsd: float, window: Window) -> np.ndarray:
        """Return True where the quality layer of one date marks a pixel invalid."""
        sensor = self.spec.sensor(modality)
        dataset = self.masks[modality][date_index]
        if sensor is None or sensor.mask is None:
            raise ConfigError(
                f"{self._where(modality)}: masks are given but sensor {self.spec.modalities[modality].sensor!r} "
                f"has no quality layer definition"
            )
        vrt = self._vrt(dataset, modality, gsd, categorical=True)
        values = vrt.read(1, window=window)
        outside = vrt.read_masks(1, window=window) == 0
        invalid = sensor.mask.invalid_pixels(values, self.spec.modalities[modality].mask_invalid)
        return np.asarray(invalid) | outside

    def read_modality(self, modality: str, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """Read one modality of the chip at (row, col): data [T, C, H, W] and valid [T, H, W]."""
        gsd = self.gsd[modality]
        window = self._window(gsd, row, col, f"modality {modality!r}")
        names = self.spec.band_names(modality)
        scale, offset = self._scale(modality), self._offset(modality)
        to_db = self.spec.modalities[modality].to_db
        dates_data, dates_valid = [], []
        for date_index, sources in enumerate(self.bands[modality]):
            channels = []
            for name, source in zip(names, sources):
                if source is None:
                    channels.append(self._read_derived(modality, name, date_index, gsd, window))
                    continue
                values = self._read_band(source, modality, gsd, window) * scale + offset
                if to_db:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        values = np.where(values > 0, 10.0 * np.log10(values), np.nan).astype(np.float32)
                channels.append(values)
            data = np.stack(channels)
            valid = np.isfinite(data).all(axis=0)
            if self.masks[modality]:
                valid &= ~self._read_mask(modality, date_index, gsd, window)
            data = np.where(valid[None], data, 0.0).astype(np.float32)
            dates_data.append(data)
            dates_valid.append(valid)
        return np.stack(dates_data), np.stack(dates_valid)

    def read_label(self, row: int, col: int) -> np.ndarray:
        """Read the label chip at (row, col), int16, with unlabelled pixels at the ignore index."""
        label = self.spec.label
        assert label is not None and self.grid is not None
        gsd = float(label.gsd or self.grid.gsd)
        window = self._window(gsd, row, col, "label")
        vrt = self._vrt(self.label_dataset, "label", gsd, categorical=True)
        values = vrt.read(1, window=window).astype(np.int64)
        unlabelled = vrt.read_masks(1, window=window) == 0
        if label.ignore_values:
            unlabelled |= np.isin(values, label.ignore_values)
        out_of_range = ~unlabelled & ((values < 0) | (values >= len(label.classes)))
        if out_of_range.any():
            found = sorted({int(value) for value in np.unique(values[out_of_range])})
            raise InputError(
                f"scene {self.scene.name!r}: the label raster has values {found[:10]} outside the classes "
                f"0..{len(label.classes) - 1} ({', '.join(label.classes)}); declare those classes, or list the "
                f"values in label.ignore_values (--ignore-values) if they mean unlabelled"
            )
        return np.where(unlabelled, label.ignore_index, values).astype(np.int16)

    def positions(self) -> list[tuple[int, int]]:
        """Return the (row, col) of every chip, in first-modality pixels, row by row."""
        assert self.grid is not None
        return chip_positions(self.grid.rows, self.grid.cols, self.spec.size, self.spec.step)

    def chips(self) -> Iterator[ChipArrays]:
        """Yield the chips whose every modality has at least ``min_valid`` valid pixels."""
        assert self.grid is not None
        positions = self.positions()
        if not positions:
            raise InputError(
                f"scene {self.scene.name!r}: its common footprint is {self.grid.rows}x{self.grid.cols} px at "
                f"{self.grid.gsd:g} m, smaller than one chip of {self.spec.size} px; use a smaller size"
            )
        skipped = 0
        for row, col in positions:
            data, valid = {}, {}
            keep = True
            for modality in self.spec.modalities:
                data[modality], valid[modality] = self.read_modality(modality, row, col)
                if valid[modality].mean() < self.spec.min_valid:
                    keep = False
                    break
            if not keep:
                skipped += 1
                continue
            g = self.grid
            left, top = g.left + col * g.gsd, g.top - row * g.gsd
            bounds = (left, top - self.spec.size * g.gsd, left + self.spec.size * g.gsd, top)
            label = self.read_label(row, col) if self.spec.label is not None else None
            yield ChipArrays(data=data, valid=valid, dates=dict(self.dates), bounds=bounds, label=label)
        if skipped:
            logger.info(
                "scene %s: skipped %d of %d chips with less than %.0f %% valid pixels",
                self.scene.name, skipped, len(positions), 100 * self.spec.min_valid,
            )

    def sources_record(self) -> dict[str, Any]:
        """Return the source files of each modality and date, for the manifest."""
        record: dict[str, Any] = {}
        for modality, source in self.scene.sources.items():
            record[modality] = [
                {"date": date, "files": [str(path) for path in _date_files(entry)]}
                for date, entry in zip(source.dates, source.files)
            ]
        if self.scene.label is not None:
            record["label"] = str(self.scene.label)
        return record
