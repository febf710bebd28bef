"""Task heads on the RAMEN encoder, and segmentation models saved with their classes and inputs.

:mod:`ramen_core.heads.bundle` (save and load a fine-tuned model) is imported on demand, as
it needs the weights format.
"""

from ramen_core.heads.upernet import (
    HEAD_UPSAMPLING,
    SegmentationOutput,
    Segmenter,
    UPerNetHead,
    default_feature_blocks,
    fuse_modalities,
    resample_logits,
)

__all__ = [
    "HEAD_UPSAMPLING",
    "SegmentationOutput",
    "Segmenter",
    "UPerNetHead",
    "default_feature_blocks",
    "fuse_modalities",
    "resample_logits",
]
