"""``ramen embed`` end to end on real rasters from tests/data, with a tiny random model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rasterio
from affine import Affine

from embed_support import (
    BIGEARTHNET_S1,
    DATA,
    BIGEARTHNET_S2,
    LUXEMBOURG_DEM,
    LUXEMBOURG_S2,
    MAJORTOM,
    MAJORTOM_SMALL_BBOX,
    SERIES,
    SF_S1,
    SF_S2,
    coverage_fraction,
    is_valid_cog,
   
    read,
    run_cli,
    seam_ratio,
)
from embed_support import one_thread, weights  # noqa: F401 (pytest fixtures shared by the embed tests)
from ramen_core.inference.tiling import window_starts
from stac_server import localise_hrefs, read_item_dicts

TINY_DIM = 64
# Major TOM crop origin (EPSG:32648): x 366032.196859, y 1983668.206432, 384 px of 10 m.
MAJORTOM_LEFT, MAJORTOM_TOP = 366032.196859, 1983668.206432


def embed_ok(*args) -> str:
    result = run_cli(["embed", *args, "-q"])
    assert result.exit_code == 0, result.output
    return result.output


def check_transform(profile: dict, gsd: float) -> None:
    transform: Affine = profile["transform"]
    assert (transform.a, transform.e, transform.b, transform.d) == (gsd, -gsd, 0.0, 0.0)
    assert transform.c / gsd == math.floor(transform.c / gsd)
    assert transform.f / gsd == math.floor(transform.f / gsd)


def check_valid_area(values: np.ndarray, fraction: np.ndarray) -> None:
    """Finite where the input covers the whole pixel, NaN (nodata) where it covers none of it."""
    finite = np.isfinite(values).all(axis=0)
    inside = fraction > 0.999
    outside = fraction < 1e-6
    assert inside.any()
    assert finite[inside].all(), f"{(~finite[inside]).sum()} NaN pixels inside the valid area"
    assert not np.isfinite(values[:, outside]).any(), "values outside the input's valid area"


# ----------------------------------------------------------------------------- Sentinel-2 alone


def test_majortom_native_gsd(tmp_path, weights):
    output = tmp_path / "emb10.tif"
    embed_ok(MAJORTOM, "--sensor", "s2", "--gsd", "10", "--bbox", *MAJORTOM_SMALL_BBOX, "--weights", weights,
             "--window", "16", "-o", output)
    values, profile = read(output)
    assert is_valid_cog(output)
    assert profile["crs"].to_epsg() == 32648
    check_transform(profile, 10.0)
    assert values.shape[0] == TINY_DIM
    assert np.isfinite(values).all()
    tags = profile["tags"]
    assert tags["RAMEN_GSD"] == "10"
    assert json.loads(tags["RAMEN_SENSORS"])[0]["bands"] == [
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"
    ]
    assert not (tmp_path / "emb10.tif.ramen-partial").exists()


def test_majortom_twice_native_gsd_seam_free(tmp_path, weights):
    blended = tmp_path / "emb20.tif"
    embed_ok(MAJORTOM, "--sensor", "s2", "--gsd", "20", "--weights", weights, "--window", "16", "--overlap", "4",
             "-o", blended)
    values, profile = read(blended)
    assert is_valid_cog(blended)
    check_transform(profile, 20.0)
    # The crop starts 12.2 m and 11.8 m inside the first column and row: the snapped origin.
    assert profile["transform"].c == math.floor(MAJORTOM_LEFT / 20) * 20
    assert profile["transform"].f == math.ceil(MAJORTOM_TOP / 20) * 20
    assert (profile["width"], profile["height"]) == (193, 193)
    check_valid_area(values, coverage_fraction(MAJORTOM / "B02.tif", blended))

    across_cols, across_rows = seam_ratio(values[:, 1:-1, 1:-1], 16, 4)
    assert across_cols <= 1.5
    assert across_rows <= 1.5

    # Without overlap the window borders show: the blended output must be smoother there.
    hard = tmp_path / "hard.tif"
    embed_ok(MAJORTOM, "--sensor", "s2", "--gsd", "20", "--weights", weights, "--window", "16", "--overlap", "0",
             "-o", hard)
    hard_cols, hard_rows = seam_ratio(read(hard)[0][:, 1:-1, 1:-1], 16, 0)
    assert hard_cols > across_cols
    assert hard_rows > across_rows


def test_majortom_band_subset(tmp_path, weights):
    output = tmp_path / "rgbn.tif"
    embed_ok(MAJORTOM, "--sensor", "s2", "--bands", "B04,B03,B02,B08", "--gsd", "40", "--weights", weights,
             "--window", "8", "-o", output)
    values, profile = read(output)
    assert json.loads(profile["tags"]["RAMEN_SENSORS"])[0]["bands"] == ["B04", "B03", "B02", "B08"]
    assert np.isfinite(values[:, 1:-1, 1:-1]).all()


# ----------------------------------------------------------------------------- Sentinel-2 with Sentinel-1


def test_sen1floods11_reprojected_from_lonlat(tmp_path, weights):
    output = tmp_path / "floods.tif"
    embed_ok(SF_S2, "--sensor", "s2-l1c", "--input", f"s1={SF_S1}", "--orbit", "s1=des", "--gsd", "20",
             "--weights", weights, "--window", "16", "-o", output)
    values, profile = read(output)
    assert is_valid_cog(output)
    assert profile["crs"].to_epsg() == 32630  # the UTM zone of the chip's centre (lon -0.76)
    check_transform(profile, 20.0)
    check_valid_area(values, coverage_fraction(SF_S2, output))
    sensors = json.loads(profile["tags"]["RAMEN_SENSORS"])
    assert [entry["name"] for entry in sensors] == ["s2-l1c", "s1"]
    assert sensors[1]["orbit"] == "des"
    scaling = json.loads(profile["tags"]["RAMEN_SCALING"])
    assert all(not record["to_db"] for record in scaling["s1"])  # already dB: negative values


def test_sen1floods11_crs_override(tmp_path, weights):
    output = tmp_path / "floods3857.tif"
    embed_ok(SF_S2, "--sensor", "s2-l1c", "--crs", "3857", "--gsd", "50", "--weights", weights, "--window", "8",
             "-o", output)
    _, profile = read(output)
    assert profile["crs"].to_epsg() == 3857
    check_transform(profile, 50.0)


def test_bigearthnet_folders_concat(tmp_path, weights):
    output = tmp_path / "ben.tif"
    embed_ok(BIGEARTHNET_S2, "--sensor", "s2", "--input", f"s1={BIGEARTHNET_S1}", "--orbit", "s1=des",
             "--gsd", "10", "--fuse", "concat", "--weights", weights, "--window", "16", "-o", output)
    values, profile = read(output)
    assert is_valid_cog(output)
    assert profile["crs"].to_epsg() == 32629
    assert profile["transform"] == Affine(10.0, 0.0, 643200.0, 0.0, -10.0, 5798040.0)
    assert (profile["width"], profile["height"]) == (120, 120)
    assert values.shape[0] == 2 * TINY_DIM
    assert profile["descriptions"][0] == "s2_embedding_000"
    assert profile["descriptions"][TINY_DIM] == "s1_embedding_000"
    assert np.isfinite(values).all()
    assert profile["tags"]["RAMEN_FUSE"] == "concat"


# ----------------------------------------------------------------------------- Sentinel-2 with DEM


def test_luxembourg_s2_with_dem(tmp_path, weights):
    output = tmp_path / "lux.tif"
    embed_ok(LUXEMBOURG_S2, "--sensor", "s2", "--offset", "s2=-0.1", "--date", "s2=2024-08-24",
             "--input", f"dem={LUXEMBOURG_DEM}", "--gsd", "2000", "--weights", weights, "--window", "8", "-o", output)
    values, profile = read(output)
    assert is_valid_cog(output)
    assert profile["crs"].to_epsg() == 32632
    check_transform(profile, 2000.0)
    tags = profile["tags"]
    sensors = {entry["name"]: entry for entry in json.loads(tags["RAMEN_SENSORS"])}
    assert sensors["dem"]["bands"] == ["dsm", "slope"]
    assert sensors["s2"]["bands"] == ["B02", "B03", "B04", "B08"]
    assert all(record["offset"] == -0.1 and record["source"] == "user" for record in json.loads(tags["RAMEN_SCALING"])["s2"])
    assert json.loads(tags["RAMEN_DATES"])["s2"] == ["2024-08-24"]
    # Outside the country both inputs are nodata, and so is the output; their masks differ slightly.
    dem = coverage_fraction(LUXEMBOURG_DEM, output)
    optical = coverage_fraction(LUXEMBOURG_S2, output)
    check_valid_area(values, np.maximum(dem, optical))


def test_south_up_raster_matches_north_up(tmp_path, weights):
    values = np.random.default_rng(3).integers(500, 3000, (4, 40, 40)).astype(np.uint16)
    layouts = {
        "north": (values, Affine(10, 0, 500000, 0, -10, 5200400)),
        "south": (values[:, ::-1, :], Affine(10, 0, 500000, 0, 10, 5200000)),  # rows run northwards
    }
    outputs = {}
    for name, (data, transform) in layouts.items():
        source = tmp_path / f"{name}.tif"
        profile = {"driver": "GTiff", "width": 40, "height": 40, "count": 4, "dtype": "uint16", "nodata": 0,
                   "crs": "EPSG:32633", "transform": transform}
        with rasterio.open(source, "w", **profile) as dataset:
            dataset.write(np.ascontiguousarray(data))
            dataset.descriptions = ("B02", "B03", "B04", "B08")
        outputs[name] = tmp_path / f"{name}_emb.tif"
        embed_ok(source, "--sensor", "s2", "--gsd", "20", "--weights", weights, "--window", "8", "-o", outputs[name])
    north, north_profile = read(outputs["north"])
    south, south_profile = read(outputs["south"])
    assert south_profile["transform"] == north_profile["transform"]
    assert np.array_equal(south, north)


# ----------------------------------------------------------------------------- time series from a STAC API


@pytest.fixture(scope="module")
def series_url(stac_api) -> str:
    paths = sorted(SERIES.glob("*/*_L2A.json"))
    return stac_api([localise_hrefs(item, path.parent) for path in paths for item in read_item_dicts(path)])


def test_time_series_from_stac_api(tmp_path, weights, series_url):
    output = tmp_path / "series.tif"
    embed_ok("--bbox", "15.30", "46.75", "15.45", "46.85", "--datetime", "2023-08-01/2023-08-31",
             "--sensors", "s2", "--catalog", series_url, "--bands", "s2=B02,B03,B04,B08", "--gsd", "240",
             "--weights", weights, "--window", "8", "-o", output)
    values, profile = read(output)
    assert is_valid_cog(output)
    assert profile["crs"].to_epsg() == 32633
    check_transform(profile, 240.0)
    tags = profile["tags"]
    assert json.loads(tags["RAMEN_DATES"])["sentinel-2-l2a"] == [
        "2023-08-10", "2023-08-13", "2023-08-15", "2023-08-18", "2023-08-20"
    ]
    assert len(json.loads(tags["RAMEN_ITEMS"])["sentinel-2-l2a"]) == 5
    assert json.loads(tags["RAMEN_SEARCH"])["catalog"] == series_url
    assert np.isfinite(values).all()  # the R122 dates cover the whole area


def test_bare_bands_reach_catalog(tmp_path, weights, series_url):
    output = tmp_path / "two_bands.tif"
    embed_ok("--bbox", "15.30", "46.75", "15.45", "46.85", "--datetime", "2023-08-10/2023-08-10",
             "--sensors", "s2", "--catalog", series_url, "--bands", "B03,B08", "--gsd", "480",
             "--weights", weights, "--window", "4", "-o", output)
    sensors = json.loads(read(output)[1]["tags"]["RAMEN_SENSORS"])
    assert [entry["bands"] for entry in sensors] == [["B03", "B08"]]


def test_named_orbit_reaches_catalog(tmp_path, weights):
    output = tmp_path / "des.tif"
    embed_ok("--bbox", "-6.8995", "52.3030", "-6.8818", "52.3138", "--datetime", "2017-06-01/2017-06-30",
             "--sensors", "s1-rtc", "--catalog", DATA / "s1_backscatter_items", "--orbit", "s1-rtc=des",
             "--gsd", "80", "--weights", weights, "--window", "8", "-o", output)
    sensors = json.loads(read(output)[1]["tags"]["RAMEN_SENSORS"])
    assert [entry["orbit"] for entry in sensors] == ["des"]


# ----------------------------------------------------------------------------- options


def test_layer_dtype_vectors_preview(tmp_path, weights):
    import geopandas as gpd
    import matplotlib.image

    last = tmp_path / "last.tif"
    first = tmp_path / "first.tif"
    common = [BIGEARTHNET_S2, "--sensor", "s2", "--gsd", "20", "--weights", weights, "--window", "8"]
    embed_ok(*common, "-o", last, "--vectors", tmp_path / "v.parquet", "--preview", tmp_path / "p.png")
    embed_ok(*common, "-o", first, "--layer", "1", "--dtype", "float16", "--vectors", tmp_path / "cls.parquet",
             "--pooling", "cls")
    last_values, last_profile = read(last)
    first_values, first_profile = read(first)
    assert last_profile["tags"]["RAMEN_LAYER"] == "2"
    assert first_profile["tags"]["RAMEN_LAYER"] == "1"
    assert not np.allclose(last_values, first_values)
    with rasterio.open(first) as dataset:
        assert dataset.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"

    vectors = gpd.read_parquet(tmp_path / "v.parquet")
    assert list(vectors.columns) == ["window", "row", "col", "valid_fraction", "embedding", "geometry"]
    assert len(vectors) == len(window_starts(60, 8, 6)) ** 2  # 60 x 60 pixels, windows of 8, overlap 2
    assert vectors.crs.to_epsg() == 32629
    assert len(vectors.iloc[0].embedding) == TINY_DIM
    assert vectors.geometry.iloc[0].bounds == (643200.0, 5798040.0 - 160.0, 643200.0 + 160.0, 5798040.0)
    assert (vectors.valid_fraction == 1.0).all()
    cls = gpd.read_parquet(tmp_path / "cls.parquet")
    assert len(cls.iloc[0].embedding) == TINY_DIM
    assert not np.allclose(np.stack(cls.embedding), np.stack(vectors.embedding))

    image = matplotlib.image.imread(tmp_path / "p.png")
    assert image.shape == (60, 60, 4)
    assert image[..., 3].min() > 0


def test_normalization_global_and_file(tmp_path, weights):
    output = tmp_path / "global.tif"
    embed_ok(BIGEARTHNET_S2, "--sensor", "s2", "--gsd", "20", "--weights", weights, "--window", "8",
             "--normalization", "global", "-o", output)
    record = json.loads(read(output)[1]["tags"]["RAMEN_NORMALIZATION"])
    assert record["mode"] == "global"
    statistics = record["statistics"]["s2"]
    with rasterio.open(next(BIGEARTHNET_S2.glob("*_B04.tif"))) as dataset:
        red = dataset.read(1).astype(np.float64) * 1e-4
    assert statistics["B04"]["mean"] == pytest.approx(red.mean(), rel=1e-3)
    assert statistics["B04"]["std"] == pytest.approx(red.std(), rel=1e-2)

    stats_file = tmp_path / "stats.json"
    stats_file.write_text(json.dumps(record), encoding="utf-8")  # an earlier output's tag is a valid file
    again = tmp_path / "from_file.tif"
    embed_ok(BIGEARTHNET_S2, "--sensor", "s2", "--gsd", "20", "--weights", weights, "--window", "8",
             "--normalization", stats_file, "-o", again)
    record_again = json.loads(read(again)[1]["tags"]["RAMEN_NORMALIZATION"])
    assert record_again["mode"] == "file"
    assert record_again["statistics"] == record["statistics"]
    np.testing.assert_array_equal(read(again)[0], read(output)[0])


def test_plan_prints_three_gsds(tmp_path, weights):
    result = run_cli(["embed", MAJORTOM, "--sensor", "s2", "--gsd", "20", "--weights", weights, "--plan"])
    assert result.exit_code == 0, result.output
    for gsd in ("10 m", "20 m (chosen)", "40 m"):
        assert gsd in result.output
    assert "193 x 193" in result.output
    assert "385 x 385" in result.output
    assert not list(tmp_path.iterdir())


def test_finer_gsd_than_input_warns(tmp_path, weights, caplog):
    output = tmp_path / "fine.tif"
    result = run_cli(["embed", LUXEMBOURG_S2, "--sensor", "s2", "--gsd", "500", "--bbox", "6.0", "49.6", "6.1", "49.7",
                      "--weights", weights, "--window", "8", "-o", output])
    assert result.exit_code == 0, result.output
    assert "finer than the finest input" in result.output + caplog.text
    assert output.exists()


def test_vrt_with_band_descriptions(tmp_path, weights):
    """A VRT stacking four 10 m BigEarthNet band files, its bands described out of sensor order."""
    bands = ["B08", "B04", "B03", "B02"]
    with rasterio.open(next(BIGEARTHNET_S2.glob("*_B02.tif"))) as dataset:
        width, height, transform, crs = dataset.width, dataset.height, dataset.transform, dataset.crs.to_wkt()
    sources = []
    for index, band in enumerate(bands, start=1):
        path = next(BIGEARTHNET_S2.glob(f"*_{band}.tif")).resolve()
        sources.append(
            f'<VRTRasterBand dataType="UInt16" band="{index}"><Description>{band}</Description>'
            f'<SimpleSource><SourceFilename relativeToVRT="0">{path}</SourceFilename><SourceBand>1</SourceBand>'
            f'</SimpleSource></VRTRasterBand>'
        )
    geotransform = ", ".join(str(value) for value in (transform.c, transform.a, transform.b, transform.f, transform.d, transform.e))
    vrt = tmp_path / "stack.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{crs}</SRS>'
        f'<GeoTransform>{geotransform}</GeoTransform>{"".join(sources)}</VRTDataset>',
        encoding="utf-8",
    )
    output = tmp_path / "vrt.tif"
    embed_ok(vrt, "--sensor", "s2", "--gsd", "20", "--weights", weights, "--window", "8", "-o", output)
    values, profile = read(output)
    assert json.loads(profile["tags"]["RAMEN_SENSORS"])[0]["bands"] == ["B02", "B03", "B04", "B08"]
    assert np.isfinite(values).all()

    # The same bands from the folder give the same embeddings: order comes from the descriptions.
    folder = tmp_path / "folder.tif"
    embed_ok(BIGEARTHNET_S2, "--sensor", "s2", "--bands", "B02,B03,B04,B08", "--gsd", "20", "--weights", weights,
             "--window", "8", "-o", folder)
    np.testing.assert_allclose(read(folder)[0], values, rtol=1e-5, atol=1e-5)


def test_sensor_toml_file(tmp_path, weights):
    sensor = tmp_path / "terra.toml"
    sensor.write_text(
        'id = "terra-s2"\ngsd = 1000.0\nscale = 0.0001\noffset = -0.1\n'
        '[[bands]]\nname = "B02"\nwavelength_nm = 490\n[[bands]]\nname = "B03"\nwavelength_nm = 560\n'
        '[[bands]]\nname = "B04"\nwavelength_nm = 665\n[[bands]]\nname = "B08"\nwavelength_nm = 842\n',
        encoding="utf-8",
    )
    output = tmp_path / "toml.tif"
    embed_ok(LUXEMBOURG_S2, "--sensor", sensor, "--gsd", "2000", "--weights", weights, "--window", "8", "-o", output)
    tags = read(output)[1]["tags"]
    assert json.loads(tags["RAMEN_SENSORS"])[0]["sensor"] == "terra-s2"
    assert json.loads(tags["RAMEN_SCALING"])["terra-s2"][0]["offset"] == -0.1


def test_tags_progress_and_weights_hash(tmp_path, weights):
    from ramen_core import __version__
    from ramen_core.weights import sha256_file

    output = tmp_path / "tags.tif"
    result = run_cli(["embed", BIGEARTHNET_S2, "--sensor", "s2", "--gsd", "20", "--weights", weights,
                      "--window", "8", "-o", output])
    assert result.exit_code == 0, result.output
    assert "100/100" in result.output  # the progress bar: windows done of total
    assert "Wrote COG" in result.output
    tags = read(output)[1]["tags"]
    assert tags["RAMEN_MODEL_SHA256"] == sha256_file(weights)
    assert tags["RAMEN_WEIGHTS"] == weights
    assert tags["RAMEN_VERSION"] == __version__
    assert json.loads(tags["RAMEN_NORMALIZATION"])["mode"] == "registry"
    assert json.loads(tags["RAMEN_ITEMS"])["s2"][0].endswith("_B01.tif")
    assert json.loads(tags["RAMEN_MODEL_CONFIG"])["embed_dim"] == TINY_DIM
