"""Model sizes of RAMEN as one typed config."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ramen_core.errors import ConfigError


@dataclass(frozen=True)
class RamenConfig:
    """Architecture of the RAMEN encoder and its MAE decoder.

    The defaults are ViT-Base as pre-trained by the authors. The LTAE sizes are fixed in the
    reference code (16 heads of key size 16, date period 367 days) and ``embed_dim`` must be a
    multiple of ``ltae_heads``.

    Attributes:
        embed_dim: encoder width D.
        depth: number of transformer blocks of the encoder.
        num_heads: attention heads of each encoder block.
        mlp_ratio: hidden width of the block MLPs, as a multiple of the width.
        qkv_bias: whether the attention qkv projection has a bias.
        num_experts: pointwise experts of the GSD resampler.
        block_norm_eps: LayerNorm eps inside the transformer blocks. The reference inherits it
            from timm (1e-6 since timm 1.0.16, 1e-5 before), so the value used to train the
            official checkpoint is not known for sure.
        ltae_heads: heads of the temporal attention (L-TAE).
        ltae_key_dim: key size of each L-TAE head.
        ltae_period: period of the L-TAE date encoding, in days.
        decoder_embed_dim: MAE decoder width.
        decoder_depth: MAE decoder blocks.
        decoder_num_heads: attention heads of each decoder block.
        radar_projector: whether the model has the radar channel projector.
        elevation_projector: whether the model has the elevation channel projector.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_experts: int = 4
    block_norm_eps: float = 1e-6
    ltae_heads: int = 16
    ltae_key_dim: int = 16
    ltae_period: float = 367.0
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    radar_projector: bool = True
    elevation_projector: bool = True

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "num_experts", "ltae_heads", "ltae_key_dim",
                     "decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"model config: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.embed_dim % self.ltae_heads:
            raise ConfigError(
                f"model config: embed_dim {self.embed_dim} is not divisible by ltae_heads {self.ltae_heads}"
            )
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ConfigError(
                f"model config: decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )
        if self.embed_dim % 4 or self.decoder_embed_dim % 4:
            raise ConfigError("model config: embed_dim and decoder_embed_dim must be multiples of 4 "
                              "(the 2-D position encoding splits them into sine and cosine halves)")
        if not self.block_norm_eps > 0:
            raise ConfigError(f"model config: block_norm_eps must be positive, got {self.block_norm_eps!r}")

    @classmethod
    def base(cls, **overrides: Any) -> RamenConfig:
        """ViT-Base, the size of the official pre-trained model."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> RamenConfig:
        """A 64-wide, 2-block model for tests and CPU demos (the size of the parity fixtures)."""
        values: dict[str, Any] = dict(
            embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def small(cls, **overrides: Any) -> RamenConfig:
        """A 384-wide, 12-block model (ViT-Small widths)."""
        values: dict[str, Any] = dict(
            embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> RamenConfig:
        """Build a named size: ``tiny``, ``small`` or ``base``."""
        presets = {"tiny": cls.tiny, "small": cls.small, "base": cls.base}
        if name not in presets:
            raise ConfigError(f"unknown model size {name!r}; use one of {', '.join(presets)}")
        return presets[name](**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RamenConfig:
        """Build a config from a dict, rejecting unknown keys by name."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"model config: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> RamenConfig:
        return cls.from_dict(json.loads(text))
