"""On-disk format of a chip dataset: a manifest and sharded safetensors files.

A chip dataset is a folder::

    manifest.json              what every shard holds, band metadata, statistics, labels
    shard-00000.safetensors    many chips, stacked along the first axis
    shard-00001.safetensors
    ...

Tensors of a shard with N chips (``<m>`` is a modality name such as ``s2``):

- ``<m>/data``: float32 [N, T, C, H, W], the stored values (file values × scale + offset),
  0 where invalid;
- ``<m>/valid``: bool [N, T, H, W], False for nodata, NaN or pixels a quality layer rejects;
- ``<m>/dates``: int32 [N, T], acquisition dates as days since 1970-01-01;
- ``chip/id``: int64 [N], index of the chip in the dataset;
- ``chip/scene``: int32 [N], index into the manifest's ``scenes``;
- ``chip/bounds``: float64 [N, 4], left, bottom, right, top in the scene's CRS;
- ``label`` (labelled datasets only): int16 [N, H, W], class index per pixel on the label
  grid, ``labels.ignore_index`` where unlabelled.

Every modality of a chip covers the same ground footprint at its own native GSD, so
``H × GSD`` is the same for all modalities (up to the rounding of the sizes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ramen_core._atomic import atomic_path
from ramen_core.bands import BandSpec
from ramen_core.errors import InputError

logger = logging.getLogger(__name__)

FORMAT_NAME = "ramen-chips"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{index:05d}.safetensors"


@dataclass(frozen=True)
class ModalityInfo:
    """One modality of a chip dataset.

    Attributes:
        name: modality name, also the tensor key prefix (``s2``).
        bands: one :class:`BandSpec` per channel, in channel order.
        gsd: native GSD of the stored pixels in metres.
        size: chip size (rows, cols) in pixels.
        num_dates: dates per chip (T).
        sensor: sensor id from the registry, or "" when the bands were given by hand.
        units: physical units of the stored values.
        scale: factor applied to the file values before storing.
        offset: added after ``scale``.
    """

    name: str
    bands: tuple[BandSpec, ...]
    gsd: float
    size: tuple[int, int]
    num_dates: int = 1
    sensor: str = ""
    units: str = ""
    scale: float = 1.0
    offset: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "bands": [dataclasses.asdict(band) for band in self.bands],
            "gsd": self.gsd,
            "size": list(self.size),
            "num_dates": self.num_dates,
            "sensor": self.sensor,
            "units": self.units,
            "scale": self.scale,
            "offset": self.offset,
        }

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> ModalityInfo:
        return cls(
            name=name,
            bands=tuple(BandSpec(**band) for band in data["bands"]),
            gsd=float(data["gsd"]),
            size=(int(data["size"][0]), int(data["size"][1])),
            num_dates=int(data.get("num_dates", 1)),
            sensor=str(data.get("sensor", "")),
            units=str(data.get("units", "")),
            scale=float(data.get("scale", 1.0)),
            offset=float(data.get("offset", 0.0)),
        )

    @property
    def footprint_m(self) -> tuple[float, float]:
        """Ground extent (height, width) of a chip in metres."""
        return self.size[0] * self.gsd, self.size[1] * self.gsd


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel normalisation statistics of one modality, over valid pixels.

    Attributes:
        mean: mean per channel, in stored units.
        std: standard deviation per channel (population), in stored units.
        count: valid pixels counted per channel.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "count": list(self.count)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelStats:
        return cls(
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            count=tuple(int(v) for v in data["count"]),
        )


@dataclass(frozen=True)
class LabelInfo:
    """Per-pixel labels of a labelled chip dataset.

    Attributes:
        classes: class names; class index i is ``classes[i]``.
        ignore_index: label value of unlabelled pixels (excluded from losses and metrics).
        gsd: GSD of the label grid in metres.
        size: label chip size (rows, cols) in pixels.
        colors: optional RGB hex colour per class (``#1f77b4``), for rendered outputs.
    """

    classes: tuple[str, ...]
    ignore_index: int
    gsd: float
    size: tuple[int, int]
    colors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "ignore_index": self.ignore_index,
            "gsd": self.gsd,
            "size": list(self.size),
            "colors": list(self.colors),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelInfo:
        return cls(
            classes=tuple(str(name) for name in data["classes"]),
            ignore_index=int(data["ignore_index"]),
            gsd=float(data["gsd"]),
            size=(int(data["size"][0]), int(data["size"][1])),
            colors=tuple(str(color) for color in data.get("colors", ())),
        )


@dataclass(frozen=True)
class ShardInfo:
    """One shard file: its name in the dataset folder and its number of chips."""

    file: str
    num_chips: int


@dataclass(frozen=True)
class SceneInfo:
    """One source scene that chips were cut from.

    Attributes:
        name: scene name from the spec.
        crs: CRS of the chip grid (``EPSG:32630``).
        num_chips: chips written from this scene.
        sources: per modality, the source files of each date.
    """

    name: str
    crs: str
    num_chips: int
    sources: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """Content of ``manifest.json``.

    Attributes:
        name: dataset name.
        modalities: modality name to its description, in the spec's order; the first is
            the grid reference of the chips.
        shards: shard files in order; chip ids run through them consecutively.
        scenes: scenes the chips came from.
        stats: per-modality channel statistics, once ``ramen chips --stats`` computed them.
        labels: label description of a labelled dataset.
        spec: the chip spec that built the dataset, for the record.
    """

    name: str
    modalities: dict[str, ModalityInfo]
    shards: tuple[ShardInfo, ...]
    scenes: tuple[SceneInfo, ...] = ()
    stats: dict[str, ChannelStats] | None = None
    labels: LabelInfo | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def num_chips(self) -> int:
        return sum(shard.num_chips for shard in self.shards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "num_chips": self.num_chips,
            "modalities": {name: info.to_dict() for name, info in self.modalities.items()},
            "shards": [dataclasses.asdict(shard) for shard in self.shards],
            "scenes": [dataclasses.asdict(scene) for scene in self.scenes],
            "stats": None if self.stats is None else {name: s.to_dict() for name, s in self.stats.items()},
            "labels": None if self.labels is None else self.labels.to_dict(),
            "spec": self.spec,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "<dict>") -> Manifest:
        """Read a manifest, raising :class:`InputError` for another format or a newer version."""
        if data.get("format") != FORMAT_NAME:
            raise InputError(f"{where} is not a ramen chip manifest (format {data.get('format')!r})")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise InputError(
                f"{where} has chip format version {version!r}; this ramen reads version {FORMAT_VERSION} "
                f"and older; upgrade ramen or rebuild the chips"
            )
        try:
            stats = data.get("stats")
            labels = data.get("labels")
            return cls(
                name=str(data["name"]),
                modalities={name: ModalityInfo.from_dict(name, info) for name, info in data["modalities"].items()},
                shards=tuple(ShardInfo(str(s["file"]), int(s["num_chips"])) for s in data["shards"]),
                scenes=tuple(
                    SceneInfo(str(s["name"]), str(s["crs"]), int(s["num_chips"]), dict(s.get("sources", {})))
                    for s in data.get("scenes", [])
                ),
                stats=None if stats is None else {name: ChannelStats.from_dict(s) for name, s in stats.items()},
                labels=None if labels is None else LabelInfo.from_dict(labels),
                spec=dict(data.get("spec") or {}),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise InputError(f"{where}: invalid chip manifest ({type(error).__name__}: {error}); rebuild the chips") from error

    def with_stats(self, stats: dict[str, ChannelStats]) -> Manifest:
        return dataclasses.replace(self, stats=stats)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def read_manifest(folder: str | Path) -> Manifest:
    """Read ``manifest.json`` of a chip dataset folder.

    Raises:
        InputError: the folder or its manifest is missing, unreadable or invalid.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise InputError(f"chip dataset {str(folder)!r} not found; build it with `ramen chips`")
    if not path.is_file():
        raise InputError(
            f"chip dataset {str(folder)!r} has no {MANIFEST_NAME}; it is empty or was not written "
            f"completely. Build it again with `ramen chips`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {str(path)!r}: {error}; build the chips again") from error
    if not isinstance(data, dict):
        raise InputError(f"{str(path)!r} is not a JSON object; build the chips again")
    return Manifest.from_dict(data, where=str(path))


def write_manifest(folder: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically."""
    path = Path(folder) / MANIFEST_NAME
    write_json_atomic(path, manifest.to_dict())
    logger.info("wrote %s (%d chips in %d shards)", path, manifest.num_chips, len(manifest.shards))
    return path
