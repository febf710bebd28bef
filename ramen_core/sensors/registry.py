"""Sensor and catalog descriptions, read from the TOML files in ``ramen_core/sensors/data``.

A sensor file states each band's physics (what RAMEN embeds), the raster encoding of its
assets (dtype, nodata, scale, offset), default normalisation statistics with their source,
and the STAC collection id and asset key of each band in each catalog. Users add sensors
with their own TOML file or a one-line description (see :func:`parse_sensor_description`)
without touching code.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ramen_core.bands import ELEVATION_KINDS, POLARISATIONS, BandKind, BandSpec
from ramen_core.errors import ConfigError, InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

logger = logging.getLogger(__name__)

_CATALOGS_FILE = "catalogs.toml"
_BAND_KINDS = ("optical", "radar", "elevation")


def normalise_band_name(name: str) -> str:
    """Return the key under which band names are compared.

    Matching ignores case, spaces, ``_`` and ``-``, and leading zeros of numbers, so
    ``B1``, ``b01`` and ``B_01`` are the same band while ``B8A`` and ``B08`` stay apart.
    """
    text = re.sub(r"[\s_\-]", "", str(name).lower())
    return re.sub(r"(?<![0-9])0+(?=[0-9])", "", text)


@dataclass(frozen=True)
class Band:
    """One band of a sensor.

    Attributes:
        name: canonical band name (``B04``, ``vv``, ``dsm``).
        kind: ``optical``, ``radar`` or ``elevation``.
        wavelength_nm: centre wavelength in nanometres (optical bands).
        polarisation: ``vv``, ``vh``, ``hv`` or ``hh`` (radar bands); the orbit direction
            comes from each item, see :func:`ramen_core.sensors.orbit_direction`.
        elevation: ``dsm``, ``dtm`` or ``slope`` (elevation bands).
        gsd: native ground sampling distance of this band in metres, when it differs from
            the sensor's (Sentinel-2 B05 is 20 m); None means the sensor's GSD.
        aliases: other names of the band (STAC common names, product file names).
        mean: default normalisation mean, in the units after scaling (reflectance, dB, m).
        std: default normalisation standard deviation, in the same units.
        derived_from: name of the band this one is computed from (``slope`` from ``dsm``);
            None for a band read from an asset.
    """

    name: str
    kind: BandKind
    wavelength_nm: float | None = None
    polarisation: str | None = None
    elevation: str | None = None
    gsd: float | None = None
    aliases: tuple[str, ...] = ()
    mean: float | None = None
    std: float | None = None
    derived_from: str | None = None

    def __post_init__(self) -> None:
        # BandSpec validates the physics; orbit "asc" is a placeholder for radar bands.
        self.spec(orbit="asc")

    def spec(self, orbit: str | None = None) -> BandSpec:
        """Build the :class:`BandSpec` the model embeds.

        Args:
            orbit: ``asc`` or ``des`` (or ``ascending``/``descending``); required for radar
                bands, ignored otherwise.

        Raises:
            InputError: a radar band without an orbit direction.
        """
        if self.kind == "optical":
            return BandSpec(name=self.name, kind="optical", wavelength_nm=self.wavelength_nm)
        if self.kind == "radar":
            if orbit is None:
                raise InputError(
                    f"radar band {self.name!r} needs an orbit direction: pass orbit='asc' or "
                    f"'des', or read it from the item with orbit_direction(item)"
                )
            return BandSpec.radar(str(self.polarisation), str(orbit), name=self.name)
        return BandSpec.elev(str(self.elevation), name=self.name)

    def matches(self, name: str) -> bool:
        """Return whether ``name`` is this band's name or one of its aliases, compared leniently."""
        key = normalise_band_name(name)
        return key == normalise_band_name(self.name) or any(
            key == normalise_band_name(alias) for alias in self.aliases
        )

    def describe_physics(self) -> str:
        """Short text of what the model embeds: ``665 nm``, ``vv``, ``dsm``."""
        if self.kind == "optical":
            return f"{self.wavelength_nm:g} nm"
        if self.kind == "radar":
            return str(self.polarisation)
        return str(self.elevation)


@dataclass(frozen=True)
class MaskSpec:
    """A quality layer that marks invalid pixels (clouds, shadows, fill).

    Attributes:
        name: name of the layer, also its key in the catalog asset tables (``scl``).
        kind: ``classes`` (a pixel is invalid when its value is in ``invalid``) or
            ``bits`` (a pixel is invalid when any bit listed in ``invalid`` is set).
        invalid: the invalid class values or bit positions.
        gsd: native GSD of the layer in metres; resample it with nearest neighbour.
    """

    name: str
    kind: str
    invalid: tuple[int, ...]
    gsd: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("classes", "bits"):
            raise ConfigError(f"mask {self.name!r}: kind {self.kind!r} must be 'classes' or 'bits'")

    def invalid_pixels(self, values: Any, invalid: Iterable[int] | None = None) -> Any:
        """Return a boolean array, True where ``values`` of this layer mark a pixel invalid.

        Args:
            values: integer array of the quality layer (numpy or dask).
            invalid: class values or bit positions overriding the defaults.
        """
        codes = tuple(self.invalid if invalid is None else invalid)
        if self.kind == "classes":
            return np.isin(values, codes)
        bits = 0
        for bit in codes:
            bits |= 1 << int(bit)
        return np.bitwise_and(values.astype("int64"), bits) != 0


@dataclass(frozen=True)
class Catalog:
    """A STAC API that sensor files refer to by name.

    Attributes:
        name: short name (``earth-search``).
        url: root URL of the STAC API.
        title: human-readable title.
        signing: ``planetary-computer`` when asset hrefs must be signed with
            ``planetary_computer.sign`` before reading; empty when they are read as they are.
    """

    name: str
    url: str
    title: str = ""
    signing: str = ""


@dataclass(frozen=True)
class Sensor:
    """A sensor (or product) and how its bands appear in STAC catalogs.

    Attributes:
        id: canonical id, usually the STAC collection id (``sentinel-2-l2a``).
        title: human-readable name.
        aliases: short names (``s2``).
        bands: every band the sensor offers, in the registry's order.
        gsd: native ground sampling distance in metres of the finest band.
        dtype: data type of the stored assets.
        nodata: nodata value of the stored assets, or None when they declare none.
        scale: factor from stored values to physical units.
        offset: added after ``scale``; item metadata can override both, see
            :func:`ramen_core.sensors.scaling_for_item`.
        units: physical units after scaling.
        radiometry: special radiometric rule: ``sentinel-2`` (processing-baseline offset),
            ``backscatter`` (linear power to dB), or None.
        default_catalog: name of the catalog used when the user gives none.
        default_bands: bands loaded when the user names none.
        catalogs: ``{catalog name: {collection id: {band or mask name: asset key}}}``.
        mask: the quality layer, if the sensor has one.
        stats_source: where the default ``mean``/``std`` of the bands come from.
        cloud_cover_property: item property holding the cloud cover in percent, or None.
        source: file or text the sensor was read from.
    """

    id: str
    title: str
    bands: tuple[Band, ...]
    gsd: float
    dtype: str = "float32"
    nodata: float | None = None
    scale: float = 1.0
    offset: float = 0.0
    units: str = ""
    radiometry: str | None = None
    default_catalog: str | None = None
    default_bands: tuple[str, ...] = ()
    catalogs: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)
    mask: MaskSpec | None = None
    stats_source: str = ""
    cloud_cover_property: str | None = None
    aliases: tuple[str, ...] = ()
    source: str = ""

    def band(self, name: str) -> Band:
        """Find a band by name or alias, leniently (``B1`` finds ``B01``).

        Raises:
            InputError: no band of this sensor has that name.
        """
        for band in self.bands:
            if band.matches(name):
                return band
        known = ", ".join(band.name for band in self.bands)
        raise InputError(f"sensor {self.id!r} has no band {name!r}; its bands are {known}")

    def select(self, names: Sequence[str] | None = None) -> list[Band]:
        """Return the bands named in ``names`` (in that order), or the default bands."""
        if names is None or len(names) == 0:
            names = self.default_bands or tuple(band.name for band in self.bands)
        return [self.band(name) for name in names]

    def band_specs(self, names: Sequence[str] | None = None, orbit: str | None = None) -> list[BandSpec]:
        """Build the model's :class:`BandSpec` list for the selected bands.

        Args:
            names: band names; None selects the default bands.
            orbit: orbit direction for radar bands (``asc`` or ``des``).
        """
        return [band.spec(orbit=orbit) for band in self.select(names)]

    def normalisation(self, names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the default per-band ``(mean, std)`` arrays, float32, for the selected bands.

        Bands without statistics get mean 0 and std 1, so they pass through unchanged.
        """
        bands = self.select(names)
        mean = np.array([0.0 if band.mean is None else band.mean for band in bands], dtype=np.float32)
        std = np.array([1.0 if band.std is None else band.std for band in bands], dtype=np.float32)
        return mean, std

    def band_gsd(self, name: str) -> float:
        """Native GSD of one band in metres."""
        band = self.band(name)
        return float(band.gsd if band.gsd is not None else self.gsd)

    def collections(self, catalog: str | None = None) -> list[str]:
        """Return the collection ids of this sensor in one catalog, or in every catalog.

        Args:
            catalog: catalog name; None returns the ids of all catalogs, without repeats.
        """
        if catalog is not None:
            return list(self.catalogs.get(catalog, {}))
        ids: list[str] = []
        for tables in self.catalogs.values():
            ids.extend(collection for collection in tables if collection not in ids)
        return ids

    def asset_key(self, item: Any, name: str) -> str:
        """Find the asset of ``item`` that contains band (or mask) ``name``.

        The item's collection is looked up in every catalog table of this sensor, so an
        item from any catalog (or a local copy of one) resolves the same way. When no table
        names an existing asset, the asset keys and their ``eo:bands`` names are compared
        leniently with the band's name and aliases.

        Args:
            item: a ``pystac.Item`` or an item dictionary.
            name: band or mask name.

        Raises:
            InputError: the item has no asset for that band.
        """
        assets = item_assets(item)
        collection = item_collection(item)
        band = None if self.mask is not None and name == self.mask.name else self.band(name)
        canonical = band.name if band is not None else name

        for tables in self.catalogs.values():
            key = tables.get(collection or "", {}).get(canonical)
            if key is not None and key in assets:
                return key
        for tables in self.catalogs.values():
            for table in tables.values():
                key = table.get(canonical)
                if key is not None and key in assets:
                    return key

        def matches(candidate: str) -> bool:
            if band is not None:
                return band.matches(candidate)
            return normalise_band_name(candidate) == normalise_band_name(name)

        for key in assets:
            if matches(key):
                return key
        for key, asset in assets.items():
            eo_bands = asset.get("eo:bands") or asset.get("bands") or []
            if len(eo_bands) == 1 and any(
                matches(str(eo_bands[0].get(field_name, ""))) for field_name in ("name", "common_name")
            ):
                return key
        raise InputError(
            f"item {item_id(item)!r} has no asset for band {name!r} of sensor {self.id!r}; "
            f"its assets are {', '.join(sorted(assets))}"
        )


def item_assets(item: Any) -> dict[str, dict[str, Any]]:
    """Return ``{key: asset dictionary}`` of a ``pystac.Item`` or an item dictionary."""
    if isinstance(item, Mapping):
        return dict(item.get("assets") or {})
    return {key: asset.to_dict() for key, asset in item.assets.items()}


def item_properties(item: Any) -> dict[str, Any]:
    """Return the properties of a ``pystac.Item`` or an item dictionary."""
    if isinstance(item, Mapping):
        return dict(item.get("properties") or {})
    return dict(item.properties)


def item_collection(item: Any) -> str | None:
    """Return the collection id of a ``pystac.Item`` or an item dictionary."""
    if isinstance(item, Mapping):
        return item.get("collection")
    return item.collection_id


def item_id(item: Any) -> str:
    """Return the id of a ``pystac.Item`` or an item dictionary."""
    if isinstance(item, Mapping):
        return str(item.get("id"))
    return str(item.id)


def orbit_direction(item: Any, default: str | None = None) -> str:
    """Read the orbit direction of a radar item from ``sat:orbit_state``.

    Args:
        item: a ``pystac.Item`` or an item dictionary.
        default: ``asc`` or ``des`` to use when the item does not state it.

    Returns:
        ``asc`` or ``des``, the key of RAMEN's learned radar embedding.

    Raises:
        InputError: the item states no orbit direction and no default is given.
    """
    state = item_properties(item).get("sat:orbit_state")
    if state is None:
        if default is None:
            raise InputError(
                f"item {item_id(item)!r} has no sat:orbit_state; pass the orbit direction "
                f"('asc' or 'des') explicitly"
            )
        state = default
    text = str(state).lower()
    if text.startswith("asc"):
        return "asc"
    if text.startswith("des"):
        return "des"
    raise InputError(f"item {item_id(item)!r}: unknown sat:orbit_state {state!r}; expected ascending or descending")


# --------------------------------------------------------------------------------------
# Reading sensor files


def _as_float(value: Any, field_name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field_name} must be a number, got {value!r}") from None


def _band_from_table(table: Mapping[str, Any], where: str) -> Band:
    if "name" not in table:
        raise ConfigError(f"{where}: every [[bands]] entry needs a name")
    name = str(table["name"])
    kind = table.get("kind")
    if kind is None:
        # Infer the kind from what the entry states, so user files can stay short.
        if "wavelength_nm" in table:
            kind = "optical"
        elif "polarisation" in table:
            kind = "radar"
        elif "elevation" in table:
            kind = "elevation"
        else:
            raise ConfigError(
                f"{where}: band {name!r} needs wavelength_nm (optical), polarisation (radar) "
                f"or elevation (dsm, dtm, slope)"
            )
    if kind not in _BAND_KINDS:
        raise ConfigError(f"{where}: band {name!r} has unknown kind {kind!r}; use optical, radar or elevation")
    try:
        return Band(
            name=name,
            kind=kind,
            wavelength_nm=None if "wavelength_nm" not in table else _as_float(table["wavelength_nm"], f"{where}: band {name!r} wavelength_nm"),
            polarisation=None if "polarisation" not in table else str(table["polarisation"]).lower(),
            elevation=None if "elevation" not in table else str(table["elevation"]).lower(),
            gsd=None if "gsd" not in table else _positive_float(table["gsd"], f"{where}: band {name!r} gsd"),
            aliases=tuple(str(alias) for alias in table.get("aliases", ())),
            mean=None if "mean" not in table else _as_float(table["mean"], f"{where}: band {name!r} mean"),
            std=None if "std" not in table else _as_float(table["std"], f"{where}: band {name!r} std"),
            derived_from=table.get("derived_from"),
        )
    except InputError as error:
        raise ConfigError(f"{where}: {error}") from None


# Special radiometric rules that ramen_core.sensors.radiometry implements.
_RADIOMETRY_RULES = ("sentinel-2", "backscatter")


def _bands_from(data: Mapping[str, Any], where: str) -> tuple[Band, ...]:
    """Read the ``[[bands]]`` array and check that band names are unique."""
    tables = data["bands"]
    if not isinstance(tables, list):
        raise ConfigError(f"{where}: bands must be an array of tables, one [[bands]] entry per band, got a {type(tables).__name__}")
    for table in tables:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: bands must be an array of tables, one [[bands]] entry per band, got {table!r}")
    bands = tuple(_band_from_table(table, where) for table in tables)
    if not bands:
        raise ConfigError(f"{where}: bands is empty; describe at least one band")

    seen: dict[str, str] = {}
    for band in bands:
        key = normalise_band_name(band.name)
        if key in seen:
            raise ConfigError(
                f"{where}: bands {seen[key]!r} and {band.name!r} have the same name (names match "
                f"leniently, so B1 and B01 are the same); give each band its own name"
            )
        seen[key] = band.name
    return bands


def _mask_from(table: Any, where: str) -> MaskSpec:
    """Read the ``[mask]`` table."""
    if not isinstance(table, Mapping) or "name" not in table:
        raise ConfigError(f"{where}: [mask] must be a table with a name, the asset key of the quality layer")
    try:
        invalid = tuple(int(value) for value in table.get("invalid", ()))
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: mask invalid must be a list of integer class values or bit positions, "
            f"got {table.get('invalid')!r}"
        ) from None
    return MaskSpec(
        name=str(table["name"]),
        kind=str(table.get("kind", "classes")),
        invalid=invalid,
        gsd=None if "gsd" not in table else _positive_float(table["gsd"], f"{where}: mask gsd"),
    )


def _catalogs_from(data: Mapping[str, Any], where: str) -> dict[str, dict[str, dict[str, str]]]:
    """Read ``[catalogs.NAME.COLLECTION]`` asset tables and plain ``collections`` ids."""
    tables = data.get("catalogs", {})
    layout = f"{where}: catalogs must map catalog name, then collection id, to a table of band = \"asset key\""
    if not isinstance(tables, Mapping):
        raise ConfigError(f"{layout}, got {type(tables).__name__}")
    catalogs: dict[str, dict[str, dict[str, str]]] = {}
    for catalog, collections in tables.items():
        if not isinstance(collections, Mapping) or not all(isinstance(assets, Mapping) for assets in collections.values()):
            raise ConfigError(
                f"{where}: catalogs.{catalog} must map each collection id to a table of band = \"asset key\", "
                f"got {collections!r}"
            )
        catalogs[str(catalog)] = {
            str(collection): {str(band): str(key) for band, key in assets.items()}
            for collection, assets in collections.items()
        }

    # A sensor file may name plain collection ids without asset tables.
    collections = data.get("collections", ())
    if isinstance(collections, str) or not isinstance(collections, (list, tuple)):
        raise ConfigError(f"{where}: collections must be a list of STAC collection ids, got {collections!r}")
    for collection in collections:
        catalogs.setdefault("any", {}).setdefault(str(collection), {})
    return catalogs


def _positive_float(value: Any, field_name: str) -> float:
    number = _as_float(value, field_name)
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{field_name} {value!r} must be a positive number of metres")
    return number


def sensor_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Sensor:
    """Build a :class:`Sensor` from the parsed content of a sensor TOML file.

    Required keys: ``id``, ``gsd`` and ``bands`` (a list of tables with ``name`` and
    ``wavelength_nm``, ``polarisation`` or ``elevation``). Every other key of the
    packaged files is optional.

    Raises:
        ConfigError: a key is missing or has an invalid value, or two bands share a name.
    """
    for key in ("id", "gsd", "bands"):
        if key not in data:
            raise ConfigError(f"sensor definition {source}: missing required key {key!r}")
    sensor_id = str(data["id"])
    where = f"sensor {sensor_id!r} ({source})"
    bands = _bands_from(data, where)
    mask = None if "mask" not in data else _mask_from(data["mask"], where)
    catalogs = _catalogs_from(data, where)
    gsd = _positive_float(data["gsd"], f"{where}: gsd")

    radiometry = data.get("radiometry")
    if radiometry is not None and radiometry not in _RADIOMETRY_RULES:
        raise ConfigError(
            f"{where}: unknown radiometry {radiometry!r}; use {' or '.join(_RADIOMETRY_RULES)}, or leave it out"
        )
    default_catalog = data.get("default_catalog")
    if default_catalog is not None and str(default_catalog).lower() not in _packaged_catalogs() \
            and not re.match(r"^https?://", str(default_catalog)):
        raise ConfigError(
            f"{where}: unknown default_catalog {default_catalog!r}; use one of "
            f"{', '.join(_packaged_catalogs())} or a STAC API URL"
        )

    sensor = Sensor(
        id=sensor_id,
        title=str(data.get("title", sensor_id)),
        bands=bands,
        gsd=gsd,
        dtype=str(data.get("dtype", "float32")),
        nodata=None if "nodata" not in data else _as_float(data["nodata"], f"{where}: nodata"),
        scale=_as_float(data.get("scale", 1.0), f"{where}: scale"),
        offset=_as_float(data.get("offset", 0.0), f"{where}: offset"),
        units=str(data.get("units", "")),
        radiometry=radiometry,
        default_catalog=default_catalog,
        default_bands=tuple(str(name) for name in data.get("default_bands", ())),
        catalogs=catalogs,
        mask=mask,
        stats_source=str(dict(data.get("stats", {})).get("source", "")).strip(),
        cloud_cover_property=data.get("cloud_cover_property"),
        aliases=tuple(str(alias) for alias in data.get("aliases", ())),
        source=source,
    )
    try:
        for name in sensor.default_bands:
            sensor.band(name)
        for band in sensor.bands:
            if band.derived_from is not None:
                sensor.band(band.derived_from)
    except InputError as error:
        raise ConfigError(f"{where}: {error}") from None
    return sensor


def load_sensor_file(path: str | Path) -> Sensor:
    """Read a user sensor from a TOML file (same layout as the packaged sensor files).

    A minimal file::

        id = "my-camera"
        gsd = 3.0
        [[bands]]
        name = "red"
        wavelength_nm = 665
        [[bands]]
        name = "nir"
        wavelength_nm = 842

    Raises:
        ConfigError: the file is missing, is not valid TOML or misses a required key.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"sensor file {str(path)!r} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"sensor file {str(path)!r} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"sensor file {str(path)!r} cannot be read: {error.strerror or error}") from None
    return sensor_from_dict(data, source=str(path))


def parse_sensor_description(text: str) -> Sensor:
    """Build a sensor from a one-line description.

    Format: ``NAME@GSD:BAND,BAND,...[;key=value...]``. Each BAND is a token, optionally
    named with ``name=token``: a wavelength in nm (``665``), a polarisation (``vv``) or an
    elevation kind (``dsm``, ``dtm``, ``slope``). Optional keys: ``nodata``, ``scale``,
    ``offset``, ``dtype`` and ``collection`` (STAC collection id; repeat for several).

    Example: ``spot@1.5:red=665,green=560,blue=490,nir=835;scale=0.0001;nodata=0``.

    Raises:
        ConfigError: the text does not follow the format.
    """
    head, _, options_text = text.partition(";")
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*@\s*([0-9.eE+\-]+)\s*:\s*(.+?)\s*", head)
    if match is None:
        raise ConfigError(
            f"cannot read sensor description {text!r}; expected NAME@GSD:BAND,BAND,... such as "
            f"'spot@1.5:red=665,green=560,blue=490'"
        )
    name, gsd_text, bands_text = match.groups()
    bands: list[dict[str, Any]] = []
    for index, token in enumerate(part.strip() for part in bands_text.split(",")):
        if not token:
            continue
        band_name, _, value = token.rpartition("=")
        value = value.strip().lower()
        table: dict[str, Any] = {}
        try:
            table["wavelength_nm"] = float(value.removesuffix("nm"))
        except ValueError:
            if value.split("_")[-1] in POLARISATIONS:
                table["polarisation"] = value.split("_")[-1]
            elif value in ELEVATION_KINDS:
                table["elevation"] = value
            else:
                raise ConfigError(
                    f"sensor description {text!r}: cannot read band {token!r}; give a wavelength "
                    f"in nm (665), a polarisation (vv, vh, hh, hv) or an elevation kind (dsm, dtm, slope)"
                ) from None
        table["name"] = band_name.strip() or (value if "wavelength_nm" not in table else f"band{index + 1}")
        bands.append(table)

    data: dict[str, Any] = {"id": name, "title": f"user sensor {name}", "gsd": gsd_text, "bands": bands}
    collections: list[str] = []
    for option in options_text.split(";"):
        if not option.strip():
            continue
        key, separator, value = option.partition("=")
        key = key.strip()
        if not separator or key not in ("nodata", "scale", "offset", "dtype", "collection"):
            raise ConfigError(
                f"sensor description {text!r}: unknown option {option.strip()!r}; "
                f"use nodata=, scale=, offset=, dtype= or collection="
            )
        if key == "collection":
            collections.append(value.strip())
        else:
            data[key] = value.strip()
    data["collections"] = collections
    return sensor_from_dict(data, source=f"description {text!r}")


def _read_packaged_toml(name: str) -> dict[str, Any]:
    resource = resources.files("ramen_core.sensors").joinpath("data", name)
    return tomllib.loads(resource.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _packaged_sensors() -> tuple[Sensor, ...]:
    directory = resources.files("ramen_core.sensors").joinpath("data")
    names = sorted(entry.name for entry in directory.iterdir() if entry.name.endswith(".toml"))
    return tuple(
        sensor_from_dict(_read_packaged_toml(name), source=f"ramen_core/sensors/data/{name}")
        for name in names
        if name != _CATALOGS_FILE
    )


@lru_cache(maxsize=1)
def _packaged_catalogs() -> dict[str, Catalog]:
    tables = _read_packaged_toml(_CATALOGS_FILE)
    return {
        name: Catalog(name=name, url=str(table["url"]), title=str(table.get("title", "")), signing=str(table.get("signing", "")))
        for name, table in tables.items()
    }


# Sensors added at run time with register_sensor, by id.
_user_sensors: dict[str, Sensor] = {}


def register_sensor(sensor: Sensor) -> Sensor:
    """Add a sensor to the registry for this process; it replaces one with the same id."""
    _user_sensors[sensor.id] = sensor
    logger.info("registered sensor %s from %s", sensor.id, sensor.source)
    return sensor


def list_sensors(include_registered: bool = True) -> list[Sensor]:
    """Return the known sensors: the packaged ones, then (unless ``include_registered`` is
    False) the user sensors registered in this process, which replace packaged ones of
    the same id."""
    if not include_registered:
        return list(_packaged_sensors())
    packaged = [sensor for sensor in _packaged_sensors() if sensor.id not in _user_sensors]
    return packaged + list(_user_sensors.values())


def get_sensor(name: str | Sensor) -> Sensor:
    """Resolve a sensor from an id, an alias, a TOML file path or a one-line description.

    Ids and aliases are compared case-insensitively (``s2``, ``S2``, ``sentinel-2-l2a``).
    A value ending in ``.toml`` is read with :func:`load_sensor_file`, and a value
    containing ``@`` and ``:`` with :func:`parse_sensor_description`; both are then
    registered.

    Raises:
        InputError: no sensor has that name.
        ConfigError: a file or description is invalid.
    """
    if isinstance(name, Sensor):
        return name
    text = str(name).strip()
    key = text.lower()
    for sensor in reversed(list_sensors()):
        if key == sensor.id.lower() or key in (alias.lower() for alias in sensor.aliases):
            return sensor
    if key.endswith(".toml"):
        return register_sensor(load_sensor_file(text))
    if "@" in text and ":" in text:
        return register_sensor(parse_sensor_description(text))
    known = sorted({alias for sensor in list_sensors() for alias in (*sensor.aliases[:1], sensor.id)})
    raise InputError(
        f"unknown sensor {text!r}; use one of {', '.join(known)}, a sensor TOML file, "
        f"or a description such as 'spot@1.5:red=665,green=560,blue=490' (see `ramen sensors`)"
    )


def parse_sensor_list(value: str | Sequence[str | Sensor]) -> list[Sensor]:
    """Resolve a comma-separated list (``s2,s1,dem``) or a sequence of sensor names.

    A description contains commas itself, so in one string it must come last
    (``s2,dem,cam@1.5:665,842``): everything from its ``NAME@`` on is the description.
    A sequence may hold descriptions anywhere.
    """
    if isinstance(value, str):
        plain, description = value, ""
        if "@" in value:
            # Names contain no "@", so the last comma before the first "@" ends the plain names.
            prefix, comma, _ = value.partition("@")[0].rpartition(",")
            plain, description = (prefix, value[len(prefix) + 1 :]) if comma else ("", value)
        names: list[Any] = [part.strip() for part in plain.split(",") if part.strip()]
        if description:
            names.append(description)
    else:
        names = list(value)
    if not names:
        raise InputError("no sensor given; name at least one, such as s2")
    sensors = [get_sensor(name) for name in names]
    ids = [sensor.id for sensor in sensors]
    repeated = sorted({sensor_id for sensor_id in ids if ids.count(sensor_id) > 1})
    if repeated:
        raise InputError(f"sensor {', '.join(repeated)} is named twice; name each sensor once")
    return sensors


def list_catalogs() -> list[Catalog]:
    """Return the known STAC API catalogs."""
    return list(_packaged_catalogs().values())


def get_catalog(name_or_url: str) -> Catalog:
    """Resolve a catalog by name (``earth-search``) or root URL.

    An unknown URL gives an ad-hoc :class:`Catalog` whose name is the URL, whose hrefs are
    not signed.
    """
    catalogs = _packaged_catalogs()
    text = str(name_or_url).strip()
    if text.lower() in catalogs:
        return catalogs[text.lower()]
    for catalog in catalogs.values():
        if text.rstrip("/") == catalog.url.rstrip("/"):
            return catalog
    if re.match(r"^https?://", text):
        return Catalog(name=text, url=text)
    raise InputError(
        f"unknown catalog {text!r}; use one of {', '.join(catalogs)}, a STAC API URL, or a local catalog path"
    )
