"""Per-window pooled embeddings as GeoParquet: one row per window, for similarity search."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ramen_core.errors import EmptyResultError
from ramen_core.inference.tiling import WindowPlan
from ramen_core.inference.writer import output_errors, remove_path

logger = logging.getLogger(__name__)


def write_vectors(path: Path, plan: WindowPlan, results: Mapping[str, np.ndarray], pooling: str, tags: Mapping[str, str]) -> int:
    """Write one GeoParquet row per window with valid pixels, atomically.

    Columns: ``window`` (plan index), ``row`` and ``col`` (first output pixel),
    ``valid_fraction`` (share of the window's pixels with a valid input), ``embedding``
    (list of float32, the window's tokens pooled by ``pooling``) and ``geometry`` (the
    window's footprint in the output CRS).

    Returns:
        The number of rows written.

    Raises:
        EmptyResultError: no window had valid input.
    """
    import geopandas as gpd
    from shapely.geometry import box

    if not results or len(results.get("window", ())) == 0:
        raise EmptyResultError("no window had valid input, so there are no vectors to write")
    windows = [plan.window(int(index)) for index in results["window"]]
    geometry = [box(*plan.grid.rect_bounds(w.row, w.col, w.height, w.width)) for w in windows]
    frame = gpd.GeoDataFrame(
        {
            "window": results["window"].astype(np.int64),
            "row": np.array([w.row for w in windows], dtype=np.int64),
            "col": np.array([w.col for w in windows], dtype=np.int64),
            "valid_fraction": results["valid_fraction"].astype(np.float32),
            "embedding": list(results["vector"].astype(np.float32)),
        },
        geometry=geometry,
        crs=plan.grid.crs.to_wkt(),
    )
    temporary = path.with_name(f".{path.name}.ramen-tmp")
    try:
        with output_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(temporary, index=False, schema_version="1.0.0")
            _add_metadata(temporary, {"ramen:pooling": pooling, **{f"ramen:{key.lower()}": value for key, value in tags.items()}})
            os.replace(temporary, path)
    finally:
        if temporary.exists():
            remove_path(temporary)
    logger.info("wrote %d window vectors to %s", len(frame), path)
    return len(frame)


def _add_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Add key-value metadata to a Parquet file's schema, keeping the GeoParquet ``geo`` entry."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    merged = dict(table.schema.metadata or {})
    merged.update({key.encode(): str(value).encode() for key, value in metadata.items()})
    pq.write_table(table.replace_schema_metadata(merged), path)
