"""MAE pre-training of RAMEN from a recipe, resumable and distributed.

Each micro-batch draws a dataset by weight, a non-empty subset of its modalities and a
target GSD, the same on every rank. Each rank then takes ``batch_size`` chips of that
dataset from its own shards, masks ``mask_ratio`` of the tokens with rank-specific noise
and reconstructs every kept modality at its native resolution. The loss is
:class:`~ramen_core.model.RamenMAE`'s: the masked-pixel MSE of per-pixel normalised
targets, summed over modalities. AdamW follows a linear warm-up and cosine decay, with
gradient clipping, gradient accumulation and bfloat16 autocast on CUDA.

Run it with :func:`pretrain` or ``ramen pretrain --recipe FILE``; under ``torchrun`` every
process joins the process group and trains with DistributedDataParallel.

NOTE: the loss also counts invalid pixels (nodata, clouds), which are 0 after
normalisation, because :class:`RamenMAE` takes no pixel mask. Chips are kept only above
the spec's ``min_valid`` share, which bounds how much they weigh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ramen_core.errors import OutputError, RamenError
from ramen_core.model import ModalityInput, RamenConfig, RamenMAE, grid_shape
from ramen_core.training.checkpoint import (
    ENCODER_NAME,
    LATEST_NAME,
    TrainState,
    export_encoder,
    load_checkpoint,
    save_checkpoint,
)
from ramen_core.training.data import PretrainData
from ramen_core.training.distributed import DistContext, setup_distributed
from ramen_core.training.pretrain_log import PLOT_NAME, SUMMARY_NAME, MetricsLog, plot_losses, read_metrics, summarize
from ramen_core.training.recipe import OptimRecipe, Recipe
from ramen_core.training.sampling import mask_noise, plan_step, reseed_global
from ramen_core.training.schedule import learning_rate

logger = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """Outputs of a pre-training run.

    Attributes:
        model: the trained :class:`RamenMAE` (on the training device).
        state: the final counters.
        checkpoint: the last checkpoint's weights file (None on ranks other than 0).
        encoder: the exported encoder, when ``checkpoint.export_encoder`` is on (rank 0).
        log_dir: folder of ``metrics.jsonl``, ``summary.json`` and ``loss.png``.
        summary: loss and throughput summary (rank 0).
        history: one entry per micro-batch of this process: the draws, chip ids and loss.
    """

    model: RamenMAE
    state: TrainState
    checkpoint: Path | None
    encoder: Path | None
    log_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class _MAEStep(nn.Module):
    """Wrap :class:`RamenMAE` so that its forward returns only tensors, which DDP requires to find unused parameters."""

    def __init__(self, mae: RamenMAE) -> None:
        super().__init__()
        self.mae = mae

    def forward(
        self, modalities: list[ModalityInput], target_gsd: float, mask_ratio: float, noise: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        output = self.mae(modalities, target_gsd, mask_ratio=mask_ratio, noise=noise)
        return output.loss, output.losses


def build_optimizer(model: nn.Module, optim: OptimRecipe) -> torch.optim.AdamW:
    """Build AdamW; with ``decay_norms_and_biases`` off, 1-D tensors and tokens get no weight decay."""
    if optim.decay_norms_and_biases:
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            (no_decay if parameter.ndim <= 1 or name.endswith("_token") else decay).append(parameter)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=optim.lr, betas=(optim.betas[0], optim.betas[1]), eps=optim.eps, weight_decay=optim.weight_decay
    )


def parameter_fingerprint(model: nn.Module) -> str:
    """Return a SHA-256 over every parameter, to compare models bit for bit.

    Buffers (the L-TAE BatchNorm running statistics) are left out: under DDP on CPU each
    rank updates them from its own batch, and rank 0's copy is broadcast only at the next
    forward pass.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def steps_per_epoch(recipe: Recipe, data: PretrainData) -> int:
    """Optimizer steps per epoch: the recipe's value, or one pass of each rank over its share."""
    if recipe.schedule.steps_per_epoch:
        return recipe.schedule.steps_per_epoch
    micro = sum(
        data.chips_per_epoch(name) // dataset.batch_size for name, dataset in recipe.datasets.items()
    )
    return max(1, micro // recipe.optim.grad_accumulation)


def _convert_batchnorm(model: RamenMAE, context: DistContext, enabled: bool) -> nn.Module:
    if not (enabled and context.distributed):
        return model
    if context.device.type != "cuda":
        logger.info("SyncBatchNorm needs CUDA; the L-TAE BatchNorm statistics stay per rank on %s", context.device)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


class _Progress:
    """A rich progress bar on rank 0, or nothing."""

    def __init__(self, enabled: bool, total: int, completed: int, description: str) -> None:
        self._bar: Any = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
            transient=False,
        )
        self._task = self._bar.add_task(description, total=total, completed=completed, status="")
        self._bar.start()

    def update(self, completed: int, status: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, status=status)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _check_fresh_start(recipe: Recipe, overwrite: bool) -> None:
    pointer = recipe.checkpoint.dir / LATEST_NAME
    if pointer.is_file() and not overwrite:
        raise OutputError(
            f"checkpoint folder {str(recipe.checkpoint.dir)!r} already contains a run; pass --resume to continue it, "
            f"--overwrite to start afresh there, or set checkpoint.dir to another folder"
        )


# Keys that may change between an interrupted run and its resumption without changing its draws.
_RESUMABLE_CHANGES = ("train.max_steps", "train.log_every", "train.cpu_threads", "train.device", "checkpoint.", "log.", "source")


def _flatten(table: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(table, dict):
        return {prefix: table}
    flat: dict[str, Any] = {}
    for key, value in table.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def _warn_recipe_changes(stored: str | None, recipe: Recipe) -> None:
    """Log the recipe keys that differ from the checkpoint's, since they change what the run draws."""
    if not stored:
        return
    before, after = _flatten(json.loads(stored)), _flatten(recipe.to_dict())
    changed = sorted(
        key for key in set(before) | set(after)
        if before.get(key) != after.get(key) and not key.startswith(_RESUMABLE_CHANGES)
    )
    if changed:
        logger.warning(
            "resuming with recipe keys that differ from the checkpoint's (%s): the run will not match an "
            "uninterrupted one", ", ".join(changed),
        )


def _metadata(recipe: Recipe, data: PretrainData, state: TrainState, last_loss: float | None) -> dict[str, str]:
    training = {
        "recipe": recipe.name,
        "step": state.step,
        "micro_step": state.micro_step,
        "world_size": state.world_size,
        "datasets": list(recipe.datasets),
        "mask_ratio": recipe.mae.mask_ratio,
        "last_loss": last_loss,
    }
    return {
        "recipe": recipe.to_json(),
        "normalization": json.dumps(data.normalization_record()),
        "training": json.dumps(training),
    }


def pretrain(
    recipe: Recipe,
    *,
    resume: bool | str | Path = False,
    overwrite: bool = False,
    progress: bool = False,
    keep_history: bool = False,
) -> PretrainResult:
    """Pre-train a RAMEN MAE as the recipe sets out.

    Args:
        recipe: the validated recipe.
        resume: True continues from the newest checkpoint in ``checkpoint.dir``; a path
            continues from that checkpoint folder or weights file. The resumed run draws
            the same batches, subsets, GSDs and masks as an uninterrupted one.
        overwrite: start afresh even if ``checkpoint.dir`` already contains a run.
        progress: show a progress bar (on rank 0).
        keep_history: return every micro-batch's draws and chip ids in the result.

    Returns:
        The trained model, counters and output paths.

    Raises:
        ConfigError: the recipe does not fit the datasets.
        InputError: a dataset or the checkpoint to resume from is missing or unreadable.
        WeightsError: the checkpoint comes from another model config.
        OutputError: a checkpoint or log cannot be written, or the checkpoint folder
            already holds a run and neither ``resume`` nor ``overwrite`` is set.
        RamenError: the loss became NaN or infinite.
    """
    threads = torch.get_num_threads()
    if recipe.train.cpu_threads:
        torch.set_num_threads(recipe.train.cpu_threads)
    context = setup_distributed(recipe.train.device)
    try:
        return _run(recipe, context, resume, overwrite, progress, keep_history)
    finally:
        context.close()
        torch.set_num_threads(threads)


def _run(
    recipe: Recipe, context: DistContext, resume: bool | str | Path, overwrite: bool, progress: bool, keep_history: bool
) -> PretrainResult:
    seed = recipe.train.seed
    config: RamenConfig = recipe.model.config()
    if not resume:
        _check_fresh_start(recipe, overwrite)

    torch.manual_seed(seed)
    model = RamenMAE(config).to(context.device)
    optimizer = build_optimizer(model, recipe.optim)
    state = TrainState(world_size=context.world_size)
    if resume:
        source = recipe.checkpoint.dir if resume is True else Path(resume)
        state, metadata = load_checkpoint(source, model, optimizer, config)
        _warn_recipe_changes(metadata.get("recipe"), recipe)
        if state.world_size != context.world_size:
            logger.warning(
                "the checkpoint was written by %d ranks and this run has %d: the ranks now split the shards "
                "differently, so batches will differ from an uninterrupted run",
                state.world_size, context.world_size,
            )
            state.world_size = context.world_size
    data = PretrainData(recipe, context.rank, context.world_size, state.consumed)

    per_epoch = steps_per_epoch(recipe, data)
    total_steps = recipe.schedule.epochs * per_epoch
    end_step = min(total_steps, recipe.train.max_steps) if recipe.train.max_steps else total_steps
    use_bf16 = recipe.train.precision == "bf16" and context.device.type == "cuda"
    if recipe.train.precision == "bf16" and not use_bf16:
        logger.info("bf16 autocast runs on CUDA only; training in float32 on %s", context.device)

    trainable: nn.Module = _convert_batchnorm(model, context, recipe.train.sync_batchnorm)
    step_module: nn.Module = _MAEStep(trainable)  # type: ignore[arg-type]
    if context.distributed:
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        step_module = DistributedDataParallel(step_module, device_ids=device_ids, find_unused_parameters=True)
    model.train()

    log = None
    if context.is_main:
        log = MetricsLog(recipe.log.dir, recipe.log.tensorboard, resume_micro_step=state.micro_step if resume else None)
        logger.info(
            "pre-training %s: %d steps per epoch, %d epochs (%d steps), from step %d to %d, %d rank(s) on %s",
            recipe.name, per_epoch, recipe.schedule.epochs, total_steps, state.step, end_step,
            context.world_size, context.device,
        )
    bar = _Progress(progress and context.is_main, end_step, state.step, recipe.name)
    history: list[dict[str, Any]] = []
    datasets = list(recipe.datasets.values())
    accumulation = recipe.optim.grad_accumulation
    parameters = [p for p in model.parameters() if p.requires_grad]
    last_checkpoint: Path | None = None
    last_loss: float | None = None
    started = time.perf_counter()
    elapsed_before = state.elapsed_s

    try:
        while state.step < end_step:
            step_started = time.perf_counter()
            lr = learning_rate(state.step, per_epoch, recipe.optim, recipe.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            reseed_global(seed, context.rank, state.micro_step)
            step_losses = []
            samples = tokens = 0
            first_micro = state.step * accumulation
            for micro_step in range(first_micro, first_micro + accumulation):
                plan = plan_step(seed, micro_step, datasets)
                batch = data.next_batch(plan, context.device)
                first = batch.modalities[0]
                rows, cols = grid_shape(first.data.shape[-2], first.data.shape[-1], first.gsd, plan.target_gsd)
                size = len(batch.chip_ids)
                length = len(plan.modalities) * rows * cols
                noise = mask_noise(seed, context.rank, micro_step, size, length).to(context.device)
                last_micro = micro_step == first_micro + accumulation - 1
                sync = contextlib.nullcontext() if last_micro or not context.distributed else step_module.no_sync()
                with sync:
                    with torch.autocast(device_type=context.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                        loss, losses = step_module(batch.modalities, plan.target_gsd, recipe.mae.mask_ratio, noise)
                    (loss / accumulation).backward()

                values = context.mean(torch.stack([loss.detach().float(), *(v.detach().float() for v in losses.values())]))
                mean_loss = float(values[0])
                if not math.isfinite(mean_loss):
                    raise RamenError(
                        f"the loss became {mean_loss} at micro-batch {micro_step} (dataset {plan.dataset}, "
                        f"modalities {', '.join(plan.modalities)}, target GSD {plan.target_gsd:g} m); lower optim.lr "
                        f"or check the chips for extreme values"
                    )
                per_modality = {name: float(v) for name, v in zip(losses, values[1:])}
                samples += size * context.world_size
                tokens += size * context.world_size * length
                step_losses.append(mean_loss)
                record = {
                    "kind": "batch", "step": state.step, "micro_step": micro_step, "epoch": state.step / per_epoch,
                    "dataset": plan.dataset, "modalities": list(plan.modalities), "target_gsd": plan.target_gsd,
                    "grid": [rows, cols], "loss": mean_loss, "losses": per_modality,
                    "samples": size * context.world_size, "tokens": size * context.world_size * length,
                }
                if log is not None:
                    log.write(record)
                if keep_history:
                    history.append({**record, "chip_ids": batch.chip_ids, "rank_loss": float(loss.detach())})

            if recipe.optim.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, recipe.optim.grad_clip))
            else:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, math.inf))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.micro_step += accumulation
            state.consumed = dict(data.consumed)
            seconds = time.perf_counter() - step_started
            last_loss = sum(step_losses) / len(step_losses)
            if log is not None:
                log.write({
                    "kind": "step", "step": state.step - 1, "micro_step": state.micro_step - 1, "lr": lr,
                    "grad_norm": grad_norm, "loss": last_loss, "seconds": seconds,
                    "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
                })
            if state.step % recipe.train.log_every == 0 or state.step == end_step:
                bar.update(state.step, f"loss {last_loss:.4f} lr {lr:.2e}")

            due = state.step == end_step
            if recipe.checkpoint.every_steps and state.step % recipe.checkpoint.every_steps == 0:
                due = True
            if recipe.checkpoint.every_epochs and state.step % (recipe.checkpoint.every_epochs * per_epoch) == 0:
                due = True
            if due:
                state.elapsed_s = elapsed_before + time.perf_counter() - started
                if context.is_main:
                    last_checkpoint = save_checkpoint(
                        recipe.checkpoint.dir, model, optimizer, state, config,
                        _metadata(recipe, data, state, last_loss), recipe.checkpoint.keep,
                    )
                context.barrier()
    except KeyboardInterrupt:
        logger.warning(
            "interrupted at step %d; continue with --resume from the newest checkpoint in %s",
            state.step, recipe.checkpoint.dir,
        )
        raise
    finally:
        bar.close()
        if log is not None:
            log.close()

    encoder_path: Path | None = None
    summary: dict[str, Any] = {}
    if context.is_main:
        if last_checkpoint is None:
            logger.info("nothing to train: the checkpoint is already at step %d of %d", state.step, end_step)
            pointer = recipe.checkpoint.dir / LATEST_NAME
            last_checkpoint = recipe.checkpoint.dir / json.loads(pointer.read_text())["weights"] if pointer.is_file() else None
        if recipe.checkpoint.export_encoder and last_checkpoint is not None:
            encoder_path = export_encoder(last_checkpoint, recipe.checkpoint.dir / ENCODER_NAME)
        records = read_metrics(Path(recipe.log.dir) / "metrics.jsonl")
        summary = summarize(records)
        summary.update({"recipe": recipe.name, "step": state.step, "end_step": end_step, "total_steps": total_steps})
        (Path(recipe.log.dir) / SUMMARY_NAME).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        if recipe.log.plot and records:
            plot_losses(records, Path(recipe.log.dir) / PLOT_NAME, title=f"{recipe.name}: MAE pre-training")
        logger.info("pre-training done at step %d; summary in %s", state.step, Path(recipe.log.dir) / SUMMARY_NAME)
    context.barrier()
    return PretrainResult(
        model=model, state=state, checkpoint=last_checkpoint, encoder=encoder_path,
        log_dir=Path(recipe.log.dir), summary=summary, history=history,
    )

