"""Cubes: items from a real STAC API, loaded with odc-stac, checked against rasterio reads."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.warp
from affine import Affine
from pystac_client import Client

from ramen_core.cube import SensorCube, load_cube, load_cubes
from ramen_core.errors import EmptyResultError, InputError
from ramen_core.sensors import slope_degrees
from stac_server import free_port, localise_hrefs, read_item_dicts

DATA = Path(__file__).parent / "data"
SERIES = DATA / "s2l2a_timeseries_33TWM" / "sentinel-2-l2a"
SYNTHETIC = DATA / "synthetic_items"
LUXEMBOURG = DATA / "dem_samples"
RADAR = DATA / "s1_backscatter_items"
RADAR_PATCH = DATA / "bigearthnet_mm" / "S1" / "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85"

S2_BANDS = ["B02", "B03", "B04", "B08"]
BAND_FILES = {"B02": "B02.tif", "B03": "B03.tif", "B04": "B04.tif", "B08": "B08.tif"}
SCL_INVALID = (0, 1, 3, 8, 9, 10)
SERIES_DATES = [dt.date(2023, 8, day) for day in (10, 13, 15, 18, 20)]
# The 120 m grid of the 33TWM window: EPSG:32633, 256 x 256 pixels.
SERIES_TRANSFORM = Affine(120.0, 0.0, 515340.0, 0.0, -120.0, 5200020.0)
# Inside the window (lon 15.20 to 15.61, lat 46.68 to 46.95).
SERIES_BBOX = (15.30, 46.75, 15.45, 46.85)
LUXEMBOURG_BBOX = (6.05, 49.60, 6.10, 49.65)


def _item_dicts(paths: list[Path]) -> list[dict]:
    """Read item files, with relative hrefs made absolute ``file://`` URIs from each file's folder."""
    return [localise_hrefs(item, path.parent) for path in paths for item in read_item_dicts(path)]


def _series_paths() -> list[Path]:
    return sorted(path for path in SERIES.glob("*/*_L2A.json"))


def _search(url: str, **parameters) -> list[pystac.Item]:
    return list(Client.open(url).search(**parameters).items())


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(1)


def _reflectance(dn: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """Scale DN the way the registry does for these items, nodata 0 to NaN."""
    values = dn.astype(np.float32) * np.float32(0.0001) + np.float32(offset)
    return np.where(dn == 0, np.float32(np.nan), values)


@pytest.fixture(scope="module")
def series_url(stac_api) -> str:
    return stac_api(_item_dicts(_series_paths()))


@pytest.fixture(scope="module")
def series_cube(series_url) -> SensorCube:
    items = _search(series_url, collections=["sentinel-2-l2a"], bbox=SERIES_BBOX, datetime="2023-08-01/2023-08-31")
    return load_cube(items, "s2", bands=S2_BANDS)


@pytest.fixture(scope="module")
def cases_url(stac_api) -> str:
    paths = [path for case in ("same_pass", "two_utm_zones", "proj_code_only", "mixed_seconds") for path in sorted((SYNTHETIC / case).glob("*.json"))]
    paths += [LUXEMBOURG / "terra-elev-luxembourg.json", LUXEMBOURG / "terra-sent2-luxembourg-20240824.json"]
    return stac_api(_item_dicts(paths))


# ----------------------------------------------------------------------------- series


def test_series_grid_dates_and_items(series_cube):
    assert series_cube.shape == (5, 4, 256, 256)
    assert series_cube.dates == SERIES_DATES
    assert series_cube.transform == SERIES_TRANSFORM
    assert series_cube.crs.epsg == 32633
    assert series_cube.gsd == 120.0
    assert series_cube.band_names == S2_BANDS
    assert [band.wavelength_nm for band in series_cube.bands] == [490.0, 560.0, 665.0, 842.0]
    assert series_cube.item_ids == [
        ["S2B_33TWM_20230810_0_L2A"],
        ["S2B_33TWM_20230813_0_L2A"],
        ["S2A_33TWM_20230815_0_L2A"],
        ["S2A_33TWM_20230818_0_L2A"],
        ["S2B_33TWM_20230820_0_L2A"],
    ]
    assert series_cube.data.dtype == np.float32
    assert not series_cube.is_lazy


def test_series_values_match_rasterio(series_cube):
    for t, (item_id,) in enumerate(series_cube.item_ids):
        for c, name in enumerate(S2_BANDS):
            expected = _reflectance(_read(SERIES / item_id / BAND_FILES[name]))
            np.testing.assert_array_equal(series_cube.data.values[t, c], expected, err_msg=f"{item_id} {name}")


def test_series_scaling_record(series_cube):
    assert len(series_cube.scaling) == 5 * 4
    record = series_cube.scaling[0]
    assert record["band"] == "B02"
    assert record["asset"] == "blue"
    assert record["scale"] == 0.0001
    assert record["offset"] == 0.0
    assert record["source"] == "raster:bands"
    assert record["processing_baseline"] == "05.09"
    assert record["date"] == "2023-08-10"
    assert record["items"] == ["S2B_33TWM_20230810_0_L2A"]
    assert record["negative_share"] is None  # offset 0 cannot turn pixels negative


def test_series_masks_follow_scl(series_cube):
    for t, (item_id,) in enumerate(series_cube.item_ids):
        scl = _read(SERIES / item_id / "SCL.tif")
        nodata = np.any([_read(SERIES / item_id / BAND_FILES[name]) == 0 for name in S2_BANDS], axis=0)
        cloud = np.isin(scl, SCL_INVALID) & ~nodata
        assert np.array_equal(series_cube.cloud.values[t], cloud), item_id
        assert np.array_equal(series_cube.nodata.values[t], nodata), item_id
        assert np.array_equal(series_cube.valid.values[t], ~cloud & ~nodata), item_id
        assert series_cube.valid_fraction.values[t] == pytest.approx((~cloud & ~nodata).mean()), item_id
    # 2023-08-10: about 21 % outside the swath and half of the rest cloudy.
    assert series_cube.valid_fraction.values[0] < 0.5
    assert series_cube.valid_fraction.values[1] > 0.95


def test_mask_classes_configurable(series_url):
    items = _search(series_url, ids=["S2B_33TWM_20230810_0_L2A"])
    cube = load_cube(items, "s2", bands=["B04"], mask_invalid=[9])
    scl = _read(SERIES / "S2B_33TWM_20230810_0_L2A" / "SCL.tif")
    assert cube.mask_invalid == (9,)
    assert np.array_equal(cube.cloud.values[0], (scl == 9) & ~cube.nodata.values[0])


def test_default_bands_are_those_every_item_has(series_url, series_cube):
    items = _search(series_url, collections=["sentinel-2-l2a"], bbox=SERIES_BBOX, datetime="2023-08-01/2023-08-31")
    cube = load_cube(items, "s2", compute=False)
    assert cube.band_names == series_cube.band_names
    assert len(cube.bands) == 4


def test_normalised_has_no_nan(series_cube):
    normalised = series_cube.normalised().values
    assert normalised.dtype == np.float32
    assert np.isfinite(normalised).all()
    assert (normalised[~np.broadcast_to(series_cube.valid.values[:, None], normalised.shape)] == 0).all()
    valid = series_cube.valid.values[2]
    mean, std = 0.12975, 0.13681  # registry statistics of B04
    expected = (series_cube.data.values[2, 2][valid] - mean) / std
    np.testing.assert_allclose(normalised[2, 2][valid], expected, rtol=1e-5)


def test_bbox_snaps_outward_to_gsd(series_url):
    items = _search(series_url, bbox=SERIES_BBOX, datetime="2023-08-15")
    cube = load_cube(items, "s2", bands=["B04"], bbox=SERIES_BBOX)
    transform = cube.transform
    # The lattice is anchored on the items' own pixel corners.
    assert (transform.c - SERIES_TRANSFORM.c) % 120 == 0
    assert (SERIES_TRANSFORM.f - transform.f) % 120 == 0
    area = rasterio.warp.transform_bounds("EPSG:4326", "EPSG:32633", *SERIES_BBOX, densify_pts=101)
    bounds = cube.geobox.boundingbox
    assert bounds.left <= area[0] < bounds.left + 120
    assert bounds.bottom <= area[1] < bounds.bottom + 120
    assert bounds.right - 120 < area[2] <= bounds.right
    assert bounds.top - 120 < area[3] <= bounds.top

    column = int((transform.c - SERIES_TRANSFORM.c) / 120)
    row = int((SERIES_TRANSFORM.f - transform.f) / 120)
    rows, cols = cube.geobox.shape
    expected = _reflectance(_read(SERIES / "S2A_33TWM_20230815_0_L2A" / "B04.tif"))[row : row + rows, column : column + cols]
    np.testing.assert_array_equal(cube.data.values[0, 0], expected)


def test_single_item_keeps_own_grid(series_url):
    items = _search(series_url, ids=["S2A_33TWM_20230815_0_L2A"])
    cube = load_cube(items, "s2", bands=S2_BANDS)
    declared = items[0].assets["red"].extra_fields
    assert cube.transform == Affine(*declared["proj:transform"])
    assert list(cube.geobox.shape) == declared["proj:shape"]
    assert cube.crs.epsg == 32633


def test_lazy_cube_matches_computed(series_url, series_cube):
    items = _search(series_url, collections=["sentinel-2-l2a"], bbox=SERIES_BBOX, datetime="2023-08-01/2023-08-31")
    lazy = load_cube(items, "s2", bands=S2_BANDS, compute=False, chunk_size=128)
    assert lazy.is_lazy
    assert lazy.data.data.chunksize == (1, 4, 128, 128)
    computed = lazy.compute()
    np.testing.assert_array_equal(computed.data.values, series_cube.data.values)
    np.testing.assert_array_equal(computed.valid.values, series_cube.valid.values)


def test_scheduler_address_runs_on_cluster(series_url, series_cube):
    distributed = pytest.importorskip("distributed")
    items = _search(series_url, collections=["sentinel-2-l2a"], bbox=SERIES_BBOX, datetime="2023-08-01/2023-08-31")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        cube = load_cube(items, "s2", bands=S2_BANDS, scheduler=cluster.scheduler_address)
    np.testing.assert_array_equal(cube.data.values, series_cube.data.values)


def test_unreachable_scheduler_raises(series_url, monkeypatch):
    monkeypatch.setattr("ramen_core.cube._SCHEDULER_TIMEOUT", "1s")
    items = _search(series_url, ids=["S2A_33TWM_20230815_0_L2A"])
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(InputError, match="cannot connect to the Dask scheduler"):
        load_cube(items, "s2", bands=["B04"], scheduler=address)


def test_crop_keeps_pixels_and_grid(series_cube):
    left, top = SERIES_TRANSFORM.c + 10 * 120, SERIES_TRANSFORM.f - 20 * 120
    cropped = series_cube.crop((left, top - 30 * 120, left + 40 * 120, top))
    assert cropped.shape == (5, 4, 30, 40)
    assert cropped.transform == Affine(120.0, 0.0, left, 0.0, -120.0, top)
    np.testing.assert_array_equal(cropped.data.values, series_cube.data.values[:, :, 20:50, 10:50])
    np.testing.assert_array_equal(cropped.valid.values, series_cube.valid.values[:, 20:50, 10:50])
    with pytest.raises(InputError, match="not on the 120 m pixel edges"):
        series_cube.crop((left + 7, top - 1200, left + 1200, top))


def test_untouched_item_warns_about_offset(caplog):
    item = pystac.Item.from_file(SERIES / "S2B_33TWM_20230813_0_L2A" / "S2B_33TWM_20230813_0_L2A.untouched.json")
    with caplog.at_level(logging.WARNING, logger="ramen_core.sensors"):
        cube = load_cube([item], "s2", bands=["B04"], bbox=(15.35, 46.80, 15.40, 46.83))
    assert any("disagree" in record.getMessage() for record in caplog.records)
    assert cube.gsd == 10.0  # the untouched item still declares the 10 m grid
    assert cube.scaling[0]["offset"] == pytest.approx(-0.1)
    assert cube.scaling[0]["negative_share"] > 0.5


# ----------------------------------------------------------------------------- edge cases


def test_proj_code_only_item_loads(cases_url):
    items = _search(cases_url, ids=["S2A_SYNTH_PROJCODE"])
    assert "proj:epsg" not in items[0].properties
    cube = load_cube(items, "s2", bands=S2_BANDS)
    assert cube.crs.epsg == 32633
    assert cube.transform == Affine(*items[0].properties["proj:transform"])
    expected = _reflectance(_read(SYNTHETIC / "proj_code_only" / "S2A_SYNTH_PROJCODE" / "B04.tif"), offset=-0.1)
    np.testing.assert_array_equal(cube.data.values[0, 2], expected)


def test_same_pass_items_share_one_slice(cases_url):
    items = _search(cases_url, ids=["S2A_SYNTH_SAMEPASS_A", "S2A_SYNTH_SAMEPASS_B"])
    cube = load_cube(items, "s2", bands=S2_BANDS)
    assert cube.shape == (1, 4, 40, 56)
    assert cube.dates == [dt.date(2023, 8, 15)]
    assert cube.item_ids == [["S2A_SYNTH_SAMEPASS_A", "S2A_SYNTH_SAMEPASS_B"]]

    first = _reflectance(_read(SYNTHETIC / "same_pass" / "S2A_SYNTH_SAMEPASS_A" / "B04.tif"), offset=-0.1)
    second = _reflectance(_read(SYNTHETIC / "same_pass" / "S2A_SYNTH_SAMEPASS_B" / "B04.tif"), offset=-0.1)
    red = cube.data.values[0, 2]
    # Item A covers rows 0-31 and columns 0-31, item B rows 8-39 and columns 24-55; A
    # was sensed first, so it wins where they overlap.
    np.testing.assert_array_equal(red[:32, :32], first)
    np.testing.assert_array_equal(red[8:, 32:], second[:, 8:])
    np.testing.assert_array_equal(red[32:, 24:32], second[24:, :8])
    assert np.isnan(red[32:, :24]).all()
    assert np.isnan(red[:8, 32:]).all()
    assert cube.cloud.values[0, 4:8, 4:8].all()
    assert cube.cloud.values[0].sum() == 16


def test_two_utm_zones_both_load(cases_url):
    items = _search(cases_url, ids=["S2A_SYNTH_ZONE33", "S2A_SYNTH_ZONE34"])
    cube = load_cube(items, "s2", bands=["B02"])
    assert cube.shape[0] == 1
    assert cube.crs.epsg in (32633, 32634)
    blue = cube.data.values[0, 0]
    # Item 0 (zone 33) has DN 1000-1049 and item 1 (zone 34) DN 1100-1149 in B02, so
    # reflectance 0.0 to 0.0049 and 0.01 to 0.0149 (up to float32 round-off).
    from_zone33 = (blue > -0.0005) & (blue < 0.0055)
    from_zone34 = (blue > 0.0095) & (blue < 0.0155)
    assert from_zone33.sum() > 500
    assert from_zone34.sum() > 500
    assert (from_zone33 | from_zone34 | np.isnan(blue)).all()

    for item_id, zone_pixels in (("S2A_SYNTH_ZONE33", from_zone33), ("S2A_SYNTH_ZONE34", from_zone34)):
        path = SYNTHETIC / "two_utm_zones" / item_id / "B02.tif"
        with rasterio.open(path) as dataset:
            warped = np.zeros(cube.geobox.shape, dtype=np.uint16)
            rasterio.warp.reproject(
                dataset.read(1), warped, src_transform=dataset.transform, src_crs=dataset.crs, src_nodata=0,
                dst_transform=cube.transform, dst_crs=f"EPSG:{cube.crs.epsg}", dst_nodata=0,
                resampling=rasterio.warp.Resampling.nearest,
            )
        expected = _reflectance(warped, offset=-0.1)
        covered = zone_pixels & np.isfinite(expected)
        assert np.mean(blue[covered] == expected[covered]) > 0.95, item_id


def test_mixed_second_datetimes_load(cases_url):
    items = _search(cases_url, collections=["sentinel-2-l2a"], ids=["S2A_SYNTH_SECONDS_1", "S2A_SYNTH_SECONDS_2", "S2A_SYNTH_SECONDS_3"])
    cube = load_cube(items, "s2", bands=["B04"])
    assert cube.dates == [dt.date(2023, 8, 10), dt.date(2023, 8, 13), dt.date(2023, 8, 15)]
    np.testing.assert_array_equal(cube.day_of_year, [222, 225, 227])


# ----------------------------------------------------------------------------- elevation


def test_dem_slope_derived_from_dsm(cases_url):
    items = _search(cases_url, collections=["cop-dem-glo-30"])
    cube = load_cube(items, "dem", bbox=LUXEMBOURG_BBOX)
    assert cube.band_names == ["dsm", "slope"]
    assert [band.elevation for band in cube.bands] == ["dsm", "slope"]
    assert cube.gsd == 30.0
    dsm, slope = cube.data.values[0]
    np.testing.assert_array_equal(slope, slope_degrees(dsm, 30.0))
    assert 0 < np.nanmax(slope) < 45

    with rasterio.open(LUXEMBOURG / "terra_elev_luxembourg.tif") as dataset:
        warped = np.full(cube.geobox.shape, np.nan, dtype=np.float32)
        rasterio.warp.reproject(
            dataset.read(1).astype(np.float32), warped, src_transform=dataset.transform, src_crs=dataset.crs,
            src_nodata=-32768, dst_transform=cube.transform, dst_crs=f"EPSG:{cube.crs.epsg}", dst_nodata=np.nan,
            resampling=rasterio.warp.Resampling.bilinear,
        )
    np.testing.assert_allclose(dsm, warped, atol=0.5)


def test_sensors_share_bounds_at_own_gsd(cases_url):
    items = {
        "s2": _search(cases_url, collections=["sentinel-2-l2a"], ids=["terra-sent2-luxembourg-20240824"]),
        "dem": _search(cases_url, collections=["cop-dem-glo-30"]),
    }
    cubes = load_cubes(items, bbox=LUXEMBOURG_BBOX, bands={"s2": S2_BANDS, "dem": ["dsm"]})
    optical, elevation = cubes["sentinel-2-l2a"], cubes["cop-dem-glo-30"]
    assert optical.crs == elevation.crs
    assert optical.crs.epsg == 32632  # the UTM zone of lon 6.075
    assert optical.geobox.boundingbox == elevation.geobox.boundingbox
    assert (optical.gsd, elevation.gsd) == (10.0, 30.0)
    assert optical.geobox.shape[0] == 3 * elevation.geobox.shape[0]
    assert optical.geobox.shape[1] == 3 * elevation.geobox.shape[1]
    # Items in EPSG:4326 give no native anchor, so the bounds are whole multiples of 30 m.
    assert optical.transform.c % 30 == 0
    assert optical.transform.f % 30 == 0
    # terra's Sentinel-2 file carries the +1000 DN offset, declared as -0.1.
    assert optical.scaling[0]["offset"] == pytest.approx(-0.1)
    assert 0 < np.nanmedian(optical.data.values[0, 2]) < 0.2
    assert optical.mask_layer is None
    assert not optical.cloud.values.any()


# ----------------------------------------------------------------------------- radar


@pytest.fixture(scope="module")
def radar_url(stac_api) -> str:
    return stac_api(_item_dicts(sorted(RADAR.glob("*.json"))))


def test_radar_orbits_load_as_two_cubes(radar_url):
    items = _search(radar_url, collections=["sentinel-1-rtc"])
    cubes = load_cubes(items, "s1")
    assert list(cubes) == ["sentinel-1-rtc:asc", "sentinel-1-rtc:des"]
    for key, orbit in (("sentinel-1-rtc:asc", "asc"), ("sentinel-1-rtc:des", "des")):
        cube = cubes[key]
        assert cube.orbit == orbit
        assert [band.radar_key for band in cube.bands] == [f"{orbit}_vv", f"{orbit}_vh"]
        assert cube.transform == Affine(10.0, 0.0, 643200.0, 0.0, -10.0, 5798040.0)


def test_radar_converted_to_db_once(radar_url):
    items = _search(radar_url, collections=["sentinel-1-rtc"])
    cubes = load_cubes(items, "s1")
    decibels = _read(RADAR_PATCH / f"{RADAR_PATCH.name}_VV.tif")

    already_db = cubes["sentinel-1-rtc:des"]
    np.testing.assert_array_equal(already_db.data.values[0, 0], decibels)
    assert already_db.scaling[0]["to_db"] is False
    assert already_db.scaling[0]["db_source"] == "negative pixels"

    linear = cubes["sentinel-1-rtc:asc"]
    np.testing.assert_allclose(linear.data.values[0, 0], decibels, atol=1e-4)
    assert linear.scaling[0]["to_db"] is True
    assert linear.scaling[0]["db_source"] == "sensor"


def test_radar_orbit_option_selects_one(radar_url):
    items = _search(radar_url, collections=["sentinel-1-rtc"])
    cube = load_cube(items, "s1", orbit="des")
    assert cube.key == "sentinel-1-rtc"
    assert cube.orbit == "des"
    assert cube.item_ids == [["bigearthnet-s1-36_85-des"]]


# ----------------------------------------------------------------------------- bad input


def _edited_series_item(edit) -> dict:
    item = _item_dicts([SERIES / "S2A_33TWM_20230815_0_L2A" / "S2A_33TWM_20230815_0_L2A.json"])[0]
    edit(item)
    return item


@pytest.fixture(scope="module")
def broken_url(stac_api) -> str:
    def without_red(item):
        item["id"] = "missing-asset"
        del item["assets"]["red"]

    def missing_file(item):
        item["id"] = "missing-file"
        item["assets"]["red"]["href"] = (SERIES / "S2A_33TWM_20230815_0_L2A" / "B04_missing.tif").as_uri()

    def text_file(item):
        item["id"] = "text-file"
        item["assets"]["red"]["href"] = (SERIES.parent / "PROVENANCE.md").as_uri()

    def json_asset(item):
        item["id"] = "json-asset"
        item["assets"]["red"]["href"] = (SERIES / "S2A_33TWM_20230815_0_L2A" / "S2A_33TWM_20230815_0_L2A.json").as_uri()
        item["assets"]["red"]["type"] = "application/json"

    return stac_api([_edited_series_item(edit) for edit in (without_red, missing_file, text_file, json_asset)])


@pytest.mark.parametrize(
    ("item_id", "message"),
    [
        ("missing-asset", "has no asset for band 'B04'"),
        ("missing-file", "file not found"),
        ("text-file", "not a raster that GDAL can read"),
        ("json-asset", "media type 'application/json', which is not a raster"),
    ],
)
def test_bad_asset_raises_clear_error(broken_url, item_id, message):
    items = _search(broken_url, ids=[item_id])
    with pytest.raises(InputError, match=message):
        load_cube(items, "s2", bands=["B04"])


def test_invalid_bbox_raises(series_url):
    items = _search(series_url, ids=["S2A_33TWM_20230815_0_L2A"])
    with pytest.raises(InputError, match="west 15.5 is greater than east 15.3"):
        load_cube(items, "s2", bands=["B04"], bbox=(15.5, 46.8, 15.3, 46.9))


def test_items_outside_area_raise_empty(series_url):
    items = _search(series_url, ids=["S2A_33TWM_20230815_0_L2A"])
    with pytest.raises(EmptyResultError, match="intersects the area"):
        load_cube(items, "s2", bands=["B04"], bbox=(10.0, 40.0, 10.1, 40.1))


def test_geographic_crs_rejected(series_url):
    items = _search(series_url, ids=["S2A_33TWM_20230815_0_L2A"])
    with pytest.raises(InputError, match="not projected in metres"):
        load_cube(items, "s2", bands=["B04"], crs=4326)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gsd": "ten"}, "gsd 'ten' for sentinel-2-l2a must be a positive number"),
        ({"gsd": float("inf")}, "must be a positive number"),
        ({"resampling": "bicubic"}, "unknown resampling 'bicubic'"),
        ({"resampling": {"s2": "linear"}}, "unknown resampling 'linear'"),
        ({"scheduler": "not-an-address"}, "cannot connect to the Dask scheduler at 'not-an-address'"),
    ],
    ids=["gsd-text", "gsd-inf", "resampling", "resampling-per-sensor", "scheduler-without-port"],
)
def test_bad_options_raise_input_error(series_url, options, message):
    items = _search(series_url, ids=["S2A_33TWM_20230815_0_L2A"])
    with pytest.raises(InputError, match=message):
        load_cube(items, "s2", bands=["B04"], **options)


def test_no_items_raise_empty():
    with pytest.raises(EmptyResultError):
        load_cubes({"s2": []})


def test_item_files_round_trip():
    # The rewritten items describe exactly the local files.
    for path in _series_paths():
        item = json.loads(path.read_text())
        for key, asset in item["assets"].items():
            with rasterio.open(path.parent / asset["href"]) as dataset:
                assert asset["proj:shape"] == [dataset.height, dataset.width], (path.name, key)
                assert asset["proj:transform"] == list(dataset.transform)[:6], (path.name, key)
                assert asset["proj:bbox"] == list(dataset.bounds), (path.name, key)
