"""Fine-tuning recipes: a TOML file validated into typed dataclasses.

A fine-tuning recipe names the encoder weights, the head, the classes, the inputs and
the labelled chips of the training and validation splits, and reuses the ``[optim]``,
``[schedule]`` and ``[train]`` sections of pre-training recipes. Unknown keys and values
of the wrong type are :class:`~ramen_core.errors.ConfigError` naming the dotted key.
Relative input paths and file patterns are relative to the recipe file's folder. The
output folder and every path given in an override are relative to the working directory.

Labelled chips come in one of two forms per split:

- ``chips = "DIR"``: a chip dataset written by ``ramen chips --labels``;
- ``images = {s1 = "S1Hand/*_S1Hand.tif", ...}`` and ``label = "LabelHand/*_LabelHand.tif"``:
  GeoTIFF chips paired by the text that ``*`` matches, optionally restricted to the chips
  named in ``list`` (a text or CSV file).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional

from ramen_core.errors import ConfigError
from ramen_core.heads.bundle import MAX_CLASSES, ClassSpec, HeadConfig, parse_colour
from ramen_core.heads.upernet import NORMS
from ramen_core.model import RamenConfig
from ramen_core.training.recipe import MODEL_SIZES, OptimRecipe, ScheduleRecipe, TrainRecipe
from ramen_core.typed_toml import apply_overrides, build_dataclass, convert_value, read_toml, to_plain


@dataclass(frozen=True)
class EncoderRecipe:
    """The encoder under the head.

    Attributes:
        weights: encoder weights: a local file or an ``hf://owner/repo/file`` URI; empty
            starts from random weights of ``size`` (for tests and demos only).
        size: model size when ``weights`` is empty: ``tiny``, ``small`` or ``base``.
        freeze: keep the encoder frozen; only the head trains.
        lr: learning rate of the encoder when it is not frozen; 0 uses ``optim.lr``.
        include_in_model: store the encoder's tensors in the saved model. False stores a
            reference to ``weights`` (with its SHA-256) instead, which keeps the file
            small but needs that file at inference. Only for a frozen encoder.
        trust_checkpoint: read a pickled torch checkpoint with ``weights_only=False``
            (only for files from a trusted source).
    """

    weights: str = ""
    size: Literal["tiny", "small", "base"] = "base"
    freeze: bool = True
    lr: float = 0.0
    include_in_model: bool = True
    trust_checkpoint: bool = False


@dataclass(frozen=True)
class HeadRecipe:
    """The UPerNet head (see :class:`ramen_core.heads.UPerNetHead`).

    Attributes:
        blocks: four encoder blocks (numbered from 1) feeding the head, shallowest first;
            empty takes 4, 6, 8, 12 for a 12-block encoder (the default for other depths is
            described in :func:`ramen_core.heads.default_feature_blocks`).
        channels: width of the head's layers.
        pool_scales: bin counts of the pyramid pooling module.
        dropout: dropout before the classifier.
        norm: ``batch`` or ``group`` normalisation.
    """

    blocks: list[int] = field(default_factory=list)
    channels: int = 512
    pool_scales: list[int] = field(default_factory=lambda: [1, 2, 3, 6])
    dropout: float = 0.1
    norm: Literal["batch", "group"] = "batch"

    def config(self) -> HeadConfig:
        return HeadConfig(
            blocks=tuple(self.blocks) or None,
            channels=self.channels,
            pool_scales=tuple(self.pool_scales),
            dropout=self.dropout,
            norm=self.norm,
        )


@dataclass(frozen=True)
class TaskRecipe:
    """The classes.

    Attributes:
        classes: class names; class ``k`` is value ``k`` of the output class map.
        values: label raster value of each class; default ``0 .. K-1``.
        colours: colour of each class, ``#rrggbb``; default a fixed palette.
        ignore_index: label value excluded from training and evaluation; -1 and the label
            raster's nodata are always excluded.
        class_weights: weight of each class in the cross-entropy; empty weighs all equally.
    """

    classes: list[str]
    values: list[int] = field(default_factory=list)
    colours: list[str] = field(default_factory=list)
    ignore_index: int = 255
    class_weights: list[float] = field(default_factory=list)

    def class_spec(self) -> ClassSpec:
        return ClassSpec(
            names=tuple(self.classes),
            values=tuple(self.values),
            colours=tuple(parse_colour(colour) for colour in self.colours),
            ignore_index=self.ignore_index,
        )


@dataclass(frozen=True)
class InputRecipe:
    """One input modality.

    Attributes:
        sensor: sensor id, alias, TOML file or one-line description (see ``ramen sensors``).
        bands: band names in the order the model takes them; empty takes the sensor's
            default bands.
        orbit: orbit direction of radar bands, ``asc`` or ``des``.
        units: units of radar bands in GeoTIFF chips: ``db``, ``linear`` or ``auto``
            (dB when more than 5 % of the valid pixels are negative).
        scale: factor from stored values to physical units in GeoTIFF chips; default the
            sensor's (HLS Burn Scars chips are stored as reflectance already: 1.0).
        offset: added after ``scale``, in physical units; default the sensor's.
        gsd: native GSD in metres; 0 reads it from the chips.
        normalization: ``registry`` (the sensor's statistics), ``dataset`` (the statistics
            that ``ramen chips --stats`` stored with a chip dataset) or ``custom``
            (``mean`` and ``std`` below).
        mean: per-band mean in physical units, for ``custom``.
        std: per-band standard deviation in physical units, for ``custom``.
    """

    sensor: str
    bands: list[str] = field(default_factory=list)
    orbit: Optional[Literal["asc", "des"]] = None
    units: Literal["auto", "db", "linear"] = "auto"
    scale: Optional[float] = None
    offset: Optional[float] = None
    gsd: float = 0.0
    normalization: Literal["registry", "dataset", "custom"] = "registry"
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SplitRecipe:
    """The labelled chips of one split: a chip dataset, or GeoTIFF file patterns.

    Attributes:
        chips: folder of a chip dataset written by ``ramen chips --labels``.
        images: modality name to a glob pattern of its GeoTIFF chips; the pattern's file
            name contains one ``*``, which matches the chip id.
        label: glob pattern of the label GeoTIFFs, with the same ``*``.
        list: optional text or CSV file of the chips to use (chip ids or file names).
    """

    chips: Optional[Path] = None
    images: dict[str, str] = field(default_factory=dict)
    label: str = ""
    list: Optional[Path] = None

    @property
    def is_chip_dataset(self) -> bool:
        return self.chips is not None


@dataclass(frozen=True)
class DataRecipe:
    """Inputs, splits and batching.

    Attributes:
        gsd: working GSD of the encoder in metres; ``ramen segment`` uses it by default.
        inputs: modality name to its description, in the order the model takes them. The
            first modality's grid is the grid of the labels and of the output.
        train: the training split.
        val: the validation split.
        batch_size: chips per batch.
        crop_size: side in pixels of random training crops on the first modality's grid;
            0 trains on whole chips.
        flip: random horizontal and vertical flips in training.
        num_workers: DataLoader worker processes.
    """

    gsd: float
    inputs: dict[str, InputRecipe]
    train: SplitRecipe
    val: SplitRecipe
    batch_size: int = 8
    crop_size: int = 0
    flip: bool = True
    num_workers: int = 0


@dataclass(frozen=True)
class OutputRecipe:
    """Output folder of a run.

    Attributes:
        dir: folder of ``model.safetensors`` (the best epoch), ``metrics.jsonl``,
            ``summary.json`` and ``training.png``.
        plot: draw ``training.png`` at the end.
    """

    dir: Path = Path("runs/finetune")
    plot: bool = True


@dataclass(frozen=True)
class FinetuneRecipe:
    """A validated fine-tuning recipe."""

    name: str
    task: TaskRecipe
    data: DataRecipe
    encoder: EncoderRecipe = field(default_factory=EncoderRecipe)
    head: HeadRecipe = field(default_factory=HeadRecipe)
    optim: OptimRecipe = field(default_factory=lambda: OptimRecipe(lr=1e-4, warmup_start_lr=1e-6, weight_decay=0.01))
    schedule: ScheduleRecipe = field(default_factory=lambda: ScheduleRecipe(epochs=50, warmup_epochs=2))
    train: TrainRecipe = field(default_factory=TrainRecipe)
    output: OutputRecipe = field(default_factory=OutputRecipe)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def model_config(self) -> RamenConfig:
        return RamenConfig.preset(self.encoder.size)


def _resolve_pattern(pattern: str, base_dir: Path) -> str:
    if not pattern:
        return pattern
    path = Path(pattern).expanduser()
    return str(path if path.is_absolute() else base_dir / path)


def _check(recipe: FinetuneRecipe) -> None:
    task, data, encoder = recipe.task, recipe.data, recipe.encoder
    count = len(task.classes)
    if not 1 <= count <= MAX_CLASSES:
        raise ConfigError(f"recipe key 'task.classes': give between 1 and {MAX_CLASSES} class names, got {count}")
    for key in ("values", "colours", "class_weights"):
        given = getattr(task, key)
        if given and len(given) != count:
            raise ConfigError(f"recipe key 'task.{key}': {len(given)} entries for {count} classes; give one per class")
    if any(weight < 0 for weight in task.class_weights):
        raise ConfigError(f"recipe key 'task.class_weights': weights must not be negative, got {task.class_weights}")
    try:
        task.class_spec()
    except ConfigError as error:
        raise ConfigError(f"recipe section [task]: {error}") from error

    if not data.gsd > 0:
        raise ConfigError(f"recipe key 'data.gsd': must be a positive number of metres, got {data.gsd}")
    if not data.inputs:
        raise ConfigError("recipe has no input; add a [data.inputs.NAME] table with a sensor")
    for name, spec in data.inputs.items():
        if spec.normalization == "custom" and not (spec.mean and spec.std):
            raise ConfigError(f"recipe key 'data.inputs.{name}': normalization 'custom' needs mean and std lists")
        if spec.normalization != "custom" and (spec.mean or spec.std):
            raise ConfigError(
                f"recipe key 'data.inputs.{name}': mean and std are used only with normalization = 'custom'"
            )
        if spec.gsd < 0:
            raise ConfigError(f"recipe key 'data.inputs.{name}.gsd': must not be negative, got {spec.gsd}")
    for split_name in ("train", "val"):
        split: SplitRecipe = getattr(data, split_name)
        prefix = f"data.{split_name}"
        if split.is_chip_dataset and (split.images or split.label):
            raise ConfigError(f"recipe section [{prefix}]: give either chips or images and label, not both")
        if not split.is_chip_dataset:
            if not split.images or not split.label:
                raise ConfigError(
                    f"recipe section [{prefix}]: give chips = DIR (from `ramen chips --labels`), or images "
                    f"(a pattern per input) and label (a pattern)"
                )
            missing = [name for name in data.inputs if name not in split.images]
            extra = [name for name in split.images if name not in data.inputs]
            if missing or extra:
                raise ConfigError(
                    f"recipe key '{prefix}.images': needs one pattern for each input ({', '.join(data.inputs)}); "
                    f"missing {missing}, not an input {extra}"
                )
    if data.batch_size < 1:
        raise ConfigError(f"recipe key 'data.batch_size': must be at least 1, got {data.batch_size}")
    if recipe.head.norm == "batch" and data.batch_size < 2:
        raise ConfigError(
            "recipe key 'data.batch_size': BatchNorm in the head needs batches of 2 or more; raise the "
            "batch size or set head.norm = 'group'"
        )
    if data.crop_size < 0 or data.num_workers < 0:
        raise ConfigError("recipe keys 'data.crop_size' and 'data.num_workers' must not be negative")

    if not encoder.weights and encoder.size not in MODEL_SIZES:
        raise ConfigError(f"recipe key 'encoder.size': expected one of {', '.join(MODEL_SIZES)}")
    if not encoder.include_in_model and (not encoder.freeze or not encoder.weights):
        raise ConfigError(
            "recipe key 'encoder.include_in_model': the encoder can be left out of the model only when it "
            "is frozen and comes from a weights file"
        )
    if encoder.lr < 0:
        raise ConfigError(f"recipe key 'encoder.lr': must not be negative, got {encoder.lr}")
    if recipe.head.norm not in NORMS:
        raise ConfigError(f"recipe key 'head.norm': use one of {', '.join(NORMS)}")
    if len(recipe.head.blocks) not in (0, 4):
        raise ConfigError(f"recipe key 'head.blocks': give four block numbers or none, got {recipe.head.blocks}")
    if recipe.schedule.epochs < 1:
        raise ConfigError(f"recipe key 'schedule.epochs': must be at least 1, got {recipe.schedule.epochs}")
    if not 0 <= recipe.schedule.warmup_epochs <= recipe.schedule.epochs:
        raise ConfigError("recipe key 'schedule.warmup_epochs': must be between 0 and schedule.epochs")
    if not (recipe.optim.lr > 0 and math.isfinite(recipe.optim.lr)):
        raise ConfigError(f"recipe key 'optim.lr': must be positive, got {recipe.optim.lr}")


def finetune_recipe_from_dict(data: dict[str, Any], base_dir: str | Path = ".", source: str = "<dict>") -> FinetuneRecipe:
    """Validate a fine-tuning recipe given as nested dicts (the parsed TOML).

    Raises:
        ConfigError: an unknown key, a wrong type or an invalid value, named by dotted path.
    """
    base = Path(base_dir)
    data = dict(data)
    data.setdefault("name", Path(source).stem if source != "<dict>" else "finetune")
    # The output folder is relative to the working directory, like the outputs of other commands.
    outputs = {}
    if "output" in data:
        outputs["output"] = convert_value(data.pop("output"), OutputRecipe, "output", Path("."))
    recipe: FinetuneRecipe = build_dataclass(
        FinetuneRecipe, data, "", base, also_allowed=("output",), source=source, **outputs
    )
    splits = {}
    for split_name in ("train", "val"):
        split: SplitRecipe = getattr(recipe.data, split_name)
        splits[split_name] = replace(
            split,
            images={name: _resolve_pattern(pattern, base) for name, pattern in split.images.items()},
            label=_resolve_pattern(split.label, base),
        )
    recipe = replace(recipe, data=replace(recipe.data, **splits))
    _check(recipe)
    return recipe


def _is_path_key(parts: list[str] | tuple[str, ...]) -> bool:
    """Whether an override key is a path or a file pattern (relative to the working directory)."""
    if len(parts) >= 3 and parts[0] == "data" and parts[1] in ("train", "val"):
        return parts[2] in ("chips", "label", "list", "images")
    return tuple(parts) == ("output", "dir")


def load_finetune_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneRecipe:
    """Read, override (``key.path=value``) and validate a fine-tuning recipe file.

    Raises:
        ConfigError: the file cannot be read, or a key or value is invalid.
    """
    path = Path(path)
    data = apply_overrides(read_toml(path, "recipe"), list(overrides), is_path_key=_is_path_key)
    return finetune_recipe_from_dict(data, base_dir=path.resolve().parent, source=str(path))
