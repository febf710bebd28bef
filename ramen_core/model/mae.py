"""Masked auto-encoding: random masking, the RAMEN decoder with its inverse modules, the loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramen_core.errors import InputError
from ramen_core.model.config import RamenConfig
from ramen_core.model.encoder import ModalityInput, RamenEncoder, check_modalities
from ramen_core.model.projectors import build_projectors, channel_matrix
from ramen_core.model.resampler import ScaleResampler, resize_to
from ramen_core.model.sincos import position_table_2d, sincos_1d
from ramen_core.model.vit import Block


@dataclass
class Masking:
    """Result of random masking. ``mask`` is 1 for removed tokens, in the original order."""

    ids_shuffle: Tensor
    ids_restore: Tensor
    ids_keep: Tensor
    mask: Tensor


def random_masking(tokens: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Masking]:
    """Keep the ``int(L·(1 − mask_ratio))`` tokens with the lowest noise.

    Args:
        tokens: [B, L, D].
        mask_ratio: share of tokens to remove, in [0, 1).
        noise: optional [B, L] noise; uniform random noise by default.

    Returns:
        The visible tokens [B, len_keep, D] and the masking indices.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise InputError(f"mask ratio must be in [0, 1), got {mask_ratio!r}; 0.75 is the pre-training value")
    b, length, d = tokens.shape
    if noise is None:
        noise = torch.rand(b, length, device=tokens.device)
    len_keep = max(1, int(length * (1 - mask_ratio)))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    visible = torch.gather(tokens, 1, ids_keep[:, :, None].expand(-1, -1, d))
    mask = torch.ones(b, length, device=tokens.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return visible, Masking(ids_shuffle, ids_restore, ids_keep, mask)


class RamenDecoder(nn.Module):
    """Light ViT decoder plus inverse modules back to each modality's native grid and bands.

    The inverse modules undo the encoder's steps in reverse order: a temporal block expands
    each token over the dates, the decoder's own resampler goes back to the native GSD, and
    the transpose of the decoder's channel matrix maps features to bands.
    """

    def __init__(self, config: RamenConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.decoder_embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_embed = nn.Linear(config.embed_dim, dim)
        build_projectors(self, dim, config.radar_projector, config.elevation_projector)
        self.resampler = ScaleResampler(dim, config.num_experts)
        self.temporal_block = Block(dim, config.decoder_num_heads, config.mlp_ratio, config.qkv_bias, config.block_norm_eps)
        self.temporal_norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(dim, config.decoder_num_heads, config.mlp_ratio, config.qkv_bias, config.block_norm_eps)
            for _ in range(config.decoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(
        self,
        encoded: Tensor,
        masking: Masking,
        modalities: Sequence[ModalityInput],
        target_gsd: float,
        grid: tuple[int, int],
    ) -> dict[str, Tensor]:
        """Reconstruct every modality at its native resolution, channels last [B, T, H, W, C]."""
        dim = self.config.decoder_embed_dim
        rows, cols = grid
        x = self.decoder_embed(encoded)
        b = x.shape[0]
        length = masking.ids_restore.shape[1]

        hidden = x[:, 1:]
        fill = self.mask_token.to(x.dtype).expand(b, length - hidden.shape[1], -1)
        hidden = torch.cat([hidden, fill], dim=1)
        hidden = torch.gather(hidden, 1, masking.ids_restore[:, :, None].expand(-1, -1, dim))
        table = position_table_2d(dim, rows, cols, target_gsd, x.device).to(x.dtype)
        hidden = hidden + table.repeat(len(modalities), 1)[None]
        x = torch.cat([x[:, :1], hidden], dim=1)

        for block in self.blocks:
            x = block(x)
        x = self.norm(x)[:, 1:]

        tokens_per_modality = rows * cols
        outputs: dict[str, Tensor] = {}
        for index, modality in enumerate(modalities):
            chunk = x[:, index * tokens_per_modality : (index + 1) * tokens_per_modality]
            outputs[modality.name] = self._invert(chunk, modality, target_gsd, grid)
        return outputs

    def _invert(self, chunk: Tensor, modality: ModalityInput, target_gsd: float, grid: tuple[int, int]) -> Tensor:
        b, t, c, h, w = modality.data.shape
        dim = self.config.decoder_embed_dim
        rows, cols = grid
        if t > 1:
            dates = modality.dates
            assert dates is not None
            date_table = sincos_1d(dim, dates.to(chunk.device).float()).reshape(b, 1, t, dim).to(chunk.dtype)
            seq = chunk[:, :, None, :] + date_table  # [B, N, T, Dd]
            seq = self.temporal_norm(self.temporal_block(seq.reshape(b * rows * cols, t, dim)))
            maps = seq.reshape(b, rows, cols, t, dim).permute(0, 3, 4, 1, 2).reshape(b * t, dim, rows, cols)
        else:
            maps = chunk.transpose(1, 2).reshape(b, dim, rows, cols)
        maps = self.resampler(maps, float(target_gsd) / float(modality.gsd))
        maps = resize_to(maps, (h, w))
        matrix = channel_matrix(self, modality.name, modality.bands).to(maps.dtype)  # [C, Dd]
        maps = maps.reshape(b, t, dim, h, w).permute(0, 1, 3, 4, 2)
        return maps @ matrix.T


def reconstruction_loss(prediction: Tensor, modality: ModalityInput, token_mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """MSE on masked pixels of the per-pixel normalised target.

    The target is normalised over channels with the mean and the unbiased variance. A
    single-band modality has no variance over channels, so its target is the input itself
    (the reference would divide by NaN there).

    Args:
        prediction: [B, T, H, W, C].
        modality: the input, [B, T, C, H, W].
        token_mask: [B, rows·cols], 1 for masked tokens.
        grid: (rows, cols).
    """
    b, t, c, h, w = modality.data.shape
    target = modality.data.permute(0, 1, 3, 4, 2)
    if c > 1:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    pixel_mask = F.interpolate(token_mask.reshape(b, 1, *grid), size=(h, w), mode="nearest")
    pixel_mask = pixel_mask.expand(b, t, h, w)  # the same mask for every date
    per_pixel = ((prediction - target) ** 2).mean(dim=-1)  # [B, T, H, W]
    masked = pixel_mask.sum()
    if masked == 0:
        # A modality coarser than the token grid can have no masked pixel; 0/0 would be NaN.
        return (per_pixel * pixel_mask).sum()
    return (per_pixel * pixel_mask).sum() / masked


@dataclass
class MAEOutput:
    loss: Tensor
    losses: dict[str, Tensor]
    reconstructions: dict[str, Tensor]
    masking: Masking
    encoded: Tensor
    grid: tuple[int, int]


class RamenMAE(nn.Module):
    """RAMEN encoder and decoder for masked auto-encoding pre-training."""

    def __init__(self, config: RamenConfig | None = None) -> None:
        super().__init__()
        self.config = config or RamenConfig.base()
        self.encoder = RamenEncoder(self.config)
        self.decoder = RamenDecoder(self.config)

    def forward(
        self,
        modalities: Sequence[ModalityInput],
        target_gsd: float,
        mask_ratio: float = 0.75,
        noise: Tensor | None = None,
    ) -> MAEOutput:
        """Mask tokens, encode the visible ones and reconstruct every modality.

        Args:
            modalities: aligned modalities, as for the encoder.
            target_gsd: GSD of the token grid in metres.
            mask_ratio: share of tokens removed before the encoder.
            noise: optional [B, M·rows·cols] masking noise (for reproducible masks).
        """
        modalities = check_modalities(modalities)
        tokens, grid, _ = self.encoder.prepare_tokens(modalities, target_gsd)
        visible, masking = random_masking(tokens, mask_ratio, noise)
        depth = self.config.depth
        encoded = self.encoder.run_blocks(visible, [depth])[depth]
        reconstructions = self.decoder(encoded, masking, modalities, target_gsd, grid)

        tokens_per_modality = grid[0] * grid[1]
        losses: dict[str, Tensor] = {}
        for index, modality in enumerate(modalities):
            chunk_mask = masking.mask[:, index * tokens_per_modality : (index + 1) * tokens_per_modality]
            losses[modality.name] = reconstruction_loss(reconstructions[modality.name], modality, chunk_mask, grid)
        total = torch.stack(list(losses.values())).sum()
        return MAEOutput(total, losses, reconstructions, masking, encoded, grid)
