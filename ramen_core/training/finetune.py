"""Fine-tune a UPerNet head (and optionally the encoder) for semantic segmentation.

:func:`finetune` runs a :class:`~ramen_core.training.finetune_recipe.FinetuneRecipe`.
It reads the labelled chips and trains with cross-entropy (ignore index, optional class
weights) under AdamW with linear warm-up and cosine decay. It validates after every epoch
and saves the epoch with the best validation mIoU as one safetensors model
(:func:`ramen_core.heads.bundle.save_segmentation_model`). Each validation goes to
``metrics.jsonl`` and to the ``on_event`` callback; the end of the run writes
``summary.json`` and ``training.png`` (training curves and confusion matrix).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.warp import transform_bounds
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ramen_core import __version__
from ramen_core.chips.dataset import ChipDataset, collate_chips, day_of_year
from ramen_core.embedding.inputs import LONLAT, utm_crs
from ramen_core.errors import ConfigError, EmptyResultError, InputError, OutputError
from ramen_core.heads.bundle import (
    ClassSpec,
    ModalitySpec,
    SegmentationModel,
    build_segmenter,
    save_segmentation_model,
)
from ramen_core.heads.upernet import Segmenter
from ramen_core.inference.sources import open_file_modality
from ramen_core.model import ModalityInput, RamenEncoder, grid_shape
from ramen_core.sensors import get_sensor
from ramen_core.training.finetune_recipe import FinetuneRecipe, InputRecipe, SplitRecipe
from ramen_core.training.geotiff_chips import IGNORE, ChipFiles, GeoTiffChipDataset, chip_grid, find_chips, scan_chips
from ramen_core.training.metrics import MIOU_DEFINITION, SegmentationScores, confusion_matrix, scores_from_confusion
from ramen_core.training.schedule import learning_rate
from ramen_core.weights import build_encoder, load_weights

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "training.png"

EventCallback = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------------- data
@dataclass
class SplitData:
    """A split ready for a DataLoader.

    Attributes:
        dataset: items keyed as chip datasets are (``<m>/data``, ``<m>/valid``,
            ``<m>/dates``, ``label`` with ``IGNORE`` for ignored pixels).
        label_gsd: pixel size of the label grid in metres.
        pixel_counts: labelled pixels per class, when known before training.
    """

    dataset: Dataset[dict[str, Tensor]]
    label_gsd: float
    pixel_counts: np.ndarray | None = None


class LabelledChipDataset(Dataset[dict[str, Tensor]]):
    """A labelled chip dataset of ``ramen chips`` with its ignore index mapped to ``IGNORE``."""

    def __init__(self, chips: ChipDataset, modalities: Sequence[str], ignore_index: int) -> None:
        self.chips = chips
        self.ignore_index = ignore_index
        self.keys = [f"{name}/{part}" for name in modalities for part in ("data", "valid", "dates")] + ["label"]

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = self.chips[index]
        chip = {key: item[key] for key in self.keys}
        label = chip["label"].to(torch.int64)
        chip["label"] = torch.where((label == self.ignore_index) | (label < 0), IGNORE, label)
        return chip


def _band_names(sensor_name: str, recipe: InputRecipe) -> list[str]:
    sensor = get_sensor(sensor_name)
    return [band.name for band in sensor.select(recipe.bands or None)]


def _normalisation(name: str, recipe: InputRecipe, bands: Sequence[str], dataset_stats: Any) -> tuple[list[float], list[float]]:
    if recipe.normalization == "custom":
        if len(recipe.mean) != len(bands) or len(recipe.std) != len(bands):
            raise ConfigError(
                f"recipe key 'data.inputs.{name}': {len(recipe.mean)} means and {len(recipe.std)} stds for "
                f"{len(bands)} bands ({', '.join(bands)}); give one per band"
            )
        return list(recipe.mean), list(recipe.std)
    if recipe.normalization == "dataset":
        if dataset_stats is None:
            raise ConfigError(
                f"recipe key 'data.inputs.{name}.normalization': 'dataset' needs statistics stored with a chip "
                f"dataset (`ramen chips DIR --stats`); use 'registry' or 'custom' for GeoTIFF chips"
            )
        return list(dataset_stats.mean), list(dataset_stats.std)
    mean, std = get_sensor(recipe.sensor).normalisation(bands)
    return mean.tolist(), std.tolist()


def _modality_specs_from_geotiffs(recipe: FinetuneRecipe, first_chip: ChipFiles) -> list[ModalitySpec]:
    """Describe the inputs from the first chip's files.

    Every modality is read onto the first modality's pixel grid, so the model gets all of
    them at that pixel size: the pixel size in metres for a projected grid, else the first
    modality's native GSD as :func:`open_file_modality` measures it in the UTM zone of the
    chip (the registry's GSD when the pixels are within 25 % of it).
    """
    grid = chip_grid(first_chip.images[next(iter(recipe.data.inputs))])
    measure_crs = None
    if not grid.crs.is_projected:
        lon_lat = transform_bounds(grid.crs, LONLAT, *grid.bounds, densify_pts=21)
        measure_crs = utm_crs((lon_lat[0] + lon_lat[2]) / 2, (lon_lat[1] + lon_lat[3]) / 2)

    specs: list[ModalitySpec] = []
    pixel_m = None
    for name, input_recipe in recipe.data.inputs.items():
        sensor = get_sensor(input_recipe.sensor)
        bands = _band_names(sensor.id, input_recipe)
        modality = open_file_modality(
            name, sensor, first_chip.images[name], bands=bands, orbit=input_recipe.orbit,
            sar_units=input_recipe.units, scale=input_recipe.scale, offset=input_recipe.offset,
            gsd=input_recipe.gsd or None, crs=measure_crs,
        )
        modality.close()
        if pixel_m is None:
            pixel_m = float(grid.gsd) if measure_crs is None else float(modality.gsd)
            logger.info("inputs are read on the %s grid at %.4g m per pixel", name, pixel_m)
        mean, std = _normalisation(name, input_recipe, bands, None)
        specs.append(
            ModalitySpec(
                name=name, sensor=sensor.id, bands=tuple(bands),
                band_physics=tuple(_physics_dict(spec) for spec in modality.band_specs()), gsd=pixel_m,
                mean=tuple(mean), std=tuple(std), orbit=modality.orbit,
                scale=input_recipe.scale, offset=input_recipe.offset,
            )
        )
    return specs


def _physics_dict(spec: Any) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def _modality_specs_from_chips(recipe: FinetuneRecipe, chips: ChipDataset) -> list[ModalitySpec]:
    manifest = chips.manifest
    specs = []
    for name, input_recipe in recipe.data.inputs.items():
        info = manifest.modalities.get(name)
        if info is None:
            raise ConfigError(
                f"recipe input {name!r} is not in chip dataset {str(chips.folder)!r}; it has "
                f"{', '.join(manifest.modalities)}"
            )
        bands = [band.name for band in info.bands]
        if input_recipe.bands and [b.lower() for b in input_recipe.bands] != [b.lower() for b in bands]:
            raise ConfigError(
                f"recipe key 'data.inputs.{name}.bands' ({input_recipe.bands}) differs from the chips' bands "
                f"({bands}); make them equal or leave the recipe's list empty"
            )
        stats = (manifest.stats or {}).get(name)
        mean, std = _normalisation(name, input_recipe, bands, stats)
        if input_recipe.gsd and not math.isclose(input_recipe.gsd, info.gsd, rel_tol=1e-6):
            raise ConfigError(
                f"recipe key 'data.inputs.{name}.gsd' ({input_recipe.gsd} m) differs from the chips' GSD ({info.gsd} m)"
            )
        sensor_id = info.sensor or input_recipe.sensor
        specs.append(
            ModalitySpec(
                name=name, sensor=sensor_id, bands=tuple(bands),
                band_physics=tuple(_physics_dict(band) for band in info.bands), gsd=float(info.gsd),
                mean=tuple(mean), std=tuple(std), orbit=input_recipe.orbit,
            )
        )
    return specs


def _check_chip_classes(chips: ChipDataset, classes: ClassSpec, split: str) -> None:
    labels = chips.manifest.labels
    if labels is None:
        raise InputError(
            f"{split} chip dataset {str(chips.folder)!r} has no labels; build it with `ramen chips --labels LABEL.tif`"
        )
    if tuple(labels.classes) != tuple(classes.names):
        raise ConfigError(
            f"the classes of {split} chip dataset {str(chips.folder)!r} ({list(labels.classes)}) differ from "
            f"the recipe's task.classes ({list(classes.names)}); make them equal"
        )


def prepare_split(
    recipe: FinetuneRecipe, split_name: str, classes: ClassSpec, specs: list[ModalitySpec] | None
) -> tuple[SplitData, list[ModalitySpec]]:
    """Find, check and wrap the chips of one split; derive the inputs from the training split."""
    split: SplitRecipe = getattr(recipe.data, split_name)
    training = split_name == "train"
    crop = recipe.data.crop_size or None
    if split.is_chip_dataset:
        assert split.chips is not None
        chips = ChipDataset(split.chips)
        _check_chip_classes(chips, classes, split_name)
        if specs is None:
            specs = _modality_specs_from_chips(recipe, chips)
        if training and crop:
            logger.warning("data.crop_size applies to GeoTIFF chips only; chip datasets train on whole chips")
        assert chips.manifest.labels is not None
        dataset = LabelledChipDataset(chips, [spec.name for spec in specs], chips.manifest.labels.ignore_index)
        return SplitData(dataset, chips.manifest.labels.gsd), specs

    files = find_chips(split.images, split.label, split.list, split_name)
    if specs is None:
        specs = _modality_specs_from_geotiffs(recipe, files[0])
    scan = scan_chips(files, specs, classes)
    if scan.pixel_counts.sum() == 0:
        raise EmptyResultError(
            f"the {split_name} set has no labelled pixel: every label value is ignored "
            f"(ignore index {classes.ignore_index}, -1 or nodata)"
        )
    logger.info(
        "%s split: %d chips, labelled pixels per class %s, %d ignored",
        split_name, len(files), dict(zip(classes.names, scan.pixel_counts.tolist())), scan.ignored,
    )
    units = {name: value.units for name, value in recipe.data.inputs.items()}
    dataset = GeoTiffChipDataset(
        files, specs, classes, crop_size=crop if training else None, flip=training and recipe.data.flip,
        units=units, seed=recipe.train.seed,
    )
    return SplitData(dataset, specs[0].gsd, scan.pixel_counts), specs


def collate_labelled(chips: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack chips into a batch, with a clear error when their sizes differ."""
    try:
        return collate_chips(chips)
    except RuntimeError as error:
        raise InputError(
            f"chips of different sizes cannot form one batch ({error}); set data.crop_size, or use chips of one size"
        ) from error


def batch_to_inputs(batch: Mapping[str, Tensor], specs: Sequence[ModalitySpec], device: torch.device) -> list[ModalityInput]:
    """Normalise a batch with each modality's statistics and build the model's inputs."""
    inputs = []
    for spec in specs:
        data = batch[f"{spec.name}/data"].to(device=device, dtype=torch.float32)
        valid = batch[f"{spec.name}/valid"].to(device=device, dtype=torch.bool)
        mean = torch.tensor(spec.mean, device=device).view(1, 1, -1, 1, 1)
        std = torch.tensor(spec.std, device=device).view(1, 1, -1, 1, 1)
        data = torch.where(valid[:, :, None], (data - mean) / std, torch.zeros((), device=device))
        dates = day_of_year(batch[f"{spec.name}/dates"]).to(device)
        inputs.append(ModalityInput(spec.name, data, spec.band_specs(), spec.gsd, dates=dates, valid=valid))
    return inputs


# ---------------------------------------------------------------------------------- model
def _select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def build_encoder_for(recipe: FinetuneRecipe) -> tuple[RamenEncoder, dict[str, str] | None]:
    """Load the recipe's encoder weights, or build a randomly initialised encoder.

    Returns:
        The encoder and a reference ``{"source", "sha256"}`` to its weights file (None for
        random weights).
    """
    if not recipe.encoder.weights:
        logger.warning(
            "encoder.weights is empty: the %s encoder starts from random weights (fine for tests, "
            "not for real fine-tuning)", recipe.encoder.size,
        )
        return RamenEncoder(recipe.model_config()), None
    loaded = load_weights(recipe.encoder.weights, trust_checkpoint=recipe.encoder.trust_checkpoint)
    return build_encoder(loaded), {"source": str(recipe.encoder.weights), "sha256": loaded.sha256}


def _parameter_groups(segmenter: Segmenter, recipe: FinetuneRecipe) -> list[dict[str, Any]]:
    optim = recipe.optim
    groups = []
    modules = [("head", segmenter.head, optim.lr)]
    if not recipe.encoder.freeze:
        modules.append(("encoder", segmenter.encoder, recipe.encoder.lr or optim.lr))
    for name, module, lr in modules:
        decay, no_decay = [], []
        for parameter_name, parameter in module.named_parameters():
            if not parameter.requires_grad:
                continue
            if optim.decay_norms_and_biases or (parameter.ndim > 1 and not parameter_name.endswith(".bias")):
                decay.append(parameter)
            else:
                no_decay.append(parameter)
        groups.append({"name": name, "params": decay, "weight_decay": optim.weight_decay, "base_lr": lr})
        if no_decay:
            groups.append({"name": f"{name}-no-decay", "params": no_decay, "weight_decay": 0.0, "base_lr": lr})
    return groups


# ---------------------------------------------------------------------------------- loop
@dataclass
class FinetuneResult:
    """Outcome of a fine-tuning run.

    Attributes:
        model_path: the saved model (best validation mIoU).
        best_epoch: the epoch of that model, from 1.
        best_scores: its validation scores.
        history: one record per epoch, as written to ``metrics.jsonl``.
        output_dir: the run's folder.
        plot_path: ``training.png``, or None when plotting is off.
    """

    model_path: Path
    best_epoch: int
    best_scores: SegmentationScores
    history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: Path = Path(".")
    plot_path: Path | None = None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _logits_for(segmenter: Segmenter, inputs: list[ModalityInput], gsd: float, label: Tensor, label_gsd: float) -> Tensor:
    output = segmenter.predict(inputs, gsd, output_size=tuple(label.shape[-2:]), output_gsd=label_gsd)
    return output.logits


def evaluate(
    segmenter: Segmenter,
    loader: DataLoader[Any],
    specs: Sequence[ModalitySpec],
    gsd: float,
    label_gsd: float,
    num_classes: int,
    device: torch.device,
    class_weights: Tensor | None = None,
    autocast: bool = False,
) -> tuple[SegmentationScores, float]:
    """Run the model over a split: scores of the summed confusion matrix, and the mean loss."""
    segmenter.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, loss_pixels = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for batch in loader:
            label = batch["label"].to(device)
            inputs = batch_to_inputs(batch, specs, device)
            logits = _logits_for(segmenter, inputs, gsd, label, label_gsd).float()
            counted = int((label != IGNORE).sum())
            if counted:
                loss = F.cross_entropy(logits, label, weight=class_weights, ignore_index=IGNORE, reduction="sum")
                loss_sum += float(loss)
                loss_pixels += counted
            confusion += confusion_matrix(logits.argmax(dim=1), label, num_classes, IGNORE)
    return scores_from_confusion(confusion), loss_sum / max(loss_pixels, 1)


def _class_weights(recipe: FinetuneRecipe, device: torch.device) -> Tensor | None:
    weights = recipe.task.class_weights
    if not weights:
        return None
    return torch.tensor(weights, dtype=torch.float32, device=device)


def _write_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    try:
        with path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
    except OSError as error:
        raise OutputError(f"cannot write {str(path)!r}: {error}") from error


def _loader(data: SplitData, recipe: FinetuneRecipe, shuffle: bool, drop_last: bool) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(recipe.train.seed)
    return DataLoader(
        data.dataset,
        batch_size=recipe.data.batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=recipe.data.num_workers,
        collate_fn=collate_labelled,
        generator=generator,
        persistent_workers=False,
    )


@dataclass
class _Run:
    """Everything a fine-tuning run builds before its first step."""

    recipe: FinetuneRecipe
    device: torch.device
    autocast: bool
    classes: ClassSpec
    specs: list[ModalitySpec]
    train_data: SplitData
    val_data: SplitData
    model: SegmentationModel
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any]
    steps_per_epoch: int
    class_weights: Tensor | None
    output_dir: Path

    def learning_rate_factor(self, step: int) -> float:
        """Return the scheduled rate of ``step`` as a fraction of ``optim.lr``; each group scales its own rate."""
        return learning_rate(step, self.steps_per_epoch, self.recipe.optim, self.recipe.schedule) / self.recipe.optim.lr


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Check, before any work, that the output folder can be written and contains no earlier model.

    Raises:
        OutputError: the folder contains a model and ``overwrite`` is False, or it cannot be created.
    """
    if (output_dir / MODEL_FILE).exists() and not overwrite:
        raise OutputError(
            f"output folder {str(output_dir)!r} already contains a model of an earlier run; pass --overwrite "
            f"(overwrite=True) to replace it, or set output.dir to another folder"
        )
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"cannot create the output folder {str(output_dir)!r}: {str(existing)!r} is a file, not a folder; "
            f"set output.dir to another folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create the output folder {str(output_dir)!r}: {str(existing)!r} is not writable")


def _open_output_dir(output_dir: Path) -> None:
    """Create the output folder at the first result, dropping the metrics of an earlier run."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output folder {str(output_dir)!r}: {error}") from error
    (output_dir / METRICS_FILE).unlink(missing_ok=True)


def _check_working_gsd(recipe: FinetuneRecipe, specs: Sequence[ModalitySpec], splits: Mapping[str, SplitData]) -> None:
    """Check that every input's chips hold tokens at ``data.gsd``; warn when it is finer than the inputs.

    Raises:
        ConfigError: a chip (or training crop) is narrower than one token at ``data.gsd``.
    """
    gsd = recipe.data.gsd
    for split_name, split in splits.items():
        item = split.dataset[0]
        for spec in specs:
            height, width = item[f"{spec.name}/data"].shape[-2:]
            rows, cols = grid_shape(int(height), int(width), spec.gsd, gsd)
            if rows < 1 or cols < 1:
                across = min(int(height), int(width)) * spec.gsd
                hint = " or a larger data.crop_size" if split_name == "train" and recipe.data.crop_size else ""
                raise ConfigError(
                    f"recipe key 'data.gsd': at {gsd:g} m a {split_name} chip of input {spec.name!r} "
                    f"({int(height)}x{int(width)} px at {spec.gsd:g} m, {across:g} m across) holds no token; "
                    f"use a data.gsd of at most {across:g} m{hint}"
                )
    finest = min(spec.gsd for spec in specs)
    if gsd < finest * (1 - 1e-9):
        first = specs[0]
        height, width = splits["train"].dataset[0][f"{first.name}/data"].shape[-2:]
        rows, cols = grid_shape(int(height), int(width), first.gsd, gsd)
        logger.warning(
            "data.gsd %g m is finer than the finest input (%g m): the inputs are upsampled, and each training "
            "chip takes %dx%d tokens, which is slow and adds no detail beyond %g m", gsd, finest, rows, cols, finest,
        )


def _set_up(recipe: FinetuneRecipe, overwrite: bool = False) -> _Run:
    _seed_everything(recipe.train.seed)
    device = _select_device(recipe.train.device)
    classes = recipe.task.class_spec()
    output_dir = Path(recipe.output.dir)
    _check_output_dir(output_dir, overwrite)

    train_data, specs = prepare_split(recipe, "train", classes, None)
    val_data, _ = prepare_split(recipe, "val", classes, specs)
    if len(train_data.dataset) < recipe.data.batch_size:
        raise EmptyResultError(
            f"the training set has {len(train_data.dataset)} chips, fewer than one batch of "
            f"{recipe.data.batch_size}; lower data.batch_size or add chips"
        )
    _check_working_gsd(recipe, specs, {"train": train_data, "val": val_data})

    encoder, reference = build_encoder_for(recipe)
    head_config = recipe.head.config()
    segmenter = build_segmenter(encoder, classes, head_config, freeze_encoder=recipe.encoder.freeze).to(device)
    optimizer = torch.optim.AdamW(
        _parameter_groups(segmenter, recipe), lr=recipe.optim.lr, betas=tuple(recipe.optim.betas),  # type: ignore[arg-type]
        eps=recipe.optim.eps,
    )
    train_loader = _loader(train_data, recipe, shuffle=True, drop_last=True)
    return _Run(
        recipe=recipe,
        device=device,
        autocast=recipe.train.precision == "bf16" and device.type == "cuda",
        classes=classes,
        specs=specs,
        train_data=train_data,
        val_data=val_data,
        model=SegmentationModel(segmenter, classes, specs, recipe.data.gsd, head_config, reference),
        optimizer=optimizer,
        train_loader=train_loader,
        val_loader=_loader(val_data, recipe, shuffle=False, drop_last=False),
        steps_per_epoch=recipe.schedule.steps_per_epoch or len(train_loader),
        class_weights=_class_weights(recipe, device),
        output_dir=output_dir,
    )


def _train_epoch(run: _Run, epoch: int, step: int, emit: EventCallback) -> tuple[float, int]:
    """Train one epoch; return the mean training loss and the step count after it."""
    recipe, segmenter = run.recipe, run.model.segmenter
    segmenter.train()
    dataset = run.train_data.dataset
    if isinstance(dataset, GeoTiffChipDataset):
        dataset.set_epoch(epoch)
    loss_sum, batches = 0.0, 0
    for index, batch in enumerate(run.train_loader):
        if index >= run.steps_per_epoch or (recipe.train.max_steps and step >= recipe.train.max_steps):
            break
        factor = run.learning_rate_factor(step)
        for group in run.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        label = batch["label"].to(run.device)
        if not bool((label != IGNORE).any()):
            logger.debug("step %d: the batch has no labelled pixel; skipped", step)
            continue
        inputs = batch_to_inputs(batch, run.specs, run.device)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.autocast):
            logits = _logits_for(segmenter, inputs, recipe.data.gsd, label, run.train_data.label_gsd)
        loss = F.cross_entropy(logits.float(), label, weight=run.class_weights, ignore_index=IGNORE)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.optim.grad_clip > 0:
            parameters = [p for group in run.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, recipe.optim.grad_clip)
        run.optimizer.step()
        step += 1
        batches += 1
        value = float(loss.detach())
        loss_sum += value
        emit({"event": "step", "epoch": epoch, "step": step, "loss": value})
    return loss_sum / max(batches, 1), step


def _write_summary(run: _Run, history: list[dict[str, Any]], best_epoch: int, best: SegmentationScores, steps: int) -> None:
    summary = {
        "model": str(run.output_dir / MODEL_FILE),
        "best_epoch": best_epoch,
        "miou_definition": MIOU_DEFINITION,
        "best": best.to_dict(run.classes.names),
        "epochs_run": len(history),
        "steps": steps,
        "recipe": run.recipe.to_dict(),
    }
    path = run.output_dir / SUMMARY_FILE
    try:
        path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    except OSError as error:
        raise OutputError(f"cannot write {str(path)!r}: {error}") from error


def finetune(recipe: FinetuneRecipe, on_event: EventCallback | None = None, overwrite: bool = False) -> FinetuneResult:
    """Fine-tune a segmentation head on labelled chips and save the best model.

    The output folder is created with the first epoch's results, so a run that fails
    before them leaves no folder behind.

    Args:
        recipe: the validated recipe.
        on_event: called with ``{"event": "start" | "step" | "epoch" | "end", ...}`` dicts
            for progress display; ``epoch`` events hold the validation record.
        overwrite: replace the results of an earlier run in ``output.dir``.

    Returns:
        The saved model's path, its epoch and scores, and the history.

    Raises:
        ConfigError, InputError, EmptyResultError: invalid recipe or chips (an empty
            training set, a label grid that differs from the image grid, undeclared class
            values).
        OutputError: the output folder cannot be written, or it contains a model of an
            earlier run and ``overwrite`` is False.
    """
    emit = on_event or (lambda event: None)
    run = _set_up(recipe, overwrite)
    classes = run.classes
    logger.info(
        "fine-tuning %d classes on %s at GSD %g m: %d training chips, %d validation chips, %d epochs of %d steps, "
        "encoder %s", classes.num_classes, ", ".join(spec.name for spec in run.specs), recipe.data.gsd,
        len(run.train_data.dataset), len(run.val_data.dataset), recipe.schedule.epochs, run.steps_per_epoch,
        "frozen" if recipe.encoder.freeze else "trained",
    )
    emit({"event": "start", "epochs": recipe.schedule.epochs, "steps_per_epoch": run.steps_per_epoch,
          "device": str(run.device)})

    history: list[dict[str, Any]] = []
    best: tuple[float, int, SegmentationScores] | None = None
    step = 0
    model_path = run.output_dir / MODEL_FILE
    for epoch in range(1, recipe.schedule.epochs + 1):
        started = time.perf_counter()
        train_loss, step = _train_epoch(run, epoch, step, emit)
        scores, val_loss = evaluate(
            run.model.segmenter, run.val_loader, run.specs, recipe.data.gsd, run.val_data.label_gsd,
            classes.num_classes, run.device, run.class_weights, run.autocast,
        )
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": run.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
            **scores.to_dict(classes.names),
        }
        history.append(record)
        if epoch == 1:
            _open_output_dir(run.output_dir)
        _write_jsonl(run.output_dir / METRICS_FILE, record)

        # The first epoch is always saved, so a run whose mIoU stays undefined still has a model.
        improved = best is None or (not math.isnan(scores.miou) and scores.miou > best[0])
        if improved:
            best = (scores.miou, epoch, scores)
            save_segmentation_model(
                model_path, run.model, include_encoder=recipe.encoder.include_in_model,
                extra_metadata={
                    "metrics": {"epoch": epoch, **scores.to_dict(classes.names)},
                    "recipe": recipe.to_dict(),
                    "software": f"ramen {__version__}",
                },
            )
        emit({"event": "epoch", "improved": improved, **record})
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, mIoU %.4f (majority-class baseline %.4f), OA %.4f",
            epoch, train_loss, val_loss, scores.miou, scores.majority_miou, scores.overall_accuracy,
        )
        if recipe.train.max_steps and step >= recipe.train.max_steps:
            break

    assert best is not None
    _, best_epoch, best_scores = best
    _write_summary(run, history, best_epoch, best_scores, step)
    plot_path = None
    if recipe.output.plot:
        from ramen_core.training.finetune_plots import plot_training

        plot_path = plot_training(run.output_dir / PLOT_FILE, history, best_scores, classes.names, best_epoch)
    emit({"event": "end", "best_epoch": best_epoch, "model": str(model_path)})
    return FinetuneResult(model_path, best_epoch, best_scores, history, run.output_dir, plot_path)
