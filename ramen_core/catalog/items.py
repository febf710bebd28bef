"""Facts about STAC items that search results and tables need: time, CRS, GSD, cloud cover."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import pystac
import shapely.geometry
from pystac.utils import str_to_datetime

from ramen_core.catalog.query import SearchQuery
from ramen_core.sensors import Sensor

logger = logging.getLogger(__name__)


def item_time_range(item: pystac.Item) -> tuple[datetime, datetime]:
    """Return the ``(start, end)`` acquisition time of an item in UTC.

    Uses ``start_datetime``/``end_datetime`` when the item states them, else ``datetime``
    for both. Whole and fractional seconds parse alike (``10:00:00Z``, ``10:00:00.5Z``).
    """
    properties = item.properties
    instant = item.datetime
    start_text = properties.get("start_datetime")
    end_text = properties.get("end_datetime")
    start = str_to_datetime(start_text) if start_text else instant
    end = str_to_datetime(end_text) if end_text else instant
    if start is None or end is None:
        raise ValueError(f"item {item.id!r} has neither datetime nor start_datetime/end_datetime")
    return _as_utc(start), _as_utc(end)


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def item_datetime(item: pystac.Item) -> datetime:
    """Return the nominal acquisition time of an item in UTC (``datetime`` or the start)."""
    return _as_utc(item.datetime) if item.datetime is not None else item_time_range(item)[0]


def item_crs(item: pystac.Item) -> str | None:
    """Return the CRS of an item as text: ``proj:code`` (projection v2), ``EPSG:`` + ``proj:epsg``
    (projection v1), or the start of ``proj:wkt2``; None when the item states none.
    """
    properties = item.properties
    if properties.get("proj:code"):
        return str(properties["proj:code"])
    if properties.get("proj:epsg") is not None:
        return f"EPSG:{properties['proj:epsg']}"
    if properties.get("proj:wkt2"):
        return str(properties["proj:wkt2"]).split(",")[0][:40]
    codes = {asset.extra_fields.get("proj:code") or asset.extra_fields.get("proj:epsg") for asset in item.assets.values()}
    codes.discard(None)
    if len(codes) == 1:
        code = codes.pop()
        return f"EPSG:{code}" if isinstance(code, int) else str(code)
    return None


def item_gsd(item: pystac.Item, sensor: Sensor | None = None) -> float | None:
    """Return the item's GSD in metres.

    The item's ``gsd`` property comes first, then the finest asset ``gsd`` or pixel size of a
    metric ``proj:transform``, then the sensor's native GSD.
    """
    gsd = item.properties.get("gsd")
    if gsd is not None:
        return float(gsd)
    sizes = []
    for asset in item.assets.values():
        fields = asset.extra_fields
        if fields.get("gsd") is not None:
            sizes.append(float(fields["gsd"]))
            continue
        transform = fields.get("proj:transform") or item.properties.get("proj:transform")
        if transform and len(transform) >= 6 and abs(float(transform[1])) < 1e-12 and abs(float(transform[3])) < 1e-12:
            pixel = abs(float(transform[0]))
            if pixel >= 0.01:  # degrees-based grids have far smaller pixel sizes
                sizes.append(pixel)
    if sizes:
        return min(sizes)
    return None if sensor is None else sensor.gsd


def item_cloud_cover(item: pystac.Item, sensor: Sensor | None = None) -> float | None:
    """Return the cloud cover of an item in percent, or None when it states none."""
    key = (sensor.cloud_cover_property if sensor is not None else None) or "eo:cloud_cover"
    value = item.properties.get(key)
    return None if value is None else float(value)


def matches_query(item: pystac.Item, query: SearchQuery, sensor: Sensor | None = None) -> bool:
    """Return whether an item intersects the query's area, overlaps its time range and passes its
    cloud cover limit. Items without a cloud cover value fail a cloud cover limit, as they
    do on a server that filters by it.
    """
    area = query.geometry()
    if area is not None:
        if item.geometry is not None:
            footprint = shapely.geometry.shape(item.geometry)
        elif item.bbox is not None:
            # A 3-D bbox is (west, south, min height, east, north, max height).
            half = len(item.bbox) // 2
            footprint = shapely.geometry.box(item.bbox[0], item.bbox[1], item.bbox[half], item.bbox[half + 1])
        else:
            logger.debug("item %s has no geometry or bbox, so it cannot match an area", item.id)
            return False
        if not footprint.intersects(area):
            return False
    if query.start is not None or query.end is not None:
        start, end = item_time_range(item)
        if query.start is not None and end < query.start:
            return False
        if query.end is not None and start > query.end:
            return False
    if query.max_cloud is not None and (sensor is None or sensor.cloud_cover_property):
        cloud = item_cloud_cover(item, sensor)
        if cloud is None or cloud > query.max_cloud:
            return False
    return True


def item_belongs_to(item: pystac.Item, sensor: Sensor) -> bool:
    """Return whether an item is a product of ``sensor``.

    An item belongs to a sensor when its collection is one of the sensor's collections.
    A sensor without collections (a user sensor) claims every item that has an asset for
    its first default band.
    """
    collections = sensor.collections()
    if collections:
        return item.collection_id in collections
    try:
        sensor.asset_key(item, sensor.select()[0].name)
    except ValueError:
        return False
    return True


def resolve_relative_hrefs(item_dict: dict[str, Any], base_directory: str) -> dict[str, Any]:
    """Make relative asset hrefs of an item dictionary absolute against a local folder.

    Hrefs with a scheme (``https://``, ``s3://``, ``file://``) and absolute paths are kept.
    """
    for asset in (item_dict.get("assets") or {}).values():
        href = asset.get("href")
        if not href or urlparse(href).scheme or os.path.isabs(href):
            continue
        asset["href"] = os.path.normpath(os.path.join(base_directory, href))
    return item_dict
