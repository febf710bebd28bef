"""Item properties that the search table shows."""

import datetime
import json
from pathlib import Path

import pystac

from ramen_core.catalog import item_gsd

SERIES = Path(__file__).parent / "data" / "s2l2a_timeseries_33TWM" / "sentinel-2-l2a"


def test_item_gsd_from_asset_grid():
    path = SERIES / "S2A_33TWM_20230815_0_L2A" / "S2A_33TWM_20230815_0_L2A.json"
    item = pystac.Item.from_dict(json.loads(path.read_text()))
    assert "gsd" not in item.properties
    assert item_gsd(item) == 120.0


def test_item_gsd_property_wins():
    item = pystac.Item("x", None, None, datetime.datetime(2024, 1, 1), {"gsd": 10})
    assert item_gsd(item) == 10.0
