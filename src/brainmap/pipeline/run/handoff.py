"""Arrays handed from a worker process to the main process through shared memory on the same host.

A run's main process makes a :class:`Handoff` (a private directory in ``/dev/shm`` named after its process id
and a random token); a worker on the same host allocates a section's output arrays in one file there
(:meth:`Handoff.allocate`: the arrays are views of the file's mapping, so whatever fills them writes shared
memory directly) and returns the small :class:`SharedBlock` naming it instead of the arrays; the main process
maps the file (:meth:`SharedBlock.open`), reads the arrays in place and hands the block back to the run's pool
(:meth:`SharedBlock.recycle`), whose blocks the workers reuse: a tmpfs file's pages are allocated, zeroed and
freed once, not per section. Nothing crosses a socket but the name (docs/performance-demo.md, round 8: 14 MB per
25 um connectivity section, ~3.5 GB per demo, were pickled, sent over loopback TCP and received).

Why plain files in ``/dev/shm`` and not :mod:`multiprocessing.shared_memory`: on Python < 3.13 every process
that creates *or attaches* a ``SharedMemory`` registers it with its own resource tracker, which unlinks it (and
warns of a "leaked" segment) when that process exits -- a worker's tracker would remove blocks the main process
has not read, and the main process's would warn about blocks it already unlinked (CPython gh-82300; 3.13's
``track=False`` is not available on 3.11).
A file opened with ``O_EXCL`` in a directory of our own has no tracker, and the directory gives a run one name to
sweep: :meth:`Handoff.close` removes it with whatever is left in it (the pool; blocks of sections fetched but
dropped after an error, or never fetched: a cancelled future, Ctrl-C), and :meth:`Handoff.create` removes the directories of
runs whose process is gone (killed). A worker that finds the directory gone (the run closed: a cancelled task
still running) or on another host, or a full ``/dev/shm``, returns its arrays in-band instead (None from
:meth:`Handoff.allocate`).
"""

from __future__ import annotations

import mmap
import os
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["Handoff", "SharedBlock", "SHM_ROOT", "sweep_stale"]

#: Where the run directories are made (Linux's shared-memory file system).
SHM_ROOT = Path("/dev/shm")
_PREFIX = "brainmap-handoff-"
_ALIGN = 64  # every array starts on a cache line


def _host() -> str:
    """This machine's identity: its host name and (Linux) the kernel's boot id."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_stale(root: Path = SHM_ROOT) -> list[Path]:
    """Remove the hand-off directories under ``root`` whose process is gone (a run killed before it could sweep
    its own); returns them."""
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        pid = name[len(_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(root / name, ignore_errors=True)
            removed.append(root / name)
    return removed


#: Blocks read are kept for reuse (``free/`` in the run's directory), at most this many and this many bytes: a new
#: tmpfs file's pages are allocated, zeroed and freed by the kernel, ~13 ms of system time per 14 MB block on both
#: sides (measured, 2026-12-06: a fresh block written and read 15 ms, a reused one 4.5 ms), more than the socket
#: copies it saves. With sections eight to a task, two workers hand over 32 blocks a round (a 25 um and a 100 um
#: partial per section): a pool of 16 was full at 314 of the demo's 492 recycles, and 166 of its 246 25 um blocks
#: were made afresh (158 discarded); with 64, 79 (47 discarded), the peak of /dev/shm the same (1.0-1.7 GB, set by
#: the blocks in flight). The bytes bound what a run's pool holds after its peak (a 10 um run's blocks are larger).
POOL_BLOCKS = 64
POOL_BYTES = 1 << 30


@dataclass(frozen=True)
class SharedBlock:
    """One file of arrays in a run's hand-off directory: what a worker returns instead of the arrays.

    ``layout`` holds each array's dtype (numpy's string), length and byte offset in the file; ``size`` is the
    bytes they take (the file may be larger: a reused block)."""

    path: str
    size: int
    layout: tuple[tuple[str, int, int], ...]

    def open(self) -> list[np.ndarray]:
        """The arrays, read-only views of the file's mapping (one call maps every page: ``MAP_POPULATE``). Read
        them, drop them, then :meth:`recycle` the block (or :meth:`discard` it)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            memory = mmap.mmap(fd, self.size, flags=flags, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        return [np.frombuffer(memory, dtype=np.dtype(dtype), count=count, offset=offset)
                for dtype, count, offset in self.layout]

    def recycle(self) -> None:
        """Hand the block read back to the run's pool of free blocks (its pages kept for the next one a worker
        allocates), or unlink it when the pool is full. No view of its arrays may be used after this."""
        pool = os.path.join(os.path.dirname(self.path), "free")
        try:
            pooled = [_pooled_size(name) for name in os.listdir(pool)]
            size = _file_size(self.path)
            if len(pooled) < POOL_BLOCKS and sum(pooled) + size <= POOL_BYTES:
                os.rename(self.path, os.path.join(pool, f"{size}-{secrets.token_hex(8)}"))
                return
        except OSError:  # the run closed meanwhile
            pass
        self.discard()

    def discard(self) -> None:
        """Unlink the file (a block dropped unread); nothing if it is gone."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _file_size(path: str) -> int:
    return os.stat(path).st_size


def _pooled_size(name: str) -> int:
    """A pooled block's size in bytes, from its name (``{size}-{token}``; 0 for a name of another form)."""
    size = name.split("-", 1)[0]
    return int(size) if size.isdigit() else 0


@dataclass(frozen=True)
class Handoff:
    """A run's shared-memory directory (made by the main process with :meth:`create`; picklable: sent to the
    workers with their tasks)."""

    directory: str
    host: str

    @classmethod
    def create(cls, root: str | os.PathLike[str] = SHM_ROOT) -> Handoff | None:
        """A new run directory under ``root`` (stale ones of dead runs removed first); None where ``root`` is not
        a writable directory (no shared memory: arrays then travel in-band)."""
        root = Path(root)
        if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
            return None
        sweep_stale(root)
        directory = root / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        try:
            directory.mkdir(mode=0o700)
            (directory / "free").mkdir(mode=0o700)
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)
            return None
        return cls(str(directory), _host())

    def usable(self) -> bool:
        """Whether this process shares the run's directory (the same host, the directory still there)."""
        return self.host == _host() and os.path.isdir(self.directory)

    def _claim(self, size: int) -> tuple[str, int] | None:
        """A free block taken from the pool (renamed out of it: one process wins it), the smallest of ``size``
        bytes or more, else the largest (grown by the caller): its new path and open descriptor."""
        pool = os.path.join(self.directory, "free")
        try:
            names = os.listdir(pool)
        except OSError:
            return None
        sized = sorted((_pooled_size(name), name) for name in names)  # size 0: not a block's name, never taken
        order = [item for item in sized if item[0] >= size] + [item for item in reversed(sized) if 0 < item[0] < size]
        for _, name in order:
            path = os.path.join(self.directory, f"{os.getpid()}-{secrets.token_hex(8)}")
            try:
                os.rename(os.path.join(pool, name), path)
            except OSError:  # taken by another worker (or the run closed)
                continue
            try:
                return path, os.open(path, os.O_RDWR)
            except OSError:  # swept meanwhile: the run closed
                return None
        return None

    def allocate(self, arrays: Sequence[tuple[np.dtype | str, int]]) -> tuple[SharedBlock, list[np.ndarray]] | None:
        """A file holding arrays of these ``(dtype, length)`` (a free block of the run's pool, else a new one),
        and writable views of them (fill them, drop them, return the block). None where the block cannot be made
        here (another host, the run closed, no space: the caller sends its arrays in-band); nothing is left
        behind then."""
        layout, size = [], 0
        for dtype, count in arrays:
            dtype = np.dtype(dtype)
            size = -(-size // _ALIGN) * _ALIGN
            layout.append((dtype.str, int(count), size))
            size += dtype.itemsize * int(count)
        if size == 0 or not self.usable():
            return None
        claimed = self._claim(size)
        if claimed is not None:
            path, fd = claimed
        else:
            path = os.path.join(self.directory, f"{os.getpid()}-{secrets.token_hex(8)}")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError:  # the directory removed (run closed), or not ours to write
                return None
        try:
            try:
                if os.fstat(fd).st_size < size:
                    # the pages reserved now: a full /dev/shm is an error here, not a SIGBUS while filling the map
                    os.posix_fallocate(fd, 0, size)
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                memory = mmap.mmap(fd, size, flags=flags)
            finally:
                os.close(fd)
        except OSError:  # no space (ENOSPC), no fallocate here, ...: in-band
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return None
        block = SharedBlock(path, size, tuple(layout))
        return block, [np.frombuffer(memory, dtype=np.dtype(dtype), count=count, offset=offset)
                       for dtype, count, offset in layout]

    def blocks(self) -> list[str]:
        """The blocks now in the run's directory, written and not yet read or recycled."""
        try:
            return sorted(name for name in os.listdir(self.directory) if name != "free")
        except FileNotFoundError:
            return []

    def pooled(self) -> list[str]:
        """The free blocks kept for reuse."""
        try:
            return sorted(os.listdir(os.path.join(self.directory, "free")))
        except FileNotFoundError:
            return []

    def close(self) -> None:
        """Remove the run's directory and every block still in it. A worker that writes a block while this runs
        either finds the directory gone (and sends in-band) or has its file removed by the next pass."""
        for _ in range(100):
            shutil.rmtree(self.directory, ignore_errors=True)
            if not os.path.exists(self.directory):
                return
        shutil.rmtree(self.directory)  # still there: say why
