"""Save, import and load RAMEN weights.

ramen's own format is safetensors with the model config in the header
(:func:`save_weights`). :func:`load_weights` also imports the official checkpoints
(Lightning ``.ckpt``, unprefixed encoder state dicts, safetensors), reads torch files with
``weights_only=True`` unless the caller trusts them, infers the config from tensor shapes
where none is stored, and checks every key and shape strictly. A weights argument may be
an ``hf://owner/repo/file`` URI, fetched into a cache with huggingface_hub.
"""

from ramen_core.weights.checkpoint import TRUST_FLAG
from ramen_core.weights.convert import WeightsSummary, download_weights, import_weights, summarize_weights
from ramen_core.weights.hub import DEFAULT_WEIGHTS, resolve_weights
from ramen_core.weights.infer import infer_config
from ramen_core.weights.load import (
    LoadedWeights,
    build_encoder,
    build_mae,
    load_encoder,
    load_mae,
    load_weights,
)
from ramen_core.weights.save import save_weights, sha256_file

__all__ = [
    "DEFAULT_WEIGHTS",
    "TRUST_FLAG",
    "LoadedWeights",
    "WeightsSummary",
    "build_encoder",
    "build_mae",
    "download_weights",
    "import_weights",
    "infer_config",
    "load_encoder",
    "load_mae",
    "load_weights",
    "resolve_weights",
    "save_weights",
    "sha256_file",
    "summarize_weights",
]
