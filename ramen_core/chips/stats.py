"""Per-channel normalisation statistics of a chip dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ramen_core.chips.dataset import ChipDataset
from ramen_core.chips.format import ChannelStats, write_manifest

logger = logging.getLogger(__name__)


class _Moments:
    """Count, mean and sum of squared deviations per channel, merged shard by shard (Chan et al.)."""

    def __init__(self, channels: int) -> None:
        self.count = np.zeros(channels, dtype=np.float64)
        self.mean = np.zeros(channels, dtype=np.float64)
        self.m2 = np.zeros(channels, dtype=np.float64)

    def update(self, data: torch.Tensor, valid: torch.Tensor) -> None:
        """Add the valid pixels of ``data`` [N, T, C, H, W] with ``valid`` [N, T, H, W]."""
        values = data.to(torch.float64).permute(2, 0, 1, 3, 4).reshape(data.shape[2], -1)
        mask = valid.reshape(1, -1).expand_as(values).to(torch.float64)
        count = mask.sum(dim=1).numpy()
        safe = np.maximum(count, 1.0)
        mean = ((values * mask).sum(dim=1).numpy()) / safe
        m2 = (((values - torch.from_numpy(mean)[:, None]) ** 2) * mask).sum(dim=1).numpy()
        total = self.count + count
        delta = mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = np.where(total > 0, self.mean + delta * count / np.maximum(total, 1.0), 0.0)
            self.m2 = self.m2 + m2 + delta**2 * self.count * count / np.maximum(total, 1.0)
        self.count = total

    def result(self) -> ChannelStats:
        variance = self.m2 / np.maximum(self.count, 1.0)
        return ChannelStats(
            mean=tuple(float(v) for v in self.mean),
            std=tuple(float(v) for v in np.sqrt(variance)),
            count=tuple(int(v) for v in self.count),
        )


def compute_stats(
    folder: str | Path, write: bool = True, progress: Callable[[int, int], None] | None = None
) -> dict[str, ChannelStats]:
    """Compute the mean and standard deviation of every channel over the valid pixels of all chips.

    The shards are read one at a time, so memory holds one shard. Channels without any
    valid pixel get mean 0 and std 0 (and are logged); training then feeds them unscaled.

    Args:
        folder: the chip dataset folder.
        write: store the statistics in the dataset's manifest.
        progress: called with (shards done, shards in total) after each shard.

    Returns:
        Modality name to its channel statistics.

    Raises:
        InputError: the dataset is missing, empty or unreadable.
    """
    dataset = ChipDataset(folder)
    manifest = dataset.manifest
    moments = {name: _Moments(len(info.bands)) for name, info in manifest.modalities.items()}
    total = len(manifest.shards)
    for index in range(total):
        tensors = dataset.read_shard(index)
        for name, accumulator in moments.items():
            accumulator.update(tensors[f"{name}/data"], tensors[f"{name}/valid"])
        if progress is not None:
            progress(index + 1, total)
    stats = {name: accumulator.result() for name, accumulator in moments.items()}
    for name, channel_stats in stats.items():
        empty = [band.name for band, count in zip(manifest.modalities[name].bands, channel_stats.count) if count == 0]
        if empty:
            logger.warning("modality %s: channels %s have no valid pixel; their statistics are 0", name, ", ".join(empty))
    if write:
        write_manifest(dataset.folder, manifest.with_stats(stats))
    return stats
