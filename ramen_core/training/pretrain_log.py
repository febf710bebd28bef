"""Pre-training logs: JSONL metrics, optional TensorBoard events, a summary and a loss plot.

``metrics.jsonl`` contains one record per micro-batch (``"kind": "batch"``: dataset, kept
modalities, target GSD, token grid, total and per-modality loss) and one per optimizer
step (``"kind": "step"``: learning rate, gradient norm, mean loss, throughput). Losses are
means over all ranks.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
PLOT_NAME = "loss.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read every record of a metrics JSONL file, skipping a torn last line."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("skipped an unreadable line of %s (an interrupted write)", path)
    return records


class MetricsLog:
    """Append metrics records to ``metrics.jsonl`` and, if installed, TensorBoard.

    Args:
        folder: log folder.
        tensorboard: also write TensorBoard events when the package is installed.
        resume_micro_step: on resume, records of micro-batches from this index on (and of
            the optimizer steps they belong to) are dropped first, because the resumed run
            computes them again.
    """

    def __init__(self, folder: str | Path, tensorboard: bool = True, resume_micro_step: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / METRICS_NAME
        if resume_micro_step is None:
            self.path.write_text("", encoding="utf-8")
        else:
            remaining = [
                record for record in read_metrics(self.path)
                if record.get("micro_step", math.inf) < resume_micro_step
            ]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in remaining), encoding="utf-8")
        self._stream = self.path.open("a", encoding="utf-8")
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed; metrics go to %s only", self.path)
            else:
                self._writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"))

    def write(self, record: Mapping[str, Any]) -> None:
        self._stream.write(json.dumps(record) + "\n")
        self._stream.flush()
        if self._writer is None:
            return
        if record["kind"] == "batch":
            micro_step = record["micro_step"]
            self._writer.add_scalar("loss/total", record["loss"], micro_step)
            for name, value in record["losses"].items():
                self._writer.add_scalar(f"loss/{name}", value, micro_step)
            self._writer.add_scalar(f"loss_by_gsd/{record['dataset']}/{record['target_gsd']:g}m", record["loss"], micro_step)
        else:
            step = record["step"]
            for key in ("lr", "grad_norm", "samples_per_s", "tokens_per_s"):
                if record.get(key) is not None:
                    self._writer.add_scalar(f"train/{key}", record[key], step)

    def close(self) -> None:
        self._stream.close()
        if self._writer is not None:
            self._writer.close()


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def summarize(records: list[dict[str, Any]], fraction: float = 0.2) -> dict[str, Any]:
    """Compare the first and last ``fraction`` of the micro-batches, overall and per group.

    Returns:
        ``loss_first``/``loss_last`` (mean total loss), and the same two means per
        modality, per dataset and per (dataset, target GSD), plus throughput.
    """
    batches = [record for record in records if record.get("kind") == "batch"]
    steps = [record for record in records if record.get("kind") == "step"]
    if not batches:
        return {"micro_steps": 0}
    count = max(1, int(len(batches) * fraction))
    first, last = batches[:count], batches[-count:]

    def grouped(part: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
        groups: dict[str, dict[str, list[float]]] = {"modality": defaultdict(list), "dataset": defaultdict(list), "gsd": defaultdict(list)}
        for record in part:
            for name, value in record["losses"].items():
                groups["modality"][name].append(value)
            groups["dataset"][record["dataset"]].append(record["loss"])
            groups["gsd"][f"{record['dataset']}@{record['target_gsd']:g}m"].append(record["loss"])
        return groups

    first_groups, last_groups = grouped(first), grouped(last)
    by_group: dict[str, dict[str, dict[str, float | None]]] = {}
    for kind in ("modality", "dataset", "gsd"):
        keys = sorted(set(first_groups[kind]) | set(last_groups[kind]))
        by_group[kind] = {
            key: {"first": _mean(first_groups[kind].get(key, [])), "last": _mean(last_groups[kind].get(key, []))}
            for key in keys
        }
    seconds = sum(record.get("seconds", 0.0) for record in steps)
    samples = sum(record["samples"] for record in batches)
    tokens = sum(record["tokens"] for record in batches)
    return {
        "micro_steps": len(batches),
        "steps": len(steps),
        "window": count,
        "loss_first": _mean(record["loss"] for record in first),
        "loss_last": _mean(record["loss"] for record in last),
        "by_modality": by_group["modality"],
        "by_dataset": by_group["dataset"],
        "by_gsd": by_group["gsd"],
        "train_seconds": seconds,
        "samples_per_s": samples / seconds if seconds else None,
        "tokens_per_s": tokens / seconds if seconds else None,
    }


def _moving_average(values: list[float], window: int) -> list[float]:
    result, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        result.append(total / min(index + 1, window))
    return result


def plot_losses(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Draw the loss curves (total and per modality) and the mean loss per target GSD to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [record for record in records if record.get("kind") == "batch"]
    window = max(1, len(batches) // 20)
    figure, (curves, by_gsd) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = [record["micro_step"] for record in batches]
    total = [record["loss"] for record in batches]
    curves.plot(x, total, color="0.8", linewidth=0.8, label="total (per batch)")
    curves.plot(x, _moving_average(total, window), color="black", linewidth=1.5, label=f"total ({window}-batch mean)")
    per_modality: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for record in batches:
        for name, value in record["losses"].items():
            per_modality[name][0].append(record["micro_step"])
            per_modality[name][1].append(value)
    for name, (steps, values) in sorted(per_modality.items()):
        curves.plot(steps, _moving_average(values, window), linewidth=1.0, label=f"{name} ({window}-batch mean)")
    curves.set_xlabel("micro-batch")
    curves.set_ylabel("masked reconstruction loss")
    curves.set_yscale("log")
    curves.legend(fontsize=8)
    curves.set_title(title or "MAE pre-training")

    half = batches[len(batches) // 2 :]
    gsd_losses: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in half:
        gsd_losses[record["dataset"]][record["target_gsd"]].append(record["loss"])
    for dataset, table in sorted(gsd_losses.items()):
        gsds = sorted(table)
        by_gsd.plot(gsds, [sum(table[g]) / len(table[g]) for g in gsds], marker="o", label=dataset)
    by_gsd.set_xscale("log")
    by_gsd.set_xlabel("target GSD (m)")
    by_gsd.set_ylabel("mean loss, second half of the run")
    by_gsd.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
