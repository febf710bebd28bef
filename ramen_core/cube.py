"""Aligned cubes: one float32 ``[time, band, y, x]`` array per sensor, as the encoder takes it.

:func:`load_cubes` turns STAC items (from :mod:`ramen_core.catalog` or any pystac source)
into one :class:`SensorCube` per sensor with odc-stac and Dask:

- **CRS**: the one given, else the UTM zone of the area's centre.
- **Grids**: each sensor keeps its native GSD (RAMEN resamples inside the model, so
  nothing is resampled to a common resolution here). The native GSD is the finest pixel
  size of the loaded bands in the items' own metric grids, else the registry's band GSD.
- **Bounds** (the snapping rule): the bbox or geometry given, else the union of the
  items' grids and footprints, snapped outward to a lattice whose spacing is the least
  common multiple of all sensors' GSDs. Every grid then covers exactly the same bounds
  with whole pixels and shares the same top-left corner. The lattice is anchored on the
  pixel corners of the first sensor's first item when that item's grid is already in the
  output CRS at the same GSD (a single item loads onto exactly its own grid), and at
  ``x = 0, y = 0`` otherwise.
- **Time**: items of the same solar day share one time slice (a Sentinel-2 pass split
  over tiles becomes one slice). Where items overlap, the first valid pixel in
  (time, id) order wins, as in odc-stac. Elevation models have one slice.
- **Values**: float32 physical units after each item's own scale and offset (the
  registry's rules, including the Sentinel-2 processing-baseline offset, and dB for radar
  backscatter), nodata as NaN. :attr:`SensorCube.scaling` records what was applied.
- **Masks**: per slice, ``nodata`` (any band NaN), ``cloud`` (data present, but the
  sensor's quality layer, such as Sentinel-2 SCL resampled with nearest neighbour, marks
  it invalid; SCL classes 0, 1, 3, 8, 9 and 10 by default, configurable with
  ``mask_invalid``) and ``valid`` (neither), with the share of valid pixels per slice in
  ``valid_fraction``.
- **Derived bands**: ``slope`` of a DEM is computed in degrees from the DSM on the output
  grid.

Cubes are Dask-backed until computed; ``scheduler="tcp://host:8786"`` runs the
computation on an existing Dask cluster.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import dask
import dask.array as da
import numpy as np
import odc.stac
import pystac
import rasterio.errors
import xarray as xr
from affine import Affine
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox, Geometry, bbox_union, box
from odc.geo.warp import resampling_s2rio
from odc.geo.xr import xr_coords

from ramen_core import _cube_grid, _cube_items
from ramen_core._cube_grid import LONLAT, GridPlan
from ramen_core._cube_items import SensorItems, TimeSlice
from ramen_core.bands import BandSpec
from ramen_core.errors import EmptyResultError, InputError
from ramen_core.sensors import (
    Sensor,
    check_negative_share,
    get_sensor,
    resolve_db_conversion,
    slope_degrees,
)

logger = logging.getLogger(__name__)

# Chunk edge in pixels of the Dask arrays (one time slice per chunk).
DEFAULT_CHUNK_SIZE = 1024

# Largest edge in pixels of the low-resolution sample that radiometry checks read.
_SAMPLE_EDGE = 256

_MASK_RESAMPLING = "nearest"

# How long to wait for a Dask scheduler to accept the connection.
_SCHEDULER_TIMEOUT = "10s"


@dataclass
class SensorCube:
    """The aligned cube of one sensor: data, masks and what it was made from.

    Attributes:
        key: name of the cube: the sensor id, or ``<id>:asc`` / ``<id>:des`` when a radar
            sensor's items mix orbit directions.
        sensor: sensor id in the registry.
        data: float32 ``[time, band, y, x]`` in physical units (reflectance, dB, metres,
            degrees), NaN where there is no data. Dask-backed until computed.
        bands: the model's description of each channel.
        band_names: registry name of each channel (``B04``, ``vv``, ``slope``).
        dates: solar day of each time slice.
        item_ids: ids of the items fused into each time slice.
        gsd: native ground sampling distance in metres (the pixel size of ``data``).
        geobox: pixel grid of ``data`` (CRS, transform, shape).
        valid: bool ``[time, y, x]``, True where the pixel has data and the quality layer
            marks it clear.
        nodata: bool ``[time, y, x]``, True where any band is NaN.
        cloud: bool ``[time, y, x]``, True where the pixel has data but the quality
            layer marks it invalid (all False for sensors without a quality layer).
        valid_fraction: float ``[time]``, the share of ``valid`` pixels per slice.
        scaling: one record per time slice and loaded band: the applied ``scale``,
            ``offset``, ``nodata``, ``to_db`` and their ``source``, with ``date``,
            ``items`` and ``negative_share`` (share of valid pixels below zero after scaling,
            measured on a low-resolution sample; None when the offset is not negative).
        orbit: ``asc`` or ``des`` for radar sensors, else None.
        mask_layer: name of the quality layer used for ``cloud``, or None.
        mask_invalid: class values (or bit positions) of the quality layer counted as invalid.
    """

    key: str
    sensor: str
    data: xr.DataArray
    bands: list[BandSpec]
    band_names: list[str]
    dates: list[dt.date]
    item_ids: list[list[str]]
    gsd: float
    geobox: GeoBox
    valid: xr.DataArray
    nodata: xr.DataArray
    cloud: xr.DataArray
    valid_fraction: xr.DataArray
    scaling: list[dict[str, Any]] = field(default_factory=list)
    orbit: str | None = None
    mask_layer: str | None = None
    mask_invalid: tuple[int, ...] | None = None

    @property
    def crs(self) -> CRS:
        """CRS of the grid."""
        return self.geobox.crs

    @property
    def transform(self) -> Affine:
        """Affine transform of the grid (pixel corner to CRS coordinates)."""
        return self.geobox.affine

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(time, band, rows, cols)``."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def day_of_year(self) -> np.ndarray:
        """Day of year (1 to 366) of each slice's solar day, as the model's date encoding takes it."""
        return np.array([date.timetuple().tm_yday for date in self.dates], dtype=np.int64)

    @property
    def is_lazy(self) -> bool:
        """Whether ``data`` is still a Dask array."""
        return isinstance(self.data.data, da.Array)

    def compute(self, scheduler: str | None = None) -> SensorCube:
        """Return this cube with every array computed into memory.

        Args:
            scheduler: address of a Dask scheduler (``tcp://host:8786``) to run on; None
                uses the local threaded scheduler.
        """
        return compute_cubes({self.key: self}, scheduler=scheduler)[self.key]

    def normalised(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        fill_value: float = 0.0,
    ) -> xr.DataArray:
        """Return ``(data - mean) / std`` per band, with ``fill_value`` where not ``valid``.

        The result has no NaN, as the encoder requires.

        Args:
            mean: per-band means in the units of ``data``; None takes the registry's defaults.
            std: per-band standard deviations; None takes the registry's defaults.
            fill_value: value written where ``valid`` is False.
        """
        default_mean, default_std = get_sensor(self.sensor).normalisation(self.band_names)
        mean_array = default_mean if mean is None else np.asarray(mean, dtype=np.float32)
        std_array = default_std if std is None else np.asarray(std, dtype=np.float32)
        channels = len(self.band_names)
        if mean_array.shape != (channels,) or std_array.shape != (channels,):
            raise InputError(f"mean and std need one value per band ({channels}: {', '.join(self.band_names)})")
        if not np.all(std_array > 0):
            raise InputError(f"std {std_array.tolist()} must be positive for every band")
        scaled = (self.data - mean_array[:, None, None]) / std_array[:, None, None]
        usable = self.valid.expand_dims(band=self.data.band) & np.isfinite(scaled)
        return scaled.where(usable, np.float32(fill_value)).astype(np.float32)

    def crop(self, bounds: Sequence[float]) -> SensorCube:
        """Return the part of the cube inside ``(left, bottom, right, top)`` in its CRS units.

        The bounds must lie on this cube's pixel edges. Bounds on the shared lattice (whole
        multiples of every sensor's GSD from the common top-left corner) crop all cubes of
        one :func:`load_cubes` call to the same area. A lazy cube stays lazy.

        Raises:
            InputError: the bounds are not on pixel edges or reach outside the grid.
        """
        left, bottom, right, top = (float(value) for value in bounds)
        inverse = ~self.transform
        col_start, row_start = inverse @ (left, top)
        col_stop, row_stop = inverse @ (right, bottom)
        edges = [col_start, row_start, col_stop, row_stop]
        rounded = [round(value) for value in edges]
        rows, cols = self.geobox.shape
        if any(abs(value - whole) > 1e-6 for value, whole in zip(edges, rounded)):
            raise InputError(f"crop bounds {tuple(bounds)} are not on the {self.gsd:g} m pixel edges of {self.key}")
        if not (0 <= rounded[0] < rounded[2] <= cols and 0 <= rounded[1] < rounded[3] <= rows):
            raise InputError(f"crop bounds {tuple(bounds)} reach outside the grid of {self.key} {self.geobox.boundingbox}")
        window = {"y": slice(rounded[1], rounded[3]), "x": slice(rounded[0], rounded[2])}
        return replace(
            self,
            data=self.data.isel(window),
            geobox=self.geobox[window["y"], window["x"]],
            valid=self.valid.isel(window),
            nodata=self.nodata.isel(window),
            cloud=self.cloud.isel(window),
            valid_fraction=self.valid.isel(window).mean(dim=("y", "x")).astype(np.float32).rename("valid_fraction"),
        )

    def select_dates(self, min_valid_fraction: float) -> SensorCube:
        """Return the cube without the slices whose valid share is below ``min_valid_fraction``.

        Computes ``valid_fraction`` first when the cube is lazy.
        """
        fractions = np.asarray(self.valid_fraction.values)
        keep = np.flatnonzero(fractions >= min_valid_fraction)
        dropped = len(fractions) - len(keep)
        if dropped:
            logger.info("%s: dropped %d of %d dates with less than %.0f %% valid pixels", self.key, dropped, len(fractions), 100 * min_valid_fraction)
        kept_dates = {self.dates[index].isoformat() for index in keep}
        return replace(
            self,
            data=self.data.isel(time=keep),
            dates=[self.dates[index] for index in keep],
            item_ids=[self.item_ids[index] for index in keep],
            valid=self.valid.isel(time=keep),
            nodata=self.nodata.isel(time=keep),
            cloud=self.cloud.isel(time=keep),
            valid_fraction=self.valid_fraction.isel(time=keep),
            scaling=[record for record in self.scaling if record["date"] in kept_dates],
        )


@dataclass
class _Group:
    """A cube being prepared: its items and bands, before the grid is known."""

    items: SensorItems
    selected: list[str]
    loaded: list[str]
    mask_name: str | None
    prepared: list[pystac.Item]
    originals: list[pystac.Item]
    parsed: list[odc.stac.ParsedItem]


def load_cubes(
    items: Sequence[pystac.Item] | Mapping[str, Sequence[pystac.Item]],
    sensors: str | Sensor | Sequence[str | Sensor] | None = None,
    *,
    bbox: Sequence[float] | None = None,
    geometry: Any = None,
    crs: Any = None,
    bands: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    gsd: float | Mapping[str, float] | None = None,
    mask_invalid: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    resampling: str | Mapping[str, str] | None = None,
    orbit: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scheduler: str | None = None,
    compute: bool = True,
    patch_url: Callable[[str], str] | None = None,
) -> dict[str, SensorCube]:
    """Load one aligned cube per sensor from STAC items.

    See the module documentation for the rules on CRS, grids, bounds, time, values and masks.

    Args:
        items: a list of ``pystac.Item`` (split between sensors by collection id), a
            mapping ``{sensor name: items}``, or a search result of
            :func:`ramen_core.catalog.search`.
        sensors: sensor names or objects (``"s2"``, ``["s2", "dem"]``); None infers them
            from the items' collections. The first sensor anchors the pixel lattice.
        bbox: area as ``(west, south, east, north)`` in degrees (EPSG:4326).
        geometry: area as GeoJSON in EPSG:4326 (or an odc-geo Geometry); its bounding box
            is loaded. Give ``bbox`` or ``geometry``, or neither to load the items' extent.
        crs: output CRS (EPSG code, string or CRS object), projected in metres; None
            chooses the UTM zone of the area's centre.
        bands: band names to load (lenient: ``B4``, ``B04`` and ``red`` are the same),
            as a list for a single sensor or ``{sensor: names}``; None loads each sensor's
            default bands. Naming a derived band (``slope``) loads its source.
        gsd: output pixel size in metres for every sensor, or ``{sensor: gsd}``; None keeps
            each sensor's native GSD.
        mask_invalid: quality-layer class values (bit positions for bit masks) counted as
            invalid, for every sensor or ``{sensor: values}``; None keeps the registry's
            defaults (Sentinel-2 SCL: 0, 1, 3, 8, 9, 10).
        resampling: resampling of the data bands, one GDAL name for every sensor or
            ``{sensor: name}``; None uses ``bilinear`` for elevation and ``nearest``
            otherwise. Quality layers always use nearest neighbour.
        orbit: ``asc`` or ``des`` to keep only radar items of that orbit direction; None
            loads a cube per direction when the items mix them.
        chunk_size: edge of the Dask chunks in pixels.
        scheduler: address of a Dask scheduler (``tcp://host:8786``) that runs the
            loading when ``compute`` is True; None uses the local threaded scheduler.
            Lazy cubes compute wherever they are computed later (pass the address to
            :meth:`SensorCube.compute` or :func:`compute_cubes`).
        compute: load the pixels now (True) or return Dask-backed cubes (False), which
            load when computed, for example window by window.
        patch_url: function applied to every asset href before reading (for example
            ``planetary_computer.sign``).

    Returns:
        ``{cube key: SensorCube}``, in the order of the sensors.

    Raises:
        InputError: an invalid bbox, CRS, band or option; a missing asset; an asset that
            is not a readable raster; or a Dask scheduler that cannot be reached.
        EmptyResultError: a sensor has no items, or none that intersect the area.
    """
    if bbox is not None and geometry is not None:
        raise InputError("give either bbox or geometry, not both")
    if chunk_size < 16:
        raise InputError(f"chunk_size {chunk_size} is too small; use at least 16 pixels (default {DEFAULT_CHUNK_SIZE})")

    groups = [
        _prepare_group(sensor_items, _per_sensor(bands, sensor_items.sensor, "bands"))
        for sensor, sensor_items_list in _split(items, sensors, orbit)
        for sensor_items in sensor_items_list
    ]

    area = _area(bbox, geometry, groups)
    out_crs = _cube_grid.output_crs(crs, area)
    if bbox is not None or geometry is not None:
        groups = [_drop_outside(group, area) for group in groups]
        area_bounds = area.to_crs(out_crs, resolution=_densify_step(area)).boundingbox
    else:
        area_bounds = _items_bounds(groups, out_crs)

    gsds = {group.items.key: _gsd(group, gsd, out_crs) for group in groups}
    anchor = _anchor(groups[0], gsds[groups[0].items.key], out_crs)
    plan = _cube_grid.plan_grids(out_crs, area_bounds, gsds, anchor)

    with _dask_client(scheduler) as client:
        cubes = {
            group.items.key: _build_cube(
                group,
                plan,
                mask_invalid=_per_sensor(mask_invalid, group.items.sensor, "mask_invalid"),
                resampling=_per_sensor(resampling, group.items.sensor, "resampling"),
                chunk_size=chunk_size,
                patch_url=patch_url,
            )
            for group in groups
        }
        if compute:
            cubes = _compute(cubes, client)
        elif client is not None:
            logger.info("lazy cubes compute on the scheduler that is active when they are computed, not on %s", scheduler)
    return cubes


def load_cube(
    items: Sequence[pystac.Item],
    sensor: str | Sensor,
    **options: Any,
) -> SensorCube:
    """Load the cube of a single sensor; ``options`` are those of :func:`load_cubes`.

    For a radar sensor whose items mix orbit directions, pass ``orbit="asc"`` or ``"des"``.
    """
    cubes = load_cubes(items, [sensor], **options)
    if len(cubes) != 1:
        raise InputError(
            f"the items of {get_sensor(sensor).id} mix orbit directions ({', '.join(cubes)}); "
            f"pass orbit='asc' or orbit='des', or use load_cubes"
        )
    return next(iter(cubes.values()))


def compute_cubes(cubes: Mapping[str, SensorCube], scheduler: str | None = None) -> dict[str, SensorCube]:
    """Compute lazy cubes into memory in one Dask computation, so shared reads happen once."""
    with _dask_client(scheduler) as client:
        return _compute(cubes, client)


# --------------------------------------------------------------------------------------
# Preparation


def _per_sensor(value: Any, sensor: Sensor, option_name: str) -> Any:
    """Pick a sensor's entry of a ``{sensor name: value}`` option, or the shared value."""
    if not isinstance(value, Mapping):
        return value
    for name, entry in value.items():
        if get_sensor(name).id == sensor.id:
            return entry
    for name in value:
        get_sensor(name)  # an unknown sensor name raises here, with the list of known ones
    logger.debug("%s: no entry for %s, using the default", option_name, sensor.id)
    return None


def _split(
    items: Sequence[pystac.Item] | Mapping[str, Sequence[pystac.Item]],
    sensors: str | Sensor | Sequence[str | Sensor] | None,
    orbit: str | None,
) -> Iterator[tuple[Sensor, list[SensorItems]]]:
    if isinstance(getattr(items, "items", None), Mapping):
        items = items.items  # a catalog SearchResult: {sensor id: items}
    pairs = _cube_items.assign_items(items, sensors)
    if not pairs:
        raise EmptyResultError("no items to load; search first, or check the sensors named")
    for sensor, group in pairs:
        if not group:
            raise EmptyResultError(f"no items for sensor {sensor.id}; widen the search dates or area")
        yield sensor, _cube_items.split_by_orbit(sensor, group, orbit)


def _prepare_group(sensor_items: SensorItems, band_names: Sequence[str] | None) -> _Group:
    sensor = sensor_items.sensor
    if isinstance(band_names, str):
        band_names = [name.strip() for name in band_names.split(",") if name.strip()]
    if band_names is None:
        band_names = _bands_in_every_item(sensor_items)
    selected = [band.name for band in sensor.select(band_names)]
    loaded: list[str] = []
    for name in selected:
        source = sensor.band(name).derived_from or name
        if sensor.band(source).name not in loaded:
            loaded.append(sensor.band(source).name)

    mask_name = None
    if sensor.mask is not None:
        if all(_has_asset(sensor, item, sensor.mask.name) for item in sensor_items.items):
            mask_name = sensor.mask.name
        else:
            logger.warning(
                "%s: not every item has a %s asset, so the cube has no cloud mask", sensor_items.key, sensor.mask.name
            )

    names = loaded + ([mask_name] if mask_name else [])
    prepared = [_cube_items.prepare_item(item, sensor, names) for item in sensor_items.items]
    parsed = list(odc.stac.parse_items(prepared))
    return _Group(
        items=sensor_items,
        selected=selected,
        loaded=loaded,
        mask_name=mask_name,
        prepared=prepared,
        originals=list(sensor_items.items),
        parsed=parsed,
    )


def _bands_in_every_item(sensor_items: SensorItems) -> list[str] | None:
    """Return the sensor's bands that every item has an asset for, or None for all bands.

    The model takes any subset of a sensor's bands, so items that carry only some bands (a
    4-band product, say) load those without a ``bands`` argument. None is returned when
    every band is present, or when none is, so that the usual missing-asset error names it.
    """
    sensor = sensor_items.sensor
    every = sensor.select(None)
    present = [
        band.name
        for band in every
        if all(_has_asset(sensor, item, band.derived_from or band.name) for item in sensor_items.items)
    ]
    if not present or len(present) == len(every):
        return None
    skipped = [band.name for band in every if band.name not in present]
    logger.info("%s: loading the bands every item has (%s); skipping %s", sensor_items.key, ", ".join(present), ", ".join(skipped))
    return present


def _has_asset(sensor: Sensor, item: pystac.Item, name: str) -> bool:
    try:
        sensor.asset_key(item, name)
    except InputError:
        return False
    return True


def _area(bbox: Sequence[float] | None, geometry: Any, groups: Sequence[_Group]) -> Geometry:
    """Return the requested area, or the union of the item footprints, in EPSG:4326."""
    if bbox is not None:
        return _cube_grid.area_from_bbox(bbox)
    if geometry is not None:
        return _cube_grid.area_from_geometry(geometry).to_crs(LONLAT)
    footprints = [parsed.geometry.to_crs(LONLAT) for group in groups for parsed in group.parsed if parsed.geometry is not None]
    if not footprints:
        raise InputError("the items have no geometry; give the area with bbox=(west, south, east, north)")
    bounds = bbox_union(footprint.boundingbox for footprint in footprints)
    return box(bounds.left, bounds.bottom, bounds.right, bounds.top, LONLAT)


def _densify_step(area: Geometry) -> float:
    """Segment length in the area's CRS units for reprojecting its outline (about 1/100 of its size)."""
    bounds = area.boundingbox
    return max(bounds.right - bounds.left, bounds.top - bounds.bottom) / 100


def _drop_outside(group: _Group, area: Geometry) -> _Group:
    """Drop the items whose footprint does not intersect the area."""
    keep = [
        index
        for index, parsed in enumerate(group.parsed)
        if parsed.geometry is None or parsed.geometry.to_crs(LONLAT).intersects(area)
    ]
    if not keep:
        raise EmptyResultError(
            f"none of the {len(group.parsed)} items of {group.items.key} intersects the area "
            f"{tuple(round(value, 5) for value in area.boundingbox)}; check the bbox or search again"
        )
    if len(keep) < len(group.parsed):
        dropped = [group.parsed[index].id for index in range(len(group.parsed)) if index not in keep]
        logger.info("%s: skipped %d items outside the area: %s", group.items.key, len(dropped), ", ".join(dropped))
    return replace(
        group,
        prepared=[group.prepared[index] for index in keep],
        originals=[group.originals[index] for index in keep],
        parsed=[group.parsed[index] for index in keep],
        items=replace(group.items, items=[group.items.items[index] for index in keep]),
    )


def _native_grids(group: _Group, crs: CRS | None = None) -> Iterator[tuple[odc.stac.ParsedItem, GeoBox]]:
    """Yield each item's pixel grid of each loaded band, optionally only those in ``crs``."""
    for parsed in group.parsed:
        for (name, _), source in parsed.bands.items():
            geobox = source.geobox
            if name not in group.loaded or not isinstance(geobox, GeoBox) or geobox.crs is None:
                continue
            if crs is None or geobox.crs == crs:
                yield parsed, geobox


def _items_bounds(groups: Sequence[_Group], crs: CRS) -> BoundingBox:
    """Union of the items' pixel grids (when in ``crs``) and footprints (otherwise)."""
    bounds: list[BoundingBox] = []
    for group in groups:
        for parsed in group.parsed:
            grids = [geobox for item, geobox in _native_grids(group, crs) if item is parsed]
            if grids:
                bounds.extend(geobox.boundingbox for geobox in grids)
            elif parsed.geometry is not None:
                footprint = parsed.geometry
                bounds.append(footprint.to_crs(crs, resolution=_densify_step(footprint)).boundingbox)
    return bbox_union(bounds)


def _gsd(group: _Group, gsd: float | Mapping[str, float] | None, crs: CRS) -> float:
    """Output pixel size of a cube in metres: the option, else the native GSD."""
    requested = _per_sensor(gsd, group.items.sensor, "gsd")
    if requested is not None:
        try:
            value = float(requested)
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"gsd {requested!r} for {group.items.key} must be a positive number of metres")
        return value
    metric = [
        abs(geobox.resolution.x)
        for _, geobox in _native_grids(group)
        if geobox.crs.projected and geobox.crs.units[0] in ("metre", "m")
    ]
    if metric:
        return float(min(metric))
    sensor = group.items.sensor
    return float(min(sensor.band_gsd(name) for name in group.loaded))


def _anchor(group: _Group, gsd: float, crs: CRS) -> tuple[float, float] | None:
    """Find a pixel corner of the group's earliest item whose grid is in ``crs`` at ``gsd``."""
    candidates = sorted(
        ((parsed.nominal_datetime, parsed.id, geobox) for parsed, geobox in _native_grids(group, crs)),
        key=lambda entry: (entry[0], entry[1]),
    )
    for _, _, geobox in candidates:
        transform = geobox.affine
        if transform.b == 0 and transform.d == 0 and abs(abs(transform.a) - gsd) < 1e-6 and abs(abs(transform.e) - gsd) < 1e-6:
            return transform.c, transform.f
    return None


# --------------------------------------------------------------------------------------
# Loading


def _build_cube(
    group: _Group,
    plan: GridPlan,
    *,
    mask_invalid: Sequence[int] | None,
    resampling: str | None,
    chunk_size: int,
    patch_url: Callable[[str], str] | None,
) -> SensorCube:
    sensor = group.items.sensor
    key = group.items.key
    geobox = plan.geoboxes[key]

    # Items with the same solar day and the same scaling share one odc-stac plane.
    scalings = [_cube_items.scalings_for(sensor, item, group.loaded) for item in group.originals]
    signatures: list[tuple] = []
    signature_ids = []
    for item_scalings in scalings:
        signature = _cube_items.scaling_signature(item_scalings)
        if signature not in signatures:
            signatures.append(signature)
        signature_ids.append(signatures.index(signature))
    static = all(sensor.band(name).kind == "elevation" for name in group.selected)
    keys, slices = _cube_items.group_items(group.parsed, signature_ids, static)

    if resampling is None:
        resampling = "bilinear" if static else "nearest"
    _check_resampling(resampling, key)
    names = group.loaded + ([group.mask_name] if group.mask_name else [])
    load_options: dict[str, Any] = {
        "bands": names,
        "groupby": lambda item, parsed, index: keys[index],
        "resampling": {**{name: resampling for name in group.loaded}, **({group.mask_name: _MASK_RESAMPLING} if group.mask_name else {})},
        "patch_url": patch_url,
        "fail_on_error": True,
    }
    logger.info("%s: loading %d items as %d planes, bands %s, grid %s", key, len(group.prepared), len(slices), ", ".join(names), geobox.shape)
    raw = odc.stac.load(group.prepared, geobox=geobox, chunks={"x": chunk_size, "y": chunk_size}, **load_options)
    _check_planes(raw, slices, group.parsed, key)

    records, plane_scalings = _radiometry(group, slices, scalings, geobox, load_options)

    # Scale each plane with its own scaling, then derive bands, then fuse same-day planes.
    planes_by_band = {
        name: da.stack([plane_scalings[t][c].apply(raw[name].data[t]) for t in range(len(slices))])
        for c, name in enumerate(group.loaded)
    }
    channels = []
    for name in group.selected:
        band = sensor.band(name)
        if band.derived_from is None:
            channels.append(planes_by_band[name])
        else:
            source = planes_by_band[sensor.band(band.derived_from).name]
            channels.append(slope_degrees(source, geobox.resolution.x))
    data = da.stack(channels, axis=1).astype(np.float32).rechunk({1: -1})

    invalid_codes: tuple[int, ...] | None = None
    if group.mask_name is not None and sensor.mask is not None:
        invalid_codes = tuple(int(value) for value in (sensor.mask.invalid if mask_invalid is None else mask_invalid))
        cloud = sensor.mask.invalid_pixels(raw[group.mask_name].data, invalid=invalid_codes)
    else:
        cloud = da.zeros((len(slices), *geobox.shape), dtype=bool, chunks=(1, chunk_size, chunk_size))

    times = raw.time.values
    data, cloud, times, dates, item_ids = _fuse_same_day(data, cloud, times, slices, group)
    nodata = da.isnan(data).any(axis=1)
    cloud = cloud & ~nodata
    valid = ~nodata & ~cloud

    coords = xr_coords(geobox)
    spatial = {"y": coords["y"], "x": coords["x"], "spatial_ref": coords["spatial_ref"]}
    time_coord = {"time": times}
    data_array = xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={**time_coord, "band": group.selected, **spatial},
        name=key,
        attrs={"units": sensor.units, "gsd_m": geobox.resolution.x},
    )

    def mask_array(values: Any, name: str) -> xr.DataArray:
        return xr.DataArray(values, dims=("time", "y", "x"), coords={**time_coord, **spatial}, name=name)

    valid_array = mask_array(valid, "valid")
    fraction = valid_array.mean(dim=("y", "x")).astype(np.float32).rename("valid_fraction")
    return SensorCube(
        key=key,
        sensor=sensor.id,
        data=data_array,
        bands=sensor.band_specs(group.selected, orbit=group.items.orbit),
        band_names=list(group.selected),
        dates=dates,
        item_ids=item_ids,
        gsd=float(geobox.resolution.x),
        geobox=geobox,
        valid=valid_array,
        nodata=mask_array(nodata, "nodata"),
        cloud=mask_array(cloud, "cloud"),
        valid_fraction=fraction,
        scaling=records,
        orbit=group.items.orbit,
        mask_layer=group.mask_name,
        mask_invalid=invalid_codes,
    )


def _check_resampling(name: Any, key: str) -> None:
    """Reject a resampling name that GDAL does not know before any pixel is read."""
    try:
        resampling_s2rio(str(name))
    except ValueError:
        raise InputError(
            f"unknown resampling {name!r} for {key}; use a GDAL name such as nearest, bilinear, "
            f"cubic, average or mode"
        ) from None


def _check_planes(raw: xr.Dataset, slices: Sequence[TimeSlice], parsed: Sequence[odc.stac.ParsedItem], key: str) -> None:
    """Confirm that odc-stac built the planes in the order this module expects."""
    expected = [parsed[plane.item_indices[0]].nominal_datetime.replace(tzinfo=None) for plane in slices]
    actual = [np.datetime64(value, "us").astype(dt.datetime) for value in raw.time.values]
    if len(actual) != len(expected) or any(abs((a - e).total_seconds()) > 1e-3 for a, e in zip(actual, expected)):
        raise RuntimeError(
            f"{key}: odc-stac returned planes at {actual}, expected {expected}; the grouping of "
            f"this odc-stac version differs from ramen's, please report it"
        )


def _radiometry(
    group: _Group,
    slices: Sequence[TimeSlice],
    scalings: Sequence[Sequence[Any]],
    geobox: GeoBox,
    load_options: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """Settle each plane's scaling against a low-resolution sample of its pixels.

    The sample decides whether radar data is already in dB and measures the share of
    pixels that the offset makes negative (warning when the metadata and pixels disagree).
    """
    factor = max(1, int(np.ceil(max(geobox.shape) / _SAMPLE_EDGE)))
    sample_geobox = geobox.zoom_out(factor) if factor > 1 else geobox
    options = {**load_options, "bands": group.loaded, "resampling": "nearest"}
    sample = odc.stac.load(group.prepared, geobox=sample_geobox, **options)

    records: list[dict[str, Any]] = []
    plane_scalings: list[list[Any]] = []
    for t, plane in enumerate(slices):
        first = plane.item_indices[0]
        ids = [group.parsed[index].id for index in plane.item_indices]
        chosen = []
        for c, name in enumerate(group.loaded):
            pixels = sample[name].values[t]
            scaling = resolve_db_conversion(scalings[first][c], pixels)
            # Only a negative offset can push valid pixels below zero; negative dB values are normal.
            share = check_negative_share(pixels, scaling, group.originals[first]) if scaling.offset < 0 else None
            chosen.append(scaling)
            records.append({**scaling.to_dict(), "date": plane.date.isoformat(), "items": ids, "negative_share": share})
        plane_scalings.append(chosen)
    return records, plane_scalings


def _fuse_same_day(
    data: da.Array,
    cloud: da.Array,
    times: np.ndarray,
    slices: Sequence[TimeSlice],
    group: _Group,
) -> tuple[da.Array, da.Array, np.ndarray, list[dt.date], list[list[str]]]:
    """Merge planes of the same solar day (they differ only in scaling) into one slice.

    A pixel takes its values, and its cloud flag, from the first plane that has data there.
    """
    dates: list[dt.date] = []
    members: list[list[int]] = []
    for t, plane in enumerate(slices):
        if dates and dates[-1] == plane.date:
            members[-1].append(t)
        else:
            dates.append(plane.date)
            members.append([t])

    fused_data, fused_cloud, fused_times, item_ids = [], [], [], []
    for planes in members:
        merged, merged_cloud = data[planes[0]], cloud[planes[0]]
        for t in planes[1:]:
            empty = da.isnan(merged).all(axis=0)
            merged = da.where(empty[None], data[t], merged)
            merged_cloud = da.where(empty, cloud[t], merged_cloud)
        fused_data.append(merged)
        fused_cloud.append(merged_cloud)
        fused_times.append(times[planes[0]])
        item_ids.append([group.parsed[index].id for t in planes for index in slices[t].item_indices])
    if len(members) == len(slices):
        return data, cloud, times, dates, item_ids
    logger.info("%s: fused %d planes into %d solar days", group.items.key, len(slices), len(members))
    return da.stack(fused_data), da.stack(fused_cloud), np.array(fused_times), dates, item_ids


# --------------------------------------------------------------------------------------
# Computing


@contextmanager
def _dask_client(address: str | None) -> Iterator[Any]:
    """Connect to a Dask scheduler for the duration of the block; None yields None."""
    if address is None:
        yield None
        return
    from distributed import Client

    try:
        client = Client(address, timeout=_SCHEDULER_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as error:
        # A malformed address (no port, unknown protocol) raises ValueError.
        raise InputError(
            f"cannot connect to the Dask scheduler at {address!r} ({error}); check the address "
            f"(tcp://host:8786) and that the scheduler is running"
        ) from None
    logger.info("connected to Dask scheduler %s (%d workers)", address, len(client.scheduler_info().get("workers", {})))
    try:
        yield client
    finally:
        client.close()


def _compute(cubes: Mapping[str, SensorCube], client: Any) -> dict[str, SensorCube]:
    """Compute every lazy array of the cubes in one Dask computation."""
    arrays = [
        array
        for cube in cubes.values()
        for array in (cube.data, cube.valid, cube.nodata, cube.cloud, cube.valid_fraction)
    ]
    try:
        if client is None:
            results = list(dask.compute(*arrays))
        else:
            results = client.gather(client.compute(arrays))
    except rasterio.errors.RasterioError as error:
        raise InputError(f"reading an asset failed: {error}; check that the file exists and is a raster") from None

    computed: dict[str, SensorCube] = {}
    for index, (key, cube) in enumerate(cubes.items()):
        data, valid, nodata, cloud, fraction = results[5 * index : 5 * index + 5]
        computed[key] = replace(cube, data=data, valid=valid, nodata=nodata, cloud=cloud, valid_fraction=fraction)
    return computed
