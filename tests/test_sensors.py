"""Sensor registry: band physics, catalog mapping on recorded items, radiometry, slope, user sensors."""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from ramen_cli.app import _register_commands, app
from ramen_core.bands import BandSpec
from ramen_core.errors import ConfigError, InputError
from ramen_core.sensors import (
    check_negative_share,
    get_sensor,
    list_catalogs,
    list_sensors,
    load_sensor_file,
    normalise_band_name,
    orbit_direction,
    parse_sensor_description,
    parse_sensor_list,
    processing_baseline,
    resolve_db_conversion,
    scaling_for_item,
    slope_degrees,
)
from stac_server import read_item_dicts

DATA = Path(__file__).parent / "data"
EARTH_SEARCH = DATA / "stac_items" / "earth-search-v1"
PLANETARY = DATA / "stac_items" / "planetary-computer"
SERIES_33TWM = DATA / "s2l2a_timeseries_33TWM" / "sentinel-2-l2a"

runner = CliRunner()


def _item(path: Path, index: int = 0) -> dict:
    return read_item_dicts(path)[index]


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("alias", "sensor_id"),
    [
        ("s2", "sentinel-2-l2a"),
        ("S2", "sentinel-2-l2a"),
        ("s2-l1c", "sentinel-2-l1c"),
        ("s1", "sentinel-1-rtc"),
        ("s1-grd", "sentinel-1-grd"),
        ("dem", "cop-dem-glo-30"),
        ("landsat", "landsat-c2-l2"),
        ("hls", "hls"),
        ("sentinel-2-l2a", "sentinel-2-l2a"),
    ],
)
def test_aliases_resolve(alias, sensor_id):
    assert get_sensor(alias).id == sensor_id


def test_unknown_sensor_lists_choices():
    with pytest.raises(InputError, match="unknown sensor 'sentinel-9'.*s2"):
        get_sensor("sentinel-9")


def test_sensor_list_rejects_repeats():
    assert [sensor.id for sensor in parse_sensor_list("s2, s1,dem")] == ["sentinel-2-l2a", "sentinel-1-rtc", "cop-dem-glo-30"]
    with pytest.raises(InputError, match="named twice"):
        parse_sensor_list("s2,sentinel-2-l2a")


def test_sensor_list_ends_with_description():
    sensors = parse_sensor_list("s2, dem,list-cam@1.5:red=665,nir=842;scale=0.1")
    assert [sensor.id for sensor in sensors] == ["sentinel-2-l2a", "cop-dem-glo-30", "list-cam"]
    assert [band.name for band in sensors[2].bands] == ["red", "nir"]
    assert [sensor.id for sensor in parse_sensor_list("list-cam@1.5:665,842")] == ["list-cam"]


def test_every_packaged_sensor_is_complete():
    catalog_names = {catalog.name for catalog in list_catalogs()}
    for sensor in list_sensors(include_registered=False):
        assert sensor.default_catalog in catalog_names, sensor.id
        assert set(sensor.catalogs) <= catalog_names, sensor.id
        assert sensor.collections(sensor.default_catalog), sensor.id
        assert "not published" in sensor.stats_source, sensor.id
        for band in sensor.select():
            assert band.mean is not None, (sensor.id, band.name)
            assert band.std is not None, (sensor.id, band.name)
            assert band.std > 0, (sensor.id, band.name)
            assert isinstance(band.spec(orbit="asc"), BandSpec)
        for tables in sensor.catalogs.values():
            for table in tables.values():
                for name in table:
                    if sensor.mask is None or name != sensor.mask.name:
                        sensor.band(name)


def test_lenient_band_names():
    sensor = get_sensor("s2")
    assert normalise_band_name("B01") == normalise_band_name("b1") == normalise_band_name("B_01")
    assert sensor.band("B1").name == "B01"
    assert sensor.band("coastal").name == "B01"
    assert sensor.band("b8a").name == "B8A"
    assert sensor.band("B8").name == "B08"
    assert sensor.band("nir08").name == "B8A"
    with pytest.raises(InputError, match="has no band 'B10'"):
        sensor.band("B10")


def test_band_specs_carry_physics():
    specs = get_sensor("s2").band_specs(["B4", "B8", "B11"])
    assert [spec.wavelength_nm for spec in specs] == [665.0, 842.0, 1610.0]
    assert all(spec.kind == "optical" for spec in specs)
    dem = get_sensor("dem").band_specs()
    assert [spec.elevation for spec in dem] == ["dsm", "slope"]
    assert get_sensor("dem").band("slope").derived_from == "dsm"


def test_radar_band_specs_need_orbit():
    sensor = get_sensor("s1")
    with pytest.raises(InputError, match="needs an orbit direction"):
        sensor.band_specs()
    specs = sensor.band_specs(orbit="des")
    assert [spec.radar_key for spec in specs] == ["des_vv", "des_vh"]


def test_native_gsd_per_band():
    sensor = get_sensor("s2")
    assert sensor.gsd == 10.0
    assert sensor.band_gsd("B02") == 10.0
    assert sensor.band_gsd("B05") == 20.0
    assert sensor.band_gsd("B01") == 60.0


def test_normalisation_arrays():
    mean, std = get_sensor("s2").normalisation(["B02", "B04"])
    assert mean.dtype == np.float32
    assert mean.tolist() == pytest.approx([0.08843, 0.12975])
    assert std.tolist() == pytest.approx([0.11552, 0.13681])


# ----------------------------------------------------------------------------- recorded items


def test_earth_search_s2_mapping():
    sensor = get_sensor("s2")
    item = _item(EARTH_SEARCH / "S2B_33TWN_20220226_0_L2A.json")
    expected = {"B01": "coastal", "B02": "blue", "B04": "red", "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22"}
    for band, key in expected.items():
        assert sensor.asset_key(item, band) == key
    assert sensor.asset_key(item, "scl") == "scl"


def test_planetary_computer_s2_mapping():
    sensor = get_sensor("s2")
    for item in read_item_dicts(PLANETARY / "sentinel-2-l2a_4items_array.json"):
        for band in sensor.select():
            assert sensor.asset_key(item, band.name) == band.name
        assert sensor.asset_key(item, "scl") == "SCL"


def test_s1_rtc_mapping_and_orbit():
    sensor = get_sensor("s1")
    for item in read_item_dicts(PLANETARY / "sentinel-1-rtc_4items_array.json"):
        assert sensor.asset_key(item, "VV") == "vv"
        assert sensor.asset_key(item, "vh") == "vh"
        assert orbit_direction(item) == "des"


def test_orbit_direction_variants():
    item = {"id": "x", "properties": {"sat:orbit_state": "ascending"}}
    assert orbit_direction(item) == "asc"
    with pytest.raises(InputError, match="has no sat:orbit_state"):
        orbit_direction({"id": "x", "properties": {}})
    assert orbit_direction({"id": "x", "properties": {}}, default="des") == "des"


@pytest.mark.parametrize(
    "path", [EARTH_SEARCH / "cop-dem-glo-30_search_10items.json", PLANETARY / "cop-dem-glo-30_4items_array.json"]
)
def test_dem_mapping(path):
    sensor = get_sensor("dem")
    for item in read_item_dicts(path):
        assert sensor.asset_key(item, "dsm") == "data"


def test_landsat_mapping():
    sensor = get_sensor("landsat")
    item = next(i for i in read_item_dicts(EARTH_SEARCH / "sentinel-2-l2a+landsat-c2-l2_search_2items.json") if i["collection"] == "landsat-c2-l2")
    assert [sensor.asset_key(item, band.name) for band in sensor.select()] == [
        "coastal", "blue", "green", "red", "nir08", "swir16", "swir22"
    ]
    assert sensor.asset_key(item, "qa_pixel") == "qa_pixel"
    scaling = scaling_for_item(sensor, item, "B4")
    assert (scaling.scale, scaling.offset, scaling.source) == (2.75e-05, -0.2, "raster:bands")


def test_missing_asset_names_the_assets():
    item = _item(PLANETARY / "cop-dem-glo-30_4items_array.json")
    with pytest.raises(InputError, match="has no asset for band 'B04'.*data"):
        get_sensor("s2").asset_key(item, "B04")


# ----------------------------------------------------------------------------- radiometry


def test_earth_search_offset_from_raster_bands():
    new = scaling_for_item("s2", _item(EARTH_SEARCH / "S2B_33TWN_20220226_0_L2A.json"), "B04")
    old = scaling_for_item("s2", _item(EARTH_SEARCH / "S2A_33TWN_20210629_0_L2A.json"), "B04")
    assert (new.scale, new.offset, new.source, new.processing_baseline) == (0.0001, -0.1, "raster:bands", "04.00")
    assert (old.scale, old.offset, old.source, old.processing_baseline) == (0.0001, 0.0, "raster:bands", "03.00")


def test_planetary_computer_offset_from_baseline():
    item = _item(PLANETARY / "sentinel-2-l2a_4items_array.json")
    assert "raster:bands" not in item["assets"]["B04"]
    scaling = scaling_for_item("s2", item, "red")
    assert scaling.source == "s2:processing_baseline"
    assert scaling.processing_baseline == "05.10"
    assert scaling.offset == pytest.approx(-0.1)
    assert scaling.nodata == 0.0

    old = copy.deepcopy(item)
    old["properties"]["s2:processing_baseline"] = "03.01"
    assert scaling_for_item("s2", old, "red").offset == 0.0


def test_baseline_from_product_uri():
    item = {"id": "x", "properties": {"s2:product_uri": "S2B_MSIL2A_20220226T095029_N0400_R079_T33TWN_20220226T121440.SAFE"}}
    assert processing_baseline(item) == "04.00"


def test_missing_baseline_warns(caplog):
    item = copy.deepcopy(_item(PLANETARY / "sentinel-2-l2a_4items_array.json"))
    del item["properties"]["s2:processing_baseline"]
    del item["properties"]["s2:product_uri"]
    with caplog.at_level(logging.WARNING, logger="ramen_core.sensors"):
        scaling = scaling_for_item("s2", item, "B04")
    assert scaling.source == "registry"
    assert scaling.offset == 0.0
    assert "no processing baseline" in caplog.text


def test_scaling_apply_and_record():
    scaling = scaling_for_item("s2", _item(EARTH_SEARCH / "S2B_33TWN_20220226_0_L2A.json"), "B04")
    values = scaling.apply(np.array([[0, 1000, 1500]], dtype=np.uint16))
    assert values.dtype == np.float32
    assert math.isnan(values[0, 0])
    assert values[0, 1:].tolist() == pytest.approx([0.0, 0.05], abs=1e-6)
    record = scaling.to_dict()
    assert record["offset"] == -0.1
    assert record["source"] == "raster:bands"
    assert record["asset"] == "red"
    json.dumps(record)


def test_declared_offset_disagrees_with_pixels(caplog):
    """The recorded Earth Search item declares -0.1 but its pixels lack the +1000 DN."""
    folder = SERIES_33TWM / "S2B_33TWM_20230813_0_L2A"
    item = _item(folder / "S2B_33TWM_20230813_0_L2A.untouched.json")
    scaling = scaling_for_item("s2", item, "B04")
    assert scaling.offset == -0.1
    with rasterio.open(folder / "B04.tif") as dataset:
        raw = dataset.read(1)
    with caplog.at_level(logging.WARNING, logger="ramen_core.sensors"):
        share = check_negative_share(raw, scaling, item)
    assert share > 0.5
    assert "disagree" in caplog.text
    assert "S2B_33TWM_20230813_0_L2A" in caplog.text


def test_consistent_offset_does_not_warn(caplog):
    item = _item(EARTH_SEARCH / "S2B_33TWN_20220226_0_L2A.json")
    scaling = scaling_for_item("s2", item, "B04")
    raw = np.arange(1000, 5000, 7, dtype=np.uint16)
    with caplog.at_level(logging.WARNING, logger="ramen_core.sensors"):
        share = check_negative_share(raw, scaling, item)
    assert share == 0.0
    assert caplog.text == ""


def test_s1_linear_to_db():
    item = _item(PLANETARY / "sentinel-1-rtc_4items_array.json")
    scaling = scaling_for_item("s1", item, "vv")
    assert scaling.to_db is True
    assert scaling.nodata == -32768.0
    values = scaling.apply(np.array([0.1, 1.0, -32768.0, 0.0], dtype=np.float32))
    assert values[:2].tolist() == pytest.approx([-10.0, 0.0])
    assert math.isnan(values[2])
    assert math.isnan(values[3])


def test_s1_declared_db_not_converted():
    item = copy.deepcopy(_item(PLANETARY / "sentinel-1-rtc_4items_array.json"))
    item["assets"]["vv"]["raster:bands"][0]["unit"] = "dB"
    scaling = scaling_for_item("s1", item, "vv")
    assert scaling.to_db is False
    assert scaling.db_source == "raster:bands unit"


def test_s1_negative_pixels_not_converted_twice():
    scaling = scaling_for_item("s1", _item(PLANETARY / "sentinel-1-rtc_4items_array.json"), "vh")
    in_db = np.array([-21.0, -18.5, -25.0, -32768.0], dtype=np.float32)
    resolved = resolve_db_conversion(scaling, in_db)
    assert resolved.to_db is False
    assert resolved.db_source == "negative pixels"
    assert resolved.apply(in_db)[:3].tolist() == pytest.approx([-21.0, -18.5, -25.0])
    linear = np.array([0.01, 0.2, 0.05], dtype=np.float32)
    assert resolve_db_conversion(scaling, linear).to_db is True


# ----------------------------------------------------------------------------- masks


def test_scl_mask_classes():
    mask = get_sensor("s2").mask
    scl = np.arange(12, dtype=np.uint8)
    invalid = mask.invalid_pixels(scl)
    assert np.flatnonzero(invalid).tolist() == [0, 1, 3, 8, 9, 10]
    assert np.flatnonzero(mask.invalid_pixels(scl, invalid=[9])).tolist() == [9]


def test_landsat_qa_bits():
    mask = get_sensor("landsat").mask
    clear = 1 << 6
    cloud = (1 << 3) | (1 << 6)
    fill = 1
    assert mask.invalid_pixels(np.array([clear, cloud, fill], dtype=np.uint16)).tolist() == [False, True, True]


# ----------------------------------------------------------------------------- slope


def test_slope_of_inclined_plane():
    cols = np.arange(8, dtype=np.float32)
    dsm = np.tile(cols * 30.0 * math.tan(math.radians(30)), (6, 1))
    slope = slope_degrees(dsm, 30.0)
    assert slope.dtype == np.float32
    assert slope.shape == (6, 8)
    assert np.allclose(slope, 30.0, atol=1e-3)


def test_slope_rectangular_pixels_and_time_axis():
    rows = np.arange(5, dtype=np.float32)[:, None]
    dsm = np.repeat((rows * 20.0 * np.ones((1, 4), dtype=np.float32))[None], 2, axis=0)
    slope = slope_degrees(dsm, (10.0, -20.0))
    assert slope.shape == (2, 5, 4)
    assert np.allclose(slope, 45.0, atol=1e-3)
    assert np.allclose(slope_degrees(np.zeros((3, 3)), 10.0), 0.0)


def test_slope_nan_spreads_to_neighbours():
    dsm = np.zeros((5, 5), dtype=np.float32)
    dsm[2, 2] = np.nan
    slope = slope_degrees(dsm, 10.0)
    assert np.isnan(slope[2, 1])
    assert np.isnan(slope[1, 2])
    assert slope[0, 0] == 0.0


@pytest.mark.parametrize(("dsm", "pixel_size", "message"), [(np.zeros((3, 3)), 0.0, "positive"), (np.zeros((1, 5)), 10.0, "2x2")])
def test_slope_invalid_input(dsm, pixel_size, message):
    with pytest.raises(InputError, match=message):
        slope_degrees(dsm, pixel_size)


# ----------------------------------------------------------------------------- user sensors


def test_user_sensor_from_toml(tmp_path):
    path = tmp_path / "camera.toml"
    path.write_text(
        'id = "test-camera"\ngsd = 3.0\nnodata = 0\nscale = 0.01\ncollections = ["camera-l2"]\n'
        '[[bands]]\nname = "red"\nwavelength_nm = 665\nmean = 0.1\nstd = 0.05\n'
        '[[bands]]\nname = "nir"\nwavelength_nm = 842\n'
        '[[bands]]\nname = "hh"\npolarisation = "hh"\n'
    )
    sensor = get_sensor(str(path))
    assert sensor.id == "test-camera"
    assert [band.kind for band in sensor.bands] == ["optical", "optical", "radar"]
    assert sensor.collections() == ["camera-l2"]
    assert get_sensor("test-camera") is sensor
    assert sensor.band_specs(["red", "hh"], orbit="asc")[1].radar_key == "asc_hh"
    mean, std = sensor.normalisation(["red", "nir"])
    assert mean.tolist() == pytest.approx([0.1, 0.0])
    assert std.tolist() == pytest.approx([0.05, 1.0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('id = "x"\n[[bands]]\nname = "a"\nwavelength_nm = 665\n', "missing required key 'gsd'"),
        ('id = "x"\ngsd = 10\n[[bands]]\nname = "a"\nwavelength_nm = 0.665\n', "looks like micrometres"),
        ('id = "x"\ngsd = 10\n[[bands]]\nname = "a"\n', "needs wavelength_nm"),
        ('id = "x"\ngsd = -1\n[[bands]]\nname = "a"\nwavelength_nm = 665\n', "positive number of metres"),
        ('id = "x" gsd', "not valid TOML"),
    ],
)
def test_user_sensor_file_invalid(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_sensor_file(path)


_ONE_BAND = '[[bands]]\nname = "a"\nwavelength_nm = 665\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('id = "x"\ngsd = 10\n[bands]\nname = "a"\nwavelength_nm = 665\n', "array of tables"),
        ('id = "x"\ngsd = 10\nbands = ["a"]\n', "array of tables"),
        ('id = "x"\ngsd = 10\n' + _ONE_BAND + '[mask]\nkind = "classes"\n', r"\[mask\] must be a table with a name"),
        ('id = "x"\ngsd = 10\n' + _ONE_BAND + '[mask]\nname = "q"\ninvalid = ["cloud"]\n', "list of integer"),
        ('id = "x"\ngsd = 10\ncatalogs = "earth-search"\n' + _ONE_BAND, "catalogs must map"),
        ('id = "x"\ngsd = 10\ncatalogs = {earth-search = "x"}\n' + _ONE_BAND, "catalogs.earth-search"),
        ('id = "x"\ngsd = 10\ncollections = "x"\n' + _ONE_BAND, "collections must be a list"),
        ('id = "x"\ngsd = inf\n' + _ONE_BAND, "positive number of metres"),
        ('id = "x"\ngsd = 10\n[[bands]]\nname = "a"\nwavelength_nm = 665\ngsd = nan\n', "positive number of metres"),
        ('id = "x"\ngsd = 10\n' + _ONE_BAND + '[[bands]]\nname = "A"\nwavelength_nm = 842\n', "the same name"),
        ('id = "x"\ngsd = 10\n[[bands]]\nname = "B1"\nwavelength_nm = 443\n[[bands]]\nname = "B01"\nwavelength_nm = 490\n', "the same name"),
        ('id = "x"\ngsd = 10\nradiometry = "sentinel2"\n' + _ONE_BAND, "unknown radiometry"),
        ('id = "x"\ngsd = 10\ndefault_catalog = "earth_search"\n' + _ONE_BAND, "unknown default_catalog"),
        ('id = "x"\ngsd = 10\ndefault_bands = ["b"]\n' + _ONE_BAND, "has no band 'b'"),
    ],
    ids=[
        "bands-table", "bands-strings", "mask-no-name", "mask-text-classes", "catalogs-string",
        "catalogs-flat", "collections-string", "gsd-inf", "band-gsd-nan", "repeated-name",
        "repeated-lenient-name", "radiometry", "default-catalog", "default-band",
    ],
)
def test_user_sensor_file_structure_invalid(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_sensor_file(path)


def test_user_sensor_file_unreadable(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_sensor_file(binary)
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="cannot be read"):
        load_sensor_file(folder)


def test_user_sensor_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        get_sensor(str(tmp_path / "absent.toml"))


def test_sensor_description():
    sensor = parse_sensor_description("spot6@1.5:red=665,green=560,blue=490,nir=835;scale=0.0001;nodata=0;collection=spot-l2")
    assert sensor.gsd == 1.5
    assert [band.name for band in sensor.bands] == ["red", "green", "blue", "nir"]
    assert sensor.band("nir").wavelength_nm == 835.0
    assert (sensor.scale, sensor.nodata) == (0.0001, 0.0)
    assert sensor.collections() == ["spot-l2"]
    radar = parse_sensor_description("sar-x@5:vv,vh")
    assert [band.polarisation for band in radar.bands] == ["vv", "vh"]


@pytest.mark.parametrize("text", ["spot6:665,560", "spot6@1.5:red=purple", "spot6@1.5:665;colour=blue"])
def test_sensor_description_invalid(text):
    with pytest.raises(ConfigError):
        parse_sensor_description(text)


# ----------------------------------------------------------------------------- CLI


def _invoke(*args: str):
    _register_commands()
    return runner.invoke(app, ["sensors", *args], env={"COLUMNS": "200"})


def test_cli_lists_every_sensor():
    result = _invoke()
    assert result.exit_code == 0, result.output
    for alias in ("s2", "s2-l1c", "s1", "s1-grd", "dem", "landsat", "hls"):
        assert alias in result.output
    assert "earth-search" in result.output


def test_cli_shows_bands():
    result = _invoke("s2")
    assert result.exit_code == 0, result.output
    assert "842 nm" in result.output
    assert "nir08" in result.output
    assert "not published" in " ".join(result.output.split())


def test_cli_unknown_sensor():
    result = _invoke("sentinel-9")
    assert result.exit_code == 1
    assert "unknown sensor 'sentinel-9'" in result.output
    assert "Traceback" not in result.output


def test_cli_invalid_sensor_file_message_intact(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('id = "x"\ngsd = 10\n[bands]\nname = "a"\nwavelength_nm = 665\n')
    result = _invoke(str(path))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    # The message names the TOML syntax in square brackets, which must not be read as markup.
    assert "one [[bands]] entry per band" in " ".join(result.output.split())
