"""torch.distributed set-up for training under torchrun (NCCL on CUDA, gloo on CPU)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ramen_core.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """This process's place in a (possibly single-process) run.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: device the model runs on.
        backend: ``nccl``, ``gloo`` or None for a single process.
        owns_group: whether this context created the process group (and closes it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return the mean of ``tensor`` over all ranks (the tensor itself for one process)."""
        if not self.distributed:
            return tensor
        reduced = tensor.detach().clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced / self.world_size

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if choice == "cuda":
        raise ConfigError("recipe key 'train.device' is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device("cpu")


def setup_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group that torchrun describes in the environment, if any.

    With ``WORLD_SIZE`` > 1 (set by ``torchrun`` or ``python -m torch.distributed.run``)
    the process group is initialised from ``MASTER_ADDR``/``MASTER_PORT``, with NCCL when
    the run uses CUDA and gloo otherwise. A group that the caller already initialised is
    reused and left open.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.
        timeout_s: how long collective operations wait for the other ranks, in seconds.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized() and world_size <= 1:
        return DistContext(device=_pick_device(device, 0))

    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        owns = True
    backend = dist.get_backend()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    chosen = _pick_device(device if backend == "nccl" else "cpu", local_rank)
    logger.info("rank %d of %d (local rank %d) on %s with %s", rank, world_size, local_rank, chosen, backend)
    return DistContext(rank, world_size, local_rank, chosen, backend, owns)
