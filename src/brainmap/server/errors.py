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
the database is unreachable                           503
anything else                                         500     (logged with its traceback)
====================================================  ======  ==============================================

Responses to ``.xml`` requests are XML (Allen's ``<Response success="false">``); all others are JSON.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from brainmap.errors import BrainmapError, UnknownStructureError
from brainmap.store.rma import RmaError, render_error
from brainmap.store.rma.envelope import error_envelope

__all__ = ["ApiError", "NotFound", "error_response", "install_error_handlers", "status_of"]

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
    return 500


def _is_disconnect(exc: DBAPIError) -> bool:
    return bool(getattr(exc, "connection_invalidated", False)) or "connect" in str(exc.orig).lower()


def _wants_xml(request: Request) -> bool:
    return request.url.path.endswith(".xml")


def error_response(exc: BaseException, request: Request | None = None, status: int | None = None) -> Response:
    """Allen's error envelope for ``exc`` (XML for ``.xml`` paths)."""
    status = status if status is not None else status_of(exc)
    if status >= 500 and not isinstance(exc, ApiError):
        message = ("the database is unavailable; try again shortly" if status == 503
                   else "internal server error (logged)")
        exc = ApiError(message, status)
    fmt = "xml" if request is not None and _wants_xml(request) else "json"
    if fmt == "json":
        envelope = error_envelope(exc)
        if isinstance(exc, ApiError) and exc.detail:
            envelope["error"].update(exc.detail)
        if isinstance(exc, FileNotFoundError):
            envelope["msg"] = f"no such file: {exc.args[0] if exc.args else ''}"
        body, media_type = json.dumps(envelope, default=str), "application/json"
    else:
        body, media_type = render_error(exc, "xml")
    return Response(body, status_code=status, media_type=media_type)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
        given = error.get("input")
        shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
        parts.append(f"{where}: {error.get('msg', 'invalid')}{shown}")
    return "invalid request parameter(s): " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception with Allen's envelope (see the module docstring)."""

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

    async def _expected(request: Request, exc: Exception) -> Response:
        status = status_of(exc)
        if status >= 500:
            log.error("error answering %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(exc, request, status)

    # Known kinds go to Starlette's ExceptionMiddleware (answered, not re-raised); only a truly unexpected
    # exception reaches the catch-all, which Starlette answers and then re-raises for the server to log.
    for kind in (BrainmapError, FileNotFoundError, DBAPIError):
        app.add_exception_handler(kind, _expected)
    app.add_exception_handler(Exception, _expected)
