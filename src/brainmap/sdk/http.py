"""HTTP for the SDK: one connection pool per client, Allen's envelope, retries with exponential backoff.

Retried (``retries`` times, waiting ``backoff_s * 2**attempt``, at most ``max_backoff_s``, or the server's
``Retry-After``): connection errors, time-outs, and HTTP 429, 500, 502, 503 and 504. Other 4xx answers are the
caller's mistake and are raised at once as :class:`~brainmap.sdk.errors.ApiError` with the server's ``msg``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

import httpx

from brainmap.sdk.errors import ApiError, SdkError

__all__ = ["ALLEN_API_URL", "ALLEN_ARCHIVE_URL", "DEFAULT_BASE_URI", "ENV_BASE_URI", "ENV_TOKEN", "HttpClient",
           "RETRY_STATUSES", "default_base_uri"]

#: ``brainmap serve``'s address: the default server.
DEFAULT_BASE_URI = "http://127.0.0.1:8000"
#: Overrides the default server for every client that is given no ``base_uri``.
ENV_BASE_URI = "BRAINMAP_API_URL"
#: The read-only token of a server started with ``brainmap serve --token`` (sent to that server only).
ENV_TOKEN = "BRAINMAP_TOKEN"
#: Allen's public API and the host of its file archive (``/informatics-archive/...``).
ALLEN_API_URL = "http://api.brain-map.org"
ALLEN_ARCHIVE_URL = "http://download.alleninstitute.org"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

T = TypeVar("T")


def default_base_uri() -> str:
    """``$BRAINMAP_API_URL`` if set, else the local brainmap server (:data:`DEFAULT_BASE_URI`)."""
    return os.environ.get(ENV_BASE_URI) or DEFAULT_BASE_URI


def _normalize(base_uri: str) -> str:
    parts = urlsplit(base_uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SdkError(f"base_uri must be an http(s) URL such as {DEFAULT_BASE_URI} or {ALLEN_API_URL}, "
                       f"got {base_uri!r}")
    return base_uri.rstrip("/")


def server_message(response: httpx.Response) -> str:
    """The ``msg`` of Allen's error envelope, else the start of the body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("msg", "message", "detail"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)[:300]
    return json.dumps(body)[:300]


class _TokenAuth(httpx.Auth):
    """``Authorization: Bearer TOKEN`` on requests to one origin (the API server) only."""

    def __init__(self, token: str, origin: tuple[str, str, int | None]) -> None:
        self.token, self.origin = token, origin

    def auth_flow(self, request: httpx.Request) -> Any:
        if (request.url.scheme, request.url.host, request.url.port) == self.origin:
            request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


class HttpClient:
    """A pooled HTTP client for one server.

    ``base_uri``: the server (default :func:`default_base_uri`); ``archive_uri``: where
    ``/informatics-archive/...`` files come from (the same server for brainmap; Allen's download host for
    Allen's API). ``timeout`` is in seconds (connect and between bytes). ``token`` (default ``$BRAINMAP_TOKEN``)
    is sent to the API server only, for a server started with ``brainmap serve --token``.
    """

    def __init__(self, base_uri: str | None = None, *, archive_uri: str | None = None, timeout: float = 60.0,
                 retries: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 token: str | None = None) -> None:
        self.base_uri = _normalize(base_uri or default_base_uri())
        self.token = token if token is not None else (os.environ.get(ENV_TOKEN) or None)
        if archive_uri is None:
            archive_uri = ALLEN_ARCHIVE_URL if urlsplit(self.base_uri).hostname == "api.brain-map.org" \
                else self.base_uri
        self.archive_uri = _normalize(archive_uri)
        if retries < 0 or backoff_s < 0:
            raise SdkError(f"retries and backoff_s must be >= 0, got {retries} and {backoff_s}")
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.timeout = timeout
        #: Set by an offline cache: every request raises instead of touching the network.
        self.offline = False
        self._client: httpx.Client | None = None
        self._pid = os.getpid()

    @property
    def client(self) -> httpx.Client:
        """The connection pool (a new one after a fork: pools are not shared between processes)."""
        if self.offline:
            from brainmap.sdk.errors import OfflineError

            raise OfflineError("a request to the server", [])
        if self._client is None or self._pid != os.getpid():
            base = httpx.URL(self.base_uri)
            auth = _TokenAuth(self.token, (base.scheme, base.host, base.port)) if self.token else None
            self._client = httpx.Client(timeout=self.timeout, follow_redirects=True, auth=auth,
                                        headers={"User-Agent": "brainmap-sdk"})
            self._pid = os.getpid()
        return self._client

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None

    def url(self, path: str) -> str:
        """An absolute URL: ``path`` as is if absolute, else under the API server."""
        if path.startswith(("http://", "https://")):
            return path
        return self.base_uri + "/" + path.lstrip("/")

    def archive_url(self, path: str) -> str:
        """A URL under the file archive host."""
        return self.archive_uri + "/" + path.lstrip("/")

    # -- retries ------------------------------------------------------------------------------------------------
    def wait_s(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): the server's Retry-After, else the backoff."""
        if response is not None and response.headers.get("retry-after", "").isdigit():
            return min(float(response.headers["retry-after"]), self.max_backoff_s)
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)

    def with_retries(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action`` (which raises ``httpx.TransportError`` or :class:`RetryableStatus`), retrying."""
        attempt = 0
        while True:
            try:
                return action()
            except (httpx.TransportError, RetryableStatus) as exc:
                if attempt >= self.retries:
                    if isinstance(exc, RetryableStatus):
                        raise ApiError(f"{exc.message} (after {attempt + 1} attempts)", url=exc.url,
                                       status=exc.status) from None
                    raise SdkError(f"{what}: {type(exc).__name__}: {exc} (after {attempt + 1} attempts)") from exc
                time.sleep(self.wait_s(attempt, getattr(exc, "response", None)))
                attempt += 1

    # -- requests -------------------------------------------------------------------------------------------------
    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON document (retried); an error answer or ``success: false`` raises :class:`ApiError`."""
        url = self.url(path)

        def once() -> Any:
            response = self.client.get(url, params=params)
            check(response)
            try:
                return response.json()
            except ValueError as exc:
                raise ApiError(f"the answer is not JSON: {response.text[:200]!r}", url=str(response.url),
                               status=response.status_code) from exc

        body = self.with_retries(f"GET {url}", once)
        if isinstance(body, dict) and body.get("success") is False:
            raise ApiError(str(body.get("msg")), url=url)
        return body

class RetryableStatus(Exception):
    """An answer worth retrying (429, 5xx)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response, self.status, self.url = response, response.status_code, str(response.url)
        self.message = server_message(response)
        super().__init__(f"HTTP {self.status} from {self.url}: {self.message}")


def check(response: httpx.Response) -> None:
    """Raise :class:`RetryableStatus` (429, 5xx) or :class:`ApiError` (other errors) for an error answer."""
    if response.status_code < 400:
        return
    if not response.is_stream_consumed:
        try:
            response.read()
        except httpx.HTTPError:
            pass
    if response.status_code in RETRY_STATUSES:
        raise RetryableStatus(response)
    raise ApiError(server_message(response), url=str(response.url), status=response.status_code)

