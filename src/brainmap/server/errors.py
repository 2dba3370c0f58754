"""Errors as HTTP answers: every failure is Allen's envelope ``{success: false, msg, error: {...}}`` with a 4xx
status for bad input and never a 500 for it.

====================================================  ======  ==============================================
what                                                  status  examples
====================================================  ======  ==============================================
:class:`~brainmap.store.rma.RmaError` (syntax,        400     ``[acronym$eq'VISp`` (no closing quote), an
unknown name, bad value, limits, timeouts)                    unknown attribute, ``num_rows$eq10000000``
bad parameters (:class:`ApiError`, validation,        400     ``x=abc``, an unknown service parameter, an
``SearchInputError``, unknown structure, ValueError           empty domain, an unaligned data set
subclasses of :class:`~brainmap.errors.BrainmapError`)
a path outside the data directory                     403     a WellKnownFile row naming ``../../etc/passwd``
an unknown data set, image, file or route             404     ``/grid_data/download/999``
a number the database cannot hold, a query SQLite      400     an id >= 2^63 reaching the database, 1,000
cannot compile (too deep, too many terms)                     filters (``Expression tree is too large``)
the database is unreachable                           503
anything else                                         500     logged with its traceback and a request id;
                                                              the answer holds the id, never a path
====================================================  ======  ==============================================

Responses to ``.xml`` requests are XML (Allen's ``<Response success="false">``); all others are JSON. Messages
never show absolute paths (:func:`scrub_paths`). This module is the one place error answers are built.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from brainmap.errors import BrainmapError, UnknownStructureError
from brainmap.store.rma import RmaError, render_error
from brainmap.store.rma.envelope import error_envelope

__all__ = ["ApiError", "NotFound", "UnexpectedErrorMiddleware", "answer_exception", "error_response",
           "install_error_handlers", "scrub_paths", "status_of"]

log = logging.getLogger("brainmap.server")


class ApiError(BrainmapError):
    """A request the server cannot answer as asked; ``status`` is the HTTP status (400 by default)."""

    status = 400

    def __init__(self, message: str, status: int | None = None, **detail: Any) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.detail = detail

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "bad request"


class NotFound(ApiError, LookupError):
    """An unknown data set, image, file or service (HTTP 404)."""

    status = 404


def status_of(exc: BaseException) -> int:
    """The HTTP status for an exception (see the module docstring)."""
    from brainmap.server.state import DataPathError

    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, RmaError):
        return 400
    if isinstance(exc, DataPathError):
        return 403
    if isinstance(exc, FileNotFoundError):
        return 404
    if isinstance(exc, UnknownStructureError):
        return 400
    if isinstance(exc, BrainmapError) and isinstance(exc, LookupError):
        return 404  # unknown data set (search), image not in a data set, empty structure
    if isinstance(exc, BrainmapError) and isinstance(exc, ValueError):
        return 400
    if isinstance(exc, OperationalError) and _is_disconnect(exc):
        return 503
    if isinstance(exc, OverflowError) or isinstance(exc, DataError):
        return 400  # a number the database cannot hold (SQLite: int too large; PostgreSQL: out of range)
    if isinstance(exc, OperationalError) and any(m in str(exc.orig) for m in _QUERY_TOO_COMPLEX):
        return 400
    return 500


#: SQLite's answers to a query beyond its compile-time limits (the RMA parser's limits should come first).
_QUERY_TOO_COMPLEX = ("parser stack overflow", "Expression tree is too large", "too many SQL variables",
                      "too many terms in compound SELECT", "at most 64 tables in a join")


def _message_400(exc: BaseException) -> str | None:
    if isinstance(exc, OverflowError) or isinstance(exc, DataError):
        return "a number in the request is out of range (ids and integers are 64-bit)"
    if isinstance(exc, OperationalError):
        return "the query is too complex for the database (fewer filters or a shallower include)"
    return None


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/(?:[^\s'\"/<>]+/)*[^\s'\"/<>,;)]*")


def scrub_paths(message: str) -> str:
    """``message`` with every absolute file system path cut to its last component (``<...>/name``).

    A path is scrubbed when its first component exists at the root of this machine (``/home``, ``/tmp``,
    ``/usr``, ...); URL paths (``/api/v2/...``) are kept."""
    def cut(match: re.Match[str]) -> str:
        text = match.group()
        first = text.split("/", 2)[1] if text.count("/") >= 1 else ""
        if not first or not os.path.isdir("/" + first) or text.count("/") < 2:
            return text
        return "<...>/" + text.rstrip("/").rsplit("/", 1)[-1]

    return _ABSOLUTE_PATH.sub(cut, message)


def _is_disconnect(exc: DBAPIError) -> bool:
    return bool(getattr(exc, "connection_invalidated", False)) or "connect" in str(exc.orig).lower()


def _wants_xml(request: Request) -> bool:
    return request.url.path.endswith(".xml")


def error_response(exc: BaseException, request: Request | None = None, status: int | None = None,
                   request_id: str | None = None) -> Response:
    """Allen's error envelope for ``exc`` (XML for ``.xml`` paths); absolute paths are cut from the message. A
    500 says only that it was logged, under ``request_id``."""
    status = status if status is not None else status_of(exc)
    if status >= 500 and not isinstance(exc, ApiError):
        message = ("the database is unavailable; try again shortly" if status == 503
                   else f"internal server error (logged as request {request_id})")
        exc = ApiError(message, status, **({"request_id": request_id} if request_id else {}))
    elif status == 400 and _message_400(exc) is not None:
        exc = ApiError(_message_400(exc) or "", 400)
    else:
        scrubbed = scrub_paths(str(exc))
        if scrubbed != str(exc):
            if isinstance(exc, FileNotFoundError):
                exc = ApiError(f"no such file: {scrub_paths(str(exc.args[0] if exc.args else ''))}", status)
            else:
                exc = ApiError(scrubbed, status, **(exc.detail if isinstance(exc, ApiError) else {}))
    fmt = "xml" if request is not None and _wants_xml(request) else "json"
    if fmt == "json":
        envelope = error_envelope(exc)
        if isinstance(exc, ApiError) and exc.detail:
            envelope["error"].update(exc.detail)
        if isinstance(exc, FileNotFoundError):
            envelope["msg"] = f"no such file: {scrub_paths(str(exc.args[0] if exc.args else ''))}"
        body, media_type = json.dumps(envelope, default=str), "application/json"
    else:
        body, media_type = render_error(exc, "xml")
    headers = {"X-Request-Id": request_id} if request_id else None
    return Response(body, status_code=status, media_type=media_type, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
        given = error.get("input")
        shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
        parts.append(f"{where}: {error.get('msg', 'invalid')}{shown}")
    return "invalid request parameter(s): " + "; ".join(parts)


async def answer_exception(request: Request, exc: Exception) -> Response:
    """The answer to ``exc`` (:func:`status_of`); a 500 is logged with its traceback under a new request id."""
    status = status_of(exc)
    request_id = None
    if status >= 500:
        request_id = uuid.uuid4().hex[:16]
        log.error("request %s: error answering %s %s", request_id, request.method, request.url.path, exc_info=exc)
    return error_response(exc, request, status, request_id)


class UnexpectedErrorMiddleware:
    """Answers an exception that no handler took (a 500 with a request id, logged once) before it reaches the
    server. Starlette's catch-all answers it too, but then re-raises it: uvicorn logs it a second time and closes
    the connection, so a keep-alive client's next request on that connection was reset (seen through a real
    server; Starlette's in-process test client hid it). An exception after the answer has started is re-raised:
    only the server can end that response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            response = await answer_exception(Request(scope, receive), exc)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception with Allen's envelope (see the module docstring). Call it before adding other
    middleware: :class:`UnexpectedErrorMiddleware` must sit inside them (the request log sees its 500)."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(ApiError(_validation_message(exc), 400), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}; see /docs for the API"
        response = error_response(ApiError(message, exc.status_code), request)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    # Known kinds go to Starlette's ExceptionMiddleware (answered, not re-raised); anything else is answered by
    # UnexpectedErrorMiddleware just outside it, and only what an outer middleware raises reaches the catch-all
    # (Starlette's ServerErrorMiddleware answers it and re-raises it for the server).
    for kind in (BrainmapError, FileNotFoundError, DBAPIError, OverflowError):
        app.add_exception_handler(kind, answer_exception)
    app.add_exception_handler(Exception, answer_exception)
    app.add_middleware(UnexpectedErrorMiddleware)
