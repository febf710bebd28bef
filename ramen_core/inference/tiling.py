"""Target grids, windows and tiles.

The target grid is the area's bounds in the output CRS, snapped outward to whole multiples
of the GSD, so that output pixel (0, 0) starts exactly at the snapped origin. Windows of
N×N pixels with an overlap cover the grid in row-major order; the last row and column of
windows end flush with the grid, and a grid smaller than one window gets one window of
its own size. Tiles are larger rectangles of the grid: each tile is produced from every
window that touches it, so a tile's pixels get the same blended values whichever tiling
is used, and tiles can run on different machines.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from affine import Affine
from rasterio.crs import CRS

from ramen_core.errors import InputError

# Bounds closer than this to a multiple of the GSD (in CRS units, metres) snap to it, so that
# float round-off never adds a whole pixel row.
SNAP_TOLERANCE_M = 1e-6


@dataclass(frozen=True)
class PixelRect:
    """A rectangle of the target grid, in pixels of that grid.

    Attributes:
        index: position in its row-major plan.
        row: first row.
        col: first column.
        height: number of rows.
        width: number of columns.
    """

    index: int
    row: int
    col: int
    height: int
    width: int

    @property
    def row_end(self) -> int:
        return self.row + self.height

    @property
    def col_end(self) -> int:
        return self.col + self.width

    def intersects(self, other: PixelRect) -> bool:
        """Return whether the two rectangles share at least one pixel."""
        return self.row < other.row_end and other.row < self.row_end and self.col < other.col_end and other.col < self.col_end

    def contains(self, row: int, col: int) -> bool:
        """Return whether pixel (row, col) of the grid lies in this rectangle."""
        return self.row <= row < self.row_end and self.col <= col < self.col_end


@dataclass(frozen=True)
class Window(PixelRect):
    """A window: the pixels that one model call encodes together."""


@dataclass(frozen=True)
class Tile(PixelRect):
    """A rectangle of the grid that is produced, and written, as one unit."""


@dataclass(frozen=True)
class TargetGrid:
    """The output pixel grid: CRS, transform and size.

    Attributes:
        crs: output CRS, projected in metres.
        transform: affine transform of pixel (0, 0); pixels are square, ``transform.a`` metres.
        width: number of columns.
        height: number of rows.
    """

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def gsd(self) -> float:
        """Pixel size in metres."""
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the output CRS."""
        left, top = self.transform.c, self.transform.f
        return (left, top - self.height * self.gsd, left + self.width * self.gsd, top)

    def rect_transform(self, row: int, col: int) -> Affine:
        """Transform of a rectangle whose top-left pixel is (row, col)."""
        return self.transform @ Affine.translation(col, row)

    def rect_bounds(self, row: int, col: int, height: int, width: int) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of a rectangle of pixels."""
        left = self.transform.c + col * self.gsd
        top = self.transform.f - row * self.gsd
        return (left, top - height * self.gsd, left + width * self.gsd, top)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON description, for progress records and Dask tasks."""
        return {
            "crs": self.crs.to_wkt(),
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetGrid:
        return cls(CRS.from_wkt(data["crs"]), Affine(*data["transform"]), int(data["width"]), int(data["height"]))


def snap_grid(bounds: Sequence[float], crs: CRS, gsd: float) -> TargetGrid:
    """Snap bounds outward to whole multiples of ``gsd`` and return the pixel grid.

    Args:
        bounds: (left, bottom, right, top) of the area in ``crs``.
        crs: output CRS, projected in metres.
        gsd: pixel size in metres.

    Raises:
        InputError: the GSD is not positive, or the area is smaller than one pixel in
            width or height (a GSD so coarse that the area holds no token).
    """
    if not (isinstance(gsd, (int, float)) and math.isfinite(gsd) and gsd > 0):
        raise InputError(f"GSD must be a positive number of metres, got {gsd!r}")
    left, bottom, right, top = (float(value) for value in bounds)
    extent_x, extent_y = right - left, top - bottom
    if extent_x < gsd or extent_y < gsd:
        raise InputError(
            f"the area is {extent_x:.1f} m x {extent_y:.1f} m, smaller than one token at GSD {gsd:g} m, "
            f"so it holds no token; use a GSD of at most {min(extent_x, extent_y):.4g} m or a larger area"
        )
    tolerance = SNAP_TOLERANCE_M / gsd
    col0 = math.floor(left / gsd + tolerance)
    col1 = math.ceil(right / gsd - tolerance)
    row0 = math.floor(bottom / gsd + tolerance)
    row1 = math.ceil(top / gsd - tolerance)
    transform = Affine(gsd, 0.0, col0 * gsd, 0.0, -gsd, row1 * gsd)
    return TargetGrid(crs=crs, transform=transform, width=col1 - col0, height=row1 - row0)


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of windows of ``size`` pixels with ``stride`` covering ``length`` pixels.

    The last window ends flush with the grid, so it may overlap its neighbour by more than
    the others do. A grid shorter than one window gets a single window at 0.
    """
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    starts.append(length - size)
    return starts


@dataclass(frozen=True)
class WindowPlan:
    """Windows and tiles over a target grid.

    Windows are numbered row-major: window ``i`` starts at row ``row_starts[i // n]`` and
    column ``col_starts[i % n]`` with ``n = len(col_starts)``. They are computed on demand,
    so a plan of a very large area stays small in memory.

    Attributes:
        grid: the target grid.
        size: requested window side in pixels (tokens); windows are smaller only when the
            grid is.
        overlap: pixels shared by neighbouring windows.
        row_starts: first row of each row of windows.
        col_starts: first column of each column of windows.
        tiles: every tile, row-major.
    """

    grid: TargetGrid
    size: int
    overlap: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]
    tiles: tuple[Tile, ...]

    @property
    def window_shape(self) -> tuple[int, int]:
        """(height, width) of every window."""
        return (min(self.size, self.grid.height), min(self.size, self.grid.width))

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def window(self, index: int) -> Window:
        """Return the window with plan index ``index``."""
        row_index, col_index = divmod(index, len(self.col_starts))
        height, width = self.window_shape
        return Window(index, self.row_starts[row_index], self.col_starts[col_index], height, width)

    def windows_for(self, tile: Tile) -> list[Window]:
        """Windows that touch ``tile``, in plan order."""
        height, width = self.window_shape
        rows = _touching(self.row_starts, height, tile.row, tile.row_end)
        cols = _touching(self.col_starts, width, tile.col, tile.col_end)
        count = len(self.col_starts)
        return [self.window(row_index * count + col_index) for row_index in rows for col_index in cols]

    def owner_tile(self, window: Window) -> Tile:
        """Return the tile that contains the window's centre pixel, the only tile that reports per-window results."""
        row = window.row + window.height // 2
        col = window.col + window.width // 2
        for tile in self.tiles:
            if tile.contains(row, col):
                return tile
        raise AssertionError(f"window {window} lies outside every tile")  # the tiles cover the grid

    def fingerprint(self) -> dict[str, Any]:
        """Plain-JSON description that changes whenever the plan does."""
        return {
            "grid": self.grid.to_dict(),
            "size": self.size,
            "overlap": self.overlap,
            "tiles": [[tile.row, tile.col, tile.height, tile.width] for tile in self.tiles],
        }


def _touching(starts: Sequence[int], length: int, begin: int, end: int) -> range:
    """Indices of the windows (sorted ``starts``, ``length`` pixels each) that overlap [begin, end)."""
    first = bisect.bisect_right(starts, begin - length)
    last = bisect.bisect_left(starts, end)
    return range(first, last)


def plan_windows(
    grid: TargetGrid,
    size: int,
    overlap: int,
    tile_height: int | None = None,
    tile_width: int | None = None,
) -> WindowPlan:
    """Cover the grid with windows of ``size`` × ``size`` pixels and group it into tiles.

    Args:
        grid: the target grid.
        size: window side in pixels; at least 1.
        overlap: pixels shared by neighbouring windows, from 0 to ``size - 1``.
        tile_height: tile height in pixels; None gives one tile row over the whole grid.
        tile_width: tile width in pixels; None gives one tile column.

    Raises:
        InputError: an invalid size, overlap or tile size.
    """
    if not (isinstance(size, int) and size >= 1):
        raise InputError(f"window size must be a positive number of tokens, got {size!r}")
    if not (isinstance(overlap, int) and 0 <= overlap < size):
        raise InputError(f"window overlap must be between 0 and {size - 1} tokens (window size - 1), got {overlap!r}")
    stride = size - overlap
    row_starts = tuple(window_starts(grid.height, size, stride))
    col_starts = tuple(window_starts(grid.width, size, stride))

    tile_height = grid.height if tile_height is None else tile_height
    tile_width = grid.width if tile_width is None else tile_width
    if tile_height < 1 or tile_width < 1:
        raise InputError(f"tile size must be at least 1 pixel, got {tile_height} x {tile_width}")
    tiles = []
    for row in range(0, grid.height, tile_height):
        for col in range(0, grid.width, tile_width):
            tiles.append(
                Tile(len(tiles), row, col, min(tile_height, grid.height - row), min(tile_width, grid.width - col))
            )
    return WindowPlan(grid, size, overlap, row_starts, col_starts, tuple(tiles))
