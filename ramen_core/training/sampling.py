"""What each pre-training step draws: a dataset, a modality subset, a target GSD, a mask.

Every draw is a pure function of the recipe's seed and a counter, never of hidden
generator state. All ranks of a distributed run compute the same dataset, subset and GSD
for a micro-batch without communicating. Masks differ per rank because the rank enters
their seed. A resumed run draws exactly what the interrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ramen_core.training.recipe import DatasetRecipe

# Stream tags keep the seeds of different draws apart.
_PLAN_STREAM = 1
_MASK_STREAM = 2
_GLOBAL_STREAM = 3


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed with numpy's SeedSequence, so nearby inputs give unrelated seeds."""
    state = np.random.SeedSequence([int(part) & 0xFFFFFFFFFFFFFFFF for part in parts]).generate_state(1, np.uint64)
    return int(state[0] >> 1)


def generator_for(*parts: int) -> torch.Generator:
    """Return a CPU generator seeded from ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass(frozen=True)
class StepPlan:
    """The shared draws of one micro-batch.

    Attributes:
        micro_step: index of the micro-batch since the start of training.
        dataset: name of the dataset drawn.
        modalities: kept modalities, in the recipe's order (the first defines the grid).
        target_gsd: target GSD in metres.
    """

    micro_step: int
    dataset: str
    modalities: tuple[str, ...]
    target_gsd: float


def plan_step(seed: int, micro_step: int, datasets: Sequence[DatasetRecipe]) -> StepPlan:
    """Draw the dataset (by weight), a non-empty modality subset and a target GSD.

    The subset size is uniform in 1..M and the subset uniform among those of that size,
    as in the authors' training loop. A target-GSD list is drawn uniformly; a range
    without step uniformly in [min, max].
    """
    generator = generator_for(seed, _PLAN_STREAM, micro_step)
    weights = torch.tensor([dataset.weight for dataset in datasets], dtype=torch.float64)
    dataset = datasets[int(torch.multinomial(weights, 1, generator=generator))]

    count = len(dataset.modalities)
    keep = int(torch.randint(1, count + 1, (1,), generator=generator))
    chosen = set(torch.randperm(count, generator=generator)[:keep].tolist())
    modalities = tuple(name for index, name in enumerate(dataset.modalities) if index in chosen)

    values = dataset.gsd_values()
    if values is not None:
        target = values[int(torch.randint(0, len(values), (1,), generator=generator))]
    else:
        low, high = dataset.finest_and_coarsest_gsd()
        target = low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64))
    return StepPlan(micro_step=micro_step, dataset=dataset.name, modalities=modalities, target_gsd=float(target))


def mask_noise(seed: int, rank: int, micro_step: int, batch: int, length: int) -> torch.Tensor:
    """Return the masking noise [batch, length] of one rank's micro-batch (uniform in [0, 1))."""
    return torch.rand(batch, length, generator=generator_for(seed, _MASK_STREAM, rank, micro_step))


def reseed_global(seed: int, rank: int, micro_step: int) -> None:
    """Seed torch's global generators for modules that draw from them (none do today)."""
    torch.manual_seed(derive_seed(seed, _GLOBAL_STREAM, rank, micro_step))
