"""Embeddings of whole areas at a chosen GSD: the library side of ``ramen embed``.

:func:`embed` reads local rasters (:class:`FileInput`) or a catalog search
(:class:`CatalogQuery`), runs the encoder window by window and writes a Cloud-Optimized
GeoTIFF; :func:`plan_embedding` reports the grid, windows and cost estimates without
running.
"""

from ramen_core.embedding.api import DEFAULT_BATCH_SIZE, DEFAULT_WINDOW, EmbedPlan, EmbedResult, embed, plan_embedding
from ramen_core.embedding.inputs import CatalogQuery, FileInput
from ramen_core.embedding.task import FUSE_MODES, POOLING_MODES, EmbeddingTask, EmbeddingTaskFactory

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_WINDOW",
    "FUSE_MODES",
    "POOLING_MODES",
    "CatalogQuery",
    "EmbedPlan",
    "EmbedResult",
    "EmbeddingTask",
    "EmbeddingTaskFactory",
    "FileInput",
    "embed",
    "plan_embedding",
]
