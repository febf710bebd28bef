"""Learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

from ramen_core.training.recipe import OptimRecipe, ScheduleRecipe


def learning_rate(step: int, steps_per_epoch: int, optim: OptimRecipe, schedule: ScheduleRecipe) -> float:
    """Return the learning rate of optimizer step ``step`` (0-based).

    The rate rises linearly from ``optim.warmup_start_lr`` to ``optim.lr`` over
    ``schedule.warmup_epochs``, then follows a half cosine down to ``optim.min_lr`` at
    ``schedule.epochs``, and stays there. With ``interval = "epoch"`` the position is
    rounded down to whole epochs, as a per-epoch scheduler would see it.

    Args:
        step: optimizer steps done so far.
        steps_per_epoch: optimizer steps per epoch.
        optim: peak, start and final rates.
        schedule: epochs of warm-up and in total.
    """
    epoch = step / steps_per_epoch
    if schedule.interval == "epoch":
        epoch = math.floor(epoch)
    warmup = schedule.warmup_epochs
    if epoch < warmup:
        return optim.warmup_start_lr + (optim.lr - optim.warmup_start_lr) * epoch / warmup
    decay = schedule.epochs - warmup
    if decay <= 0:
        return optim.lr
    progress = min(1.0, (epoch - warmup) / decay)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * progress))
