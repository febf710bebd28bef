"""Pre-training checkpoints: MAE weights, training state, and the encoder export.

A checkpoint is two files in the checkpoint folder, plus a pointer::

    step-00001000.safetensors   RamenMAE weights with the model config, the recipe and the
                                normalisation statistics in the header (ramen weights format)
    step-00001000.state.pt      optimizer state, step counters, chips consumed per dataset
    latest.json                 names the newest complete checkpoint

Each file is written to a temporary name and renamed, and ``latest.json`` is replaced
only after both files are in place, so an interrupted save never damages the last good
checkpoint. The state file holds only tensors and plain values and is read with
``torch.load(weights_only=True)``.

The state contains no random generator state, because every random draw of a run is
seeded from the recipe's seed and a counter (see :mod:`ramen_core.training.sampling`).
The step counters are all a resumed run needs to draw the same batches, subsets, GSDs
and masks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ramen_core._atomic import atomic_path
from ramen_core.errors import InputError, OutputError, WeightsError
from ramen_core.model import RamenConfig
from ramen_core.weights import load_weights, save_weights

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
LATEST_NAME = "latest.json"
ENCODER_NAME = "encoder.safetensors"
CHECKPOINT_KIND = "pretrain-checkpoint"


@dataclass
class TrainState:
    """Counters of a pre-training run.

    Attributes:
        step: optimizer steps done.
        micro_step: micro-batches done (``step`` × gradient accumulation).
        consumed: chips each rank has taken from each dataset.
        world_size: number of ranks that produced this state.
        elapsed_s: training time in seconds before the current process started.
    """

    step: int = 0
    micro_step: int = 0
    consumed: dict[str, int] = field(default_factory=dict)
    world_size: int = 1
    elapsed_s: float = 0.0


def checkpoint_stem(step: int) -> str:
    return f"step-{step:08d}"


def _atomic_torch_save(payload: Any, path: Path) -> None:
    with atomic_path(path, what="training state") as temporary:
        torch.save(payload, temporary)


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: RamenConfig,
    metadata: dict[str, str],
    keep: int = 3,
) -> Path:
    """Write a checkpoint of the current step and keep only the ``keep`` newest.

    Args:
        folder: checkpoint folder (created if missing).
        model: the :class:`~ramen_core.model.RamenMAE` (not its DDP wrapper).
        optimizer: the optimizer.
        state: the run's counters.
        config: the model config, stored in the weights header.
        metadata: extra header entries (recipe, normalisation), JSON strings.
        keep: number of checkpoints to keep.

    Returns:
        The weights file written.

    Raises:
        OutputError: the folder or a file cannot be written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create checkpoint folder {str(folder)!r}: {error}") from error
    stem = checkpoint_stem(state.step)
    weights_path = folder / f"{stem}.safetensors"
    state_path = folder / f"{stem}.state.pt"
    header = {**metadata, "ramen_kind": CHECKPOINT_KIND, "step": str(state.step)}
    save_weights(weights_path, model, config, header)
    _atomic_torch_save(
        {
            "format_version": STATE_FORMAT_VERSION,
            "state": dataclasses.asdict(state),
            "optimizer": optimizer.state_dict(),
            "config": config.to_json(),
        },
        state_path,
    )
    _atomic_write_text(
        folder / LATEST_NAME,
        json.dumps({"step": state.step, "weights": weights_path.name, "state": state_path.name}, indent=1) + "\n",
    )
    logger.info("saved checkpoint %s (step %d)", weights_path, state.step)
    _prune(folder, keep)
    return weights_path


def _prune(folder: Path, keep: int) -> None:
    weights = sorted(folder.glob("step-*.safetensors"))
    for old in weights[:-keep]:
        old.unlink(missing_ok=True)
        old.with_name(old.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)
        logger.debug("removed old checkpoint %s", old)


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """Resolve a checkpoint folder (its newest checkpoint) or weights file to (weights, state).

    Raises:
        InputError: nothing to resume from at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        pointer = path / LATEST_NAME
        if not pointer.is_file():
            raise InputError(
                f"no checkpoint in {str(path)!r} ({LATEST_NAME} is missing); run without --resume to start training"
            )
        try:
            latest = json.loads(pointer.read_text(encoding="utf-8"))
            weights, state = path / latest["weights"], path / latest["state"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f"{str(pointer)!r} is unreadable ({error}); pass a step-*.safetensors file to resume from") from error
    elif path.is_file():
        weights = path
        state = path.with_name(path.name.removesuffix(".safetensors") + ".state.pt")
    else:
        raise InputError(f"checkpoint {str(path)!r} not found; give a checkpoint folder or a step-*.safetensors file")
    for required in (weights, state):
        if not required.is_file():
            raise InputError(f"checkpoint file {str(required)!r} is missing; resume from another checkpoint")
    return weights, state


def config_differences(stored: RamenConfig, expected: RamenConfig) -> list[str]:
    """List the fields where a checkpoint's model config differs from the recipe's."""
    return [
        f"{item.name} {getattr(stored, item.name)!r} (checkpoint) vs {getattr(expected, item.name)!r} (recipe)"
        for item in dataclasses.fields(RamenConfig)
        if getattr(stored, item.name) != getattr(expected, item.name)
    ]


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: RamenConfig
) -> tuple[TrainState, dict[str, str]]:
    """Load weights and optimizer state into ``model`` and ``optimizer`` and return the counters.

    Args:
        path: checkpoint folder or weights file.
        model: a freshly built :class:`~ramen_core.model.RamenMAE` of ``config``.
        optimizer: the optimizer over ``model``'s parameters.
        config: the recipe's model config; the checkpoint must have been trained with it.

    Returns:
        The counters and the weights header metadata.

    Raises:
        InputError: the checkpoint is missing.
        WeightsError: the checkpoint is unreadable or comes from another model config.
    """
    weights_path, state_path = find_checkpoint(path)
    loaded = load_weights(weights_path)
    if loaded.metadata.get("ramen_kind") != CHECKPOINT_KIND:
        raise WeightsError(
            f"{str(weights_path)!r} is not a pre-training checkpoint (it has no training state); "
            f"resume from a step-*.safetensors file of a checkpoint folder"
        )
    differences = config_differences(loaded.config, config)
    if differences:
        raise WeightsError(
            f"checkpoint {str(weights_path)!r} was trained with another model config: {'; '.join(differences)}. "
            f"Resume with the recipe that made it, or point checkpoint.dir at a new folder to start afresh"
        )
    model.load_state_dict(loaded.state_dict, strict=True)
    try:
        payload = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise WeightsError(f"training state {str(state_path)!r} is unreadable ({error}); resume from another checkpoint") from error
    if payload.get("format_version") != STATE_FORMAT_VERSION:
        raise WeightsError(f"training state {str(state_path)!r} has format version {payload.get('format_version')!r}")
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError) as error:
        raise WeightsError(f"optimizer state in {str(state_path)!r} does not fit the model: {error}") from error
    state = TrainState(**payload["state"])
    logger.info("resumed from %s at step %d", weights_path, state.step)
    return state, loaded.metadata


def training_statistics(metadata: Mapping[str, str], dataset: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Return one training dataset's band statistics in the layout ``ramen embed --normalization FILE`` reads.

    The layout is ``{key: {band: {"mean": m, "std": s}}}`` in the units of the chips
    (reflectance, dB, metres, degrees), so an encoder can be run on inputs normalised as
    in its pre-training. The key is the modality's sensor id (``sentinel-2-l1c``), which
    ``ramen embed`` matches whatever alias names the input, or the modality name when the
    chips had no sensor or two modalities share one.

    Args:
        metadata: header metadata of a checkpoint or exported encoder.
        dataset: training dataset name; may be omitted when there was only one.

    Raises:
        WeightsError: the weights carry no statistics, or ``dataset`` is not one of them.
    """
    text = metadata.get("normalization")
    if not text:
        raise WeightsError("these weights carry no training statistics (no 'normalization' metadata)")
    record = json.loads(text)
    if dataset is None:
        if len(record) != 1:
            raise WeightsError(f"the weights were trained on several datasets; choose one of {', '.join(record)}")
        dataset = next(iter(record))
    if dataset not in record:
        raise WeightsError(f"no training dataset {dataset!r} in the weights; they were trained on {', '.join(record)}")
    table: dict[str, dict[str, dict[str, float]]] = {}
    entries = record[dataset]
    sensors = [entry.get("sensor") for entry in entries.values()]
    for modality, entry in entries.items():
        if "mean" not in entry:
            raise WeightsError(f"dataset {dataset!r} was trained without normalisation statistics (mae.normalization = none)")
        sensor = entry.get("sensor")
        key = sensor if sensor and sensors.count(sensor) == 1 else modality
        table[key] = {
            band: {"mean": float(mean), "std": float(std)}
            for band, mean, std in zip(entry["bands"], entry["mean"], entry["std"])
        }
    return table


def export_encoder(checkpoint: str | Path, output: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the encoder of a pre-training checkpoint in the weights format ``ramen embed`` loads.

    The header keeps the checkpoint's ``normalization`` record (statistics per dataset and
    modality) and ``training`` summary, plus ``metadata``.

    Args:
        checkpoint: checkpoint folder (its newest checkpoint) or weights file.
        output: the ``.safetensors`` file to write.
        metadata: extra header entries, JSON strings.

    Raises:
        InputError: the checkpoint is missing.
        WeightsError: it is unreadable.
        OutputError: the output cannot be written.
    """
    weights_path = Path(checkpoint)
    if weights_path.is_dir():
        weights_path, _ = find_checkpoint(weights_path)
    loaded = load_weights(weights_path)
    encoder = {key: value for key, value in loaded.state_dict.items() if key.startswith("encoder.")}
    header = {key: loaded.metadata[key] for key in ("normalization", "training", "recipe") if key in loaded.metadata}
    header["source_checkpoint"] = json.dumps({"file": weights_path.name, "sha256": loaded.sha256})
    header.update(metadata or {})
    path = save_weights(output, encoder, loaded.config, header)
    logger.info("exported the encoder of %s to %s", weights_path, path)
    return path
