"""``ramen sensors``: list the sensor registry, or show one sensor's bands."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ramen_cli.app import app
from ramen_cli.common import handle_errors
from ramen_core.sensors import Sensor, get_sensor, list_catalogs, list_sensors


def _sensors_table(sensors: list[Sensor]) -> Table:
    table = Table(title="Sensors", title_justify="left")
    table.add_column("aliases")
    table.add_column("id")
    table.add_column("bands")
    table.add_column("GSD (m)", justify="right")
    table.add_column("default catalog")
    table.add_column("collections")
    for sensor in sensors:
        kinds = sorted({band.kind for band in sensor.bands})
        table.add_row(
            ", ".join(sensor.aliases),
            sensor.id,
            f"{len(sensor.bands)} {'/'.join(kinds)}",
            f"{sensor.gsd:g}",
            sensor.default_catalog or "-",
            ", ".join(sensor.collections()) or "-",
        )
    return table


def _bands_table(sensor: Sensor) -> Table:
    table = Table(title=f"{sensor.id}: {sensor.title}", title_justify="left")
    table.add_column("band")
    table.add_column("kind")
    table.add_column("embeds")
    table.add_column("GSD (m)", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("std", justify="right")
    table.add_column("aliases")
    for catalog in sensor.catalogs:
        table.add_column(f"asset ({catalog})")
    for band in sensor.bands:
        assets = []
        for tables in sensor.catalogs.values():
            keys = sorted({table.get(band.name, "") for table in tables.values()} - {""})
            assets.append("/".join(keys) or ("derived" if band.derived_from else "-"))
        table.add_row(
            band.name,
            band.kind,
            band.describe_physics(),
            f"{sensor.band_gsd(band.name):g}",
            "-" if band.mean is None else f"{band.mean:g}",
            "-" if band.std is None else f"{band.std:g}",
            ", ".join(band.aliases),
            *assets,
        )
    return table


@app.command("sensors")
@handle_errors
def sensors_command(
    name: Optional[str] = typer.Argument(
        None, help="Show the bands of one sensor (id, alias, TOML file or description)."
    ),
) -> None:
    """List the known sensors, or the bands, statistics and asset keys of one sensor."""
    console = Console()
    if name is None:
        console.print(_sensors_table(list_sensors()))
        catalogs = ", ".join(f"{catalog.name} ({catalog.url})" for catalog in list_catalogs())
        console.print(f"Catalogs: {catalogs}", highlight=False)
        return

    sensor = get_sensor(name)
    console.print(_bands_table(sensor))
    encoding = f"dtype {sensor.dtype}, nodata {sensor.nodata}, scale {sensor.scale:g}, offset {sensor.offset:g}"
    console.print(f"Stored values: {encoding}; units after scaling: {escape(sensor.units or '-')}", highlight=False)
    if sensor.mask is not None:
        console.print(
            f"Mask: {sensor.mask.name} ({sensor.mask.kind}), invalid {list(sensor.mask.invalid)}", highlight=False
        )
    # Text from user files is escaped, so that square brackets in it are not read as markup.
    console.print(f"Statistics: {escape(sensor.stats_source or 'none given')}", highlight=False)
    console.print(f"Defined in: {escape(sensor.source)}", highlight=False)
