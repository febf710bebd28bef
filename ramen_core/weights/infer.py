"""Infer a :class:`RamenConfig` from the tensor shapes of a state dict.

Shapes give the widths, depths, expert count, MLP ratio, L-TAE sizes and which projectors
exist. They do not give:

- the attention head counts. A 768-wide encoder gets 12 heads (ViT-Base, the official
  model) and any other width one head per 64 channels. A 512-wide decoder gets 16 heads
  (the official decoder) and any other width one head per 32 channels. Pass the counts
  when a checkpoint was trained with others, because wrong counts load without error
  but compute other features;
- the LayerNorm eps of the blocks and the L-TAE date period, which keep their defaults.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ramen_core.errors import WeightsError
from ramen_core.model import RamenConfig

logger = logging.getLogger(__name__)

_BLOCK_INDEX = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.")
_EXPERT_INDEX = re.compile(r"^encoder\.resampler\.experts\.(\d+)\.weight$")


def default_num_heads(embed_dim: int) -> int:
    """Return the encoder head count assumed for a width: 12 at 768, else one per 64 channels."""
    if embed_dim == 768:
        return 12
    return _heads_for(embed_dim, 64)


def default_decoder_num_heads(decoder_embed_dim: int) -> int:
    """Return the decoder head count assumed for a width: 16 at 512, else one per 32 channels."""
    if decoder_embed_dim == 512:
        return 16
    return _heads_for(decoder_embed_dim, 32)


def _heads_for(dim: int, head_dim: int) -> int:
    heads = max(1, dim // head_dim)
    while dim % heads:  # the width must split evenly
        heads -= 1
    return heads


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise WeightsError(
            f"cannot infer the model config: key {key!r} is missing, so this is not a RAMEN "
            f"checkpoint, or it was saved from another model"
        )
    return tuple(state[key].shape)


def _count(state: Mapping[str, Tensor], pattern: re.Pattern[str], part: str | None = None) -> int:
    indices = set()
    for key in state:
        match = pattern.match(key)
        if match and (part is None or match.group(1) == part):
            indices.add(int(match.group(match.lastindex or 1)))
    return max(indices) + 1 if indices else 0


def infer_config(
    state: Mapping[str, Tensor],
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    **overrides: Any,
) -> RamenConfig:
    """Build the config whose model has the shapes of ``state`` (keys ``encoder.*``, ``decoder.*``).

    Args:
        state: flat state dict.
        num_heads: encoder heads; :func:`default_num_heads` when None.
        decoder_num_heads: decoder heads; :func:`default_decoder_num_heads` when None.
        **overrides: any other :class:`RamenConfig` field, such as ``block_norm_eps``.

    Raises:
        WeightsError: a key that the inference needs is missing.
    """
    embed_dim = _shape(state, "encoder.cls_token")[-1]
    depth = _count(state, _BLOCK_INDEX, "encoder")
    if depth == 0:
        raise WeightsError("cannot infer the model config: the encoder has no encoder.blocks.* keys")
    fc1_width = _shape(state, "encoder.blocks.0.mlp.fc1.weight")[0]
    ltae_heads, ltae_key_dim = _shape(state, "encoder.ltae.attention_heads.Q")
    values: dict[str, Any] = dict(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads or default_num_heads(embed_dim),
        mlp_ratio=fc1_width / embed_dim,
        qkv_bias="encoder.blocks.0.attn.qkv.bias" in state,
        num_experts=_count(state, _EXPERT_INDEX),
        ltae_heads=ltae_heads,
        ltae_key_dim=ltae_key_dim,
        radar_projector=any(key.startswith("encoder.radar_projector.") for key in state),
        elevation_projector=any(key.startswith("encoder.dem_projector.") for key in state),
    )
    if "decoder.decoder_embed.weight" in state:
        decoder_dim = _shape(state, "decoder.decoder_embed.weight")[0]
        values.update(
            decoder_embed_dim=decoder_dim,
            decoder_depth=_count(state, _BLOCK_INDEX, "decoder"),
            decoder_num_heads=decoder_num_heads or default_decoder_num_heads(decoder_dim),
        )
    elif decoder_num_heads is not None:
        values["decoder_num_heads"] = decoder_num_heads
    values.update(overrides)
    if values.get("decoder_depth") == 0:
        raise WeightsError("cannot infer the model config: the decoder has no decoder.blocks.* keys")
    config = RamenConfig.from_dict(values)
    logger.info("inferred model config from shapes: %s", config.to_json())
    return config
