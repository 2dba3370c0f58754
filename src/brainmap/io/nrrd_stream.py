"""NRRD volumes read in slabs: ranges of planes along the slowest file axis, several volumes in parallel.

A NRRD stores its first axis fastest, so a run of whole planes of its *last* axis is a contiguous run of the file's
data (for Allen's CCF-space volumes, ``sizes: AP DV LR``, a slab is a range of left-right planes). Reading a
volume slab by slab keeps memory at one slab whatever the volume's size; decoding several volumes in threads uses
the cores, since zlib / ISA-L inflate and bz2 release the GIL.

Every check of :func:`brainmap.io.nrrd.read_nrrd` holds (header, sizes, regular files, detached data, truncated,
longer or corrupt data: :class:`brainmap.errors.FormatError` naming the file). A stream's end (its CRC, trailing
bytes) is checked after its last slab: a caller must consume every slab before trusting what it built. ``ascii``
data are read whole with :func:`read_nrrd` and handed out in slabs.
"""

from __future__ import annotations

import collections
import math
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import numpy as np

from brainmap.errors import FormatError
from brainmap.io.limits import array_nbytes, iter_decompressed, open_regular
from brainmap.io.nrrd import (
    _ASCII, _GZIP, _RAW, _check_header, _data_source, _fmt, _parse_header, _remaining_bytes, _skip, read_nrrd,
)

__all__ = ["NrrdSlabs", "VolumeSlabs", "iter_volume_slabs", "SLAB_BYTES", "READ_AHEAD"]

PathLike = str | os.PathLike[str]

#: Target bytes of one slab of one volume (rounded to whole planes, at least one plane).
SLAB_BYTES = 1 << 23

#: Slabs of each volume :func:`iter_volume_slabs` decodes ahead of its caller. Measured on ``brainmap unionize``
#: of ten 25 um files (2 cores): one slab ahead, each round waiting for all ten volumes, left a thread idle while
#: the slowest volume of the round finished.
READ_AHEAD = 3


class NrrdSlabs:
    """One NRRD volume opened for reading slab by slab along its last axis.

    Attributes
    ----------
    path : Path
    header : dict
        pynrrd's parsed header.
    shape : tuple of int
        ``sizes`` (file axis order, first fastest), e.g. (528, 320, 456) for an Allen 25 um volume.
    dtype : numpy dtype
        The native-order dtype slabs come in.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        with open_regular(path, str(path)) as fh:
            self.header = _parse_header(fh, path)
            self._file_dtype, sizes, self.encoding = _check_header(self.header, path)
        self.shape: tuple[int, ...] = sizes
        self.dtype = self._file_dtype.newbyteorder("=")
        self.plane_values = math.prod(sizes[:-1])

    def planes_per_slab(self, slab_bytes: int = SLAB_BYTES) -> int:
        """Whole last-axis planes in a slab of about ``slab_bytes`` (at least one)."""
        return max(1, slab_bytes // max(1, self.plane_values * self.dtype.itemsize))

    def slabs(self, planes: int) -> Iterator[np.ndarray]:
        """Arrays ``volume[..., k0:k0 + planes]`` (the last one shorter), in order, each a new array in Fortran
        (file) order, native byte order, possibly read-only. The data's end is checked after the last slab."""
        if planes < 1:
            raise ValueError("slabs: planes must be >= 1")
        path = self.path
        if self.encoding in _ASCII:
            volume, _ = read_nrrd(path)
            for start in range(0, self.shape[-1], planes):
                yield np.asfortranarray(volume[..., start : start + planes])
            return
        with ExitStack() as stack:
            fh = stack.enter_context(open_regular(path, str(path)))
            _parse_header(fh, path)
            data_path = _data_source(self.header, path)
            if data_path is not None:
                fh = stack.enter_context(open_regular(data_path, str(path), "detached data file"))
            source = str(path) if data_path is None else f"{path}: data file {str(data_path)!r}"
            try:
                yield from self._decode(fh, source, planes, data_path)
            except MemoryError:
                raise FormatError(f"{path}: not enough memory for a slab of {planes} planes") from None
            except FormatError:
                raise
            except OSError as exc:
                raise FormatError(f"{path}: cannot read the data ({exc})") from exc

    def _decode(self, fh: IO[bytes], source: str, planes: int, data_path: Path | None) -> Iterator[np.ndarray]:
        itemsize = self.dtype.itemsize
        nbytes = array_nbytes(self.shape, itemsize, str(self.path), "'sizes:'")
        byte_skip = _skip(fh, self.header, self.path, self.encoding, nbytes)
        piece = planes * self.plane_values * itemsize
        if self.encoding in _RAW:
            pieces = _raw_pieces(fh, nbytes, piece, self.path, "raw data" if data_path is None
                                 else f"raw data file {str(data_path)!r}")
        else:
            codec = "gzip" if self.encoding in _GZIP else "bzip2"
            pieces = iter_decompressed(fh.read, codec, nbytes, source, skip=byte_skip, piece=piece,
                                       readinto=fh.readinto)
        for raw in pieces:
            flat = raw.view(self._file_dtype)
            if not self._file_dtype.isnative:
                flat = flat.byteswap().view(self.dtype)
            k = flat.size // self.plane_values
            yield flat.reshape((k,) + tuple(reversed(self.shape[:-1]))).T


def _raw_pieces(fh: IO[bytes], nbytes: int, piece: int, path: Path, what: str) -> Iterator[np.ndarray]:
    """``nbytes`` of raw data in pieces; the file must hold exactly that many (as :func:`read_nrrd` checks)."""
    remaining = _remaining_bytes(fh)
    if remaining is not None and remaining < nbytes:
        raise FormatError(f"{path}: {what} is truncated (expected {_fmt(nbytes)} bytes, got {_fmt(max(remaining, 0))})")
    if remaining is not None and remaining > nbytes:
        raise FormatError(f"{path}: {what} is longer than the header says (the sizes and type in the header need "
                          f"{_fmt(nbytes)} bytes, the file holds {_fmt(remaining)})")
    got = 0
    while got < nbytes:
        buffer = np.empty(min(piece, nbytes - got), dtype=np.uint8)
        view = memoryview(buffer)
        filled = 0
        while filled < len(buffer):  # readinto may return short reads
            more = fh.readinto(view[filled:])
            if not more:
                raise FormatError(f"{path}: {what} is truncated (expected {_fmt(nbytes)} bytes, "
                                  f"got {_fmt(got + filled)})")
            filled += more
        got += filled
        yield buffer
    if remaining is None and fh.read(1):
        raise FormatError(f"{path}: {what} is longer than the header says ({_fmt(nbytes)} bytes expected)")


class VolumeSlabs:
    """Slabs of several same-shaped NRRD volumes, decoded in worker threads from the moment it is made.

    Parameters
    ----------
    paths : mapping name -> NRRD path
        Volumes with equal ``sizes``.
    slab_bytes : int
        About how many bytes one slab of the widest volume takes (whole planes of the last axis).
    threads : int, optional
        Decoding threads (default: the CPUs available, at most one per volume).
    ahead : int
        Slabs of each volume decoded ahead of the caller (at least 1).

    Iterate it (once) for ``(start, slabs)`` pairs, as :func:`iter_volume_slabs` gives them. Making it early lets
    the volumes' first slabs decode while the caller still imports or loads what it needs; use it as a context
    manager (or call :meth:`close`) so that its threads stop if it is not read to the end.

    Raises FormatError naming the file whose sizes differ from the first's, or whose data are bad (the data's
    errors when iterating).
    """

    def __init__(self, paths: Mapping[str, PathLike], *, slab_bytes: int = SLAB_BYTES, threads: int | None = None,
                 ahead: int = READ_AHEAD):
        volumes = {name: NrrdSlabs(path) for name, path in paths.items()}
        self.paths = {name: volume.path for name, volume in volumes.items()}
        self._first = next(iter(volumes.values()), None)
        first_name = next(iter(volumes), "")
        for name, volume in volumes.items():
            if volume.shape != self._first.shape:
                raise FormatError(f"{volume.path}: sizes {' '.join(map(str, volume.shape))} differ from "
                                  f"{self._first.path}'s {' '.join(map(str, self._first.shape))} ({name} vs "
                                  f"{first_name})")
        self._reader: _ReadAhead | None = None
        if self._first is None:
            return
        planes = min(volume.planes_per_slab(slab_bytes) for volume in volumes.values())
        workers = threads or min(len(volumes), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                 else (os.cpu_count() or 1))
        self._reader = _ReadAhead({name: volume.slabs(planes) for name, volume in volumes.items()},
                                  max(1, workers), max(1, ahead)).__enter__()

    def __iter__(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        if self._reader is None:
            return
        first, reader = self._first, self._reader
        try:
            start = 0
            while start < first.shape[-1]:
                slabs = reader.next_slabs()
                if slabs is None:  # pragma: no cover - slabs() gives every plane or raises
                    raise FormatError(f"{first.path}: a volume ended early")
                yield start, slabs
                start += next(iter(slabs.values())).shape[-1]
            # Each iterator's last step checks its stream's end (CRC, trailing bytes).
            if reader.next_slabs() is not None:  # pragma: no cover - slabs() stops after the last plane
                raise FormatError(f"{first.path}: a volume holds more planes than its sizes")
        finally:
            self.close()

    def close(self) -> None:
        """Stop the decoding threads (idempotent)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.__exit__(None, None, None)

    def __enter__(self) -> VolumeSlabs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_volume_slabs(
    paths: Mapping[str, PathLike], *, slab_bytes: int = SLAB_BYTES, threads: int | None = None,
    ahead: int = READ_AHEAD,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Slabs of several same-shaped NRRD volumes, decoded in parallel threads (see :class:`VolumeSlabs`).

    Yields
    ------
    (start, slabs) : int, dict name -> array
        ``slabs[name]`` is ``volume[..., start:start + k]`` (Fortran order, native dtype); the same ``k`` for all.
        Up to ``ahead`` later slabs of each volume are decoded while the caller works on these.

    Raises FormatError naming the file whose sizes differ from the first's, or whose data are bad.
    """
    with VolumeSlabs(paths, slab_bytes=slab_bytes, threads=threads, ahead=ahead) as volumes:
        yield from volumes


_END = object()


class _ReadAhead:
    """Worker threads that keep up to ``ahead`` decoded slabs of every volume, the volume with the fewest first.

    A volume's iterator is advanced by one thread at a time (a generator is not thread-safe); an error in a
    worker is raised in the caller's next :meth:`next_slabs`.
    """

    def __init__(self, iterators: dict[str, Iterator[np.ndarray]], workers: int, ahead: int):
        self._iterators = iterators
        self._ready: dict[str, collections.deque] = {name: collections.deque() for name in iterators}
        self._busy: set[str] = set()
        self._done: set[str] = set()  # iterators that gave their end (or an error)
        self._error: BaseException | None = None
        self._stop = False
        self._ahead = ahead
        self._lock = threading.Condition()
        self._threads = [threading.Thread(target=self._work, name=f"nrrd-slabs-{i}", daemon=True)
                         for i in range(min(workers, len(iterators)))]

    def __enter__(self) -> _ReadAhead:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()
        for iterator in self._iterators.values():
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _pick(self) -> str | None:
        """The idle, unfinished volume with the fewest slabs ready (below ``ahead``), or None."""
        best = None
        for name, ready in self._ready.items():
            if name in self._busy or name in self._done or len(ready) >= self._ahead:
                continue
            if best is None or len(ready) < len(self._ready[best]):
                best = name
        return best

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stop and self._error is None and (name := self._pick()) is None:
                    self._lock.wait()
                if self._stop or self._error is not None:
                    return
                self._busy.add(name)
            try:
                slab = next(self._iterators[name], _END)
            except BaseException as exc:  # handed to the caller, who raises it
                with self._lock:
                    self._error = exc
                    self._busy.discard(name)
                    self._lock.notify_all()
                return
            with self._lock:
                self._busy.discard(name)
                self._ready[name].append(slab)
                if slab is _END:
                    self._done.add(name)
                self._lock.notify_all()

    def next_slabs(self) -> dict[str, np.ndarray] | None:
        """The next slab of every volume, or None when every volume has ended."""
        with self._lock:
            while self._error is None and not all(self._ready.values()):
                self._lock.wait()
            if self._error is not None:
                raise self._error
            slabs = {name: ready.popleft() for name, ready in self._ready.items()}
            self._lock.notify_all()
        if all(slab is _END for slab in slabs.values()):
            return None
        if any(slab is _END for slab in slabs.values()):  # pragma: no cover - every volume has the same planes
            raise FormatError("a volume ended early")
        return slabs
