"""Per-band normalisation of inputs before the encoder: ``(x - mean) / std``.

Three sources of statistics:

- ``registry``: the sensor registry's defaults (see ``ramen sensors NAME`` for their source;
  the statistics used to pre-train the official model are not published);
- ``global``: computed over the whole input in a first pass over the target grid, never
  per window, so every window is normalised the same way;
- a JSON file: ``{"s2": {"B02": {"mean": 0.09, "std": 0.12}, ...}, "s1": {...}}``, keyed by
  modality name (or sensor id) and band name, in physical units (reflectance, dB, metres,
  degrees). The ``RAMEN_NORMALIZATION`` tag of an output has this layout under
  ``statistics``, so a file can be made from a previous run.

The choice and the values used are recorded in the output's tags.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ramen_core.errors import ConfigError, InputError
from ramen_core.inference.tiling import TargetGrid
from ramen_core.sensors import Sensor, normalise_band_name

logger = logging.getLogger(__name__)

NORMALIZATION_MODES = ("registry", "global")

# Input pixels per side of one read of the statistics pass.
_STATISTICS_READ_SIDE = 1024


class StatisticsSource(Protocol):
    """Interface that the statistics pass needs from a modality."""

    name: str
    sensor: Sensor
    bands: list[str]
    gsd: float

    def read_window(self, grid: TargetGrid, row: int, col: int, height: int, width: int) -> Any: ...


@dataclass
class Normalization:
    """Statistics for every band of every modality.

    Attributes:
        mode: ``registry``, ``global`` or ``file``.
        statistics: ``{modality: {band: (mean, std)}}`` in physical units.
        source: the JSON file for mode ``file``, else empty.
    """

    mode: str
    statistics: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    source: str = ""

    def arrays(self, modality: str, bands: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) float32 arrays of one modality's bands, in ``bands`` order."""
        table = self.statistics[modality]
        mean = np.array([table[band][0] for band in bands], dtype=np.float32)
        std = np.array([table[band][1] for band in bands], dtype=np.float32)
        return mean, std

    def to_dict(self) -> dict[str, Any]:
        """Return the record stored in the output tags."""
        return {
            "mode": self.mode,
            "source": self.source,
            "statistics": {
                modality: {band: {"mean": mean, "std": std} for band, (mean, std) in table.items()}
                for modality, table in self.statistics.items()
            },
        }


def registry_normalization(modalities: Sequence[StatisticsSource]) -> Normalization:
    """Statistics from the sensor registry."""
    statistics = {}
    for modality in modalities:
        mean, std = modality.sensor.normalisation(modality.bands)
        missing = [band for band in modality.bands if modality.sensor.band(band).mean is None]
        if missing:
            logger.warning(
                "sensor %s has no statistics for band %s; those bands are not normalised "
                "(use normalization='global' or a JSON file)",
                modality.sensor.id, ", ".join(missing),
            )
        statistics[modality.name] = {
            band: (float(m), float(s)) for band, m, s in zip(modality.bands, mean, std)
        }
    return Normalization(mode="registry", statistics=statistics)


def file_normalization(path: str | Path, modalities: Sequence[StatisticsSource]) -> Normalization:
    """Statistics from a JSON file (layout in the module docstring).

    Raises:
        ConfigError: the file is missing, not JSON, or lacks a band.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"normalisation file {str(path)!r} not found") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"normalisation file {str(path)!r} is not valid JSON ({error})") from None
    if isinstance(data, dict) and "statistics" in data and isinstance(data["statistics"], dict):
        data = data["statistics"]  # the RAMEN_NORMALIZATION tag of an earlier output
    if not isinstance(data, dict):
        raise ConfigError(f"normalisation file {str(path)!r} must hold an object keyed by modality name")

    statistics = {}
    for modality in modalities:
        keys = [modality.name, modality.sensor.id, *modality.sensor.aliases]
        table = next((data[key] for key in keys if key in data), None)
        if not isinstance(table, dict):
            raise ConfigError(
                f"normalisation file {str(path)!r} has no entry for modality {modality.name!r} "
                f"(looked for {', '.join(repr(key) for key in keys)})"
            )
        by_key = {normalise_band_name(band): value for band, value in table.items()}
        values = {}
        for band in modality.bands:
            aliases = [band, *modality.sensor.band(band).aliases]
            entry = next((by_key[normalise_band_name(alias)] for alias in aliases if normalise_band_name(alias) in by_key), None)
            try:
                mean, std = float(entry["mean"]), float(entry["std"])  # type: ignore[index]
            except (TypeError, KeyError, ValueError):
                raise ConfigError(
                    f"normalisation file {str(path)!r}: modality {modality.name!r} needs "
                    f'{{"{band}": {{"mean": ..., "std": ...}}}}'
                ) from None
            if not std > 0:
                raise ConfigError(f"normalisation file {str(path)!r}: std of {modality.name} {band} must be positive, got {std}")
            values[band] = (mean, std)
        statistics[modality.name] = values
    return Normalization(mode="file", statistics=statistics, source=str(path))


def global_normalization(
    modalities: Sequence[StatisticsSource],
    grid: TargetGrid,
    progress: Callable[[int, int], None] | None = None,
) -> Normalization:
    """Compute each band's mean and standard deviation over the whole target grid.

    Every input pixel is read once, at the same resolution the encoder gets, in reads of
    about 1024 x 1024 input pixels, so memory stays bounded. Sums are shifted by a first
    estimate of the mean and kept in float64.

    Args:
        modalities: the inputs.
        grid: the target grid.
        progress: called with (reads done, reads total).

    Raises:
        InputError: a band has no valid pixel.
    """
    from ramen_core.inference.sources import pixels_per_token

    statistics = {}
    chunks = []
    for modality in modalities:
        side = max(1, _STATISTICS_READ_SIDE // pixels_per_token(modality.gsd, grid.gsd))
        chunks.append([(row, col, min(side, grid.height - row), min(side, grid.width - col))
                       for row in range(0, grid.height, side) for col in range(0, grid.width, side)])
    total = sum(len(items) for items in chunks)
    done = 0
    for modality, items in zip(modalities, chunks):
        channels = len(modality.bands)
        shift = None
        count = np.zeros(channels, dtype=np.float64)
        total_sum = np.zeros(channels, dtype=np.float64)
        total_squares = np.zeros(channels, dtype=np.float64)
        for row, col, height, width in items:
            read = modality.read_window(grid, row, col, height, width)
            data = np.where(read.valid[:, None], read.data, np.nan)  # [T, C, h, w]; clouds excluded
            values = np.moveaxis(data, 1, 0).reshape(channels, -1).astype(np.float64)
            finite = np.isfinite(values)
            if shift is None and finite.any():
                shift = np.array([np.nanmean(band) if np.isfinite(band).any() else 0.0 for band in values])
            if shift is not None:
                centred = np.where(finite, values - shift[:, None], 0.0)
                count += finite.sum(axis=1)
                total_sum += centred.sum(axis=1)
                total_squares += (centred**2).sum(axis=1)
            done += 1
            if progress is not None:
                progress(done, total)
        empty = [band for band, n in zip(modality.bands, count) if n == 0]
        if empty:
            raise InputError(f"modality {modality.name!r} has no valid pixel in band {', '.join(empty)}; cannot compute statistics")
        assert shift is not None
        mean = shift + total_sum / count
        variance = np.maximum(total_squares / count - (total_sum / count) ** 2, 0.0)
        std = np.sqrt(variance)
        table = {}
        for band, m, s in zip(modality.bands, mean, std):
            if not s > 0:
                logger.warning("band %s of %s is constant over the area; using std 1", band, modality.name)
                s = 1.0
            table[band] = (float(m), float(s))
        statistics[modality.name] = table
        logger.info("statistics of %s over %d pixels: %s", modality.name, int(count.max()),
                    ", ".join(f"{band} {m:.4g}±{s:.4g}" for band, (m, s) in table.items()))
    return Normalization(mode="global", statistics=statistics)


def resolve_normalization(
    choice: str | Path,
    modalities: Sequence[StatisticsSource],
    grid: TargetGrid,
    progress: Callable[[int, int], None] | None = None,
) -> Normalization:
    """Build the normalisation named by ``choice``: ``registry``, ``global`` or a JSON path."""
    text = str(choice)
    if text == "registry":
        return registry_normalization(modalities)
    if text == "global":
        return global_normalization(modalities, grid, progress)
    if text.lower().endswith(".json") or Path(text).exists():
        return file_normalization(text, modalities)
    raise InputError(f"normalization {text!r} must be 'registry', 'global' or a JSON file path")
