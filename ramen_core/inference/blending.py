"""Blending of overlapping window outputs with smooth weights.

Each window's output is multiplied by a weight that ramps up from near zero at the window's
edges to one over ``overlap`` pixels (a squared-sine ramp, separable in rows and columns).
Weighted outputs and weights are summed per pixel and divided at the end, so overlapping
windows fade into each other and no seam shows. Pixels that only one window covers get that
window's output unchanged, whatever its weight.

:class:`StripBlender` keeps those sums for a band of rows only: rows that no later window
touches are normalised and handed out, so memory grows with the tile width, not with the
scene height.
"""

from __future__ import annotations

import math

import numpy as np


def ramp(length: int, overlap: int) -> np.ndarray:
    """1-D blending weights of a window side: a squared-sine ramp over ``overlap`` pixels at each end.

    Every weight is above zero, so the pixels at the grid's edges, which one window alone
    covers, keep a weight.
    """
    weights = np.ones(length, dtype=np.float64)
    if overlap > 0:
        position = np.arange(length, dtype=np.float64) + 0.5
        distance = np.minimum(position, length - position)  # from the nearest edge, in pixels
        inside = distance < overlap
        weights[inside] = np.sin(0.5 * math.pi * distance[inside] / overlap) ** 2
    return weights.astype(np.float32)


def window_weights(height: int, width: int, overlap: int) -> np.ndarray:
    """2-D blending weights [height, width] of a window: the outer product of two ramps."""
    return np.outer(ramp(height, overlap), ramp(width, overlap)).astype(np.float32)


class StripBlender:
    """Weighted sums of window outputs over a band of rows of one tile.

    Output channels are split into ``groups`` equal groups with their own validity, so that
    one modality's channels can be nodata where another's are valid (concatenated outputs).

    Args:
        channels: output channels C.
        groups: validity groups G; C must be a multiple of G.
        tile_row: first row of the tile in the grid.
        tile_col: first column of the tile in the grid.
        tile_height: rows of the tile.
        tile_width: columns of the tile.
    """

    def __init__(self, channels: int, groups: int, tile_row: int, tile_col: int, tile_height: int, tile_width: int) -> None:
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        self.channels = channels
        self.groups = groups
        self.tile_row = tile_row
        self.tile_col = tile_col
        self.tile_row_end = tile_row + tile_height
        self.width = tile_width
        self.top = tile_row  # first row not yet handed out
        self.sums = np.zeros((channels, 0, tile_width), dtype=np.float32)
        self.weights = np.zeros((groups, 0, tile_width), dtype=np.float32)

    @property
    def rows_held(self) -> int:
        return self.sums.shape[1]

    def _reserve(self, rows: int) -> None:
        """Make the buffers hold at least ``rows`` rows from ``top``."""
        if rows <= self.rows_held:
            return
        extra = max(rows - self.rows_held, self.rows_held)  # grow geometrically
        self.sums = np.concatenate([self.sums, np.zeros((self.channels, extra, self.width), np.float32)], axis=1)
        self.weights = np.concatenate([self.weights, np.zeros((self.groups, extra, self.width), np.float32)], axis=1)

    def add(self, row: int, col: int, values: np.ndarray, weights: np.ndarray, valid: np.ndarray) -> None:
        """Add one window's output.

        Args:
            row: grid row of the window's first row.
            col: grid column of the window's first column.
            values: [C, h, w] float32 output of the window.
            weights: [h, w] blending weights of the window.
            valid: [G, h, w] bool, False where a group of channels has no valid output.
        """
        h, w = weights.shape
        if row < self.top and self.top > self.tile_row:
            raise ValueError(f"window at row {row} reaches rows already handed out (before row {self.top})")
        # Clip the window to the tile.
        r0 = max(row, self.top)
        r1 = min(row + h, self.tile_row_end)
        c0 = max(col, self.tile_col)
        c1 = min(col + w, self.tile_col + self.width)
        if r0 >= r1 or c0 >= c1:
            return
        window_rows = slice(r0 - row, r1 - row)
        window_cols = slice(c0 - col, c1 - col)
        self._reserve(r1 - self.top)
        band_rows = slice(r0 - self.top, r1 - self.top)
        band_cols = slice(c0 - self.tile_col, c1 - self.tile_col)

        group_weights = weights[None, window_rows, window_cols] * valid[:, window_rows, window_cols]  # [G, h, w]
        per_group = self.channels // self.groups
        weighted = values[:, window_rows, window_cols].reshape(self.groups, per_group, r1 - r0, c1 - c0)
        weighted = weighted * group_weights[:, None]
        self.sums[:, band_rows, band_cols] += weighted.reshape(self.channels, r1 - r0, c1 - c0)
        self.weights[:, band_rows, band_cols] += group_weights

    def pop(self, until_row: int) -> tuple[int, np.ndarray]:
        """Hand out the finished rows ``[top, until_row)``, normalised, and drop them.

        Returns:
            The first row handed out and a float32 array [C, rows, tile width] with NaN where
            a group had no valid output. ``rows`` may be 0.
        """
        until_row = min(until_row, self.tile_row_end)
        count = max(0, until_row - self.top)
        first = self.top
        self._reserve(count)
        sums = self.sums[:, :count]
        weights = self.weights[:, :count]
        per_group = self.channels // self.groups
        with np.errstate(invalid="ignore", divide="ignore"):
            out = sums.reshape(self.groups, per_group, count, self.width) / weights[:, None]
        out = np.where(weights[:, None] > 0, out, np.float32(np.nan)).reshape(self.channels, count, self.width)
        self.sums = self.sums[:, count:].copy()
        self.weights = self.weights[:, count:].copy()
        self.top += count
        return first, out.astype(np.float32, copy=False)

    def state(self) -> dict[str, np.ndarray]:
        """The rows still held and their position, for a progress record."""
        return {"top": np.array(self.top), "sums": self.sums, "weights": self.weights}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned."""
        self.top = int(state["top"])
        self.sums = np.array(state["sums"], dtype=np.float32)
        self.weights = np.array(state["weights"], dtype=np.float32)
