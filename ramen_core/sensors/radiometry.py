"""Radiometric scaling of stored asset values to physical units.

Three traps are handled here:

- Sentinel-2 processing baseline 04.00 and later (from January 2022) store DN + 1000,
  so reflectance is ``DN * 0.0001 - 0.1``. Earth Search v1 items declare that offset in
  the asset's ``raster:bands``; Planetary Computer items declare no scale or offset, so
  the offset follows from ``s2:processing_baseline``.
- Some items declare an offset that their pixels do not carry. Applying it then turns a
  large share of valid pixels negative; :func:`check_negative_share` warns about it.
- Radar backscatter is converted from linear power to dB once: not when the asset states
  dB in ``raster:bands`` ``unit``, and not when its pixels are already mostly negative.

Every output should store the :meth:`Scaling.to_dict` record of what was applied.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ramen_core.sensors.registry import Sensor, get_sensor, item_assets, item_id, item_properties

logger = logging.getLogger(__name__)

# Sentinel-2 baseline 04.00 adds this many DN to every valid pixel (the product metadata
# names it BOA_ADD_OFFSET for L2A and RADIO_ADD_OFFSET for L1C, both -1000).
S2_ADD_OFFSET_DN = 1000
S2_OFFSET_BASELINE = (4, 0)

# Share of valid pixels that may turn negative after scaling before a warning is logged.
NEGATIVE_SHARE_WARNING = 0.2

# A band whose valid pixels are negative in more than this share is taken to be in dB.
_DB_NEGATIVE_SHARE = 0.05

_DB_UNITS = ("db", "decibel", "decibels")


@dataclass(frozen=True)
class Scaling:
    """The conversion from stored values to physical units for one band of one item.

    Physical value = ``raw * scale + offset``, then ``10 * log10`` when ``to_db`` is set.
    Pixels equal to ``nodata`` become NaN.

    Attributes:
        band: band name in the registry.
        asset: asset key the band was read from.
        scale: multiplicative factor.
        offset: additive term, in physical units.
        nodata: stored nodata value, or None.
        source: where scale and offset come from: ``raster:bands`` (the asset's
            metadata), ``s2:processing_baseline`` (the Sentinel-2 baseline rule) or
            ``registry`` (the sensor file).
        processing_baseline: Sentinel-2 processing baseline of the item, if known.
        to_db: whether linear power is converted to dB after scaling.
        db_source: why ``to_db`` has its value (``sensor``, ``raster:bands unit`` or
            ``negative pixels``); None for non-radar bands.
    """

    band: str
    asset: str | None
    scale: float
    offset: float
    nodata: float | None
    source: str
    processing_baseline: str | None = None
    to_db: bool = False
    db_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record of the applied scaling, for output metadata."""
        return asdict(self)

    def apply(self, raw: Any) -> Any:
        """Convert stored values to float32 physical values with NaN for nodata.

        Works on numpy and dask arrays (lazily for dask).
        """
        values = raw.astype("float32")
        if self.nodata is not None:
            if np.isnan(self.nodata):
                invalid = np.isnan(values)
            else:
                invalid = raw == self.nodata
            values = np.where(invalid, np.float32(np.nan), values)
        values = values * np.float32(self.scale) + np.float32(self.offset)
        if self.to_db:
            values = linear_to_db(values)
        return values


def linear_to_db(values: Any) -> Any:
    """Convert linear power to dB, ``10 * log10(x)``; zero and negative values become NaN."""
    positive = values > 0
    safe = np.where(positive, values, np.float32(1.0))
    return np.where(positive, np.float32(10.0) * np.log10(safe), np.float32(np.nan)).astype("float32")


def processing_baseline(item: Any) -> str | None:
    """Read the Sentinel-2 processing baseline (``04.00``) of an item, or None.

    Looks at ``s2:processing_baseline`` (Earth Search v1, Planetary Computer), then
    ``sentinel:processing_baseline`` and ``processing:version``, then the ``_Nxxyy_``
    field of ``s2:product_uri`` or of the item id.
    """
    properties = item_properties(item)
    for key in ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version"):
        value = properties.get(key)
        if value is not None and _baseline_tuple(str(value)) is not None:
            return str(value)
    for text in (properties.get("s2:product_uri"), item_id(item)):
        match = re.search(r"_N(\d{2})(\d{2})_", str(text or ""))
        if match is not None:
            return f"{match.group(1)}.{match.group(2)}"
    return None


def _baseline_tuple(text: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d{1,2})\.(\d{1,2})\s*", text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def _raster_band(asset: dict[str, Any]) -> dict[str, Any]:
    bands = asset.get("raster:bands") or asset.get("bands") or []
    return dict(bands[0]) if len(bands) >= 1 and isinstance(bands[0], dict) else {}


def scaling_for_item(sensor: Sensor | str, item: Any, band: str) -> Scaling:
    """Decide the scale and offset to apply to one band of one item.

    Order of precedence:

    1. ``scale``/``offset`` in the asset's ``raster:bands`` (Earth Search v1 declares the
       Sentinel-2 baseline offset there).
    2. For Sentinel-2 sensors, the processing baseline: from 04.00 on, the sensor's offset
       minus 1000 DN times its scale (-0.1 in reflectance).
    3. The sensor file's ``scale`` and ``offset``.

    Nodata comes from ``raster:bands`` when declared there, else from the sensor file.
    For radar sensors, ``to_db`` is set unless the asset's ``raster:bands`` unit is dB;
    call :func:`resolve_db_conversion` with loaded pixels to catch data already in dB.

    Args:
        sensor: a sensor or its name.
        item: a ``pystac.Item`` or an item dictionary.
        band: band name (matched leniently).
    """
    sensor = get_sensor(sensor)
    band_name = sensor.band(band).name
    asset_key = sensor.asset_key(item, band_name)
    raster_band = _raster_band(item_assets(item)[asset_key])
    baseline = processing_baseline(item) if sensor.radiometry == "sentinel-2" else None
    nodata = raster_band.get("nodata", sensor.nodata)
    nodata = None if nodata is None else float(nodata)

    if "scale" in raster_band or "offset" in raster_band:
        scale = float(raster_band.get("scale", 1.0))
        offset = float(raster_band.get("offset", 0.0))
        source = "raster:bands"
    elif sensor.radiometry == "sentinel-2" and baseline is not None:
        scale = sensor.scale
        offset = sensor.offset
        if _baseline_tuple(baseline) >= S2_OFFSET_BASELINE:  # type: ignore[operator]
            offset = sensor.offset - S2_ADD_OFFSET_DN * sensor.scale
        source = "s2:processing_baseline"
    else:
        if sensor.radiometry == "sentinel-2":
            logger.warning(
                "item %s states no processing baseline and no raster:bands offset; "
                "assuming no +%d DN offset for band %s",
                item_id(item),
                S2_ADD_OFFSET_DN,
                band_name,
            )
        scale = sensor.scale
        offset = sensor.offset
        source = "registry"

    to_db = False
    db_source = None
    if sensor.radiometry == "backscatter":
        unit = str(raster_band.get("unit", "")).strip().lower()
        if unit in _DB_UNITS:
            db_source = "raster:bands unit"
        else:
            to_db = True
            db_source = "sensor"

    return Scaling(
        band=band_name,
        asset=asset_key,
        scale=scale,
        offset=offset,
        nodata=nodata,
        source=source,
        processing_baseline=baseline,
        to_db=to_db,
        db_source=db_source,
    )


def _valid_values(raw: Any, nodata: float | None) -> np.ndarray:
    values = np.asarray(raw, dtype=np.float64).ravel()
    valid = np.isfinite(values)
    if nodata is not None and not np.isnan(nodata):
        valid &= values != nodata
    return values[valid]


def resolve_db_conversion(scaling: Scaling, raw_sample: Any) -> Scaling:
    """Turn off the dB conversion when loaded pixels show the data is already in dB.

    Linear power is never negative, so a band whose valid scaled pixels are negative in
    more than 5 % is taken to be in dB already.

    Args:
        scaling: the result of :func:`scaling_for_item`.
        raw_sample: stored values of the band (numpy, or a computed sample of a dask array).
    """
    if not scaling.to_db:
        return scaling
    values = _valid_values(raw_sample, scaling.nodata) * scaling.scale + scaling.offset
    if values.size and np.mean(values < 0) > _DB_NEGATIVE_SHARE:
        logger.info(
            "band %s (asset %s): %.0f %% of valid pixels are negative, so the data is already "
            "in dB and is not converted again",
            scaling.band,
            scaling.asset,
            100 * np.mean(values < 0),
        )
        return replace(scaling, to_db=False, db_source="negative pixels")
    return scaling


def check_negative_share(
    raw: Any, scaling: Scaling, item: Any = None, threshold: float = NEGATIVE_SHARE_WARNING
) -> float:
    """Measure the share of valid pixels that scaling makes negative; warn when it is large.

    A large share means the declared offset and the pixels disagree. The metadata states
    the Sentinel-2 +1000 DN offset, but the stored DN do not contain it, so reflectance
    comes out 0.1 too low. This happens in real Earth Search v1 items.

    Args:
        raw: stored values of one band (numpy, or a computed sample of a dask array).
        scaling: the scaling that is applied to them.
        item: the item the pixels come from, named in the warning.
        threshold: share in [0, 1] above which a warning is logged.

    Returns:
        The share of valid pixels below zero after scaling, 0.0 when none is valid.
    """
    values = _valid_values(raw, scaling.nodata)
    if values.size == 0:
        return 0.0
    share = float(np.mean(values * scaling.scale + scaling.offset < 0))
    if share > threshold:
        logger.warning(
            "item %s band %s: applying offset %g (from %s) makes %.0f %% of valid pixels "
            "negative; the declared offset and the pixels disagree, check the item's "
            "processing baseline",
            item_id(item) if item is not None else "?",
            scaling.band,
            scaling.offset,
            scaling.source,
            100 * share,
        )
    return share
