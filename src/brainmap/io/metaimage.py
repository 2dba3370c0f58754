"""MetaImage volumes: ``.mhd`` header + ``.raw`` (or ``.zraw``) data file, and single-file ``.mha``.

This is the format of Allen's gridded data (ISH expression grids, projection grids in the grid-data zip
bundles). A header is ``Key = Value`` lines; ``ElementDataFile`` is the last one and names the data file
(relative to the header) or is ``LOCAL``, meaning the data follow the header line in the same file.

Axis order. ``DimSize`` lists the fastest-varying axis first. Arrays are indexed in that order,
``array[x, y, z]`` with ``x`` fastest in the file, as for NRRD: Allen's ISH grids have ``DimSize = 67 41 58`` =
(AP, DV, LR) at 200 um and come back with shape (67, 41, 58). Multi-channel images
(``ElementNumberOfChannels`` > 1, channels interleaved fastest) get a trailing channel axis.

Values are returned as stored, in native byte order. In Allen expression grids ``-1`` marks voxels without
data; the reader does not change them.

Parsing works on bytes (:func:`parse_metaimage_header`, :func:`decode_metaimage_data`) so that the grid-bundle
reader shares it; :func:`read_metaimage` adds the file handling. Every malformed input raises
:class:`brainmap.errors.FormatError` naming the header and, where relevant, the data file.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainmap.errors import FormatError
from brainmap.io.atomic import atomic_write
from brainmap.io.limits import MAX_HEADER_BYTES, array_nbytes, decompress_exact, open_regular

__all__ = [
    "ELEMENT_TYPES",
    "MetaImageHeader",
    "decode_metaimage_data",
    "encode_metaimage",
    "format_metaimage_header",
    "parse_metaimage_header",
    "read_metaimage",
    "write_metaimage",
]

PathLike = str | os.PathLike[str]

#: MetaIO element types and their numpy types (MetaIO's MET_LONG/MET_ULONG are 4 bytes).
ELEMENT_TYPES: dict[str, str] = {
    "MET_CHAR": "i1",
    "MET_UCHAR": "u1",
    "MET_SHORT": "i2",
    "MET_USHORT": "u2",
    "MET_INT": "i4",
    "MET_UINT": "u4",
    "MET_LONG": "i4",
    "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8",
    "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}
# What ITK writes for each numpy type.
_DTYPE_TO_ELEMENT_TYPE: dict[str, str] = {
    "i1": "MET_CHAR",
    "u1": "MET_UCHAR",
    "i2": "MET_SHORT",
    "u2": "MET_USHORT",
    "i4": "MET_INT",
    "u4": "MET_UINT",
    "i8": "MET_LONG_LONG",
    "u8": "MET_ULONG_LONG",
    "f4": "MET_FLOAT",
    "f8": "MET_DOUBLE",
}

# Canonical key spellings; keys are matched case-insensitively and synonyms mapped onto them.
_KEYS = {
    key.lower(): key
    for key in (
        "ObjectType", "NDims", "DimSize", "ElementType", "ElementDataFile", "ElementSpacing",
        "Offset", "BinaryData", "BinaryDataByteOrderMSB", "CompressedData", "CompressedDataSize", "HeaderSize",
        "ElementNumberOfChannels",
    )
}
_SYNONYMS = {"elementbyteordermsb": "BinaryDataByteOrderMSB", "position": "Offset", "origin": "Offset"}
_TRUE = {"true", "t", "1", "yes"}
_FALSE = {"false", "f", "0", "no"}
_MAX_HEADER_BYTES = MAX_HEADER_BYTES


@dataclass
class MetaImageHeader:
    """The fields of a MetaImage header that describe the data.

    ``dim_size`` and ``element_spacing`` list the fastest-varying axis first (for Allen grids: AP, DV, LR);
    spacing and ``offset`` are in the file's physical units (microns for Allen's grids). ``extra`` keeps every
    other field as text (TransformMatrix, CenterOfRotation, AnatomicalOrientation, ...), in file order.
    """

    dim_size: tuple[int, ...]
    element_spacing: tuple[float, ...]
    element_type: str
    byte_order_msb: bool = False
    offset: tuple[float, ...] = ()
    element_data_file: str = "LOCAL"
    compressed_data: bool = False
    compressed_data_size: int | None = None
    header_size: int = 0
    channels: int = 1
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ndims(self) -> int:
        return len(self.dim_size)

    @property
    def dtype(self) -> np.dtype:
        """The element type as stored in the data file (with its byte order)."""
        return np.dtype(ELEMENT_TYPES[self.element_type]).newbyteorder(">" if self.byte_order_msb else "<")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the array returned by the readers: ``dim_size`` (+ channels if more than one)."""
        return self.dim_size + ((self.channels,) if self.channels > 1 else ())

    @property
    def nbytes(self) -> int:
        """Size of the uncompressed data in bytes."""
        return math.prod(self.shape) * self.dtype.itemsize


# ------------------------------------------------------------------------------------------------- parsing


def _number_list(text: str, kind: type, key: str, source: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(v) for v in text.split())
    except ValueError:
        raise FormatError(f"{source}: {key} = {text!r} is not a list of numbers") from None


def _integer(text: str, key: str, source: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise FormatError(f"{source}: {key} = {text!r} is not an integer") from None


def _boolean(text: str, key: str, source: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise FormatError(f"{source}: {key} = {text!r} is neither True nor False")


def _header_lines(raw: bytes, source: str) -> tuple[dict[str, str], dict[str, str], int]:
    """Split ``Key = Value`` lines up to and including ElementDataFile; return (known, other, data offset)."""
    known: dict[str, str] = {}
    other: dict[str, str] = {}
    position = 0
    line_number = 0
    while position < len(raw):
        end = raw.find(b"\n", position)
        end = len(raw) if end == -1 else end + 1
        line_bytes = raw[position:end]
        position = end
        line_number += 1
        line = line_bytes.decode("latin-1").strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not key.replace("_", "").isalnum():
            raise FormatError(
                f"{source}: not a MetaImage header (line {line_number} is not 'Key = Value': {line[:60]!r})"
            )
        canonical = _SYNONYMS.get(key.lower(), _KEYS.get(key.lower()))
        if canonical is None:
            other[key] = value
        elif canonical in known:
            raise FormatError(f"{source}: field {canonical} appears twice")
        else:
            known[canonical] = value
        if canonical == "ElementDataFile":  # always the last field; LOCAL data start on the next byte
            return known, other, position
    if "DimSize" not in known:
        raise FormatError(f"{source}: MetaImage header has no DimSize")
    raise FormatError(f"{source}: MetaImage header has no ElementDataFile (it must be the last field)")


def parse_metaimage_header(raw: bytes, source: str) -> tuple[MetaImageHeader, int]:
    """Parse a MetaImage header from the start of ``raw`` (an .mhd file, or the beginning of an .mha).

    Returns the header and the offset of the first byte after the ``ElementDataFile`` line (where ``LOCAL``
    data begin). ``source`` names the file in error messages.
    """
    known, other, data_offset = _header_lines(raw, source)
    for key in ("DimSize", "ElementType"):
        if key not in known:
            raise FormatError(f"{source}: MetaImage header has no {key}")
    object_type = known.get("ObjectType", "Image")
    if object_type.lower() != "image":
        raise FormatError(f"{source}: ObjectType = {object_type} is not an image")
    dim_size = _number_list(known["DimSize"], int, "DimSize", source)
    if not dim_size or any(n < 1 for n in dim_size):
        raise FormatError(f"{source}: DimSize = {known['DimSize']!r} must list positive sizes")
    ndims = _integer(known["NDims"], "NDims", source) if "NDims" in known else len(dim_size)
    if ndims != len(dim_size):
        raise FormatError(f"{source}: NDims = {ndims} but DimSize = {known['DimSize']!r} lists {len(dim_size)} sizes")
    element_type = known["ElementType"].upper()
    if element_type not in ELEMENT_TYPES:
        raise FormatError(
            f"{source}: unknown ElementType {known['ElementType']!r} (expected one of {', '.join(ELEMENT_TYPES)})"
        )
    if "BinaryData" in known and not _boolean(known["BinaryData"], "BinaryData", source):
        raise FormatError(f"{source}: BinaryData = False (text data) is not supported")

    def per_axis(key: str, default: float) -> tuple[float, ...]:
        if key not in known:
            return (default,) * ndims
        values = _number_list(known[key], float, key, source)
        if len(values) != ndims:
            raise FormatError(f"{source}: {key} = {known[key]!r} needs {ndims} values (NDims = {ndims})")
        return values

    if "ElementSpacing" not in known and "ElementSize" in other:  # MetaIO falls back on ElementSize
        known["ElementSpacing"] = other["ElementSize"]
    spacing = per_axis("ElementSpacing", 1.0)
    channels = _integer(known.get("ElementNumberOfChannels", "1"), "ElementNumberOfChannels", source)
    header_size = _integer(known.get("HeaderSize", "0"), "HeaderSize", source)
    if channels < 1 or header_size < -1:
        raise FormatError(f"{source}: ElementNumberOfChannels must be >= 1 and HeaderSize >= -1")
    compressed = _boolean(known.get("CompressedData", "False"), "CompressedData", source)
    if compressed and header_size == -1:
        raise FormatError(f"{source}: HeaderSize = -1 cannot be used with CompressedData = True")
    compressed_size = known.get("CompressedDataSize")
    header = MetaImageHeader(
        dim_size=dim_size,
        element_spacing=spacing,
        element_type=element_type,
        byte_order_msb=_boolean(known.get("BinaryDataByteOrderMSB", "False"), "BinaryDataByteOrderMSB", source),
        offset=per_axis("Offset", 0.0),
        element_data_file=known["ElementDataFile"],
        compressed_data=compressed,
        compressed_data_size=None if compressed_size is None else _integer(compressed_size, "CompressedDataSize",
                                                                           source),
        header_size=header_size,
        channels=channels,
        extra=other,
    )
    array_nbytes(header.shape, header.dtype.itemsize, source, "DimSize x ElementNumberOfChannels")
    edf = header.element_data_file
    if "\0" in edf:
        raise FormatError(f"{source}: ElementDataFile = {edf!r} holds a NUL character")
    if edf.upper().startswith("LIST") or "%" in edf or not edf:
        raise FormatError(f"{source}: ElementDataFile = {edf!r} (a list of slice files) is not supported")
    return header, data_offset


def _inflate_exact(payload: memoryview, nbytes: int, source: str, data_name: str) -> np.ndarray:
    """Inflate zlib or gzip data (MetaIO accepts both) that must give exactly ``nbytes``, streamed with the output
    capped at ``nbytes`` (:func:`brainmap.io.limits.decompress_exact`)."""
    position = 0

    def read(n: int) -> bytes:
        nonlocal position
        chunk = bytes(payload[position : position + n])
        position += len(chunk)
        return chunk

    return decompress_exact(read, "zlib", nbytes, f"{source}: {data_name}", compressed_size=len(payload))


def decode_metaimage_data(header: MetaImageHeader, payload: Any, source: str, data_name: str) -> np.ndarray:
    """Turn the bytes of a data file (or of the LOCAL data) into the array described by ``header``.

    ``payload`` is any bytes-like object. Raises FormatError (naming ``source`` and ``data_name``) if it is
    shorter or longer than ``DimSize`` x channels x element size, or if compressed data are corrupt.
    Returns the array indexed [x, y, z(, channel)], native byte order, writable.
    """
    nbytes = header.nbytes
    data = memoryview(payload).cast("B")
    if header.header_size > len(data):
        raise FormatError(f"{source}: HeaderSize = {header.header_size} is beyond the end of {data_name} "
                          f"({len(data):,} bytes)")
    if header.compressed_data:
        flat = _inflate_exact(data[header.header_size :], nbytes, source, data_name)
    else:
        if header.header_size == -1:  # the data are the last nbytes of the file
            if len(data) < nbytes:
                raise FormatError(
                    f"{source}: data file {data_name} is shorter than DimSize and ElementType say "
                    f"(expected {nbytes:,} bytes, got {len(data):,})"
                )
            data = data[len(data) - nbytes :]
        else:
            data = data[header.header_size :]
        if len(data) != nbytes:
            relation = "shorter" if len(data) < nbytes else "longer"
            raise FormatError(
                f"{source}: data file {data_name} is {relation} than DimSize and ElementType say "
                f"(expected {nbytes:,} bytes for {' x '.join(map(str, header.shape))} {header.element_type}, "
                f"got {len(data):,})"
            )
        flat = np.frombuffer(data, dtype=np.uint8)
    values = flat.view(header.dtype)
    if not header.dtype.isnative:
        values = values.astype(header.dtype.newbyteorder("="))
    elif not values.flags.writeable:
        values = values.copy()
    ndims = header.ndims
    # The file is x fastest (then y, z); channels, if any, vary fastest of all.
    array = values.reshape(tuple(reversed(header.dim_size)) + ((header.channels,) if header.channels > 1 else ()))
    order = tuple(range(ndims - 1, -1, -1)) + ((ndims,) if header.channels > 1 else ())
    return array.transpose(order)


# ------------------------------------------------------------------------------------------------- reading


def _check_length(header: MetaImageHeader, available: int, source: str, data_name: str) -> None:
    """Refuse, before reading it, uncompressed data whose length cannot match DimSize and ElementType."""
    if header.compressed_data or header.header_size == -1:
        return
    expected = header.nbytes + header.header_size
    if available != expected:
        relation = "shorter" if available < expected else "longer"
        raise FormatError(
            f"{source}: data file {data_name} is {relation} than DimSize and ElementType say "
            f"(expected {header.nbytes:,} bytes for {' x '.join(map(str, header.shape))} {header.element_type}"
            f"{f' after a HeaderSize of {header.header_size}' if header.header_size else ''}, got "
            f"{max(available - header.header_size, 0):,})"
        )


def _read_file_bytes(path: Path, source: str, header: MetaImageHeader) -> np.ndarray:
    """The whole of a (regular) data file as a writable uint8 array, its length checked first."""
    data_name = repr(str(path))
    try:
        with open_regular(path, source, "data file named by ElementDataFile") as fh:
            _check_length(header, os.fstat(fh.fileno()).st_size, source, data_name)
            return _read_rest(fh)
    except FileNotFoundError:
        raise FormatError(f"{source}: data file {str(path)!r} named by ElementDataFile is missing") from None
    except FormatError:
        raise
    except OSError as exc:
        raise FormatError(f"{source}: cannot read data file {str(path)!r} ({exc})") from None


def _read_rest(fh: Any) -> np.ndarray:
    """Everything from the current position to the end of an open file, as a writable uint8 array."""
    buffer = np.empty(max(os.fstat(fh.fileno()).st_size - fh.tell(), 0), dtype=np.uint8)
    view, got = memoryview(buffer), 0
    while got < len(buffer):
        more = fh.readinto(view[got:])
        if not more:
            break
        got += more
    return buffer[:got]


def read_metaimage(path: PathLike) -> tuple[np.ndarray, MetaImageHeader]:
    """Read a MetaImage (``.mhd`` + data file, or ``.mha``).

    Returns ``(data, header)``; ``data`` is indexed [x, y, z] in ``DimSize`` order (Allen grids: [AP, DV, LR],
    200 um voxels for ISH expression grids), with the stored values (``-1`` = no data in expression grids),
    native byte order. Raises FormatError naming the file for a malformed header or data (or a header or data
    file that is not a regular file), and OSError (e.g. FileNotFoundError) if ``path`` itself cannot be opened.
    """
    source = str(path)
    with open_regular(path, source) as fh:
        prefix = fh.read(_MAX_HEADER_BYTES)
        header, data_offset = parse_metaimage_header(prefix, source)
        if header.element_data_file.upper() == "LOCAL":
            data_name = f"{Path(path).name} (LOCAL data)"
            _check_length(header, os.fstat(fh.fileno()).st_size - data_offset, source, data_name)
            fh.seek(data_offset)
            payload = _read_rest(fh)
    if header.element_data_file.upper() != "LOCAL":
        data_path = Path(header.element_data_file)
        if not data_path.is_absolute():
            data_path = Path(path).parent / data_path
        payload, data_name = _read_file_bytes(data_path, source, header), repr(str(data_path))
    try:
        return decode_metaimage_data(header, payload, source, data_name), header
    except MemoryError:
        raise FormatError(f"{source}: not enough memory for DimSize = {' '.join(map(str, header.dim_size))}") from None


# ------------------------------------------------------------------------------------------------- writing


def _format_number(value: float) -> str:
    """Shortest text that reads back as the same double; integral values without a decimal point."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def format_metaimage_header(header: MetaImageHeader) -> bytes:
    """The header text as ITK writes it (ObjectType ... ElementDataFile, one ``Key = Value`` per line)."""
    n = header.ndims
    extra = dict(header.extra)
    identity = " ".join("1" if i == j else "0" for i in range(n) for j in range(n))
    lines = [
        ("ObjectType", "Image"),
        ("NDims", str(n)),
        ("BinaryData", "True"),
        ("BinaryDataByteOrderMSB", str(bool(header.byte_order_msb))),
        ("CompressedData", str(bool(header.compressed_data))),
    ]
    if header.compressed_data and header.compressed_data_size is not None:
        lines.append(("CompressedDataSize", str(header.compressed_data_size)))
    lines += [
        ("TransformMatrix", extra.pop("TransformMatrix", identity)),
        ("Offset", " ".join(_format_number(v) for v in (header.offset or (0.0,) * n))),
        ("CenterOfRotation", extra.pop("CenterOfRotation", " ".join(["0"] * n))),
    ]
    if "AnatomicalOrientation" in extra:
        lines.append(("AnatomicalOrientation", extra.pop("AnatomicalOrientation")))
    lines += [
        ("ElementSpacing", " ".join(_format_number(v) for v in header.element_spacing)),
        ("DimSize", " ".join(str(int(v)) for v in header.dim_size)),
    ]
    if header.header_size:
        lines.append(("HeaderSize", str(header.header_size)))
    if header.channels > 1:
        lines.append(("ElementNumberOfChannels", str(header.channels)))
    lines += [(key, value) for key, value in extra.items()]
    lines += [("ElementType", header.element_type), ("ElementDataFile", header.element_data_file)]
    return "".join(f"{key} = {value}\n" for key, value in lines).encode("latin-1")


def _cast(data: Any, element_type: str | None) -> tuple[np.ndarray, str]:
    array = np.asarray(data)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if element_type is None:
        key = f"{array.dtype.kind}{array.dtype.itemsize}"
        if key not in _DTYPE_TO_ELEMENT_TYPE:
            raise ValueError(f"write_metaimage: cannot write dtype {array.dtype} (give a supported element_type)")
        return array, _DTYPE_TO_ELEMENT_TYPE[key]
    element_type = element_type.upper()
    if element_type not in ELEMENT_TYPES:
        raise ValueError(f"write_metaimage: unknown element_type {element_type!r}")
    target = np.dtype(ELEMENT_TYPES[element_type])
    integers = array.dtype.kind in "iu" and target.kind in "iu"  # any integer type, if the values fit
    if not (integers or np.can_cast(array.dtype, target, "same_kind")):
        raise ValueError(f"write_metaimage: cannot store {array.dtype} data as {element_type}")
    if target.kind in "iu" and array.size and array.dtype != target:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise ValueError(f"write_metaimage: values outside the range of {element_type}")
    return array.astype(target, copy=False), element_type


def encode_metaimage(
    data: Any,
    spacing: float | Sequence[float] = 1.0,
    *,
    element_type: str | None = None,
    offset: float | Sequence[float] = 0.0,
    data_file: str = "LOCAL",
    compress: bool = False,
    byte_order_msb: bool = False,
    as_buffer: bool = False,
) -> tuple[bytes, bytes | memoryview]:
    """Encode ``data`` (indexed [x, y, z], x fastest in the file) as MetaImage (header bytes, data bytes).

    ``spacing`` and ``offset`` are per axis (or one value for all), in physical units (microns for Allen
    grids). For ``data_file="LOCAL"`` the data bytes follow the header in the same file (.mha); otherwise
    they go to the file named ``data_file``. ``compress`` zlib-compresses the data (CompressedData = True).
    ``as_buffer`` gives the data bytes as a read-only byte view of ``data``'s own memory where its type, byte
    order and layout (Fortran order) already are the file's, instead of a copy (a 25 um float32 volume: 0.3 GB).
    """
    array, met_type = _cast(data, element_type)
    if array.ndim == 0:
        raise ValueError("write_metaimage: cannot write a 0-dimensional array")
    ndim = array.ndim
    try:
        spacing_values = tuple(float(v) for v in np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,)))
        offset_values = tuple(float(v) for v in np.broadcast_to(np.asarray(offset, dtype=float), (ndim,)))
    except ValueError:
        raise ValueError(f"write_metaimage: spacing {spacing!r} and offset {offset!r} need {ndim} values") from None
    stored = array.astype(array.dtype.newbyteorder(">" if byte_order_msb else "<"), copy=False)
    if as_buffer and not compress and stored.T.flags.c_contiguous:
        payload: bytes | memoryview = memoryview(stored.T).cast("B").toreadonly()
    else:
        payload = stored.T.tobytes()  # C order of the transpose = x fastest (one copy, whatever the layout)
    if compress:
        payload = zlib.compress(payload, 6)
    header = MetaImageHeader(
        dim_size=tuple(int(n) for n in array.shape),
        element_spacing=spacing_values,
        element_type=met_type,
        byte_order_msb=byte_order_msb,
        offset=offset_values,
        element_data_file=data_file,
        compressed_data=compress,
        compressed_data_size=len(payload) if compress else None,
    )
    return format_metaimage_header(header), payload


def write_metaimage(
    path: PathLike,
    data: Any,
    spacing: float | Sequence[float] = 1.0,
    *,
    element_type: str | None = None,
    offset: float | Sequence[float] = 0.0,
    compress: bool = False,
    byte_order_msb: bool = False,
) -> None:
    """Write ``data`` (indexed [x, y, z]) as MetaImage: ``.mha`` = one file; otherwise (``.mhd``) a header plus a
    sibling ``.raw`` (``.zraw`` if ``compress``) named after it.

    ``spacing``/``offset`` in physical units (microns; Allen ISH grids use 200), one per axis or one for all.
    ``element_type`` (e.g. ``"MET_FLOAT"``) converts the data (same-kind casts only, integer ranges checked);
    by default it follows the dtype. Written little-endian unless ``byte_order_msb``. Both files are written
    to temporary names and moved into place data file first, header last.
    """
    target = Path(path)
    if target.suffix.lower() == ".mha":
        header, payload = encode_metaimage(data, spacing, element_type=element_type, offset=offset,
                                           compress=compress, byte_order_msb=byte_order_msb, as_buffer=True)
        with atomic_write(target) as fh:
            fh.write(header)
            fh.write(payload)
        return
    data_path = target.with_suffix(".zraw" if compress else ".raw")
    if data_path == target:
        raise ValueError(f"write_metaimage: {target} must end in .mhd or .mha")
    header, payload = encode_metaimage(data, spacing, element_type=element_type, offset=offset,
                                       data_file=data_path.name, compress=compress, byte_order_msb=byte_order_msb,
                                       as_buffer=True)  # written from the array's memory where it can be
    with atomic_write(target) as header_fh:
        header_fh.write(header)
        with atomic_write(data_path) as data_fh:  # committed first; the header is moved into place last
            data_fh.write(payload)
