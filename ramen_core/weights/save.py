"""ramen's own weights format: safetensors with the model config in the header.

Header metadata (all values are strings, as safetensors requires):

- ``format``: ``ramen``; ``format_version``: ``1``;
- ``ramen_config``: :meth:`RamenConfig.to_json` of the model;
- any extra keys the caller passes, such as ``sensors``, ``normalization``, ``head`` or
  ``classes`` (JSON strings by convention).

Tensor keys are ``encoder.*``, optionally ``decoder.*`` (MAE decoder) and ``head.*``
(a fine-tuned head, which this module does not check).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor, nn

from ramen_core._atomic import atomic_path
from ramen_core.errors import OutputError, WeightsError
from ramen_core.model import RamenConfig, RamenEncoder
from ramen_core.weights.checkpoint import normalize_keys
from ramen_core.weights.model_keys import check_against_config

logger = logging.getLogger(__name__)

FORMAT_NAME = "ramen"
FORMAT_VERSION = "1"
CONFIG_KEY = "ramen_config"
RESERVED_METADATA = ("format", "format_version", CONFIG_KEY)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _state_of(module_or_state_dict: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(module_or_state_dict, RamenEncoder):
        return {f"encoder.{key}": value for key, value in module_or_state_dict.state_dict().items()}
    if isinstance(module_or_state_dict, nn.Module):
        return dict(module_or_state_dict.state_dict())
    return dict(module_or_state_dict)


def _detached_cpu(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Copy tensors to contiguous CPU memory; safetensors rejects tensors that share storage."""
    tensors: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous()
        storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and storage in seen:
            tensor = tensor.clone()
        seen.add(storage)
        tensors[key] = tensor
    return tensors


def build_header(config: RamenConfig, metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Return the header metadata of a ramen weights file.

    Raises:
        WeightsError: a metadata key is reserved or a value is not a string.
    """
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, CONFIG_KEY: config.to_json()}
    for key, value in (metadata or {}).items():
        if key in RESERVED_METADATA:
            raise WeightsError(f"metadata key {key!r} is reserved for ramen; rename it")
        if not isinstance(key, str) or not isinstance(value, str):
            raise WeightsError(
                f"metadata {key!r}: safetensors metadata values must be strings, got "
                f"{type(value).__name__}; encode structured values with json.dumps"
            )
        header[key] = value
    return header


def save_weights(
    path: str | os.PathLike[str],
    module_or_state_dict: nn.Module | Mapping[str, Tensor],
    config: RamenConfig,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save weights as safetensors with the config in the header, atomically.

    The file is written to a temporary file in the same folder, then renamed over ``path``,
    so a crash never leaves a half-written file behind.

    Args:
        path: output ``.safetensors`` file.
        module_or_state_dict: a :class:`RamenEncoder` (saved under ``encoder.``), a
            :class:`RamenMAE` or any module whose state dict has ``encoder.``, ``decoder.`` and
            ``head.`` keys, or such a state dict. Unprefixed keys are read as an encoder.
        config: the model config; the encoder and decoder keys must match it exactly.
        metadata: extra string metadata, for example ``{"sensors": json.dumps([...])}``.

    Returns:
        The path written.

    Raises:
        WeightsError: the tensors do not match ``config``, or the metadata is invalid.
        OutputError: the file cannot be written.
    """
    path = Path(path)
    state = normalize_keys(path, _state_of(module_or_state_dict))
    if not state:
        raise WeightsError(f"nothing to save to {str(path)!r}: the state dict is empty")
    check_against_config(state, config, source=f"the tensors to save to {str(path)!r}")
    header = build_header(config, metadata)
    tensors = _detached_cpu(state)

    try:
        with atomic_path(path, what="weights") as temporary:
            save_file(tensors, temporary, metadata=header)
    except (ValueError, RuntimeError) as error:
        raise OutputError(f"cannot write weights to {str(path)!r}: {error}") from error
    logger.info("saved %d tensors to %s", len(tensors), path)
    return path

