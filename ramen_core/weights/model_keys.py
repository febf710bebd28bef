"""Strict comparison of a state dict with the keys and shapes of the model a config builds."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import Tensor

from ramen_core.errors import WeightsError
from ramen_core.model import RamenConfig, RamenMAE
from ramen_core.weights.checkpoint import format_keys


@functools.lru_cache(maxsize=8)
def expected_shapes(config: RamenConfig) -> dict[str, tuple[int, ...]]:
    """Return key to shape of every parameter and buffer of ``RamenMAE(config)``.

    The model is built on the meta device, so no memory is allocated.
    """
    with torch.device("meta"):
        model = RamenMAE(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def parts_of(state: Mapping[str, Tensor]) -> list[str]:
    """Return which of ``encoder``, ``decoder`` and ``head`` have keys in ``state``."""
    found = {key.split(".", 1)[0] for key in state}
    return [part for part in ("encoder", "decoder", "head") if part in found]


def check_against_config(
    state: Mapping[str, Tensor],
    config: RamenConfig,
    source: str,
    parts: tuple[str, ...] = ("encoder", "decoder"),
) -> None:
    """Check that every present part among ``parts`` has exactly the model's keys and shapes.

    A part is checked only when ``state`` has at least one key of it, so an encoder-only
    file passes. ``head.*`` keys are never checked here because the head's architecture is
    not part of :class:`RamenConfig`.

    Args:
        state: flat state dict.
        config: the config to compare with.
        source: what the tensors are, for the message, such as ``weights file 'x.ckpt'``.
        parts: the parts to check.

    Raises:
        WeightsError: listing missing keys, unexpected keys and shape mismatches.
    """
    expected = expected_shapes(config)
    problems: list[str] = []
    for part in parts:
        prefix = f"{part}."
        present = {key for key in state if key.startswith(prefix)}
        if not present:
            continue
        expected_keys = {key for key in expected if key.startswith(prefix)}
        missing = sorted(expected_keys - present)
        unexpected = sorted(present - expected_keys)
        mismatched = sorted(
            f"{key} (file {tuple(state[key].shape)}, model {expected[key]})"
            for key in present & expected_keys
            if tuple(state[key].shape) != expected[key]
        )
        if missing:
            problems.append(f"missing {part} keys: {format_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected {part} keys: {format_keys(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {format_keys(mismatched)}")
    if problems:
        raise WeightsError(
            f"{source}: the tensors do not match the model config ({config.to_json()}): "
            + "; ".join(problems)
            + ". Check that the file is a RAMEN checkpoint and that the config (head counts, "
            "projectors) is the one it was trained with"
        )
