"""Chip specs: which rasters to cut into aligned multimodal chips, validated from TOML.

A spec names the modalities (sensor, bands, native GSD), the chip size and stride, and
the scenes: for each scene and modality, one file or one list of single-band files per
date. Example::

    name = "sen1floods11"
    size = 32                 # chip side in pixels of the first modality
    stride = 32               # step between chips, pixels of the first modality
    crs = "auto"              # or an EPSG code such as "EPSG:32630"
    min_valid = 0.9           # minimum share of valid pixels in each modality of a chip
    shard_size = 64           # chips per shard file

    [modalities.s2]
    sensor = "s2-l1c"
    gsd = 10.0
    bands = ["B02", "B03", "B04", "B08"]

    [modalities.s1]
    sensor = "s1"
    orbit = "des"
    gsd = 10.0
    bands = ["vv", "vh"]

    [[scenes]]
    name = "Spain_7370579"
    s2 = { files = ["Spain_7370579_S2Hand.tif"], dates = ["2019-09-18"] }
    s1 = { files = ["Spain_7370579_S1Hand.tif"], dates = ["2019-09-17"] }

Relative paths are relative to the spec file's folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from ramen_core.bands import BandSpec
from ramen_core.errors import ConfigError, InputError
from ramen_core.sensors import Sensor, get_sensor
from ramen_core.typed_toml import apply_overrides, build_dataclass, read_toml, to_plain

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
_SCENE_KEYS = ("name", "label")
Resampling = Literal["auto", "nearest", "bilinear", "cubic", "average"]


@dataclass(frozen=True)
class ModalitySpec:
    """How one modality is read and stored.

    Attributes:
        sensor: sensor id or alias from the registry (``s2``, ``s2-l1c``, ``s1``, ``dem``), a
            sensor TOML file or a one-line description. Empty when ``bands`` are tokens.
        bands: band names of the sensor, in channel order; empty selects the sensor's
            default bands. Without a sensor, compact tokens (``842``, ``des_vv``, ``dsm``)
            that describe the file bands in order.
        gsd: native GSD of the stored chips in metres. Required when the first file is in a
            geographic CRS; otherwise the first file's pixel size.
        orbit: ``asc`` or ``des`` for radar bands.
        scale: factor from file values to stored values; default: the sensor's.
        offset: added after ``scale``; default: the sensor's.
        to_db: convert linear backscatter to decibels after scaling (values <= 0 become invalid).
        resampling: ``auto`` picks ``average`` when the chips are coarser than the source
            and ``bilinear`` otherwise; a grid that matches the source is copied exactly.
        mask_invalid: quality-layer values (or bits) marking invalid pixels; default: the sensor's.
    """

    sensor: str = ""
    bands: list[str] = field(default_factory=list)
    gsd: Union[float, None] = None
    orbit: Union[Literal["asc", "des"], None] = None
    scale: Union[float, None] = None
    offset: Union[float, None] = None
    to_db: bool = False
    resampling: Resampling = "auto"
    mask_invalid: Union[list[int], None] = None


@dataclass(frozen=True)
class SourceSpec:
    """The files of one modality in one scene.

    Attributes:
        files: one entry per date: a multi-band file, or a list of files (such as one file
            per band) whose bands are stacked.
        dates: acquisition date of each entry (``2019-09-18``).
        masks: optional quality layer (such as Sentinel-2 SCL) per date.
        file_bands: band names of the files' bands in order, when neither the band
            descriptions nor the file names name them.
    """

    files: list[Union[Path, list[Path]]]
    dates: list[str]
    masks: list[Path] = field(default_factory=list)
    file_bands: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SceneSpec:
    """One area: the sources of every modality, and optionally a label raster."""

    name: str
    sources: dict[str, SourceSpec]
    label: Union[Path, None] = None


@dataclass(frozen=True)
class LabelSpec:
    """Per-pixel labels stored with the chips (for fine-tuning).

    Attributes:
        classes: class names; label value i means ``classes[i]``.
        ignore_index: stored value of unlabelled pixels.
        ignore_values: label file values that mean "unlabelled" (besides its nodata).
        gsd: GSD of the label chips in metres; default: the first modality's.
        colors: optional RGB hex colour per class.
    """

    classes: list[str]
    ignore_index: int = 255
    ignore_values: list[int] = field(default_factory=list)
    gsd: Union[float, None] = None
    colors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ChipSpec:
    """A validated chip spec; see the module docstring for the TOML layout."""

    name: str
    size: int
    modalities: dict[str, ModalitySpec]
    scenes: list[SceneSpec]
    stride: Union[int, None] = None
    crs: str = "auto"
    min_valid: float = 0.5
    shard_size: int = 256
    label: Union[LabelSpec, None] = None

    @property
    def step(self) -> int:
        return self.stride or self.size

    def sensor(self, modality: str) -> Sensor | None:
        name = self.modalities[modality].sensor
        return get_sensor(name) if name else None

    def band_specs(self, modality: str) -> list[BandSpec]:
        """Return the model's description of the modality's bands, in channel order."""
        return modality_band_specs(modality, self.modalities[modality])

    def band_names(self, modality: str) -> list[str]:
        """Return the registry names of the modality's bands (the tokens without a sensor)."""
        spec = self.modalities[modality]
        sensor = self.sensor(modality)
        if sensor is None:
            return list(spec.bands)
        return [band.name for band in sensor.select(spec.bands or None)]

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def modality_band_specs(name: str, spec: ModalitySpec) -> list[BandSpec]:
    """Return the model's description of a modality's bands, in channel order.

    Raises:
        ConfigError: a band is unknown, radar bands lack the orbit, or the bands mix kinds.
    """
    prefix = f"modalities.{name}"
    if not spec.sensor and not spec.bands:
        raise ConfigError(f"chip spec key {prefix!r}: give a sensor (such as s2) or the bands as tokens (842, des_vv, dsm)")
    try:
        if spec.sensor:
            sensor = get_sensor(spec.sensor)
            kinds = {band.kind for band in sensor.select(spec.bands or None)}
            if "radar" in kinds and spec.orbit is None:
                raise ConfigError(f"chip spec key '{prefix}.orbit': radar bands need the orbit direction, 'asc' or 'des'")
            bands = sensor.band_specs(spec.bands or None, orbit=spec.orbit)
        else:
            bands = [BandSpec.parse(token) for token in spec.bands]
    except InputError as error:
        raise ConfigError(f"chip spec key '{prefix}.bands': {error}") from error
    kinds = {band.kind for band in bands}
    if len(kinds) > 1:
        raise ConfigError(
            f"chip spec key '{prefix}.bands': one modality takes bands of one kind, got {sorted(kinds)}; "
            f"split them into separate modalities"
        )
    return bands


def _iso_date(value: Any, key: str) -> str:
    if isinstance(value, datetime.datetime):
        return value.date().isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value[:10]).isoformat()
        except ValueError:
            pass
    raise ConfigError(f"chip spec key {key!r}: expected a date such as 2019-09-18, got {value!r}")


def _scene(index: int, table: Mapping[str, Any], modalities: Sequence[str], base_dir: Path) -> SceneSpec:
    prefix = f"scenes[{index}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"chip spec key {prefix!r}: expected a table, got {table!r}")
    name = table.get("name", f"scene{index}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"chip spec key '{prefix}.name': expected a string, got {name!r}")
    label = table.get("label")
    if label is not None and not isinstance(label, str):
        raise ConfigError(f"chip spec key '{prefix}.label': expected a path string, got {label!r}")
    sources = {}
    for key, value in table.items():
        if key in _SCENE_KEYS:
            continue
        if key not in modalities:
            raise ConfigError(
                f"chip spec key '{prefix}.{key}': {key!r} is not a modality of [modalities] "
                f"({', '.join(modalities)}); scenes take name, label and one table per modality"
            )
        if not isinstance(value, Mapping):
            raise ConfigError(f"chip spec key '{prefix}.{key}': expected a table with files and dates, got {value!r}")
        value = dict(value)
        if isinstance(value.get("dates"), list):
            value["dates"] = [_iso_date(date, f"{prefix}.{key}.dates[{i}]") for i, date in enumerate(value["dates"])]
        source: SourceSpec = build_dataclass(SourceSpec, value, f"{prefix}.{key}", base_dir, "chip spec")
        if not source.files:
            raise ConfigError(f"chip spec key '{prefix}.{key}.files': give at least one file")
        if len(source.dates) != len(source.files):
            raise ConfigError(
                f"chip spec key '{prefix}.{key}.dates': {len(source.dates)} dates for {len(source.files)} "
                f"file entries; give one date per entry of files"
            )
        if source.masks and len(source.masks) != len(source.files):
            raise ConfigError(
                f"chip spec key '{prefix}.{key}.masks': {len(source.masks)} masks for {len(source.files)} dates"
            )
        sources[key] = source
    missing = [name for name in modalities if name not in sources]
    if missing:
        raise ConfigError(f"chip spec key {prefix!r}: scene {name!r} has no {missing[0]!r} table; every scene needs every modality")
    return SceneSpec(name=name, sources=sources, label=None if label is None else base_dir / Path(label).expanduser())


def chip_spec_from_dict(data: Mapping[str, Any], base_dir: str | Path = ".", source: str = "<dict>") -> ChipSpec:
    """Validate a chip spec given as nested dicts (the parsed TOML).

    Raises:
        ConfigError: an unknown key, a wrong type or an invalid value, named by dotted path.
    """
    base = Path(base_dir)
    data = dict(data)
    modalities_table = data.pop("modalities", None)
    if not isinstance(modalities_table, Mapping) or not modalities_table:
        raise ConfigError(f"chip spec {source}: add at least one [modalities.NAME] table")
    modalities = {}
    for name, table in modalities_table.items():
        if not _NAME_PATTERN.match(name):
            raise ConfigError(f"chip spec key 'modalities.{name}': names may hold only letters, digits, '_' and '-'")
        if not isinstance(table, Mapping):
            raise ConfigError(f"chip spec key 'modalities.{name}': expected a table, got {table!r}")
        modalities[name] = build_dataclass(ModalitySpec, table, f"modalities.{name}", base, "chip spec")
        if modalities[name].gsd is not None and not modalities[name].gsd > 0:
            raise ConfigError(f"chip spec key 'modalities.{name}.gsd': must be a positive number of metres")
        modality_band_specs(name, modalities[name])
    scenes_table = data.pop("scenes", None)
    if not isinstance(scenes_table, list) or not scenes_table:
        raise ConfigError(f"chip spec {source}: add at least one [[scenes]] entry")
    scenes = [_scene(index, table, list(modalities), base) for index, table in enumerate(scenes_table)]
    data.setdefault("name", Path(source).stem if source != "<dict>" else "chips")
    spec: ChipSpec = build_dataclass(
        ChipSpec, data, "", base, "chip spec", also_allowed=("modalities", "scenes"), modalities=modalities,
        scenes=scenes,
    )
    _check_spec(spec)
    return spec


def _check_spec(spec: ChipSpec) -> None:
    if not _NAME_PATTERN.match(spec.name):
        raise ConfigError(f"chip spec key 'name': {spec.name!r} may hold only letters, digits, '_' and '-'")
    if spec.size < 1:
        raise ConfigError(f"chip spec key 'size': must be a positive number of pixels, got {spec.size}")
    if spec.stride is not None and spec.stride < 1:
        raise ConfigError(f"chip spec key 'stride': must be a positive number of pixels, got {spec.stride}")
    if not 0.0 <= spec.min_valid <= 1.0:
        raise ConfigError(f"chip spec key 'min_valid': must be between 0 and 1, got {spec.min_valid}")
    if spec.shard_size < 1:
        raise ConfigError(f"chip spec key 'shard_size': must be at least 1, got {spec.shard_size}")
    names = [scene.name for scene in spec.scenes]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"chip spec: scene name {repeated[0]!r} is used twice; give each scene its own name")
    if spec.label is not None:
        if not spec.label.classes:
            raise ConfigError("chip spec key 'label.classes': name at least one class")
        if spec.label.colors and len(spec.label.colors) != len(spec.label.classes):
            raise ConfigError("chip spec key 'label.colors': give one colour per class")
        if 0 <= spec.label.ignore_index < len(spec.label.classes):
            raise ConfigError(
                f"chip spec key 'label.ignore_index': {spec.label.ignore_index} is a class index; use a value "
                f"outside 0..{len(spec.label.classes) - 1}, such as 255 or -1"
            )
        unlabelled = [scene.name for scene in spec.scenes if scene.label is None]
        if unlabelled:
            raise ConfigError(f"chip spec: scene {unlabelled[0]!r} has no label file, but [label] asks for labels")
    elif any(scene.label is not None for scene in spec.scenes):
        raise ConfigError("chip spec: scenes name label files, but there is no [label] table with the class names")


def _is_path_key(parts: Sequence[str]) -> bool:
    return bool(parts) and parts[-1] in ("files", "masks", "label")


def load_chip_spec(path: str | Path, overrides: Sequence[str] = ()) -> ChipSpec:
    """Read, override and validate a chip spec file.

    Raises:
        ConfigError: the file cannot be read, or a key or value is invalid.
    """
    path = Path(path)
    data = apply_overrides(read_toml(path, "chip spec"), overrides, is_path_key=_is_path_key)
    return chip_spec_from_dict(data, base_dir=path.resolve().parent, source=str(path))


def with_labels(
    spec: ChipSpec,
    label: str | Path,
    classes: Sequence[str] | None = None,
    ignore_values: Sequence[int] = (),
) -> ChipSpec:
    """Return a spec whose only scene takes its labels from ``label`` (``ramen chips --labels``).

    Args:
        spec: a spec with exactly one scene.
        label: label raster of that scene; its values are class indices.
        classes: class names, required when the spec has no ``[label]`` table.
        ignore_values: label values that mean "unlabelled", besides the raster's nodata.

    Raises:
        ConfigError: the spec has several scenes, or no class names are known.
    """
    if len(spec.scenes) != 1:
        raise ConfigError(
            f"--labels names one label raster, but the chip spec has {len(spec.scenes)} scenes; "
            f"give each scene its label = \"FILE\" in the spec instead"
        )
    label_spec = spec.label
    if classes:
        label_spec = LabelSpec(classes=list(classes)) if label_spec is None else dataclasses.replace(label_spec, classes=list(classes))
    if label_spec is None:
        raise ConfigError("--labels needs the class names: pass --classes NAME,NAME or add a [label] table to the spec")
    if ignore_values:
        label_spec = dataclasses.replace(label_spec, ignore_values=sorted({*label_spec.ignore_values, *ignore_values}))
    scene = dataclasses.replace(spec.scenes[0], label=Path(label))
    return replace_spec(spec, scenes=[scene], label=label_spec)


def replace_spec(spec: ChipSpec, **changes: Any) -> ChipSpec:
    """Return a copy of a spec with some fields changed, validated again."""
    updated = dataclasses.replace(spec, **changes)
    _check_spec(updated)
    return updated
