"""Encoder behaviour beyond the reference: any GSD, rectangles, validity masks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ramen_core.bands import BandSpec
from ramen_core.errors import ConfigError, InputError
from ramen_core.model import ModalityInput, RamenConfig, RamenEncoder, RamenMAE, grid_shape, reconstruction_loss

S2_NM = [490, 560, 665, 705, 740, 783, 842, 865, 1610, 2190]


def _s2(batch=1, dates=1, size=(12, 12), seed=0) -> ModalityInput:
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(batch, dates, len(S2_NM), *size, generator=generator)
    day_of_year = torch.arange(1, dates + 1, dtype=torch.int32).mul(30).expand(batch, dates).contiguous()
    return ModalityInput("s2", data, [BandSpec.optical(nm) for nm in S2_NM], 10.0, dates=day_of_year)


@pytest.fixture(scope="module")
def encoder() -> RamenEncoder:
    torch.manual_seed(0)
    model = RamenEncoder(RamenConfig.tiny())
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    return model.eval()


def test_grid_shape_truncates_like_reference():
    assert grid_shape(18, 18, 2.5, 10.0) == (4, 4)
    assert grid_shape(12, 20, 10.0, 20.0) == (6, 10)


def test_any_target_gsd(encoder):
    with torch.no_grad():
        out = encoder([_s2()], target_gsd=13.7)
    assert out.grid == grid_shape(12, 12, 10.0, 13.7) == (8, 8)
    assert out.tokens.shape == (1, 1 + 64, 64)
    assert torch.isfinite(out.tokens).all()


def test_rectangular_window_grid(encoder):
    with torch.no_grad():
        out = encoder([_s2(size=(8, 20))], target_gsd=20.0)
    assert out.grid == (4, 10)
    assert out.maps().shape == (1, 1, 64, 4, 10)


def test_rectangular_crop_is_top_left_anchored(encoder):
    """A token of a wide window sees the same pixels as in the square window that contains it."""
    wide = _s2(size=(12, 24))
    square = ModalityInput("s2", wide.data[..., :12], wide.bands, 10.0, dates=wide.dates)
    with torch.no_grad():
        wide_proj = encoder._project_and_resample(wide, 10.0, (12, 24))
        square_proj = encoder._project_and_resample(square, 10.0, (12, 12))
    torch.testing.assert_close(wide_proj[..., :12], square_proj)


def test_second_modality_resampled_onto_first_grid(encoder):
    dem = ModalityInput("dem", torch.randn(1, 1, 2, 4, 4), [BandSpec.elev("dsm"), BandSpec.elev("slope")], 30.0)
    with torch.no_grad():
        out = encoder([_s2(), dem], target_gsd=20.0)
    assert out.grid == (6, 6)
    assert out.maps().shape == (1, 2, 64, 6, 6)


def test_blocks_numbered_from_one(encoder):
    with torch.no_grad():
        out = encoder([_s2()], target_gsd=20.0, blocks=[1, 2])
        last_only = encoder([_s2()], target_gsd=20.0)
    assert sorted(out.features) == [1, 2]
    torch.testing.assert_close(out.features[2], last_only.tokens)
    # Intermediate blocks come without the final LayerNorm, so their mean is not ~0.
    assert not torch.allclose(out.features[1], encoder.norm(out.features[1]))


def test_block_zero_rejected(encoder):
    with pytest.raises(InputError, match="numbered 1 to 2"):
        encoder([_s2()], target_gsd=20.0, blocks=[0])


def test_all_valid_mask_equals_no_mask(encoder):
    series = _s2(dates=3)
    masked = ModalityInput(series.name, series.data, series.bands, series.gsd, series.dates,
                           valid=torch.ones(1, 3, 12, 12, dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(encoder([masked], 20.0).tokens, encoder([series], 20.0).tokens)


def test_masked_date_equals_dropped_date(encoder):
    series = _s2(dates=3)
    valid = torch.ones(1, 3, 12, 12, dtype=torch.bool)
    valid[:, 1] = False
    masked = ModalityInput(series.name, series.data, series.bands, series.gsd, series.dates, valid=valid)
    dropped = ModalityInput(series.name, series.data[:, [0, 2]], series.bands, series.gsd, series.dates[:, [0, 2]])
    with torch.no_grad():
        torch.testing.assert_close(encoder([masked], 20.0).tokens, encoder([dropped], 20.0).tokens, atol=1e-5, rtol=1e-5)


def test_pixel_without_valid_date_is_flagged(encoder):
    series = _s2(dates=2)
    valid = torch.ones(1, 2, 12, 12, dtype=torch.bool)
    valid[:, :, :4, :4] = False  # the top-left 2x2 tokens at 20 m
    masked = ModalityInput(series.name, series.data, series.bands, series.gsd, series.dates, valid=valid)
    with torch.no_grad():
        out = encoder([masked], 20.0)
    assert not out.valid[0, 0, :2, :2].any()
    assert out.valid[0, 0].sum() == 36 - 4
    assert torch.isfinite(out.tokens).all()


def test_block_norm_eps_is_config_value():
    model = RamenEncoder(RamenConfig.tiny(block_norm_eps=1e-5))
    assert model.blocks[0].norm1.eps == 1e-5
    assert RamenEncoder(RamenConfig.tiny()).blocks[0].norm1.eps == 1e-6


def test_single_band_loss_is_finite():
    torch.manual_seed(0)
    mae = RamenMAE(RamenConfig.tiny())
    dem = ModalityInput("dem", torch.randn(2, 1, 1, 8, 8), [BandSpec.elev("dsm")], 10.0)
    out = mae([dem], target_gsd=10.0)
    assert torch.isfinite(out.loss)


def test_loss_without_masked_pixels_is_zero():
    modality = ModalityInput("dem", torch.randn(1, 1, 2, 4, 4), [BandSpec.elev("dsm"), BandSpec.elev("slope")], 30.0)
    prediction = torch.randn(1, 1, 4, 4, 2)
    loss = reconstruction_loss(prediction, modality, torch.zeros(1, 36), (6, 6))
    assert torch.isfinite(loss)
    assert loss.item() == 0.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ModalityInput("s2", torch.randn(10, 12, 12), _s2().bands, 10.0), "rank 5"),
        (lambda: ModalityInput("s2", torch.randn(1, 1, 3, 12, 12), _s2().bands, 10.0), "10 bands described"),
        (lambda: ModalityInput("s2", torch.randn(1, 1, 10, 12, 12), _s2().bands, 0.0), "native GSD"),
    ],
)
def test_bad_modality_rejected(encoder, make, message):
    with pytest.raises(InputError, match=message):
        encoder([make()], target_gsd=10.0)


@pytest.mark.parametrize("target", [0.0, -5.0, float("nan")])
def test_bad_target_gsd_rejected(encoder, target):
    with pytest.raises(InputError, match="target GSD"):
        encoder([_s2()], target_gsd=target)


def test_too_coarse_gsd_rejected(encoder):
    with pytest.raises(InputError, match="leaves no token"):
        encoder([_s2()], target_gsd=500.0)


def test_nan_input_rejected(encoder):
    modality = _s2()
    modality.data[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        encoder([modality], target_gsd=10.0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BandSpec.optical(0.842), "micrometres"),
        (lambda: BandSpec.radar("xx"), "unknown polarisation"),
        (lambda: BandSpec.radar("vv", orbit="sideways"), "unknown orbit"),
        (lambda: BandSpec.elev("height"), "unknown elevation kind"),
    ],
)
def test_bad_band_rejected(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_mixed_band_kinds_rejected(encoder):
    bands = [BandSpec.optical(665), BandSpec.radar("vv")]
    modality = ModalityInput("mixed", torch.randn(1, 1, 2, 12, 12), bands, 10.0)
    with pytest.raises(InputError, match="mixes band kinds"):
        encoder([modality], target_gsd=10.0)


def test_config_rejects_unknown_key():
    with pytest.raises(ConfigError, match="unknown keys"):
        RamenConfig.from_dict({"embed_dim": 64, "width": 3})


def test_config_round_trip():
    config = RamenConfig.tiny(block_norm_eps=1e-5)
    assert RamenConfig.from_json(config.to_json()) == config


def test_grid_shape_survives_float_round_off():
    # 0.3 / 0.1 is 2.9999999999999996 in floating point; truncation alone loses a row.
    assert grid_shape(256, 256, 0.3, 0.1) == (768, 768)
    assert grid_shape(10, 20, 0.7, 0.1) == (70, 140)


def test_round_off_grid_encodes(encoder):
    aerial = ModalityInput("rgb", torch.randn(1, 1, 3, 10, 10), [BandSpec.optical(nm) for nm in (490, 560, 665)], 0.3)
    with torch.no_grad():
        out = encoder([aerial], target_gsd=0.1)
    assert out.grid == (30, 30)
    assert out.tokens.shape == (1, 1 + 900, 64)


@pytest.mark.parametrize(
    "gsd",
    [np.float32(20.0), np.float64(20.0), torch.tensor(20.0), 20],
    ids=["numpy-float32", "numpy-float64", "tensor", "int"],
)
def test_numeric_gsd_types_accepted(encoder, gsd):
    modality = _s2()
    modality.gsd = np.float32(10.0)
    with torch.no_grad():
        out = encoder([modality], target_gsd=gsd)
    assert out.grid == (6, 6)


@pytest.mark.parametrize("target", [True, "20", None])
def test_non_number_target_gsd_rejected(encoder, target):
    with pytest.raises(InputError, match="target GSD must be a positive number"):
        encoder([_s2()], target_gsd=target)


def test_infinite_input_rejected(encoder):
    modality = _s2()
    modality.data[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="infinite"):
        encoder([modality], target_gsd=10.0)


def test_empty_batch_rejected(encoder):
    modality = ModalityInput("s2", torch.randn(0, 1, 10, 12, 12), _s2().bands, 10.0)
    with pytest.raises(InputError, match="at least one sample"):
        encoder([modality], target_gsd=10.0)


def test_zero_bands_rejected(encoder):
    modality = ModalityInput("s2", torch.randn(1, 1, 0, 12, 12), [], 10.0)
    with pytest.raises(InputError, match="has no bands"):
        encoder([modality], target_gsd=10.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_float_dtypes_follow_model(encoder, dtype):
    modality = _s2()
    converted = ModalityInput("s2", modality.data.to(dtype), modality.bands, 10.0, dates=modality.dates)
    with torch.no_grad():
        expected = encoder([ModalityInput("s2", converted.data.float(), modality.bands, 10.0)], 20.0).tokens
        tokens = encoder([converted], 20.0).tokens
    assert tokens.dtype == torch.float32
    torch.testing.assert_close(tokens, expected)


def test_dates_and_mask_as_arrays(encoder):
    series = _s2(dates=3)
    as_arrays = ModalityInput(
        series.name, series.data, series.bands, series.gsd,
        dates=series.dates.tolist(), valid=np.ones((1, 3, 12, 12), dtype=bool),
    )
    with torch.no_grad():
        torch.testing.assert_close(encoder([as_arrays], 20.0).tokens, encoder([series], 20.0).tokens)


def test_mask_of_other_size_rejected(encoder):
    series = _s2(dates=2)
    masked = ModalityInput(series.name, series.data, series.bands, series.gsd, series.dates,
                           valid=torch.ones(1, 2, 5, 5, dtype=torch.bool))
    with pytest.raises(InputError, match=r"valid has \(5, 5\) pixels"):
        encoder([masked], target_gsd=20.0)


@pytest.mark.parametrize("blocks", [2, np.int64(2), torch.tensor([2]), [np.int32(2)]], ids=["int", "numpy", "tensor", "list"])
def test_block_numbers_of_any_integer_type(encoder, blocks):
    with torch.no_grad():
        out = encoder([_s2()], target_gsd=20.0, blocks=blocks)
    assert sorted(out.features) == [2]


@pytest.mark.parametrize("blocks", [[1.5], [True], ["1"]])
def test_non_integer_block_rejected(encoder, blocks):
    with pytest.raises(InputError, match="does not exist"):
        encoder([_s2()], target_gsd=20.0, blocks=blocks)
