"""The search query: area, time range, cloud cover and limit, validated once at the boundary."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import shapely.geometry
from pystac.utils import str_to_datetime
from shapely.geometry.base import BaseGeometry

from ramen_core.errors import InputError


@dataclass(frozen=True)
class SearchQuery:
    """Search criteria in WGS84 longitude/latitude and UTC.

    Attributes:
        bbox: ``(west, south, east, north)`` in degrees, or None when ``intersects`` is set.
        intersects: GeoJSON geometry dictionary, or None when ``bbox`` is set.
        start: first instant of the time range (inclusive), or None for an open start.
        end: last instant of the time range (inclusive), or None for an open end.
        max_cloud: maximum cloud cover in percent, or None for no limit.
        limit: maximum number of items per sensor, or None for all.
    """

    bbox: tuple[float, float, float, float] | None = None
    intersects: dict[str, Any] | None = None
    start: datetime | None = None
    end: datetime | None = None
    max_cloud: float | None = None
    limit: int | None = None

    def geometry(self) -> BaseGeometry | None:
        """Return the search area as a shapely geometry, or None for no spatial filter."""
        if self.intersects is not None:
            return shapely.geometry.shape(self.intersects)
        if self.bbox is not None:
            return shapely.geometry.box(*self.bbox)
        return None

    def datetime_interval(self) -> str | None:
        """Return the time range as a STAC API ``datetime`` interval, or None for no filter."""
        if self.start is None and self.end is None:
            return None
        return f"{_format_instant(self.start)}/{_format_instant(self.end)}"


def _format_instant(value: datetime | None) -> str:
    if value is None:
        return ".."
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_bbox(values: Sequence[float] | str) -> tuple[float, float, float, float]:
    """Validate a bounding box ``west south east north`` in degrees.

    Args:
        values: four numbers, or a string of four numbers separated by commas or spaces.

    Raises:
        InputError: not four numbers, west > east, south > north, or a value outside
            longitude [-180, 180] or latitude [-90, 90].
    """
    if isinstance(values, str):
        parts: Sequence[Any] = [part for part in re.split(r"[,\s]+", values.strip()) if part]
    else:
        parts = list(values)
    try:
        numbers = [float(part) for part in parts]
    except (TypeError, ValueError):
        raise InputError(f"invalid bbox {values!r}: give four numbers, west south east north in degrees") from None
    if len(numbers) != 4:
        raise InputError(f"invalid bbox {values!r}: give four numbers, west south east north in degrees")
    west, south, east, north = numbers
    for name, value in (("west", west), ("east", east)):
        if not -180.0 <= value <= 180.0:
            raise InputError(f"invalid bbox: {name} longitude {value} is outside [-180, 180]")
    for name, value in (("south", south), ("north", north)):
        if not -90.0 <= value <= 90.0:
            raise InputError(f"invalid bbox: {name} latitude {value} is outside [-90, 90]")
    if west > east:
        raise InputError(
            f"invalid bbox: west {west} is greater than east {east}; give west south east north "
            f"(an area across the antimeridian must be split in two searches)"
        )
    if south > north:
        raise InputError(f"invalid bbox: south {south} is greater than north {north}; give west south east north")
    return west, south, east, north


def parse_geometry(value: Mapping[str, Any] | BaseGeometry | str | Path) -> dict[str, Any]:
    """Validate a search geometry and return it as a GeoJSON geometry dictionary.

    Args:
        value: a GeoJSON geometry, Feature or FeatureCollection (dictionary, JSON text or
            path to a file), or a shapely geometry, in WGS84 degrees.

    Raises:
        InputError: the value cannot be read, is empty or invalid, or lies outside the
            longitude/latitude range.
    """
    if isinstance(value, BaseGeometry):
        geometry = value
    else:
        data: Any = value
        if isinstance(value, (str, Path)):
            text = str(value)
            path = Path(text)
            try:
                data = json.loads(path.read_text(encoding="utf-8") if path.is_file() else text)
            except json.JSONDecodeError as error:
                raise InputError(f"geometry {text!r} is neither a GeoJSON file nor GeoJSON text: {error}") from None
        geometry = _shape_of_geojson(data)
    if geometry.is_empty:
        raise InputError("geometry is empty; give a polygon or point in longitude/latitude degrees")
    if not geometry.is_valid:
        raise InputError(f"geometry is invalid ({shapely.is_valid_reason(geometry)}); fix it, for example with shapely's make_valid")
    west, south, east, north = geometry.bounds
    if west < -180 or east > 180 or south < -90 or north > 90:
        raise InputError(
            f"geometry bounds ({west}, {south}, {east}, {north}) are outside longitude [-180, 180] "
            f"and latitude [-90, 90]; give WGS84 degrees"
        )
    return shapely.geometry.mapping(geometry)


def _shape_of_geojson(data: Any) -> BaseGeometry:
    """Turn a GeoJSON geometry, Feature or FeatureCollection into one shapely geometry.

    Raises:
        InputError: a feature has no geometry, or a geometry misses its type or coordinates.
    """
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
        if not isinstance(features, list) or not features:
            raise InputError("geometry: the FeatureCollection has no features")
        return shapely.union_all([_shape_of_geojson(feature) for feature in features])
    if isinstance(data, Mapping) and data.get("type") == "Feature":
        if not isinstance(data.get("geometry"), Mapping):
            name = f" {data['id']!r}" if data.get("id") else ""
            raise InputError(f"geometry: feature{name} has no geometry; give a Polygon or Point in degrees")
        data = data["geometry"]
    try:
        return shapely.geometry.shape(data)
    except (AttributeError, KeyError, TypeError, ValueError, shapely.errors.GEOSException) as error:
        reason = f"missing {error.args[0]!r}" if isinstance(error, KeyError) and error.args else str(error)
        raise InputError(f"invalid GeoJSON geometry ({reason}); give a GeoJSON Polygon, Point, Feature or FeatureCollection") from None


_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")


def _parse_instant(text: str, is_end: bool) -> datetime | None:
    """Parse one end of a range; a date without time covers the whole day, month or year."""
    text = text.strip()
    if text in ("", ".."):
        return None
    match = _PARTIAL_DATE.match(text)
    try:
        if match is None:
            value = str_to_datetime(text)
            return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        year, month, day = match.groups()
        start = datetime(int(year), int(month or 1), int(day or 1), tzinfo=timezone.utc)
    except ValueError:
        raise InputError(f"invalid date {text!r}; use YYYY-MM-DD or an RFC 3339 date-time such as 2023-08-10T10:00:00Z") from None
    if not is_end:
        return start
    if day is not None:
        following = start + timedelta(days=1)
    elif month is not None:
        following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    else:
        following = start.replace(year=start.year + 1)
    return following - timedelta(microseconds=1)


def parse_datetime_range(value: str | None) -> tuple[datetime | None, datetime | None]:
    """Parse ``START/END`` (either side may be ``..`` or empty) or a single date.

    Dates without a time cover whole days (``2023-08`` and ``2023`` whole months and
    years), so ``2023-08-10/2023-08-20`` includes the 20th. Times without a zone are UTC.

    Raises:
        InputError: a side is not a date, or the start is after the end.
    """
    if value is None or not str(value).strip():
        return None, None
    text = str(value).strip()
    if text.count("/") > 1:
        raise InputError(f"invalid datetime range {text!r}: give one START/END pair, such as 2023-06-01/2023-08-31")
    if "/" in text:
        start_text, _, end_text = text.partition("/")
    else:
        start_text = end_text = text
    start = _parse_instant(start_text, is_end=False)
    end = _parse_instant(end_text, is_end=True)
    if start is not None and end is not None and start > end:
        raise InputError(f"invalid datetime range {text!r}: the start is after the end")
    return start, end


def build_query(
    *,
    bbox: Sequence[float] | str | None = None,
    intersects: Mapping[str, Any] | BaseGeometry | str | Path | None = None,
    datetime: str | None = None,
    max_cloud: float | None = None,
    limit: int | None = None,
) -> SearchQuery:
    """Validate search arguments into a :class:`SearchQuery`.

    Raises:
        InputError: an argument is invalid, or both ``bbox`` and ``intersects`` are given.
    """
    if bbox is not None and intersects is not None:
        raise InputError("give either a bbox or a geometry, not both")
    if max_cloud is not None and not 0 <= float(max_cloud) <= 100:
        raise InputError(f"invalid maximum cloud cover {max_cloud}: give a percentage between 0 and 100")
    if limit is not None and int(limit) < 1:
        raise InputError(f"invalid limit {limit}: give a positive number of items per sensor")
    start, end = parse_datetime_range(datetime)
    return SearchQuery(
        bbox=None if bbox is None else parse_bbox(bbox),
        intersects=None if intersects is None else parse_geometry(intersects),
        start=start,
        end=end,
        max_cloud=None if max_cloud is None else float(max_cloud),
        limit=None if limit is None else int(limit),
    )
