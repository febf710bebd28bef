"""Chip datasets from a STAC search: aligned cubes from :mod:`ramen_core.cube`, cut into chips.

:func:`load_cubes` puts every sensor on its own native grid with the same bounds and
top-left corner, which is the alignment a chip dataset needs. A chip of ``size`` pixels
of the first sensor covers ``size × GSD`` metres, and every other sensor's chip is the
same footprint at its own GSD. Each sensor becomes one modality, its time slices the
chip's dates, and its ``valid`` mask (nodata and quality layer) the chip's validity.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ramen_core.chips.format import Manifest, ModalityInfo, SceneInfo
from ramen_core.chips.geotiff import ChipArrays, chip_positions, whole
from ramen_core.chips.stats import compute_stats
from ramen_core.chips.writer import ChipWriter, prepare_output
from ramen_core.errors import ConfigError, EmptyResultError, InputError
from ramen_core.sensors import get_sensor

logger = logging.getLogger(__name__)

_EPOCH = datetime.date(1970, 1, 1)


def default_modality_name(cube: Any) -> str:
    """Name a cube's modality after its sensor's first alias (``s2``, ``s1``, ``dem``).

    A radar cube split by orbit direction gets the direction appended (``s1_des``).
    """
    sensor = get_sensor(cube.sensor)
    name = sensor.aliases[0] if sensor.aliases else sensor.id
    if ":" in cube.key and cube.orbit:
        name = f"{name}_{cube.orbit}"
    return name.replace(".", "_")


def _check_options(size: int, stride: int | None, min_valid: float) -> None:
    """Reject chip options that cannot cut any chip, before any pixel is loaded."""
    if size < 1:
        raise ConfigError(f"chip size {size} must be a positive number of pixels")
    if stride is not None and stride < 1:
        raise ConfigError(f"chip stride {stride} must be a positive number of pixels")
    if not 0.0 <= min_valid <= 1.0:
        raise ConfigError(f"min_valid {min_valid:g} must be a share between 0 and 1 (--min-valid 0.5 is half the pixels)")


def chips_from_cubes(
    cubes: Mapping[str, Any],
    folder: str | Path,
    *,
    size: int,
    stride: int | None = None,
    min_valid: float = 0.5,
    shard_size: int = 256,
    name: str = "stac",
    modality_names: Mapping[str, str] | None = None,
    stats: bool = False,
    overwrite: bool = False,
    record: Mapping[str, Any] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> Manifest:
    """Cut aligned cubes into chips and write them as a chip dataset.

    The cubes are read one row of chips at a time, so memory contains ``size`` rows of each
    cube, whether the cubes are computed or still Dask-backed.

    Args:
        cubes: ``{cube key: SensorCube}`` from :func:`ramen_core.cube.load_cubes`; the
            first cube is the grid reference.
        folder: output dataset folder.
        size: chip side in pixels of the first cube.
        stride: step between chips in pixels of the first cube; default ``size``.
        min_valid: minimum share of valid pixels (over all dates) in every modality of a chip.
        shard_size: chips per shard file.
        name: dataset name.
        modality_names: cube key to modality name; default :func:`default_modality_name`.
        stats: compute per-channel statistics after writing.
        overwrite: replace an existing dataset.
        record: the search parameters, stored in the manifest's ``spec``.
        progress: called with (dataset name, chips written so far) after each chip.

    Raises:
        ConfigError: the chip size or stride is not a whole number of pixels of every cube.
        EmptyResultError: no chip had enough valid pixels.
        OutputError: the folder cannot be written.
    """
    if not cubes:
        raise InputError("no cube to cut into chips; load at least one sensor")
    _check_options(size, stride, min_valid)
    step = stride or size
    folder = Path(folder)
    prepare_output(folder, overwrite)
    names = {key: (modality_names or {}).get(key) or default_modality_name(cube) for key, cube in cubes.items()}
    if len(set(names.values())) != len(names):
        raise ConfigError(f"two cubes get the same modality name {sorted(names.values())}; pass modality_names")

    reference = next(iter(cubes.values()))
    rows, cols = reference.geobox.shape
    infos: dict[str, ModalityInfo] = {}
    for key, cube in cubes.items():
        ratio = reference.gsd / cube.gsd
        side = whole(size * ratio, f"a chip of {size} px at {reference.gsd:g} m is {size * ratio:g} px of {key} at "
                     f"{cube.gsd:g} m, not a whole number; choose a size that is")
        whole(step * ratio, f"the stride of {step} px at {reference.gsd:g} m is not a whole number of {key} pixels")
        sensor = get_sensor(cube.sensor)
        infos[names[key]] = ModalityInfo(
            name=names[key], bands=tuple(cube.bands), gsd=float(cube.gsd), size=(side, side),
            num_dates=len(cube.dates), sensor=cube.sensor, units=sensor.units,
        )
    positions = chip_positions(rows, cols, size, step)
    if not positions:
        raise InputError(f"the area is {rows}x{cols} px at {reference.gsd:g} m, smaller than one chip of {size} px")

    sources = {
        names[key]: [
            {"date": date.isoformat(), "items": ids} for date, ids in zip(cube.dates, cube.item_ids)
        ]
        for key, cube in cubes.items()
    }
    spec_record = {"source": "stac", "size": size, "stride": step, "min_valid": min_valid, **dict(record or {})}
    dates = {
        names[key]: np.asarray([(date - _EPOCH).days for date in cube.dates], dtype=np.int32) for key, cube in cubes.items()
    }
    transform = reference.transform
    count = skipped = 0
    with ChipWriter(folder, name, infos, shard_size, spec=spec_record, overwrite=overwrite) as writer:
        scene = writer.add_scene(SceneInfo(name, str(reference.crs), 0, sources))
        for row in sorted({row for row, _ in positions}):
            strips = {}
            for key, cube in cubes.items():
                ratio = reference.gsd / cube.gsd
                start, stop = whole(row * ratio, "row"), whole((row + size) * ratio, "row")
                strips[names[key]] = (
                    np.asarray(cube.data[:, :, start:stop, :].values, dtype=np.float32),
                    np.asarray(cube.valid[:, start:stop, :].values, dtype=bool),
                    ratio,
                )
            for _, col in (position for position in positions if position[0] == row):
                data, valid = {}, {}
                for modality, (strip, strip_valid, ratio) in strips.items():
                    left, right = whole(col * ratio, "col"), whole((col + size) * ratio, "col")
                    chip_valid = strip_valid[:, :, left:right] & np.isfinite(strip[:, :, :, left:right]).all(axis=1)
                    data[modality] = np.where(chip_valid[:, None], strip[:, :, :, left:right], 0.0).astype(np.float32)
                    valid[modality] = chip_valid
                if any(valid[modality].mean() < min_valid for modality in valid):
                    skipped += 1
                    continue
                x0, y0 = transform @ (col, row)
                x1, y1 = transform @ (col + size, row + size)
                bounds = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
                writer.add(ChipArrays(data=data, valid=valid, dates=dates, bounds=bounds), scene)
                count += 1
                if progress is not None:
                    progress(name, count)
        if count == 0:
            raise EmptyResultError(
                f"no chip of {size} px had at least {100 * min_valid:.0f} % valid pixels in every modality; "
                f"lower min_valid or choose another area or dates"
            )
        if skipped:
            logger.info("skipped %d of %d chips with less than %.0f %% valid pixels", skipped, len(positions), 100 * min_valid)
        writer.set_scene_count(scene, count)
        manifest = writer.finish()
    if stats:
        manifest = manifest.with_stats(compute_stats(folder))
    return manifest


def build_chips_from_stac(
    folder: str | Path,
    *,
    sensors: str | Sequence[str],
    bbox: Sequence[float],
    datetime: str | None = None,
    catalog: str | None = None,
    max_cloud: float | None = None,
    limit: int | None = None,
    bands: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    gsd: float | Mapping[str, float] | None = None,
    crs: Any = None,
    scheduler: str | None = None,
    **options: Any,
) -> Manifest:
    """Search a STAC catalog, load aligned cubes over ``bbox`` and cut them into chips.

    Args:
        folder: output dataset folder.
        sensors: sensor names (``"s2,s1,dem"``); the first is the grid reference.
        bbox: ``(west, south, east, north)`` in degrees.
        datetime: ``START/END`` range.
        catalog: catalog name, STAC API URL or local catalog path; None uses each sensor's
            default catalog.
        max_cloud: maximum cloud cover in percent.
        limit: maximum items per sensor.
        bands: band names, for one sensor or ``{sensor: names}``; None loads the defaults.
        gsd: chip GSD in metres for every sensor or ``{sensor: gsd}``; None keeps each
            sensor's native GSD.
        crs: output CRS; None picks the UTM zone of the area.
        scheduler: Dask scheduler address for loading.
        options: :func:`chips_from_cubes` options (``size``, ``stride``, ``min_valid``,
            ``shard_size``, ``name``, ``stats``, ``overwrite``, ``progress``).

    Raises:
        InputError, CatalogError, EmptyResultError: from the search and the cube loading.
    """
    from ramen_core.catalog import search
    from ramen_core.cube import load_cubes

    _check_options(int(options.get("size", 1)), options.get("stride"), float(options.get("min_valid", 0.5)))
    prepare_output(Path(folder), bool(options.get("overwrite", False)))
    result = search(sensors=sensors, bbox=bbox, datetime=datetime, catalog=catalog, max_cloud=max_cloud, limit=limit)
    cubes = load_cubes(result, sensors, bbox=bbox, crs=crs, bands=bands, gsd=gsd, compute=False, scheduler=scheduler)
    record = {
        "sensors": sensors if isinstance(sensors, str) else list(sensors), "bbox": list(bbox), "datetime": datetime,
        "catalog": catalog, "max_cloud": max_cloud, "limit": limit, "gsd": gsd,
    }
    return chips_from_cubes(cubes, folder, record=record, **options)
