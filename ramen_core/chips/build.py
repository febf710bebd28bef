"""Build a chip dataset from a chip spec: read every scene, write shards and the manifest."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ramen_core.chips.format import LabelInfo, Manifest, ModalityInfo, SceneInfo
from ramen_core.chips.geotiff import SceneReader
from ramen_core.chips.spec import ChipSpec
from ramen_core.chips.stats import compute_stats
from ramen_core.chips.writer import ChipWriter, prepare_output
from ramen_core.errors import EmptyResultError, InputError

logger = logging.getLogger(__name__)


def _modality_infos(spec: ChipSpec, reader: SceneReader) -> dict[str, ModalityInfo]:
    assert reader.grid is not None
    infos = {}
    for name, modality in spec.modalities.items():
        sensor = spec.sensor(name)
        gsd = reader.gsd[name]
        side = round(spec.size * reader.grid.gsd / gsd)
        infos[name] = ModalityInfo(
            name=name,
            bands=tuple(spec.band_specs(name)),
            gsd=gsd,
            size=(side, side),
            num_dates=len(reader.scene.sources[name].files),
            sensor=sensor.id if sensor else "",
            units=sensor.units if sensor else "",
            scale=reader._scale(name),
            offset=reader._offset(name),
        )
    return infos


def build_chips(
    spec: ChipSpec,
    folder: str | Path,
    *,
    stats: bool = False,
    overwrite: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> Manifest:
    """Cut every scene of ``spec`` into chips and write them as a chip dataset.

    Args:
        spec: the validated chip spec.
        folder: output dataset folder; it must be empty or absent unless ``overwrite``.
        stats: compute per-channel normalisation statistics after writing.
        overwrite: replace an existing dataset.
        progress: called with (scene name, chips written so far) after each chip.

    Returns:
        The manifest written.

    Raises:
        InputError: a file is missing or unreadable, or scenes disagree in shape.
        ConfigError: the spec does not fit the files (a band not found, GSDs that do not
            divide the chip size).
        EmptyResultError: no chip had enough valid pixels.
        OutputError: the folder cannot be written.
    """
    folder = Path(folder)
    prepare_output(folder, overwrite)
    writer: ChipWriter | None = None
    total = 0
    try:
        for scene in spec.scenes:
            with SceneReader(spec, scene) as reader:
                assert reader.grid is not None
                infos = _modality_infos(spec, reader)
                if writer is None:
                    labels = None
                    if spec.label is not None:
                        gsd = float(spec.label.gsd or reader.grid.gsd)
                        side = round(spec.size * reader.grid.gsd / gsd)
                        labels = LabelInfo(
                            classes=tuple(spec.label.classes), ignore_index=spec.label.ignore_index,
                            gsd=gsd, size=(side, side), colors=tuple(spec.label.colors),
                        )
                    writer = ChipWriter(folder, spec.name, infos, spec.shard_size, labels, spec.to_dict(), overwrite)
                    writer.__enter__()
                elif infos != writer.modalities:
                    changed = next(name for name in infos if infos[name] != writer.modalities[name])
                    raise InputError(
                        f"scene {scene.name!r}: modality {changed!r} has {infos[changed].num_dates} dates at "
                        f"{infos[changed].gsd:g} m, but earlier scenes have {writer.modalities[changed].num_dates} "
                        f"dates at {writer.modalities[changed].gsd:g} m; every scene needs the same dates count and GSD"
                    )
                index = writer.add_scene(SceneInfo(scene.name, reader.grid.crs.to_string(), 0, reader.sources_record()))
                count = 0
                for chip in reader.chips():
                    writer.add(chip, index)
                    count += 1
                    if progress is not None:
                        progress(scene.name, total + count)
                writer.set_scene_count(index, count)
                total += count
                logger.info("scene %s: %d chips", scene.name, count)
        if writer is None or total == 0:
            raise EmptyResultError(
                f"no chip of {spec.size} px had at least {100 * spec.min_valid:.0f} % valid pixels in every "
                f"modality; lower min_valid or check the nodata of the files"
            )
        manifest = writer.finish()
    except BaseException as error:
        if writer is not None:
            writer.__exit__(type(error), error, None)
        raise
    if stats:
        manifest = manifest.with_stats(compute_stats(folder))
    return manifest
