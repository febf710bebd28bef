"""A real STAC API for tests (``rustac serve`` on 127.0.0.1) and a fault-injecting proxy.

``start_rustac_server`` loads item dictionaries into rustac's in-memory backend. Relative
asset hrefs are resolved against a folder and written as ``file://`` URIs, so odc-stac
and rasterio read the local test rasters through the API's responses.

``FaultProxy`` sits between a client and the server and produces the faults a real
server cannot be told to produce: HTTP 429 and 503 responses, a reset connection, and
overlapping pages.
"""

from __future__ import annotations

import copy
import http.client
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

HOST = "127.0.0.1"


def find_rustac() -> str | None:
    """Return the path of the ``rustac`` executable (the venv's first), or None."""
    beside_python = Path(sys.executable).parent / "rustac"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("rustac")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def localise_hrefs(item: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """Return a copy of an item whose relative asset hrefs are absolute ``file://`` URIs."""
    item = copy.deepcopy(item)
    if base_dir is None:
        return item
    for asset in (item.get("assets") or {}).values():
        href = asset.get("href", "")
        if href and "://" not in href and not Path(href).is_absolute():
            asset["href"] = (Path(base_dir) / href).resolve().as_uri()
    # Links to sibling files would make no sense once the item sits in an API.
    item["links"] = [link for link in item.get("links", []) if link.get("rel") in ("license",)]
    return item


@dataclass
class RustacServer:
    """A running ``rustac serve`` process."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        """Terminate the server process (by its PID) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_rustac_server(
    items: Iterable[dict[str, Any]], directory: Path, base_dir: Path | None = None, timeout: float = 30.0
) -> RustacServer:
    """Start ``rustac serve`` with ``items`` in its in-memory backend and wait until it responds.

    Args:
        items: STAC item dictionaries, each with a ``collection``.
        directory: folder for the item file and the server log.
        base_dir: folder that relative asset hrefs are relative to.
        timeout: seconds to wait for the server to respond.

    Raises:
        RuntimeError: rustac is missing, exits early, or does not respond in time.
    """
    executable = find_rustac()
    if executable is None:
        raise RuntimeError("rustac is not installed; pip install rustac (it is in the test extra)")
    directory.mkdir(parents=True, exist_ok=True)
    items_path = directory / "items.json"
    features = [localise_hrefs(item, base_dir) for item in items]
    items_path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")

    port = free_port()
    url = f"http://{HOST}:{port}"
    log_path = directory / "rustac.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [executable, "serve", "--addr", f"{HOST}:{port}", "--create-collections", str(items_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RustacServer(url=url, process=process, log_path=log_path)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rustac serve exited with code {process.returncode}: {log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/collections", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"rustac serve did not respond at {url} within {timeout} s: {log_path.read_text()}")


@dataclass
class Fault:
    """One injected fault.

    Attributes:
        kind: ``503``, ``429`` (HTTP error responses), ``reset`` (close the connection
            with a TCP reset, no response) or ``overlap`` (rewrite every next-page link to
            start one item earlier, so consecutive pages share an item).
        on_request: 1-based number of the matching request that gets the fault; ignored
            by ``overlap``, which applies to every page.
        path: request path prefix that counts as matching.
    """

    kind: str
    on_request: int = 1
    path: str = "/search"


@dataclass
class ProxyLog:
    """What the proxy saw: one ``(method, path, outcome)`` per request."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, path: str, outcome: str) -> None:
        with self.lock:
            self.entries.append((method, path, outcome))

    def outcomes(self, path_prefix: str = "/search") -> list[str]:
        """Return the outcomes of the requests whose path starts with ``path_prefix``."""
        with self.lock:
            return [outcome for _, path, outcome in self.entries if path.startswith(path_prefix)]


class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of a STAC API, injecting configured faults.

    Upstream URLs in responses are rewritten to the proxy's URL, so that next-page links
    come back through the proxy.
    """

    def __init__(self, upstream_url: str, faults: Iterable[Fault] = ()) -> None:
        self.upstream = urlparse(upstream_url)
        self.faults = list(faults)
        self.log = ProxyLog()
        self._counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self._server = ThreadingHTTPServer((HOST, 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _count(self, path: str) -> dict[str, int]:
        """Increment and return the request number of each fault path this path matches."""
        numbers = {}
        with self._counts_lock:
            for prefix in {fault.path for fault in self.faults}:
                if path.startswith(prefix):
                    self._counts[prefix] = self._counts.get(prefix, 0) + 1
                    numbers[prefix] = self._counts[prefix]
        return numbers

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                numbers = proxy._count(self.path)
                for fault in proxy.faults:
                    if fault.kind == "overlap" or numbers.get(fault.path) != fault.on_request:
                        continue
                    if fault.kind == "reset":
                        proxy.log.add(self.command, self.path, "reset")
                        # SO_LINGER with a zero timeout makes close() send a TCP reset.
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                        self.close_connection = True
                        return
                    status = int(fault.kind)
                    proxy.log.add(self.command, self.path, str(status))
                    message = json.dumps({"code": str(status), "description": "injected by the test proxy"}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(message)))
                    if status in (429, 503):
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(message)
                    return
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                content_type = response.getheader("Content-Type", "application/json")
                connection.close()

                upstream_root = f"http://{proxy.upstream.hostname}:{proxy.upstream.port}"
                payload = payload.replace(upstream_root.encode(), proxy.url.encode())
                outcome = str(response.status)
                if any(fault.kind == "overlap" for fault in proxy.faults) and response.status == 200:
                    payload, overlapped = _overlap_next_page(payload)
                    outcome += " overlap" if overlapped else ""
                proxy.log.add(self.command, self.path, outcome)

                self.send_response(response.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


def _overlap_next_page(payload: bytes) -> tuple[bytes, bool]:
    """Move the ``skip`` of a next-page link back by one item; return whether it changed.

    rustac pages with a ``skip`` offset in the next link's POST body (or GET query).
    """
    try:
        page = json.loads(payload)
    except json.JSONDecodeError:
        return payload, False
    changed = False
    for link in page.get("links", []) if isinstance(page, dict) else []:
        if link.get("rel") != "next":
            continue
        body = link.get("body")
        if isinstance(body, dict) and int(body.get("skip", 0)) > 0:
            body["skip"] = int(body["skip"]) - 1
            changed = True
    return json.dumps(page).encode(), changed


def read_item_dicts(*paths: Path) -> list[dict[str, Any]]:
    """Read item dictionaries from item, ItemCollection or JSON array files."""
    items: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, list):
            items.extend(data)
        elif data.get("type") == "FeatureCollection":
            items.extend(data["features"])
        else:
            items.append(data)
    return items
