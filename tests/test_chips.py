"""Chip datasets cut from the real samples: alignment, shards, streaming, statistics, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from ramen_cli.app import _register_commands, app
from ramen_core.chips import (
    ChipDataset,
    ChipStream,
    build_chips,
    chip_spec_from_dict,
    collate_chips,
    compute_stats,
    load_chip_spec,
    read_manifest,
    to_modality_inputs,
)
from ramen_core.errors import ConfigError, EmptyResultError, InputError, OutputError
from ramen_core.model import RamenConfig, RamenMAE
from ramen_core.sensors import slope_degrees

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
SPECS = REPO / "recipes" / "chips"
BEN_S2 = DATA / "bigearthnet_mm" / "S2" / "S2A_MSIL2A_20170617T113321_36_85"
FLOODS = DATA / "sen1floods11"
LUX = DATA / "dem_samples"


def _spec_dict(**changes: object) -> dict:
    """A small spec over the Luxembourg pair (fast to cut)."""
    data: dict = {
        "name": "lux",
        "size": 16,
        "stride": 16,
        "min_valid": 0.5,
        "shard_size": 2,
        "modalities": {
            "s2": {"sensor": "s2-l2a", "gsd": 1000.0, "bands": ["B02", "B03", "B04", "B08"]},
            "dem": {"sensor": "dem", "gsd": 2000.0, "bands": ["dsm", "slope"]},
        },
        "scenes": [
            {
                "name": "lux",
                "s2": {"files": [str(LUX / "terra_sent2_L2A_2024-08-24_luxembourg.tif")], "dates": ["2024-08-24"]},
                "dem": {"files": [str(LUX / "terra_elev_luxembourg.tif")], "dates": ["2024-08-24"]},
            }
        ],
    }
    data.update(changes)
    return data


# ---------------------------------------------------------------------------------- content
def test_bigearthnet_chips_copy_native_pixels(sample_chips: dict[str, Path]) -> None:
    dataset = ChipDataset(sample_chips["bigearthnet"])
    manifest = dataset.manifest
    assert manifest.num_chips == 18
    assert [band.wavelength_nm for band in manifest.modalities["s2"].bands][:3] == [443.0, 490.0, 560.0]
    assert manifest.modalities["s1"].bands[0].radar_key == "des_vv"

    chip = dataset[0]
    assert tuple(chip["s2/data"].shape) == (1, 12, 40, 40)
    with rasterio.open(BEN_S2 / "S2A_MSIL2A_20170617T113321_36_85_B02.tif") as source:
        expected = source.read(1)[:40, :40].astype(np.float32) * 1e-4
    np.testing.assert_allclose(chip["s2/data"][0, 1].numpy(), expected, rtol=1e-6)
    assert chip["chip/bounds"].tolist() == [643200.0, 5797640.0, 643600.0, 5798040.0]


def test_bigearthnet_20m_band_resampled(sample_chips: dict[str, Path]) -> None:
    chip = ChipDataset(sample_chips["bigearthnet"])[0]
    with rasterio.open(BEN_S2 / "S2A_MSIL2A_20170617T113321_36_85_B05.tif") as source:
        coarse = source.read(1)[:20, :20].astype(np.float32) * 1e-4
    fine = chip["s2/data"][0, 4].numpy()
    # A bilinear 2x upsampling keeps the 20 m block means close to the source pixels.
    block_means = fine.reshape(20, 2, 20, 2).mean(axis=(1, 3))
    assert np.abs(block_means[2:-2, 2:-2] - coarse[2:-2, 2:-2]).mean() < 0.01


def test_floods_chips_warped_to_utm(sample_chips: dict[str, Path]) -> None:
    manifest = read_manifest(sample_chips["sen1floods11"])
    assert manifest.scenes[0].crs == "EPSG:32630"
    assert manifest.modalities["s2"].gsd == 10.0
    assert len(manifest.modalities["s2"].bands) == 13
    assert manifest.num_chips > 100
    chip = ChipDataset(sample_chips["sen1floods11"])[3]
    valid = chip["s1/valid"]
    assert valid.float().mean() >= 0.9
    # Backscatter in dB, zero where invalid.
    values = chip["s1/data"][valid[:, None].expand_as(chip["s1/data"])]
    assert float(values.min()) > -50
    assert float(values.max()) < 30


def test_luxembourg_mixed_gsd_and_slope(sample_chips: dict[str, Path]) -> None:
    dataset = ChipDataset(sample_chips["luxembourg"])
    info = dataset.manifest.modalities
    assert info["s2"].size == (16, 16)
    assert info["s2"].gsd == 1000.0
    assert info["dem"].size == (8, 8)
    assert info["dem"].gsd == 2000.0
    assert info["s2"].footprint_m == info["dem"].footprint_m
    assert [band.elevation for band in info["dem"].bands] == ["dsm", "slope"]
    chip = dataset[0]
    height, slope = chip["dem/data"][0, 0].numpy(), chip["dem/data"][0, 1].numpy()
    assert 100 < height.mean() < 600
    # Inside the chip, the slope is the DSM's; compare where all 4 neighbours are valid.
    valid = chip["dem/valid"][0].numpy()
    neighbours = valid[1:-1, 1:-1] & valid[:-2, 1:-1] & valid[2:, 1:-1] & valid[1:-1, :-2] & valid[1:-1, 2:]
    assert neighbours.sum() > 10
    inner = slope_degrees(height, 2000.0)[1:-1, 1:-1]
    np.testing.assert_allclose(slope[1:-1, 1:-1][neighbours], inner[neighbours], rtol=1e-5, atol=1e-5)


def test_timeseries_dates_and_cloud_mask(sample_chips: dict[str, Path]) -> None:
    dataset = ChipDataset(sample_chips["s2_timeseries_33TWM"])
    info = dataset.manifest.modalities["s2"]
    assert info.num_dates == 5
    chip = dataset[0]
    days = chip["s2/dates"].tolist()
    assert days == [19579, 19582, 19584, 19587, 19589]  # 2023-08-10 ... 2023-08-20 as days since 1970
    batch = collate_chips([dataset[i] for i in range(4)])
    inputs = to_modality_inputs(batch, dataset.manifest, ["s2"], dataset.manifest.stats)
    assert inputs[0].dates[0].tolist() == [222, 225, 227, 230, 232]
    # The SCL layer marks clouds: the cloudy 2023-08-10 and 2023-08-18 dates are less valid.
    valid_share = torch.stack([dataset[i]["s2/valid"].float().mean(dim=(1, 2)) for i in range(len(dataset))]).mean(0)
    assert valid_share[2] > valid_share[0]
    assert valid_share[2] > valid_share[3]


def test_stats_match_valid_pixels(sample_chips: dict[str, Path]) -> None:
    folder = sample_chips["bigearthnet"]
    manifest = read_manifest(folder)
    dataset = ChipDataset(folder)
    data = torch.stack([dataset[i]["s1/data"] for i in range(len(dataset))])
    valid = torch.stack([dataset[i]["s1/valid"] for i in range(len(dataset))])
    values = data[:, :, 0][valid].double()
    assert manifest.stats is not None
    assert manifest.stats["s1"].mean[0] == pytest.approx(float(values.mean()), rel=1e-6)
    assert manifest.stats["s1"].std[0] == pytest.approx(float(values.std(unbiased=False)), rel=1e-6)
    assert manifest.stats["s1"].count[0] == int(valid.sum())


def test_normalised_inputs_have_no_nan(sample_chips: dict[str, Path]) -> None:
    dataset = ChipDataset(sample_chips["sen1floods11"])
    batch = collate_chips([dataset[i] for i in range(6)])
    inputs = to_modality_inputs(batch, dataset.manifest, ["s1", "s2"], dataset.manifest.stats)
    assert [m.name for m in inputs] == ["s1", "s2"]
    for modality in inputs:
        assert torch.isfinite(modality.data).all()
        assert abs(float(modality.data[modality.valid[:, :, None].expand_as(modality.data)].mean())) < 1.0


# ---------------------------------------------------------------------------------- streaming
def test_stream_splits_shards_between_ranks(sample_chips: dict[str, Path]) -> None:
    dataset = ChipDataset(sample_chips["s2_timeseries_33TWM"])
    seen = []
    for rank in range(2):
        stream = ChipStream(dataset, seed=3, rank=rank, world_size=2, repeat=False)
        ids = [int(chip["chip/id"]) for chip in stream]
        assert len(ids) == stream.chips_per_pass
        seen.append(set(ids))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(len(dataset)))


def test_stream_restart_matches_skip(sample_chips: dict[str, Path]) -> None:
    dataset = ChipDataset(sample_chips["sen1floods11"])
    full = ChipStream(dataset, seed=5)
    iterator = iter(full)
    ids = [int(next(iterator)["chip/id"]) for _ in range(full.chips_per_pass + 20)]
    restarted = iter(ChipStream(dataset, seed=5, start=full.chips_per_pass + 7))
    assert [int(next(restarted)["chip/id"]) for _ in range(13)] == ids[full.chips_per_pass + 7 :]
    # A new pass reshuffles.
    assert ids[: full.chips_per_pass] != ids[full.chips_per_pass :] + ids[: 20 - full.chips_per_pass]


def test_stream_with_fewer_shards_than_ranks(sample_chips: dict[str, Path]) -> None:
    dataset = ChipDataset(sample_chips["bigearthnet"])  # 3 shards
    seen = set()
    for rank in range(4):
        ids = [int(chip["chip/id"]) for chip in ChipStream(dataset, rank=rank, world_size=4, repeat=False)]
        assert all(i % 4 == rank for i in ids)
        seen |= set(ids)
    assert seen == set(range(len(dataset)))


# ---------------------------------------------------------------------------------- labels, single band
def test_labelled_chips(tmp_path: Path) -> None:
    spec = chip_spec_from_dict(
        {
            "name": "floods_labelled",
            "size": 64,
            "stride": 128,
            "min_valid": 0.9,
            "modalities": {"s1": {"sensor": "s1-grd", "orbit": "des", "gsd": 10.0, "bands": ["vv", "vh"]}},
            "label": {"classes": ["not water", "water"], "ignore_index": 255, "ignore_values": [-1]},
            "scenes": [
                {
                    "name": "Spain_7370579",
                    "s1": {"files": [str(FLOODS / "Spain_7370579_S1Hand.tif")], "dates": ["2019-09-17"]},
                    "label": str(FLOODS / "Spain_7370579_LabelHand.tif"),
                }
            ],
        }
    )
    manifest = build_chips(spec, tmp_path / "labelled")
    assert manifest.labels is not None
    assert manifest.labels.classes == ("not water", "water")
    assert manifest.labels.ignore_index == 255
    dataset = ChipDataset(tmp_path / "labelled")
    labels = torch.stack([dataset[i]["label"] for i in range(len(dataset))])
    assert labels.dtype == torch.int16
    assert tuple(labels.shape[1:]) == (64, 64)
    assert set(torch.unique(labels).tolist()) <= {0, 1, 255}
    assert (labels == 1).any()
    assert (labels == 0).any()


def test_single_band_modality_trains(tmp_path: Path) -> None:
    data = _spec_dict(modalities={
        "s2": {"sensor": "s2-l2a", "gsd": 1000.0, "bands": ["B04", "B08"]},
        "dem": {"sensor": "dem", "gsd": 2000.0, "bands": ["dsm"]},
    })
    build_chips(chip_spec_from_dict(data), tmp_path / "dsm", stats=True)
    dataset = ChipDataset(tmp_path / "dsm")
    batch = collate_chips([dataset[i] for i in range(2)])
    inputs = to_modality_inputs(batch, dataset.manifest, ["dem", "s2"], dataset.manifest.stats)
    torch.manual_seed(0)
    output = RamenMAE(RamenConfig.tiny())(inputs, target_gsd=2000.0)
    assert torch.isfinite(output.loss)
    assert torch.isfinite(output.losses["dem"])


# ---------------------------------------------------------------------------------- errors
def test_missing_or_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        ChipDataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no manifest.json"):
        ChipDataset(tmp_path / "empty")


def test_corrupt_shard_and_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "lux"
    build_chips(chip_spec_from_dict(_spec_dict()), folder)
    first = folder / read_manifest(folder).shards[0].file
    first.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="unreadable"):
        compute_stats(folder)
    (folder / "manifest.json").write_text("{broken")
    with pytest.raises(InputError, match="cannot read"):
        ChipDataset(folder)
    (folder / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="not a ramen chip manifest"):
        ChipDataset(folder)


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    data = _spec_dict()
    second = json.loads(json.dumps(data["scenes"][0]))
    second["name"] = "missing"
    second["dem"]["files"] = [str(tmp_path / "missing.tif")]
    data["scenes"].append(second)
    with pytest.raises(InputError, match="not found"):
        build_chips(chip_spec_from_dict(data), tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "lux"
    build_chips(chip_spec_from_dict(_spec_dict()), folder)
    with pytest.raises(OutputError, match="already contains a chip dataset; .* --overwrite"):
        build_chips(chip_spec_from_dict(_spec_dict()), folder)
    manifest = build_chips(chip_spec_from_dict(_spec_dict(stride=8)), folder, overwrite=True)
    assert read_manifest(folder).num_chips == manifest.num_chips
    assert not list(tmp_path.glob(".*"))


def test_overwrite_keeps_foreign_folder(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(OutputError, match="contains files but no chip dataset"):
        build_chips(chip_spec_from_dict(_spec_dict()), folder, overwrite=True)
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_label_outside_scene_rejected(tmp_path: Path) -> None:
    label = tmp_path / "label.tif"
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": rasterio.transform.from_origin(500000, 5200000, 10, 10)}
    with rasterio.open(label, "w", **profile) as dataset:
        dataset.write(np.ones((1, 8, 8), np.uint8))
    data = _spec_dict(label={"classes": ["a", "b"]})
    data["scenes"][0]["label"] = str(label)
    with pytest.raises(InputError, match="label raster .* does not overlap the scene's files"):
        build_chips(chip_spec_from_dict(data), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_valid_chip(tmp_path: Path) -> None:
    with pytest.raises(EmptyResultError, match="min_valid"):
        build_chips(chip_spec_from_dict(_spec_dict(min_valid=1.0, size=40)), tmp_path / "out")


def test_spec_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown chip spec key 'sizee'; keys allowed in the top level: .*modalities, scenes"):
        chip_spec_from_dict(_spec_dict(sizee=3))
    with pytest.raises(ConfigError, match=r"'modalities\.s2\.bands'"):
        chip_spec_from_dict(_spec_dict(modalities={"s2": {"sensor": "s2-l2a", "bands": ["B99"]}}))
    data = _spec_dict()
    data["scenes"][0]["s1"] = data["scenes"][0]["s2"]
    with pytest.raises(ConfigError, match=r"'scenes\[0\]\.s1'.*not a modality"):
        chip_spec_from_dict(data)
    data = _spec_dict()
    data["scenes"][0]["s2"]["dates"] = ["2024-08-24", "2024-08-25"]
    with pytest.raises(ConfigError, match="one date per entry"):
        chip_spec_from_dict(data)
    with pytest.raises(ConfigError, match="orbit"):
        chip_spec_from_dict(_spec_dict(modalities={"s1": {"sensor": "s1", "bands": ["vv"]}}))


def test_gsd_ratio_must_be_whole(tmp_path: Path) -> None:
    data = _spec_dict(size=15)
    with pytest.raises(ConfigError, match="not a whole number"):
        build_chips(chip_spec_from_dict(data), tmp_path / "out")


def test_band_not_in_files(tmp_path: Path) -> None:
    data = _spec_dict()
    data["modalities"]["s2"]["bands"] = ["B02", "B05"]
    with pytest.raises(InputError, match="no file contains band 'B05'"):
        build_chips(chip_spec_from_dict(data), tmp_path / "out")


def test_geographic_source_needs_gsd(tmp_path: Path) -> None:
    data = _spec_dict()
    del data["modalities"]["s2"]["gsd"]
    with pytest.raises(ConfigError, match=r"modalities\.s2\.gsd"):
        build_chips(chip_spec_from_dict(data), tmp_path / "out")


# ---------------------------------------------------------------------------------- command line
def test_chips_command(tmp_path: Path) -> None:
    _register_commands()
    runner = CliRunner()
    folder = tmp_path / "lux"
    result = runner.invoke(app, ["chips", str(folder), "--spec", str(SPECS / "luxembourg.toml"), "--stats"])
    assert result.exit_code == 0, result.output
    assert "luxembourg" in result.output
    assert read_manifest(folder).stats is not None

    result = runner.invoke(app, ["chips", str(folder)])
    assert result.exit_code == 0, result.output
    assert "dsm, slope" in result.output

    result = runner.invoke(app, ["chips", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "not found" in result.output
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["chips", str(tmp_path / "x"), "--spec", str(SPECS / "luxembourg.toml"), "--set", "size=oops"])
    assert result.exit_code == 1
    assert "'size'" in result.output


def test_shipped_specs_load() -> None:
    for path in sorted(SPECS.glob("*.toml")):
        spec = load_chip_spec(path)
        assert spec.scenes


# ---------------------------------------------------------------------------------- STAC source
SERIES = DATA / "s2l2a_timeseries_33TWM"
SERIES_BBOX = (15.30, 46.75, 15.45, 46.85)


def test_stac_api_chips(stac_api, tmp_path: Path) -> None:
    from stac_server import localise_hrefs, read_item_dicts

    from ramen_core.chips.stac import build_chips_from_stac

    paths = sorted((SERIES / "sentinel-2-l2a").glob("*/*_L2A.json"))
    url = stac_api([localise_hrefs(item, path.parent) for path in paths for item in read_item_dicts(path)])
    manifest = build_chips_from_stac(
        tmp_path / "stac", sensors="s2", bbox=SERIES_BBOX, datetime="2023-08-01/2023-08-31", catalog=url,
        bands=["B02", "B03", "B04", "B08"], size=16, min_valid=0.5, shard_size=8, name="series", stats=True,
    )
    info = manifest.modalities["s2"]
    assert info.num_dates == 5
    assert info.gsd == 120.0
    assert info.size == (16, 16)
    assert [band.name for band in info.bands] == ["B02", "B03", "B04", "B08"]
    assert manifest.scenes[0].crs == "EPSG:32633"
    assert [entry["date"] for entry in manifest.scenes[0].sources["s2"]] == [
        "2023-08-10", "2023-08-13", "2023-08-15", "2023-08-18", "2023-08-20",
    ]
    assert manifest.spec["catalog"] == url
    assert manifest.stats is not None

    dataset = ChipDataset(tmp_path / "stac")
    chip = dataset[0]
    assert chip["s2/dates"].tolist() == [19579, 19582, 19584, 19587, 19589]
    # The chip is the window of the 120 m files at its bounds, in reflectance.
    left, _, _, top = chip["chip/bounds"].tolist()
    column, row = int((left - 515340.0) / 120.0), int((5200020.0 - top) / 120.0)
    with rasterio.open(SERIES / "sentinel-2-l2a" / "S2A_33TWM_20230815_0_L2A" / "B04.tif") as source:
        raw = source.read(1)[row : row + 16, column : column + 16].astype(np.float32)
    valid = chip["s2/valid"][2].numpy()
    stored = chip["s2/data"][2, 2].numpy()
    assert valid.mean() > 0.9
    np.testing.assert_allclose(stored[valid], raw[valid] * 1e-4, rtol=1e-5, atol=1e-6)


def test_stac_chips_command_local_catalog(tmp_path: Path) -> None:
    _register_commands()
    runner = CliRunner()
    folder = tmp_path / "series"
    arguments = [
        "chips", str(folder), "--sensors", "s2", "--bbox", *map(str, SERIES_BBOX), "--datetime", "2023-08-01/2023-08-31",
        "--catalog", str(SERIES / "catalog.json"), "--bands", "B02,B03,B04,B08", "--size", "16", "--stats",
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(folder)
    assert manifest.num_chips > 10
    assert manifest.modalities["s2"].num_dates == 5

    result = runner.invoke(app, ["chips", str(tmp_path / "x"), "--sensors", "s2"])
    assert result.exit_code == 1
    assert "--bbox" in result.output
    result = runner.invoke(app, [*arguments[:-1], "--min-valid", "2"])  # a share, not a percentage
    assert result.exit_code == 1
    assert "min_valid 2 must be a share between 0 and 1" in " ".join(result.output.split())
    result = runner.invoke(app, ["chips", str(tmp_path / "x"), "--sensors", "s2", "--bbox", "1", "2", "3", "4",
                                 "--spec", str(SPECS / "luxembourg.toml")])
    assert result.exit_code == 1
    assert "not both" in result.output
