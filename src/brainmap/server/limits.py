"""Request limits, checked before a request reaches a route (one ASGI middleware, no per-request task):

* the URL (path + query) at most :data:`MAX_URL_BYTES`, at most :data:`MAX_PARAMS` query parameters;
* no request body (no route takes one but the portal's Neuroglancer state posts, which may carry up to 256 KiB
  with a declared length): a ``Content-Length`` above 0 or any ``Transfer-Encoding`` is answered 413 at once and
  the connection closed, without reading the body;
* numbers: an integer of 19 digits or more (an id >= 2^63 cannot be stored) or ``inf``/``nan`` in the path or in
  a parameter other than an RMA query text is a 400;
* the optional read-only token (``brainmap serve --token`` / ``$BRAINMAP_TOKEN``): every route but ``/health``
  needs ``Authorization: Bearer TOKEN`` (401 otherwise);
* ``HEAD`` on every ``GET`` route: the request is answered as a GET without its body.

Slow clients are bounded by the HTTP protocol :class:`TimedHttpToolsProtocol` (``brainmap serve`` passes it to
uvicorn): a request's line and headers must arrive within :data:`HEADER_TIMEOUT_S` of the connection opening (or
of the previous answer), and the URL and headers cannot grow past their limits while they arrive.

Answers are Allen's error envelope (:func:`brainmap.server.errors.error_response`).
"""

from __future__ import annotations

import asyncio
import hmac
import re
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from starlette.requests import Request

from brainmap.server.errors import ApiError, error_response

__all__ = [
    "HEADER_TIMEOUT_S",
    "MAX_HEADER_BYTES",
    "MAX_PARAMS",
    "MAX_URL_BYTES",
    "LimitsMiddleware",
    "TimedHttpToolsProtocol",
    "http_protocol",
]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Longest URL (path and query string, bytes); the longest RMA query text is 20,000 characters, percent-encoding
#: may triple it.
MAX_URL_BYTES = 64 * 1024
#: Most query parameters a request may carry (the model form of an RMA query has eleven).
MAX_PARAMS = 64
#: Most bytes of request headers.
MAX_HEADER_BYTES = 32 * 1024
#: Seconds a client has to send a request's line and headers.
HEADER_TIMEOUT_S = 10.0
#: Query parameters holding RMA text (checked by the RMA parser, which reports positions), not plain numbers.
_TEXT_PARAMS = frozenset({"criteria", "q", "include", "order", "only", "except", "excpt", "tabular", "image",
                          "plane", "volume", "structures", "structure_ids", "acronym", "acronyms"})
_BIG_INTEGER = re.compile(r"(?<![\w.])[+-]?0*[1-9]\d{18,}(?!\w|\.\d)")
_NOT_FINITE = re.compile(r"(?<![\w.])[+-]?(inf|infinity|nan)(?![\w.])", re.IGNORECASE)
_INT64_MAX = (1 << 63) - 1
_UNPROTECTED = ("/health",)


def _number_problem(name: str, value: str) -> str | None:
    for match in _BIG_INTEGER.finditer(value):
        if abs(int(match.group())) > _INT64_MAX:
            return f"{name}: {match.group()[:40]} is out of range (ids and integers are 64-bit: at most {_INT64_MAX})"
    match = _NOT_FINITE.search(value)
    if match:
        return f"{name}: {match.group()!r} is not a finite number"
    return None


def check_request(scope: Scope) -> ApiError | None:
    """The first limit ``scope`` breaks, as the error to answer, or None."""
    path = scope.get("path", "")
    query = scope.get("query_string", b"")
    if len(scope.get("raw_path") or path.encode()) + len(query) > MAX_URL_BYTES:
        return ApiError(f"the URL is longer than {MAX_URL_BYTES:,} bytes", 414)
    if query.count(b"&") + 1 > MAX_PARAMS and len(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) > MAX_PARAMS:
        return ApiError(f"at most {MAX_PARAMS} query parameters are accepted")
    for segment in path.split("/"):
        problem = _number_problem("path", segment)
        if problem:
            return ApiError(problem)
    if query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if name not in _TEXT_PARAMS:
                problem = _number_problem(name, value)
                if problem:
                    return ApiError(problem)
    return None


#: The one kind of request that carries a body: the portal's Neuroglancer client posting its view state (JSON)
#: to ``/portal/ng/...``; a POST there with a declared length up to this many bytes is let through.
_BODY_PREFIX = "/portal/ng/"
_MAX_BODY = 256 * 1024


def _has_body(scope: Scope) -> bool:
    if scope.get("method") == "POST" and str(scope.get("path", "")).startswith(_BODY_PREFIX):
        headers = dict(scope.get("headers", ()))
        length = headers.get(b"content-length", b"").strip()
        return b"transfer-encoding" in headers or not length.isdigit() or int(length) > _MAX_BODY
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.strip() not in (b"0", b""):
            return True
        if name == b"transfer-encoding":
            return True
    return False


class LimitsMiddleware:
    """ASGI middleware applying the limits of the module docstring; ``token`` (if not empty) is required."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], token: str | None = None) -> None:
        self.app = app
        self.token = (token or "").encode() or None

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: ApiError,
                      close: bool = False, headers: dict[str, str] | None = None) -> None:
        response = error_response(error, Request(scope))
        if close:
            response.headers["Connection"] = "close"
        for key, value in (headers or {}).items():
            response.headers[key] = value
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        if self.token is None or scope.get("path") in _UNPROTECTED:
            return True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _has_body(scope):
            await self._refuse(scope, receive, send, ApiError(
                "this API takes no request body (every route is a GET)", 413), close=True)
            return
        if not self._authorized(scope):
            await self._refuse(scope, receive, send, ApiError(
                "this server needs a token: send 'Authorization: Bearer TOKEN'", 401),
                headers={"WWW-Authenticate": "Bearer"})
            return
        error = check_request(scope)
        if error is not None:
            await self._refuse(scope, receive, send, error)
            return
        if scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return
        await self.app({**scope, "method": "GET"}, receive, _without_body(send))


def _without_body(send: Send) -> Send:
    """A ``send`` that passes the status and headers of an answer and drops its body (HEAD)."""
    async def head_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if message["type"] in ("http.response.zerocopysend", "http.response.pathsend"):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send(message)

    return head_send


# -- the HTTP protocol: header timeout and size limits ---------------------------------------------------------------
def http_protocol() -> Any:
    """The HTTP protocol class for uvicorn: :class:`TimedHttpToolsProtocol` where httptools is installed (it is
    with ``uvicorn[standard]``), else uvicorn's default ``"auto"`` (h11, which bounds an incomplete request's
    size but not its time)."""
    try:
        return TimedHttpToolsProtocol
    except NameError:  # pragma: no cover - httptools missing
        return "auto"


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn without httptools
    pass
else:
    class TimedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
        """uvicorn's httptools protocol with a deadline for each request's line and headers, and caps on the URL
        and header bytes while they arrive (uvicorn has neither: a client sending one byte a second, or an
        endless URL, kept its connection and memory).

        The deadline runs from the connection's opening and from the first byte of each request; an idle
        connection between requests is uvicorn's keep-alive timeout's. A URL or headers over their cap make the
        parser fail: uvicorn answers 400 and closes the connection."""

        header_timeout_s = HEADER_TIMEOUT_S

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_bytes = 0
            self._header_deadline: asyncio.TimerHandle | None = None
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            self._cancel_header_deadline()
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

        def _cancel_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _header_timed_out(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                body = b'{"success": false, "msg": "the request line and headers did not arrive in time"}'
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
                self.transport.close()

        def on_message_begin(self) -> None:
            self._header_bytes = 0
            if self._header_deadline is None:
                self._arm_header_deadline()
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > MAX_URL_BYTES:
                raise ValueError("the URL is too long")  # the parser fails: uvicorn answers 400 and closes

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value)
            if self._header_bytes > MAX_HEADER_BYTES:
                raise ValueError("the request headers are too large")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._cancel_header_deadline()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)
