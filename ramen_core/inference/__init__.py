"""Window-by-window inference over large areas, shared by ``embed`` and ``segment``.

- :mod:`.tiling`: the target grid snapped to the GSD, windows with overlap, tiles;
- :mod:`.blending`: smooth window weights and the row-streaming blender;
- :mod:`.sources`, :mod:`.cube_source`: inputs read window by window onto the grid;
- :mod:`.normalization`: per-band statistics (registry, global pass, file);
- :mod:`.writer`: raw GeoTIFF streaming, atomic COG conversion, tile folders with STAC;
- :mod:`.progress`: progress updates and resumable progress records;
- :mod:`.run`: the engine that ties them together, locally or on a Dask cluster;
- :mod:`.plan`: token, FLOP, memory and output-size estimates;
- :mod:`.device`: device and precision choices.
"""

from ramen_core.inference.blending import StripBlender, window_weights
from ramen_core.inference.progress import ProgressCallback, ProgressUpdate
from ramen_core.inference.run import BatchResult, ExtrasStore, RunReport, TaskFactory, WindowTask, run_plan, run_tile
from ramen_core.inference.tiling import TargetGrid, Tile, Window, WindowPlan, plan_windows, snap_grid
from ramen_core.inference.writer import CogSink, CogTileFolderSink, OutputSink, RasterMetadata

__all__ = [
    "BatchResult",
    "CogSink",
    "CogTileFolderSink",
    "ExtrasStore",
    "OutputSink",
    "ProgressCallback",
    "ProgressUpdate",
    "RasterMetadata",
    "RunReport",
    "StripBlender",
    "TargetGrid",
    "TaskFactory",
    "Tile",
    "Window",
    "WindowPlan",
    "WindowTask",
    "plan_windows",
    "run_plan",
    "run_tile",
    "snap_grid",
    "window_weights",
]
