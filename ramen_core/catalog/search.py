"""Search STAC APIs and local catalogs for the items of several sensors."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
from shapely.geometry.base import BaseGeometry

from ramen_core._atomic import atomic_path
from ramen_core.catalog.items import (
    item_belongs_to,
    item_cloud_cover,
    item_crs,
    item_datetime,
    item_gsd,
    matches_query,
)
from ramen_core.catalog.local import is_local_catalog, read_local_items
from ramen_core.catalog.query import SearchQuery, build_query
from ramen_core.catalog.stac_api import open_client, search_sensor
from ramen_core.errors import EmptyResultError, InputError
from ramen_core.sensors import Catalog, Sensor, get_catalog, list_catalogs, parse_sensor_list

logger = logging.getLogger(__name__)

DEFAULT_CATALOG = "earth-search"


@dataclass
class SearchResult:
    """Items found per sensor, each list sorted by acquisition time.

    Attributes:
        items: ``{sensor id: [pystac.Item]}`` in the order the sensors were requested.
        sensors: ``{sensor id: Sensor}``.
        sources: ``{sensor id: catalog URL or local path}`` searched for that sensor.
        query: the validated query.
    """

    items: dict[str, list[pystac.Item]]
    sensors: dict[str, Sensor]
    sources: dict[str, str]
    query: SearchQuery = field(default_factory=SearchQuery)

    def __len__(self) -> int:
        return sum(len(items) for items in self.items.values())

    def all_items(self) -> list[pystac.Item]:
        """Return every item, sensor by sensor."""
        return [item for items in self.items.values() for item in items]

    def item_collection(self) -> pystac.ItemCollection:
        """Return every item as one ItemCollection (readable again as a local catalog)."""
        return pystac.ItemCollection(self.all_items())

    def to_dict(self) -> dict[str, Any]:
        """Return the items as a GeoJSON FeatureCollection dictionary."""
        return self.item_collection().to_dict(transform_hrefs=False)

    def rows(self, sensor_id: str) -> list[dict[str, Any]]:
        """Return one summary row per item of a sensor: id, datetime, cloud cover (%),
        GSD (m) and CRS."""
        sensor = self.sensors[sensor_id]
        return [
            {
                "id": item.id,
                "datetime": item_datetime(item).isoformat().replace("+00:00", "Z"),
                "cloud_cover": item_cloud_cover(item, sensor),
                "gsd": item_gsd(item, sensor),
                "crs": item_crs(item),
                "collection": item.collection_id,
            }
            for item in self.items[sensor_id]
        ]

    def write(self, path: str | Path) -> Path:
        """Write the items as an ItemCollection JSON file, atomically.

        NOTE: Planetary Computer hrefs carry signatures that expire after about an hour;
        a saved file must be searched again (or re-signed) to read its assets later.

        Raises:
            OutputError: the file cannot be written.
        """
        path = Path(path)
        with atomic_path(path, what="search results") as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        logger.info("wrote %d items to %s", len(self), path)
        return path


def _resolve_source(sensor: Sensor, catalog: str | None) -> Catalog | str:
    """Pick the catalog for a sensor: the one given, else the sensor's default."""
    if catalog is None:
        return get_catalog(sensor.default_catalog or DEFAULT_CATALOG)
    if is_local_catalog(catalog):
        return str(catalog)
    if _looks_like_path(catalog):
        raise InputError(
            f"local catalog {catalog!r} not found; give an existing file or folder, a catalog name "
            f"({', '.join(known.name for known in list_catalogs())}) or a STAC API URL"
        )
    return get_catalog(catalog)


_LOCAL_SUFFIXES = (".json", ".geojson", ".ndjson", ".jsonl", ".geojsonl", ".parquet", ".geoparquet")


def _looks_like_path(value: str) -> bool:
    """Return whether a catalog argument is meant as a file or folder rather than a name or URL."""
    text = str(value)
    if "://" in text:
        return False
    return "/" in text or "\\" in text or Path(text).suffix.lower() in _LOCAL_SUFFIXES


def _collections_for(sensor: Sensor, catalog: Catalog) -> list[str]:
    """Return the sensor's collection ids to search in a catalog.

    A known catalog uses the sensor's table for it, plus the collections that a user
    sensor lists for any catalog. An unknown URL gets every collection id of the sensor,
    because Earth Search and Planetary Computer share most ids. An empty list searches
    all collections and keeps the items that have the sensor's bands.

    Raises:
        InputError: the sensor has collections, but none in that known catalog.
    """
    any_catalog = sensor.collections("any")
    if catalog.name in sensor.catalogs:
        own = sensor.collections(catalog.name)
        return own + [name for name in any_catalog if name not in own]
    if catalog.name == catalog.url or not sensor.catalogs or any_catalog:
        return any_catalog or sensor.collections()
    alternatives = ", ".join(sorted(name for name in sensor.catalogs if name != "any"))
    raise InputError(
        f"sensor {sensor.id} has no collection in catalog {catalog.name!r}; "
        f"use --catalog {alternatives} or a STAC API URL"
    )


def search(
    *,
    sensors: str | Sequence[str | Sensor] = "s2",
    bbox: Sequence[float] | str | None = None,
    intersects: Mapping[str, Any] | BaseGeometry | str | Path | None = None,
    datetime: str | None = None,
    catalog: str | None = None,
    max_cloud: float | None = None,
    limit: int | None = None,
    timeout: float = 30.0,
    max_retries: int = 4,
    backoff_factor: float = 0.5,
    page_size: int = 100,
    require_all: bool = False,
) -> SearchResult:
    """Find the items of each sensor over an area and time range.

    Args:
        sensors: sensor names (``"s2,s1,dem"`` or a sequence of names or sensors).
        bbox: ``west south east north`` in degrees; give this or ``intersects``.
        intersects: GeoJSON geometry (dictionary, file or text) or shapely geometry.
        datetime: ``START/END`` range (``2023-08-10/2023-08-20``; ``..`` for open).
        catalog: catalog name (``earth-search``, ``planetary-computer``), STAC API URL, or
            local catalog path; None uses each sensor's default catalog.
        max_cloud: maximum cloud cover in percent, for sensors that report one.
        limit: maximum items per sensor.
        timeout: timeout of each HTTP request in seconds.
        max_retries: retries per request on connection errors, resets and HTTP 429/5xx.
        backoff_factor: base of the exponential wait between retries, in seconds.
        page_size: items per page requested from a STAC API.
        require_all: raise when any sensor has no items, not only when all are empty.

    Raises:
        InputError: an invalid argument (bbox, dates, unknown sensor or catalog).
        CatalogError: a catalog cannot be reached or fails after the retries.
        EmptyResultError: nothing matched (or, with ``require_all``, some sensor matched nothing).
    """
    query = build_query(bbox=bbox, intersects=intersects, datetime=datetime, max_cloud=max_cloud, limit=limit)
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise InputError(f"invalid timeout {timeout!r}: give a positive number of seconds per request")
    if not (isinstance(max_retries, int) and max_retries >= 0):
        raise InputError(f"invalid retries {max_retries!r}: give 0 or a positive number of retries per request")
    if not (isinstance(page_size, int) and page_size >= 1):
        raise InputError(f"invalid page size {page_size!r}: give a positive number of items per page")
    if query.bbox is None and query.intersects is None:
        raise InputError("give an area: a bbox (west south east north) or a GeoJSON geometry")
    sensor_list = parse_sensor_list(sensors)

    sources = {sensor.id: _resolve_source(sensor, catalog) for sensor in sensor_list}
    found: dict[str, list[pystac.Item]] = {}
    local_cache: dict[str, list[pystac.Item]] = {}
    clients: dict[str, Any] = {}
    for sensor in sensor_list:
        source = sources[sensor.id]
        if isinstance(source, str):
            if source not in local_cache:
                local_cache[source] = read_local_items(source)
            items = [
                item
                for item in local_cache[source]
                if item_belongs_to(item, sensor) and matches_query(item, query, sensor)
            ]
            unique = {item.id: item for item in reversed(items)}
            items = sorted(unique.values(), key=lambda item: (item_datetime(item), item.id))
            found[sensor.id] = items[: query.limit] if query.limit is not None else items
        else:
            collections = _collections_for(sensor, source)
            if source.url not in clients:
                clients[source.url] = open_client(
                    source, timeout=timeout, max_retries=max_retries, backoff_factor=backoff_factor
                )
            items = search_sensor(clients[source.url], sensor, collections, query, page_size=page_size)
            found[sensor.id] = sorted(items, key=lambda item: (item_datetime(item), item.id))

    result = SearchResult(
        items=found,
        sensors={sensor.id: sensor for sensor in sensor_list},
        sources={sensor_id: source if isinstance(source, str) else source.url for sensor_id, source in sources.items()},
        query=query,
    )
    empty = [sensor_id for sensor_id, items in found.items() if not items]
    area = query.bbox if query.bbox is not None else "the geometry"
    if len(empty) == len(found) or (require_all and empty):
        raise EmptyResultError(
            f"no items found for {', '.join(empty)} over {area} in {datetime or 'any time'}"
            f"{'' if max_cloud is None else f' with at most {max_cloud:g} % cloud cover'}; "
            f"widen the area or time range, raise --max-cloud, or check --catalog"
        )
    for sensor_id in empty:
        logger.warning("no items found for %s in %s", sensor_id, result.sources[sensor_id])
    return result
