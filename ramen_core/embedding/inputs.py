"""What ``embed`` reads: local files or a catalog query, turned into modalities on one grid.

Output CRS rule: the ``crs`` given; else, for files, the first input's CRS when it is
projected in metres; else the UTM zone of the area's centre (catalog queries always use
that UTM zone unless ``crs`` is given).

Area rule: for files, the first input's footprint in the output CRS, cut to ``bbox`` when
one is given; for a catalog query, the ``bbox``. Every input must overlap the area.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds

from ramen_core.errors import EmptyResultError, InputError
from ramen_core.inference.sources import FileModality, open_file_modality
from ramen_core.sensors import Sensor, get_sensor

logger = logging.getLogger(__name__)

LONLAT = CRS.from_epsg(4326)


@dataclass
class FileInput:
    """One modality stored in local rasters.

    Attributes:
        path: a multi-band raster (GeoTIFF, VRT) or a folder of one raster per band,
            matched by band name in the file names.
        sensor: sensor id or alias (``s2``), a sensor TOML file, a one-line description
            (``spot@1.5:red=665,green=560,blue=490``), or a :class:`Sensor`.
        name: modality label in outputs and normalisation files; default the sensor name
            as given (``s2``) or the sensor id.
        bands: bands to use; default all bands found, or the sensor's default bands for a
            file without band descriptions (then in the file's band order).
        orbit: ``asc`` or ``des``, required for radar sensors.
        sar_units: ``auto`` (negative values mean dB), ``db`` or ``linear``.
        scale: stored value to physical unit factor; default the sensor's.
        offset: added after ``scale``, in physical units; default the sensor's. Sentinel-2
            data with the +1000 DN offset of processing baseline 04.00 needs ``-0.1``.
        date: acquisition date (``2024-08-24``), recorded in the tags.
        gsd: native GSD in metres, overriding the files' pixel size.
    """

    path: str | Path
    sensor: str | Sensor
    name: str | None = None
    bands: Sequence[str] | None = None
    orbit: str | None = None
    sar_units: str = "auto"
    scale: float | None = None
    offset: float | None = None
    date: dt.date | str | None = None
    gsd: float | None = None

    def label(self) -> str:
        if self.name:
            return str(self.name)
        if isinstance(self.sensor, Sensor):
            return self.sensor.aliases[0] if self.sensor.aliases else self.sensor.id
        text = str(self.sensor)
        if text.lower().endswith(".toml") or "@" in text:
            return get_sensor(text).id
        return text.lower()


@dataclass
class CatalogQuery:
    """An area, dates and sensors to search in a STAC catalog.

    Attributes:
        sensors: sensor names (``"s2,s1,dem"`` or a list).
        bbox: ``west south east north`` in degrees.
        datetime: ``START/END`` (``2023-08-10/2023-08-20``).
        catalog: catalog name, STAC API URL or local catalog path; default each sensor's.
        max_cloud: maximum cloud cover in percent.
        limit: maximum items per sensor.
        bands: bands per sensor name (``{"s2": ["B02", "B03"]}``); default the sensor's.
        orbit: keep only radar items of this orbit direction (``asc`` or ``des``).
    """

    sensors: str | Sequence[str]
    bbox: Sequence[float]
    datetime: str | None = None
    catalog: str | None = None
    max_cloud: float | None = None
    limit: int | None = None
    bands: Mapping[str, Sequence[str]] | None = None
    orbit: str | None = None


def parse_crs(value: Any) -> CRS:
    """Read a CRS (EPSG code, ``EPSG:32633``, WKT or PROJ string) that is projected in metres.

    Raises:
        InputError: the CRS cannot be read or is not projected in metres.
    """
    if isinstance(value, CRS):
        crs = value
    else:
        try:
            crs = CRS.from_epsg(int(value)) if str(value).isdigit() else CRS.from_user_input(value)
        except (CRSError, ValueError, TypeError) as error:
            raise InputError(f"cannot read CRS {value!r} ({error}); give an EPSG code such as 32633") from None
    if not crs.is_projected or (crs.linear_units or "").lower() not in ("metre", "meter", "m"):
        raise InputError(f"CRS {value!r} is not projected in metres; give a metric CRS such as a UTM zone (EPSG:326xx)")
    return crs


def utm_crs(lon: float, lat: float) -> CRS:
    """Return the UTM zone (WGS 84) of a point given in degrees."""
    from odc.geo.crs import CRS as OdcCRS

    return CRS.from_epsg(int(OdcCRS.utm(lon, lat).epsg))


def _is_metric(crs: CRS) -> bool:
    return bool(crs.is_projected) and (crs.linear_units or "").lower() in ("metre", "meter", "m")


def _intersection(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float] | None:
    left, bottom = max(a[0], b[0]), max(a[1], b[1])
    right, top = min(a[2], b[2]), min(a[3], b[3])
    if left >= right or bottom >= top:
        return None
    return (left, bottom, right, top)


def _date(value: dt.date | str | None) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise InputError(f"invalid date {value!r}; give YYYY-MM-DD") from None


def open_file_inputs(
    inputs: Sequence[FileInput],
    *,
    crs: Any = None,
    bbox: Sequence[float] | None = None,
) -> tuple[list[FileModality], CRS, tuple[float, float, float, float]]:
    """Open local inputs and decide the output CRS and the area.

    Returns:
        The modalities, the output CRS and the area's bounds in it.

    Raises:
        InputError: unreadable inputs, inputs without CRS, repeated names, or inputs that do
            not overlap the area.
    """
    if not inputs:
        raise InputError("no input given; pass a raster or folder and its sensor")
    names = [item.label() for item in inputs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"modality {', '.join(repeated)} is given twice; name each input once (name=... or NAME=path)")

    first = inputs[0]
    modalities = [
        open_file_modality(
            name, item.sensor, item.path, bands=item.bands, orbit=item.orbit, sar_units=item.sar_units,
            scale=item.scale, offset=item.offset, acquired=_date(item.date), gsd=item.gsd,
        )
        for name, item in zip(names, inputs)
    ]
    source_crs = modalities[0].crs
    assert source_crs is not None
    if crs is not None:
        out_crs = parse_crs(crs)
    elif _is_metric(source_crs):
        out_crs = source_crs
    else:
        lon_lat = modalities[0].footprint(LONLAT)
        out_crs = utm_crs((lon_lat[0] + lon_lat[2]) / 2, (lon_lat[1] + lon_lat[3]) / 2)
        logger.info("input %s is in %s, not projected in metres; output CRS %s (the UTM zone of its centre)",
                    first.path, source_crs, out_crs)
    if out_crs != source_crs:
        # The GSDs were measured in the file's CRS; measure them again in the output CRS.
        modalities = [
            open_file_modality(
                name, item.sensor, item.path, bands=item.bands, orbit=item.orbit, sar_units=item.sar_units,
                scale=item.scale, offset=item.offset, acquired=_date(item.date), gsd=item.gsd, crs=out_crs,
            )
            for name, item in zip(names, inputs)
        ]

    area = modalities[0].footprint(out_crs)
    if bbox is not None:
        from ramen_core.catalog import parse_bbox

        requested = transform_bounds(LONLAT, out_crs, *parse_bbox(bbox), densify_pts=21)
        area = _intersection(area, requested)
        if area is None:
            raise InputError(
                f"input {str(first.path)!r} does not overlap the area {tuple(bbox)}; check the bbox "
                f"(west south east north in degrees) or the input"
            )
    for modality, item in zip(modalities[1:], inputs[1:]):
        if _intersection(area, modality.footprint(out_crs)) is None:
            raise InputError(f"input {str(item.path)!r} ({modality.name}) does not overlap the area of the first input")
    return modalities, out_crs, area


def check_has_data(modalities: Sequence[FileModality], crs: CRS, area: Sequence[float]) -> None:
    """Reject inputs with no valid pixel over the area, from a decimated read of each band.

    Raises:
        EmptyResultError: every modality is all nodata over the area.
        InputError: a file cannot be read.
    """
    import numpy as np

    empty = []
    for modality in modalities:
        samples = modality.sample(area, crs)
        if not any(np.isfinite(values).any() for values in samples.values()):
            empty.append(modality.name)
    if len(empty) == len(modalities):
        raise EmptyResultError(
            f"the input is all nodata over the area (modality {', '.join(empty)}); check the nodata value, "
            f"the bbox, or the file"
        )
    for name in empty:
        logger.warning("modality %s is all nodata over the area; the output comes from the others", name)


def open_catalog_inputs(
    query: CatalogQuery,
    *,
    crs: Any,
    gsd: float,
    chunk_size: int,
) -> tuple[list[Any], CRS, tuple[float, float, float, float], dict[str, Any]]:
    """Search a catalog and load one lazy cube per sensor around the area.

    Returns:
        The cube modalities, the output CRS, the area's bounds in it, and a record of the
        search for the output tags.

    Raises:
        InputError, CatalogError, EmptyResultError: from the search and the cube loading.
    """
    from ramen_core.catalog import parse_bbox, search
    from ramen_core.cube import load_cubes
    from ramen_core.inference.cube_source import CubeModality
    from ramen_core.inference.tiling import snap_grid

    bbox = parse_bbox(query.bbox)
    out_crs = parse_crs(crs) if crs is not None else utm_crs((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    area = transform_bounds(LONLAT, out_crs, *bbox, densify_pts=21)
    result = search(
        sensors=query.sensors, bbox=bbox, datetime=query.datetime, catalog=query.catalog,
        max_cloud=query.max_cloud, limit=query.limit,
    )
    found = {sensor_id: items for sensor_id, items in result.items.items() if items}
    if not found:
        raise EmptyResultError(f"no item found for {query.sensors} in {bbox} during {query.datetime}")
    # Load a little more than the snapped grid, so the cubes cover every output pixel.
    grid = snap_grid(area, out_crs, gsd)
    load_box = transform_bounds(out_crs, LONLAT, *grid.bounds, densify_pts=21)
    cubes = load_cubes(
        found, [result.sensors[sensor_id] for sensor_id in found], bbox=load_box, crs=out_crs.to_wkt(),
        bands=dict(query.bands) if query.bands else None, orbit=query.orbit, chunk_size=chunk_size, compute=False,
    )
    modalities = [CubeModality(name=key, cube=cube) for key, cube in cubes.items()]
    record = {
        "catalog": query.catalog or "default",
        "bbox": list(bbox),
        "datetime": query.datetime,
        "items": {key: sum(len(ids) for ids in cube.item_ids) for key, cube in cubes.items()},
    }
    return modalities, out_crs, area, record
