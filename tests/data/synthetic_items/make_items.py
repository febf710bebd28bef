"""Write small synthetic Sentinel-2 L2A items with real GeoTIFF assets for edge-case tests.

Run from anywhere: ``python tests/data/synthetic_items/make_items.py``. It rewrites every
case folder next to this script. Each case folder contains item JSON files (Earth Search v1
layout: asset keys blue, green, red, nir, scl; ``raster:bands`` scale 0.0001 and offset
-0.1) and their rasters, 32 x 32 pixels at 10 m, with relative hrefs.

Cases:

* ``same_pass``: two items of one pass on 2023-08-15, four seconds apart, on overlapping
  grids of one UTM zone; a cube must give them one time slice.
* ``two_utm_zones``: two items on 2023-08-15 on either side of 18 degrees east, one in
  EPSG:32633 and one in EPSG:32634; both must load into one cube.
* ``proj_code_only``: one item using projection extension v2 (``proj:code``, no
  ``proj:epsg``).
* ``mixed_seconds``: three items of one grid whose datetimes mix whole and fractional
  seconds (``09:57:57Z``, ``10:07:54.024Z``, ``09:57:57.5Z``).

Pixel values are DN = 1000 (the baseline 04.00 offset) + 100 * item number + 10 * band
number + (row + col) % 50, nodata 0, so a test can tell which item a pixel came from.
SCL is 4 (vegetation) except a 4 x 4 block of class 9 (cloud, high probability) at rows
and columns 4 to 7 of the first item of each case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent
SIZE = 32
GSD = 10.0
BANDS = [
    # asset key, band name, centre wavelength in micrometres (as Earth Search states it)
    ("blue", "B02", 0.49),
    ("green", "B03", 0.56),
    ("red", "B04", 0.665),
    ("nir", "B08", 0.842),
]
PROJECTION_V1 = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
PROJECTION_V2 = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]


def _write_raster(path: Path, data: np.ndarray, epsg: int, origin: tuple[float, float], nodata: int) -> None:
    profile = {
        "driver": "GTiff",
        "width": SIZE,
        "height": SIZE,
        "count": 1,
        "dtype": data.dtype.name,
        "crs": f"EPSG:{epsg}",
        "transform": from_origin(origin[0], origin[1], GSD, GSD),
        "nodata": nodata,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data, 1)


def _footprint(epsg: int, origin: tuple[float, float]) -> tuple[dict[str, Any], list[float]]:
    to_lonlat = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    x0, y0 = origin
    x1, y1 = x0 + SIZE * GSD, y0 - SIZE * GSD
    corners = [to_lonlat.transform(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    ring = [[round(lon, 7), round(lat, 7)] for lon, lat in corners]
    lons = [point[0] for point in ring]
    lats = [point[1] for point in ring]
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}, [min(lons), min(lats), max(lons), max(lats)]


def make_item(
    case: str,
    item_id: str,
    number: int,
    datetime: str,
    epsg: int,
    origin: tuple[float, float],
    proj_code_only: bool = False,
    cloud_block: bool = False,
) -> dict[str, Any]:
    """Write the rasters of one item and return its STAC dictionary (relative hrefs)."""
    folder = HERE / case / item_id
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = np.indices((SIZE, SIZE))
    assets: dict[str, Any] = {}
    for band_number, (key, name, wavelength) in enumerate(BANDS):
        data = (1000 + 100 * number + 10 * band_number + (rows + cols) % 50).astype("uint16")
        _write_raster(folder / f"{name}.tif", data, epsg, origin, nodata=0)
        assets[key] = {
            "href": f"./{item_id}/{name}.tif",
            "type": "image/tiff; application=geotiff",
            "roles": ["data", "reflectance"],
            "eo:bands": [{"name": key, "common_name": key, "center_wavelength": wavelength}],
            "raster:bands": [
                {"nodata": 0, "data_type": "uint16", "spatial_resolution": GSD, "scale": 0.0001, "offset": -0.1}
            ],
        }
    scl = np.full((SIZE, SIZE), 4, dtype="uint8")
    if cloud_block:
        scl[4:8, 4:8] = 9
    _write_raster(folder / "SCL.tif", scl, epsg, origin, nodata=0)
    assets["scl"] = {
        "href": f"./{item_id}/SCL.tif",
        "type": "image/tiff; application=geotiff",
        "roles": ["data"],
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": GSD}],
    }

    geometry, bbox = _footprint(epsg, origin)
    projection: dict[str, Any] = {"proj:code": f"EPSG:{epsg}"} if proj_code_only else {"proj:epsg": epsg}
    projection["proj:shape"] = [SIZE, SIZE]
    projection["proj:transform"] = [GSD, 0.0, origin[0], 0.0, -GSD, origin[1]]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [PROJECTION_V2 if proj_code_only else PROJECTION_V1, *EXTENSIONS],
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": datetime,
            "platform": "sentinel-2a",
            "constellation": "sentinel-2",
            "gsd": GSD,
            "eo:cloud_cover": 5.0 * number,
            "s2:processing_baseline": "05.09",
            **projection,
        },
        "links": [],
        "assets": assets,
    }


def _grid_origin_at(lon: float, lat: float, epsg: int) -> tuple[float, float]:
    """Upper-left corner snapped to the 10 m grid at a longitude/latitude."""
    to_utm = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    x, y = to_utm.transform(lon, lat)
    return float(round(x / GSD) * GSD), float(round(y / GSD) * GSD)


def main() -> None:
    """Rewrite every case folder."""
    cases: dict[str, list[dict[str, Any]]] = {}

    cases["same_pass"] = [
        make_item("same_pass", "S2A_SYNTH_SAMEPASS_A", 0, "2023-08-15T09:57:57Z", 32633, (515340.0, 5200020.0), cloud_block=True),
        # Shifted by 24 pixels east and 8 south: the grids overlap by 8 x 24 pixels.
        make_item("same_pass", "S2A_SYNTH_SAMEPASS_B", 1, "2023-08-15T09:58:01Z", 32633, (515580.0, 5199940.0)),
    ]

    # 18 degrees east at 46.8 degrees north separates UTM zones 33 and 34.
    west_origin = _grid_origin_at(18.0, 46.8, 32633)
    west_origin = (west_origin[0] - SIZE * GSD, west_origin[1])
    cases["two_utm_zones"] = [
        make_item("two_utm_zones", "S2A_SYNTH_ZONE33", 0, "2023-08-15T09:57:57Z", 32633, west_origin, cloud_block=True),
        make_item("two_utm_zones", "S2A_SYNTH_ZONE34", 1, "2023-08-15T09:57:57Z", 32634, _grid_origin_at(18.0, 46.8, 32634)),
    ]

    cases["proj_code_only"] = [
        make_item("proj_code_only", "S2A_SYNTH_PROJCODE", 0, "2023-08-15T09:57:57Z", 32633, (515340.0, 5200020.0), proj_code_only=True, cloud_block=True),
    ]

    cases["mixed_seconds"] = [
        make_item("mixed_seconds", "S2A_SYNTH_SECONDS_1", 0, "2023-08-10T09:57:57Z", 32633, (515340.0, 5200020.0), cloud_block=True),
        make_item("mixed_seconds", "S2A_SYNTH_SECONDS_2", 1, "2023-08-13T10:07:54.024Z", 32633, (515340.0, 5200020.0)),
        make_item("mixed_seconds", "S2A_SYNTH_SECONDS_3", 2, "2023-08-15T09:57:57.5Z", 32633, (515340.0, 5200020.0)),
    ]

    for case, items in cases.items():
        for item in items:
            (HERE / case / f"{item['id']}.json").write_text(json.dumps(item, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    for stale in (HERE / name for name in ("same_pass", "two_utm_zones", "proj_code_only", "mixed_seconds")):
        if stale.exists():
            shutil.rmtree(stale)
    main()
