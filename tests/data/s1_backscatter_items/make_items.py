"""Write two Sentinel-1 RTC-style items over one BigEarthNet-MM patch, in dB and in linear power.

Run from anywhere: ``python tests/data/s1_backscatter_items/make_items.py``. It rewrites the
item JSON files and the linear-power rasters next to this script. PROVENANCE.md lists what
is real and what is invented.

* ``bigearthnet-s1-36_85-des``: the real VV and VH patch files (backscatter in dB, from
  ``../bigearthnet_mm``), descending pass, with no ``raster:bands`` unit, so only the
  pixels show that the data is already in dB.
* ``bigearthnet-s1-36_85-asc``: the same pixels converted to linear power
  (``10 ** (dB / 10)``), written here, labelled as an ascending pass one day later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.warp

HERE = Path(__file__).resolve().parent
PATCH = "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85"
PATCH_DIR = HERE.parent / "bigearthnet_mm" / "S1" / PATCH
POLARISATIONS = ("VV", "VH")

PROJECTION = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
SAT = "https://stac-extensions.github.io/sat/v1.0.0/schema.json"
SAR = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"


def write_linear(polarisation: str) -> Path:
    """Write the linear-power version of one polarisation and return its path."""
    target = HERE / f"{PATCH}_{polarisation}_linear.tif"
    with rasterio.open(PATCH_DIR / f"{PATCH}_{polarisation}.tif") as source:
        decibels = source.read(1)
        profile = {**source.profile, "compress": "deflate", "predictor": 3}
    with rasterio.open(target, "w", **profile) as dataset:
        dataset.write(np.power(np.float32(10.0), decibels / np.float32(10.0)).astype(np.float32), 1)
    return target


def make_item(item_id: str, datetime: str, orbit_state: str, files: dict[str, Path]) -> dict[str, Any]:
    """Assemble one item whose assets ``vv`` and ``vh`` point at ``files``."""
    with rasterio.open(files["VV"]) as dataset:
        epsg = dataset.crs.to_epsg()
        shape = [dataset.height, dataset.width]
        transform = list(dataset.transform)[:6]
        bounds = rasterio.warp.transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds)
    west, south, east, north = bounds
    assets = {
        polarisation.lower(): {
            "href": Path(os.path.relpath(path, HERE)).as_posix(),
            "type": "image/tiff; application=geotiff",
            "roles": ["data"],
            "raster:bands": [{"data_type": "float32"}],
        }
        for polarisation, path in files.items()
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [PROJECTION, RASTER, SAT, SAR],
        "id": item_id,
        "collection": "sentinel-1-rtc",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]],
        },
        "bbox": [west, south, east, north],
        "properties": {
            "datetime": datetime,
            "platform": "sentinel-1a",
            "constellation": "sentinel-1",
            "sar:instrument_mode": "IW",
            "sar:polarizations": ["VV", "VH"],
            "sat:orbit_state": orbit_state,
            "proj:epsg": epsg,
            "proj:shape": shape,
            "proj:transform": transform,
        },
        "links": [],
        "assets": assets,
    }


def main() -> None:
    decibel_files = {polarisation: PATCH_DIR / f"{PATCH}_{polarisation}.tif" for polarisation in POLARISATIONS}
    linear_files = {polarisation: write_linear(polarisation) for polarisation in POLARISATIONS}
    items = [
        make_item("bigearthnet-s1-36_85-des", "2017-06-17T06:47:24Z", "descending", decibel_files),
        make_item("bigearthnet-s1-36_85-asc", "2017-06-18T18:20:00Z", "ascending", linear_files),
    ]
    for item in items:
        (HERE / f"{item['id']}.json").write_text(json.dumps(item, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {item['id']}.json")


if __name__ == "__main__":
    main()
