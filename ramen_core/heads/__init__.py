"""Task heads on the RAMEN encoder."""

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
