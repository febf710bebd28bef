"""UPerNet head and Segmenter on the tiny encoder: shapes, block choice, freezing, resampling."""

import pytest
import torch
import torch.nn.functional as F

from ramen_core.bands import BandSpec
from ramen_core.errors import ConfigError
from ramen_core.heads import (
    Segmenter,
    UPerNetHead,
    default_feature_blocks,
    fuse_modalities,
    resample_logits,
)
from ramen_core.model import ModalityInput, RamenConfig, RamenEncoder

S2_BANDS = [BandSpec.optical(nm) for nm in (490, 560, 665, 842)]
S1_BANDS = [BandSpec.radar("vv", "des"), BandSpec.radar("vh", "des")]


def _modalities(batch=2, size=32, gsd=10.0):
    generator = torch.Generator().manual_seed(0)
    return [
        ModalityInput("s2", torch.randn(batch, 1, 4, size, size, generator=generator), S2_BANDS, gsd),
        ModalityInput("s1", torch.randn(batch, 1, 2, size, size, generator=generator), S1_BANDS, gsd),
    ]


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return RamenEncoder(RamenConfig.tiny())


def test_default_blocks_for_vit_base():
    assert default_feature_blocks(12) == (4, 6, 8, 12)


@pytest.mark.parametrize(
    ("depth", "blocks"),
    [(1, (1, 1, 1, 1)), (2, (1, 1, 2, 2)), (4, (1, 2, 3, 4)), (8, (2, 4, 6, 8)), (24, (8, 12, 16, 24))],
)
def test_default_blocks_other_depths(depth, blocks):
    assert default_feature_blocks(depth) == blocks
    assert default_feature_blocks(depth)[-1] == depth


def test_head_output_is_four_times_token_grid():
    head = UPerNetHead(in_dim=16, num_classes=5, channels=8)
    maps = [torch.randn(2, 16, 6, 7) for _ in range(4)]
    assert head(maps).shape == (2, 5, 24, 28)


def test_head_handles_single_token_grid():
    head = UPerNetHead(in_dim=16, num_classes=3, channels=8, norm="group").eval()
    maps = [torch.randn(1, 16, 1, 1) for _ in range(4)]
    assert head(maps).shape == (1, 3, 4, 4)


def test_segmenter_logits_on_input_grid(encoder):
    segmenter = Segmenter(encoder, num_classes=3, channels=16)
    logits = segmenter(_modalities(size=32), target_gsd=20.0)
    assert logits.shape == (2, 3, 32, 32)
    assert torch.isfinite(logits).all()


def test_segmenter_non_integral_token_grid(encoder):
    # 30 px at 10 m and a 40 m GSD give 7 tokens that cover 28 px; the rest takes edge values.
    segmenter = Segmenter(encoder, num_classes=2, channels=16).eval()
    output = segmenter.predict(_modalities(size=30), target_gsd=40.0)
    assert output.logits.shape == (2, 2, 30, 30)
    assert output.valid.shape == (2, 30, 30)
    assert output.valid.all()


def test_frozen_encoder_gets_no_gradient(encoder):
    segmenter = Segmenter(encoder, num_classes=3, channels=16)
    segmenter.train()
    assert not segmenter.encoder.training
    segmenter(_modalities(), target_gsd=20.0).sum().backward()
    assert all(p.grad is None for p in segmenter.encoder.parameters())
    assert all(p.grad is not None for p in segmenter.head.classifier.parameters())


def test_unfrozen_encoder_gets_gradient():
    segmenter = Segmenter(RamenEncoder(RamenConfig.tiny()), num_classes=3, channels=16, freeze_encoder=False)
    segmenter.train()
    assert segmenter.encoder.training
    segmenter(_modalities(), target_gsd=20.0).sum().backward()
    assert segmenter.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_invalid_block_lists_rejected(encoder):
    with pytest.raises(ConfigError, match="exactly 4"):
        Segmenter(encoder, num_classes=2, blocks=(1, 2))
    with pytest.raises(ConfigError, match="does not exist"):
        Segmenter(encoder, num_classes=2, blocks=(1, 2, 2, 3))


def test_fuse_ignores_invalid_modality():
    maps = torch.stack([torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)], dim=1)
    valid = torch.tensor([[[[True, False], [True, True]], [[False, False], [True, True]]]])
    fused = fuse_modalities(maps, valid)
    assert fused[0, :, 0, 0].eq(0.0).all()  # only the first modality is valid there
    assert fused[0, :, 0, 1].eq(0.5).all()  # none valid: plain mean
    assert fused[0, :, 1, 1].eq(0.5).all()


def test_resample_matches_interpolate_on_whole_multiples():
    logits = torch.randn(1, 3, 7, 9)
    expected = F.interpolate(logits, size=(28, 36), mode="bilinear", align_corners=False)
    assert torch.allclose(resample_logits(logits, 10.0, (28, 36), 2.5), expected, atol=1e-5)
