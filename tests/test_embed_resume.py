"""Determinism, resume after a killed run, and bounded memory of ``ramen embed``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from embed_support import (
    MAJORTOM,
    SF_S1,
    SF_S2,
    is_valid_cog,
   
    read,
    run_cli,
    run_cli_subprocess,
    subprocess_env,
)
from embed_support import one_thread, weights  # noqa: F401 (pytest fixtures shared by the embed tests)


def test_two_runs_byte_identical(tmp_path, weights):
    outputs = []
    for name in ("first", "second"):
        output = tmp_path / f"{name}.tif"
        result = run_cli(["embed", SF_S2, "--sensor", "s2-l1c", "--input", f"s1={SF_S1}", "--orbit", "s1=des",
                          "--gsd", "40", "--window", "8", "--weights", weights, "-o", output,
                          "--vectors", tmp_path / f"{name}.parquet", "-q"])
        assert result.exit_code == 0, result.output
        outputs.append(output)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    assert (tmp_path / "first.parquet").read_bytes() == (tmp_path / "second.parquet").read_bytes()


def _progress_record(work_dir: Path) -> dict | None:
    try:
        return json.loads((work_dir / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def test_resume_after_kill_is_byte_identical(tmp_path, weights):
    arguments = ["embed", MAJORTOM, "--sensor", "s2", "--gsd", "40", "--window", "8", "--overlap", "2",
                 "--batch-size", "4", "--checkpoint-interval", "0", "--weights", weights]
    reference = tmp_path / "reference.tif"
    done = run_cli_subprocess([*arguments, "-o", reference, "-q"])
    assert done.returncode == 0, done.stderr

    output = tmp_path / "resumed.tif"
    work_dir = tmp_path / "resumed.tif.ramen-partial"
    process = subprocess.Popen(
        [sys.executable, "-c", "from ramen_cli.app import main; main()", *map(str, arguments), "-o", str(output), "-q"],
        env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        record = None
        while time.monotonic() < deadline and process.poll() is None:
            record = _progress_record(work_dir)
            if record is not None and record["windows_done_in_tile"] >= 40:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run finished before it could be killed; make it longer"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert record is not None and record["windows_done_in_tile"] >= 40
    assert not output.exists()
    assert (work_dir / "raw.tif").exists()

    resumed = run_cli_subprocess([*arguments, "-o", output, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert output.read_bytes() == reference.read_bytes()
    assert not work_dir.exists()
    # The resumed run encoded fewer tokens than a whole run (256 windows of 65 tokens).
    tokens = int(resumed.stderr.split(" tokens in ")[0].split()[-1].replace(",", ""))
    assert 0 < tokens <= (256 - 40) * 65


def test_resume_rejects_changed_options(tmp_path, weights):
    arguments = ["embed", MAJORTOM, "--sensor", "s2", "--gsd", "40", "--window", "8", "--weights", weights,
                 "-o", tmp_path / "out.tif"]
    work_dir = tmp_path / "out.tif.ramen-partial"
    work_dir.mkdir()
    (work_dir / "state.json").write_text(json.dumps({"version": 1, "fingerprint": "other"}), encoding="utf-8")
    result = run_cli([*arguments, "--resume"])
    assert result.exit_code == 1
    assert "cannot be resumed" in " ".join(result.output.split())


def _sparse_raster(path: Path, size: int, patch: int) -> None:
    """A ``size`` x ``size`` uint16 GeoTIFF, nodata 0 except one ``patch`` square; unwritten blocks stay sparse."""
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint16", "nodata": 0,
        "crs": "EPSG:32633", "transform": Affine(10, 0, 501000, 0, -10, 5301000), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "SPARSE_OK": "TRUE",
    }
    values = np.random.default_rng(0).integers(200, 3000, size=(patch, patch), dtype=np.uint16)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(values, 1, window=rasterio.windows.Window(size // 2, size // 2, patch, patch))


MEASURE_PEAK = """
import resource, sys
from ramen_cli.app import main
try:
    main()
finally:
    print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def test_peak_memory_bounded_on_large_sparse_raster(tmp_path, weights):
    size = 25000  # 250 km at 10 m: a dense float32 cube of this band alone is 2.5 GB
    source = tmp_path / "large.tif"
    _sparse_raster(source, size, patch=1024)
    output = tmp_path / "large_emb.tif"
    # GDAL's block cache is capped explicitly so the bound measured is ramen's, not GDAL's default (5 % of RAM).
    environment = {**subprocess_env(), "GDAL_CACHEMAX": "128"}
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE_PEAK, "embed", str(source), "--sensor", "s2", "--bands", "B04",
         "--gsd", "250", "--window", "40", "--overlap", "8", "--batch-size", "4", "--weights", weights,
         "-o", str(output), "-q"],
        capture_output=True, text=True, env=environment, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    peak_bytes = int(completed.stderr.split("PEAK_RSS_KIB")[1].split()[0]) * 1024
    dense_bytes = size * size * 4
    assert peak_bytes < dense_bytes / 2, f"peak RSS {peak_bytes / 1e9:.2f} GB"
    assert is_valid_cog(output)
    values, profile = read(output)
    assert (profile["width"], profile["height"]) == (1000, 1000)
    valid = np.isfinite(values).all(axis=0)
    assert 0 < valid.sum() < 0.01 * valid.size
