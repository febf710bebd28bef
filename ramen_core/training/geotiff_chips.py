"""Labelled chips stored as GeoTIFFs: one image file per modality and one label file per chip.

This is the layout that Sen1Floods11 and most segmentation benchmarks ship
(``S1Hand/Bolivia_103757_S1Hand.tif``, ``S2Hand/Bolivia_103757_S2Hand.tif``,
``LabelHand/Bolivia_103757_LabelHand.tif``). A recipe gives one glob pattern per modality
and one for the labels. The text that a pattern's ``*`` matches is the chip id, which pairs
the files of a chip.

Pixels are read on demand, chip by chip, so a dataset larger than memory trains from disk.
Labels are scanned once when the dataset is built: that checks every label grid against the
image grid and every label value against the declared classes before training starts, and
counts the pixels of each class.
"""

from __future__ import annotations

import csv
import glob
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from ramen_core.errors import EmptyResultError, InputError
from ramen_core.heads.bundle import ClassSpec, ModalitySpec
from ramen_core.inference.sources import open_file_modality
from ramen_core.inference.tiling import TargetGrid

logger = logging.getLogger(__name__)

# Class index of pixels that take no part in the loss or the metrics.
IGNORE = -1
# Tolerances of grid comparisons: Sen1Floods11's labels differ from their images in the
# 15th digit of the pixel size.
_PIXEL_SIZE_RTOL = 1e-6
_ORIGIN_TOLERANCE_PX = 0.01


@dataclass(frozen=True)
class RasterGrid:
    """The pixel grid of a raster: CRS, affine transform and shape."""

    crs: Any
    transform: Any
    height: int
    width: int

    @classmethod
    def of(cls, dataset: Any) -> RasterGrid:
        return cls(dataset.crs, dataset.transform, dataset.height, dataset.width)

    def describe(self) -> str:
        t = self.transform
        return f"{self.width}x{self.height} px, {self.crs}, pixel {t.a:.6g} x {-t.e:.6g}, origin ({t.c:.8g}, {t.f:.8g})"

    def matches(self, other: RasterGrid) -> bool:
        """Whether two grids are the same, within a tolerance of rounding noise."""
        if (self.height, self.width) != (other.height, other.width) or self.crs != other.crs:
            return False
        a, b = self.transform, other.transform
        size = max(abs(a.a), abs(a.e))
        for mine, theirs in ((a.a, b.a), (a.b, b.b), (a.d, b.d), (a.e, b.e)):
            if not math.isclose(mine, theirs, rel_tol=_PIXEL_SIZE_RTOL, abs_tol=size * _PIXEL_SIZE_RTOL):
                return False
        return abs(a.c - b.c) <= _ORIGIN_TOLERANCE_PX * size and abs(a.f - b.f) <= _ORIGIN_TOLERANCE_PX * size

    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        xs = (t.c, t.c + t.a * self.width)
        ys = (t.f, t.f + t.e * self.height)
        return min(xs), min(ys), max(xs), max(ys)


def _open(path: Path) -> Any:
    try:
        return rasterio.open(path)
    except RasterioIOError as error:
        raise InputError(f"cannot read {str(path)!r}: {error}") from error


def class_lookup(classes: ClassSpec, label_nodata: float | None) -> tuple[np.ndarray, int, set[int]]:
    """Build the table from label values to class indices.

    Returns:
        The table (``IGNORE`` for ignored values and for values of no class), the offset to
        add to a label value before indexing it, and the set of ignored values.
    """
    ignored = {-1}
    if classes.ignore_index is not None:
        ignored.add(int(classes.ignore_index))
    if label_nodata is not None and not math.isnan(label_nodata):
        ignored.add(int(label_nodata))
    low = min(min(classes.values), min(ignored))
    high = max(max(classes.values), max(ignored))
    table = np.full(high - low + 1, IGNORE, dtype=np.int64)
    for index, value in enumerate(classes.values):
        table[value - low] = index
    return table, -low, ignored


def read_label(path: Path, classes: ClassSpec, window: Window | None = None) -> np.ndarray:
    """Read a label raster as class indices [H, W] int64, ``IGNORE`` where ignored.

    Raises:
        InputError: a value is neither a class's label value nor ignored.
    """
    with _open(path) as dataset:
        raw = dataset.read(1, window=window)
        nodata = dataset.nodata
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.all(np.isnan(raw) | (raw == np.round(raw))):
            raise InputError(f"label raster {str(path)!r} contains fractional values; labels must be integer class values")
        raw = np.where(np.isnan(raw), -1, raw).astype(np.int64)
    raw = raw.astype(np.int64)
    table, offset, ignored = class_lookup(classes, nodata)
    values = np.unique(raw)
    unknown = [int(v) for v in values if int(v) not in ignored and int(v) not in classes.values]
    if unknown:
        raise InputError(
            f"label raster {str(path)!r} contains values {unknown[:10]} that are not declared classes "
            f"(class values {list(classes.values)}, ignored {sorted(ignored)}); add the classes to the "
            f"recipe, or set ignore_index"
        )
    return table[raw + offset]


@dataclass(frozen=True)
class ChipFiles:
    """The files of one labelled chip."""

    chip_id: str
    images: dict[str, Path]
    label: Path


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Return a regex that matches the file names of a glob and captures what ``*`` matched."""
    name = Path(pattern).name
    if name.count("*") != 1:
        raise InputError(
            f"file pattern {pattern!r} must have exactly one '*' in its file name, which matches the chip id"
        )
    before, after = name.split("*")
    return re.compile(f"^{re.escape(before)}(.+){re.escape(after)}$")


def _match_ids(pattern: str) -> dict[str, Path]:
    regex = _pattern_regex(pattern)
    found: dict[str, Path] = {}
    for text in sorted(glob.glob(pattern)):
        match = regex.match(Path(text).name)
        if match:
            found[match.group(1)] = Path(text)
    return found


def _ids_from_list(path: Path, patterns: Sequence[str]) -> list[str]:
    """Read chip ids from a list file: each row's fields are file names or chip ids."""
    regexes = [_pattern_regex(pattern) for pattern in patterns]
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except OSError as error:
        raise InputError(f"cannot read chip list {str(path)!r}: {error}") from error
    ids: list[str] = []
    for row in rows:
        for field in row:
            name = Path(field.strip()).name
            if not name:
                continue
            matches = [match.group(1) for match in (regex.match(name) for regex in regexes) if match]
            chip = matches[0] if matches else name
            if chip not in ids:
                ids.append(chip)
            break
    return ids


def find_chips(
    images: Mapping[str, str], label: str, chip_list: Path | None = None, split: str = "train"
) -> list[ChipFiles]:
    """Pair image and label files by chip id.

    Args:
        images: modality name to glob pattern, such as ``{"s1": "S1Hand/*_S1Hand.tif"}``.
        label: glob pattern of the label files.
        chip_list: optional text or CSV file naming the chips to use, one per row (a chip
            id, or any file name of the chip; the first field of a row counts).
        split: name of the split, for messages.

    Raises:
        EmptyResultError: no chip has all its files.
    """
    labels = _match_ids(label)
    per_modality = {name: _match_ids(pattern) for name, pattern in images.items()}
    ids = sorted(labels)
    if chip_list is not None:
        wanted = _ids_from_list(chip_list, [label, *images.values()])
        missing = [chip for chip in wanted if chip not in labels]
        if missing:
            logger.warning("%s split: %d chips of %s have no label file, e.g. %s", split, len(missing), chip_list, missing[0])
        ids = [chip for chip in wanted if chip in labels]
    chips = []
    for chip in ids:
        files = {name: found.get(chip) for name, found in per_modality.items()}
        absent = [name for name, file in files.items() if file is None]
        if absent:
            logger.warning("%s split: chip %s has no %s image; skipped", split, chip, ", ".join(absent))
            continue
        chips.append(ChipFiles(chip, {name: file for name, file in files.items() if file is not None}, labels[chip]))
    if not chips:
        patterns = ", ".join(f"{name}={pattern}" for name, pattern in [*images.items(), ("label", label)])
        raise EmptyResultError(
            f"the {split} set is empty: no chip has a label and every image ({patterns}); "
            f"check the patterns and the chip list"
        )
    logger.info("%s split: %d labelled chips", split, len(chips))
    return chips


def chip_grid(path: Path) -> TargetGrid:
    """Return the pixel grid of a chip as the window engine's :class:`TargetGrid`.

    The grid keeps the chip's CRS (geographic ones too), so reading a modality onto it
    copies the chip's pixels without resampling.

    Raises:
        InputError: the chip has no CRS, or its pixels are not square or not north-up.
    """
    with _open(path) as dataset:
        grid = RasterGrid.of(dataset)
    if grid.crs is None:
        raise InputError(f"{str(path)!r} has no CRS; georeference it (for example with gdal_edit.py -a_srs)")
    t = grid.transform
    if t.b or t.d or not math.isclose(t.a, -t.e, rel_tol=_PIXEL_SIZE_RTOL):
        raise InputError(
            f"{str(path)!r} has pixels of {t.a:.6g} x {-t.e:.6g} (or a rotation); chips need square, north-up "
            f"pixels, so warp it first (gdalwarp -tr)"
        )
    return TargetGrid(grid.crs, t, grid.width, grid.height)


class GeoTiffChipDataset(torch.utils.data.Dataset):
    """Labelled GeoTIFF chips as tensors, read from disk chip by chip.

    Every modality is read with the reader of ``ramen embed`` and ``ramen segment``
    (:func:`ramen_core.inference.sources.open_file_modality`), so training and inference
    apply the same band matching, scaling, nodata and dB rules. Each modality is read onto
    the pixel grid of the first one, which is the label grid.

    Items use the keys of the chip datasets of ``ramen chips`` (one date per chip): for each
    modality ``m``, ``<m>/data`` (float32 [1, C, H, W], physical values, 0 where invalid),
    ``<m>/valid`` (bool [1, H, W]) and ``<m>/dates`` (int32 [1], days since 1970-01-01,
    0 because GeoTIFF chips carry no date), and ``label`` (int64 [H, W] of class indices,
    ``IGNORE`` where ignored or where no modality has a valid pixel).

    Args:
        chips: the chips.
        modalities: how to read each modality; the first one's grid is the label grid.
        classes: the task's classes.
        crop_size: side in pixels of a random crop; None keeps whole chips.
        flip: random horizontal and vertical flips (training).
        units: radar units (``auto``, ``db`` or ``linear``) per modality name.
        seed: seed of the crops and flips; item ``i`` of epoch ``e`` always draws the same.
    """

    def __init__(
        self,
        chips: Sequence[ChipFiles],
        modalities: Sequence[ModalitySpec],
        classes: ClassSpec,
        crop_size: int | None = None,
        flip: bool = False,
        units: Mapping[str, str] | None = None,
        seed: int = 0,
    ) -> None:
        if not chips:
            raise EmptyResultError("the chip list is empty; nothing to train or evaluate on")
        self.chips = list(chips)
        self.modalities = list(modalities)
        self.classes = classes
        self.crop_size = crop_size
        self.flip = flip
        self.units = dict(units or {})
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.chips)

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops and flips for a new epoch."""
        self.epoch = epoch

    def _window(self, index: int, height: int, width: int) -> tuple[Window, bool, bool]:
        generator = np.random.default_rng((self.seed, self.epoch, index))
        window = Window(0, 0, width, height)
        if self.crop_size is not None and (height > self.crop_size or width > self.crop_size):
            size = self.crop_size
            row = int(generator.integers(0, max(height - size, 0) + 1))
            col = int(generator.integers(0, max(width - size, 0) + 1))
            window = Window(col, row, min(size, width), min(size, height))
        flips = generator.random(2) < 0.5 if self.flip else (False, False)
        return window, bool(flips[0]), bool(flips[1])

    def read_modality(self, spec: ModalitySpec, path: Path, grid: TargetGrid, window: Window) -> np.ndarray:
        """Read one modality's bands on ``grid`` as physical values [C, h, w], NaN where invalid."""
        modality = open_file_modality(
            spec.name, spec.sensor, path, bands=list(spec.bands), orbit=spec.orbit,
            sar_units=self.units.get(spec.name, "auto"), scale=spec.scale, offset=spec.offset, gsd=spec.gsd,
        )
        try:
            result = modality.read_window(grid, int(window.row_off), int(window.col_off), int(window.height), int(window.width))
        finally:
            modality.close()
        return np.where(result.valid[:, None], result.data, np.float32(np.nan))[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        chip = self.chips[index]
        reference = self.modalities[0]
        grid = chip_grid(chip.images[reference.name])
        window, flip_rows, flip_cols = self._window(index, grid.height, grid.width)

        item: dict[str, torch.Tensor] = {}
        any_valid = np.zeros((int(window.height), int(window.width)), dtype=bool)
        for spec in self.modalities:
            values = self.read_modality(spec, chip.images[spec.name], grid, window)
            valid = np.isfinite(values).all(axis=0)
            data = np.where(valid, values, np.float32(0.0))
            data, valid = _flipped(data, flip_rows, flip_cols), _flipped(valid, flip_rows, flip_cols)
            item[f"{spec.name}/data"] = torch.from_numpy(np.ascontiguousarray(data))[None]
            item[f"{spec.name}/valid"] = torch.from_numpy(np.ascontiguousarray(valid))[None]
            item[f"{spec.name}/dates"] = torch.zeros(1, dtype=torch.int32)
            any_valid |= valid

        label = _flipped(read_label(chip.label, self.classes, window), flip_rows, flip_cols)
        label = np.where(any_valid, label, IGNORE)
        item["label"] = torch.from_numpy(np.ascontiguousarray(label))
        return item


def _flipped(array: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    if rows:
        array = array[..., ::-1, :]
    if cols:
        array = array[..., ::-1]
    return array


@dataclass
class LabelScan:
    """Summary of a scan of the labels.

    Attributes:
        pixel_counts: labelled pixels per class index.
        ignored: pixels ignored (ignore index, -1 or the label's nodata).
        size: (rows, cols) of the first chip's reference grid.
    """

    pixel_counts: np.ndarray
    ignored: int
    size: tuple[int, int]


def scan_chips(chips: Sequence[ChipFiles], modalities: Sequence[ModalitySpec], classes: ClassSpec) -> LabelScan:
    """Check every chip's grids and label values, and count the pixels of each class.

    Raises:
        InputError: a label grid differs from its image grid, an image does not cover the
            label's footprint, chips differ in pixel size, or a label value is not a
            declared class.
    """
    counts = np.zeros(classes.num_classes, dtype=np.int64)
    ignored = 0
    size: tuple[int, int] | None = None
    pixel_size: float | None = None
    reference = modalities[0]
    for chip in chips:
        with _open(chip.images[reference.name]) as dataset:
            image_grid = RasterGrid.of(dataset)
        with _open(chip.label) as dataset:
            label_grid = RasterGrid.of(dataset)
        if not label_grid.matches(image_grid):
            raise InputError(
                f"chip {chip.chip_id}: the label grid of {str(chip.label)!r} ({label_grid.describe()}) differs "
                f"from the grid of its {reference.name} image {str(chip.images[reference.name])!r} "
                f"({image_grid.describe()}); resample the label onto the image grid (nearest neighbour)"
            )
        # Other modalities are warped onto the reference grid, so only their footprint must agree.
        for spec in modalities[1:]:
            with _open(chip.images[spec.name]) as dataset:
                grid = RasterGrid.of(dataset)
            if grid.crs == image_grid.crs and not np.allclose(
                grid.bounds(), image_grid.bounds(), atol=0.5 * abs(image_grid.transform.a)
            ):
                raise InputError(
                    f"chip {chip.chip_id}: {spec.name} image {str(chip.images[spec.name])!r} ({grid.describe()}) "
                    f"does not cover the same footprint as {reference.name} ({image_grid.describe()})"
                )
        if pixel_size is None:
            pixel_size = abs(image_grid.transform.a)
        elif not math.isclose(abs(image_grid.transform.a), pixel_size, rel_tol=_PIXEL_SIZE_RTOL):
            raise InputError(
                f"chip {chip.chip_id}: pixel size {abs(image_grid.transform.a):.6g} differs from the first "
                f"chip's {pixel_size:.6g}; give every chip of a dataset the same pixel size"
            )
        size = size or (image_grid.height, image_grid.width)
        label = read_label(chip.label, classes)
        ignored += int(np.sum(label == IGNORE))
        counts += np.bincount(label[label != IGNORE], minlength=classes.num_classes)
    assert size is not None
    return LabelScan(counts, ignored, size)
