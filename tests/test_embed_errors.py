"""Bad input to ``ramen embed``: a clear error, a non-zero exit, and nothing left behind."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from embed_support import BIGEARTHNET_S2, LUXEMBOURG_S2, MAJORTOM, SF_S2, run_cli
from embed_support import one_thread, weights  # noqa: F401 (pytest fixtures shared by the embed tests)
from ramen_core.inference import writer


def fails(args, message: str, folder: Path) -> str:
    """Run the command, expect exit code 1 with ``message``, and an empty output folder."""
    result = run_cli(["embed", *args])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert message in text, text
    assert "Traceback" not in result.output
    leftovers = sorted(path.name for path in folder.iterdir())
    assert leftovers == [], leftovers
    return text


def write_raster(path: Path, data: np.ndarray, crs=None, nodata=None, descriptions=None) -> Path:
    profile = {
        "driver": "GTiff", "width": data.shape[-1], "height": data.shape[-2], "count": data.shape[0],
        "dtype": data.dtype.name, "transform": Affine(10, 0, 600000, 0, -10, 5800000), "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)
        for index, description in enumerate(descriptions or (), start=1):
            dataset.set_band_description(index, description)
    return path


def test_input_outside_area(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    fails([MAJORTOM, "--sensor", "s2", "--gsd", "20", "--bbox", "10", "45", "10.1", "45.1", "--weights", weights,
           "-o", out / "e.tif"], "does not overlap the area", out)


def test_file_without_crs(tmp_path, weights):
    source = write_raster(tmp_path / "nocrs.tif", np.full((4, 32, 32), 500, np.uint16))
    out = tmp_path / "out"
    out.mkdir()
    fails([source, "--sensor", "s2", "--bands", "B02,B03,B04,B08", "--gsd", "20", "--weights", weights,
           "-o", out / "e.tif"], "has no CRS", out)


def test_corrupt_tiff(tmp_path, weights):
    source = tmp_path / "corrupt.tif"
    original = next(BIGEARTHNET_S2.glob("*_B02.tif")).read_bytes()
    source.write_bytes(original[: len(original) // 3])  # header intact, pixel data cut off
    out = tmp_path / "out"
    out.mkdir()
    fails([source, "--sensor", "s2", "--bands", "B02", "--gsd", "20", "--weights", weights, "-o", out / "e.tif"],
          "corrupt", out)


def test_not_a_tiff(tmp_path, weights):
    source = tmp_path / "text.tif"
    source.write_text("not a raster", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    fails([source, "--sensor", "s2", "--gsd", "20", "--weights", weights, "-o", out / "e.tif"],
          "cannot read", out)


def test_all_nodata_input(tmp_path, weights):
    source = write_raster(tmp_path / "empty.tif", np.zeros((4, 64, 64), np.uint16), crs="EPSG:32629", nodata=0,
                          descriptions=["B02", "B03", "B04", "B08"])
    out = tmp_path / "out"
    out.mkdir()
    fails([source, "--sensor", "s2", "--gsd", "20", "--weights", weights, "-o", out / "e.tif"], "all nodata", out)


def test_gsd_too_coarse(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    fails([MAJORTOM, "--sensor", "s2", "--gsd", "10000", "--weights", weights, "-o", out / "e.tif"],
          "holds no token", out)


def test_plan_too_large_for_memory(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    text = fails([MAJORTOM, "--sensor", "s2", "--gsd", "10", "--window", "384", "--weights", weights,
                  "--max-memory", "2GiB", "-o", out / "e.tif"], "more than the 2 GiB available", out)
    assert "--plan" in text


def test_output_exists(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "e.tif"
    existing.write_bytes(b"keep me")
    result = run_cli(["embed", MAJORTOM, "--sensor", "s2", "--gsd", "40", "--weights", weights, "-o", existing])
    assert result.exit_code == 1
    assert "--overwrite" in result.output
    assert existing.read_bytes() == b"keep me"
    assert sorted(path.name for path in out.iterdir()) == ["e.tif"]


def test_unwritable_output_folder(tmp_path, weights):
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file", encoding="utf-8")
    result = run_cli(["embed", MAJORTOM, "--sensor", "s2", "--gsd", "40", "--weights", weights,
                      "-o", blocker / "sub" / "e.tif"])
    assert result.exit_code == 1
    assert "is a file, not a folder" in " ".join(result.output.split())
    assert blocker.read_text(encoding="utf-8") == "a regular file"


def test_disk_full_at_writer(tmp_path, weights, monkeypatch):
    def no_space(self, row, col, values):
        with writer.output_errors(self.path):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.RawRaster, "write", no_space)
    out = tmp_path / "out"
    out.mkdir()
    fails([MAJORTOM, "--sensor", "s2", "--gsd", "40", "--window", "8", "--weights", weights, "-o", out / "e.tif",
           "--vectors", out / "v.parquet"], "no space left on device", out)


def test_band_description_mismatch(tmp_path, weights):
    source = write_raster(tmp_path / "bands.tif", np.full((2, 32, 32), 500, np.uint16), crs="EPSG:32629",
                          descriptions=["B04", "thermal"])
    out = tmp_path / "out"
    out.mkdir()
    fails([source, "--sensor", "s2", "--gsd", "20", "--weights", weights, "-o", out / "e.tif"],
          "'thermal', which names no band of sensor 'sentinel-2-l2a'", out)


def test_band_count_mismatch_without_descriptions(tmp_path, weights):
    source = write_raster(tmp_path / "three.tif", np.full((3, 32, 32), 500, np.uint16), crs="EPSG:32629")
    out = tmp_path / "out"
    out.mkdir()
    fails([source, "--sensor", "s2", "--gsd", "20", "--weights", weights, "-o", out / "e.tif"],
          "has 3 bands without descriptions, but sensor 'sentinel-2-l2a' expects 12", out)


def test_radar_without_orbit(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    fails([SF_S2, "--sensor", "s2-l1c", "--input", f"s1={SF_S2.with_name('Spain_7370579_S1Hand.tif')}",
           "--gsd", "40", "--weights", weights, "-o", out / "e.tif"], "--orbit s1=des", out)


def test_unknown_sensor(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    fails([LUXEMBOURG_S2, "--sensor", "modis", "--gsd", "2000", "--weights", weights, "-o", out / "e.tif"],
          "unknown sensor 'modis'", out)


def test_missing_weights(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fails([LUXEMBOURG_S2, "--sensor", "s2", "--gsd", "2000", "--weights", tmp_path / "none.safetensors",
           "-o", out / "e.tif"], "weights file not found", out)


def test_described_sensor_on_command_line(tmp_path, weights):
    source = tmp_path / "scene.tif"
    shutil.copy(LUXEMBOURG_S2, source)
    output = tmp_path / "out.tif"
    result = run_cli(["embed", source, "--sensor", "terra@1000:B02=490,B03=560,B04=665,B08=842;scale=0.0001",
                      "--gsd", "2000", "--weights", weights, "--window", "8", "-o", output, "-q"])
    assert result.exit_code == 0, result.output
    assert output.exists()


def test_outputs_sharing_a_path(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    fails([LUXEMBOURG_S2, "--sensor", "s2", "--gsd", "2000", "--weights", weights, "-o", out / "e.tif",
           "--preview", out / "e.tif"], "the output and the preview are both", out)


def test_overwrite_keeps_foreign_folder(tmp_path, weights):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me", encoding="utf-8")
    result = run_cli(["embed", LUXEMBOURG_S2, "--sensor", "s2", "--gsd", "2000", "--weights", weights,
                      "-o", folder, "--overwrite"])
    assert result.exit_code == 1, result.output
    assert "contains no ramen output" in " ".join(result.output.split())
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results"]


def test_band_listed_twice(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    fails([LUXEMBOURG_S2, "--sensor", "s2", "--bands", "B04,B04", "--gsd", "2000", "--weights", weights,
           "-o", out / "e.tif"], "band B04 of sensor 'sentinel-2-l2a' is listed twice", out)


def test_foreign_resume_keeps_work_folder(tmp_path, weights):
    output = tmp_path / "e.tif"
    work_dir = tmp_path / "e.tif.ramen-partial"
    work_dir.mkdir()
    record = '{"version": 1, "fingerprint": "of another command", "tiles_done": [], "current_tile": 0}'
    (work_dir / "state.json").write_text(record, encoding="utf-8")
    result = run_cli(["embed", LUXEMBOURG_S2, "--sensor", "s2", "--gsd", "2000", "--weights", weights,
                      "-o", output, "--resume"])
    assert result.exit_code == 1, result.output
    assert "cannot be resumed with these" in " ".join(result.output.split())
    assert (work_dir / "state.json").read_text(encoding="utf-8") == record
    assert not output.exists()


def test_catalog_orbit_and_bands_options():
    from ramen_core.errors import InputError
    from ramen_core.inference.sources import catalog_bands, catalog_orbit

    assert catalog_orbit(["s1=des"]) == "des"  # was dropped: only a bare value reached the search
    assert catalog_orbit(["asc"]) == "asc"
    assert catalog_orbit([]) is None
    with pytest.raises(InputError, match="one orbit direction"):
        catalog_orbit(["s1=asc", "s1-rtc=des"])
    assert catalog_bands(["B02,B03"], "s2,landsat") == {"s2": ["B02", "B03"], "landsat": ["B02", "B03"]}
    assert catalog_bands(["s1=vv", "B04"], "s2,s1") == {"s1": ["vv"], "s2": ["B04"]}
    assert catalog_bands([], "s2") is None


def test_failed_run_creates_no_folders(tmp_path, weights):
    source = write_raster(tmp_path / "empty.tif", np.zeros((4, 64, 64), np.uint16), crs="EPSG:32629", nodata=0,
                          descriptions=["B02", "B03", "B04", "B08"])
    out = tmp_path / "out"
    out.mkdir()
    fails([source, "--sensor", "s2", "--gsd", "20", "--weights", weights, "-o", out / "new" / "e.tif",
           "--preview", out / "previews" / "e.png"], "all nodata", out)
