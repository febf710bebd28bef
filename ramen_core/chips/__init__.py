"""Chip datasets: aligned multimodal chips in sharded safetensors files, with a manifest.

Build one from local rasters with :func:`build_chips` and a :class:`ChipSpec`, or from a
STAC search with :func:`build_chips_from_stac` (both behind ``ramen chips``), and compute
normalisation statistics with :func:`compute_stats`.
Read chips at random with :class:`ChipDataset`, or stream them shard by shard and rank by
rank with :class:`ChipStream`. :func:`collate_chips` and :func:`to_modality_inputs` turn
chips into model inputs. :mod:`ramen_core.chips.format`
describes the files.
"""

from ramen_core.chips.build import build_chips
from ramen_core.chips.dataset import ChipDataset, ChipStream, collate_chips, day_of_year, to_modality_inputs
from ramen_core.chips.format import (
    ChannelStats,
    LabelInfo,
    Manifest,
    ModalityInfo,
    SceneInfo,
    ShardInfo,
    read_manifest,
    write_manifest,
)
from ramen_core.chips.spec import ChipSpec, LabelSpec, ModalitySpec, SceneSpec, SourceSpec, chip_spec_from_dict, load_chip_spec
from ramen_core.chips.stac import build_chips_from_stac, chips_from_cubes
from ramen_core.chips.stats import compute_stats

__all__ = [
    "ChannelStats",
    "ChipDataset",
    "ChipSpec",
    "ChipStream",
    "LabelInfo",
    "LabelSpec",
    "Manifest",
    "ModalityInfo",
    "ModalitySpec",
    "SceneInfo",
    "SceneSpec",
    "ShardInfo",
    "SourceSpec",
    "build_chips",
    "build_chips_from_stac",
    "chip_spec_from_dict",
    "chips_from_cubes",
    "collate_chips",
    "compute_stats",
    "day_of_year",
    "load_chip_spec",
    "read_manifest",
    "to_modality_inputs",
    "write_manifest",
]
