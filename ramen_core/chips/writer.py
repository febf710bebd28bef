"""Write a chip dataset: shards as they fill up, the manifest last, the folder atomically."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ramen_core._atomic import default_mode
from ramen_core.chips.format import (
    MANIFEST_NAME,
    SHARD_PATTERN,
    LabelInfo,
    Manifest,
    ModalityInfo,
    SceneInfo,
    ShardInfo,
    write_manifest,
)
from ramen_core.chips.geotiff import ChipArrays
from ramen_core.errors import InputError, OutputError

logger = logging.getLogger(__name__)


def prepare_output(folder: Path, overwrite: bool) -> None:
    """Check that ``folder`` may be written: absent, empty, or a chip dataset that ``overwrite`` replaces.

    Raises:
        OutputError: ``folder`` is a file, contains files other than a chip dataset, or
            contains a chip dataset and ``overwrite`` is False.
    """
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output {str(folder)!r} is a file; give a folder for the chip dataset")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / MANIFEST_NAME).is_file():
            # --overwrite replaces a chip dataset, never a folder of other files.
            raise OutputError(
                f"output folder {str(folder)!r} contains files but no chip dataset ({MANIFEST_NAME}); "
                f"choose an empty or new folder"
            )
        if not overwrite:
            raise OutputError(
                f"output folder {str(folder)!r} already contains a chip dataset; choose another folder or pass "
                f"--overwrite"
            )


class ChipWriter:
    """Collect chips into shards inside a temporary folder, then move it into place.

    The shards and the manifest are written into a hidden ``.NAME.*.partial`` folder next
    to the output, which replaces the output only once everything is written. An
    interrupted run therefore never leaves a half-written dataset. An exception removes the
    hidden folder, but a killed process leaves it behind, to be deleted by hand.

    Args:
        folder: the output dataset folder.
        name: dataset name.
        modalities: description of each modality, in order.
        shard_size: chips per shard.
        labels: label description for labelled datasets.
        spec: the spec that built the dataset, stored in the manifest.
        overwrite: replace an existing, non-empty output folder.
    """

    def __init__(
        self,
        folder: str | Path,
        name: str,
        modalities: Mapping[str, ModalityInfo],
        shard_size: int,
        labels: LabelInfo | None = None,
        spec: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.folder = Path(folder)
        prepare_output(self.folder, overwrite)
        self.name = name
        self.modalities = dict(modalities)
        self.shard_size = shard_size
        self.labels = labels
        self.spec = dict(spec or {})
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".partial", dir=self.folder.parent))
            os.chmod(self.staging, default_mode(directory=True))
        except OSError as error:
            raise OutputError(f"cannot create a folder next to {str(self.folder)!r}: {error}") from error
        self.shards: list[ShardInfo] = []
        self.scenes: list[SceneInfo] = []
        self._buffer: list[tuple[ChipArrays, int]] = []
        self._scene_count = 0
        self._next_id = 0

    def __enter__(self) -> ChipWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _check(self, chip: ChipArrays) -> None:
        for name, info in self.modalities.items():
            data = chip.data[name]
            expected = (info.num_dates, len(info.bands), *info.size)
            if data.shape != expected:
                raise InputError(
                    f"modality {name!r}: chip of shape {data.shape} does not match the dataset's "
                    f"[T, C, H, W] = {expected}; every scene needs the same dates count and chip size"
                )

    def add(self, chip: ChipArrays, scene_index: int) -> None:
        """Add one chip from scene ``scene_index`` (an index into the scenes added so far)."""
        self._check(chip)
        self._buffer.append((chip, scene_index))
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def add_scene(self, scene: SceneInfo) -> int:
        """Record a scene and return its index."""
        self.scenes.append(scene)
        return len(self.scenes) - 1

    def set_scene_count(self, index: int, num_chips: int) -> None:
        scene = self.scenes[index]
        self.scenes[index] = SceneInfo(scene.name, scene.crs, num_chips, scene.sources)

    def _flush(self) -> None:
        if not self._buffer:
            return
        chips = [chip for chip, _ in self._buffer]
        count = len(chips)
        tensors: dict[str, torch.Tensor] = {}
        for name in self.modalities:
            tensors[f"{name}/data"] = torch.from_numpy(np.stack([c.data[name] for c in chips]).astype(np.float32))
            tensors[f"{name}/valid"] = torch.from_numpy(np.stack([c.valid[name] for c in chips]).astype(bool))
            tensors[f"{name}/dates"] = torch.from_numpy(np.stack([c.dates[name] for c in chips]).astype(np.int32))
        tensors["chip/id"] = torch.arange(self._next_id, self._next_id + count, dtype=torch.int64)
        tensors["chip/scene"] = torch.tensor([scene for _, scene in self._buffer], dtype=torch.int32)
        tensors["chip/bounds"] = torch.tensor([c.bounds for c in chips], dtype=torch.float64)
        if self.labels is not None:
            tensors["label"] = torch.from_numpy(np.stack([c.label for c in chips]).astype(np.int16))
        file_name = SHARD_PATTERN.format(index=len(self.shards))
        try:
            save_file(tensors, str(self.staging / file_name), metadata={"format": "ramen-chips", "dataset": self.name})
        except OSError as error:
            raise OutputError(f"cannot write chip shard {file_name!r}: {error}") from error
        self.shards.append(ShardInfo(file_name, count))
        self._next_id += count
        self._buffer = []
        logger.debug("wrote %s with %d chips", file_name, count)

    def finish(self) -> Manifest:
        """Write the last shard and the manifest, then move the dataset into place."""
        self._flush()
        manifest = Manifest(
            name=self.name,
            modalities=self.modalities,
            shards=tuple(self.shards),
            scenes=tuple(self.scenes),
            labels=self.labels,
            spec=self.spec,
        )
        write_manifest(self.staging, manifest)
        try:
            if self.folder.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".old", dir=self.folder.parent))
                self.folder.replace(old / "dataset")
                self.staging.replace(self.folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                self.staging.replace(self.folder)
        except OSError as error:
            raise OutputError(f"cannot move the chip dataset into {str(self.folder)!r}: {error}") from error
        logger.info("wrote chip dataset %s: %d chips in %d shards", self.folder, manifest.num_chips, len(self.shards))
        return manifest
