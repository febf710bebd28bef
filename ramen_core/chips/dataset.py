"""Read chip datasets: random access, a streaming shard reader, and batches for the model."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ramen_core.chips.format import ChannelStats, Manifest, read_manifest
from ramen_core.errors import InputError
from ramen_core.model import ModalityInput

logger = logging.getLogger(__name__)

Chip = dict[str, Tensor]
_EPOCH = np.datetime64("1970-01-01", "D")


def _seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (numpy's SeedSequence spreads nearby inputs apart)."""
    return int(np.random.SeedSequence([int(part) for part in parts]).generate_state(1, np.uint64)[0] >> 1)


def permutation(size: int, *seed_parts: int) -> list[int]:
    """Return a permutation of ``range(size)`` fixed by the seed parts."""
    generator = torch.Generator().manual_seed(_seed(*seed_parts))
    return torch.randperm(size, generator=generator).tolist()


class ChipDataset(Dataset[Chip]):
    """Random access to the chips of a dataset folder written by ``ramen chips``.

    Each item is a dict of tensors keyed as in the shards (``s2/data`` [T, C, H, W],
    ``s2/valid``, ``s2/dates``, ``chip/id``, ``chip/bounds``, ``label``), without the chip axis.

    Args:
        folder: the dataset folder.
        keys: tensor keys to read; None reads every key.

    Raises:
        InputError: the folder, its manifest or a shard is missing or invalid, or the
            dataset holds no chip.
    """

    def __init__(self, folder: str | Path, keys: Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(self.folder)
        if self.manifest.num_chips == 0:
            raise InputError(
                f"chip dataset {str(self.folder)!r} holds no chip; build it again with a smaller "
                f"min_valid or a larger area"
            )
        missing = [shard.file for shard in self.manifest.shards if not (self.folder / shard.file).is_file()]
        if missing:
            raise InputError(
                f"chip dataset {str(self.folder)!r}: shard {missing[0]!r} listed in the manifest is missing; "
                f"build the chips again"
            )
        self.keys = None if keys is None else list(keys)
        self._ends = np.cumsum([shard.num_chips for shard in self.manifest.shards]).tolist()

    def __len__(self) -> int:
        return self.manifest.num_chips

    def shard_path(self, index: int) -> Path:
        return self.folder / self.manifest.shards[index].file

    def read_shard(self, index: int) -> dict[str, Tensor]:
        """Load every selected tensor of one shard, [N, ...] each.

        Raises:
            InputError: the shard is unreadable or does not hold what the manifest says.
        """
        path = self.shard_path(index)
        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError) as error:
            raise InputError(f"chip shard {str(path)!r} is unreadable ({error}); build the chips again") from error
        expected = self.manifest.shards[index].num_chips
        found = tensors.get("chip/id")
        if found is None or found.shape[0] != expected:
            raise InputError(
                f"chip shard {str(path)!r} holds {0 if found is None else found.shape[0]} chips but the "
                f"manifest lists {expected}; build the chips again"
            )
        if self.keys is not None:
            absent = [key for key in self.keys if key not in tensors]
            if absent:
                raise InputError(f"chip shard {str(path)!r} has no tensor {absent[0]!r}")
            tensors = {key: tensors[key] for key in self.keys}
        return tensors

    def locate(self, index: int) -> tuple[int, int]:
        """Return (shard index, position in the shard) of chip ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"chip {index} is out of range for {len(self)} chips")
        shard = bisect.bisect_right(self._ends, index)
        start = self._ends[shard - 1] if shard else 0
        return shard, index - start

    def __getitem__(self, index: int) -> Chip:
        shard, position = self.locate(index)
        path = self.shard_path(shard)
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = self.keys if self.keys is not None else list(handle.keys())
                return {key: handle.get_slice(key)[position : position + 1][0] for key in keys}
        except (OSError, SafetensorError) as error:
            raise InputError(f"chip shard {str(path)!r} is unreadable ({error}); build the chips again") from error


class ChipStream(IterableDataset[Chip]):
    """Stream the chips of one rank, one shard in memory at a time, forever or for one pass.

    The shards are split between the ranks of a distributed run (rank ``r`` reads shards
    ``r, r + world_size, ...``), so each rank reads only its own files. When a dataset has
    fewer shards than ranks, every rank reads every shard but keeps only the chips whose
    id modulo ``world_size`` is its rank. Each pass visits the rank's shards in a new
    random order and the chips of a shard in a new random order, both fixed by
    (seed, rank, pass), so a stream can restart at any position without reading what
    came before it.

    Args:
        dataset: the chip dataset.
        seed: shuffling seed.
        rank: this process's rank.
        world_size: number of ranks.
        shuffle: shuffle shards and chips; False streams them in stored order.
        start: number of chips of this rank's stream to skip (a resume position).
        repeat: start a new pass after the last chip; False stops after one pass.

    Raises:
        InputError: the dataset has fewer chips than there are ranks.
    """

    def __init__(
        self,
        dataset: ChipDataset,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start: int = 0,
        repeat: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is not in [0, world size {world_size})")
        if len(dataset) < world_size:
            raise InputError(
                f"chip dataset {str(dataset.folder)!r} has {len(dataset)} chips, fewer than the "
                f"{world_size} ranks; use fewer processes or more chips"
            )
        self.dataset = dataset
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.start = start
        self.repeat = repeat
        self.units = self._rank_units()
        self.chips_per_pass = sum(len(positions) for _, positions in self.units)

    def _rank_units(self) -> list[tuple[int, list[int]]]:
        """Return (shard index, positions in the shard) of every chip this rank reads."""
        shards = self.dataset.manifest.shards
        if len(shards) >= self.world_size:
            return [(index, list(range(shards[index].num_chips))) for index in range(self.rank, len(shards), self.world_size)]
        logger.warning(
            "chip dataset %s has %d shards for %d ranks: every rank reads every shard; write it "
            "with a smaller shard size so that each rank reads its own files",
            self.dataset.folder, len(shards), self.world_size,
        )
        units = []
        first_id = 0
        for index, shard in enumerate(shards):
            positions = [p for p in range(shard.num_chips) if (first_id + p) % self.world_size == self.rank]
            if positions:
                units.append((index, positions))
            first_id += shard.num_chips
        return units

    def _pass_order(self, pass_index: int) -> list[tuple[int, list[int]]]:
        if not self.shuffle:
            return self.units
        order = permutation(len(self.units), self.seed, self.rank, pass_index)
        result = []
        for unit in order:
            shard, positions = self.units[unit]
            shuffled = [positions[i] for i in permutation(len(positions), self.seed, self.rank, pass_index, shard)]
            result.append((shard, shuffled))
        return result

    def __iter__(self) -> Iterator[Chip]:
        worker = get_worker_info()
        workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        # NOTE: with DataLoader workers each worker streams every workers-th shard of a pass,
        # so the order of chips (and the meaning of `start`) depends on the number of workers.
        pass_index, offset = divmod(self.start, self.chips_per_pass)
        while True:
            for unit_index, (shard, positions) in enumerate(self._pass_order(pass_index)):
                if offset >= len(positions):
                    offset -= len(positions)
                    continue
                if unit_index % workers != worker_id:
                    offset = 0
                    continue
                tensors = self.dataset.read_shard(shard)
                for position in positions[offset:]:
                    yield {key: value[position] for key, value in tensors.items()}
                offset = 0
            if not self.repeat:
                return
            pass_index += 1


def collate_chips(chips: Sequence[Chip]) -> dict[str, Tensor]:
    """Stack chips into a batch, adding the chip axis first."""
    if not chips:
        raise InputError("cannot build a batch from zero chips")
    return {key: torch.stack([chip[key] for chip in chips]) for key in chips[0]}


def day_of_year(days_since_epoch: Tensor) -> Tensor:
    """Convert dates stored as days since 1970-01-01 to days of the year (1 to 366)."""
    days = days_since_epoch.cpu().numpy().astype("int64")
    dates = _EPOCH + days.astype("timedelta64[D]")
    years = dates.astype("datetime64[Y]").astype("datetime64[D]")
    return torch.from_numpy((dates - years).astype("int64") + 1)


@lru_cache(maxsize=256)
def _stats_tensors(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    mean_tensor = torch.tensor(mean, dtype=torch.float32)
    std_tensor = torch.tensor(std, dtype=torch.float32)
    # A constant channel has std 0; dividing by 1 keeps it finite.
    std_tensor = torch.where(std_tensor > 0, std_tensor, torch.ones_like(std_tensor))
    return mean_tensor, std_tensor


def to_modality_inputs(
    batch: Mapping[str, Tensor],
    manifest: Manifest,
    modalities: Sequence[str],
    stats: Mapping[str, ChannelStats] | None = None,
    device: torch.device | str = "cpu",
) -> list[ModalityInput]:
    """Turn a collated batch into the model's inputs.

    Each channel is normalised with ``(x - mean) / std`` when ``stats`` are given, invalid
    pixels are set to 0 after normalisation, and dates become days of the year.

    Args:
        batch: output of :func:`collate_chips`.
        manifest: the dataset's manifest (band metadata and GSDs).
        modalities: modality names to include, in order.
        stats: per-modality channel statistics, or None to feed the stored values.
        device: device of the returned tensors.

    Raises:
        InputError: a modality is not in the dataset or has no statistics.
    """
    inputs = []
    for name in modalities:
        info = manifest.modalities.get(name)
        if info is None:
            raise InputError(
                f"chip dataset {manifest.name!r} has no modality {name!r}; it has {', '.join(manifest.modalities)}"
            )
        data = batch[f"{name}/data"].to(device=device, dtype=torch.float32)
        valid = batch[f"{name}/valid"].to(device=device, dtype=torch.bool)
        if stats is not None:
            if name not in stats:
                raise InputError(f"no normalisation statistics for modality {name!r}; run `ramen chips DIR --stats`")
            mean, std = _stats_tensors(stats[name].mean, stats[name].std)
            shape = (1, 1, -1, 1, 1)
            data = (data - mean.to(device).view(shape)) / std.to(device).view(shape)
        data = torch.where(valid[:, :, None], data, torch.zeros((), device=device))
        dates = day_of_year(batch[f"{name}/dates"]).to(device)
        inputs.append(ModalityInput(name=name, data=data, bands=list(info.bands), gsd=info.gsd, dates=dates, valid=valid))
    return inputs
