"""Load weights of any supported layout and build the encoder or the MAE from them."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ramen_core.errors import ConfigError, WeightsError
from ramen_core.model import RamenConfig, RamenEncoder, RamenMAE
from ramen_core.weights.checkpoint import format_keys, read_weights_file
from ramen_core.weights.hub import resolve_weights
from ramen_core.weights.infer import infer_config
from ramen_core.weights.model_keys import check_against_config, parts_of
from ramen_core.weights.save import CONFIG_KEY, FORMAT_NAME, RESERVED_METADATA, sha256_file

logger = logging.getLogger(__name__)

WeightsSource = str | os.PathLike[str]
_BATCHNORM_BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")


@dataclass
class LoadedWeights:
    """Weights read from a file and checked against their config.

    Attributes:
        state_dict: flat dict with ``encoder.*``, optional ``decoder.*`` and ``head.*`` keys.
        config: the model config, from the file's header or inferred from tensor shapes.
        metadata: extra header metadata of a ramen file (``sensors``, ``head``, ...);
            empty for imported checkpoints.
        sha256: hex SHA-256 of the file.
        path: the local file (the cached copy for a hub URI).
        source_format: ``ramen``, ``safetensors``, ``lightning`` or ``state_dict``.
        config_inferred: whether ``config`` was inferred from shapes rather than stored.
    """

    state_dict: dict[str, Tensor]
    config: RamenConfig
    metadata: dict[str, str]
    sha256: str
    path: Path
    source_format: str = FORMAT_NAME
    config_inferred: bool = False
    parts: list[str] = field(default_factory=list)

    def part(self, name: str) -> dict[str, Tensor]:
        """Return the tensors of one part (``encoder``, ``decoder``, ``head``) without its prefix."""
        prefix = f"{name}."
        return {key[len(prefix):]: value for key, value in self.state_dict.items() if key.startswith(prefix)}

    def num_parameters(self, name: str | None = None) -> int:
        """Count the parameter elements of one part, or of the whole file.

        BatchNorm running statistics are buffers, not parameters, so they are left out,
        which makes the count comparable with ``sum(p.numel() for p in model.parameters())``.
        """
        state = self.part(name) if name else self.state_dict
        return sum(
            tensor.numel() for key, tensor in state.items() if not key.endswith(_BATCHNORM_BUFFERS)
        )


def _stored_config(header: dict[str, str], path: Path) -> RamenConfig | None:
    if header.get("format") != FORMAT_NAME:
        return None
    text = header.get(CONFIG_KEY)
    if text is None:
        raise WeightsError(f"ramen weights file {str(path)!r} has no {CONFIG_KEY!r} header entry; re-save it")
    try:
        return RamenConfig.from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError, ConfigError) as error:
        raise WeightsError(f"ramen weights file {str(path)!r}: invalid {CONFIG_KEY!r} header ({error})") from error


def load_weights(
    path_or_uri: WeightsSource,
    trust_checkpoint: bool = False,
    *,
    config: RamenConfig | None = None,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    cache_dir: WeightsSource | None = None,
) -> LoadedWeights:
    """Read a weights file and check it strictly against its config.

    Args:
        path_or_uri: a local ``.safetensors`` / ``.ckpt`` / state-dict file, or an
            ``hf://owner/repo/file`` URI.
        trust_checkpoint: load torch files with ``weights_only=False``, which runs any
            Python code pickled in them. Only for files from a trusted source.
        config: use this config instead of the stored or inferred one.
        num_heads: encoder attention heads for a checkpoint without a stored config (head
            counts cannot be read from shapes; see :mod:`ramen_core.weights.infer`).
        decoder_num_heads: the same for the MAE decoder.
        cache_dir: download cache for hub URIs (default ``RAMEN_CACHE_DIR``).

    Raises:
        WeightsError: the file is missing, unreadable, refused by the safe loader, or its
            keys and shapes do not match the config.
    """
    path = resolve_weights(path_or_uri, cache_dir=cache_dir)
    raw = read_weights_file(path, trust_checkpoint=trust_checkpoint)
    stored = _stored_config(raw.header, path)
    heads = {"num_heads": num_heads, "decoder_num_heads": decoder_num_heads}
    inferred = config is None and stored is None
    if config is None and stored is not None:
        config = stored
        requested = {name: value for name, value in heads.items() if value is not None}
        if requested:
            logger.warning("%s stores its config; overriding %s as requested", path, requested)
            config = RamenConfig.from_dict({**config.to_dict(), **requested})
    elif config is None:
        config = infer_config(raw.state_dict, **heads)
    check_against_config(raw.state_dict, config, source=f"weights file {str(path)!r}")

    source_format = FORMAT_NAME if stored is not None else raw.source_format
    metadata = {}
    if stored is not None:
        metadata = {key: value for key, value in raw.header.items() if key not in RESERVED_METADATA}
    loaded = LoadedWeights(
        state_dict=raw.state_dict,
        config=config,
        metadata=metadata,
        sha256=sha256_file(path),
        path=path,
        source_format=source_format,
        config_inferred=inferred,
        parts=parts_of(raw.state_dict),
    )
    logger.info("loaded %s (%s, parts %s, sha256 %s)", path, source_format, ", ".join(loaded.parts), loaded.sha256[:12])
    return loaded


def _load_module(module_class: type[nn.Module], config: RamenConfig, state: dict[str, Tensor], device: str | torch.device) -> Any:
    """Build a module on the meta device and assign copies of the tensors, skipping random init.

    Floating-point tensors are cast to float32, the dtype the model computes in. The copies
    get freshly allocated, aligned memory: safetensors hands out tensors at arbitrary byte
    offsets, and CPU kernels pick other code paths for misaligned weights, which changes
    outputs in the last bits (2.8e-6 on the parity fixtures).
    """
    state = {
        key: value.to(torch.float32, copy=True) if value.is_floating_point() else value.clone()
        for key, value in state.items()
    }
    with torch.device("meta"):
        module = module_class(config)
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:  # the keys were checked before, so this is unexpected
        raise WeightsError(f"failed to load weights into {module_class.__name__}: {error}") from error
    left_on_meta = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]
    if left_on_meta:
        raise WeightsError(f"{module_class.__name__} has tensors that the weights do not set: {format_keys(left_on_meta)}")
    return module.to(device).eval()


def build_encoder(loaded: LoadedWeights, device: str | torch.device = "cpu") -> RamenEncoder:
    """Build the encoder of loaded weights, in eval mode.

    Raises:
        WeightsError: the weights have no encoder.
    """
    encoder_state = loaded.part("encoder")
    if not encoder_state:
        raise WeightsError(f"weights {str(loaded.path)!r} have no encoder.* tensors (parts: {loaded.parts})")
    encoder: RamenEncoder = _load_module(RamenEncoder, loaded.config, encoder_state, device)
    return encoder


def build_mae(loaded: LoadedWeights, device: str | torch.device = "cpu", allow_missing_decoder: bool = False) -> RamenMAE:
    """Build the MAE (encoder and decoder) of loaded weights, in eval mode.

    Args:
        loaded: weights from :func:`load_weights`.
        device: device of the returned model.
        allow_missing_decoder: when the file has only an encoder (the published checkpoint),
            keep a freshly initialised decoder instead of raising. A warning is logged.

    Raises:
        WeightsError: the weights have no encoder, or no decoder and ``allow_missing_decoder``
            is False.
    """
    if "encoder" not in loaded.parts:
        raise WeightsError(f"weights {str(loaded.path)!r} have no encoder.* tensors (parts: {loaded.parts})")
    if "decoder" in loaded.parts:
        state = {key: value for key, value in loaded.state_dict.items() if not key.startswith("head.")}
        mae: RamenMAE = _load_module(RamenMAE, loaded.config, state, device)
        return mae
    if not allow_missing_decoder:
        raise WeightsError(
            f"weights {str(loaded.path)!r} hold an encoder only, without the MAE decoder; use load_encoder, "
            f"or pass allow_missing_decoder=True to start the decoder from random weights"
        )
    logger.warning("%s has no decoder; the MAE decoder starts from random weights", loaded.path)
    mae = RamenMAE(loaded.config)
    mae.encoder = build_encoder(loaded)
    return mae.to(device).eval()


def load_encoder(
    path_or_uri: WeightsSource,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    **options: Any,
) -> RamenEncoder:
    """Load the encoder of a weights file or hub URI, strictly, in eval mode.

    ``options`` are passed to :func:`load_weights` (``config``, ``num_heads``, ``cache_dir``).
    """
    return build_encoder(load_weights(path_or_uri, trust_checkpoint, **options), device)


def load_mae(
    path_or_uri: WeightsSource,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    allow_missing_decoder: bool = False,
    **options: Any,
) -> RamenMAE:
    """Load the MAE of a weights file or hub URI, strictly, in eval mode (see :func:`build_mae`)."""
    loaded = load_weights(path_or_uri, trust_checkpoint, **options)
    return build_mae(loaded, device, allow_missing_decoder)
