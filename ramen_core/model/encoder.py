"""The RAMEN encoder: any set of modalities at any native GSD to tokens at a target GSD."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramen_core.bands import BandSpec
from ramen_core.errors import InputError
from ramen_core.model.config import RamenConfig
from ramen_core.model.ltae import LTAE
from ramen_core.model.projectors import build_projectors, channel_matrix
from ramen_core.model.resampler import ScaleResampler, interpolate_by_scale, resize_to
from ramen_core.model.sincos import position_table_2d
from ramen_core.model.vit import Block


@dataclass
class ModalityInput:
    """One modality of one batch, as the encoder takes it.

    Attributes:
        name: label used in outputs and messages, such as ``s2``.
        data: float tensor [B, T, C, H, W], normalised, with no NaN (fill invalid pixels, for
            example with 0, and flag them in ``valid``).
        bands: one :class:`BandSpec` per channel; all bands share one kind.
        gsd: native ground sampling distance in metres per pixel.
        dates: int tensor [B, T], day of year. Required when T > 1. A nested list or a
            NumPy array is converted.
        valid: optional bool tensor [B, T, H, W] at native resolution, or [B, T, rows, cols]
            on the token grid; False marks a cloudy or missing observation. A NumPy array
            is converted.
    """

    name: str
    data: Tensor
    bands: Sequence[BandSpec]
    gsd: float
    dates: Tensor | None = None
    valid: Tensor | None = None


def grid_shape(height: int, width: int, native_gsd: float, target_gsd: float) -> tuple[int, int]:
    """Return the token grid (rows, cols) of a window at ``target_gsd``.

    The grid has floor(H·GSD_native/GSD_target) rows and floor(W·GSD_native/GSD_target)
    columns, with the division done first as in the reference. A product within
    :data:`GRID_ROUNDING_TOLERANCE` below a whole number counts as that number, so float
    round-off never drops a row: 256 px at 0.3 m give 768 tokens at 0.1 m, where plain
    truncation (and the reference) gives 767.
    """
    ratio = float(native_gsd) / float(target_gsd)
    return _floor_tolerant(height * ratio), _floor_tolerant(width * ratio)


# Token counts are at most about 1e5 per side, where float64 round-off is below 1e-10, and
# a genuine fraction this close to the next whole token does not occur in practice.
GRID_ROUNDING_TOLERANCE = 1e-6


def _floor_tolerant(value: float) -> int:
    return math.floor(value + GRID_ROUNDING_TOLERANCE)


@dataclass
class EncoderOutput:
    """Features of the requested blocks.

    Attributes:
        features: block number (1-based) to tokens [B, 1 + M·rows·cols, D]. The last block
            of the encoder comes after the final LayerNorm, other blocks without it.
        grid: token grid (rows, cols).
        names: modality names in token order.
        valid: [B, M, rows, cols] bool, False where a modality had no valid date.
    """

    features: dict[int, Tensor]
    grid: tuple[int, int]
    names: list[str]
    valid: Tensor
    blocks: tuple[int, ...] = field(default=())

    @property
    def tokens(self) -> Tensor:
        """Tokens of the deepest requested block."""
        return self.features[max(self.features)]

    def _block(self, block: int | None) -> Tensor:
        if block is None:
            return self.tokens
        if block not in self.features:
            raise InputError(f"block {block} was not requested; requested blocks: {sorted(self.features)}")
        return self.features[block]

    def maps(self, block: int | None = None) -> Tensor:
        """Return the feature maps [B, M, D, rows, cols] of a block (CLS token dropped)."""
        tokens = self._block(block)[:, 1:]
        b, _, d = tokens.shape
        rows, cols = self.grid
        return tokens.reshape(b, len(self.names), rows, cols, d).permute(0, 1, 4, 2, 3)

    def cls(self, block: int | None = None) -> Tensor:
        """Return the CLS token [B, D] of a block."""
        return self._block(block)[:, 0]


def _as_gsd(value: object, what: str) -> float:
    """Return a GSD as a float, accepting Python, NumPy and 0-d tensor numbers, or raise."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        gsd = float(value)
        if math.isfinite(gsd) and gsd > 0:
            return gsd
    raise InputError(f"{what} must be a positive number of metres, got {value!r}")


def _as_tensor(value: object, name: str, what: str) -> Tensor:
    """Convert a nested list or NumPy array to a tensor, or raise a message naming ``what``."""
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"modality {name!r}: {what} must be a tensor, got {type(value).__name__} ({error})") from None


def _check_modality(modality: ModalityInput) -> ModalityInput:
    """Validate one modality and return it with its GSD as a float and dates and mask as tensors."""
    data = modality.data
    if not isinstance(data, Tensor):
        raise InputError(f"modality {modality.name!r}: data must be a torch.Tensor, got {type(data).__name__}")
    if data.ndim != 5:
        raise InputError(
            f"modality {modality.name!r}: expected a tensor [B, T, C, H, W] of rank 5, got shape "
            f"{tuple(data.shape)}; add the missing axes, for example data[:, None] for a single date"
        )
    if not data.is_floating_point():
        raise InputError(f"modality {modality.name!r}: data must be floating point, got {data.dtype}")

    if data.shape[0] == 0 or data.shape[1] == 0:
        raise InputError(
            f"modality {modality.name!r}: the tensor [B, T, C, H, W] has shape {tuple(data.shape)}; "
            f"give at least one sample and one date"
        )
    if len(modality.bands) != data.shape[2]:
        raise InputError(
            f"modality {modality.name!r}: {len(modality.bands)} bands described but the tensor has "
            f"{data.shape[2]} channels (axis 2 of [B, T, C, H, W]); give one BandSpec per channel"
        )
    gsd = _as_gsd(modality.gsd, f"modality {modality.name!r}: native GSD")

    b, t, _, h, w = data.shape
    dates = None if modality.dates is None else _as_tensor(modality.dates, modality.name, "dates")
    if dates is not None and tuple(dates.shape) != (b, t):
        raise InputError(
            f"modality {modality.name!r}: dates must have shape [B, T] = {(b, t)}, got {tuple(dates.shape)}"
        )
    if dates is None and t > 1:
        raise InputError(f"modality {modality.name!r}: {t} dates need a dates tensor [B, T] of days of year")

    valid = None if modality.valid is None else _as_tensor(modality.valid, modality.name, "valid")
    if valid is not None and (valid.ndim != 4 or tuple(valid.shape[:2]) != (b, t)):
        raise InputError(
            f"modality {modality.name!r}: valid must have shape [B, T, H, W] = {(b, t, h, w)}, "
            f"got {tuple(valid.shape)}"
        )

    if not torch.isfinite(data).all():
        raise InputError(
            f"modality {modality.name!r}: data contains NaN or infinite values; fill invalid pixels "
            f"(for example with 0) and mark them in `valid`"
        )
    return replace(modality, gsd=gsd, dates=dates, valid=valid)


def check_modalities(modalities: Sequence[ModalityInput]) -> list[ModalityInput]:
    """Validate the modalities of one batch, as the encoder does before encoding them.

    Returns copies whose GSD is a float and whose dates and validity masks are tensors.

    Raises:
        InputError: no modality, repeated names, a tensor of the wrong rank, shape or
            values, band metadata that does not match the channels, an invalid GSD, or
            batch sizes that differ between modalities.
    """
    if not modalities:
        raise InputError("no modality given; pass at least one ModalityInput")
    names = [m.name for m in modalities]
    if len(set(names)) != len(names):
        raise InputError(f"modality names must be unique, got {names}")
    checked = [_check_modality(modality) for modality in modalities]
    batch = checked[0].data.shape[0]
    for modality in checked[1:]:
        if modality.data.shape[0] != batch:
            raise InputError(
                f"modality {modality.name!r} has batch size {modality.data.shape[0]}, "
                f"but {checked[0].name!r} has {batch}"
            )
    return checked


def _valid_on_grid(modality: ModalityInput, grid: tuple[int, int]) -> Tensor | None:
    """Bring a validity mask to the token grid: a token is valid if most of its footprint is."""
    valid = modality.valid
    if valid is None:
        return None
    valid = valid.to(torch.bool)
    if tuple(valid.shape[-2:]) == tuple(grid):
        return valid
    if tuple(valid.shape[-2:]) != tuple(modality.data.shape[-2:]):
        raise InputError(
            f"modality {modality.name!r}: valid has {tuple(valid.shape[-2:])} pixels, but the data has "
            f"{tuple(modality.data.shape[-2:])} and the token grid {tuple(grid)}; give the mask at the "
            f"native resolution [B, T, H, W] or on the token grid [B, T, rows, cols]"
        )
    b, t, h, w = valid.shape
    fraction = F.interpolate(valid.reshape(b * t, 1, h, w).float(), size=grid, mode="area")
    return (fraction >= 0.5).reshape(b, t, *grid)


def _block_numbers(blocks: int | Iterable[int], depth: int) -> list[int]:
    """Read one block number or several (Python, NumPy or tensor integers), each 1 to depth."""
    if isinstance(blocks, Tensor):
        blocks = blocks.reshape(-1).tolist()
    elif isinstance(blocks, numbers.Integral) and not isinstance(blocks, bool):
        blocks = [blocks]
    numbers_read = []
    for block in blocks:
        try:
            number = operator.index(block) if not isinstance(block, bool) else None
        except TypeError:
            number = None
        if number is None or not 1 <= number <= depth:
            raise InputError(f"block {block!r} does not exist; blocks are numbered 1 to {depth}")
        numbers_read.append(number)
    return numbers_read


class RamenEncoder(nn.Module):
    """Sensor-agnostic, resolution-adjustable multimodal encoder.

    Parameter names follow the official checkpoints, so their state dicts load unchanged.

    Args:
        config: model size.
    """

    def __init__(self, config: RamenConfig | None = None) -> None:
        super().__init__()
        self.config = config or RamenConfig.base()
        dim = self.config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        build_projectors(self, dim, self.config.radar_projector, self.config.elevation_projector)
        self.resampler = ScaleResampler(dim, self.config.num_experts)
        self.ltae = LTAE(dim, self.config.ltae_heads, self.config.ltae_key_dim, self.config.ltae_period)
        self.in_norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(dim, self.config.num_heads, self.config.mlp_ratio, self.config.qkv_bias, self.config.block_norm_eps)
            for _ in range(self.config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        # Exact rewrites: project on the smaller grid, and merge the linear experts.
        self.exact_rewrites = True

    @property
    def exact_rewrites(self) -> bool:
        return self._exact_rewrites

    @exact_rewrites.setter
    def exact_rewrites(self, value: bool) -> None:
        self._exact_rewrites = bool(value)
        self.resampler.fused_experts = bool(value)

    # ------------------------------------------------------------------ per modality
    def _project_and_resample(self, modality: ModalityInput, target_gsd: float, grid: tuple[int, int]) -> Tensor:
        """Channel projection, GSD resampling and the final resize: [B·T, D, rows, cols]."""
        b, t, c, h, w = modality.data.shape
        # Inputs are cast to the model's dtype (float32 unless the model was cast), so float64
        # and float16 inputs work. Under autocast the matrix products still run in reduced precision.
        dtype = self.cls_token.dtype
        matrix = channel_matrix(self, modality.name, modality.bands).to(dtype)  # [C, D]
        scale = float(modality.gsd) / float(target_gsd)
        pixels = modality.data.to(dtype).reshape(b * t, c, h, w)

        # Projection and bilinear interpolation are both linear and commute (bilinear weights
        # sum to 1 and the projection has no bias), so the projection can run on the smaller grid.
        interpolate_first = self.exact_rewrites and scale < 1.0
        if interpolate_first:
            pixels = interpolate_by_scale(pixels, scale)
            features = torch.einsum("nchw,cd->ndhw", pixels, matrix)
        else:
            features = torch.einsum("nchw,cd->ndhw", pixels, matrix)
            features = interpolate_by_scale(features, scale)
        features = self.resampler.refine(features, scale)
        return resize_to(features, grid)

    def embed_modality(self, modality: ModalityInput, target_gsd: float, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Encode one modality to normalised tokens [B, rows·cols, D] and validity [B, rows, cols]."""
        b, t = modality.data.shape[:2]
        rows, cols = grid
        features = self._project_and_resample(modality, target_gsd, grid)
        valid = _valid_on_grid(modality, grid)
        if t > 1:
            dates = modality.dates
            assert dates is not None
            features = self.ltae(features.reshape(b, t, -1, rows, cols), dates.to(features.device), valid)
        else:
            features = features.reshape(b, -1, rows, cols)
        tokens = features.flatten(2).transpose(1, 2)
        tokens = self.in_norm(tokens)
        if valid is None:
            pixel_valid = torch.ones(b, rows, cols, dtype=torch.bool, device=tokens.device)
        else:
            pixel_valid = valid.any(dim=1).to(tokens.device)
        return tokens, pixel_valid

    # ------------------------------------------------------------------ token assembly
    def prepare_tokens(self, modalities: Sequence[ModalityInput], target_gsd: float) -> tuple[Tensor, tuple[int, int], Tensor]:
        """Return tokens with position encoding [B, M·N, D] (no CLS), the grid and validity."""
        target_gsd = _as_gsd(target_gsd, "target GSD")
        modalities = check_modalities(modalities)

        first = modalities[0]
        grid = grid_shape(first.data.shape[-2], first.data.shape[-1], first.gsd, target_gsd)
        if grid[0] < 1 or grid[1] < 1:
            raise InputError(
                f"target GSD {target_gsd} m leaves no token: modality {first.name!r} covers "
                f"{first.data.shape[-2]}x{first.data.shape[-1]} px at {first.gsd} m; use a finer GSD "
                f"or a larger window"
            )

        chunks, valids = [], []
        for modality in modalities:
            tokens, valid = self.embed_modality(modality, target_gsd, grid)
            chunks.append(tokens)
            valids.append(valid)
        tokens = torch.cat(chunks, dim=1)
        table = position_table_2d(self.config.embed_dim, grid[0], grid[1], target_gsd, tokens.device)
        tokens = tokens + table.to(tokens.dtype).repeat(len(modalities), 1)[None]
        return tokens, grid, torch.stack(valids, dim=1)

    def run_blocks(self, tokens: Tensor, blocks: int | Iterable[int] | None = None) -> dict[int, Tensor]:
        """Prepend CLS, run the transformer and return the requested blocks' tokens.

        Blocks are numbered from 1 to depth. Only the blocks up to the deepest requested one run.
        """
        depth = self.config.depth
        wanted = sorted(set(_block_numbers(blocks, depth))) if blocks is not None else [depth]
        if not wanted:
            raise InputError("request at least one block")
        # The CLS row of the position table is zero, so the CLS token enters unchanged.
        x = torch.cat([self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        features: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks[: wanted[-1]], start=1):
            x = block(x)
            if index in wanted:
                features[index] = self.norm(x) if index == depth else x
        return features

    def forward(
        self,
        modalities: Sequence[ModalityInput],
        target_gsd: float,
        blocks: int | Iterable[int] | None = None,
    ) -> EncoderOutput:
        """Encode modalities at ``target_gsd`` metres and return the requested blocks.

        Args:
            modalities: aligned modalities; the first one defines the token grid, anchored at
                its top-left corner.
            target_gsd: output GSD in metres.
            blocks: block number or numbers (1 to depth) to return; default: the last block.
        """
        tokens, grid, valid = self.prepare_tokens(modalities, target_gsd)
        features = self.run_blocks(tokens, blocks)
        return EncoderOutput(
            features=features, grid=grid, names=[m.name for m in modalities], valid=valid,
            blocks=tuple(sorted(features)),
        )
