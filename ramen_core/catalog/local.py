"""Local catalogs, searched without a server.

Accepted layouts: a static catalog (``catalog.json`` or ``collection.json`` with item
links), a folder of item JSON files, an ItemCollection JSON, a plain JSON array of items,
newline-delimited JSON (``.ndjson``, ``.jsonl``) and stac-geoparquet (``.parquet``, read
with rustac, no DuckDB needed). Items are filtered in Python by geometry and time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pystac

from ramen_core.catalog.items import resolve_relative_hrefs
from ramen_core.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

_PARQUET_SUFFIXES = (".parquet", ".geoparquet")
_NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".geojsonl")
_CATALOG_TYPES = ("Catalog", "Collection")

# Errors that pystac raises for documents that miss required fields or links that do not resolve.
# STACTypeError does not derive from STACError.
_STAC_ERRORS = (
    pystac.STACError,
    pystac.STACTypeError,
    pystac.errors.RequiredPropertyMissing,
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
)


def is_local_catalog(value: str) -> bool:
    """Return whether ``value`` names a local file or folder (a ``file://`` URI or a path)."""
    text = str(value)
    if text.startswith("file://"):
        return True
    if "://" in text:
        return False
    return Path(text).exists()


def _local_path(value: str | Path) -> Path:
    text = str(value)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def read_local_items(source: str | Path) -> list[pystac.Item]:
    """Read every item of a local catalog, with asset hrefs made absolute.

    Args:
        source: a path or ``file://`` URI to a file or folder in one of the accepted layouts.

    Raises:
        InputError: the path does not exist, or a file is not STAC JSON.
        ConfigError: a stac-geoparquet file is given but rustac is not installed.
    """
    path = _local_path(source)
    if not path.exists():
        raise InputError(f"local catalog {str(path)!r} not found; give an existing file or folder, or a STAC API URL")
    if path.is_dir():
        items = list(_read_folder(path))
    else:
        items = list(_read_file(path))
    logger.info("read %d items from local catalog %s", len(items), path)
    return items


def _read_folder(folder: Path) -> Iterator[pystac.Item]:
    for name in ("catalog.json", "collection.json"):
        if (folder / name).is_file():
            yield from _read_file(folder / name)
            return
    files = sorted(
        path for pattern in ("*.json", "*.geojson", "*.ndjson") for path in folder.rglob(pattern) if path.is_file()
    )
    if not files:
        raise InputError(f"local catalog folder {str(folder)!r} contains no catalog.json and no item JSON files")
    for path in files:
        yield from _read_file(path, skip_non_stac=True)


def _read_file(path: Path, skip_non_stac: bool = False) -> Iterator[pystac.Item]:
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        yield from _items_from_dicts(_read_geoparquet(path), path)
        return
    if suffix in _NDJSON_SUFFIXES:
        yield from _items_from_dicts(_read_ndjson(path), path)
        return

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"local catalog file {str(path)!r} is not valid JSON: {error}") from None
    except OSError as error:
        raise InputError(f"local catalog file {str(path)!r} cannot be read: {error.strerror or error}") from None

    if isinstance(data, list):
        yield from _items_from_dicts(data, path)
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        yield from _items_from_dicts(data.get("features", []), path)
    elif isinstance(data, dict) and data.get("type") == "Feature":
        yield from _items_from_dicts([data], path)
    elif isinstance(data, dict) and data.get("type") in _CATALOG_TYPES:
        if skip_non_stac:
            # Inside a folder of item files, a catalog or collection document describes
            # the items next to it; they are read as files of their own.
            return
        yield from _read_static_catalog(path)
    elif skip_non_stac:
        logger.debug("skipping %s: not a STAC item, item collection or catalog", path)
    else:
        raise InputError(
            f"local catalog file {str(path)!r} is not a STAC item, ItemCollection, item array or catalog"
        )


def _read_static_catalog(path: Path) -> Iterator[pystac.Item]:
    """Read every item that a static catalog or collection links to, recursively."""
    try:
        catalog = pystac.read_file(str(path))
        items = list(catalog.get_items(recursive=True))  # type: ignore[union-attr]
    except _STAC_ERRORS as error:
        raise InputError(
            f"local catalog {str(path)!r} cannot be read as a STAC catalog: {_first_line(error)}; "
            f"check its links and required fields (id, description, links)"
        ) from None
    except OSError as error:
        raise InputError(f"local catalog {str(path)!r}: a linked file cannot be read: {error}") from None
    for item in items:
        item.make_asset_hrefs_absolute()
        yield item


def _first_line(error: Exception) -> str:
    if isinstance(error, KeyError) and error.args:
        return f"missing field {error.args[0]!r}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_ndjson(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise InputError(f"{str(path)!r} line {number} is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{str(path)!r} is not UTF-8 text: {error}") from None
    except OSError as error:
        raise InputError(f"{str(path)!r} cannot be read: {error.strerror or error}") from None


def _read_geoparquet(path: Path) -> list[dict[str, Any]]:
    try:
        import rustac
    except ImportError:
        raise ConfigError(
            f"reading stac-geoparquet ({str(path)!r}) needs rustac: pip install rustac"
        ) from None
    try:
        data = rustac.read_sync(str(path))
    except Exception as error:  # rustac raises its own and builtin error types
        raise InputError(f"cannot read stac-geoparquet file {str(path)!r}: {error}") from None
    return list(data.get("features", []))


def _items_from_dicts(dicts: Any, path: Path) -> Iterator[pystac.Item]:
    base = str(path.parent.resolve())
    for data in dicts:
        if not isinstance(data, dict) or data.get("type") != "Feature":
            raise InputError(f"{str(path)!r} contains an entry that is not a STAC item (type {type(data).__name__})")
        try:
            yield pystac.Item.from_dict(resolve_relative_hrefs(data, base), preserve_dict=False)
        except _STAC_ERRORS as error:
            raise InputError(
                f"{str(path)!r}: item {data.get('id')!r} is not a valid STAC item: {_first_line(error)}"
            ) from None
