"""Translate the authors' configuration dictionaries into ramen types.

The reference code describes data as nested dicts keyed by dataset, then modality: band
lists that mix wavelengths in nm (optical), names such as ``asc_vv`` (radar) and ``dsm``
(elevation), with native GSDs and chip sizes. These helpers read that form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ramen_core.bands import BandSpec
from ramen_core.model.config import RamenConfig

_RADAR_MODALITIES = ("s1", "s1_des", "alos")


def bands_from_reference(entries: Sequence[float | str]) -> list[BandSpec]:
    """Parse a reference band list: wavelengths in nm, radar names or elevation kinds."""
    return [BandSpec.parse(entry) for entry in entries]


def config_from_reference(settings: dict[str, Any]) -> RamenConfig:
    """Build a :class:`RamenConfig` from a reference-style dict with ``encoder``, ``decoder``, ``data``."""
    encoder = settings["encoder"]
    decoder = settings.get("decoder", {})
    ltae = encoder.get("ltae", {})
    modalities = settings.get("data", {}).get("modalities", {})
    listed = {name for names in modalities.values() for name in names}
    values: dict[str, Any] = dict(
        embed_dim=int(encoder["embed_dim"]),
        depth=int(encoder["depth"]),
        num_heads=int(encoder["num_heads"]),
        mlp_ratio=float(encoder.get("mlp_ratio", 4.0)),
        qkv_bias=bool(encoder.get("qkv_bias", True)),
        num_experts=int(encoder.get("resampler_num_experts", 4)),
        ltae_heads=int(ltae.get("n_head", 16)),
        ltae_key_dim=int(ltae.get("d_k", 16)),
        ltae_period=float(ltae.get("T", 367)),
        radar_projector=bool(listed & set(_RADAR_MODALITIES)) if listed else True,
        elevation_projector=("dem" in listed) if listed else True,
    )
    if decoder:
        values.update(
            decoder_embed_dim=int(decoder["decoder_embed_dim"]),
            decoder_depth=int(decoder["depth"]),
            decoder_num_heads=int(decoder["num_heads"]),
        )
    return RamenConfig(**values)
