"""Engines and sessions: SQLite in the data directory by default, PostgreSQL (or any URL) on request.

Where the database is, first match wins:

1. an explicit ``url`` argument (``postgresql+psycopg://user@host/db``, ``sqlite:///path/brainmap.sqlite``);
2. the environment variable ``BRAINMAP_DATABASE_URL``;
3. ``sqlite:///<data directory>/brainmap.sqlite``, the data directory being the ``data_dir`` argument, else
   ``BRAINMAP_DATA_DIR``, else ``./brainmap-data``.

A plain ``postgresql://`` URL is taken to mean the psycopg 3 driver. SQLite connections get
``foreign_keys=ON`` (integrity as on PostgreSQL), ``case_sensitive_like=ON`` (so ``LIKE`` means the same on
both: RMA's ``$li`` is case-sensitive, ``$il`` is not), WAL journaling and a busy timeout, so that a server
and a loader can share the file.
"""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Engine, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from brainmap.errors import BrainmapError
from brainmap.store.models import SCHEMA_VERSION, Base, SchemaInfo

__all__ = [
    "DATABASE_FILE",
    "ENV_DATABASE_URL",
    "ENV_DATA_DIR",
    "Database",
    "DatabaseError",
    "add_data_arguments",
    "data_directory",
    "database_url",
    "make_engine",
    "open_database",
]

ENV_DATABASE_URL = "BRAINMAP_DATABASE_URL"
ENV_DATA_DIR = "BRAINMAP_DATA_DIR"
DATABASE_FILE = "brainmap.sqlite"
DEFAULT_DATA_DIR = "brainmap-data"


class DatabaseError(BrainmapError, RuntimeError):
    """The database cannot be opened or has a schema this version does not know."""


def data_directory(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$BRAINMAP_DATA_DIR``, else ``./brainmap-data`` (absolute)."""
    chosen = data_dir if data_dir is not None else os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def database_url(url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> str:
    """The database URL to use (see the module docstring for the order of choice)."""
    chosen = url or os.environ.get(ENV_DATABASE_URL)
    if not chosen:
        return f"sqlite:///{data_directory(data_dir) / DATABASE_FILE}"
    if chosen.startswith("postgresql://") or chosen.startswith("postgres://"):
        chosen = "postgresql+psycopg://" + chosen.split("://", 1)[1]
    return chosen


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str | None = None, data_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url`` (resolved by :func:`database_url`); a SQLite file's folder is created."""
    resolved = database_url(url, data_dir)
    parsed = make_url(resolved)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(resolved, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        if database and database != ":memory:":
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(resolved, **kwargs)


class Database:
    """An engine with a session factory; ``create_schema()`` makes the tables (idempotent).

    Use as a context manager or call :meth:`dispose` to close its connections.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessionmaker = sessionmaker(engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The URL without its password."""
        return self.engine.url.render_as_string(hide_password=True)

    def create_schema(self) -> None:
        """Create the missing tables and record the schema version; refuse a database of another version."""
        Base.metadata.create_all(self.engine)
        with self.sessionmaker.begin() as session:
            row = session.get(SchemaInfo, "schema_version")
            if row is None:
                session.add(SchemaInfo(key="schema_version", value=str(SCHEMA_VERSION)))
            elif row.value != str(SCHEMA_VERSION):
                raise DatabaseError(f"database {self.url} has schema version {row.value}; this brainmap uses "
                                    f"{SCHEMA_VERSION}")

    def has_schema(self) -> bool:
        """Whether the tables exist."""
        return inspect(self.engine).has_table(SchemaInfo.__tablename__)

    def schema_version(self) -> int | None:
        """The recorded schema version, or None for an empty database."""
        if not self.has_schema():
            return None
        with self.sessionmaker() as session:
            value = session.scalar(select(SchemaInfo.value).where(SchemaInfo.key == "schema_version"))
        return int(value) if value is not None else None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self.sessionmaker.begin() as session:
            yield session

    def dispose(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"


def open_database(url: str | None = None, data_dir: str | os.PathLike[str] | None = None, *,
                  create: bool = True, **engine_kwargs: Any) -> Database:
    """Open the database (see :func:`database_url`); with ``create`` make the schema if it is missing."""
    database = Database(make_engine(url, data_dir, **engine_kwargs))
    if create:
        database.create_schema()
    return database


from brainmap.store.options import add_data_arguments  # noqa: E402  (kept importable from here)
