"""Structured request logs: one JSON line per request.

Each line holds ``ts`` (UTC, ISO 8601), ``method``, ``path``, ``query`` (at most 500 characters), ``status``,
``duration_ms`` (from the request's arrival to its last body byte), ``bytes`` (of the response body) and
``client``; ``pid`` tells uvicorn's worker processes apart. Lines go to the ``brainmap.server.access`` logger,
which :func:`configure_logging` points at stderr or a file; uvicorn's own access log is turned off by
``brainmap serve`` so that each request is logged once.

The middleware is plain ASGI (no per-request task or body buffering). The handler that
:func:`configure_logging` installs (:class:`BufferedHandler`) collects lines and writes them every 0.25 s (and
on close) with one system call: a write per request would cost as much as a simple cached query.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import IO, Any, Awaitable, Callable

__all__ = ["ACCESS_LOGGER", "BufferedHandler", "RequestLogMiddleware", "configure_logging"]

ACCESS_LOGGER = "brainmap.server.access"
_MAX_QUERY = 500

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestLogMiddleware:
    """ASGI middleware writing one JSON line per HTTP request to the ``brainmap.server.access`` logger."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], logger: logging.Logger | None = None):
        self.app = app
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self.pid = os.getpid()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 500, "bytes": 0}

        async def logged_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                state["status"] = message["status"]
            elif kind == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            elif kind == "http.response.zerocopysend" or kind == "http.response.pathsend":
                state["bytes"] += int(message.get("count", 0) or 0)
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            if self.logger.isEnabledFor(logging.INFO):
                self.logger.info(self._line(scope, state, time.perf_counter() - started))

    def _line(self, scope: Scope, state: dict[str, int], seconds: float) -> str:
        query = scope.get("query_string", b"").decode("latin-1")
        client = scope.get("client")
        now = time.time()
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "method": scope.get("method", ""),
            "path": scope.get("path", ""),
            "query": query[:_MAX_QUERY],
            "status": state["status"],
            "duration_ms": round(seconds * 1000.0, 3),
            "bytes": state["bytes"],
            "client": f"{client[0]}:{client[1]}" if client else None,
            "pid": self.pid,
        }
        return json.dumps(record, separators=(",", ":"))


class BufferedHandler(logging.Handler):
    """A handler that collects formatted lines and writes them every ``interval`` seconds, each batch with one
    ``os.write`` of whole lines to a file descriptor opened for appending.

    One write per batch keeps lines whole when several worker processes append to the same file. Lines are not
    lost on a normal exit: ``close`` writes what is pending (:func:`logging.shutdown` closes handlers). Like
    ``FileHandler`` it opens its file again for a record that arrives after ``close`` (``logging.config`` closes
    every existing handler when it configures logging, as uvicorn does at start-up).
    """

    def __init__(self, opener: Callable[[], int], interval: float = 0.25, max_pending: int = 1 << 16):
        super().__init__()
        self._opener = opener
        self.interval = interval
        self.max_pending = max_pending
        self._fd: int | None = None
        self._pending: list[str] = []
        self._size = 0
        self._stop = threading.Event()
        self._open()

    def _open(self) -> None:
        self._fd = self._opener()
        self._stop = threading.Event()
        threading.Thread(target=self._flush_periodically, args=(self._stop,), name="brainmap-log-flush",
                         daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self.acquire()
        try:
            if self._fd is None:
                self._open()
            self._pending.append(line)
            self._size += len(line)
            if self._size >= self.max_pending:
                self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if self._pending and self._fd is not None:
            data = "".join(self._pending).encode("utf-8", "replace")
            self._pending.clear()
            self._size = 0
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _flush_periodically(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.flush()
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.acquire()
        try:
            self._write()
            if self._fd is not None:
                os.close(self._fd)
            self._fd = None
        finally:
            self.release()
        super().close()


def _buffered(stream: IO[str] | None, path: str | os.PathLike[str] | None) -> logging.Handler:
    if path is not None:
        target_path = os.fspath(path)
        return BufferedHandler(lambda: os.open(target_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    target = stream or sys.stderr
    try:
        fd = target.fileno()
    except (AttributeError, OSError, ValueError):  # no file descriptor (a StringIO): a plain handler
        return logging.StreamHandler(target)
    return BufferedHandler(lambda: os.dup(fd))


def configure_logging(stream: IO[str] | None = None, path: str | os.PathLike[str] | None = None,
                      level: int = logging.INFO) -> logging.Logger:
    """Send the request log to ``path`` (appended) or ``stream`` (default stderr), buffered (see the module
    docstring); the server's own messages (errors with tracebacks, start-up) go to ``stream`` unbuffered.

    Idempotent: a second call replaces the handlers installed by the first.
    """
    access = logging.getLogger(ACCESS_LOGGER)
    server = logging.getLogger("brainmap.server")
    for logger in (access, server):
        for old in [h for h in logger.handlers if getattr(h, "_brainmap", False)]:
            logger.removeHandler(old)
            old.close()
        logger.setLevel(level)
    handler = _buffered(stream, path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._brainmap = True  # type: ignore[attr-defined]
    access.addHandler(handler)
    access.propagate = False
    server_handler = logging.StreamHandler(stream or sys.stderr)
    server_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    server_handler._brainmap = True  # type: ignore[attr-defined]
    server.addHandler(server_handler)
    server.propagate = False
    return access
