"""Cut the Spain chip into labelled GeoTIFF tiles: training on the left, validation on the right.

Usage: python tests/data/sen1floods11/cut_tiles.py OUT [SIZE]

Writes OUT/{train,val}/{S1Hand,S2Hand,LabelHand}/rRRRcCCC_<kind>.tif. Tiles whose first column
is below 3/4 of the width go to ``train``, the others to ``val``, so the validation tiles
are a spatially held-out strip of the scene.
"""

from __future__ import annotations

import sys
from pathlib import Path

import rasterio
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
KINDS = ("S1Hand", "S2Hand", "LabelHand")


def cut_tiles(out: Path, size: int = 128) -> Path:
    """Write the tiles under ``out`` and return it."""
    for kind in KINDS:
        with rasterio.open(HERE / f"Spain_7370579_{kind}.tif") as source:
            split_col = source.width * 3 // 4
            for row in range(0, source.height - size + 1, size):
                for col in range(0, source.width - size + 1, size):
                    split = "train" if col < split_col else "val"
                    window = Window(col, row, size, size)
                    profile = source.profile.copy()
                    profile.update(width=size, height=size, transform=source.window_transform(window))
                    path = out / split / kind / f"r{row:03d}c{col:03d}_{kind}.tif"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with rasterio.open(path, "w", **profile) as target:
                        target.write(source.read(window=window))
                        target.descriptions = source.descriptions
    return out


if __name__ == "__main__":
    cut_tiles(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 128)
