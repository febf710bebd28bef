"""Conversions and summaries behind ``ramen weights``: import, info, download."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ramen_core.errors import WeightsError
from ramen_core.model import RamenConfig
from ramen_core.weights.hub import DEFAULT_WEIGHTS, download_hub_file, is_hub_uri
from ramen_core.weights.load import LoadedWeights, load_weights
from ramen_core.weights.save import save_weights

logger = logging.getLogger(__name__)


@dataclass
class WeightsSummary:
    """Summary of a weights file, as ``ramen weights info`` prints it.

    Attributes:
        path: the local file.
        sha256: hex SHA-256 of the file.
        source_format: ``ramen``, ``safetensors``, ``lightning`` or ``state_dict``.
        config: the model config.
        config_inferred: whether the config was inferred from tensor shapes (head counts
            then follow the documented default rule).
        parts: which of encoder, decoder and head are present.
        parameters: number of float elements per part.
        size_bytes: file size.
        metadata: extra header metadata.
    """

    path: Path
    sha256: str
    source_format: str
    config: RamenConfig
    config_inferred: bool
    parts: list[str]
    parameters: dict[str, int]
    size_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())


def summarize_weights(loaded: LoadedWeights) -> WeightsSummary:
    """Summarise loaded weights: config, parts, parameter counts and checksum."""
    return WeightsSummary(
        path=loaded.path,
        sha256=loaded.sha256,
        source_format=loaded.source_format,
        config=loaded.config,
        config_inferred=loaded.config_inferred,
        parts=list(loaded.parts),
        parameters={part: loaded.num_parameters(part) for part in loaded.parts},
        size_bytes=loaded.path.stat().st_size,
        metadata=dict(loaded.metadata),
    )


def import_weights(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    trust_checkpoint: bool = False,
    metadata: dict[str, str] | None = None,
    **options: Any,
) -> LoadedWeights:
    """Convert any supported weights file or hub URI into ramen's safetensors format.

    The output header records the source file name, its SHA-256 and its format under
    ``source``, ``source_sha256`` and ``source_format``.

    Args:
        source: a checkpoint, state dict or safetensors file, or an ``hf://`` URI.
        destination: the ``.safetensors`` file to write (atomically).
        trust_checkpoint: see :func:`load_weights`.
        metadata: extra string metadata for the output header.
        **options: passed to :func:`load_weights` (``config``, ``num_heads``,
            ``decoder_num_heads``, ``cache_dir``).

    Returns:
        The weights read back from ``destination``.

    Raises:
        WeightsError: the source cannot be read or does not match its config, or the
            destination is the source itself.
    """
    loaded = load_weights(source, trust_checkpoint, **options)
    destination = Path(destination)
    if destination.exists() and destination.resolve() == loaded.path.resolve():
        raise WeightsError(f"import would overwrite its source {str(destination)!r}; choose another output file")
    if loaded.config_inferred:
        logger.warning(
            "%s stores no config: inferred it from tensor shapes with %d encoder heads and %d decoder heads "
            "(head counts are not visible in shapes; pass them if the model was trained with others)",
            loaded.path, loaded.config.num_heads, loaded.config.decoder_num_heads,
        )
    header = dict(loaded.metadata)
    header.update(
        source=str(source) if is_hub_uri(source) else loaded.path.name,
        source_sha256=loaded.sha256,
        source_format=loaded.source_format,
    )
    header.update(metadata or {})
    save_weights(destination, loaded.state_dict, loaded.config, header)
    return load_weights(destination)


def download_weights(uri: str = DEFAULT_WEIGHTS, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fetch a hub file into the cache ahead of time and return its local path.

    Raises:
        WeightsError: ``uri`` is not an ``hf://`` URI, or the download failed.
    """
    if not is_hub_uri(uri):
        raise WeightsError(f"{uri!r} is not a hub URI; expected hf://OWNER/REPO/FILE, for example {DEFAULT_WEIGHTS}")
    return download_hub_file(uri, cache_dir)
