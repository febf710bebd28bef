"""Helpers shared by the ``test_embed*`` modules: tiny weights, CLI runs and output checks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
import pytest
from typer.testing import CliRunner

from ramen_core.inference.tiling import window_starts

DATA = Path(__file__).parent / "data"
MAJORTOM = DATA / "majortom_core_s2l2a" / "S2L2A_crop"
SEN1FLOODS11 = DATA / "sen1floods11"
SF_S2 = SEN1FLOODS11 / "Spain_7370579_S2Hand.tif"
SF_S1 = SEN1FLOODS11 / "Spain_7370579_S1Hand.tif"
BIGEARTHNET_S2 = DATA / "bigearthnet_mm" / "S2" / "S2A_MSIL2A_20170617T113321_36_85"
BIGEARTHNET_S1 = DATA / "bigearthnet_mm" / "S1" / "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85"
LUXEMBOURG_S2 = DATA / "dem_samples" / "terra_sent2_L2A_2024-08-24_luxembourg.tif"
LUXEMBOURG_DEM = DATA / "dem_samples" / "terra_elev_luxembourg.tif"
SERIES = DATA / "s2l2a_timeseries_33TWM" / "sentinel-2-l2a"

# A 1.5 km square inside the Major TOM crop (lon/lat degrees), for runs at its native 10 m.
MAJORTOM_SMALL_BBOX = (103.7400, 17.9100, 103.7540, 17.9240)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the test machine's two cores are shared, and oversubscription is slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """Tiny random-weights encoder file, one per test module."""
    return str(make_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors"))


def make_tiny_weights(path: Path) -> Path:
    """Save a randomly initialised tiny encoder (D=64, 2 blocks) with a fixed seed."""
    from ramen_core.model import RamenConfig, RamenEncoder
    from ramen_core.weights import save_weights

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    config = RamenConfig.tiny()
    save_weights(path, RamenEncoder(config), config)
    torch.random.set_rng_state(generator_state)
    return path


def run_cli(args: Sequence[str]):
    """Run ``ramen`` in this process and return the click result."""
    from ramen_cli.app import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def run_cli_subprocess(args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``ramen`` in a fresh Python process with one compute thread."""
    return subprocess.run(
        [sys.executable, "-c", "from ramen_cli.app import main; main()", *[str(arg) for arg in args]],
        capture_output=True, text=True, timeout=timeout, env=subprocess_env(), check=False,
    )


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: one OpenMP thread (the test machine has 2 shared cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as dataset:
        return dataset.read(), dataset.profile | {"tags": dataset.tags(), "descriptions": dataset.descriptions,
                                                  "bounds": dataset.bounds}


def is_valid_cog(path: Path) -> bool:
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(path), quiet=True)
    return bool(valid) and not errors


def coverage_fraction(source: Path, output: Path, band: int = 1) -> np.ndarray:
    """Share of each output pixel covered by valid pixels of ``source`` (nodata and outside = 0)."""
    margin = 64  # source pixels of explicit zeros around the raster, so "outside" counts as invalid
    with rasterio.open(source) as src, rasterio.open(output) as out:
        data = src.read(band, masked=True)
        valid = (~np.ma.getmaskarray(data) & np.isfinite(np.ma.getdata(data))).astype(np.float32)
        padded = np.pad(valid, margin)
        transform = src.transform @ Affine.translation(-margin, -margin)
        fraction = np.zeros((out.height, out.width), dtype=np.float32)
        reproject(padded, fraction, src_transform=transform, src_crs=src.crs, dst_transform=out.transform,
                  dst_crs=out.crs, resampling=Resampling.average)
    return fraction


def seam_ratio(values: np.ndarray, size: int, overlap: int) -> tuple[float, float]:
    """Mean absolute difference across window borders divided by that between interior neighbours.

    Returns (ratio along columns, ratio along rows). Neighbour pairs with a NaN are skipped.
    """
    ratios = []
    for axis in (2, 1):
        length = values.shape[axis]
        borders = set()
        for start in window_starts(length, size, size - overlap):
            if start > 0:
                borders.add(start)
            if start + size < length:
                borders.add(start + size)
        differences = np.abs(np.diff(values, axis=axis)).mean(axis=0)  # pairs (i, i + 1)
        per_pair = np.nanmean(differences, axis=0 if axis == 2 else 1)
        across = [per_pair[index - 1] for index in sorted(borders)]
        interior = [per_pair[index] for index in range(per_pair.size) if index + 1 not in borders]
        ratios.append(float(np.nanmean(across) / np.nanmean(interior)))
    return ratios[0], ratios[1]
