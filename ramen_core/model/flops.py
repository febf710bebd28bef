"""Analytic cost estimates of one encoder forward pass.

Counts are FLOPs with a multiply-add counted as **two** FLOPs. Only matrix products,
convolutions, attention and interpolation are counted; normalisations, activations and
softmax are left out (a few per cent at ViT-Base sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ramen_core.model.config import RamenConfig
from ramen_core.model.encoder import grid_shape


@dataclass(frozen=True)
class ModalityShape:
    """Shape of one modality: dates, channels, rows and columns at its native GSD (metres)."""

    dates: int
    channels: int
    height: int
    width: int
    gsd: float


@dataclass(frozen=True)
class FlopEstimate:
    projection: float
    resampler: float
    temporal: float
    transformer: float
    tokens: int
    grid: tuple[int, int]

    @property
    def total(self) -> float:
        return self.projection + self.resampler + self.temporal + self.transformer


def estimate_encoder_flops(
    config: RamenConfig,
    modalities: Sequence[ModalityShape],
    target_gsd: float,
    exact_rewrites: bool = True,
    depth: int | None = None,
) -> FlopEstimate:
    """Estimate the FLOPs of encoding one sample (batch size 1).

    Args:
        config: model size.
        modalities: shapes in input order; the first defines the token grid.
        target_gsd: output GSD in metres.
        exact_rewrites: count the merged experts and the projection on the smaller grid.
        depth: blocks that run (default: all).
    """
    dim = config.embed_dim
    first = modalities[0]
    rows, cols = grid_shape(first.height, first.width, first.gsd, target_gsd)
    grid_pixels = rows * cols
    projection = resampler = temporal = 0.0
    for shape in modalities:
        scale = shape.gsd / target_gsd
        native = shape.height * shape.width
        resampled = int(shape.height * scale) * int(shape.width * scale)
        if exact_rewrites and scale < 1.0:
            projection += shape.dates * (8.0 * shape.channels * resampled + 2.0 * shape.channels * dim * resampled)
        else:
            projection += shape.dates * (2.0 * shape.channels * dim * native + 8.0 * dim * resampled)
        experts = 1 if exact_rewrites else config.num_experts
        resampler += shape.dates * 2.0 * dim * dim * resampled * experts
        if resampled != grid_pixels:
            resampler += shape.dates * 8.0 * dim * grid_pixels
        if shape.dates > 1:
            per_date = 2.0 * dim * dim + 2.0 * dim * config.ltae_heads * config.ltae_key_dim + 2.0 * dim
            mlp = 2.0 * (dim * dim + dim * 2 * dim + 2 * dim * dim)
            temporal += grid_pixels * (shape.dates * per_date + mlp)
    tokens = 1 + len(modalities) * grid_pixels
    blocks = config.depth if depth is None else depth
    hidden = config.mlp_ratio * dim
    per_block = tokens * (2.0 * dim * 3 * dim + 2.0 * dim * dim + 4.0 * dim * hidden) + 4.0 * tokens * tokens * dim
    return FlopEstimate(projection, resampler, temporal, per_block * blocks, tokens, (rows, cols))
