"""Searching STAC APIs with pystac-client: paging to the end, retries, de-duplication."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pystac
import requests
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry

from ramen_core.catalog.items import item_belongs_to, matches_query
from ramen_core.catalog.query import SearchQuery
from ramen_core.errors import CatalogError
from ramen_core.sensors import Catalog, Sensor

logger = logging.getLogger(__name__)

# HTTP statuses worth retrying: rate limiting and transient server errors.
RETRY_STATUS = (429, 500, 502, 503, 504)


class _LoggingRetry(Retry):
    """urllib3 retry policy that logs each retry at INFO level with its cause."""

    def increment(self, method: str | None = None, url: str | None = None, *args: Any, **kwargs: Any) -> Retry:
        response = kwargs.get("response")
        error = kwargs.get("error")
        cause = f"HTTP {response.status}" if response is not None else repr(error)
        logger.info("retrying %s %s after %s (%s retries left)", method, url, cause, self.total)
        return super().increment(method, url, *args, **kwargs)


def make_retry(max_retries: int = 4, backoff_factor: float = 0.5) -> Retry:
    """Build the retry policy: retry ``max_retries`` times on connection errors, resets and
    HTTP 429/5xx, for every method (STAC searches are POST requests), with exponential
    backoff of ``backoff_factor * 2 ** (retry - 1)`` seconds that honours ``Retry-After``.
    """
    return _LoggingRetry(
        total=max_retries,
        connect=max_retries,
        read=max_retries,
        status=max_retries,
        other=max_retries,
        backoff_factor=backoff_factor,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=True,
    )


def describe_request_error(error: Exception) -> str:
    """Return a one-line cause of a failed request: the HTTP status, a timeout, or the
    operating-system error of a failed connection.

    pystac-client wraps requests' errors in its ``APIError``, so the cause is read from
    the message text.
    """
    if isinstance(error, json.JSONDecodeError):
        return "the answer is not JSON, so the URL is not a STAC API"
    text = str(error)
    status = getattr(error, "status_code", None)
    match = re.search(r"too many (\d{3}) error responses", text)
    if match is not None:
        return f"HTTP {match.group(1)} after all retries"
    if "timed out" in text.lower():
        return "the request timed out"
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text) or re.search(r"(Connection (?:aborted|reset)[^'\")]*)", text)
    if match is not None:
        return f"connection failed ({match.group(1).strip()})"
    # Error pages are often HTML over many lines; one line of it is enough in a message.
    text = " ".join(text.split())
    if status is not None:
        return f"HTTP {status}: {text[:200]}"
    return text[:300]


def _signing_modifier(catalog: Catalog) -> Callable[[Any], None] | None:
    """Return the function that signs asset hrefs for ``catalog``, or None."""
    if catalog.signing == "planetary-computer":
        import planetary_computer

        return planetary_computer.sign_inplace
    if catalog.signing:
        raise CatalogError(f"catalog {catalog.name!r}: unknown signing method {catalog.signing!r}")
    return None


def open_client(catalog: Catalog, *, timeout: float = 30.0, max_retries: int = 4, backoff_factor: float = 0.5) -> Client:
    """Open a STAC API with a request timeout (seconds), retries and, for Planetary
    Computer, href signing.

    Raises:
        CatalogError: the API cannot be reached or its landing page is not STAC.
    """
    stac_io = StacApiIO(timeout=timeout, max_retries=make_retry(max_retries, backoff_factor))
    try:
        client = Client.open(catalog.url, stac_io=stac_io, modifier=_signing_modifier(catalog))
    except (requests.RequestException, APIError, pystac.STACError, ValueError) as error:
        raise CatalogError(
            f"cannot open the STAC API at {catalog.url}: {describe_request_error(error)}. Check the URL and the network, "
            f"or pass a local catalog path with --catalog"
        ) from None
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise CatalogError(
            f"{catalog.url} is a STAC catalog without item search, not a STAC API; download it and "
            f"pass the local catalog.json with --catalog, or give the URL of a STAC API"
        )
    logger.info("opened STAC API %s", catalog.url)
    return client


def cloud_filter_parameters(client: Client, sensor: Sensor, max_cloud: float | None) -> dict[str, Any]:
    """Return the search parameters that filter cloud cover on the server.

    Uses the query extension when the API conforms to it, else the CQL2 filter extension,
    else nothing (the caller then filters on the client).
    """
    if max_cloud is None or not sensor.cloud_cover_property:
        return {}
    key = sensor.cloud_cover_property
    if client.conforms_to(ConformanceClasses.QUERY):
        return {"query": {key: {"lte": max_cloud}}}
    if client.conforms_to(ConformanceClasses.FILTER):
        return {
            "filter": {"op": "<=", "args": [{"property": key}, max_cloud]},
            "filter_lang": "cql2-json",
        }
    logger.info("%s supports neither the query nor the filter extension; filtering cloud cover locally", client.self_href)
    return {}


# Errors of pystac and of the item checks for an item that is not valid STAC (no datetime,
# no geometry type, a wrong field type). STACTypeError does not derive from STACError.
_ITEM_ERRORS = (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError, AttributeError)

# Invalid items named one by one in the log; further ones are only counted.
_INVALID_ITEMS_LOGGED = 3


def search_method(client: Client) -> str:
    """Return ``POST`` unless the API's search links advertise GET only.

    POST stays the default when no link names a method, as in pystac-client, because it
    carries long geometries in the body instead of the URL.
    """
    methods = {str(link.extra_fields.get("method", "")).upper() for link in client.get_links("search")}
    methods.discard("")
    return "GET" if methods == {"GET"} else "POST"


def search_sensor(
    client: Client, sensor: Sensor, collections: list[str], query: SearchQuery, *, page_size: int = 100
) -> list[pystac.Item]:
    """Search one sensor's collections, page to the end and drop repeated item ids.

    Every item is also checked on the client against the area, time range and cloud
    cover, so a server that ignores a filter does not let items through. Items that are
    not valid STAC (no datetime, for example) are skipped with a warning.

    Raises:
        CatalogError: a request fails after all retries or the response is not STAC.
    """
    parameters: dict[str, Any] = {
        "collections": collections or None,
        "bbox": query.bbox,
        "intersects": query.intersects,
        "datetime": query.datetime_interval(),
        "limit": page_size,
        **cloud_filter_parameters(client, sensor, query.max_cloud),
    }
    items: dict[str, pystac.Item] = {}
    repeated = 0
    invalid: list[str] = []
    try:
        search = client.search(method=search_method(client), **parameters)
        for item_dict in search.items_as_dicts():
            item_id = item_dict.get("id")
            if item_id in items:
                repeated += 1
                continue
            # pystac-client has already signed the page when the catalog needs signing.
            try:
                item = pystac.Item.from_dict(item_dict, preserve_dict=False)
                if not item_belongs_to(item, sensor) or not matches_query(item, query, sensor):
                    continue
            except _ITEM_ERRORS as error:
                if len(invalid) < _INVALID_ITEMS_LOGGED:
                    logger.warning("%s: skipped invalid item %r from %s: %s", sensor.id, item_id, client.self_href, error)
                invalid.append(str(item_id))
                continue
            items[item.id] = item
            if query.limit is not None and len(items) >= query.limit:
                break
    except (requests.RequestException, APIError) as error:
        raise CatalogError(
            f"search for {sensor.id} in {', '.join(collections) or 'all collections'} at "
            f"{client.self_href} failed: {describe_request_error(error)}; try again later or raise --retries"
        ) from None
    if repeated:
        logger.warning("%s: dropped %d repeated items (the API returned overlapping pages)", sensor.id, repeated)
    if len(invalid) > _INVALID_ITEMS_LOGGED:
        logger.warning("%s: skipped %d invalid items in total", sensor.id, len(invalid))
    logger.info("%s: %d items from %s", sensor.id, len(items), client.self_href)
    return list(items.values())
