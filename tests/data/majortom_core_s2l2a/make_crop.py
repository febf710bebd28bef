"""Crop the Major TOM cell 199U_1099R to 384 x 384 pixels at 10 m (3.84 km), every band.

Run from the repository root with the shared data at ../shared/data (or pass its folder):

    python tests/data/majortom_core_s2l2a/make_crop.py /work/shared/data/majortom_core_s2l2a

The crop starts 342 pixels (3420 m) right and down from the cell's top-left corner, a
multiple of 60 m, so every band (10, 20 and 60 m) is cut on its own pixel edges and keeps
its native resolution. Pixel values, data type and CRS are unchanged; files are written
tiled and LZW-compressed like the originals.
"""

from __future__ import annotations

import sys
from pathlib import Path

import rasterio
from rasterio.windows import Window

PRODUCT = "S2L2A/199U/199U_1099R/S2B_MSIL2A_20200223T032739_N9999_R018_T48QUE_20230924T183543"
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
OFFSET_M = 3420.0
SIZE_M = 3840.0


def main(source_root: Path) -> None:
    target = Path(__file__).parent / "S2L2A_crop"
    target.mkdir(exist_ok=True)
    for band in BANDS:
        with rasterio.open(source_root / PRODUCT / f"{band}.tif") as source:
            pixel = source.transform.a
            window = Window(OFFSET_M / pixel, OFFSET_M / pixel, SIZE_M / pixel, SIZE_M / pixel)
            profile = source.profile
            size = int(SIZE_M / pixel)
            block = 256 if size >= 256 else 16 * max(1, size // 16)
            profile.update(
                width=size, height=size, transform=source.window_transform(window),
                compress="lzw", tiled=True, blockxsize=block, blockysize=block,
            )
            data = source.read(window=window)
        with rasterio.open(target / f"{band}.tif", "w", **profile) as destination:
            destination.write(data)
        print(f"{band}: {size} x {size} px of {pixel:g} m")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/majortom_core_s2l2a"))
