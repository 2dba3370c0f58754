"""Atomic file writes: a crash never leaves a half-written file under the real name.

Every writer in brainmap goes through :func:`atomic_write`. The data is written to a temporary file in the
target's directory (so that the final rename never crosses a file system), flushed and fsync'ed, and only then
``os.replace``'d onto the target. If anything fails, the temporary file is removed and an existing target is
left exactly as it was.

A writer of many files that marks their completeness with one last file (a data set folder's ``dataset.json``)
writes the many with ``durable=False`` (still renamed into place, never half-written under their names, but not
fsync'ed one by one), makes them durable together with :func:`fsync_paths`, and only then writes the marker.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "fsync_paths", "write_atomically"]


def _open_temporary(target: Path) -> tuple[Path, int]:
    """Create and open (exclusively) a fresh hidden temporary file next to ``target``."""
    while True:
        temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 lets the umask decide the permissions, as for a file created by open().
            return temp, os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits; only on a collision
            continue


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Files fsync'ed at once by :func:`fsync_paths`: with several in flight the file system commits its journal for
#: many of them together. Measured (ext4, 370 files of 45 kB, 2026-12-06): one by one after writing 0.7-1.6 s,
#: four at a time 0.26-0.31 s (more threads: no faster); fsync'ed as each was written 1.3-1.8 s.
FSYNC_THREADS = 4


def fsync_paths(files: Iterable[str | os.PathLike[str]], directories: Iterable[str | os.PathLike[str]] = ()
                ) -> None:
    """Make files written with ``atomic_write(..., durable=False)`` durable: fsync every file (a few at a time),
    then every directory (their renames). An ``OSError`` of a file (it vanished, the disk failed) is raised."""
    files = [Path(f) for f in files]
    if files:
        with ThreadPoolExecutor(max_workers=min(FSYNC_THREADS, len(files))) as pool:
            for _ in pool.map(_fsync_file, files):
                pass
    for directory in directories:
        _fsync_directory(Path(directory))


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", *, durable: bool = True,
                 **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` when the ``with`` block succeeds.

    ``mode`` is ``"wb"`` (binary, the default) or ``"w"`` (text; ``open_kwargs`` such as ``encoding`` or
    ``newline`` are passed to :func:`open`). If the block raises, the temporary file is deleted and ``path`` is
    untouched. If ``path`` already exists, its permission bits are kept. With ``durable=False`` neither the file
    nor its folder is fsync'ed (the caller does it for many files at once: :func:`fsync_paths`); the write is
    still all-or-nothing for a crash of the process, not yet for a power loss.

    >>> with atomic_write("out.csv", "w", encoding="utf-8") as fh:  # doctest: +SKIP
    ...     fh.write("id,name\\n")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', not {mode!r}")
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: the folder {target.parent} does not exist")
    temp, fd = _open_temporary(target)
    try:
        with open(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        try:
            os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))
        except FileNotFoundError:
            pass
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_directory(target.parent)


def write_atomically(
    path: str | os.PathLike[str], writer: Callable[[IO[Any]], object], mode: str = "wb", **open_kwargs: Any
) -> None:
    """Call ``writer(fh)`` on a temporary file and move it onto ``path`` if it returns without raising.

    The callable form of :func:`atomic_write`, e.g. ``write_atomically(p, lambda fh: df.to_csv(fh), "w")``.
    """
    with atomic_write(path, mode, **open_kwargs) as fh:
        writer(fh)
