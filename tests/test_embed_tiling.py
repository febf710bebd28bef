"""Grid snapping, window plans, blending, raw-to-COG writing and plan estimates."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from embed_support import is_valid_cog
from ramen_core.errors import InputError
from ramen_core.inference.blending import StripBlender, ramp, window_weights
from ramen_core.inference.plan import ModalityCost, estimate_plan, format_bytes, parse_bytes
from ramen_core.inference.tiling import TargetGrid, Tile, plan_windows, snap_grid, window_starts
from ramen_core.inference.writer import RasterMetadata, RawRaster, translate_to_cog
from ramen_core.model import RamenConfig

UTM = CRS.from_epsg(32633)


def test_snap_grid_outward_to_gsd():
    grid = snap_grid((515341.5, 5169301.0, 546059.0, 5200019.9), UTM, 20.0)
    assert grid.transform == Affine(20.0, 0.0, 515340.0, 0.0, -20.0, 5200020.0)
    left, bottom, right, top = grid.bounds
    assert (left, top) == (515340.0, 5200020.0)
    assert 546059.0 <= right < 546059.0 + 20.0
    assert 5169301.0 - 20.0 < bottom <= 5169301.0


def test_snap_grid_keeps_aligned_bounds():
    grid = snap_grid((1000.0 - 1e-9, 2000.0, 1600.0 + 1e-9, 2600.0 - 1e-9), UTM, 20.0)
    assert (grid.width, grid.height) == (30, 30)
    assert grid.transform.c == 1000.0


def test_snap_grid_rejects_area_below_one_token():
    with pytest.raises(InputError, match="holds no token"):
        snap_grid((0.0, 0.0, 500.0, 500.0), UTM, 1000.0)


@pytest.mark.parametrize(("height", "width", "size", "overlap"), [(100, 77, 16, 4), (5, 40, 16, 4), (16, 16, 16, 0), (3, 2, 8, 2)])
def test_windows_cover_every_pixel(height, width, size, overlap):
    grid = TargetGrid(UTM, Affine(10, 0, 0, 0, -10, 0), width, height)
    plan = plan_windows(grid, size, overlap, tile_width=23)
    covered = np.zeros((height, width), dtype=int)
    for index in range(len(plan)):
        window = plan.window(index)
        assert window.row_end <= height
        assert window.col_end <= width
        covered[window.row : window.row_end, window.col : window.col_end] += 1
    assert covered.min() >= 1
    assert plan.window_shape == (min(size, height), min(size, width))


def test_window_starts_end_flush():
    assert window_starts(100, 16, 12)[-1] == 84
    assert window_starts(10, 16, 12) == [0]


def test_windows_for_tile_match_brute_force():
    grid = TargetGrid(UTM, Affine(10, 0, 0, 0, -10, 0), 97, 61)
    plan = plan_windows(grid, 16, 4, tile_height=20, tile_width=30)
    for tile in plan.tiles:
        expected = [plan.window(i).index for i in range(len(plan)) if plan.window(i).intersects(tile)]
        assert [w.index for w in plan.windows_for(tile)] == expected


def test_window_plan_rejects_bad_overlap():
    grid = TargetGrid(UTM, Affine(10, 0, 0, 0, -10, 0), 50, 50)
    with pytest.raises(InputError, match="overlap"):
        plan_windows(grid, 8, 8)


def test_ramp_positive_symmetric_flat_middle():
    weights = ramp(16, 4)
    assert weights.min() > 0
    np.testing.assert_allclose(weights, weights[::-1])
    assert np.all(weights[4:12] == 1.0)
    assert np.all(np.diff(weights[:4]) > 0)


def test_blender_normalises_weighted_mean():
    tile = Tile(0, 0, 0, 4, 6)
    blender = StripBlender(channels=2, groups=1, tile_row=0, tile_col=0, tile_height=4, tile_width=6)
    weights = window_weights(4, 4, 2)
    blender.add(0, 0, np.full((2, 4, 4), 1.0, np.float32), weights, np.ones((1, 4, 4), bool))
    blender.add(0, 2, np.full((2, 4, 4), 3.0, np.float32), weights, np.ones((1, 4, 4), bool))
    row, values = blender.pop(tile.row_end)
    assert row == 0
    assert values.shape == (2, 4, 6)
    np.testing.assert_allclose(values[:, :, :2], 1.0)
    np.testing.assert_allclose(values[:, :, 4:], 3.0)
    middle = values[0, 1, 2:4]
    assert np.all((middle > 1.0) & (middle < 3.0))


def test_blender_state_and_invalid_groups():
    blender = StripBlender(channels=4, groups=2, tile_row=0, tile_col=0, tile_height=8, tile_width=4)
    valid = np.ones((2, 4, 4), bool)
    valid[1, :, :2] = False
    blender.add(0, 0, np.ones((4, 4, 4), np.float32), window_weights(4, 4, 1), valid)
    restored = StripBlender(channels=4, groups=2, tile_row=0, tile_col=0, tile_height=8, tile_width=4)
    restored.load_state(blender.state())
    _, values = restored.pop(2)
    assert np.isnan(values[2:, :, :2]).all()
    assert np.isfinite(values[:2]).all()
    assert np.isfinite(values[2:, :, 2:]).all()
    assert restored.top == 2


def test_raw_raster_to_valid_cog_float16(tmp_path):
    grid = TargetGrid(UTM, Affine(20, 0, 515340, 0, -20, 5200020), 300, 200)
    metadata = RasterMetadata(count=3, dtype="float16", descriptions=["a", "b", "c"], tags={"RAMEN_GSD": "20"})
    raw = RawRaster(tmp_path / "raw.tif", grid, metadata)
    values = np.random.default_rng(0).normal(size=(3, 50, 300)).astype(np.float32)
    raw.write(10, 0, values)
    raw.flush()
    translate_to_cog(tmp_path / "raw.tif", tmp_path / "out.tif", metadata)
    assert is_valid_cog(tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as dataset:
        assert dataset.transform == grid.transform
        assert dataset.descriptions == ("a", "b", "c")
        assert dataset.tags()["RAMEN_GSD"] == "20"
        assert dataset.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"
        block = dataset.read(window=rasterio.windows.Window(0, 10, 300, 50))
        assert np.isnan(dataset.read(1, window=rasterio.windows.Window(0, 0, 300, 10))).all()
    # Half precision keeps 11 significant bits; GDAL may round the last one differently from numpy.
    np.testing.assert_allclose(block, values, rtol=2**-10, atol=2**-14)
    assert not np.array_equal(block, values)
    assert not list(tmp_path.glob(".*ramen-tmp"))


def test_estimates_scale_with_gsd():
    grid = TargetGrid(UTM, Affine(20, 0, 0, 0, -20, 0), 256, 256)
    finer = TargetGrid(UTM, Affine(10, 0, 0, 0, -10, 0), 512, 512)
    costs = [ModalityCost(dates=1, channels=12, gsd=10.0), ModalityCost(dates=1, channels=2, gsd=10.0)]
    config = RamenConfig.tiny()
    coarse = estimate_plan(config, costs, grid, window=16, overlap=0, batch_size=4, channels=64)
    fine = estimate_plan(config, costs, finer, window=16, overlap=0, batch_size=4, channels=64)
    assert coarse.tokens_per_window == 1 + 2 * 16 * 16
    assert coarse.windows == 256
    assert fine.windows == 1024
    assert fine.total_tokens == 4 * coarse.total_tokens
    assert coarse.output_bytes == 256 * 256 * 64 * 4
    assert coarse.peak_memory_bytes > 0
    assert coarse.flops > 0


def test_sizes_parse_and_format():
    assert parse_bytes("16GiB") == 16 * 1024**3
    assert parse_bytes("2GB") == 2e9
    assert parse_bytes(1000) == 1000
    assert format_bytes(1536) == "1.5 KiB"
    with pytest.raises(InputError):
        parse_bytes("lots")
    with pytest.raises(InputError, match="must be a positive number of bytes"):
        parse_bytes("-5")
    with pytest.raises(InputError, match="must be a positive number of bytes"):
        parse_bytes(0)
