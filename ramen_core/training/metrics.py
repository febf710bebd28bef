"""Segmentation metrics from a confusion matrix: IoU per class, mIoU and overall accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MIOU_DEFINITION = (
    "mIoU is the unweighted mean, over the classes present in the validation labels, of "
    "IoU = TP / (TP + FP + FN), with TP, FP and FN summed over all validation pixels; "
    "ignored pixels take no part"
)


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, num_classes: int, ignore: int = -1) -> torch.Tensor:
    """Count pixels per (true class, predicted class): int64 [K, K], rows are true classes.

    Pixels whose target is ``ignore`` are not counted.
    """
    keep = target != ignore
    pairs = target[keep].to(torch.int64) * num_classes + predicted[keep].to(torch.int64)
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


@dataclass
class SegmentationScores:
    """Scores of a confusion matrix.

    Attributes:
        confusion: [K, K] pixel counts, rows true classes, columns predicted classes.
        iou: IoU per class; NaN for a class absent from both labels and predictions.
        present: whether each class occurs in the labels.
        miou: mean IoU over the present classes (see :data:`MIOU_DEFINITION`).
        overall_accuracy: share of counted pixels predicted right.
        majority_miou: the mIoU of always predicting the most frequent class, a baseline.
    """

    confusion: np.ndarray
    iou: np.ndarray
    present: np.ndarray
    miou: float
    overall_accuracy: float
    majority_miou: float

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        names = list(class_names) if class_names is not None else [str(k) for k in range(len(self.iou))]
        return {
            "miou": self.miou,
            "miou_definition": MIOU_DEFINITION,
            "overall_accuracy": self.overall_accuracy,
            "majority_class_miou": self.majority_miou,
            "iou": {name: (None if np.isnan(value) else float(value)) for name, value in zip(names, self.iou)},
            "classes_present": [name for name, present in zip(names, self.present) if present],
            "confusion_matrix": self.confusion.tolist(),
        }


def scores_from_confusion(confusion: np.ndarray | torch.Tensor) -> SegmentationScores:
    """Compute IoU per class, mIoU over present classes, overall accuracy and the majority baseline."""
    matrix = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(matrix)
    per_true = matrix.sum(axis=1)
    per_predicted = matrix.sum(axis=0)
    union = per_true + per_predicted - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
    present = per_true > 0
    total = matrix.sum()
    miou = float(np.nanmean(np.where(present, iou, np.nan))) if present.any() else float("nan")
    accuracy = float(true_positive.sum() / total) if total > 0 else float("nan")
    # Always predicting the majority class gives it IoU = its share of pixels, and 0 to the rest.
    majority = float(per_true.max() / total / present.sum()) if total > 0 else float("nan")
    return SegmentationScores(matrix.astype(np.int64), iou, present, miou, accuracy, majority)
