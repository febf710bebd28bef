"""Copy a window of the 33TWM Sentinel-2 time series and rewrite its items to match.

The upstream items (Earth Search v1, copied by mapchete-eo) describe the original 10 m
grid and point most assets at public buckets. The upstream local files are 120 m JPEG 2000
images named ``.tif`` whose georeferencing lives only in ``.aux.xml`` side-car files, which
GDAL does not look for under odc-stac's default ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``.
This script therefore crops a 256 x 256 pixel window out of each image, writes it losslessly
as a Cloud-Optimized GeoTIFF with embedded georeferencing, and rewrites the items to
describe exactly those files. Every edit is listed in PROVENANCE.md. Usage:

    python rewrite_items.py SOURCE

where SOURCE is mapchete-eo's ``tests/testdata/sentinel2/full_products`` folder (or a copy
of it with the five ``*_33TWM_*`` item folders). It overwrites the catalog in this folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from odc.geo.geom import Geometry, box
from rasterio.io import MemoryFile
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
COLLECTION = "sentinel-2-l2a"

# Asset key -> local file name, as upstream localised them.
LOCAL_ASSETS = {"blue": "B02.tif", "green": "B03.tif", "red": "B04.tif", "nir": "B08.tif", "scl": "SCL.tif"}

# Reflectance assets whose declared offset of -0.1 does not match the local pixels: the
# values (B04 median about 320 DN on the clear 2023-08-15 date) carry no +1000 DN offset.
REFLECTANCE_ASSETS = ("blue", "green", "red", "nir")

# Rows 0-255, columns 128-383 of the 915 x 915 pixel tile (30.72 km square, 120 m pixels).
# On the R079 dates about 21 % of it lies outside the swath (nodata), and on 2023-08-10 and
# 2023-08-18 about half of it is cloud or cloud shadow in SCL, so masks have work to do.
CROP = Window(col_off=128, row_off=0, width=256, height=256)

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

# This item is also copied verbatim, as the case where the declared offset and the pixels
# disagree.
UNTOUCHED_ITEM = "S2B_33TWM_20230813_0_L2A"


def crop_to_cog(source: Path, target: Path) -> dict:
    """Write the crop window of one raster as a COG and return its grid metadata."""
    with rasterio.open(source) as src:
        pixels = src.read(1, window=CROP)
        transform = src.window_transform(CROP)
        profile = {
            "driver": "GTiff",
            "width": CROP.width,
            "height": CROP.height,
            "count": 1,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "transform": transform,
            "nodata": src.nodata,
        }

    with MemoryFile() as memory:
        with memory.open(**profile) as dataset:
            dataset.write(pixels, 1)
            rasterio.shutil.copy(
                dataset, target, driver="COG", COMPRESS="DEFLATE", PREDICTOR="2", LEVEL="9",
                BLOCKSIZE="256", OVERVIEWS="NONE",
            )

    with rasterio.open(target) as written:
        if not np.array_equal(written.read(1), pixels):
            raise SystemExit(f"{target}: the written pixels differ from the source window")
        return {
            "proj:shape": [written.height, written.width],
            "proj:transform": list(written.transform)[:6],
            "proj:bbox": list(written.bounds),
            "epsg": written.crs.to_epsg(),
            "gsd": abs(written.transform.a),
        }


def rewrite_item(item: dict, grids: dict[str, dict]) -> list[str]:
    """Rewrite one item dict in place to describe the cropped files; return the edits made."""
    edits: list[str] = []

    dropped = sorted(key for key in item["assets"] if key not in LOCAL_ASSETS)
    for key in dropped:
        del item["assets"][key]
    edits.append(f"dropped {len(dropped)} non-local assets: {', '.join(dropped)}")

    for key, file_name in LOCAL_ASSETS.items():
        asset = item["assets"][key]
        if asset["href"] != file_name:
            raise SystemExit(f"{item['id']}: asset {key} points at {asset['href']!r}, expected {file_name!r}")
        grid = grids[key]
        if grid["epsg"] != item["properties"]["proj:epsg"]:
            raise SystemExit(f"{item['id']}: {file_name} is in EPSG:{grid['epsg']} but the item declares "
                             f"EPSG:{item['properties']['proj:epsg']}")

        asset["type"] = COG_TYPE
        for field in ("proj:shape", "proj:transform", "proj:bbox"):
            asset[field] = grid[field]
        if "gsd" in asset:
            asset["gsd"] = grid["gsd"]
        if "title" in asset:
            asset["title"] = asset["title"].replace(" - 10m", " - 120m").replace(" - 20m", " - 120m")
        for band in asset.get("raster:bands", []):
            band["spatial_resolution"] = grid["gsd"]
        if key in REFLECTANCE_ASSETS:
            for band in asset["raster:bands"]:
                band["offset"] = 0.0
    edits.append("blue, green, red, nir, scl: proj:shape, proj:transform, proj:bbox, gsd, "
                 "raster:bands spatial_resolution and the title's resolution of the cropped 120 m grid")
    edits.append("blue, green, red, nir: raster:bands offset -0.1 -> 0.0")

    item["properties"]["earthsearch:boa_offset_applied"] = False
    edits.append("properties: earthsearch:boa_offset_applied true -> false")

    # The footprint becomes the original data footprint clipped to the crop window.
    crop_box = box(*grids["red"]["proj:bbox"], crs=f"EPSG:{grids['red']['epsg']}")
    footprint = Geometry(item["geometry"], crs="EPSG:4326")
    clipped = footprint & crop_box.to_crs("EPSG:4326", resolution=10_000.0)
    item["geometry"] = clipped.json
    item["bbox"] = list(clipped.boundingbox)
    edits.append("geometry and bbox: clipped to the crop window")
    return edits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="mapchete-eo tests/testdata/sentinel2/full_products folder")
    args = parser.parse_args()
    source: Path = args.source

    shutil.copy2(source / "catalog.json", HERE / "catalog.json")
    (HERE / COLLECTION).mkdir(exist_ok=True)
    shutil.copy2(source / COLLECTION / "collection.json", HERE / COLLECTION / "collection.json")

    for source_dir in sorted((source / COLLECTION).glob("*_33TWM_*")):
        item_id = source_dir.name
        target_dir = HERE / COLLECTION / item_id
        target_dir.mkdir(exist_ok=True)
        grids = {
            key: crop_to_cog(source_dir / file_name, target_dir / file_name)
            for key, file_name in LOCAL_ASSETS.items()
        }

        source_json = source_dir / f"{item_id}.json"
        if item_id == UNTOUCHED_ITEM:
            shutil.copy2(source_json, target_dir / f"{item_id}.untouched.json")

        item = json.loads(source_json.read_text())
        edits = rewrite_item(item, grids)
        (target_dir / f"{item_id}.json").write_text(json.dumps(item, indent=2) + "\n")
        print(item_id)
        for edit in edits:
            print(f"  {edit}")


if __name__ == "__main__":
    main()
