"""A fine-tuned segmentation model as one safetensors file: weights plus what inference needs.

The file is a ramen weights file (:func:`ramen_core.weights.save_weights`) whose tensors are
``head.*`` and, unless the encoder is referenced instead, ``encoder.*``. Its header contains,
as JSON strings:

- ``task``: ``segmentation``;
- ``head``: the head's architecture (:class:`HeadConfig`);
- ``classes``: name, label value and colour of each class, and the ignore index;
- ``modalities``: for each input, the sensor, the band names and physics, the native GSD
  and the normalisation statistics used in training;
- ``gsd``: the working GSD of the encoder in metres;
- ``encoder_weights``: where the frozen encoder comes from (path or URI and SHA-256) when
  the file contains no ``encoder.*`` tensors;
- ``metrics`` and ``recipe``: the validation scores of the saved epoch and the training
  recipe, for the record.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ramen_core.bands import BandSpec
from ramen_core.errors import ConfigError, InputError, WeightsError
from ramen_core.heads.upernet import Segmenter
from ramen_core.model import RamenEncoder
from ramen_core.weights import build_encoder, load_weights, save_weights

logger = logging.getLogger(__name__)

TASK = "segmentation"
# Class maps are uint8 with 255 as nodata, so at most 255 classes (values 0 to 254).
NODATA_CLASS = 255
MAX_CLASSES = 255

# Colours of classes that the recipe gives none (matplotlib's tab10 palette, then grey).
DEFAULT_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def parse_colour(value: Any) -> tuple[int, int, int]:
    """Read a colour given as ``#rrggbb`` or as ``[r, g, b]`` with values 0 to 255."""
    if isinstance(value, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", value.strip()):
        text = value.strip().lstrip("#")
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(channel, int) and 0 <= channel <= 255 for channel in value
    ):
        return int(value[0]), int(value[1]), int(value[2])
    raise ConfigError(f"invalid colour {value!r}; give '#rrggbb' or [r, g, b] with values 0 to 255")


@dataclass(frozen=True)
class ClassSpec:
    """The classes of a segmentation task.

    Attributes:
        names: class names; class ``k`` is output value ``k`` of the class map.
        values: label raster value of each class (default ``0 .. K-1``).
        colours: RGB colour of each class, 0 to 255.
        ignore_index: label value that takes no part in training or evaluation. The value
            -1 and the label raster's nodata are ignored as well.
    """

    names: tuple[str, ...]
    values: tuple[int, ...] = ()
    colours: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int | None = 255

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("a segmentation task needs at least one class name")
        if len(self.names) > MAX_CLASSES:
            raise ConfigError(
                f"{len(self.names)} classes do not fit a uint8 class map with nodata {NODATA_CLASS}; "
                f"use at most {MAX_CLASSES}"
            )
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"class names must be unique, got {list(self.names)}")
        values = self.values or tuple(range(len(self.names)))
        if len(values) != len(self.names):
            raise ConfigError(f"{len(values)} label values given for {len(self.names)} classes; give one per class")
        if len(set(values)) != len(values):
            raise ConfigError(f"label values must be unique, got {list(values)}")
        if self.ignore_index is not None and self.ignore_index in values:
            raise ConfigError(f"ignore_index {self.ignore_index} is also the label value of a class; change one of them")
        colours = self.colours or tuple(
            DEFAULT_COLOURS[index % len(DEFAULT_COLOURS)] for index in range(len(self.names))
        )
        if len(colours) != len(self.names):
            raise ConfigError(f"{len(colours)} colours given for {len(self.names)} classes; give one per class")
        object.__setattr__(self, "values", tuple(int(value) for value in values))
        object.__setattr__(self, "colours", tuple(parse_colour(colour) for colour in colours))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [
                {"index": index, "name": name, "value": value, "colour": list(colour)}
                for index, (name, value, colour) in enumerate(zip(self.names, self.values, self.colours))
            ],
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassSpec:
        classes = sorted(data["classes"], key=lambda entry: entry["index"])
        return cls(
            names=tuple(entry["name"] for entry in classes),
            values=tuple(entry["value"] for entry in classes),
            colours=tuple(tuple(entry["colour"]) for entry in classes),  # type: ignore[misc]
            ignore_index=data.get("ignore_index"),
        )


@dataclass(frozen=True)
class ModalitySpec:
    """How a model reads one input modality.

    Attributes:
        name: modality name (``s1``, ``s2``), the key of ``--input NAME=FILE``.
        sensor: sensor id in the registry, or the description it was made from.
        bands: band names, in channel order.
        band_physics: the :class:`BandSpec` of each band as a dict, so that a model whose
            sensor is not in the registry still records what each channel measures.
        gsd: pixel size in metres at which the model saw this modality in training.
        mean: per-band normalisation mean, in physical units (reflectance, dB, m).
        std: per-band normalisation standard deviation, in the same units.
        orbit: orbit direction of radar bands, ``asc`` or ``des``; None for other sensors.
        scale: factor from stored values to physical units used in training, when it
            differs from the sensor's; None means the sensor's.
        offset: added after ``scale``, in physical units; None means the sensor's.
    """

    name: str
    sensor: str
    bands: tuple[str, ...]
    band_physics: tuple[dict[str, Any], ...]
    gsd: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    orbit: str | None = None
    scale: float | None = None
    offset: float | None = None

    def __post_init__(self) -> None:
        count = len(self.bands)
        if not count:
            raise ConfigError(f"modality {self.name!r} has no bands")
        for label, values in (("band_physics", self.band_physics), ("mean", self.mean), ("std", self.std)):
            if len(values) != count:
                raise ConfigError(f"modality {self.name!r}: {len(values)} {label} entries for {count} bands")
        if any(not value > 0 for value in self.std):
            raise ConfigError(f"modality {self.name!r}: normalisation std must be positive, got {list(self.std)}")

    def band_specs(self) -> list[BandSpec]:
        return [BandSpec(**physics) for physics in self.band_physics]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["bands"] = list(self.bands)
        values["band_physics"] = [dict(physics) for physics in self.band_physics]
        values["mean"] = list(self.mean)
        values["std"] = list(self.std)
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModalitySpec:
        return cls(
            name=data["name"],
            sensor=data["sensor"],
            bands=tuple(data["bands"]),
            band_physics=tuple(dict(physics) for physics in data["band_physics"]),
            gsd=float(data["gsd"]),
            mean=tuple(float(value) for value in data["mean"]),
            std=tuple(float(value) for value in data["std"]),
            orbit=data.get("orbit"),
            scale=data.get("scale"),
            offset=data.get("offset"),
        )


@dataclass(frozen=True)
class HeadConfig:
    """Architecture of a UPerNet head (see :class:`ramen_core.heads.UPerNetHead`)."""

    blocks: tuple[int, ...] | None = None
    channels: int = 512
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1
    norm: str = "batch"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "upernet", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadConfig:
        kind = data.get("type", "upernet")
        if kind != "upernet":
            raise WeightsError(f"head type {kind!r} is not supported; this version of ramen has 'upernet'")
        blocks = data.get("blocks")
        return cls(
            blocks=None if blocks is None else tuple(blocks),
            channels=int(data["channels"]),
            pool_scales=tuple(data["pool_scales"]),
            dropout=float(data["dropout"]),
            norm=str(data["norm"]),
        )


def build_segmenter(encoder: RamenEncoder, classes: ClassSpec, head: HeadConfig, freeze_encoder: bool = True) -> Segmenter:
    """Build a :class:`Segmenter` with a freshly initialised head."""
    return Segmenter(
        encoder,
        classes.num_classes,
        blocks=head.blocks,
        channels=head.channels,
        pool_scales=head.pool_scales,
        dropout=head.dropout,
        norm=head.norm,
        freeze_encoder=freeze_encoder,
    )


@dataclass
class SegmentationModel:
    """A segmenter with its classes, inputs and working GSD.

    Attributes:
        segmenter: encoder plus head.
        classes: the task's classes.
        modalities: the inputs, in the order the model takes them (the first sets the grid).
        gsd: working GSD of the encoder in metres.
        head: architecture of the head.
        encoder_weights: ``{"source": path or URI, "sha256": ...}`` of the encoder's
            weights file, when the encoder is referenced rather than stored.
        metadata: the other header entries (``metrics``, ``recipe``), as read.
    """

    segmenter: Segmenter
    classes: ClassSpec
    modalities: list[ModalitySpec]
    gsd: float
    head: HeadConfig = field(default_factory=HeadConfig)
    encoder_weights: dict[str, str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def modality(self, name: str) -> ModalitySpec:
        for spec in self.modalities:
            if spec.name == name:
                return spec
        raise InputError(
            f"the model has no input {name!r}; it takes {', '.join(spec.name for spec in self.modalities)}"
        )


def save_segmentation_model(
    path: str | os.PathLike[str],
    model: SegmentationModel,
    include_encoder: bool = True,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a segmentation model to one safetensors file, atomically.

    Args:
        path: output ``.safetensors`` file.
        model: the model to save.
        include_encoder: store the encoder's tensors. When False the file stores
            ``model.encoder_weights`` instead, which must then be set, and loading needs
            that file (checked by SHA-256).
        extra_metadata: more header entries (``metrics``, ``recipe``); values that are not
            strings are stored as JSON.

    Raises:
        ConfigError: ``include_encoder`` is False and the model has no encoder reference.
        WeightsError, OutputError: from :func:`ramen_core.weights.save_weights`.
    """
    state = {key: value for key, value in model.segmenter.state_dict().items()}
    if not include_encoder:
        if not model.encoder_weights:
            raise ConfigError("the encoder can be left out of the file only when its weights file is known")
        state = {key: value for key, value in state.items() if not key.startswith("encoder.")}
    metadata: dict[str, str] = {
        "task": TASK,
        "head": json.dumps(model.head.to_dict()),
        "classes": json.dumps(model.classes.to_dict()),
        "modalities": json.dumps([spec.to_dict() for spec in model.modalities]),
        "gsd": json.dumps(float(model.gsd)),
    }
    if not include_encoder:
        metadata["encoder_weights"] = json.dumps(model.encoder_weights)
    for key, value in (extra_metadata or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    return save_weights(path, state, model.segmenter.encoder.config, metadata)


def _header_json(metadata: Mapping[str, str], key: str, path: Path) -> Any:
    if key not in metadata:
        raise WeightsError(
            f"{str(path)!r} is not a segmentation model: its header has no {key!r} entry; "
            f"make one with `ramen finetune`"
        )
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise WeightsError(f"{str(path)!r}: header entry {key!r} is not valid JSON ({error})") from error


def _load_referenced_encoder(reference: Mapping[str, str], path: Path, device: str | torch.device) -> RamenEncoder:
    source = reference.get("source")
    if not source:
        raise WeightsError(f"{str(path)!r} references an encoder without a source; re-save it with the encoder")
    loaded = load_weights(source)
    expected = reference.get("sha256")
    if expected and loaded.sha256 != expected:
        raise WeightsError(
            f"{str(path)!r} was trained on encoder weights with SHA-256 {expected[:12]}…, but {source!r} "
            f"has {loaded.sha256[:12]}…; restore that file or re-save the model with its encoder"
        )
    return build_encoder(loaded, device)


def load_segmentation_model(path_or_uri: str | os.PathLike[str], device: str | torch.device = "cpu") -> SegmentationModel:
    """Load a segmentation model saved by :func:`save_segmentation_model`, in eval mode.

    Raises:
        WeightsError: the file is not a segmentation model, or its referenced encoder is
            missing or has changed.
    """
    loaded = load_weights(path_or_uri)
    path = loaded.path
    task = loaded.metadata.get("task")
    if task != TASK:
        raise WeightsError(
            f"{str(path)!r} is not a segmentation model (task {task!r}); pass a file written by "
            f"`ramen finetune`, or use `ramen embed` for encoder weights"
        )
    head = HeadConfig.from_dict(_header_json(loaded.metadata, "head", path))
    classes = ClassSpec.from_dict(_header_json(loaded.metadata, "classes", path))
    modalities = [ModalitySpec.from_dict(entry) for entry in _header_json(loaded.metadata, "modalities", path)]
    gsd = float(_header_json(loaded.metadata, "gsd", path))

    reference = None
    if "encoder" in loaded.parts:
        encoder = build_encoder(loaded, device)
    else:
        reference = _header_json(loaded.metadata, "encoder_weights", path)
        encoder = _load_referenced_encoder(reference, path, device)

    segmenter = build_segmenter(encoder, classes, head)
    head_state = loaded.part("head")
    try:
        segmenter.head.load_state_dict(head_state, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"{str(path)!r}: the head tensors do not match its head config ({error})") from error
    segmenter.to(device).eval()
    known = ("task", "head", "classes", "modalities", "gsd", "encoder_weights")
    extra = {key: value for key, value in loaded.metadata.items() if key not in known}
    extra["sha256"] = loaded.sha256
    logger.info(
        "loaded segmentation model %s: %d classes, inputs %s, GSD %g m",
        path, classes.num_classes, ", ".join(spec.name for spec in modalities), gsd,
    )
    return SegmentationModel(segmenter, classes, modalities, gsd, head, reference, extra)
