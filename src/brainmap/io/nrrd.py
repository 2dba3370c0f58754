"""NRRD volumes, read through pynrrd and written the way Allen's (teem-written) files are.

Axis order. NRRD stores the first axis fastest. Arrays are returned (and expected) indexed in that order, i.e.
``array[x, y, z]`` with ``x`` = the first entry of ``sizes`` -- exactly what ``nrrd.read`` returns. For the Allen
CCF files that is (AP, DV, LR) with +x posterior, +y inferior, +z right, while the header says
``space: left-posterior-superior``; voxel ``(i, j, k)`` covers ``[i*res, (i+1)*res)`` microns from the origin.

Reading. The header is parsed by :func:`nrrd.read_header` (pynrrd). Binary data (``raw``, ``gzip``, ``bzip2``)
is decoded here rather than by :func:`nrrd.read_data`, so that every inconsistency is caught with a precise
message: a truncated gzip stream (including one missing only its CRC trailer, which pynrrd accepts silently),
sizes that promise more or fewer voxels than the file holds, corrupt data, a missing detached data file. Text
(``ascii``) data is parsed by pynrrd. Every failure becomes :class:`brainmap.errors.FormatError` naming the file,
except that a file that does not exist (or cannot be opened) raises the usual :class:`OSError`, which names the
path. Data comes back in native byte order.

Writing. :func:`write_nrrd` writes the header teem writes (``NRRD0004``, teem's two comment lines, teem's type
names and field order, numbers as ``%.17g``) and gzip data as zlib level 6 / memLevel 8 / a gzip wrapper with no
name and mtime 0. With the bundled 25, 50 and 100 um annotations this reproduces Allen's files byte for byte.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import nrrd
import numpy as np

from brainmap.errors import FormatError
from brainmap.io.atomic import atomic_write
from brainmap.io.limits import MAX_HEADER_BYTES, array_nbytes, decompress_exact, open_regular, skip_lines

__all__ = ["read_nrrd", "read_nrrd_header", "write_nrrd", "NRRD_TYPES"]

PathLike = str | os.PathLike[str]

#: teem's canonical type name for each numpy dtype kind+size (what teem writes in ``type:``).
NRRD_TYPES: dict[str, str] = {
    "i1": "signed char",
    "u1": "unsigned char",
    "i2": "short",
    "u2": "unsigned short",
    "i4": "int",
    "u4": "unsigned int",
    "i8": "long long int",
    "u8": "unsigned long long int",
    "f4": "float",
    "f8": "double",
}

# Every spelling teem accepts for ``type:`` (NRRD spec, "type"), mapped to numpy.
_TYPE_ALIASES: dict[str, str] = {
    **{name: "i1" for name in ("signed char", "int8", "int8_t")},
    **{name: "u1" for name in ("uchar", "unsigned char", "uint8", "uint8_t")},
    **{name: "i2" for name in ("short", "short int", "signed short", "signed short int", "int16", "int16_t")},
    **{name: "u2" for name in ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t")},
    **{name: "i4" for name in ("int", "signed int", "int32", "int32_t")},
    **{name: "u4" for name in ("uint", "unsigned int", "uint32", "uint32_t")},
    **{
        name: "i8"
        for name in (
            "longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        )
    },
    **{
        name: "u8"
        for name in ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t")
    },
    "float": "f4",
    "double": "f8",
}

_RAW = ("raw",)
_GZIP = ("gzip", "gz")
_BZIP2 = ("bzip2", "bz2")
_ASCII = ("ascii", "text", "txt")
_READ_ENCODINGS = _RAW + _GZIP + _BZIP2 + _ASCII
_WRITE_ENCODINGS = ("raw", "gzip")

_CHUNK = 1 << 24  # bytes handled per zlib call / write when streaming

# The first lines teem writes in every NRRD header (Allen's files have them too).
_TEEM_PREAMBLE = "# Complete NRRD file format specification at:\n# http://teem.sourceforge.net/nrrd/format.html\n"

# Fields computed from the array and the arguments; a header passed to write_nrrd never overrides them.
_DERIVED_FIELDS = {
    "type", "dimension", "sizes", "endian", "encoding", "line skip", "lineskip", "byte skip", "byteskip",
    "data file", "datafile", "number", "block size", "blocksize",
}
_DERIVED_COMPACT = {name.replace(" ", "") for name in _DERIVED_FIELDS}
_FIELD_ALIASES = {
    "axismins": "axis mins", "axismaxs": "axis maxs", "oldmin": "old min", "oldmax": "old max",
    "spacedimension": "space dimension", "spacedirections": "space directions", "spaceorigin": "space origin",
    "spaceunits": "space units", "sampleunits": "sample units", "measurementframe": "measurement frame",
    "centers": "centerings",
}
# Optional fields in the order teem writes them; key/value pairs go between "old max" and "sample units".
_FIELD_ORDER_BEFORE_KV = (
    "content", "space", "space dimension", "spacings", "thicknesses", "axis mins", "axis maxs", "space directions",
    "centerings", "kinds", "labels", "units", "min", "max", "old min", "old max",
)
_FIELD_ORDER_AFTER_KV = ("sample units", "space units", "space origin", "measurement frame")
_KNOWN_FIELDS = set(_FIELD_ORDER_BEFORE_KV) | set(_FIELD_ORDER_AFTER_KV)
_PER_AXIS_FIELDS = ("spacings", "thicknesses", "axis mins", "axis maxs", "space directions", "centerings", "kinds",
                    "labels", "units")
# Number of space dimensions implied by each named space (NRRD spec, "space").
_SPACE_DIMENSIONS = {
    **dict.fromkeys(("right-anterior-superior", "ras", "left-anterior-superior", "las",
                     "left-posterior-superior", "lps", "scanner-xyz", "3d-right-handed", "3d-left-handed"), 3),
    **dict.fromkeys(("right-anterior-superior-time", "rast", "left-anterior-superior-time", "last",
                     "left-posterior-superior-time", "lpst", "scanner-xyz-time", "3d-right-handed-time",
                     "3d-left-handed-time"), 4),
}


# --------------------------------------------------------------------------------------------------------- reading


def _header_lines(fh: IO[bytes], path: PathLike) -> list[bytes]:
    """The header's lines up to and including the blank line that ends it, at most MAX_HEADER_BYTES in all."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = fh.readline(MAX_HEADER_BYTES + 1 - size)
        size += len(line)
        if size > MAX_HEADER_BYTES:
            raise FormatError(f"{path}: NRRD header is longer than {MAX_HEADER_BYTES:,} bytes (or lacks the blank "
                              "line that ends it)")
        lines.append(line)
        if not line or not line.strip(b"\r\n") or (not line.endswith(b"\n")):
            return lines


def _parse_header(fh: IO[bytes], path: PathLike) -> dict[str, Any]:
    """Parse the header of an open NRRD file (pynrrd); leave ``fh`` at the first data byte."""
    magic = fh.read(4)
    if magic != b"NRRD":
        raise FormatError(f"{path}: not a NRRD file (it does not start with 'NRRD', it starts with {magic!r})")
    fh.seek(0)
    lines = _header_lines(fh, path)
    fh.seek(sum(len(line) for line in lines))
    try:
        header = nrrd.read_header([line for line in lines if line])
    except nrrd.NRRDError as exc:
        raise FormatError(f"{path}: bad NRRD header: {exc}") from exc
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, UnicodeError, StopIteration,
            AttributeError) as exc:  # pynrrd's parsers raise these for malformed values
        raise FormatError(
            f"{path}: bad NRRD header (a line is not 'field: value' or a value is malformed: "
            f"{type(exc).__name__}: {exc})"
        ) from exc
    return dict(header)


def _int_field(header: Mapping[str, Any], names: Sequence[str], path: PathLike, default: int = 0) -> int:
    for name in names:
        if name in header:
            try:
                return int(header[name])
            except (TypeError, ValueError, OverflowError):
                raise FormatError(f"{path}: '{name}: {header[name]}' is not an integer") from None
    return default


def _check_header(header: Mapping[str, Any], path: PathLike) -> tuple[np.dtype, tuple[int, ...], str]:
    """Validate the fields needed to read the data; return (file dtype, sizes, encoding)."""
    for field in ("type", "dimension", "sizes", "encoding"):
        if field not in header:
            raise FormatError(f"{path}: NRRD header lacks the required field '{field}:'")
    type_name = str(header["type"]).strip().lower()
    if type_name == "block":
        raise FormatError(f"{path}: NRRD 'type: block' is not supported")
    if type_name not in _TYPE_ALIASES:
        raise FormatError(f"{path}: unknown NRRD type {header['type']!r} (expected e.g. 'unsigned int', 'float')")
    try:
        sizes = tuple(int(s) for s in np.atleast_1d(header["sizes"]))
    except (TypeError, ValueError, OverflowError):
        raise FormatError(f"{path}: 'sizes: {header['sizes']}' is not a list of integers") from None
    if _int_field(header, ("dimension",), path) != len(sizes):
        raise FormatError(f"{path}: 'dimension: {header['dimension']}' but 'sizes:' lists {len(sizes)} sizes")
    if not sizes or any(s < 1 for s in sizes):
        raise FormatError(f"{path}: 'sizes:' must be positive, got {' '.join(map(str, sizes))}")
    encoding = str(header["encoding"]).strip().lower()
    if encoding not in _READ_ENCODINGS:
        raise FormatError(
            f"{path}: unknown NRRD encoding {header['encoding']!r} (expected raw, gzip, bzip2 or ascii)"
        )
    dtype = np.dtype(_TYPE_ALIASES[type_name])
    array_nbytes(sizes, dtype.itemsize, str(path), "'sizes:'")
    if dtype.itemsize > 1 and encoding not in _ASCII:
        endian = str(header.get("endian", "")).strip().lower()
        if endian not in ("little", "big"):
            what = f"'endian: {header['endian']}'" if "endian" in header else "no 'endian:' field"
            raise FormatError(f"{path}: {type_name} data needs 'endian: little' or 'endian: big', got {what}")
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    return dtype, sizes, encoding


def read_nrrd_header(path: PathLike) -> dict[str, Any]:
    """Read and validate a NRRD header without reading the data.

    Returns pynrrd's parsed header (``sizes`` and ``space origin`` as numpy arrays, ``space directions`` as an
    (axes, space-dimension) array with NaN rows for non-spatial axes, ...). Raises FormatError for a malformed
    header (not a NRRD, unknown type or encoding, sizes inconsistent with the dimension).
    """
    with open_regular(path, str(path)) as fh:
        header = _parse_header(fh, path)
    _check_header(header, path)
    return header


def _fmt(n: int) -> str:
    return f"{n:,}"


def _remaining_bytes(fh: IO[bytes]) -> int | None:
    """Bytes between the current position and the end of a regular file (None if unknown)."""
    try:
        return os.fstat(fh.fileno()).st_size - fh.tell()
    except (OSError, AttributeError, ValueError):
        return None


def _read_exact(fh: IO[bytes], nbytes: int, path: PathLike, what: str) -> np.ndarray:
    """Read exactly ``nbytes`` from ``fh`` (to its end) into a new uint8 array; precise errors otherwise."""
    remaining = _remaining_bytes(fh)
    if remaining is not None and remaining < nbytes:  # fail before allocating what a lying header asks for
        raise FormatError(f"{path}: {what} is truncated (expected {_fmt(nbytes)} bytes, got {_fmt(max(remaining, 0))})")
    buffer = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buffer)
    got = 0
    while got < nbytes:  # readinto may return short reads
        more = fh.readinto(view[got:])
        if not more:
            break
        got += more
    if got < nbytes:
        raise FormatError(f"{path}: {what} is truncated (expected {_fmt(nbytes)} bytes, got {_fmt(got)})")
    extra = remaining - nbytes if remaining is not None else len(fh.read(1))
    if extra:
        raise FormatError(
            f"{path}: {what} is longer than the header says (the sizes and type in the header need "
            f"{_fmt(nbytes)} bytes, the file holds {_fmt(nbytes + extra)})"
        )
    return buffer


def decompress_data(fh: IO[bytes], encoding: str, nbytes: int, path: PathLike, skip: int = 0) -> np.ndarray:
    """The ``nbytes`` of decompressed data (after ``skip`` decompressed bytes) of a gzip or bzip2 NRRD, read from
    ``fh``'s position, streamed with the output capped at ``skip + nbytes`` (:func:`decompress_exact`)."""
    codec = "gzip" if encoding in _GZIP else "bzip2"
    return decompress_exact(fh.read, codec, nbytes, str(path), skip=skip, compressed_size=_remaining_bytes(fh))


def _data_source(header: Mapping[str, Any], path: PathLike) -> Path | None:
    """The detached data file named by ``data file:`` (relative to the header), or None if attached."""
    name = header.get("data file", header.get("datafile"))
    if name is None:
        return None
    name = str(name).strip()
    if name.upper().startswith("LIST") or len(name.split()) > 1 or "%" in name:
        raise FormatError(f"{path}: multi-file 'data file: {name}' is not supported")
    if not name or "\0" in name:
        raise FormatError(f"{path}: 'data file: {name!r}' is not a file name")
    data_path = Path(name)
    if not data_path.is_absolute():
        data_path = Path(path).parent / data_path
    if not data_path.exists():
        raise FormatError(f"{path}: the detached data file {str(data_path)!r} named by 'data file:' is missing")
    return data_path


def _skip(fh: IO[bytes], header: Mapping[str, Any], path: PathLike, encoding: str, nbytes: int) -> int:
    """Apply ``line skip`` (and ``byte skip`` for raw data); return the byte skip left for decompressed data."""
    line_skip = _int_field(header, ("line skip", "lineskip"), path)
    byte_skip = _int_field(header, ("byte skip", "byteskip"), path)
    if line_skip < 0 or byte_skip < -1:
        raise FormatError(f"{path}: negative 'line skip: {line_skip}' or 'byte skip: {byte_skip}'")
    skip_lines(fh, line_skip, str(path))
    remaining = _remaining_bytes(fh)
    if encoding in _RAW:
        if byte_skip == -1:  # the data are the last nbytes of the file
            start = fh.tell()
            end = fh.seek(0, os.SEEK_END)
            if end - start < nbytes:
                raise FormatError(f"{path}: raw data is truncated (expected {_fmt(nbytes)} bytes)")
            fh.seek(end - nbytes)
        else:
            if remaining is not None and byte_skip > remaining:
                raise FormatError(f"{path}: 'byte skip: {byte_skip}' is beyond the end of the data "
                                  f"({_fmt(remaining)} bytes)")
            fh.seek(byte_skip, os.SEEK_CUR)
        return 0
    if byte_skip == -1:
        raise FormatError(f"{path}: 'byte skip: -1' is only supported for raw data")
    array_nbytes((byte_skip + nbytes,), 1, str(path), "'byte skip:' plus the data")
    return byte_skip


def _decode(
    fh: IO[bytes], header: Mapping[str, Any], path: PathLike, data_path: Path | None,
    dtype: np.dtype, sizes: tuple[int, ...], encoding: str,
) -> np.ndarray:
    """Read the data of an open NRRD whose header has been parsed; return the flat native-order array."""
    nbytes = array_nbytes(sizes, dtype.itemsize, str(path), "'sizes:'")
    where = f"data file {str(data_path)!r}" if data_path is not None else "data"
    byte_skip = _skip(fh, header, path, encoding, nbytes)
    if encoding in _ASCII:
        remaining = _remaining_bytes(fh)
        if remaining is not None and remaining < math.prod(sizes):  # at least one character per value
            raise FormatError(f"{path}: ascii {where} is too short for {math.prod(sizes):,} values")
        # pynrrd parses the text; skips and the data file were handled above, so hand it a minimal header.
        minimal = {"type": NRRD_TYPES[dtype.str[1:]], "dimension": len(sizes), "sizes": np.array(sizes),
                   "encoding": "ascii"}
        try:
            flat = nrrd.read_data(minimal, fh, None, index_order="C").ravel()
        except (nrrd.NRRDError, ValueError, TypeError, OverflowError) as exc:
            raise FormatError(f"{path}: bad ascii {where} ({exc})") from exc
        return flat.astype(dtype.newbyteorder("="), copy=False)
    if encoding in _RAW:
        raw = _read_exact(fh, nbytes, path, f"raw {where}")
    else:
        raw = decompress_data(fh, encoding, nbytes, path if data_path is None else f"{path}: {where}", byte_skip)
    flat = raw.view(dtype)
    return flat if dtype.isnative else flat.astype(dtype.newbyteorder("="))


def read_nrrd(path: PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a NRRD file (attached or detached data; raw, gzip, bzip2 or ascii encoding).

    Returns ``(data, header)``: ``data`` indexed in file axis order, first axis fastest (for Allen CCF volumes
    ``data[ap, dv, lr]``, shape e.g. (528, 320, 456) at 25 um), native byte order, writable; ``header`` is
    pynrrd's parsed header dict (space directions and origin in microns for Allen files).

    Raises FormatError naming ``path`` for any malformed content (including a path or data file that is not a
    regular file), and OSError (e.g. FileNotFoundError) if ``path`` itself cannot be opened.
    """
    with open_regular(path, str(path)) as fh:
        header = _parse_header(fh, path)
        dtype, sizes, encoding = _check_header(header, path)
        data_path = _data_source(header, path)
        try:
            if data_path is None:
                flat = _decode(fh, header, path, None, dtype, sizes, encoding)
            else:
                with open_regular(data_path, str(path), "detached data file") as data_fh:
                    flat = _decode(data_fh, header, path, data_path, dtype, sizes, encoding)
        except MemoryError:
            raise FormatError(f"{path}: not enough memory to read 'sizes: {' '.join(map(str, sizes))}' "
                              f"({math.prod(sizes):,} values)") from None
        except FormatError:
            raise
        except OSError as exc:
            raise FormatError(f"{path}: cannot read the data ({exc})") from exc
    # File order is first-axis-fastest: reshape reversed (C order) and transpose to index [x, y, z].
    return flat.reshape(sizes[::-1]).T, header


# --------------------------------------------------------------------------------------------------------- writing


def _number(x: Any) -> str:
    """A number as teem prints it: integers plainly, doubles as %.17g (25.0 -> '25', 0.1 -> '0.10000000000000001')."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    value = float(x)
    if np.isnan(value):
        return "nan"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return nrrd.format_number(value)


def _vector(values: Any) -> str:
    return "(" + ",".join(_number(v) for v in values) + ")"


def _optional_vector(values: Any) -> str:
    """A space-direction vector, or 'none' for a non-spatial axis (None or a NaN row, as pynrrd reads it)."""
    if values is None:
        return "none"
    array = np.asarray(values, dtype=float)
    if np.all(np.isnan(array)):
        return "none"
    return _vector(array)


def _quoted(values: Sequence[Any]) -> str:
    return " ".join('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)


def _format_field(field: str, value: Any) -> str:
    if field in ("content", "sample units", "space"):
        return str(value)
    if field == "space dimension":
        return str(int(value))
    if field in ("kinds", "centerings"):
        return " ".join(str(v) for v in value)
    if field in ("labels", "units", "space units"):
        return _quoted(value)
    if field in ("spacings", "thicknesses", "axis mins", "axis maxs"):
        return " ".join(_number(v) for v in value)
    if field in ("min", "max", "old min", "old max"):
        return _number(value)
    if field == "space origin":
        return _vector(np.asarray(value, dtype=float).ravel())
    if field == "space directions":
        return " ".join(_optional_vector(row) for row in value)
    if field == "measurement frame":
        return " ".join(_vector(row) for row in np.asarray(value, dtype=float))
    raise AssertionError(field)  # pragma: no cover - only called for known fields


def _escape_key_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _space_dimension(fields: Mapping[str, Any]) -> int | None:
    if "space" in fields:
        space = str(fields["space"]).strip().lower()
        if space not in _SPACE_DIMENSIONS:
            raise ValueError(f"write_nrrd: unknown NRRD space {fields['space']!r}")
        return _SPACE_DIMENSIONS[space]
    if "space dimension" in fields:
        return int(fields["space dimension"])
    return None


def _header_fields(
    ndim: int,
    header: Mapping[str, Any] | None,
    spacing_um: float | Sequence[float] | None,
    origin_um: Sequence[float] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge the caller's header and arguments into (optional NRRD fields, key/value pairs)."""
    if header is None and spacing_um is None:
        raise ValueError("write_nrrd: give spacing_um (voxel size in microns) or a header to take it from")
    fields: dict[str, Any] = {}
    key_values: dict[str, str] = {}
    for key, value in (header or {}).items():
        compact = str(key).replace(" ", "").lower()
        if compact in _DERIVED_COMPACT:
            continue
        name = _FIELD_ALIASES.get(compact, str(key).strip())
        if name in _KNOWN_FIELDS:
            fields[name] = value
        else:
            key_values[str(key)] = str(value)
    if header is None:
        fields = {"space": "left-posterior-superior"} if ndim == 3 else {}
    if spacing_um is not None:
        spacing = np.broadcast_to(np.asarray(spacing_um, dtype=float), (ndim,))
        if _space_dimension(fields) == ndim:
            fields["space directions"] = np.diag(spacing)
            fields.pop("spacings", None)
        else:
            fields["spacings"] = list(spacing)
            fields.pop("space directions", None)
    space_dim = _space_dimension(fields)
    if space_dim is not None:
        if "space" in fields:  # a named space implies its dimension; teem writes only one of the two
            fields.pop("space dimension", None)
        if origin_um is not None:
            fields["space origin"] = origin_um
        else:
            fields.setdefault("space origin", np.zeros(space_dim))
        if np.asarray(fields["space origin"], dtype=float).size != space_dim:
            raise ValueError(f"write_nrrd: space origin {fields['space origin']!r} needs {space_dim} values")
        directions = fields.get("space directions")
        if directions is not None:
            for row in directions:
                if _optional_vector(row) != "none" and np.asarray(row).size != space_dim:
                    raise ValueError(f"write_nrrd: space direction {row!r} needs {space_dim} values")
    elif origin_um is not None:
        raise ValueError("write_nrrd: origin_um needs a space (3-D data, or a header with 'space')")
    else:
        for name in ("space origin", "space directions", "space units", "measurement frame"):
            fields.pop(name, None)
    fields.setdefault("kinds", ["domain"] * ndim)
    for name in _PER_AXIS_FIELDS:
        if name in fields and len(fields[name]) != ndim:
            raise ValueError(f"write_nrrd: header field '{name}' has {len(fields[name])} entries for {ndim} axes")
    return fields, key_values


def _nrrd_version(fields: Mapping[str, Any], key_values: Mapping[str, str]) -> int:
    """The oldest NRRD format version that has every field used (teem's rule)."""
    if "measurement frame" in fields:
        return 5
    if any(f in fields for f in ("thicknesses", "space", "space dimension", "sample units")):
        return 4
    if "kinds" in fields:
        return 3
    return 2 if key_values else 1


def _format_header(
    data: np.ndarray, type_name: str, encoding: str, fields: Mapping[str, Any], key_values: Mapping[str, str]
) -> bytes:
    lines = [f"NRRD{_nrrd_version(fields, key_values):04d}\n", _TEEM_PREAMBLE]

    def add(name: str) -> None:
        if name in fields:
            lines.append(f"{name}: {_format_field(name, fields[name])}\n")

    add("content")
    lines.append(f"type: {type_name}\n")
    lines.append(f"dimension: {data.ndim}\n")
    add("space")
    add("space dimension")
    lines.append("sizes: " + " ".join(str(n) for n in data.shape) + "\n")
    for name in _FIELD_ORDER_BEFORE_KV[3:]:
        add(name)
    if data.dtype.itemsize > 1:  # teem omits 'endian' for 1-byte types
        lines.append("endian: little\n")
    lines.append(f"encoding: {encoding}\n")
    for key, value in key_values.items():
        lines.append(f"{_escape_key_value(key)}:={_escape_key_value(value)}\n")
    for name in _FIELD_ORDER_AFTER_KV:
        add(name)
    lines.append("\n")
    return "".join(lines).encode("ascii")


def _file_bytes(data: np.ndarray) -> np.ndarray:
    """The array's bytes in file order (first axis fastest) as a flat uint8 array (a view when possible)."""
    ordered = np.ascontiguousarray(data.T)  # C order of the transpose = Fortran order of data
    return ordered.reshape(-1).view(np.uint8)


def _write_data(fh: IO[bytes], payload: np.ndarray, encoding: str, compression_level: int) -> None:
    if encoding == "raw":
        for start in range(0, payload.size, _CHUNK):
            fh.write(payload[start : start + _CHUNK])
        return
    # Allen/teem gzip: deflate, memLevel 8, gzip wrapper (no file name, mtime 0, OS byte from zlib).
    compressor = zlib.compressobj(compression_level, zlib.DEFLATED, zlib.MAX_WBITS | 16, 8)
    for start in range(0, payload.size, _CHUNK):
        fh.write(compressor.compress(payload[start : start + _CHUNK]))
    fh.write(compressor.flush())


def _prepare_data(data: Any) -> tuple[np.ndarray, str]:
    """Little-endian copy/view of ``data`` and its teem type name; bool is written as unsigned char."""
    array = np.asarray(data)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    key = f"{array.dtype.kind}{array.dtype.itemsize}"
    if key not in NRRD_TYPES:
        raise ValueError(
            f"write_nrrd: cannot write dtype {array.dtype} (NRRD types are 1/2/4/8-byte integers, float32, float64)"
        )
    if array.ndim == 0:
        raise ValueError("write_nrrd: cannot write a 0-dimensional array")
    return array.astype(array.dtype.newbyteorder("<"), copy=False), NRRD_TYPES[key]


def write_nrrd(
    path: PathLike,
    data: Any,
    header: Mapping[str, Any] | None = None,
    *,
    spacing_um: float | Sequence[float] | None = None,
    origin_um: Sequence[float] | None = None,
    encoding: str = "gzip",
    compression_level: int = 6,
) -> None:
    """Write ``data`` (indexed [x, y, z], first axis fastest in the file) as a NRRD the way teem/Allen do.

    ``header`` (e.g. as returned by :func:`read_nrrd`) supplies space, space directions, space origin, kinds and
    any other optional fields or key/value pairs; ``type``, ``dimension``, ``sizes``, ``endian`` and
    ``encoding`` always come from ``data`` and ``encoding``. Without a header, ``spacing_um`` (a scalar or one
    value per axis, microns) is required and 3-D data gets ``space: left-posterior-superior``, a diagonal
    ``space directions``, ``kinds: domain domain domain`` and ``space origin`` (``origin_um``, default 0). With
    both, ``spacing_um``/``origin_um`` replace the header's values. Data is written little-endian;
    ``encoding`` is ``"gzip"`` (zlib level ``compression_level``) or ``"raw"``. The file is replaced atomically.

    Raises ValueError for data or arguments that cannot be written (complex/object dtypes, inconsistent header).
    """
    encoding = encoding.lower()
    if encoding == "gz":
        encoding = "gzip"
    if encoding not in _WRITE_ENCODINGS:
        raise ValueError(f"write_nrrd: encoding must be 'gzip' or 'raw', not {encoding!r}")
    if encoding == "gzip" and not 0 <= compression_level <= 9:
        raise ValueError(f"write_nrrd: compression_level must be 0..9, not {compression_level}")
    array, type_name = _prepare_data(data)
    fields, key_values = _header_fields(array.ndim, header, spacing_um, origin_um)
    header_bytes = _format_header(array, type_name, encoding, fields, key_values)
    payload = _file_bytes(array)
    with atomic_write(path) as fh:
        fh.write(header_bytes)
        _write_data(fh, payload, encoding, compression_level)
