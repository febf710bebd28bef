"""Sensor registry: band physics, raster encoding, normalisation and STAC mapping per sensor.

Sensors are data: each is a TOML file in ``ramen_core/sensors/data``. Look one up with
:func:`get_sensor` (``"s2"``, ``"s1"``, ``"dem"``, a TOML path or a one-line description),
turn its bands into the model's :class:`~ramen_core.bands.BandSpec` with
:meth:`Sensor.band_specs`, and find an item's asset for a band with
:meth:`Sensor.asset_key`. :func:`scaling_for_item` decides the scale and offset of one
band of one item; :func:`slope_degrees` derives slope from a DSM.
"""

from ramen_core.sensors.radiometry import (
    Scaling,
    check_negative_share,
    linear_to_db,
    processing_baseline,
    resolve_db_conversion,
    scaling_for_item,
)
from ramen_core.sensors.registry import (
    Band,
    Catalog,
    MaskSpec,
    Sensor,
    get_catalog,
    get_sensor,
    item_assets,
    item_collection,
    item_id,
    item_properties,
    list_catalogs,
    list_sensors,
    load_sensor_file,
    normalise_band_name,
    orbit_direction,
    parse_sensor_description,
    parse_sensor_list,
    register_sensor,
    sensor_from_dict,
)
from ramen_core.sensors.terrain import slope_degrees

__all__ = [
    "Band",
    "Catalog",
    "MaskSpec",
    "Scaling",
    "Sensor",
    "check_negative_share",
    "get_catalog",
    "get_sensor",
    "item_assets",
    "item_collection",
    "item_id",
    "item_properties",
    "linear_to_db",
    "list_catalogs",
    "list_sensors",
    "load_sensor_file",
    "normalise_band_name",
    "orbit_direction",
    "parse_sensor_description",
    "parse_sensor_list",
    "processing_baseline",
    "register_sensor",
    "resolve_db_conversion",
    "scaling_for_item",
    "sensor_from_dict",
    "slope_degrees",
]
