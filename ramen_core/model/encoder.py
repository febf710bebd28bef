"""The RAMEN encoder: any set of modalities at any native GSD to tokens at a target GSD."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
        dates: int tensor [B, T], day of year. Required when T > 1.
        valid: optional bool tensor [B, T, H, W] at native resolution, or [B, T, rows, cols]
            on the token grid; False marks a cloudy or missing observation.
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
    columns, with the division done first as in the reference.
    """
    ratio = float(native_gsd) / float(target_gsd)
    return int(height * ratio), int(width * ratio)


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


def _check_modality(modality: ModalityInput) -> None:
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
    if len(modality.bands) != data.shape[2]:
        raise InputError(
            f"modality {modality.name!r}: {len(modality.bands)} bands described but the tensor has "
            f"{data.shape[2]} channels (axis 2 of [B, T, C, H, W]); give one BandSpec per channel"
        )
    if not (isinstance(modality.gsd, (int, float)) and math.isfinite(modality.gsd) and modality.gsd > 0):
        raise InputError(f"modality {modality.name!r}: native GSD must be a positive number of metres, got {modality.gsd!r}")
    b, t = data.shape[:2]
    if modality.dates is not None and tuple(modality.dates.shape) != (b, t):
        raise InputError(
            f"modality {modality.name!r}: dates must have shape [B, T] = {(b, t)}, got {tuple(modality.dates.shape)}"
        )
    if modality.dates is None and t > 1:
        raise InputError(f"modality {modality.name!r}: {t} dates need a dates tensor [B, T] of days of year")
    if modality.valid is not None and (modality.valid.ndim != 4 or tuple(modality.valid.shape[:2]) != (b, t)):
        raise InputError(
            f"modality {modality.name!r}: valid must have shape [B, T, H, W] = {(b, t)} + (H, W), "
            f"got {tuple(modality.valid.shape)}"
        )
    if torch.isnan(data).any():
        raise InputError(
            f"modality {modality.name!r}: data contains NaN; fill invalid pixels (for example with 0) "
            f"and mark them in `valid`"
        )


def _valid_on_grid(modality: ModalityInput, grid: tuple[int, int]) -> Tensor | None:
    """Bring a validity mask to the token grid: a token is valid if most of its footprint is."""
    valid = modality.valid
    if valid is None:
        return None
    valid = valid.to(torch.bool)
    if tuple(valid.shape[-2:]) == tuple(grid):
        return valid
    b, t, h, w = valid.shape
    fraction = F.interpolate(valid.reshape(b * t, 1, h, w).float(), size=grid, mode="area")
    return (fraction >= 0.5).reshape(b, t, *grid)


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
        matrix = channel_matrix(self, modality.name, modality.bands).to(modality.data.dtype)  # [C, D]
        scale = float(modality.gsd) / float(target_gsd)
        pixels = modality.data.reshape(b * t, c, h, w)

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
        if not (isinstance(target_gsd, (int, float)) and math.isfinite(target_gsd) and target_gsd > 0):
            raise InputError(f"target GSD must be a positive number of metres, got {target_gsd!r}")
        if not modalities:
            raise InputError("no modality given; pass at least one ModalityInput")
        names = [m.name for m in modalities]
        if len(set(names)) != len(names):
            raise InputError(f"modality names must be unique, got {names}")
        for modality in modalities:
            _check_modality(modality)
        batch = modalities[0].data.shape[0]
        for modality in modalities[1:]:
            if modality.data.shape[0] != batch:
                raise InputError(
                    f"modality {modality.name!r} has batch size {modality.data.shape[0]}, "
                    f"but {modalities[0].name!r} has {batch}"
                )

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

    def run_blocks(self, tokens: Tensor, blocks: Iterable[int] | None = None) -> dict[int, Tensor]:
        """Prepend CLS, run the transformer and return the requested blocks' tokens.

        Blocks are numbered from 1 to depth. Only the blocks up to the deepest requested one run.
        """
        depth = self.config.depth
        wanted = sorted(set(blocks)) if blocks is not None else [depth]
        if not wanted:
            raise InputError("request at least one block")
        for block in wanted:
            if not (isinstance(block, int) and 1 <= block <= depth):
                raise InputError(f"block {block!r} does not exist; blocks are numbered 1 to {depth}")
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
        blocks: Iterable[int] | None = None,
    ) -> EncoderOutput:
        """Encode modalities at ``target_gsd`` metres and return the requested blocks.

        Args:
            modalities: aligned modalities; the first one defines the token grid, anchored at
                its top-left corner.
            target_gsd: output GSD in metres.
            blocks: block numbers (1 to depth) to return; default: the last block.
        """
        tokens, grid, valid = self.prepare_tokens(modalities, target_gsd)
        features = self.run_blocks(tokens, blocks)
        return EncoderOutput(
            features=features, grid=grid, names=[m.name for m in modalities], valid=valid,
            blocks=tuple(sorted(features)),
        )
