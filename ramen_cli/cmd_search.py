"""``ramen search``: find the items of each sensor over an area and time range."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import typer
from rich.console import Console
from rich.table import Table

from ramen_cli.app import app
from ramen_cli.common import handle_errors
from ramen_core.catalog import SearchResult, search


def _result_tables(result: SearchResult) -> list[Table]:
    tables = []
    for sensor_id, items in result.items.items():
        table = Table(title=f"{sensor_id}: {len(items)} items from {result.sources[sensor_id]}", title_justify="left")
        table.add_column("id")
        table.add_column("datetime (UTC)")
        table.add_column("cloud (%)", justify="right")
        table.add_column("GSD (m)", justify="right")
        table.add_column("CRS")
        for row in result.rows(sensor_id):
            table.add_row(
                row["id"],
                row["datetime"],
                "-" if row["cloud_cover"] is None else f"{row['cloud_cover']:.1f}",
                "-" if row["gsd"] is None else f"{row['gsd']:g}",
                row["crs"] or "-",
            )
        tables.append(table)
    return tables


@app.command("search")
@handle_errors
def search_command(
    bbox: Optional[Tuple[float, float, float, float]] = typer.Option(
        None, "--bbox", help="Area as WEST SOUTH EAST NORTH in WGS84 degrees.", metavar="W S E N"
    ),
    geometry: Optional[str] = typer.Option(
        None, "--geometry", help="Area as a GeoJSON file or GeoJSON text (instead of --bbox)."
    ),
    datetime: Optional[str] = typer.Option(
        None, "--datetime", help="Time range START/END, such as 2023-06-01/2023-08-31 ('..' for an open end)."
    ),
    sensors: str = typer.Option(
        "s2", "--sensors",
        help="Comma-separated sensors, such as s2,s1,dem (see `ramen sensors`); a description (NAME@GSD:BANDS) comes last.",
    ),
    catalog: Optional[str] = typer.Option(
        None,
        "--catalog",
        help="Catalog name (earth-search, planetary-computer), STAC API URL, or local catalog path. "
        "Default: each sensor's own default catalog.",
    ),
    max_cloud: Optional[float] = typer.Option(None, "--max-cloud", help="Maximum cloud cover in percent."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Maximum number of items per sensor."),
    as_json: bool = typer.Option(False, "--json", help="Print the items as a GeoJSON FeatureCollection."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Write the items to this ItemCollection JSON file (usable as --catalog later)."
    ),
    timeout: float = typer.Option(30.0, "--timeout", help="Timeout of each HTTP request in seconds."),
    retries: int = typer.Option(4, "--retries", help="Retries per request on connection errors and HTTP 429/5xx."),
) -> None:
    """Search a STAC API or a local catalog and list the items of each sensor."""
    result = search(
        sensors=sensors,
        bbox=bbox,
        intersects=geometry,
        datetime=datetime,
        catalog=catalog,
        max_cloud=max_cloud,
        limit=limit,
        timeout=timeout,
        max_retries=retries,
    )
    if output is not None:
        result.write(output)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
        return
    console = Console()
    for table in _result_tables(result):
        console.print(table)
    if output is not None:
        console.print(f"Wrote {len(result)} items to {output}", highlight=False)
