"""UPerNet segmentation head on the RAMEN encoder, and the :class:`Segmenter` that joins them.

RAMEN's transformer returns one feature map per modality at the target GSD, the same
resolution for every block. UPerNet needs a pyramid, so the head takes four blocks and
resizes them to 4×, 2×, 1× and 0.5× the token grid, as UPerNet on plain ViTs does (BEiT,
MAE and the PANGAEA benchmark). The resizing uses two stride-2 transposed convolutions,
one such convolution, the identity and a 2×2 max pool. UPerNet then runs a pyramid pooling module (PPM) on the coarsest level, an FPN
(lateral 1×1 convolutions and a top-down pathway with 3×3 smoothing), fuses every level at
the finest scale and classifies each pixel there, at a quarter of the target GSD.

Several modalities give several maps per block. They are fused into one by the mean of the
per-modality maps, taken over the modalities that are valid at each token (the plain mean
where none is).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramen_core.errors import ConfigError, InputError
from ramen_core.model import ModalityInput, RamenEncoder

logger = logging.getLogger(__name__)

# Resolution of the head's logits relative to the token grid (the finest pyramid level).
HEAD_UPSAMPLING = 4
NORMS = ("batch", "group")


def default_feature_blocks(depth: int) -> tuple[int, ...]:
    """Return the four encoder blocks (numbered from 1) that feed the head by default.

    A 12-block encoder gives blocks 4, 6, 8 and 12, the choice of UPerNet on ViT-Base.
    Deeper encoders keep the same fractions of the depth (1/3, 1/2, 2/3 and the last
    block). Shallower encoders take four evenly spaced blocks ending with the last,
    ``ceil(depth·k/4)`` for k = 1..4, which repeats blocks when there are fewer than four:
    a 2-block encoder gives (1, 1, 2, 2).
    """
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"encoder depth must be a positive integer, got {depth!r}")
    if depth >= 12:
        return (round(depth / 3), round(depth / 2), round(2 * depth / 3), depth)
    return tuple(math.ceil(depth * k / 4) for k in range(1, 5))


def fuse_modalities(maps: Tensor, valid: Tensor | None = None) -> Tensor:
    """Fuse per-modality feature maps [B, M, D, rows, cols] into [B, D, rows, cols].

    The result is the mean over the modalities valid at each token; where no modality is
    valid it is the plain mean, so the head still gets finite numbers there.

    Args:
        maps: feature maps of one block.
        valid: [B, M, rows, cols] bool, False where a modality had no valid observation.
    """
    if valid is None or maps.shape[1] == 1:
        return maps.mean(dim=1)
    weights = valid.to(maps.dtype).unsqueeze(2)  # [B, M, 1, rows, cols]
    count = weights.sum(dim=1)
    valid_mean = (maps * weights).sum(dim=1) / count.clamp(min=1.0)
    return torch.where(count > 0, valid_mean, maps.mean(dim=1))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    # 32 groups as in Wu & He (2018), fewer when the width is not a multiple of 32 or is
    # small: each group keeps 2 channels or more, so a 1x1 map (the PPM's single bin) has
    # more than one value to normalise.
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class ConvNormAct(nn.Sequential):
    """Convolution without bias, normalisation and ReLU: the unit of UPerNet."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class ViTPyramid(nn.Module):
    """Resize four single-scale ViT maps to 4×, 2×, 1× and 0.5× the token grid."""

    def __init__(self, dim: int, norm: str = "batch") -> None:
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            _norm(norm, dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.keep = nn.Identity()
        # ceil_mode keeps one cell for a grid of a single token.
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        if len(maps) != 4:
            raise InputError(f"the pyramid takes 4 feature maps, got {len(maps)}")
        ops = (self.up4, self.up2, self.keep, self.down2)
        return [op(x) for op, x in zip(ops, maps)]


class PyramidPooling(nn.Module):
    """Pyramid pooling module: average pools at several bin counts, projected and upsampled."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int], norm: str) -> None:
        super().__init__()
        self.pool_scales = tuple(int(scale) for scale in pool_scales)
        self.stages = nn.ModuleList(ConvNormAct(in_channels, channels, 1, norm) for _ in self.pool_scales)
        self.bottleneck = ConvNormAct(in_channels + len(self.pool_scales) * channels, channels, 3, norm)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outputs = [x]
        for scale, stage in zip(self.pool_scales, self.stages):
            pooled = stage(F.adaptive_avg_pool2d(x, scale))
            outputs.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False))
        return self.bottleneck(torch.cat(outputs, dim=1))


class UPerNetHead(nn.Module):
    """UPerNet decoder (Xiao et al., 2018) over a 4-level pyramid built from ViT features.

    Args:
        in_dim: width D of the encoder features.
        num_classes: number of output classes.
        channels: width of the PPM, FPN and fusion layers (512 in the UPerNet on ViT-Base
            of PANGAEA; smaller for small encoders).
        pool_scales: bin counts of the pyramid pooling module.
        dropout: dropout rate before the classifier.
        norm: ``batch`` (BatchNorm, as in UPerNet; training needs batches of 2 or more) or
            ``group`` (GroupNorm, independent of the batch size).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"a segmentation head needs at least one class, got num_classes={num_classes}")
        if norm not in NORMS:
            raise ConfigError(f"head norm {norm!r} is unknown; use one of {', '.join(NORMS)}")
        if channels < 1:
            raise ConfigError(f"head channels must be positive, got {channels}")
        self.num_classes = num_classes
        self.pyramid = ViTPyramid(in_dim, norm)
        self.ppm = PyramidPooling(in_dim, channels, pool_scales, norm)
        self.lateral = nn.ModuleList(ConvNormAct(in_dim, channels, 1, norm) for _ in range(3))
        self.smooth = nn.ModuleList(ConvNormAct(channels, channels, 3, norm) for _ in range(3))
        self.fuse = ConvNormAct(4 * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        """Return logits [B, K, 4·rows, 4·cols] from four maps [B, D, rows, cols], shallowest first."""
        levels = self.pyramid(maps)

        # Top-down pathway: the PPM output of the coarsest level flows into the finer ones.
        laterals = [conv(level) for conv, level in zip(self.lateral, levels[:3])]
        laterals.append(self.ppm(levels[3]))
        for index in range(len(laterals) - 1, 0, -1):
            finer = laterals[index - 1]
            laterals[index - 1] = finer + F.interpolate(
                laterals[index], size=finer.shape[-2:], mode="bilinear", align_corners=False
            )

        outputs = [conv(lateral) for conv, lateral in zip(self.smooth, laterals[:3])]
        outputs.append(laterals[3])
        size = outputs[0].shape[-2:]
        outputs = [outputs[0]] + [
            F.interpolate(output, size=size, mode="bilinear", align_corners=False) for output in outputs[1:]
        ]
        fused = self.fuse(torch.cat(outputs, dim=1))
        return self.classifier(self.dropout(fused))


def resample_logits(
    logits: Tensor,
    logits_gsd: float,
    output_size: tuple[int, int],
    output_gsd: float,
    mode: str = "bilinear",
) -> Tensor:
    """Resample maps anchored at the same top-left corner to another pixel size.

    Output pixel i covers ``[i·output_gsd, (i+1)·output_gsd)`` metres from the corner; its
    value is interpolated at its centre from the input pixels, whose centres sit at
    ``(j + 0.5)·logits_gsd``. Output pixels beyond the input's extent (the token grid drops
    the fraction of a token at the right and bottom edges) take the nearest edge value.
    When the output grid is a whole multiple of the input grid this equals
    ``F.interpolate(..., align_corners=False)``.

    Args:
        logits: [B, K, h, w].
        logits_gsd: pixel size of ``logits`` in metres.
        output_size: (rows, cols) of the output.
        output_gsd: pixel size of the output in metres.
        mode: ``bilinear`` or ``nearest``.
    """
    b, _, h, w = logits.shape
    rows, cols = output_size
    ratio = float(output_gsd) / float(logits_gsd)
    # grid_sample's normalised coordinates with align_corners=False: -1 and 1 are the outer
    # edges of the input, so a position p in input pixels maps to 2·p/size - 1.
    y = (torch.arange(rows, dtype=torch.float64, device=logits.device) + 0.5) * ratio
    x = (torch.arange(cols, dtype=torch.float64, device=logits.device) + 0.5) * ratio
    grid_y = (2.0 * y / h - 1.0).to(logits.dtype)
    grid_x = (2.0 * x / w - 1.0).to(logits.dtype)
    grid = torch.stack(torch.meshgrid(grid_y, grid_x, indexing="ij")[::-1], dim=-1)
    return F.grid_sample(
        logits, grid[None].expand(b, -1, -1, -1), mode=mode, padding_mode="border", align_corners=False
    )


@dataclass
class SegmentationOutput:
    """Logits of a :class:`Segmenter` on the requested output grid.

    Attributes:
        logits: [B, K, rows, cols] class scores before softmax.
        valid: [B, rows, cols] bool, False where no modality had a valid observation.
    """

    logits: Tensor
    valid: Tensor


class Segmenter(nn.Module):
    """RAMEN encoder plus UPerNet head: per-pixel class logits at any target GSD.

    The encoder is frozen by default: its weights take no gradient, it stays in eval
    mode, and it runs under ``torch.no_grad``. Unfreeze it with :meth:`set_encoder_frozen`
    (the fine-tuning recipe gives it its own learning rate).

    Args:
        encoder: a RAMEN encoder, usually pre-trained.
        num_classes: number of classes.
        blocks: four encoder blocks (numbered from 1) feeding the pyramid, shallowest
            first; default :func:`default_feature_blocks` of the encoder's depth.
        channels: width of the head.
        pool_scales: bin counts of the pyramid pooling module.
        dropout: dropout rate before the classifier.
        norm: normalisation of the head, ``batch`` or ``group``.
        freeze_encoder: whether the encoder starts frozen.
    """

    def __init__(
        self,
        encoder: RamenEncoder,
        num_classes: int,
        blocks: Sequence[int] | None = None,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str = "batch",
        freeze_encoder: bool = True,
    ) -> None:
        super().__init__()
        depth = encoder.config.depth
        blocks = tuple(default_feature_blocks(depth) if blocks is None else blocks)
        if len(blocks) != 4:
            raise ConfigError(f"the head takes exactly 4 encoder blocks, got {list(blocks)}")
        for block in blocks:
            if not (isinstance(block, int) and 1 <= block <= depth):
                raise ConfigError(f"encoder block {block!r} does not exist; blocks are numbered 1 to {depth}")
        if list(blocks) != sorted(blocks):
            raise ConfigError(f"encoder blocks must be given shallowest first, got {list(blocks)}")
        self.encoder = encoder
        self.blocks = blocks
        self.head = UPerNetHead(
            encoder.config.embed_dim, num_classes, channels=channels, pool_scales=pool_scales,
            dropout=dropout, norm=norm,
        )
        self.encoder_frozen = True
        self.set_encoder_frozen(freeze_encoder)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Freeze the encoder (no gradients, eval mode) or make it trainable."""
        self.encoder_frozen = bool(frozen)
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(not self.encoder_frozen)
        if self.encoder_frozen:
            self.encoder.eval()
        else:
            self.encoder.train(self.training)

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def head_logits(
        self, modalities: Sequence[ModalityInput], target_gsd: float
    ) -> tuple[Tensor, Tensor]:
        """Run encoder and head: logits [B, K, 4·rows, 4·cols] and token validity [B, rows, cols].

        The logits' pixels are ``target_gsd / 4`` metres, anchored at the top-left corner of
        the first modality.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            encoded = self.encoder(modalities, target_gsd, blocks=self.blocks)
        valid = encoded.valid
        maps = [fuse_modalities(encoded.maps(block), valid) for block in self.blocks]
        return self.head(maps), valid.any(dim=1)

    def predict(
        self,
        modalities: Sequence[ModalityInput],
        target_gsd: float,
        output_size: tuple[int, int] | None = None,
        output_gsd: float | None = None,
    ) -> SegmentationOutput:
        """Return logits and validity on an output grid anchored at the first modality's corner.

        Args:
            modalities: aligned modalities; the first one sets the grid.
            target_gsd: GSD in metres at which the encoder works.
            output_size: (rows, cols) of the output; default: the first modality's pixels.
            output_gsd: output pixel size in metres; default: the first modality's GSD.
        """
        first = modalities[0]
        if output_gsd is None:
            output_gsd = float(first.gsd)
        if output_size is None:
            output_size = (int(first.data.shape[-2]), int(first.data.shape[-1]))
        logits, valid = self.head_logits(modalities, target_gsd)
        logits = resample_logits(logits, target_gsd / HEAD_UPSAMPLING, output_size, output_gsd)
        valid_out = resample_logits(valid[:, None].float(), target_gsd, output_size, output_gsd, mode="nearest")
        return SegmentationOutput(logits=logits, valid=valid_out[:, 0] > 0.5)

    def forward(self, modalities: Sequence[ModalityInput], target_gsd: float) -> Tensor:
        """Return logits [B, K, H, W] on the pixel grid of the first modality."""
        return self.predict(modalities, target_gsd).logits
