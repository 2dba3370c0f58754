"""What one server process holds: its settings, a read-only database engine, and small caches.

:class:`ServerState` is made once per process by :func:`brainmap.server.app.create_app` and reached by the routes
as ``request.app.state.brainmap``. It keeps the request path lean:

* **one engine per process**, read-only at the connection level (SQLite ``PRAGMA query_only``, PostgreSQL
  ``default_transaction_read_only`` and ``statement_timeout`` set once per connection through libpq options), so a
  request costs one pooled checkout and its own statements, nothing more;
* **a per-request time limit**: PostgreSQL's ``statement_timeout``; on SQLite a progress handler set on the raw
  connection for the length of the request (a C call, no SQL);
* **compiled RMA queries** in an LRU keyed by the query's text (parsing and compiling a query again is most of
  the Python work of a simple query); a :class:`~brainmap.store.rma.CompiledQuery` is read-only once compiled, so
  threads share it;
* **rendered answers** of model queries in an LRU bounded by bytes, each stored with a token of the database
  state it was computed from (:class:`DataVersion`) and served only while the database's current token is the
  same, so a load (``brainmap load`` into the database the server reads) invalidates everything at once and
  nothing stale is ever served. SQLite's token is ``PRAGMA data_version`` of a dedicated connection (it changes
  whenever another connection, in any process, commits) plus the file's identity, read before the query runs
  (a commit in between only makes the answer look older than it is). PostgreSQL's is the MVCC snapshot
  (``pg_current_snapshot()``: xmin, xmax and the in-progress transactions, which change with every commit):
  the server's transactions are REPEATABLE READ, so a query and the snapshot it records are one; a lookup
  compares it with a fresh snapshot. Where no token can be read the cache is off;
* **paths** from the database or a request are resolved with :meth:`ServerState.resolve_data_path`, which refuses
  anything outside the data directory (symbolic links included).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, Iterator, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from brainmap.errors import BrainmapError
from brainmap.store.database import Database, data_directory, database_url, make_engine
from brainmap.store.rma import DEFAULT_MAX_ROWS, RmaLimitError

__all__ = [
    "ENV_SETTINGS",
    "CachedAnswer",
    "DataPathError",
    "DataVersion",
    "LruCache",
    "ServerSettings",
    "ServerState",
]

log = logging.getLogger("brainmap.server")

#: Environment variable through which ``brainmap serve`` hands its settings (JSON) to uvicorn's worker processes.
ENV_SETTINGS = "BRAINMAP_SERVER_SETTINGS"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class DataPathError(BrainmapError, PermissionError):
    """A path that resolves outside the data directory (HTTP 403)."""


@dataclass(frozen=True)
class ServerSettings:
    """How a server runs; every field has a default suitable for ``brainmap serve``.

    Attributes:
        data_dir: the data directory (files are served from it and only from it).
        database_url: the database (default: ``$BRAINMAP_DATABASE_URL``, else SQLite in the data directory).
        max_rows: most rows one RMA query or one service page may return (the row cap).
        query_timeout_s: seconds one request's database work may run.
        query_cache_size: compiled RMA queries kept per process.
        result_cache_bytes: bytes of rendered query answers kept per process (0: no answer cache).
        grid_cache_bytes: bytes of built grid-data zips kept per process.
        sync_resolution_um: the bundled annotation used for ``structure_to_image`` centroids (25, 50 or 100).
        pool_size, max_overflow: database connections per process.
        warm_up: load, in a background thread at start-up, what first requests would wait for (the sync
            reference space, the search grids and matrices, the connectivity search).
        token: if set, every route but ``/health`` needs ``Authorization: Bearer TOKEN`` (read-only access).
    """

    data_dir: Path
    database_url: str | None = None
    max_rows: int = DEFAULT_MAX_ROWS
    query_timeout_s: float = 30.0
    query_cache_size: int = 512
    result_cache_bytes: int = 64 * 2**20
    grid_cache_bytes: int = 256 * 2**20
    sync_resolution_um: int = 25
    pool_size: int = 8
    max_overflow: int = 8
    warm_up: bool = True
    token: str | None = None

    def to_env(self) -> dict[str, Any]:
        """JSON-able fields (for :data:`ENV_SETTINGS`)."""
        return {f.name: (str(getattr(self, f.name)) if f.name == "data_dir" else getattr(self, f.name))
                for f in fields(self)}

    @classmethod
    def from_env(cls, values: dict[str, Any]) -> "ServerSettings":
        """The inverse of :meth:`to_env` (unknown keys are refused)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown server setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(values)
        values["data_dir"] = Path(values["data_dir"])
        return cls(**values)


class LruCache(Generic[K, V]):
    """A small thread-safe LRU: at most ``max_items`` entries and, with ``size``, at most ``max_size`` in total."""

    def __init__(self, max_items: int, max_size: int | None = None, size: Callable[[V], int] | None = None):
        self.max_items = max(0, int(max_items))
        self.max_size = max_size
        self._size = size
        self._total = 0
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: K, value: V) -> None:
        if self.max_items == 0:
            return
        cost = self._size(value) if self._size is not None else 0
        if self.max_size is not None and cost > self.max_size:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None and self._size is not None:
                self._total -= self._size(old)
            self._items[key] = value
            self._total += cost
            while self._items and (len(self._items) > self.max_items
                                   or (self.max_size is not None and self._total > self.max_size)):
                _, dropped = self._items.popitem(last=False)
                if self._size is not None:
                    self._total -= self._size(dropped)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0


def _is_timeout(exc: BaseException) -> bool:
    message = str(getattr(exc, "orig", exc)).lower()
    return "interrupted" in message or "statement timeout" in message or "canceling statement" in message


def _read_only_engine(settings: ServerSettings, data_dir: Path) -> Engine:
    """The process's engine: read-only connections, the time limit built in where the backend allows."""
    url = database_url(settings.database_url, data_dir)
    backend = make_url(url).get_backend_name()
    pool = {"pool_size": settings.pool_size, "max_overflow": settings.max_overflow}
    if backend == "postgresql":
        timeout_ms = max(1, int(settings.query_timeout_s * 1000))
        options = f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}"
        # No pre-ping (a round trip per request); a dropped connection fails one request (503) and is replaced.
        # REPEATABLE READ: every statement of a request sees one snapshot, the one its cached answer records.
        return make_engine(url, data_dir, connect_args={"options": options}, pool_pre_ping=False,
                           pool_recycle=3600, isolation_level="REPEATABLE READ", **pool)
    engine = make_engine(url, data_dir, **(pool if backend == "sqlite" and ":memory:" not in url else {}))
    if backend == "sqlite":
        @event.listens_for(engine, "connect")
        def _query_only(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only=ON")
            cursor.close()
    return engine


def _ensure_schema(settings: ServerSettings, data_dir: Path) -> None:
    """Create the tables of an empty database (idempotent); refuse a database of another schema version."""
    from brainmap.store.database import open_database

    database = open_database(settings.database_url, data_dir, create=False)
    try:
        if not database.has_schema():
            log.info("creating the brainmap schema in %s", database.url)
        database.create_schema()
    finally:
        database.dispose()


@dataclass(frozen=True)
class CachedAnswer:
    """A rendered answer and the database change token read before it was computed."""

    version: Hashable
    body: bytes
    media_type: str


class DataVersion:
    """A token that changes whenever the database's contents may have changed (see the module docstring).

    :meth:`current` returns the token, or None when it cannot be read (then nothing is cached). ``local`` is
    True when reading it costs no network round trip (SQLite), so it may be read on the event loop.
    """

    def __init__(self, engine: Engine):
        self.backend = engine.dialect.name
        self.local = self.backend == "sqlite"
        self._lock = threading.Lock()
        self._connection: Any = None
        self._path: Path | None = None
        self._conninfo: str | None = None
        if self.backend == "sqlite":
            database = engine.url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                self._path = Path(database)
        elif self.backend == "postgresql":
            self._conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def current(self) -> Hashable | None:
        with self._lock:
            try:
                return self._read()
            except Exception:  # a lost connection: reconnect next time, cache nothing meanwhile
                self._close()
                return None

    def _read(self) -> Hashable | None:
        if self._path is not None:
            stat = self._path.stat()
            if self._connection is None:
                self._connection = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, isolation_level=None,
                                                   check_same_thread=False)
            (value,) = self._connection.execute("PRAGMA data_version").fetchone()
            return (stat.st_dev, stat.st_ino, value)
        if self._conninfo is not None:
            if self._connection is None:
                import psycopg

                self._connection = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            (value,) = self._connection.execute("SELECT pg_current_snapshot()::text").fetchone()
            return value
        return None

    def _close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:
                pass
            self._connection = None

    def close(self) -> None:
        with self._lock:
            self._close()


class ServerState:
    """Everything one server process shares between requests (see the module docstring)."""

    def __init__(self, settings: ServerSettings, *, create_schema: bool = True):
        self.settings = settings
        self.data_dir = data_directory(settings.data_dir)
        if not self.data_dir.is_dir():
            raise BrainmapError(f"data directory {self.data_dir} does not exist")
        if create_schema:
            _ensure_schema(settings, self.data_dir)
        self.database = Database(_read_only_engine(settings, self.data_dir))
        self.backend = self.database.backend
        self.queries: LruCache[Hashable, Any] = LruCache(settings.query_cache_size)
        self.answers: LruCache[Hashable, CachedAnswer] = LruCache(
            100_000, settings.result_cache_bytes, lambda a: len(a.body) + 200)
        self.data_version = DataVersion(self.engine)
        self.grid_bundles: LruCache[Hashable, bytes] = LruCache(64, settings.grid_cache_bytes, len)
        self._lock = threading.Lock()
        self._spaces: dict[int, Any] = {}
        self._centroids: LruCache[tuple[int, int | None], Any] = LruCache(4096)
        self._file_hashes: dict[Path, tuple[int, int, str]] = {}
        self.started = time.time()
        #: Set when the start-up warm-up is done (at once when there is none): ``/health`` reports it.
        self.warmed = threading.Event()
        if not settings.warm_up:
            self.warmed.set()

    # -- the database ------------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        return self.database.engine

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled read-only connection for one request, with the time limit; a timeout becomes
        :class:`~brainmap.store.rma.RmaLimitError` (HTTP 400)."""
        timeout_s = self.settings.query_timeout_s
        with self.engine.connect() as connection:
            raw = connection.connection.dbapi_connection if self.backend == "sqlite" else None
            if isinstance(raw, sqlite3.Connection):
                deadline = time.monotonic() + timeout_s
                raw.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
            try:
                yield connection
            except DBAPIError as exc:
                if _is_timeout(exc):
                    raise RmaLimitError(f"the query ran longer than {timeout_s:g} s; narrow it",
                                        expected="a narrower query") from None
                raise
            finally:
                if isinstance(raw, sqlite3.Connection):
                    raw.set_progress_handler(None, 0)

    def run(self, work: Callable[[Connection], V]) -> V:
        """``work(connection)`` on a read-only connection with the time limit."""
        with self.connection() as connection:
            return work(connection)

    def cached_answer(self, key: Hashable) -> CachedAnswer | None:
        """The answer kept under ``key`` if the database has not changed since it was computed."""
        if self.settings.result_cache_bytes <= 0:
            return None
        found = self.answers.get(key)
        if found is None:
            return None
        if found.version != self.data_version.current():
            return None
        return found

    def run_versioned(self, work: Callable[[Connection], V]) -> tuple[V, Hashable | None]:
        """``work(connection)`` and the token of the database state it saw (None: do not keep the answer)."""
        if self.settings.result_cache_bytes <= 0:
            return self.run(work), None
        if self.backend == "postgresql":
            if self.data_version.current() is None:  # no snapshot function (or no connection): no caching
                return self.run(work), None
            with self.connection() as connection:
                version = connection.exec_driver_sql("SELECT pg_current_snapshot()::text").scalar()
                return work(connection), version
        version = self.data_version.current()
        return self.run(work), version

    def keep_answer(self, key: Hashable, version: Hashable | None, body: bytes, media_type: str) -> None:
        """Keep an answer computed after ``version`` was read (small answers only)."""
        if version is not None and len(body) <= self.settings.result_cache_bytes // 16:
            self.answers.put(key, CachedAnswer(version, body, media_type))

    def cached_query(self, key: Hashable, build: Callable[[], V]) -> V:
        """The compiled query under ``key``, built (and kept) on first use; errors are not kept."""
        found = self.queries.get(key)
        if found is None:
            found = build()
            self.queries.put(key, found)
        return found

    # -- the atlas ---------------------------------------------------------------------------------------------
    @cached_property
    def structure_tree(self) -> Any:
        """The bundled ontology (structure graph 1)."""
        from brainmap.atlas import StructureTree

        return StructureTree.bundled()

    def reference_space(self, resolution: int) -> Any:
        """A bundled reference space (25, 50 or 100 um), loaded once per process."""
        with self._lock:
            space = self._spaces.get(resolution)
            if space is None:
                from brainmap.atlas import ReferenceSpace

                space = ReferenceSpace.bundled(resolution)
                self._spaces[resolution] = space
            return space

    def structure_centroid(self, structure_id: int, hemisphere_id: int | None = None) -> Any:
        """A structure's centroid (AP, DV, LR) um on the sync reference space; kept per process."""
        key = (int(structure_id), hemisphere_id)
        found = self._centroids.get(key)
        if found is None:
            from brainmap.specimen.sync import structure_centroid_um

            space = self.reference_space(self.settings.sync_resolution_um)
            found = structure_centroid_um(space, structure_id, hemisphere_id)
            self._centroids.put(key, found)
        return found

    # -- files -------------------------------------------------------------------------------------------------
    def resolve_data_path(self, path: str | os.PathLike[str]) -> Path:
        """The existing file ``path`` names (relative to the data directory, or absolute), resolved.

        Raises :class:`DataPathError` if it resolves (symbolic links followed) outside the data directory, and
        ``FileNotFoundError`` if there is no such regular file.
        """
        text = os.fspath(path)
        if "\0" in text:
            raise DataPathError("a path may not contain NUL")
        candidate = Path(text)
        if not candidate.is_absolute():
            candidate = self.data_dir / candidate
        resolved = candidate.resolve(strict=False)
        if not resolved.is_relative_to(self.data_dir):
            raise DataPathError(f"{text!r} is outside the data directory")
        if not resolved.is_file():
            raise FileNotFoundError(text)
        return resolved

    def file_sha256(self, path: Path) -> str:
        """The sha256 of a file (cached while its size and mtime are unchanged)."""
        from brainmap.store.load import file_sha256

        stat = path.stat()
        cached = self._file_hashes.get(path)
        if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            return cached[2]
        digest = file_sha256(path)
        self._file_hashes[path] = (stat.st_size, stat.st_mtime_ns, digest)
        return digest

    def close(self) -> None:
        """Close the pooled connections."""
        self.data_version.close()
        self.database.dispose()


def settings_for(data_dir: str | os.PathLike[str], database_url: str | None = None, **overrides: Any
                 ) -> ServerSettings:
    """:class:`ServerSettings` with ``overrides`` (unknown names are refused)."""
    known = {f.name for f in fields(ServerSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown server setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return ServerSettings(data_dir=Path(data_dir), database_url=database_url, **overrides)

