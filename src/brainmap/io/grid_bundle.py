"""Allen grid-data zip bundles: one MetaImage per volume.

``http://api.brain-map.org/grid_data/download/{id}?include=energy,density,intensity`` returns a zip holding an
``.mhd`` header and its ``.raw`` data per volume, named after the volume: ``energy.mhd`` + ``energy.raw``,
``density.mhd`` + ``density.raw``, ... (``injection``, ``projection`` etc. for connectivity products). ISH
expression grids are 67 x 41 x 58 float32 voxels of 200 um, indexed [AP, DV, LR]; -1 marks voxels without data.

Volumes are named by the header's file name without its extension, wherever it sits in the zip. Headers and
data are decoded with :mod:`brainmap.io.metaimage`, so a bundle accepts exactly what a directory of MetaImage
files would (including ``.mha`` members and compressed data).
"""

from __future__ import annotations

import io
import os
import posixpath
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

import numpy as np

from brainmap.errors import FormatError
from brainmap.io.atomic import atomic_write
from brainmap.io.metaimage import MetaImageHeader, decode_metaimage_data, encode_metaimage, parse_metaimage_header

__all__ = ["grid_bundle_bytes", "read_grid_bundle", "write_grid_bundle"]

PathLike = str | os.PathLike[str]
_HEADER_SUFFIXES = (".mhd", ".mha")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # a constant member time makes bundles reproducible byte for byte


def _display_name(source: PathLike | bytes | IO[bytes]) -> str:
    """How error messages name the bundle: its path, or what kind of in-memory object it is."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<grid bundle bytes>"
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, (str, os.PathLike)) else "<grid bundle stream>"


def _open_zip(source: PathLike | bytes | IO[bytes], name: str) -> zipfile.ZipFile:
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        return zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise FormatError(f"{name}: not a grid-data bundle (not a zip file: {exc})") from None
    except (EOFError, ValueError) as exc:  # truncated streams may raise these from the central directory
        raise FormatError(f"{name}: not a grid-data bundle (not a readable zip file: {exc})") from None


def _member_bytes(archive: zipfile.ZipFile, member: str, name: str) -> bytes:
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise FormatError(f"{name}: member {member!r} cannot be read ({exc})") from None


def _volume_members(archive: zipfile.ZipFile, name: str) -> dict[str, str]:
    """Volume name -> header member (``energy`` -> ``energy.mhd``), in zip order."""
    volumes: dict[str, str] = {}
    for member in archive.namelist():
        stem, suffix = posixpath.splitext(posixpath.basename(member))
        if suffix.lower() not in _HEADER_SUFFIXES or not stem:
            continue
        if stem in volumes:
            raise FormatError(f"{name}: volume {stem!r} appears twice ({volumes[stem]!r} and {member!r})")
        volumes[stem] = member
    return volumes


def _read_volume(archive: zipfile.ZipFile, member: str, name: str) -> tuple[np.ndarray, MetaImageHeader]:
    source = f"{name}: {member}"
    raw = _member_bytes(archive, member, name)
    header, data_offset = parse_metaimage_header(raw, source)
    if header.element_data_file.upper() == "LOCAL":
        return decode_metaimage_data(header, memoryview(raw)[data_offset:], source, f"{member} (LOCAL data)"), header
    data_member = posixpath.normpath(posixpath.join(posixpath.dirname(member), header.element_data_file))
    try:
        archive.getinfo(data_member)
    except KeyError:
        raise FormatError(
            f"{name}: {member} names data file {data_member!r} (ElementDataFile), which is not in the bundle"
        ) from None
    payload = _member_bytes(archive, data_member, name)
    return decode_metaimage_data(header, payload, source, repr(data_member)), header


def read_grid_bundle(
    source: PathLike | bytes | IO[bytes], include: Iterable[str] | None = None
) -> dict[str, tuple[np.ndarray, MetaImageHeader]]:
    """Read the volumes of a grid-data zip bundle (a path, the zip's bytes, or a binary file object).

    Returns ``{volume name: (array, header)}`` with arrays indexed [x, y, z] in DimSize order ([AP, DV, LR]
    for Allen grids) and the stored values (-1 = no data). ``include`` picks volumes by name (e.g.
    ``["energy", "density"]``), returned in that order; by default every volume, in zip order.

    Raises FormatError naming the bundle (and the member) if the bundle is not a zip, a requested volume is
    absent, a header names a data file that is not in the zip, or a data file has the wrong size.
    """
    name = _display_name(source)
    with _open_zip(source, name) as archive:
        members = _volume_members(archive, name)
        if include is None:
            wanted = list(members)
        else:
            wanted = [include] if isinstance(include, str) else list(include)
            for volume in wanted:
                if volume not in members:
                    have = ", ".join(members) or "none"
                    raise FormatError(
                        f"{name}: the bundle has no volume {volume!r} (no {volume}.mhd; volumes present: {have})"
                    )
        return {volume: _read_volume(archive, members[volume], name) for volume in wanted}


def _check_name(volume: str) -> None:
    if not volume or volume in (".", "..") or any(c in volume for c in "/\\\0"):
        raise ValueError(f"grid bundle: {volume!r} is not a valid volume name (a plain file name is needed)")


def _add(archive: zipfile.ZipFile, member: str, payload: bytes) -> None:
    info = zipfile.ZipInfo(member, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, payload)


def grid_bundle_bytes(
    volumes: Mapping[str, Any],
    spacing: float | Sequence[float] = (200, 200, 200),
    *,
    offset: float | Sequence[float] = 0.0,
) -> bytes:
    """The bytes of a grid-data zip holding ``{name}.mhd`` + ``{name}.raw`` for each array in ``volumes``.

    Arrays are indexed [x, y, z] (Allen grids: [AP, DV, LR]); ``spacing`` and ``offset`` are in microns.
    Each volume keeps its dtype (float32 for expression grids). Deterministic: same input, same bytes.
    """
    if not volumes:
        raise ValueError("grid bundle: no volumes to write")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for volume, data in volumes.items():
            _check_name(volume)
            header, payload = encode_metaimage(data, spacing, offset=offset, data_file=f"{volume}.raw")
            _add(archive, f"{volume}.mhd", header)
            _add(archive, f"{volume}.raw", payload)
    return buffer.getvalue()


def write_grid_bundle(
    path: PathLike,
    volumes: Mapping[str, Any],
    spacing: float | Sequence[float] = (200, 200, 200),
    *,
    offset: float | Sequence[float] = 0.0,
) -> None:
    """Write ``volumes`` (name -> array indexed [x, y, z]) as an Allen-style grid-data zip, atomically.

    See :func:`grid_bundle_bytes`; ``spacing`` (default 200 um, the ISH grid) and ``offset`` are in microns.
    """
    payload = grid_bundle_bytes(volumes, spacing, offset=offset)
    with atomic_write(path) as fh:
        fh.write(payload)
