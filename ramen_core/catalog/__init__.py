"""Search STAC APIs and local catalogs for the items of each sensor.

:func:`search` takes an area (bbox or GeoJSON geometry), a time range, sensors and a
catalog, and returns a :class:`SearchResult` with the items of each sensor.
"""

from ramen_core.catalog.items import (
    item_belongs_to,
    item_cloud_cover,
    item_crs,
    item_datetime,
    item_gsd,
    item_time_range,
    matches_query,
)
from ramen_core.catalog.local import is_local_catalog, read_local_items
from ramen_core.catalog.query import SearchQuery, build_query, parse_bbox, parse_datetime_range, parse_geometry
from ramen_core.catalog.search import SearchResult, search
from ramen_core.catalog.stac_api import make_retry, open_client

__all__ = [
    "SearchQuery",
    "SearchResult",
    "build_query",
    "is_local_catalog",
    "item_belongs_to",
    "item_cloud_cover",
    "item_crs",
    "item_datetime",
    "item_gsd",
    "item_time_range",
    "make_retry",
    "matches_query",
    "open_client",
    "parse_bbox",
    "parse_datetime_range",
    "parse_geometry",
    "read_local_items",
    "search",
]
