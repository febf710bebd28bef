"""Pre-training recipes: a TOML file validated into typed dataclasses.

A recipe names the model size, the chip datasets with their sampling weights, modalities
and target GSDs, the masking, the optimizer and its schedule, the precision, the seed and
the output folders. :func:`load_recipe` reads a file, applies ``key.path=value``
overrides (the ``--set`` options of ``ramen pretrain``) and validates every value: an
unknown key or a value of the wrong type is a :class:`~ramen_core.errors.ConfigError`
that names the key by its dotted path.

Relative dataset paths in a recipe file are relative to the folder of that file. The output
folders (``checkpoint.dir``, ``log.dir``) and every path given in an override are relative
to the working directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from ramen_core.errors import ConfigError
from ramen_core.model import RamenConfig
from ramen_core.typed_toml import apply_overrides, build_dataclass, convert_value, read_toml, to_plain

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
MODEL_SIZES = ("tiny", "small", "base")


@dataclass(frozen=True)
class GSDRange:
    """Target GSDs between ``min`` and ``max`` metres, both included.

    With ``step`` the values are ``min, min + step, ...`` up to ``max``; without it each
    training step draws a GSD uniformly from the interval.
    """

    min: float
    max: float
    step: float | None = None

    def values(self) -> list[float] | None:
        """Return the discrete GSDs in metres, or None for a continuous range."""
        if self.step is None:
            return None
        count = int(math.floor((self.max - self.min) / self.step + 1e-9)) + 1
        return [round(self.min + index * self.step, 10) for index in range(count)]


@dataclass(frozen=True)
class DatasetRecipe:
    """One chip dataset of the training mixture.

    Attributes:
        name: the dataset's key in the recipe (``flairhub``).
        path: folder of the chip dataset written by ``ramen chips``.
        modalities: modalities to train on, in order. Each step keeps a random non-empty
            subset of them, in this order, and the first kept one defines the token grid.
        target_gsd: list of target GSDs in metres, or a :class:`GSDRange`.
        batch_size: chips per batch and per rank (the authors' ``global_batch_size`` is
            also a per-device value).
        weight: relative probability of drawing this dataset at a step.
        native_gsd: expected native GSD in metres per modality, checked against the chips.
        chip_size: expected chip side in pixels per modality, checked against the chips.
        bands: expected bands per modality as compact tokens (a wavelength in nm,
            ``asc_vv``, ``dsm``), checked against the chips' band metadata.
    """

    name: str
    path: Path
    modalities: list[str]
    target_gsd: Union[list[float], GSDRange]
    batch_size: int
    weight: float = 1.0
    native_gsd: dict[str, float] = field(default_factory=dict)
    chip_size: dict[str, int] = field(default_factory=dict)
    bands: dict[str, list[Union[float, str]]] = field(default_factory=dict)

    def gsd_values(self) -> list[float] | None:
        """Return the discrete target GSDs in metres, or None for a continuous range."""
        if isinstance(self.target_gsd, GSDRange):
            return self.target_gsd.values()
        return list(self.target_gsd)

    def finest_and_coarsest_gsd(self) -> tuple[float, float]:
        if isinstance(self.target_gsd, GSDRange):
            return self.target_gsd.min, self.target_gsd.max
        return min(self.target_gsd), max(self.target_gsd)


@dataclass(frozen=True)
class ModelRecipe:
    """Model size: a preset (``tiny``, ``small``, ``base``) plus any :class:`RamenConfig` field.

    Attributes:
        size: the preset.
        overrides: :class:`RamenConfig` fields that replace the preset's values, such as
            ``num_experts = 4``.
    """

    size: Literal["tiny", "small", "base"] = "base"
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self) -> RamenConfig:
        return RamenConfig.preset(self.size, **self.overrides)


@dataclass(frozen=True)
class MAERecipe:
    """Masked auto-encoding.

    Attributes:
        mask_ratio: share of tokens removed before the encoder, in (0, 1).
        normalization: ``dataset`` normalises each channel with the statistics that
            ``ramen chips --stats`` stored with the chips; ``none`` feeds stored values.
    """

    mask_ratio: float = 0.75
    normalization: Literal["dataset", "none"] = "dataset"


@dataclass(frozen=True)
class OptimRecipe:
    """AdamW and gradient handling.

    Attributes:
        lr: peak learning rate, reached at the end of the warm-up.
        warmup_start_lr: learning rate at step 0.
        min_lr: learning rate at the end of the cosine decay.
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW (beta1, beta2).
        eps: AdamW epsilon.
        decay_norms_and_biases: apply weight decay to norm weights, biases and tokens too
            (the authors' setup passes every parameter to AdamW).
        grad_clip: maximum global gradient norm; 0 turns clipping off.
        grad_accumulation: micro-batches per optimizer step.
    """

    name: Literal["adamw"] = "adamw"
    lr: float = 1.5e-4
    warmup_start_lr: float = 1e-5
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    decay_norms_and_biases: bool = True
    grad_clip: float = 1.0
    grad_accumulation: int = 1


@dataclass(frozen=True)
class ScheduleRecipe:
    """Linear warm-up then cosine decay, counted in epochs.

    Attributes:
        epochs: length of the schedule; the learning rate reaches ``min_lr`` at its end.
        warmup_epochs: epochs of linear warm-up from ``warmup_start_lr`` to ``lr``.
        steps_per_epoch: optimizer steps per epoch; 0 derives it from the dataset sizes
            (every rank reads each of its chips about once per epoch).
        interval: ``step`` updates the learning rate after every optimizer step, ``epoch``
            only at epoch boundaries (as the authors' Lightning scheduler does).
    """

    epochs: int = 100
    warmup_epochs: int = 20
    steps_per_epoch: int = 0
    interval: Literal["step", "epoch"] = "step"


@dataclass(frozen=True)
class TrainRecipe:
    """Run settings.

    Attributes:
        seed: seed of every random draw; the same seed gives the same run.
        precision: ``bf16`` runs the forward pass under bfloat16 autocast on CUDA (and in
            float32 on CPU); ``fp32`` always uses float32.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        max_steps: stop after this many optimizer steps without changing the schedule;
            0 runs the whole schedule.
        log_every: micro-batches between progress-bar updates.
        sync_batchnorm: turn the L-TAE BatchNorm layers into SyncBatchNorm under
            distributed CUDA training, as the authors did.
        cpu_threads: intra-op threads of torch during the run; 0 keeps torch's default.
            On a CPU shared with other jobs, one thread can be several times faster than two.
    """

    seed: int = 0
    precision: Literal["fp32", "bf16"] = "bf16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps: int = 0
    log_every: int = 10
    sync_batchnorm: bool = True
    cpu_threads: int = 0


@dataclass(frozen=True)
class CheckpointRecipe:
    """Checkpoint folder and cadence.

    Attributes:
        dir: folder of the checkpoints and of the exported encoder.
        every_steps: optimizer steps between checkpoints; 0 saves only at epoch ends.
        every_epochs: epochs between checkpoints; 0 saves only by ``every_steps``.
        keep: number of most recent checkpoints kept on disk.
        export_encoder: write ``encoder.safetensors`` (the weights format that
            ``ramen embed`` loads) at the end of the run.
    """

    dir: Path = Path("runs/pretrain/checkpoints")
    every_steps: int = 0
    every_epochs: int = 1
    keep: int = 3
    export_encoder: bool = True


@dataclass(frozen=True)
class LogRecipe:
    """Log folder and outputs.

    Attributes:
        dir: folder of ``metrics.jsonl``, ``summary.json``, the loss plot and TensorBoard events.
        tensorboard: also write TensorBoard events when the ``tensorboard`` package is installed.
        plot: draw ``loss.png`` at the end of the run.
    """

    dir: Path = Path("runs/pretrain")
    tensorboard: bool = True
    plot: bool = True


@dataclass(frozen=True)
class Recipe:
    """A validated pre-training recipe."""

    name: str
    datasets: dict[str, DatasetRecipe]
    model: ModelRecipe = field(default_factory=ModelRecipe)
    mae: MAERecipe = field(default_factory=MAERecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    schedule: ScheduleRecipe = field(default_factory=ScheduleRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    checkpoint: CheckpointRecipe = field(default_factory=CheckpointRecipe)
    log: LogRecipe = field(default_factory=LogRecipe)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the recipe as plain JSON-compatible values (paths as strings)."""
        return to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# ---------------------------------------------------------------------------------- parsing
def _model_recipe(table: Mapping[str, Any]) -> ModelRecipe:
    table = dict(table)
    size = table.pop("size", "base")
    if size not in MODEL_SIZES:
        raise ConfigError(f"recipe key 'model.size': expected one of {', '.join(MODEL_SIZES)}, got {size!r}")
    hints = typing.get_type_hints(RamenConfig)
    known = [item.name for item in dataclasses.fields(RamenConfig)]
    overrides: dict[str, Any] = {}
    for name, value in table.items():
        if name not in hints:
            raise ConfigError(
                f"unknown recipe key 'model.{name}'; [model] takes size and RamenConfig fields: {', '.join(known)}"
            )
        overrides[name] = convert_value(value, hints[name], f"model.{name}", Path("."))
    recipe = ModelRecipe(size=size, overrides=overrides)
    try:
        recipe.config()
    except ConfigError as error:
        raise ConfigError(f"recipe section [model]: {error}") from error
    return recipe


def _dataset_recipe(name: str, table: Mapping[str, Any], base_dir: Path) -> DatasetRecipe:
    prefix = f"datasets.{name}"
    if not _NAME_PATTERN.match(name):
        raise ConfigError(f"recipe key {prefix!r}: dataset names may hold only letters, digits, '_' and '-'")
    table = dict(table)
    gsd = table.pop("target_gsd", None)
    if gsd is None:
        raise ConfigError(f"recipe is missing the required key {prefix}.target_gsd (a list of metres or a table min/max/step)")
    if isinstance(gsd, Mapping):
        target: list[float] | GSDRange = build_dataclass(GSDRange, gsd, f"{prefix}.target_gsd", base_dir)
    else:
        target = convert_value(gsd, list[float], f"{prefix}.target_gsd", base_dir)
    recipe: DatasetRecipe = build_dataclass(DatasetRecipe, table, prefix, base_dir, name=name, target_gsd=target)
    _check_dataset(recipe)
    return recipe


def _check_dataset(recipe: DatasetRecipe) -> None:
    prefix = f"datasets.{recipe.name}"
    if not recipe.modalities:
        raise ConfigError(f"recipe key {prefix + '.modalities'!r}: name at least one modality")
    repeated = sorted({name for name in recipe.modalities if recipe.modalities.count(name) > 1})
    if repeated:
        raise ConfigError(f"recipe key {prefix + '.modalities'!r}: modality {repeated[0]!r} is listed twice")
    if recipe.batch_size < 1:
        raise ConfigError(f"recipe key {prefix + '.batch_size'!r}: must be at least 1, got {recipe.batch_size}")
    if not recipe.weight > 0:
        raise ConfigError(f"recipe key {prefix + '.weight'!r}: must be positive, got {recipe.weight}")
    for table_name in ("native_gsd", "chip_size", "bands"):
        extra = sorted(set(getattr(recipe, table_name)) - set(recipe.modalities))
        if extra:
            raise ConfigError(
                f"recipe key '{prefix}.{table_name}.{extra[0]}': {extra[0]!r} is not in {prefix}.modalities "
                f"({', '.join(recipe.modalities)})"
            )
    for modality, value in recipe.native_gsd.items():
        if not value > 0:
            raise ConfigError(f"recipe key '{prefix}.native_gsd.{modality}': must be a positive number of metres")
    for modality, value in recipe.chip_size.items():
        if value < 1:
            raise ConfigError(f"recipe key '{prefix}.chip_size.{modality}': must be a positive number of pixels")
    target = recipe.target_gsd
    if isinstance(target, GSDRange):
        if not 0 < target.min <= target.max:
            raise ConfigError(
                f"recipe key '{prefix}.target_gsd': need 0 < min <= max, got min {target.min} and max {target.max}"
            )
        if target.step is not None and not target.step > 0:
            raise ConfigError(f"recipe key '{prefix}.target_gsd.step': must be positive, got {target.step}")
    else:
        if not target:
            raise ConfigError(f"recipe key '{prefix}.target_gsd': give at least one GSD in metres")
        bad = [value for value in target if not value > 0]
        if bad:
            raise ConfigError(f"recipe key '{prefix}.target_gsd': GSDs must be positive metres, got {bad[0]}")


def _check_recipe(recipe: Recipe) -> None:
    if not recipe.datasets:
        raise ConfigError("recipe has no dataset; add a [datasets.NAME] table")
    if not 0.0 < recipe.mae.mask_ratio < 1.0:
        # Masking nothing leaves the reconstruction loss without a pixel to average over.
        raise ConfigError(
            f"recipe key 'mae.mask_ratio': must be between 0 and 1, both excluded, got {recipe.mae.mask_ratio} "
            f"(0.75 is the pre-training value)"
        )

    optim = recipe.optim
    for key in ("lr", "warmup_start_lr", "min_lr", "weight_decay", "eps", "grad_clip"):
        if getattr(optim, key) < 0:
            raise ConfigError(f"recipe key 'optim.{key}': must not be negative, got {getattr(optim, key)}")
    if not optim.lr > 0:
        raise ConfigError(f"recipe key 'optim.lr': must be positive, got {optim.lr}")
    if len(optim.betas) != 2 or not all(0 <= beta < 1 for beta in optim.betas):
        raise ConfigError(f"recipe key 'optim.betas': expected two numbers in [0, 1), got {optim.betas}")
    if optim.grad_accumulation < 1:
        raise ConfigError(f"recipe key 'optim.grad_accumulation': must be at least 1, got {optim.grad_accumulation}")

    schedule = recipe.schedule
    if schedule.epochs < 1:
        raise ConfigError(f"recipe key 'schedule.epochs': must be at least 1, got {schedule.epochs}")
    if not 0 <= schedule.warmup_epochs <= schedule.epochs:
        raise ConfigError(
            f"recipe key 'schedule.warmup_epochs': must be between 0 and schedule.epochs ({schedule.epochs}), "
            f"got {schedule.warmup_epochs}"
        )
    for key, value in (("schedule.steps_per_epoch", schedule.steps_per_epoch), ("train.max_steps", recipe.train.max_steps),
                       ("train.cpu_threads", recipe.train.cpu_threads),
                       ("checkpoint.every_steps", recipe.checkpoint.every_steps),
                       ("checkpoint.every_epochs", recipe.checkpoint.every_epochs)):
        if value < 0:
            raise ConfigError(f"recipe key {key!r}: must not be negative, got {value}")

    if recipe.checkpoint.keep < 1:
        raise ConfigError(f"recipe key 'checkpoint.keep': must be at least 1, got {recipe.checkpoint.keep}")
    if recipe.train.log_every < 1:
        raise ConfigError(f"recipe key 'train.log_every': must be at least 1, got {recipe.train.log_every}")


def recipe_from_dict(data: Mapping[str, Any], base_dir: str | Path = ".", source: str = "<dict>") -> Recipe:
    """Validate a recipe given as nested dicts (the parsed TOML).

    Args:
        data: the recipe tables.
        base_dir: folder that relative paths are resolved against.
        source: where the recipe came from, for messages and the checkpoint record.

    Raises:
        ConfigError: an unknown key, a wrong type or an invalid value, named by dotted path.
    """
    base = Path(base_dir)
    data = dict(data)
    datasets_table = data.pop("datasets", None)
    if not isinstance(datasets_table, Mapping) or not datasets_table:
        raise ConfigError(f"recipe {source}: add at least one [datasets.NAME] table")
    datasets = {}
    for name, table in datasets_table.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"recipe key 'datasets.{name}': expected a table, got {table!r}")
        datasets[name] = _dataset_recipe(name, table, base)
    model_table = data.pop("model", {})
    if not isinstance(model_table, Mapping):
        raise ConfigError(f"recipe key 'model': expected a table, got {model_table!r}")
    model = _model_recipe(model_table)
    # Output folders are relative to the working directory, like the outputs of other commands.
    outputs = {}
    for key, cls in (("checkpoint", CheckpointRecipe), ("log", LogRecipe)):
        if key in data:
            outputs[key] = convert_value(data.pop(key), cls, key, Path("."))
    data.setdefault("name", Path(source).stem if source != "<dict>" else "pretrain")
    recipe: Recipe = build_dataclass(
        Recipe, data, "", base, also_allowed=("model", "checkpoint", "log", "datasets"), datasets=datasets,
        model=model, source=source, **outputs,
    )
    _check_recipe(recipe)
    return recipe


def _is_path_key(parts: Sequence[str]) -> bool:
    return len(parts) == 3 and parts[0] == "datasets" and parts[2] == "path"


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe file.

    Args:
        path: the TOML recipe.
        overrides: ``key.path=value`` strings applied before validation.

    Raises:
        ConfigError: the file cannot be read, or a key or value is invalid.
    """
    path = Path(path)
    data = apply_overrides(read_toml(path, "recipe"), overrides, is_path_key=_is_path_key)
    return recipe_from_dict(data, base_dir=path.resolve().parent, source=str(path))
