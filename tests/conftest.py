"""Shared fixtures: a real STAC API on 127.0.0.1 and a fault-injecting proxy in front of it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pretrain_fixtures import sample_chips, tiny_run  # noqa: F401  (session fixtures for the chip and training tests)
from stac_server import Fault, FaultProxy, RustacServer, find_rustac, start_rustac_server

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def stac_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., str]]:
    """Factory that serves items from ``rustac serve`` and returns the API's root URL.

    Call it as ``stac_api(items, base_dir=None)``: ``items`` are STAC item dictionaries,
    and relative asset hrefs are resolved against ``base_dir`` into ``file://`` URIs. The
    same items (and base folder) reuse one server for the whole session; every server
    is stopped by PID when the session ends.
    """
    servers: dict[str, RustacServer] = {}

    def start(items: list[dict[str, Any]], base_dir: Path | str | None = None) -> str:
        if find_rustac() is None:
            pytest.skip("rustac is not installed; pip install rustac (it is in the test extra)")
        key = hashlib.sha256(json.dumps([items, str(base_dir)], sort_keys=True).encode()).hexdigest()
        if key not in servers:
            directory = tmp_path_factory.mktemp("stac_api")
            servers[key] = start_rustac_server(items, directory, None if base_dir is None else Path(base_dir))
        return servers[key].url

    yield start
    for server in servers.values():
        server.stop()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """Factory ``fault_proxy(upstream_url, *faults)`` returning a started :class:`FaultProxy`."""
    proxies: list[FaultProxy] = []

    def start(upstream_url: str, *faults: Fault) -> FaultProxy:
        proxy = FaultProxy(upstream_url, faults)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()
