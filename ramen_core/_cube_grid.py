"""Output grids of a cube: one CRS and one set of bounds, with one pixel grid per sensor.

The snapping rule, which :mod:`ramen_core.cube` documents for users:

1. The CRS is the one given, else the UTM zone of the area's centre.
2. The area is the bbox or geometry given. Without one it is the union of the items' own
   pixel grids (for items already in the output CRS) and footprints (for the others).
3. The bounds snap outward to a lattice whose spacing is the least common multiple of the
   sensors' GSDs, so every sensor's grid divides the bounds into whole pixels and all
   grids share the same top-left corner.
4. The lattice is anchored on a pixel corner of the first sensor's first item when that
   item's grid is in the output CRS at the sensor's GSD, so such data loads without any
   shift. Otherwise it is anchored at ``x = 0, y = 0``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from affine import Affine
from odc.geo.crs import CRS, norm_crs
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox, Geometry, box

from ramen_core.catalog.query import parse_bbox, parse_geometry
from ramen_core.errors import InputError

logger = logging.getLogger(__name__)

# Coordinates closer than this to a lattice line (in metres) count as on it, so that float
# round-off never adds a whole pixel row.
_SNAP_TOLERANCE_M = 1e-6

# GSDs are compared and combined in whole millimetres.
_MM_PER_M = 1000

# Geographic CRS used for bboxes and footprints.
LONLAT = "EPSG:4326"


@dataclass(frozen=True)
class GridPlan:
    """The common CRS and bounds of a cube, and each sensor's pixel grid over them.

    Attributes:
        crs: output CRS, projected in metres.
        bounds: ``(left, bottom, right, top)`` in ``crs`` units, shared by every grid.
        lattice_m: spacing in metres that the bounds are multiples of, from the anchor.
        anchor: ``(x, y)`` of one lattice point in ``crs``.
        geoboxes: the pixel grid of each sensor, by sensor key.
    """

    crs: CRS
    bounds: BoundingBox
    lattice_m: float
    anchor: tuple[float, float]
    geoboxes: Mapping[str, GeoBox]


def area_from_bbox(bbox: Sequence[float] | str) -> Geometry:
    """Validate a ``(west, south, east, north)`` bbox in degrees and return it as a polygon.

    Raises:
        InputError: the bbox is not four numbers, west > east, south > north, or a value
            is out of range.
    """
    west, south, east, north = parse_bbox(bbox)
    if west == east or south == north:
        raise InputError(f"bbox {bbox!r} has no area; west must be less than east and south less than north")
    return box(west, south, east, north, LONLAT)


def area_from_geometry(geometry: Any) -> Geometry:
    """Turn GeoJSON (EPSG:4326), a shapely geometry or an odc-geo Geometry into a polygon.

    Raises:
        InputError: the geometry cannot be read, is empty or invalid.
    """
    if isinstance(geometry, Geometry):
        return geometry
    return Geometry(parse_geometry(geometry), crs=LONLAT)


def output_crs(crs: Any, area: Geometry) -> CRS:
    """Return the given CRS, or the UTM zone of the area's centre.

    Raises:
        InputError: the CRS cannot be read or is not projected in metres.
    """
    if crs is None:
        centre = area.to_crs(LONLAT).centroid
        chosen = CRS.utm(centre)
        logger.info("output CRS %s: the UTM zone of the area centre (lon %.4f, lat %.4f)", chosen, *centre.coords[0])
        return chosen
    try:
        chosen = norm_crs(crs)
    except Exception as error:  # pyproj raises its own CRSError, among others
        raise InputError(f"cannot read CRS {crs!r} ({error}); give an EPSG code such as 32633") from None
    if chosen is None or not chosen.projected or chosen.units[0] not in ("metre", "m"):
        raise InputError(
            f"CRS {crs!r} is not projected in metres; cubes need a metric CRS (such as a UTM zone) "
            f"because every sensor loads at its GSD in metres"
        )
    return chosen


def lattice_spacing(gsds: Sequence[float]) -> float:
    """Return the least common multiple of GSDs in metres, computed in whole millimetres."""
    millimetres = [max(1, round(gsd * _MM_PER_M)) for gsd in gsds]
    spacing = millimetres[0]
    for value in millimetres[1:]:
        spacing = spacing * value // math.gcd(spacing, value)
    spacing_m = spacing / _MM_PER_M
    if spacing_m > 100 * max(gsds):
        # NOTE: GSDs without a small common multiple (such as 10 m and 10.5 m) would snap
        # the bounds to kilometres, so the coarsest GSD is used instead. The finer grids
        # may then end a fraction of a pixel short of the shared bounds.
        logger.warning(
            "GSDs %s have no small common multiple; bounds snap to the coarsest GSD %g m, so "
            "the other grids may not cover the bounds with whole pixels",
            list(gsds),
            max(gsds),
        )
        return float(max(gsds))
    return spacing_m


def _snap(value: float, anchor: float, spacing: float, outward: str) -> float:
    steps = (value - anchor) / spacing
    tolerance = _SNAP_TOLERANCE_M / spacing
    if outward == "down":
        return anchor + math.floor(steps + tolerance) * spacing
    return anchor + math.ceil(steps - tolerance) * spacing


def snap_bounds(bounds: BoundingBox, anchor: tuple[float, float], spacing: float) -> BoundingBox:
    """Snap bounds outward to the lattice; a degenerate side still gets one lattice step."""
    left = _snap(bounds.left, anchor[0], spacing, "down")
    right = _snap(bounds.right, anchor[0], spacing, "up")
    bottom = _snap(bounds.bottom, anchor[1], spacing, "down")
    top = _snap(bounds.top, anchor[1], spacing, "up")
    if right <= left:
        right = left + spacing
    if top <= bottom:
        top = bottom + spacing
    return BoundingBox(left, bottom, right, top, bounds.crs)


def plan_grids(
    crs: CRS,
    area_bounds: BoundingBox,
    gsds: Mapping[str, float],
    anchor: tuple[float, float] | None,
) -> GridPlan:
    """Build each sensor's pixel grid over the same snapped bounds.

    Args:
        crs: the output CRS.
        area_bounds: the area's bounds in ``crs``, before snapping.
        gsds: GSD in metres of each sensor, by sensor key, in the sensors' order.
        anchor: a pixel corner of the first sensor's native grid in ``crs``, or None to
            anchor the lattice at ``(0, 0)``.
    """
    spacing = lattice_spacing(list(gsds.values()))
    if anchor is None:
        phase = (0.0, 0.0)
    else:
        phase = (anchor[0] % spacing, anchor[1] % spacing)
    bounds = snap_bounds(area_bounds, phase, spacing)

    geoboxes: dict[str, GeoBox] = {}
    for key, gsd in gsds.items():
        width = round((bounds.right - bounds.left) / gsd)
        height = round((bounds.top - bounds.bottom) / gsd)
        transform = Affine(gsd, 0.0, bounds.left, 0.0, -gsd, bounds.top)
        geoboxes[key] = GeoBox((height, width), transform, crs)
        logger.info("grid of %s: %d x %d pixels of %g m, top-left (%.3f, %.3f) in %s", key, width, height, gsd, bounds.left, bounds.top, crs)
    return GridPlan(crs=crs, bounds=bounds, lattice_m=spacing, anchor=phase, geoboxes=geoboxes)
