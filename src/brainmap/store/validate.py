"""Checks that make ``brainmap load`` unable to lose data: whole-table validation before anything is written, and
one load at a time per database.

* :func:`check_csv_table`: a CSV (or ``.csv.gz``) unionize table is read through once, before pandas parses it:
  every row must have as many fields as the header, no field may be empty in a required column, and the file must
  end with a newline. A file cut mid-row (a copy interrupted, a disk full) fails here, naming the file and the
  line, instead of loading its last row with truncated numbers or NULLs -- and, on a re-load, deleting the data
  set's rows that the cut removed.
* :func:`load_lock`: loads into one database serialize. SQLite: an exclusive ``flock`` on
  ``{database}.load-lock`` beside the database file; PostgreSQL: a session advisory lock. The second load waits
  (printing that it does) and then runs; loads are idempotent, so it finds the first one's rows and writes only
  its own. Before this, two first loads into a new database raced to create the schema and the loser died with a
  raw ``IntegrityError`` / ``OperationalError``.

(The loader's transaction is already one per load: every table is read and checked before it opens.)
"""

from __future__ import annotations

import csv
import fcntl
import gzip
import io
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from brainmap.errors import FormatError

__all__ = ["LOAD_LOCK_KEY", "check_csv_table", "load_lock"]

#: The PostgreSQL advisory lock key of ``brainmap load`` (any constant 64-bit number; "brainmap" in ASCII).
LOAD_LOCK_KEY = 0x627261696E6D6170


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def check_csv_table(path: Path, required: Sequence[str] = ("structure_id", "hemisphere_id")) -> None:
    """Refuse a CSV table that is not whole: a row of another width than the header, an empty ``required``
    field, or a last line without its newline (a file cut mid-row). Raises FormatError naming ``path`` and the
    line; reads the file once, in a stream."""
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise FormatError(f"{path}: the table is empty (no header line)")
            width = len(header)
            columns = [header.index(name) for name in required if name in header]
            for row in reader:
                if not row:
                    continue
                if len(row) != width:
                    raise FormatError(f"{path}: line {reader.line_num} has {len(row)} fields, the header has "
                                      f"{width} (a row cut short or a stray separator)")
                for index in columns:
                    if not row[index].strip():
                        raise FormatError(f"{path}: line {reader.line_num}: {header[index]} is empty")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as exc:
        raise FormatError(f"{path}: cannot be read as a CSV table: {type(exc).__name__}: {exc}") from None
    last = _last_byte(path)
    if last not in (b"\n", b""):
        raise FormatError(f"{path}: the last line ends without a newline: the file looks cut mid-row (a copy or "
                          "write that did not finish); nothing was loaded")


def _last_byte(path: Path) -> bytes:
    """The last byte of the (decompressed) file."""
    if path.name.lower().endswith(".gz"):
        last = b""
        with gzip.open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                last = block[-1:]
        return last
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return b""
        fh.seek(size - 1)
        return fh.read(1)


@contextmanager
def load_lock(database: object, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the load lock of ``database`` (a :class:`~brainmap.store.database.Database`), waiting for another
    load to finish; ``say`` is told once if it has to wait."""
    url = make_url(str(database.engine.url))  # type: ignore[attr-defined]
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database and url.database != ":memory:":
        with _file_lock(Path(url.database).with_name(Path(url.database).name + ".load-lock"), say):
            yield
        return
    if backend == "postgresql":
        with database.engine.connect() as conn:  # type: ignore[attr-defined]
            _wait(lambda: conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOAD_LOCK_KEY}).scalar(),
                  lambda: conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOAD_LOCK_KEY}), say)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOAD_LOCK_KEY})
                conn.commit()
        return
    yield


@contextmanager
def _file_lock(path: Path, say: Callable[[str], None] | None) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _wait(lambda: _try_flock(fd), lambda: fcntl.flock(fd, fcntl.LOCK_EX), say)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait(try_lock: Callable[[], object], lock: Callable[[], object], say: Callable[[str], None] | None) -> None:
    if try_lock():
        return
    if say is not None:
        say("another brainmap load is writing to this database; waiting for it to finish")
    started = time.monotonic()
    lock()
    if say is not None:
        say(f"  waited {time.monotonic() - started:.1f} s")
