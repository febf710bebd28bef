"""Read weight files of any supported layout into one flat state dict with ``encoder.*`` keys.

Supported layouts, detected from the file's first bytes rather than its extension:

- safetensors: ramen's own files (config in the header) or the official layout
  ``encoder.*`` / ``decoder.*``;
- a PyTorch Lightning ``.ckpt`` whose ``state_dict`` has ``model.encoder.*`` and
  ``model.decoder.*`` keys;
- an encoder-only state dict with unprefixed keys (``cls_token``, ``blocks.0...``), either
  bare or under ``state_dict``, as written by the authors' fine-tuning code.

Torch files are read with ``weights_only=True`` unless the caller trusts the file.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ramen_core.errors import WeightsError

logger = logging.getLogger(__name__)

PARTS = ("encoder", "decoder", "head")
TRUST_FLAG = "--trust-checkpoint"
# Common prefixes of the whole state dict that training wrappers add: Lightning modules keep
# the network in ``self.model``, DistributedDataParallel wraps it as ``module``.
_WRAPPER_PREFIXES = ("model.", "module.")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_2_PLUS = b"\x80"


@dataclass
class RawWeights:
    """Tensors read from a file, before they are checked against a model.

    Attributes:
        state_dict: flat dict whose keys start with ``encoder.``, ``decoder.`` or ``head.``.
        header: safetensors header metadata (empty for torch files).
        source_format: ``safetensors``, ``lightning`` or ``state_dict``.
    """

    state_dict: dict[str, Tensor]
    header: dict[str, str]
    source_format: str


def sniff_format(path: Path) -> str:
    """Return ``safetensors`` or ``torch`` from the first bytes of a file.

    Raises:
        WeightsError: the file is empty or neither format.
    """
    with path.open("rb") as handle:
        head = handle.read(16)
    if not head:
        raise WeightsError(f"weights file {str(path)!r} is empty; download or copy it again")
    # A safetensors file starts with the header size (u64, little endian) and then the
    # JSON header, whose first byte is "{". It is tested first because a header size whose
    # low byte is 0x80 makes the file start like a pickle.
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTOCOL_2_PLUS):
        return "torch"
    raise WeightsError(
        f"weights file {str(path)!r} is neither safetensors nor a PyTorch checkpoint "
        f"(first bytes {head[:8]!r}); it may be corrupt or another kind of file"
    )


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read every tensor and the header metadata of a safetensors file on CPU."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(
            f"weights file {str(path)!r} is not a readable safetensors file ({error}); "
            f"it may be truncated or corrupt, so download or copy it again"
        ) from error
    return tensors, header


def _rejected_global(error: Exception) -> str | None:
    """Return the Python object that ``weights_only`` rejected, if that is why loading failed."""
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if match:
        return match.group(1)
    if "Weights only load failed" in str(error) and "Unsupported" in str(error):
        return "an object that is not a tensor"
    return None


def read_torch(path: Path, trust_checkpoint: bool = False) -> Any:
    """Load a torch checkpoint on CPU, with ``weights_only`` unless the file is trusted.

    Raises:
        WeightsError: the file is corrupt or truncated, or contains pickled Python objects
            and ``trust_checkpoint`` is False.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as error:
        rejected = None if trust_checkpoint else _rejected_global(error)
        if rejected:
            raise WeightsError(
                f"checkpoint {str(path)!r} contains pickled Python objects ({rejected}), which a safe "
                f"load does not run. If you trust the file, load it with {TRUST_FLAG} "
                f"(trust_checkpoint=True in Python), which can execute code stored in it; better, "
                f"convert it once with `ramen weights import SRC -o DST.safetensors {TRUST_FLAG}`"
            ) from error
        raise _corrupt(path, error) from error
    except ImportError as error:
        # Only a trusted load imports the classes that the pickle names.
        raise WeightsError(
            f"checkpoint {str(path)!r} pickles objects of a module that is not installed ({error}); "
            f"install that module, or load the file where it is installed and save its state_dict alone"
        ) from error
    except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile, ValueError, AttributeError) as error:
        # Truncated zip archives raise RuntimeError, truncated pickles EOFError or
        # KeyError, depending on where the bytes end.
        raise _corrupt(path, error) from error


def _corrupt(path: Path, error: Exception) -> WeightsError:
    reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
    return WeightsError(
        f"checkpoint {str(path)!r} cannot be read ({reason[:200]}); it is corrupt or truncated, "
        f"so download or copy it again"
    )


def _extract_state_dict(path: Path, payload: Any) -> tuple[dict[str, Any], str]:
    """Find the state dict inside a loaded torch object."""
    if not isinstance(payload, Mapping):
        raise WeightsError(
            f"checkpoint {str(path)!r} contains a {type(payload).__name__}, not a dict of tensors; "
            f"save the model's state_dict() instead of the module"
        )
    if "state_dict" in payload and isinstance(payload["state_dict"], Mapping):
        state = dict(payload["state_dict"])
        lightning = any(key in payload for key in ("pytorch-lightning_version", "epoch", "global_step"))
        return state, "lightning" if lightning else "state_dict"
    for key in ("model", "model_state_dict"):
        if key in payload and isinstance(payload[key], Mapping):
            return dict(payload[key]), "state_dict"
    return dict(payload), "state_dict"


def _strip_common_prefix(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def normalize_keys(path: Path, state: Mapping[str, Any]) -> dict[str, Tensor]:
    """Map any supported key layout onto ``encoder.*`` / ``decoder.*`` / ``head.*``.

    Raises:
        WeightsError: a value is not a tensor, or the keys mix prefixed and unprefixed names.
    """
    not_tensors = sorted(key for key, value in state.items() if not isinstance(value, Tensor))
    if not_tensors:
        raise WeightsError(f"checkpoint {str(path)!r}: entries that are not tensors: {format_keys(not_tensors)}")
    flat = _strip_common_prefix(dict(state))
    prefixed = [key for key in flat if key.split(".", 1)[0] in PARTS]
    if not prefixed:
        # The authors' fine-tuning code saves the bare encoder without a prefix.
        logger.info("%s: unprefixed keys, read as an encoder-only state dict", path)
        return {f"encoder.{key}": value for key, value in flat.items()}
    unprefixed = sorted(set(flat) - set(prefixed))
    if unprefixed:
        raise WeightsError(
            f"checkpoint {str(path)!r} mixes keys under encoder./decoder./head. with other keys: "
            f"{format_keys(unprefixed)}; remove them or save only the model's state_dict()"
        )
    return flat


def read_weights_file(path: Path, trust_checkpoint: bool = False) -> RawWeights:
    """Read a weights file of any supported layout."""
    kind = sniff_format(path)
    if kind == "safetensors":
        tensors, header = read_safetensors(path)
        return RawWeights(normalize_keys(path, tensors), header, "safetensors")
    payload = read_torch(path, trust_checkpoint)
    state, source_format = _extract_state_dict(path, payload)
    return RawWeights(normalize_keys(path, state), {}, source_format)


def format_keys(keys: list[str], limit: int = 20) -> str:
    """Format keys for an error message, naming at most ``limit`` of them."""
    listed = ", ".join(keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{listed}{more}"
