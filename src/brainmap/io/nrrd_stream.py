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

import math
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import numpy as np

from brainmap.errors import FormatError
from brainmap.io.limits import array_nbytes, iter_decompressed, open_regular
from brainmap.io.nrrd import (
    _ASCII, _GZIP, _RAW, _check_header, _data_source, _fmt, _parse_header, _remaining_bytes, _skip, read_nrrd,
)

__all__ = ["NrrdSlabs", "iter_volume_slabs", "SLAB_BYTES"]

PathLike = str | os.PathLike[str]

#: Target bytes of one slab of one volume (rounded to whole planes, at least one plane).
SLAB_BYTES = 1 << 23


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
            pieces = iter_decompressed(fh.read, codec, nbytes, source, skip=byte_skip, piece=piece)
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


def iter_volume_slabs(
    paths: Mapping[str, PathLike], *, slab_bytes: int = SLAB_BYTES, threads: int | None = None,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Slabs of several same-shaped NRRD volumes, decoded in parallel threads.

    Parameters
    ----------
    paths : mapping name -> NRRD path
        Volumes with equal ``sizes``.
    slab_bytes : int
        About how many bytes one slab of the widest volume takes (whole planes of the last axis).
    threads : int, optional
        Decoding threads (default: the CPUs available, at most one per volume).

    Yields
    ------
    (start, slabs) : int, dict name -> array
        ``slabs[name]`` is ``volume[..., start:start + k]`` (Fortran order, native dtype); the same ``k`` for all.
        The next slabs are decoded while the caller works on these (two slabs per volume in memory).

    Raises FormatError naming the file whose sizes differ from the first's, or whose data are bad.
    """
    volumes = {name: NrrdSlabs(path) for name, path in paths.items()}
    if not volumes:
        return
    first_name, first = next(iter(volumes.items()))
    for name, volume in volumes.items():
        if volume.shape != first.shape:
            raise FormatError(f"{volume.path}: sizes {' '.join(map(str, volume.shape))} differ from "
                              f"{first.path}'s {' '.join(map(str, first.shape))} ({name} vs {first_name})")
    planes = min(volume.planes_per_slab(slab_bytes) for volume in volumes.values())
    iterators = {name: volume.slabs(planes) for name, volume in volumes.items()}
    workers = threads or min(len(volumes), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else (os.cpu_count() or 1))
    end = object()

    def step(iterator: Iterator[np.ndarray]) -> Any:
        return next(iterator, end)

    pending: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="nrrd-slabs") as pool:
        try:
            pending = {name: pool.submit(step, it) for name, it in iterators.items()}
            start = 0
            while start < first.shape[-1]:
                slabs = {name: future.result() for name, future in pending.items()}
                if any(s is end for s in slabs.values()):  # pragma: no cover - slabs() gives every plane or raises
                    raise FormatError(f"{first.path}: a volume ended early")
                pending = {name: pool.submit(step, it) for name, it in iterators.items()}
                yield start, slabs
                start += next(iter(slabs.values())).shape[-1]
            # The last step of each iterator checks its stream's end (CRC, trailing bytes).
            for future in pending.values():
                if future.result() is not end:  # pragma: no cover - slabs() stops after the last plane
                    raise FormatError(f"{first.path}: a volume holds more planes than its sizes")
        finally:
            for future in pending.values():
                future.cancel()
            for iterator in iterators.values():
                close = getattr(iterator, "close", None)
                if close is not None:
                    try:
                        close()
                    except ValueError:  # generator already executing in a cancelled worker
                        pass
