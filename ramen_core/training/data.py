"""The chip datasets of a pre-training run: checked against the recipe, streamed per rank."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ramen_core.bands import BandSpec
from ramen_core.chips import ChipDataset, ChipStream, Manifest, collate_chips, to_modality_inputs
from ramen_core.chips.dataset import Chip
from ramen_core.errors import ConfigError, InputError
from ramen_core.model import ModalityInput, grid_shape
from ramen_core.training.recipe import DatasetRecipe, Recipe
from ramen_core.training.sampling import StepPlan

logger = logging.getLogger(__name__)


def _same_physics(expected: BandSpec, actual: BandSpec) -> bool:
    if expected.kind != actual.kind:
        return False
    if expected.kind == "optical":
        return abs(float(expected.wavelength_nm or 0) - float(actual.wavelength_nm or 0)) < 1e-3
    if expected.kind == "radar":
        return (expected.polarisation, expected.orbit) == (actual.polarisation, actual.orbit)
    return expected.elevation == actual.elevation


def _describe(band: BandSpec) -> str:
    if band.kind == "optical":
        return f"{band.wavelength_nm:g}"
    if band.kind == "radar":
        return band.radar_key
    return str(band.elevation)


def check_dataset(recipe: DatasetRecipe, manifest: Manifest, normalization: str, mask_ratio: float = 0.75) -> None:
    """Check that a chip dataset provides what the recipe expects of it.

    Args:
        recipe: the dataset's part of the recipe.
        manifest: the chip dataset's manifest.
        normalization: ``dataset`` (statistics needed) or ``none``.
        mask_ratio: share of tokens masked at each step.

    Raises:
        ConfigError: a modality is missing, an expected GSD, chip size or band list differs,
            statistics are missing, a target GSD leaves no token (or no masked token) in a
            chip, or a target GSD is finer than the finest native GSD of the chips.
    """
    prefix = f"datasets.{recipe.name}"
    where = f"chip dataset {manifest.name!r} ({recipe.path})"
    for name in recipe.modalities:
        if name not in manifest.modalities:
            raise ConfigError(
                f"recipe key '{prefix}.modalities': {where} has no modality {name!r}; it has "
                f"{', '.join(manifest.modalities)}"
            )
    for name, gsd in recipe.native_gsd.items():
        actual = manifest.modalities[name].gsd
        if abs(actual - gsd) > 1e-6 * gsd:
            raise ConfigError(f"recipe key '{prefix}.native_gsd.{name}': the recipe expects {gsd:g} m but {where} stores {actual:g} m")
    for name, size in recipe.chip_size.items():
        actual_size = manifest.modalities[name].size
        if actual_size != (size, size):
            raise ConfigError(
                f"recipe key '{prefix}.chip_size.{name}': the recipe expects {size}x{size} px but {where} stores "
                f"{actual_size[0]}x{actual_size[1]} px"
            )
    for name, tokens in recipe.bands.items():
        try:
            expected = [BandSpec.parse(token) for token in tokens]
        except InputError as error:
            raise ConfigError(f"recipe key '{prefix}.bands.{name}': {error}") from error
        actual_bands = manifest.modalities[name].bands
        if len(expected) != len(actual_bands) or not all(map(_same_physics, expected, actual_bands)):
            raise ConfigError(
                f"recipe key '{prefix}.bands.{name}': the recipe expects [{', '.join(map(_describe, expected))}] "
                f"but {where} stores [{', '.join(map(_describe, actual_bands))}]"
            )
    if normalization == "dataset":
        missing = [name for name in recipe.modalities if manifest.stats is None or name not in manifest.stats]
        if missing:
            raise ConfigError(
                f"{where} has no normalisation statistics for {missing[0]!r}; run `ramen chips {recipe.path} --stats` "
                f"or set mae.normalization = \"none\""
            )

    finest, coarsest = recipe.finest_and_coarsest_gsd()
    native = min(manifest.modalities[name].gsd for name in recipe.modalities)
    if finest < native * (1 - 1e-9):
        info = next(manifest.modalities[name] for name in recipe.modalities if manifest.modalities[name].gsd == native)
        rows, cols = grid_shape(info.size[0], info.size[1], info.gsd, finest)
        raise ConfigError(
            f"recipe key '{prefix}.target_gsd': {finest:g} m is finer than the finest native GSD of {where}, "
            f"{native:g} m, so the chips have no detail at that GSD and a chip would take {rows}x{cols} tokens; "
            f"use target GSDs of at least {native:g} m"
        )
    values = recipe.gsd_values() or [coarsest]
    for name in recipe.modalities:
        info = manifest.modalities[name]
        for target in values:
            rows, cols = grid_shape(info.size[0], info.size[1], info.gsd, target)
            if rows < 1 or cols < 1:
                largest = min(info.footprint_m)
                raise ConfigError(
                    f"recipe key '{prefix}.target_gsd': at {target:g} m a chip of modality {name!r} "
                    f"({info.size[0]}x{info.size[1]} px at {info.gsd:g} m, {largest:g} m across) holds no token; "
                    f"use target GSDs of at most {largest:g} m"
                )
            # The masking keeps int(L * (1 - mask_ratio)) tokens, at least one, and the loss
            # divides by the masked pixels: a grid with nothing masked gives a NaN loss.
            tokens = rows * cols
            if tokens - max(1, int(tokens * (1 - mask_ratio))) < 1:
                raise ConfigError(
                    f"recipe key '{prefix}.target_gsd': at {target:g} m a chip of modality {name!r} has "
                    f"{rows}x{cols} tokens, too few to mask any at mask ratio {mask_ratio:g}; use finer target GSDs "
                    f"or a higher mae.mask_ratio"
                )


@dataclass
class Batch:
    """One micro-batch: the model inputs and the ids of the chips in it."""

    modalities: list[ModalityInput]
    chip_ids: list[int]


class PretrainData:
    """Open and check every dataset of a recipe, and serve this rank's micro-batches.

    Args:
        recipe: the validated recipe.
        rank: this process's rank.
        world_size: number of ranks.
        consumed: chips already taken from each dataset by each rank (from a checkpoint).

    Raises:
        InputError: a dataset folder is missing, empty or unreadable.
        ConfigError: a dataset does not fit the recipe (see :func:`check_dataset`).
    """

    def __init__(self, recipe: Recipe, rank: int = 0, world_size: int = 1, consumed: Mapping[str, int] | None = None) -> None:
        self.recipe = recipe
        self.rank = rank
        self.world_size = world_size
        self.datasets: dict[str, ChipDataset] = {}
        for name, dataset_recipe in recipe.datasets.items():
            dataset = ChipDataset(dataset_recipe.path)
            check_dataset(dataset_recipe, dataset.manifest, recipe.mae.normalization, recipe.mae.mask_ratio)
            self.datasets[name] = dataset
            logger.info("dataset %s: %d chips in %d shards at %s", name, len(dataset), len(dataset.manifest.shards), dataset.folder)
            if len(dataset) // world_size < dataset_recipe.batch_size:
                logger.warning(
                    "dataset %s: each rank has about %d chips, fewer than the batch size %d, so batches repeat chips",
                    name, len(dataset) // world_size, dataset_recipe.batch_size,
                )
        self.consumed = {name: int((consumed or {}).get(name, 0)) for name in self.datasets}
        self._streams: dict[str, Iterator[Chip]] = {}

    def chips_per_epoch(self, name: str) -> int:
        """Return the chips of a dataset that one rank reads per epoch (its share of the dataset)."""
        return len(self.datasets[name]) // self.world_size

    def _stream(self, name: str) -> Iterator[Chip]:
        if name not in self._streams:
            stream = ChipStream(
                self.datasets[name],
                seed=self.recipe.train.seed,
                rank=self.rank,
                world_size=self.world_size,
                start=self.consumed[name],
            )
            self._streams[name] = iter(stream)
        return self._streams[name]

    def next_batch(self, plan: StepPlan, device: torch.device | str = "cpu") -> Batch:
        """Take the next ``batch_size`` chips of the planned dataset and build the model inputs."""
        dataset_recipe = self.recipe.datasets[plan.dataset]
        stream = self._stream(plan.dataset)
        chips = [next(stream) for _ in range(dataset_recipe.batch_size)]
        self.consumed[plan.dataset] += len(chips)
        batch = collate_chips(chips)
        manifest = self.datasets[plan.dataset].manifest
        stats = manifest.stats if self.recipe.mae.normalization == "dataset" else None
        inputs = to_modality_inputs(batch, manifest, plan.modalities, stats, device)
        return Batch(modalities=inputs, chip_ids=batch["chip/id"].tolist())

    def normalization_record(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Return the inputs and statistics used, per dataset and modality, for checkpoint metadata.

        Each entry contains the sensor id, the native GSD in metres, the band names and, with
        ``mae.normalization = "dataset"``, the per-band ``mean`` and ``std`` in stored units.
        """
        record: dict[str, dict[str, dict[str, Any]]] = {}
        for name, dataset in self.datasets.items():
            manifest = dataset.manifest
            record[name] = {}
            for modality in self.recipe.datasets[name].modalities:
                info = manifest.modalities[modality]
                entry: dict[str, Any] = {
                    "sensor": info.sensor,
                    "gsd": info.gsd,
                    "bands": [band.name for band in info.bands],
                }
                if self.recipe.mae.normalization == "dataset" and manifest.stats is not None:
                    entry["mean"] = list(manifest.stats[modality].mean)
                    entry["std"] = list(manifest.stats[modality].std)
                record[name][modality] = entry
        return record
