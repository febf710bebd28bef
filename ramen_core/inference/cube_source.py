"""A modality read window by window from a lazy cube (:mod:`ramen_core.cube`).

The cube stays Dask-backed: each window computes only the Dask blocks it touches, and the
blocks of the current row of windows are kept in a small cache, so neighbouring windows
do not load them twice. The window's part of the cube is then warped onto the window's
grid at ``GSD_target / p`` (see :mod:`.sources`); when the cube's grid already lines up
with it, that is a plain copy.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import dask
import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds

from ramen_core.bands import BandSpec
from ramen_core.cube import SensorCube
from ramen_core.errors import InputError
from ramen_core.inference.sources import ReadResult, pixels_per_token
from ramen_core.inference.tiling import TargetGrid
from ramen_core.sensors import Sensor, get_sensor

logger = logging.getLogger(__name__)


@dataclass
class CubeModality:
    """One modality whose pixels come from a :class:`~ramen_core.cube.SensorCube`.

    Attributes:
        name: modality label (the cube key, such as ``sentinel-2-l2a`` or ``s1:asc``).
        cube: the lazy cube, in the output CRS.
        cache_blocks: Dask blocks (all dates and bands of one spatial chunk) kept in memory.
    """

    name: str
    cube: SensorCube
    cache_blocks: int = 16
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    @property
    def sensor(self) -> Sensor:
        return get_sensor(self.cube.sensor)

    @property
    def bands(self) -> list[str]:
        return list(self.cube.band_names)

    @property
    def gsd(self) -> float:
        return float(self.cube.gsd)

    @property
    def dates(self) -> list[date | None]:
        return list(self.cube.dates)

    @property
    def ids(self) -> list[str]:
        return sorted({item for ids in self.cube.item_ids for item in ids})

    @property
    def scalings_record(self) -> list[dict[str, Any]]:
        return list(self.cube.scaling)

    def band_specs(self) -> list[BandSpec]:
        return list(self.cube.bands)

    def footprint(self, crs: CRS) -> tuple[float, float, float, float]:
        bounds = self.cube.geobox.boundingbox
        return transform_bounds(CRS.from_user_input(self.cube.crs.to_wkt()), crs, *bounds, densify_pts=21)

    def describe(self) -> dict[str, Any]:
        return {
            "sensor": self.cube.sensor,
            "bands": self.bands,
            "gsd": self.gsd,
            "orbit": self.cube.orbit,
            "dates": [day.isoformat() for day in self.cube.dates],
            "items": [list(ids) for ids in self.cube.item_ids],
        }

    def close(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------ reading
    def _block(self, row_block: int, col_block: int) -> tuple[np.ndarray, np.ndarray]:
        """Data [T, C, h, w] and valid [T, h, w] of one spatial chunk, cached."""
        key = (row_block, col_block)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        data = self.cube.data.data
        valid = self.cube.valid.data
        row_chunks, col_chunks = data.chunks[2], data.chunks[3]
        r0 = sum(row_chunks[:row_block])
        c0 = sum(col_chunks[:col_block])
        rows = slice(r0, r0 + row_chunks[row_block])
        cols = slice(c0, c0 + col_chunks[col_block])
        # NOTE: the threaded scheduler is named explicitly: inside a Dask worker the default
        # would submit these tasks to the cluster from within a task.
        block = dask.compute(data[:, :, rows, cols], valid[:, rows, cols], scheduler="threads")
        self._cache[key] = block
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return block

    def _region(self, row0: int, row1: int, col0: int, col1: int) -> tuple[np.ndarray, np.ndarray]:
        """Cube pixels [row0, row1) x [col0, col1), NaN / invalid outside the cube."""
        t, c, height, width = self.cube.data.shape
        data = np.full((t, c, row1 - row0, col1 - col0), np.nan, dtype=np.float32)
        valid = np.zeros((t, row1 - row0, col1 - col0), dtype=bool)
        row_edges = np.cumsum((0,) + self.cube.data.data.chunks[2])
        col_edges = np.cumsum((0,) + self.cube.data.data.chunks[3])
        for row_block in range(len(row_edges) - 1):
            top, bottom = max(row0, row_edges[row_block]), min(row1, row_edges[row_block + 1])
            if top >= bottom:
                continue
            for col_block in range(len(col_edges) - 1):
                left, right = max(col0, col_edges[col_block]), min(col1, col_edges[col_block + 1])
                if left >= right:
                    continue
                block_data, block_valid = self._block(row_block, col_block)
                source_rows = slice(top - row_edges[row_block], bottom - row_edges[row_block])
                source_cols = slice(left - col_edges[col_block], right - col_edges[col_block])
                data[:, :, top - row0 : bottom - row0, left - col0 : right - col0] = block_data[:, :, source_rows, source_cols]
                valid[:, top - row0 : bottom - row0, left - col0 : right - col0] = block_valid[:, source_rows, source_cols]
        return data, valid

    def read_window(self, grid: TargetGrid, row: int, col: int, height: int, width: int) -> ReadResult:
        """Read the window (rows, columns of the target grid) at ``GSD_target / p``."""
        if CRS.from_user_input(self.cube.crs.to_wkt()) != grid.crs:
            raise InputError(f"cube {self.name} is in {self.cube.crs}, not in the output CRS {grid.crs}")
        pixel = pixels_per_token(self.gsd, grid.gsd)
        size = grid.gsd / pixel
        h, w = height * pixel, width * pixel
        left, _, _, top = grid.rect_bounds(row, col, height, width)
        inverse = ~self.cube.transform
        col_f, row_f = inverse @ (left, top)
        scale = size / self.gsd

        aligned = abs(scale - 1.0) < 1e-9 and abs(col_f - round(col_f)) < 1e-6 and abs(row_f - round(row_f)) < 1e-6
        if aligned:
            r0, c0 = int(round(row_f)), int(round(col_f))
            data, valid = self._region(r0, r0 + h, c0, c0 + w)
            return ReadResult(data=data, valid=valid & np.isfinite(data).all(axis=1))

        # Read the covering region with a one-pixel margin, then warp it onto the window grid.
        r0 = int(math.floor(row_f)) - 1
        c0 = int(math.floor(col_f)) - 1
        r1 = int(math.ceil(row_f + h * scale)) + 1
        c1 = int(math.ceil(col_f + w * scale)) + 1
        region, region_valid = self._region(r0, r1, c0, c1)
        source_transform = self.cube.transform @ Affine.translation(c0, r0)
        target_transform = Affine(size, 0.0, left, 0.0, -size, top)
        t, c = region.shape[:2]
        data = np.full((t, c, h, w), np.nan, dtype=np.float32)
        valid = np.zeros((t, h, w), dtype=np.uint8)
        for index in range(t):
            reproject(region[index], data[index], src_transform=source_transform, src_crs=grid.crs,
                      dst_transform=target_transform, dst_crs=grid.crs, src_nodata=np.nan, dst_nodata=np.nan,
                      resampling=Resampling.bilinear)
            reproject(region_valid[index].astype(np.uint8), valid[index], src_transform=source_transform,
                      src_crs=grid.crs, dst_transform=target_transform, dst_crs=grid.crs,
                      resampling=Resampling.nearest)
        mask = valid.astype(bool) & np.isfinite(data).all(axis=1)
        return ReadResult(data=data, valid=mask)
