"""A PCA false-colour quicklook of an embedding raster.

The first three principal components of the embeddings become red, green and blue. The
raster is read decimated (through its COG overviews) to at most ``max_side`` pixels a
side, so memory stays small whatever the raster's size; the PCA is fitted on at most
``max_samples`` valid pixels. Each component is stretched between its 2nd and 98th
percentiles. Nodata pixels are transparent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from ramen_core.errors import EmptyResultError
from ramen_core.inference.writer import output_errors, remove_path

logger = logging.getLogger(__name__)


def read_decimated(paths: Sequence[Path], max_side: int = 1024) -> np.ndarray:
    """Read one raster, or a mosaic of tiles of one grid, decimated to [C, h, w] float32."""
    with rasterio.open(paths[0]) as first:
        transform, crs, count = first.transform, first.crs, first.count
    bounds = []
    for path in paths:
        with rasterio.open(path) as dataset:
            bounds.append(dataset.bounds)
    left = min(b.left for b in bounds)
    top = max(b.top for b in bounds)
    right = max(b.right for b in bounds)
    bottom = min(b.bottom for b in bounds)
    size = abs(transform.a)
    width, height = round((right - left) / size), round((top - bottom) / size)
    factor = max(1.0, max(width, height) / max_side)
    out_w, out_h = max(1, int(width / factor)), max(1, int(height / factor))
    canvas = np.full((count, out_h, out_w), np.nan, dtype=np.float32)
    for path in paths:
        with rasterio.open(path) as dataset:
            if dataset.crs != crs:
                continue
            b = dataset.bounds
            c0 = int((b.left - left) / size / factor)
            r0 = int((top - b.top) / size / factor)
            c1 = min(out_w, max(c0 + 1, int(round((b.right - left) / size / factor))))
            r1 = min(out_h, max(r0 + 1, int(round((top - b.bottom) / size / factor))))
            block = dataset.read(out_shape=(count, r1 - r0, c1 - c0), masked=True, resampling=rasterio.enums.Resampling.average)
            canvas[:, r0:r1, c0:c1] = block.astype(np.float32).filled(np.nan)
    return canvas


def pca_rgb(values: np.ndarray, max_samples: int = 20000, seed: int = 0) -> np.ndarray:
    """Project [C, h, w] embeddings on their first three principal components as RGBA uint8.

    Raises:
        EmptyResultError: no pixel is valid.
    """
    channels, height, width = values.shape
    pixels = values.reshape(channels, -1).T
    valid = np.isfinite(pixels).all(axis=1)
    if not valid.any():
        raise EmptyResultError("the embedding raster has no valid pixel to preview")
    samples = pixels[valid]
    if samples.shape[0] > max_samples:
        rng = np.random.default_rng(seed)
        samples = samples[rng.choice(samples.shape[0], max_samples, replace=False)]
    mean = samples.mean(axis=0)
    _, _, components = np.linalg.svd(samples - mean, full_matrices=False)
    components = components[:3]
    # Fix each component's sign (largest loading positive) so previews are reproducible.
    signs = np.sign(components[np.arange(components.shape[0]), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    projected = np.zeros((pixels.shape[0], 3), dtype=np.float32)
    projected[valid, : components.shape[0]] = (pixels[valid] - mean) @ components.T
    rgba = np.zeros((pixels.shape[0], 4), dtype=np.uint8)
    for channel in range(components.shape[0]):
        low, high = np.percentile(projected[valid, channel], [2, 98])
        scaled = (projected[valid, channel] - low) / (high - low) if high > low else np.full(valid.sum(), 0.5)
        rgba[valid, channel] = np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)
    rgba[valid, 3] = 255
    return rgba.reshape(height, width, 4)


def write_preview(rasters: Sequence[Path], path: Path, max_side: int = 1024) -> None:
    """Write the PCA quicklook of an embedding raster (or its tiles) as a PNG, atomically."""
    import matplotlib.image

    image = pca_rgb(read_decimated(list(rasters), max_side))
    temporary = path.with_name(f".{path.name}.ramen-tmp.png")
    try:
        with output_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            matplotlib.image.imsave(temporary, image, format="png")
            os.replace(temporary, path)
    finally:
        if temporary.exists():
            remove_path(temporary)
    logger.info("wrote preview %s (%d x %d)", path, image.shape[1], image.shape[0])
