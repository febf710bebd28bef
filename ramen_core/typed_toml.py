"""TOML files validated into typed dataclasses, with ``key.path=value`` overrides.

Recipes and chip specs are read the same way: the TOML tables are checked against the
type hints of frozen dataclasses, and every unknown key or wrongly typed value is a
:class:`~ramen_core.errors.ConfigError` that names the key by its dotted path
(``optim.lr``, ``datasets.floods.batch_size``). Supported field types: ``bool``, ``int``,
``float`` (an integer is accepted), ``str``, ``Path`` (resolved against a base folder),
``Literal[...]``, ``list[T]``, ``dict[str, T]``, unions with ``None`` or of those types,
and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from ramen_core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def type_name(annotation: Any) -> str:
    """Describe a type annotation in words, for error messages."""
    origin = typing.get_origin(annotation)
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", Path: "a path string"}
    if annotation in names:
        return names[annotation]
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
    if origin is list:
        return f"a list (each {type_name(typing.get_args(annotation)[0])})"
    if origin is dict:
        return f"a table (each value {type_name(typing.get_args(annotation)[1])})"
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    if dataclasses.is_dataclass(annotation):
        return "a table"
    return str(annotation)


def convert_value(value: Any, annotation: Any, key: str, base_dir: Path, what: str = "recipe") -> Any:
    """Check ``value`` against a type annotation and convert it.

    Args:
        value: the parsed TOML value.
        annotation: the expected type.
        key: dotted path of the value, used in messages.
        base_dir: folder that relative ``Path`` values are resolved against.
        what: name of the file kind in messages (``recipe``, ``chip spec``).

    Raises:
        ConfigError: the value does not have the expected type.
    """
    origin = typing.get_origin(annotation)

    def wrong() -> ConfigError:
        return ConfigError(f"{what} key {key!r}: expected {type_name(annotation)}, got {value!r}")

    if origin in (Union, types.UnionType):
        options = [option for option in typing.get_args(annotation) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):
            return None
        errors = []
        for option in options:
            try:
                return convert_value(value, option, key, base_dir, what)
            except ConfigError as error:
                errors.append(error)
        raise errors[0] if len(errors) == 1 else wrong()
    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong()
        if not math.isfinite(value):
            raise ConfigError(f"{what} key {key!r}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if annotation is Path:
        if not isinstance(value, str) or not value:
            raise wrong()
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(os.path.normpath(base_dir / path))
    if annotation is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise wrong()
        return value
    if origin is list:
        if not isinstance(value, list):
            raise wrong()
        (item_type,) = typing.get_args(annotation)
        return [convert_value(item, item_type, f"{key}[{index}]", base_dir, what) for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise wrong()
        _, item_type = typing.get_args(annotation)
        return {name: convert_value(item, item_type, f"{key}.{name}", base_dir, what) for name, item in value.items()}
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise wrong()
        return build_dataclass(annotation, value, key, base_dir, what)
    raise TypeError(f"unsupported annotation {annotation!r} at {key}")  # pragma: no cover


def build_dataclass(
    cls: Any,
    table: Mapping[str, Any],
    prefix: str,
    base_dir: Path,
    what: str = "recipe",
    also_allowed: Sequence[str] = (),
    **fixed: Any,
) -> Any:
    """Build dataclass ``cls`` from a TOML table, rejecting unknown and missing keys by dotted path.

    Args:
        cls: the dataclass.
        table: the TOML table.
        prefix: dotted path of the table ("" for the top level).
        base_dir: folder that relative paths are resolved against.
        what: name of the file kind in messages.
        also_allowed: keys of the table that the caller has read already (such as the
            tables behind ``fixed``), listed in the message about an unknown key.
        fixed: field values already built by the caller; the table must not contain them.
    """
    hints = typing.get_type_hints(cls)
    names = [item.name for item in dataclasses.fields(cls) if item.name not in fixed]
    unknown = sorted(set(table) - set(names))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        section = f"[{prefix}]" if prefix else "the top level"
        allowed = [*names, *(name for name in also_allowed if name not in names)]
        raise ConfigError(f"unknown {what} key {key!r}; keys allowed in {section}: {', '.join(allowed)}")
    values = dict(fixed)
    for name in names:
        if name in table:
            key = f"{prefix}.{name}" if prefix else name
            values[name] = convert_value(table[name], hints[name], key, base_dir, what)
    missing = [
        item.name for item in dataclasses.fields(cls)
        if item.name not in values
        and item.default is dataclasses.MISSING
        and item.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{what} is missing the required key {where}{missing[0]}")
    return cls(**values)


def to_plain(value: Any) -> Any:
    """Convert dataclasses, paths and tuples to JSON-compatible values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: to_plain(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value


def read_toml(path: str | Path, what: str = "recipe") -> dict[str, Any]:
    """Read a TOML file into nested dicts.

    Raises:
        ConfigError: the file is missing, unreadable or not valid TOML.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {what} file {str(path)!r}: {error}") from error
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{what} file {str(path)!r} is not valid TOML: {error}") from error


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``key.path=value`` into its key path and a typed value.

    The value is read as a TOML value (``1e-4``, ``true``, ``[10, 20]``, ``"text"``,
    ``{min = 5, max = 20}``). Text that is not valid TOML is kept as a string, so paths
    need no quotes.

    Raises:
        ConfigError: the text has no ``=`` or the key has an empty part.
    """
    key, separator, raw = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"override {text!r} must look like key.path=value, for example optim.lr=1e-4")
    parts = key.split(".")
    if any(not part for part in parts):
        raise ConfigError(f"override {text!r}: the key {key!r} has an empty part")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def apply_overrides(
    data: Mapping[str, Any],
    overrides: Sequence[str],
    is_path_key: typing.Callable[[Sequence[str]], bool] = lambda parts: False,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Return a copy of nested tables with ``key.path=value`` overrides applied.

    Args:
        data: the parsed TOML.
        overrides: ``key.path=value`` strings, applied in order.
        is_path_key: returns whether a key holds a path. A relative path given for such a
            key is made absolute against ``cwd``, because the user typed it relative to where they
            are, not to the file.
        cwd: folder for relative override paths; the working directory by default.

    Raises:
        ConfigError: an override is malformed or sets a key inside a value.
    """
    result = json.loads(json.dumps(data, default=str))
    base = (cwd or Path.cwd()).resolve()
    for text in overrides:
        parts, value = parse_override(text)
        if is_path_key(parts) and isinstance(value, str) and not Path(value).expanduser().is_absolute():
            value = str(base / value)
        table = result
        for index, part in enumerate(parts[:-1]):
            child = table.get(part)
            if child is None:
                child = table[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: index + 1])!r} is a value, not a table")
            table = child
        table[parts[-1]] = value
    return result
