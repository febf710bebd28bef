"""Terrain derivatives of elevation models.

The official RAMEN model saw elevation as a DSM together with its slope (or with a DTM),
so a DEM modality that requests ``slope`` derives it here from the DSM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ramen_core.errors import InputError


def slope_degrees(dsm: Any, pixel_size: float | Sequence[float]) -> Any:
    """Compute the terrain slope in degrees from a surface model.

    ``slope = degrees(arctan(sqrt((dz/dx)^2 + (dz/dy)^2)))``, where the gradients come from
    ``numpy.gradient``: central differences inside the raster and one-sided differences on
    its edges, divided by the pixel size in metres. A NaN height makes the slope of its
    neighbours NaN.

    Args:
        dsm: heights in metres, shape ``[..., rows, cols]`` (numpy or dask).
        pixel_size: pixel size in metres, one number for square pixels or ``(x, y)``;
            the sign is ignored. The raster must be on a projected grid in metres, not in
            degrees.

    Returns:
        Float32 slope in degrees (0 flat, 90 vertical), same shape as ``dsm``.

    Raises:
        InputError: the pixel size is not positive, or the raster is smaller than 2x2.
    """
    if isinstance(pixel_size, (int, float)):
        size_x = size_y = float(pixel_size)
    else:
        size_x, size_y = (float(value) for value in pixel_size)
    size_x, size_y = abs(size_x), abs(size_y)
    if not (size_x > 0 and size_y > 0):
        raise InputError(f"pixel size {pixel_size!r} must be a positive number of metres")
    if dsm.ndim < 2 or dsm.shape[-1] < 2 or dsm.shape[-2] < 2:
        raise InputError(f"slope needs a raster of at least 2x2 pixels, got shape {tuple(dsm.shape)}")
    # NOTE: a pixel size of about 1e-4 to 1e-3 means a grid in degrees; the slope would
    # then come out near 90 degrees everywhere.
    heights = dsm.astype("float32")
    dz_dy, dz_dx = np.gradient(heights, size_y, size_x, axis=(-2, -1))
    return np.degrees(np.arctan(np.hypot(dz_dx, dz_dy))).astype("float32")
