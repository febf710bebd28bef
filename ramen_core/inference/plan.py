"""Cost estimates of a window plan: tokens, FLOPs, peak memory and output size.

The estimates make the GSD knob visible: at half the GSD the grid has four times the
pixels, so four times the windows for the same tokens per window. Peak memory is an
estimate of one batch in flight (inputs, activations of one transformer block, the
attention matrix, the model) plus the blending buffers; it is not a measurement.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ramen_core.errors import InputError
from ramen_core.inference.tiling import TargetGrid, plan_windows
from ramen_core.model import RamenConfig, RamenEncoder
from ramen_core.model.flops import ModalityShape, estimate_encoder_flops

logger = logging.getLogger(__name__)

BYTES_FLOAT32 = 4


@dataclass(frozen=True)
class ModalityCost:
    """What the estimate needs to know about one modality.

    Attributes:
        dates: time steps T.
        channels: bands C.
        gsd: native GSD in metres.
    """

    dates: int
    channels: int
    gsd: float


@dataclass(frozen=True)
class PlanEstimate:
    """Cost of running a plan at one GSD.

    Attributes:
        gsd: target GSD in metres.
        grid_width: output columns.
        grid_height: output rows.
        windows: windows of the run (windows shared by tiles counted once per tile).
        tokens_per_window: tokens one window feeds the transformer (CLS included).
        total_tokens: tokens over all windows.
        flops: estimated FLOPs of the whole run (a multiply-add counts two).
        peak_memory_bytes: estimated peak memory of one batch in flight plus buffers.
        output_bytes: uncompressed size of the output raster.
    """

    gsd: float
    grid_width: int
    grid_height: int
    windows: int
    tokens_per_window: int
    total_tokens: int
    flops: float
    peak_memory_bytes: float
    output_bytes: float


def parameter_count(config: RamenConfig) -> int:
    """Parameters of the encoder, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        encoder = RamenEncoder(config)
    return sum(parameter.numel() for parameter in encoder.parameters())


def estimate_plan(
    config: RamenConfig,
    modalities: Sequence[ModalityCost],
    grid: TargetGrid,
    *,
    window: int,
    overlap: int,
    batch_size: int,
    channels: int,
    depth: int | None = None,
    tile_width: int | None = None,
    tile_height: int | None = None,
    output_bytes_per_value: int = BYTES_FLOAT32,
    parameters: int | None = None,
) -> PlanEstimate:
    """Estimate the cost of a run.

    Args:
        config: model size.
        modalities: the inputs, in model order.
        grid: the target grid.
        window: window side in tokens.
        overlap: window overlap in tokens.
        batch_size: windows per model call.
        channels: output channels.
        depth: blocks that run (the requested layer); default all.
        tile_width: tile width in pixels (blending buffer width); default the grid width.
        tile_height: tile height in pixels; default the grid height.
        output_bytes_per_value: 4 for float32, 2 for float16.
        parameters: encoder parameter count, if known.
    """
    from ramen_core.inference.run import count_windows
    from ramen_core.inference.sources import pixels_per_token

    plan = plan_windows(grid, window, overlap, tile_height, tile_width)
    rows, cols = plan.window_shape
    shapes = []
    input_values = 0
    for modality in modalities:
        pixel = pixels_per_token(modality.gsd, grid.gsd)
        shapes.append(ModalityShape(modality.dates, modality.channels, rows * pixel, cols * pixel, grid.gsd / pixel))
        input_values += modality.dates * modality.channels * rows * pixel * cols * pixel
    blocks = config.depth if depth is None else depth
    flops = estimate_encoder_flops(config, shapes, grid.gsd, depth=blocks)
    tokens = flops.tokens
    windows = count_windows(plan, plan.tiles)

    dim = config.embed_dim
    hidden = int(config.mlp_ratio * dim)
    per_sample_activations = tokens * (3 * dim + 2 * dim + hidden) * BYTES_FLOAT32
    # The math path of scaled_dot_product_attention materialises one [heads, N, N] matrix.
    attention = config.num_heads * tokens * tokens * BYTES_FLOAT32
    projected = sum(m.dates * dim * rows * cols * 3 for m in modalities) * BYTES_FLOAT32
    batch = batch_size * (per_sample_activations + attention + projected + 2 * input_values * BYTES_FLOAT32)
    parameters = parameter_count(config) if parameters is None else parameters
    blend_width = min(grid.width, tile_width or grid.width)
    blending = 2 * (channels + 1) * (rows + window) * blend_width * BYTES_FLOAT32
    peak = batch + parameters * BYTES_FLOAT32 + blending
    return PlanEstimate(
        gsd=grid.gsd,
        grid_width=grid.width,
        grid_height=grid.height,
        windows=windows,
        tokens_per_window=tokens,
        total_tokens=tokens * windows,
        flops=flops.total * windows,
        peak_memory_bytes=float(peak),
        output_bytes=float(grid.width) * grid.height * channels * output_bytes_per_value,
    )


def available_memory(device: torch.device) -> float:
    """Bytes free for a run on ``device``: free GPU memory for CUDA, available RAM otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    import psutil

    return float(psutil.virtual_memory().available)


def format_bytes(value: float) -> str:
    """Bytes in binary units: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.3g} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.3g} TiB"


def parse_bytes(text: str | int | float) -> float:
    """Read a size such as ``16GB``, ``512MiB`` or ``1e9`` (bytes).

    Raises:
        InputError: the text is not a size, or the size is not positive.
    """
    size = _size_value(text)
    if not (math.isfinite(size) and size > 0):
        raise InputError(f"size {text!r} must be a positive number of bytes, such as 16GB, 512MiB or 1e9")
    return size


def _size_value(text: str | int | float) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    value = str(text).strip().upper().replace(" ", "")
    units = {"TIB": 1024**4, "GIB": 1024**3, "MIB": 1024**2, "KIB": 1024, "TB": 1e12, "GB": 1e9, "MB": 1e6,
             "KB": 1e3, "T": 1024**4, "G": 1024**3, "M": 1024**2, "K": 1024, "B": 1}
    for unit, factor in units.items():
        if value.endswith(unit):
            number = value[: -len(unit)]
            break
    else:
        number, factor = value, 1
    try:
        return float(number) * factor
    except ValueError:
        raise InputError(f"cannot read size {text!r}; write it like 16GB, 512MiB or 1e9") from None


def check_memory(estimate: PlanEstimate, limit: float, device: torch.device) -> None:
    """Reject a plan whose estimated peak memory exceeds ``limit`` bytes.

    Raises:
        InputError: naming the estimate, the limit and how to shrink the plan.
    """
    if estimate.peak_memory_bytes > limit:
        raise InputError(
            f"the window plan needs about {format_bytes(estimate.peak_memory_bytes)} of memory on {device.type} "
            f"({estimate.tokens_per_window} tokens per window), more than the {format_bytes(limit)} available; "
            f"use a smaller --window or --batch-size, or a coarser --gsd (see the estimates of --plan)"
        )
