"""Limits shared by the file readers: open only regular files, check sizes before allocating, decompress with a
cap, skip lines without reading unbounded amounts.

A hostile or damaged file must not make a reader hang (a FIFO), allocate what a lying header asks for, or
decompress a bomb: every function here raises :class:`brainmap.errors.FormatError` naming the file and the field
instead. docs/hardening.md explains the limits and how to run the long fuzz campaign.
"""

from __future__ import annotations

import bz2
import lzma
import math
import os
import stat
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import IO, Any

import numpy as np

from brainmap.errors import FormatError
from brainmap.io.deflate import isal_zlib, zlib_ng

__all__ = [
    "CHUNK",
    "MAX_HEADER_BYTES",
    "MAX_ARRAY_BYTES",
    "array_nbytes",
    "decompress_exact",
    "iter_decompressed",
    "open_regular",
    "read_capped",
    "skip_lines",
]

PathLike = str | os.PathLike[str]

#: Bytes handled per read / decompression step when streaming.
CHUNK = 1 << 24
#: The most bytes a text header (NRRD, MetaImage) may take.
MAX_HEADER_BYTES = 1 << 20
#: The largest array any header may describe (bytes): above every real volume (the 10 um CCF annotation is
#: 4.8 GB) and below what numpy's index arithmetic can hold. Set ``$BRAINMAP_MAX_ARRAY_BYTES`` to lower it.
MAX_ARRAY_BYTES = int(os.environ.get("BRAINMAP_MAX_ARRAY_BYTES", 1 << 40))
#: Below this size the output of a decompression is allocated at once; above it, it grows with the data, so that
#: a header that lies about its size costs only what the data really hold.
_PREALLOCATE = 1 << 26
#: deflate cannot expand more than 1032:1 (zlib's technical details); a header asking for more than this times
#: the compressed size (plus slack for wrappers) cannot be satisfied.
_DEFLATE_MAX_RATIO = 1032

_CODECS = ("gzip", "zlib", "bzip2", "lzma")


def open_regular(path: PathLike, source: str, what: str = "file") -> IO[bytes]:
    """Open ``path`` for binary reading if it is a regular file (never blocking on a FIFO or a device).

    Raises FileNotFoundError if it does not exist, FormatError naming ``source`` if it is not a regular file
    or its name is not a valid path (an embedded NUL), and OSError for other failures to open it.
    """
    name = os.fspath(path)
    if "\0" in str(name):
        raise FormatError(f"{source}: the {what} name {str(name)!r} holds a NUL character")
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise FormatError(f"{source}: the {what} {str(name)!r} is {kind}; only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def array_nbytes(sizes: Sequence[int], itemsize: int, source: str, field: str) -> int:
    """The bytes of an array of ``sizes`` x ``itemsize``, checked against :data:`MAX_ARRAY_BYTES` in exact integer
    arithmetic (no int64 overflow); FormatError naming ``field`` otherwise."""
    nbytes = math.prod(int(s) for s in sizes) * int(itemsize)
    if nbytes > MAX_ARRAY_BYTES:
        shown = " x ".join(str(int(s)) for s in sizes)
        raise FormatError(f"{source}: {field} {shown} describes {nbytes:,} bytes, more than the {MAX_ARRAY_BYTES:,} "
                          "any volume may hold (set $BRAINMAP_MAX_ARRAY_BYTES to raise the limit)")
    return nbytes


def read_capped(read: Callable[[int], bytes], cap: int, source: str, what: str) -> bytearray:
    """Everything ``read`` gives (until it returns ``b""``), refusing more than ``cap`` bytes."""
    out = bytearray()
    while True:
        chunk = read(min(CHUNK, cap + 1 - len(out)))
        if not chunk:
            return out
        out += chunk
        if len(out) > cap:
            raise FormatError(f"{source}: {what} is longer than the {cap:,} bytes expected")


def skip_lines(fh: IO[bytes], count: int, source: str, field: str = "line skip") -> None:
    """Move ``fh`` past ``count`` lines, reading in chunks (never more than the file holds)."""
    if count <= 0:
        return
    left = count
    while left:
        start = fh.tell()
        chunk = fh.read(1 << 20)
        if not chunk:
            raise FormatError(f"{source}: '{field}: {count}' but the data holds only {count - left} lines")
        found = chunk.count(b"\n")
        if found < left:
            left -= found
            continue
        position = -1
        for _ in range(left):
            position = chunk.index(b"\n", position + 1)
        fh.seek(start + position + 1)
        return


def _decompressor(codec: str) -> Any:
    if codec == "gzip":
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if codec == "zlib":  # zlib or gzip wrapper, as MetaIO accepts
        return zlib.decompressobj(zlib.MAX_WBITS | 32)
    if codec == "bzip2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor()


_MAGIC = {"gzip": b"\x1f\x8b", "zlib": b"\x1f\x8b", "bzip2": b"BZh", "lzma": b"\xfd7zXZ"}
_ERRORS: tuple[type[BaseException], ...] = (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError)


@contextmanager
def _named_errors(source: str, label: str, total: int) -> Iterator[None]:
    """Any decoder error inside (a FormatError passes as is), or running out of memory, as a FormatError naming
    ``source``: the whole and the streamed inflate share it."""
    try:
        yield
    except _ERRORS as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"{source}: {label} data is corrupt ({type(exc).__name__}: {exc})") from None
    except MemoryError:
        raise FormatError(f"{source}: not enough memory for the {total:,} bytes the header's sizes need") from None


def _step(decompressor: Any, data: bytes, limit: int) -> tuple[bytes, bytes]:
    """One bounded decompression step: (output of at most ``limit`` bytes, input still to be fed)."""
    out = decompressor.decompress(data, limit)
    # zlib hands back the input it did not use; at a stream's end that input is (also) in unused_data, which the
    # next-member and end checks read, so it must not be kept twice.
    tail = b"" if decompressor.eof else getattr(decompressor, "unconsumed_tail", b"")
    return out, tail


def _drain(decompressor: Any, pending: bytes, read: Callable[[int], bytes], limit: int) -> int:
    """Decompress and discard the rest of a stream, at most ``limit`` bytes of it; how many bytes it gave.

    Corrupt data raise here (the caller reports them); output is never kept, so memory stays bounded."""
    total = 0
    while total <= limit and not decompressor.eof:
        chunk, pending = _step(decompressor, pending, CHUNK)
        total += len(chunk)
        if not chunk and not decompressor.eof:
            pending = read(CHUNK)
            if not pending:
                break
    return total


def _next_member(decompressor: Any, pending: bytes, read: Callable[[int], bytes], read_size: int, codec: str
                 ) -> tuple[Any, bytes] | None:
    """At the end of a gzip member / bzip2 stream: a fresh decompressor and its input if another one follows
    (concatenated members are one file's data), else None."""
    rest = decompressor.unused_data + pending
    if not rest:
        rest = read(read_size)
    if codec == "lzma" or not rest.startswith(_MAGIC[codec]):
        return None
    return _fast_gzip_decompressor(codec), rest


def _too_short(decompressor: Any, got: int, total: int, source: str, label: str) -> None:
    """The data ended (or the file did) before ``total`` bytes came out: a :class:`FormatError` saying which."""
    problem = "holds fewer bytes than the header says" if decompressor.eof else "is truncated"
    raise FormatError(f"{source}: {label} data {problem} (expected {total:,} bytes after decompression, "
                      f"got {got:,})")


def _check_stream_end(decompressor: Any, pending: bytes, read: Callable[[int], bytes], read_size: int, codec: str,
                      total: int, source: str, label: str) -> None:
    """After exactly ``total`` bytes came out: the stream must end there (its check sum read) and nothing but
    zero padding may follow it; else a :class:`FormatError` saying which."""
    while not decompressor.eof:
        extra, pending = _step(decompressor, pending, 1)
        if extra:
            more_bytes = _drain(decompressor, pending, read, max(total, CHUNK))
            ended = "got " + f"{total + 1 + more_bytes:,}" if decompressor.eof else "there are more"
            raise FormatError(f"{source}: {label} data holds more bytes than the header says (it is longer: expected "
                              f"{total:,} bytes after decompression, {ended})")
        if decompressor.eof:
            break
        more = read(read_size)
        if not more:
            raise FormatError(f"{source}: {label} data is truncated (all {total:,} bytes are present but the "
                              "end of the stream and its CRC / check sum are missing)")
        pending = more
    rest = decompressor.unused_data + pending + read(1 << 16)
    if rest.startswith(_MAGIC[codec]) and codec != "lzma" and _decompressor(codec).decompress(rest, 1):
        raise FormatError(f"{source}: {label} data holds more bytes than the header says (it is longer: expected "
                          f"{total:,} bytes after decompression, another stream follows)")
    if rest.strip(b"\x00"):
        raise FormatError(f"{source}: unexpected bytes follow the end of the {label} data")


def decompress_exact(read: Callable[[int], bytes], codec: str, nbytes: int, source: str, *, skip: int = 0,
                     compressed_size: int | None = None) -> np.ndarray:
    """Decompress a stream that must expand to exactly ``skip + nbytes`` bytes; return the last ``nbytes``.

    ``read(n)`` gives the compressed bytes in chunks (``b""`` at the end); ``codec`` is ``"gzip"`` (concatenated
    members allowed), ``"zlib"`` (zlib or gzip wrapper), ``"bzip2"`` (concatenated streams allowed) or ``"lzma"``.
    The output never exceeds what was asked for: a stream that holds more stops at ``nbytes + 1`` bytes and raises.
    ``compressed_size`` (if known) lets a deflate header that asks for more than deflate can give fail at once.
    Every failure (corrupt, truncated, shorter, longer) is a FormatError naming ``source``.
    """
    if codec not in _CODECS:
        raise ValueError(f"decompress_exact: unknown codec {codec!r}")
    label = {"gzip": "gzip", "zlib": "compressed", "bzip2": "bzip2", "lzma": "xz"}[codec]
    total = skip + nbytes
    # Allocate the whole output at once only when the compressed data can hold it (deflate expands at most
    # 1032:1); otherwise grow it with the data, so that a lying header costs only what the data really hold.
    plausible = compressed_size is not None and (
        codec in ("gzip", "zlib") and total <= _DEFLATE_MAX_RATIO * compressed_size + (1 << 16))
    grow = nbytes > _PREALLOCATE and not plausible
    buffer: Any = bytearray() if grow else np.empty(nbytes, dtype=np.uint8)
    view = None if grow else memoryview(buffer)
    decompressor = _fast_gzip_decompressor(codec)
    pending = b""
    got = 0  # decompressed bytes so far, skipped ones included
    with _named_errors(source, label, total):
        while got < total:
            if decompressor.eof:
                following = _next_member(decompressor, pending, read, CHUNK, codec)
                if following is None:
                    break
                decompressor, pending = following
            chunk, pending = _step(decompressor, pending, min(total - got, CHUNK))
            if chunk:
                if got + len(chunk) > skip:
                    part = chunk[max(skip - got, 0):]
                    at = max(got - skip, 0)
                    if grow:
                        buffer += part
                    else:
                        view[at : at + len(part)] = part  # type: ignore[index]
                got += len(chunk)
                continue
            if decompressor.eof:
                continue
            more = read(CHUNK)
            if not more:
                break
            pending = pending + more if pending else more
        if got < total:
            _too_short(decompressor, got, total, source, label)
        # Exactly enough: the stream must end here (its check sum read), with nothing more in it.
        _check_stream_end(decompressor, pending, read, CHUNK, codec, total, source, label)
    if grow:
        return np.frombuffer(buffer, dtype=np.uint8)
    return buffer


def _fast_gzip_decompressor(codec: str) -> Any:
    """A gzip/zlib decompressor from :data:`_inflater` (zlib-ng's inflate when installed), else zlib's.

    Which inflate, measured (2 cores, one thread, the reader's own loop: 8 MB pieces, input topped up as it goes):
    the eleven gzip files ``brainmap unionize`` reads at 25 um (ten double grids of
    ``benchmarks/bench_unionize_files.py`` and the bundled annotation_25.nrrd) take 4.29 s of CPU with zlib-ng
    against 5.55 s with ISA-L (python-isal); zlib took 1.7-20x their time on the four volumes tried. zlib-ng is
    4x ISA-L on the mostly-zero volumes (injection_fraction: 0.07 s against 0.30 s; ISA-L copies long runs slowly)
    and 1.2x on the densest (projection_density: 1.03 s against 1.22 s); ISA-L is ahead only on sum_pixels (0.84 s
    against 0.91 s).
    ``BRAINMAP_INFLATE=zlib`` (or ``isal``, ``zlib-ng``) chooses one.
    """
    if _inflater is not zlib and codec in ("gzip", "zlib"):
        return _inflater.decompressobj(zlib.MAX_WBITS | (16 if codec == "gzip" else 32))
    return _decompressor(codec)


def _choose_inflater(name: str) -> ModuleType:
    """The zlib-compatible module whose ``decompressobj`` inflates: ``name`` ("zlib", "isal", "zlib-ng") if it is
    installed, else the fastest installed (zlib-ng, then ISA-L, then zlib)."""
    installed = {"zlib-ng": zlib_ng, "isal": isal_zlib, "zlib": zlib}
    chosen = installed.get(name.lower())
    if chosen is not None:
        return chosen
    return next(module for module in installed.values() if module is not None)


#: The inflate of gzip / zlib data (see :func:`_fast_gzip_decompressor`).
_inflater: ModuleType = _choose_inflater(os.environ.get("BRAINMAP_INFLATE", ""))
_ERRORS = _ERRORS + tuple(module.error for module in (isal_zlib, zlib_ng) if module is not None)


#: Compressed bytes read per step when streaming: small, so that ten volumes read side by side hold little.
_STREAM_READ = 1 << 20


def iter_decompressed(read: Callable[[int], bytes], codec: str, nbytes: int, source: str, *, skip: int = 0,
                      piece: int = CHUNK, readinto: Callable[[memoryview], int] | None = None
                      ) -> Iterator[np.ndarray]:
    """Decompress a stream that must expand to exactly ``skip + nbytes`` bytes, giving the last ``nbytes`` in
    pieces of ``piece`` bytes (the last one shorter) as new uint8 arrays (read-only when a piece came out of one
    decompression call and is handed out without a copy).

    The same checks as :func:`decompress_exact` (corrupt, truncated, shorter, longer, trailing bytes: a
    FormatError naming ``source``), but memory is one piece whatever ``nbytes`` is. The end of the stream is
    checked after the last piece has been given, so a caller must exhaust the iterator before trusting what
    it built from the pieces. ``readinto`` (the same stream's, e.g. a file's ``readinto``) lets the input be
    read into one reused buffer instead of new bytes joined to the last call's leftover.
    """
    if codec not in _CODECS:
        raise ValueError(f"iter_decompressed: unknown codec {codec!r}")
    if piece <= 0:
        raise ValueError("iter_decompressed: piece must be positive")
    label = {"gzip": "gzip", "zlib": "compressed", "bzip2": "bzip2", "lzma": "xz"}[codec]
    total = skip + nbytes
    decompressor = _fast_gzip_decompressor(codec)
    # zlib-like decompressors hand back the input they did not use, so their input can be topped up to a whole
    # piece's worth and the piece comes out of one call: it is then given as is, without a copy into a buffer
    # (for a 25 um double grid of mostly zeros this halves the CPU time; measured next to _fast_gzip_decompressor).
    tails = hasattr(decompressor, "unconsumed_tail")
    pending = b""
    got = 0  # decompressed bytes so far, skipped ones included
    taken = 0  # input bytes read so far
    ratio: float | None = None  # output per input byte of the last piece
    piece_start = 0  # input bytes consumed before this piece
    inbuf = bytearray()  # the reused input buffer (with ``readinto``)
    buffer: np.ndarray | None = None  # the piece being assembled from several outputs
    view = memoryview(b"")
    filled = 0
    with _named_errors(source, label, total):
        while got < total:
            if decompressor.eof:
                following = _next_member(decompressor, pending, read, _STREAM_READ, codec)
                if following is None:
                    break
                decompressor, pending = following
            size = min(piece, total - got + filled) if got >= skip else 0  # this piece's bytes
            # Ask no more than fits in the current piece (or what is left to skip), so no copy is kept aside.
            want = (skip - got) if got < skip else (size - filled)
            if tails and got >= skip:
                # About the input the rest of this piece needs at the last piece's ratio (the first piece: the
                # ratio so far), with a margin. Too little input makes the piece come out of several calls and be
                # copied; too much costs a copy of the unused tail, which is smaller. The last piece's ratio, not
                # the stream's: a volume's planes compress very differently (empty edges, dense middle), and with
                # the running ratio two calls in three came up short in a dense 10 um volume.
                if filled == 0:
                    piece_start = taken - len(pending)
                    if ratio is None:
                        ratio = got / max(1, piece_start) if got else 1.0
                need = int(want / max(ratio, 1.0) * 1.1) + (1 << 16)
                if len(pending) < need and readinto is not None:
                    # The decompressor copies what it leaves unused, so the buffer is free again after the call.
                    if len(inbuf) < need:
                        inbuf = bytearray(need + need // 4)
                    held = len(pending)
                    inbuf[:held] = pending
                    more_n = readinto(memoryview(inbuf)[held:need])
                    taken += more_n
                    pending = memoryview(inbuf)[: held + more_n]
                elif len(pending) < need:
                    more = read(need - len(pending))
                    taken += len(more)
                    if more:
                        pending = pending + more if pending else more
            chunk, pending = _step(decompressor, pending, min(want, CHUNK) if got < skip else want)
            if chunk:
                if got < skip:
                    got += len(chunk)
                    continue
                got += len(chunk)
                if filled == 0 and len(chunk) == size:
                    ratio = size / max(1, taken - len(pending) - piece_start)
                    yield np.frombuffer(chunk, dtype=np.uint8)  # read-only, the decompressor's own output
                    continue
                if buffer is None or len(buffer) != size:
                    buffer = np.empty(size, dtype=np.uint8)
                    view = memoryview(buffer)
                view[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
                if filled == size:
                    ratio = size / max(1, taken - len(pending) - piece_start)
                    yield buffer
                    buffer, filled = None, 0  # given away: the next piece needs a new one
                continue
            if decompressor.eof:
                continue
            more = read(_STREAM_READ)
            taken += len(more)
            if not more:
                break
            pending = pending + more if pending else more
        if got < total:
            _too_short(decompressor, got, total, source, label)
        _check_stream_end(decompressor, pending, read, _STREAM_READ, codec, total, source, label)
