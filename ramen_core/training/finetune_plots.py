"""The end-of-run figure of fine-tuning: training curves and the confusion matrix."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ramen_core._atomic import atomic_path

from ramen_core.training.metrics import SegmentationScores

logger = logging.getLogger(__name__)


def plot_training(
    path: Path,
    history: Sequence[Mapping[str, Any]],
    best_scores: SegmentationScores,
    class_names: Sequence[str],
    best_epoch: int,
) -> Path:
    """Draw losses, mIoU and overall accuracy per epoch, and the best epoch's confusion matrix.

    The confusion matrix is normalised per row (share of each true class's pixels), with
    the pixel counts written in the cells. The PNG is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [record["epoch"] for record in history]
    figure, (losses, scores, matrix_axes) = plt.subplots(1, 3, figsize=(16, 4.8))

    losses.plot(epochs, [record["train_loss"] for record in history], marker="o", label="training")
    losses.plot(epochs, [record["val_loss"] for record in history], marker="o", label="validation")
    losses.set_xlabel("epoch")
    losses.set_ylabel("cross-entropy")
    losses.set_title("Loss")
    losses.legend()

    scores.plot(epochs, [record["miou"] for record in history], marker="o", label="validation mIoU")
    scores.plot(epochs, [record["overall_accuracy"] for record in history], marker="o", label="validation OA")
    scores.plot(
        epochs, [record["majority_class_miou"] for record in history], linestyle="--", color="grey",
        label="majority-class mIoU",
    )
    scores.axvline(best_epoch, color="black", linewidth=0.8, linestyle=":")
    scores.set_ylim(0, 1)
    for axes in (losses, scores):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    scores.set_xlabel("epoch")
    scores.set_title("Validation (mIoU over classes present)")
    scores.legend(loc="lower right")

    confusion = best_scores.confusion.astype(np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)
    image = matrix_axes.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    ticks = np.arange(len(class_names))
    matrix_axes.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    matrix_axes.set_yticks(ticks, labels=list(class_names))
    matrix_axes.set_xlabel("predicted")
    matrix_axes.set_ylabel("true")
    matrix_axes.set_title(f"Confusion matrix, epoch {best_epoch}")
    if len(class_names) <= 20:
        for row in range(len(class_names)):
            for col in range(len(class_names)):
                colour = "white" if shares[row, col] > 0.5 else "black"
                matrix_axes.text(col, row, f"{int(confusion[row, col])}", ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=matrix_axes, fraction=0.046, label="share of true class")
    figure.tight_layout()

    try:
        with atomic_path(path, suffix=".png", what="the training plot") as temporary:
            figure.savefig(temporary, dpi=110)
    finally:
        plt.close(figure)
    logger.info("wrote %s", path)
    return path
