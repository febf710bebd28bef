"""Write STAC items for the Luxembourg DEM and Sentinel-2 pair, and split the S2 file by band.

Run from anywhere: ``python tests/data/dem_samples/make_items.py``. It rewrites the item
JSON files and the single-band files next to this script; the two source GeoTIFFs stay as
copied. Hrefs are relative to this folder. PROVENANCE.md lists what is invented here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

HERE = Path(__file__).resolve().parent
DEM_FILE = "terra_elev_luxembourg.tif"
S2_FILE = "terra_sent2_L2A_2024-08-24_luxembourg.tif"

# Band descriptions of the S2 file -> Earth Search v1 asset key and centre wavelength (um).
S2_ASSETS = {"B02": ("blue", 0.49), "B03": ("green", 0.56), "B04": ("red", 0.665), "B08": ("nir", 0.842)}

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"


def grid_metadata(path: Path) -> dict[str, Any]:
    """Projection fields (extension v2) and footprint of one raster."""
    with rasterio.open(path) as dataset:
        transform = dataset.transform
        left, bottom, right, top = dataset.bounds
        return {
            "proj:code": f"EPSG:{dataset.crs.to_epsg()}",
            "proj:shape": [dataset.height, dataset.width],
            "proj:transform": list(transform)[:6],
            "bbox": [left, bottom, right, top],
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]],
            },
        }


def item(item_id: str, collection: str, datetime: str, grid: dict[str, Any], assets: dict, extra: dict) -> dict:
    """Assemble one item dictionary."""
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [PROJECTION, RASTER, EO],
        "id": item_id,
        "collection": collection,
        "geometry": grid["geometry"],
        "bbox": grid["bbox"],
        "properties": {
            "datetime": datetime,
            "proj:code": grid["proj:code"],
            "proj:shape": grid["proj:shape"],
            "proj:transform": grid["proj:transform"],
            **extra,
        },
        "links": [],
        "assets": assets,
    }


def split_s2_bands() -> dict[str, Any]:
    """Write one GeoTIFF per band of the S2 file and return their assets."""
    assets: dict[str, Any] = {}
    with rasterio.open(HERE / S2_FILE) as source:
        profile = {**source.profile, "count": 1, "compress": "deflate", "predictor": 3}
        for index, name in enumerate(source.descriptions, start=1):
            key, wavelength = S2_ASSETS[name]
            target = f"terra_sent2_luxembourg_{name}.tif"
            pixels = source.read(index)
            with rasterio.open(HERE / target, "w", **profile) as dataset:
                dataset.write(pixels, 1)
                dataset.set_band_description(1, name)
            with rasterio.open(HERE / target) as written:
                if not np.array_equal(written.read(1), pixels, equal_nan=True):
                    raise SystemExit(f"{target}: written pixels differ from band {name} of {S2_FILE}")
            assets[key] = {
                "href": f"./{target}",
                "type": "image/tiff; application=geotiff",
                "roles": ["data", "reflectance"],
                "eo:bands": [{"name": name, "common_name": key, "center_wavelength": wavelength}],
                "raster:bands": [{"nodata": "nan", "data_type": "float32", "scale": 0.0001, "offset": -0.1}],
            }
    return assets


def main() -> None:
    dem_grid = grid_metadata(HERE / DEM_FILE)
    dem_item = item(
        "terra-elev-luxembourg",
        "cop-dem-glo-30",
        "2021-04-22T00:00:00Z",
        dem_grid,
        {
            "data": {
                "href": f"./{DEM_FILE}",
                "type": "image/tiff; application=geotiff",
                "roles": ["data"],
                "raster:bands": [{"nodata": -32768, "data_type": "int16", "unit": "metre"}],
            }
        },
        {},
    )
    s2_item = item(
        "terra-sent2-luxembourg-20240824",
        "sentinel-2-l2a",
        "2024-08-24T10:30:00Z",
        grid_metadata(HERE / S2_FILE),
        split_s2_bands(),
        {"platform": "sentinel-2", "constellation": "sentinel-2"},
    )
    for document in (dem_item, s2_item):
        (HERE / f"{document['id']}.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {document['id']}.json")


if __name__ == "__main__":
    main()
