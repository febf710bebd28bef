"""STAC item preparation for cubes: sensor assignment, asset checks and time grouping."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import odc.stac
import pystac
import rasterio
import rasterio.errors

from ramen_core.errors import InputError
from ramen_core.sensors import Scaling, Sensor, get_sensor, item_collection, orbit_direction, scaling_for_item

logger = logging.getLogger(__name__)

# Media types, besides image/*, that GDAL reads as rasters (the list odc-stac uses too).
_RASTER_MEDIA_TYPES = (
    "application/x-hdf",
    "application/x-hdf5",
    "application/hdf",
    "application/hdf5",
    "application/x-netcdf",
    "application/netcdf",
    "application/x-zarr",
    "application/zarr",
)

# odc-stac opens files with this GDAL setting, so GDAL never reads side-car files such as
# .aux.xml. The pre-flight check opens local files the same way.
_ODC_GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


@dataclass
class SensorItems:
    """The items of one cube: one sensor, and for radar one orbit direction.

    Attributes:
        key: name of the cube in the output (the sensor id, with ``:asc`` or ``:des``
            appended when a radar sensor's items mix orbit directions).
        sensor: the sensor.
        items: the items, in input order.
        orbit: ``asc`` or ``des`` for radar sensors, else None.
    """

    key: str
    sensor: Sensor
    items: list[pystac.Item]
    orbit: str | None = None


def assign_items(
    items: Sequence[pystac.Item] | Mapping[str, Sequence[pystac.Item]],
    sensors: str | Sensor | Sequence[str | Sensor] | None,
) -> list[tuple[Sensor, list[pystac.Item]]]:
    """Pair each sensor with its items.

    A mapping is read as ``{sensor name: items}``. A flat list is split by each item's
    collection id; when a single sensor is named, every item goes to it.

    Raises:
        InputError: an item's collection belongs to none of the sensors, or no items.
    """
    if isinstance(items, Mapping):
        pairs = [(get_sensor(name), list(group)) for name, group in items.items()]
        if sensors is not None:
            wanted = {get_sensor(name).id for name in _as_list(sensors)}
            pairs = [(sensor, group) for sensor, group in pairs if sensor.id in wanted]
        return pairs

    items = list(items)
    if sensors is None:
        collections = sorted({str(item_collection(item)) for item in items})
        sensors = _sensors_for_collections(collections)
    chosen = [get_sensor(name) for name in _as_list(sensors)]
    if len(chosen) == 1:
        return [(chosen[0], items)]

    by_sensor: dict[str, list[pystac.Item]] = {sensor.id: [] for sensor in chosen}
    for item in items:
        collection = item_collection(item)
        owners = [sensor for sensor in chosen if collection in sensor.collections()]
        if not owners:
            raise InputError(
                f"item {item.id!r} is in collection {collection!r}, which none of the sensors "
                f"{', '.join(sensor.id for sensor in chosen)} uses; pass the items as "
                f"{{sensor: items}} to say which sensor they belong to"
            )
        by_sensor[owners[0].id].append(item)
    return [(sensor, by_sensor[sensor.id]) for sensor in chosen]


def _as_list(sensors: str | Sensor | Sequence[str | Sensor]) -> list[str | Sensor]:
    if isinstance(sensors, (str, Sensor)):
        return [sensors]
    return list(sensors)


def _sensors_for_collections(collections: Sequence[str]) -> list[str]:
    from ramen_core.sensors import list_sensors

    names: list[str] = []
    for collection in collections:
        owners = [sensor.id for sensor in list_sensors() if collection in sensor.collections()]
        if not owners:
            raise InputError(
                f"no known sensor uses collection {collection!r}; name the sensor with sensors=... "
                f"(see `ramen sensors`)"
            )
        if owners[0] not in names:
            names.append(owners[0])
    return names


def split_by_orbit(sensor: Sensor, items: list[pystac.Item], orbit: str | None) -> list[SensorItems]:
    """Split a radar sensor's items by orbit direction; other sensors stay whole.

    RAMEN embeds a radar band by polarisation and orbit direction, so one cube contains one
    direction. With ``orbit`` given, items of the other direction are dropped.

    Raises:
        InputError: ``orbit`` is not ``asc`` or ``des``, or an item states no orbit
            direction and ``orbit`` is not given.
    """
    if not any(band.kind == "radar" for band in sensor.bands):
        return [SensorItems(key=sensor.id, sensor=sensor, items=items)]
    if orbit is not None and str(orbit).lower()[:3] not in ("asc", "des"):
        raise InputError(f"orbit {orbit!r} must be 'asc' or 'des'")
    wanted = None if orbit is None else str(orbit).lower()[:3]

    by_orbit: dict[str, list[pystac.Item]] = {}
    for item in items:
        direction = orbit_direction(item, default=wanted)
        by_orbit.setdefault(direction, []).append(item)
    if wanted is not None:
        dropped = sum(len(group) for direction, group in by_orbit.items() if direction != wanted)
        if dropped:
            logger.info("%s: dropped %d items of the other orbit direction than %s", sensor.id, dropped, wanted)
        by_orbit = {wanted: by_orbit.get(wanted, [])}
    if len(by_orbit) == 1:
        direction, group = next(iter(by_orbit.items()))
        return [SensorItems(key=sensor.id, sensor=sensor, items=group, orbit=direction)]
    logger.info("%s: items mix orbit directions, so they load as two cubes %s:asc and %s:des", sensor.id, sensor.id, sensor.id)
    return [
        SensorItems(key=f"{sensor.id}:{direction}", sensor=sensor, items=by_orbit[direction], orbit=direction)
        for direction in ("asc", "des")
    ]


def local_path(href: str) -> Path | None:
    """Return the file path of a ``file://`` URI or a plain path, None for a remote href."""
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and href[1:3] in (":\\", ":/")):
        return Path(href)
    return None


def _check_raster_asset(item: pystac.Item, key: str, asset: pystac.Asset, href: str) -> None:
    media_type = (asset.media_type or "").split(";")[0].strip().lower()
    if media_type and not media_type.startswith("image/") and media_type not in _RASTER_MEDIA_TYPES:
        raise InputError(
            f"asset {key!r} of item {item.id!r} has media type {asset.media_type!r}, which is not a "
            f"raster; point the asset at a GeoTIFF or another raster GDAL can read"
        )
    path = local_path(href)
    if path is None:
        return
    if not path.is_file():
        raise InputError(f"asset {key!r} of item {item.id!r}: file not found: {path}")
    try:
        with rasterio.Env(**_ODC_GDAL_ENV), rasterio.open(path) as dataset:
            has_crs = dataset.crs is not None
    except rasterio.errors.RasterioIOError as error:
        raise InputError(
            f"asset {key!r} of item {item.id!r} is not a raster that GDAL can read: {path} ({error})"
        ) from None
    if not has_crs:
        raise InputError(
            f"asset {key!r} of item {item.id!r} has no CRS in the file itself: {path}; GDAL does not "
            f"read side-car files such as .aux.xml here, so embed the georeferencing (gdal_translate)"
        )


def prepare_item(item: pystac.Item, sensor: Sensor, names: Sequence[str]) -> pystac.Item:
    """Copy an item with only the assets of ``names``, keyed by those names, hrefs absolute.

    Renaming the assets to the registry's band names lets one odc-stac call load items
    whose catalogs use different asset keys. Local files are opened once here, so a missing
    file or a file that is not a raster fails early with a clear message.

    Raises:
        InputError: an asset is missing, is not a raster, or its file cannot be read.
    """
    prepared = item.clone()
    assets: dict[str, pystac.Asset] = {}
    for name in names:
        key = sensor.asset_key(item, name)
        href = item.assets[key].get_absolute_href()
        asset = item.assets[key].clone()
        if href is None:
            raise InputError(
                f"asset {key!r} of item {item.id!r} has the relative href {asset.href!r} and the item "
                f"has no self link to resolve it against; load items from their files or use absolute hrefs"
            )
        _check_raster_asset(item, key, asset, href)
        asset.href = href
        assets[name] = asset
    prepared.assets = {}
    for name, asset in assets.items():
        prepared.add_asset(name, asset)
    return prepared


def scaling_signature(scalings: Sequence[Scaling]) -> tuple:
    """Return what decides the pixel conversion of one item, for grouping."""
    return tuple((s.scale, s.offset, s.nodata, s.to_db) for s in scalings)


@dataclass
class TimeSlice:
    """One pixel plane of odc-stac's output before same-day planes are fused.

    Attributes:
        date: solar day of the plane (the sensor's first date for static sensors).
        item_indices: indices into the prepared items, in odc-stac's fusing order.
        signature: index of the scaling signature shared by its items.
    """

    date: dt.date
    item_indices: list[int]
    signature: int


def group_items(
    parsed: Sequence[odc.stac.ParsedItem],
    signatures: Sequence[int],
    static: bool,
) -> tuple[list[tuple[dt.date, int]], list[TimeSlice]]:
    """Assign each item a group key and list the planes odc-stac will build from them.

    Items share a plane when they have the same solar day and the same scaling, so that
    scaling can be applied per plane. Elevation models have no meaningful date, so all
    their items share one day (the earliest).

    The planes are computed the way odc-stac orders them (by key, then time and id), so
    each output plane can be matched with its items.
    """
    if static:
        first = min(item.solar_date.date() for item in parsed)
        keys = [(first, signature) for signature in signatures]
    else:
        keys = [(item.solar_date.date(), signature) for item, signature in zip(parsed, signatures)]
    order = sorted(range(len(parsed)), key=lambda index: (keys[index], parsed[index].nominal_datetime, parsed[index].id))
    slices = [
        TimeSlice(date=key[0], item_indices=list(group), signature=key[1])
        for key, group in itertools.groupby(order, key=lambda index: keys[index])
    ]
    return keys, slices


def scalings_for(sensor: Sensor, item: pystac.Item, names: Sequence[str]) -> list[Scaling]:
    """Decide the scaling of each loaded band of one (original, not prepared) item."""
    return [scaling_for_item(sensor, item, name) for name in names]
