"""``ramen embed --scheduler``: tiles on a local two-process Dask cluster."""

from __future__ import annotations

import numpy as np
import pystac
import pytest
import rasterio

from embed_support import MAJORTOM, is_valid_cog, read, run_cli
from embed_support import one_thread, weights  # noqa: F401 (pytest fixtures shared by the embed tests)
from ramen_core.embedding import FileInput, embed


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    local = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        env={"OMP_NUM_THREADS": "1"},
    )
    yield local
    local.close()


@pytest.fixture(scope="module")
def local_output(tmp_path_factory, weights):
    output = tmp_path_factory.mktemp("local") / "local.tif"
    embed(FileInput(MAJORTOM, "s2"), output, gsd=40, window=8, weights=weights)
    return output


def test_dask_tiles_to_folder_with_stac(tmp_path, weights, cluster, local_output):
    output = tmp_path / "tiles"
    result = embed(
        FileInput(MAJORTOM, "s2", date="2020-02-23"), output, gsd=40, window=8, weights=weights,
        scheduler=cluster.scheduler_address, tile_size=32, max_output_size="100KB",
    )
    assert result.tiled
    # Two worker processes, each of which loaded the model once for its tiles.
    assert len(result.report.workers) == 2
    assert set(result.report.workers.values()) == {1}

    collection = pystac.Collection.from_file(str(output / "collection.json"))
    items = list(collection.get_items())
    assert len(items) == 16  # 97 x 97 pixels in tiles of 32
    local_values, local_profile = read(local_output)
    for item in items:
        href = item.assets["data"].get_absolute_href()
        assert is_valid_cog(href)
        with rasterio.open(href) as tile:
            assert list(tile.transform)[:6] == item.properties["proj:transform"]
            assert tile.crs.to_epsg() == 32648
            row = round((local_profile["transform"].f - tile.transform.f) / 40)
            col = round((tile.transform.c - local_profile["transform"].c) / 40)
            expected = local_values[:, row : row + tile.height, col : col + tile.width]
            # Same blending as the local run; only the batches differ, so values agree to float noise.
            np.testing.assert_allclose(tile.read(), expected, rtol=1e-4, atol=1e-4)
        assert item.properties["start_datetime"].startswith("2020-02-23")


def test_dask_single_cog_matches_local(tmp_path, weights, cluster, local_output):
    output = tmp_path / "dask.tif"
    result = run_cli(["embed", MAJORTOM, "--sensor", "s2", "--gsd", "40", "--window", "8", "--weights", weights,
                      "--scheduler", cluster.scheduler_address, "--tile-size", "48", "-o", output, "-q"])
    assert result.exit_code == 0, result.output
    assert is_valid_cog(output)
    dask_values, dask_profile = read(output)
    local_values, local_profile = read(local_output)
    assert dask_profile["transform"] == local_profile["transform"]
    np.testing.assert_allclose(dask_values, local_values, rtol=1e-4, atol=1e-4)


def test_unreachable_scheduler(tmp_path, weights):
    import dask
    import distributed  # noqa: F401  # load its config defaults first, or leaving dask.config.set drops them

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        result = run_cli(["embed", MAJORTOM, "--sensor", "s2", "--gsd", "40", "--weights", weights,
                          "--scheduler", "tcp://127.0.0.1:9", "-o", tmp_path / "e.tif"])
    assert result.exit_code == 1
    assert "Dask scheduler" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_scheduler_address_without_port(tmp_path, weights):
    result = run_cli(["embed", MAJORTOM, "--sensor", "s2", "--gsd", "40", "--weights", weights,
                      "--scheduler", "localhost", "-o", tmp_path / "e.tif"])
    assert result.exit_code == 1
    assert "cannot connect to the Dask scheduler 'localhost'" in " ".join(result.output.split())
    assert sorted(path.name for path in tmp_path.iterdir()) == []
