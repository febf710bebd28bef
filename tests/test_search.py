"""Search: query validation, local catalogs, a real STAC API with injected faults, the CLI."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path

import planetary_computer
import pytest
import rustac
from typer.testing import CliRunner

from ramen_cli.app import _register_commands, app
from ramen_core.catalog import (
    build_query,
    open_client,
    parse_bbox,
    parse_datetime_range,
    parse_geometry,
    read_local_items,
    search,
)
from ramen_core.catalog.search import _collections_for
from ramen_core.catalog.stac_api import _signing_modifier, cloud_filter_parameters
from ramen_core.errors import CatalogError, EmptyResultError, InputError
from ramen_core.sensors import get_catalog, get_sensor
from stac_server import Fault, localise_hrefs, read_item_dicts

DATA = Path(__file__).parent / "data"
STAC_ITEMS = DATA / "stac_items"
SYNTHETIC = DATA / "synthetic_items"
SERIES_35MNM = STAC_ITEMS / "planetary-computer" / "sentinel-2-l2a_site2-2020_jun_jul-35MNM_13items.geojson"
# Tile 35MNM (Zambia/DR Congo border) and the 33TWM test window (Slovenia/Austria).
BBOX_35MNM = (27.2, -8.0, 27.8, -7.4)
BBOX_33TWM = (15.1, 46.8, 15.6, 47.0)

runner = CliRunner()


def _server_items() -> list[dict]:
    items = read_item_dicts(
        SERIES_35MNM,
        STAC_ITEMS / "planetary-computer" / "sentinel-1-rtc_4items_array.json",
        STAC_ITEMS / "earth-search-v1" / "cop-dem-glo-30_search_10items.json",
    )
    for case in ("mixed_seconds", "proj_code_only"):
        folder = SYNTHETIC / case
        items += [localise_hrefs(item, folder) for item in read_item_dicts(*sorted(folder.glob("*.json")))]
    return items


@pytest.fixture(scope="module")
def api_url(stac_api) -> str:
    return stac_api(_server_items())


def _ids(result, sensor_id: str = "sentinel-2-l2a") -> list[str]:
    return [item.id for item in result.items[sensor_id]]


# ----------------------------------------------------------------------------- query


def test_bbox_valid_and_string_form():
    assert parse_bbox([10, 40, 11, 41]) == (10.0, 40.0, 11.0, 41.0)
    assert parse_bbox("10,40 11 41") == (10.0, 40.0, 11.0, 41.0)


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ([11, 40, 10, 41], "west 11.0 is greater than east 10.0"),
        ([10, 41, 11, 40], "south 41.0 is greater than north 40.0"),
        ([10, -91, 11, 41], "latitude -91.0 is outside"),
        ([10, 40, 11, 95], "latitude 95.0 is outside"),
        ([-181, 40, 11, 41], "longitude -181.0 is outside"),
        ([10, 40, 11], "give four numbers"),
        (["a", 40, 11, 41], "give four numbers"),
    ],
)
def test_bbox_invalid(bbox, message):
    with pytest.raises(InputError, match=message):
        parse_bbox(bbox)


def test_datetime_range_dates_cover_whole_days():
    start, end = parse_datetime_range("2023-08-10/2023-08-20")
    assert start == datetime(2023, 8, 10, tzinfo=timezone.utc)
    assert end == datetime(2023, 8, 20, 23, 59, 59, 999999, tzinfo=timezone.utc)


def test_datetime_range_open_and_partial():
    assert parse_datetime_range("../2023-08-20")[0] is None
    assert parse_datetime_range("2023-08-10/..")[1] is None
    start, end = parse_datetime_range("2024-02")
    assert start == datetime(2024, 2, 1, tzinfo=timezone.utc)
    assert end == datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone.utc)
    start, end = parse_datetime_range("2023-08-10T10:00:00.5Z/2023-08-10T13:00:00+02:00")
    assert start == datetime(2023, 8, 10, 10, 0, 0, 500000, tzinfo=timezone.utc)
    assert end == datetime(2023, 8, 10, 11, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text", ["2023-13-01/2023-12-01", "yesterday", "2023-08-20/2023-08-10"])
def test_datetime_range_invalid(text):
    with pytest.raises(InputError):
        parse_datetime_range(text)


def test_geometry_from_feature_collection_file(tmp_path):
    path = tmp_path / "area.geojson"
    polygon = {"type": "Polygon", "coordinates": [[[15.3, 46.7], [15.5, 46.7], [15.5, 46.9], [15.3, 46.7]]]}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": polygon, "properties": {}}]}))
    geometry = parse_geometry(path)
    assert geometry["type"] == "Polygon"


def test_geometry_outside_lonlat_range():
    with pytest.raises(InputError, match="outside longitude"):
        parse_geometry({"type": "Point", "coordinates": [515340.0, 5200020.0]})


def test_query_rejects_bbox_and_geometry_together():
    with pytest.raises(InputError, match="not both"):
        build_query(bbox=[10, 40, 11, 41], intersects={"type": "Point", "coordinates": [10.5, 40.5]})


# ----------------------------------------------------------------------------- local catalogs


def test_local_formats_give_same_items(tmp_path):
    dicts = read_item_dicts(SERIES_35MNM)
    expected = sorted(item["id"] for item in dicts)

    array_path = tmp_path / "array.json"
    array_path.write_text(json.dumps(dicts))
    ndjson_path = tmp_path / "items.ndjson"
    ndjson_path.write_text("\n".join(json.dumps(item) for item in dicts) + "\n")
    parquet_path = tmp_path / "items.parquet"
    rustac.write_sync(str(parquet_path), dicts)
    folder = tmp_path / "folder"
    folder.mkdir()
    for item in dicts:
        (folder / f"{item['id']}.json").write_text(json.dumps(item))

    for source in (SERIES_35MNM, array_path, ndjson_path, parquet_path, folder, f"file://{array_path}"):
        ids = sorted(item.id for item in read_local_items(source))
        assert ids == expected, source


def test_local_static_catalog_resolves_hrefs():
    items = read_local_items(DATA / "s2l2a_timeseries_33TWM" / "catalog.json")
    assert len(items) == 5
    href = items[0].assets["red"].href
    assert Path(href).is_absolute()
    assert Path(href).is_file()


def test_local_folder_resolves_relative_hrefs():
    items = read_local_items(SYNTHETIC / "same_pass")
    assert sorted(item.id for item in items) == ["S2A_SYNTH_SAMEPASS_A", "S2A_SYNTH_SAMEPASS_B"]
    for item in items:
        assert Path(item.assets["blue"].href).is_file()


def test_local_search_filters_area_time_cloud():
    result = search(
        sensors="s2", bbox=BBOX_35MNM, datetime="2020-06-01/2020-06-20", catalog=str(SERIES_35MNM), max_cloud=5
    )
    # 2020-06-01 has 6.5 % cloud cover, so three of the four dates in range remain.
    assert _ids(result) == [
        "S2B_MSIL2A_20200606T080609_R078_T35MNM_20200826T094900",
        "S2A_MSIL2A_20200611T080611_R078_T35MNM_20200826T230619",
        "S2B_MSIL2A_20200616T080609_R078_T35MNM_20201027T073925",
    ]


def test_local_search_outside_area_is_empty():
    with pytest.raises(EmptyResultError, match="no items found for sentinel-2-l2a"):
        search(sensors="s2", bbox=BBOX_33TWM, catalog=str(SERIES_35MNM))


def test_local_missing_path():
    with pytest.raises(InputError, match="not found"):
        read_local_items(DATA / "no-such-catalog.json")


def test_local_file_not_stac(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(InputError, match="is not a STAC item"):
        read_local_items(path)


_ITEM = {"type": "Feature", "stac_version": "1.0.0", "id": "x", "links": [], "assets": {}, "collection": "sentinel-2-l2a"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"type": "Feature", "id": "x"}, "item 'x' is not a valid STAC item"),
        ({**_ITEM, "geometry": None, "bbox": [15, 46, 16, 47], "properties": {"datetime": None}}, "start_datetime"),
        ({"type": "Catalog", "id": "c", "stac_version": "1.0.0", "links": []}, "missing field 'description'"),
        (
            {"type": "Catalog", "id": "c", "description": "d", "stac_version": "1.0.0",
             "links": [{"rel": "item", "href": "./missing.json"}]},
            "does not resolve",
        ),
    ],
    ids=["item-without-fields", "item-without-datetime", "catalog-without-description", "catalog-broken-link"],
)
def test_local_invalid_stac_named(tmp_path, document, message):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(document))
    with pytest.raises(InputError, match=message):
        read_local_items(path)


def test_local_folder_skips_folders_named_json(tmp_path):
    (tmp_path / "not-a-file.json").mkdir()
    item = read_item_dicts(SERIES_35MNM)[0]
    (tmp_path / "item.json").write_text(json.dumps(item))
    assert [found.id for found in read_local_items(tmp_path)] == [item["id"]]


def test_local_unreadable_ndjson(tmp_path):
    path = tmp_path / "items.ndjson"
    path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(InputError, match="not UTF-8"):
        read_local_items(path)


@pytest.mark.parametrize("catalog", ["./no-such-items.json", "no-such-items.json", "/no/such/folder"])
def test_search_missing_local_path_named(catalog):
    with pytest.raises(InputError, match=f"local catalog '{catalog}' not found"):
        search(sensors="s2", bbox=BBOX_35MNM, catalog=catalog)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"timeout": 0}, "invalid timeout"), ({"max_retries": -1}, "invalid retries"), ({"page_size": 0}, "invalid page size")],
)
def test_search_rejects_bad_request_options(options, message):
    with pytest.raises(InputError, match=message):
        search(sensors="s2", bbox=BBOX_35MNM, catalog=str(SERIES_35MNM), **options)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"type": "Feature", "geometry": None}, "feature has no geometry"),
        ({"type": "FeatureCollection", "features": [{"type": "Feature", "id": "f1"}]}, "feature 'f1' has no geometry"),
        ({"type": "Polygon"}, "missing 'coordinates'"),
        ([15.3, 46.7], "invalid GeoJSON geometry"),
    ],
)
def test_geometry_invalid_named(value, message):
    with pytest.raises(InputError, match=message):
        parse_geometry(value)


def test_datetime_range_with_two_slashes_rejected():
    with pytest.raises(InputError, match="one START/END pair"):
        parse_datetime_range("2023-08-01/2023-08-10/2023-08-20")


def test_result_written_file_reads_back(tmp_path):
    result = search(sensors="s2", bbox=BBOX_35MNM, datetime="2020-07", catalog=str(SERIES_35MNM))
    path = result.write(tmp_path / "out" / "items.json")
    again = search(sensors="s2", bbox=BBOX_35MNM, catalog=str(path))
    assert _ids(again) == _ids(result)
    assert list(path.parent.iterdir()) == [path]


# ----------------------------------------------------------------------------- STAC API


def test_api_pages_to_the_end(api_url):
    result = search(sensors="s2", bbox=BBOX_35MNM, catalog=api_url, page_size=2)
    local = search(sensors="s2", bbox=BBOX_35MNM, catalog=str(SERIES_35MNM))
    assert len(result.items["sentinel-2-l2a"]) == 13
    assert _ids(result) == _ids(local)


def test_api_limit_per_sensor(api_url):
    result = search(sensors="s2", bbox=BBOX_35MNM, catalog=api_url, page_size=2, limit=5)
    assert len(result.items["sentinel-2-l2a"]) == 5


def test_api_client_side_cloud_filter(api_url):
    client = open_client(get_catalog(api_url))
    assert cloud_filter_parameters(client, get_sensor("s2"), 5.0) == {}
    result = search(sensors="s2", bbox=BBOX_35MNM, catalog=api_url, max_cloud=5, page_size=4)
    assert len(result.items["sentinel-2-l2a"]) == 9
    assert all(item.properties["eo:cloud_cover"] <= 5 for item in result.items["sentinel-2-l2a"])


def test_cloud_filter_uses_declared_extension(api_url):
    client = open_client(get_catalog(api_url))
    client.add_conforms_to("FILTER")
    assert cloud_filter_parameters(client, get_sensor("s2"), 5.0) == {
        "filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 5.0]},
        "filter_lang": "cql2-json",
    }
    client.add_conforms_to("QUERY")
    assert cloud_filter_parameters(client, get_sensor("s2"), 5.0) == {"query": {"eo:cloud_cover": {"lte": 5.0}}}
    assert cloud_filter_parameters(client, get_sensor("s1"), 5.0) == {}


def test_api_several_sensors(api_url):
    result = search(sensors="s2,s1,dem", bbox=(14.0, 30.0, 16.0, 33.0), catalog=api_url, require_all=False)
    assert len(result.items["sentinel-1-rtc"]) == 3
    assert result.items["sentinel-2-l2a"] == []
    assert result.items["cop-dem-glo-30"] == []


def test_api_proj_code_only_item(api_url):
    result = search(sensors="s2", bbox=BBOX_33TWM, datetime="2023-08-15", catalog=api_url)
    rows = {row["id"]: row for row in result.rows("sentinel-2-l2a")}
    assert rows["S2A_SYNTH_PROJCODE"]["crs"] == "EPSG:32633"


def test_api_mixed_fractional_seconds(api_url):
    result = search(sensors="s2", bbox=BBOX_33TWM, datetime="2023-08-10/2023-08-15T09:57:57Z", catalog=api_url)
    # 2023-08-15T09:57:57.5Z is half a second after the end of the range.
    assert _ids(result) == ["S2A_SYNTH_SECONDS_1", "S2A_SYNTH_SECONDS_2", "S2A_SYNTH_PROJCODE"]
    stamps = [row["datetime"] for row in result.rows("sentinel-2-l2a")]
    assert stamps == ["2023-08-10T09:57:57Z", "2023-08-13T10:07:54.024000Z", "2023-08-15T09:57:57Z"]


def test_api_mixed_seconds_match_local(api_url):
    local = search(sensors="s2", bbox=BBOX_33TWM, datetime="2023-08-15T09:57:57.2Z/..", catalog=str(SYNTHETIC / "mixed_seconds"))
    remote = search(sensors="s2", bbox=BBOX_33TWM, datetime="2023-08-15T09:57:57.2Z/..", catalog=api_url)
    assert _ids(local) == ["S2A_SYNTH_SECONDS_3"]
    assert _ids(remote) == ["S2A_SYNTH_SECONDS_3"]


def test_api_assets_are_local_files(api_url):
    result = search(sensors="s2", bbox=BBOX_33TWM, datetime="2023-08-10", catalog=api_url)
    href = result.items["sentinel-2-l2a"][0].assets["blue"].href
    assert href.startswith("file://")
    assert Path(href.removeprefix("file://")).is_file()


def test_duplicates_across_pages(api_url, fault_proxy, caplog):
    proxy = fault_proxy(api_url, Fault("overlap"))
    with caplog.at_level(logging.WARNING, logger="ramen_core.catalog"):
        result = search(sensors="s2", bbox=BBOX_35MNM, catalog=proxy.url, page_size=3)
    assert len(result.items["sentinel-2-l2a"]) == 13
    assert len(set(_ids(result))) == 13
    assert any("overlap" in outcome for outcome in proxy.log.outcomes())
    assert "repeated items" in caplog.text


def test_503_then_success(api_url, fault_proxy):
    proxy = fault_proxy(api_url, Fault("503", on_request=1))
    result = search(sensors="s2", bbox=BBOX_35MNM, catalog=proxy.url, page_size=5, backoff_factor=0.01)
    assert len(result.items["sentinel-2-l2a"]) == 13
    assert proxy.log.outcomes()[:2] == ["503", "200"]


def test_429_then_success(api_url, fault_proxy):
    proxy = fault_proxy(api_url, Fault("429", on_request=2))
    result = search(sensors="s2", bbox=BBOX_35MNM, catalog=proxy.url, page_size=5, backoff_factor=0.01)
    assert len(result.items["sentinel-2-l2a"]) == 13
    assert proxy.log.outcomes()[:3] == ["200", "429", "200"]


def test_connection_reset_on_third_page(api_url, fault_proxy):
    proxy = fault_proxy(api_url, Fault("reset", on_request=3))
    result = search(sensors="s2", bbox=BBOX_35MNM, catalog=proxy.url, page_size=2, backoff_factor=0.01)
    assert len(result.items["sentinel-2-l2a"]) == 13
    assert proxy.log.outcomes()[:4] == ["200", "200", "reset", "200"]


def test_retries_exhausted(api_url, fault_proxy):
    faults = [Fault("503", on_request=number) for number in range(1, 10)]
    proxy = fault_proxy(api_url, *faults)
    with pytest.raises(CatalogError, match="failed"):
        search(sensors="s2", bbox=BBOX_35MNM, catalog=proxy.url, max_retries=2, backoff_factor=0.01)
    assert proxy.log.outcomes() == ["503", "503", "503"]


@pytest.fixture
def static_http(tmp_path):
    """Serve ``tmp_path`` over plain HTTP on 127.0.0.1, as a web server hosts a static catalog."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_static_catalog_url_is_not_an_api(static_http):
    folder, url = static_http
    catalog = {"type": "Catalog", "id": "static", "description": "d", "stac_version": "1.0.0", "links": []}
    (folder / "catalog.json").write_text(json.dumps(catalog))
    with pytest.raises(CatalogError, match="STAC catalog without item search"):
        search(sensors="s2", bbox=BBOX_35MNM, catalog=f"{url}/catalog.json", max_retries=0)


def test_html_page_is_not_an_api(static_http):
    folder, url = static_http
    (folder / "index.html").write_text("<html><body>hello</body></html>")
    with pytest.raises(CatalogError, match="the answer is not JSON"):
        search(sensors="s2", bbox=BBOX_35MNM, catalog=f"{url}/", max_retries=0)


def _get_only_api(folder: Path, url: str, features: list[dict]) -> str:
    """Write a STAC API landing page that advertises GET search only, and its one search page."""
    landing = {
        "type": "Catalog", "id": "get-only", "description": "d", "stac_version": "1.0.0",
        "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
        "links": [
            {"rel": "self", "href": f"{url}/index.json"},
            {"rel": "root", "href": f"{url}/index.json"},
            {"rel": "search", "href": f"{url}/search", "method": "GET", "type": "application/geo+json"},
        ],
    }
    (folder / "index.json").write_text(json.dumps(landing))
    (folder / "search").write_text(json.dumps({"type": "FeatureCollection", "features": features, "links": []}))
    return f"{url}/index.json"


def test_get_only_api_searched_with_get(static_http):
    folder, url = static_http
    items = read_item_dicts(SERIES_35MNM)[:2]
    catalog = _get_only_api(folder, url, items)
    result = search(sensors="s2", bbox=BBOX_35MNM, catalog=catalog, max_retries=0)
    assert sorted(_ids(result)) == sorted(item["id"] for item in items)


def test_invalid_api_item_skipped(static_http, caplog):
    folder, url = static_http
    good = read_item_dicts(SERIES_35MNM)[0]
    bad = {**good, "id": "no-datetime", "properties": {**good["properties"], "datetime": None}}
    catalog = _get_only_api(folder, url, [bad, good])
    with caplog.at_level(logging.WARNING, logger="ramen_core.catalog.stac_api"):
        result = search(sensors="s2", bbox=BBOX_35MNM, catalog=catalog, max_retries=0)
    assert _ids(result) == [good["id"]]
    assert "skipped invalid item 'no-datetime'" in caplog.text


def test_sensor_without_collection_in_catalog():
    with pytest.raises(InputError, match="no collection in catalog 'earth-search'"):
        search(sensors="s1", bbox=BBOX_33TWM, catalog="earth-search")


def test_signing_only_for_planetary_computer():
    assert _signing_modifier(get_catalog("planetary-computer")) is planetary_computer.sign_inplace
    assert _signing_modifier(get_catalog("earth-search")) is None
    assert _signing_modifier(get_catalog("http://127.0.0.1:9/")) is None


# ----------------------------------------------------------------------------- CLI


def _invoke(*args: str):
    _register_commands()
    return runner.invoke(app, ["search", *args], env={"COLUMNS": "200"})


def _bbox_args(bbox) -> list[str]:
    return ["--bbox", *(str(value) for value in bbox)]


def test_cli_table(api_url):
    result = _invoke(*_bbox_args(BBOX_35MNM), "--datetime", "2020-07-01/2020-07-10", "--catalog", api_url)
    assert result.exit_code == 0, result.output
    assert "S2A_MSIL2A_20200701T080611_R078_T35MNM_20200824T191001" in result.output
    assert "EPSG:32735" in result.output


def test_cli_json_and_output(api_url, tmp_path):
    output = tmp_path / "items.json"
    result = _invoke(*_bbox_args(BBOX_35MNM), "--catalog", api_url, "--json", "--output", str(output), "--max-cloud", "1")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    saved = json.loads(output.read_text())
    assert printed["type"] == "FeatureCollection"
    assert len(printed["features"]) == 7
    assert [feature["id"] for feature in saved["features"]] == [feature["id"] for feature in printed["features"]]


def test_cli_negative_bbox_values(tmp_path):
    result = _invoke("--bbox", "-10", "-5", "-9", "-4", "--catalog", str(SERIES_35MNM))
    assert result.exit_code == 1
    assert "no items found" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bbox", "11", "40", "10", "41"], "west 11.0 is greater than east 10.0"),
        (["--bbox", "10", "40", "11", "91"], "latitude 91.0 is outside"),
        (["--bbox", "10", "40", "11", "41", "--sensors", "s2,sentinel-9"], "unknown sensor 'sentinel-9'"),
        (["--bbox", "10", "40", "11", "41", "--datetime", "2023-08-20/2023-08-01"], "start is after the end"),
        (["--datetime", "2023-08"], "give an area"),
    ],
)
def test_cli_bad_input(args, message):
    result = _invoke(*args, "--catalog", str(SERIES_35MNM))
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--catalog", "./no-such-items.json"], "local catalog './no-such-items.json' not found"),
        (["--geometry", '{"type": "Feature", "geometry": null}'], "feature has no geometry"),
        (["--timeout", "0"], "invalid timeout"),
    ],
)
def test_cli_bad_input_without_traceback(args, message):
    area = [] if "--geometry" in args else _bbox_args(BBOX_35MNM)
    catalog = [] if "--catalog" in args else ["--catalog", str(SERIES_35MNM)]
    result = _invoke(*area, *args, *catalog)
    assert result.exit_code == 1
    # CliRunner keeps an uncaught exception in result.exception instead of printing it.
    assert isinstance(result.exception, SystemExit), result.exception
    assert message in " ".join(result.output.split())


def test_cli_empty_result(api_url):
    result = _invoke(*_bbox_args(BBOX_35MNM), "--datetime", "2019-01-01/2019-12-31", "--catalog", api_url)
    assert result.exit_code == 1
    assert "no items found for sentinel-2-l2a" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_cli_unreachable_catalog():
    # Nothing listens on the discard port of the loopback interface.
    result = _invoke(*_bbox_args(BBOX_35MNM), "--catalog", "http://127.0.0.1:9", "--retries", "0", "--timeout", "2")
    assert result.exit_code == 1
    assert "cannot open the STAC API at http://127.0.0.1:9" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_user_sensor_collections_in_known_catalog():
    sensor = get_sensor("search-cam@10:blue=490,red=665;collection=sentinel-2-l2a")
    assert _collections_for(sensor, get_catalog("earth-search")) == ["sentinel-2-l2a"]
    assert _collections_for(get_sensor("s2"), get_catalog("planetary-computer")) == ["sentinel-2-l2a"]
    assert _collections_for(get_sensor("s1"), get_catalog("http://127.0.0.1:9")) == ["sentinel-1-rtc"]


def test_user_sensor_finds_items_by_bands():
    result = search(sensors=["bands-only@10:B02=490,B04=665"], bbox=BBOX_35MNM, datetime="2020-06", catalog=str(SERIES_35MNM))
    assert len(result.items["bands-only"]) == 6
