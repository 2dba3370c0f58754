"""Hostile files for the reader tests: decompression bombs, lying headers, mutations of real files.

Shared by ``test_hostile_files.py`` (one test per case of issue 17) and ``test_fuzz_readers.py`` (the
property-based suite). Nothing here is product code.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

# bzip2 of 1 GiB of zero bytes: 785 bytes (bz2.compress(bytes(1 << 30)), made once; compressing takes 10 s).
BZIP2_1GIB_OF_ZEROS = bytes.fromhex(
    "425a68393141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a80973141592653590e09e2df015f8e40"
    "00c0000008200030804d4642a025a90a80973141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a8097"
    "3141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a80973141592653590e09e2df015f8e4000c00000"
    "08200030804d4642a025a90a80973141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a809731415926"
    "53590e09e2df015f8e4000c0000008200030804d4642a025a90a80973141592653590e09e2df015f8e4000c0000008200030"
    "804d4642a025a90a80973141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a80973141592653590e09"
    "e2df015f8e4000c0000008200030804d4642a025a90a80973141592653590e09e2df015f8e4000c0000008200030804d4642"
    "a025a90a80973141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a80973141592653590e09e2df015f"
    "8e4000c0000008200030804d4642a025a90a80973141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a"
    "80973141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a80973141592653590e09e2df015f8e4000c0"
    "000008200030804d4642a025a90a80973141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a80973141"
    "592653590e09e2df015f8e4000c0000008200030804d4642a025a90a80973141592653590e09e2df015f8e4000c000000820"
    "0030804d4642a025a90a80973141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a8097314159265359"
    "0e09e2df015f8e4000c0000008200030804d4642a025a90a80973141592653590e09e2df015f8e4000c0000008200030804d"
    "4642a025a90a80973141592653590e09e2df015f8e4000c0000008200030804d4642a025a90a8097314159265359487c5fc9"
    "008a52c800c00000040008200030cc0529a69122436144890f177245385090f688e402"
)


def nrrd_bytes(fields: dict[str, str], data: bytes, magic: str = "NRRD0004") -> bytes:
    """A NRRD file: ``magic``, one ``field: value`` line per item, a blank line, ``data``."""
    header = magic + "\n" + "".join(f"{k}: {v}\n" for k, v in fields.items()) + "\n"
    return header.encode("latin-1") + data


def mha_bytes(fields: dict[str, str], data: bytes) -> bytes:
    """A single-file MetaImage: ``Key = Value`` lines ending with ``ElementDataFile = LOCAL``, then ``data``."""
    lines = "".join(f"{k} = {v}\n" for k, v in fields.items())
    return (lines + "ElementDataFile = LOCAL\n").encode("latin-1") + data


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def mark_encrypted(archive: bytes) -> bytes:
    """Set the 'encrypted' flag of every member (local headers and central directory), as a password-protected
    zip has it."""
    data = bytearray(archive)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at != -1:
            (flags,) = struct.unpack_from("<H", data, at + flag_offset)
            struct.pack_into("<H", data, at + flag_offset, flags | 1)
            at = data.find(signature, at + 4)
    return bytes(data)


def deflate_bomb(nbytes: int, wrapper: int = zlib.MAX_WBITS) -> bytes:
    """zlib data (gzip with ``wrapper=31``) expanding to ``nbytes`` (a multiple of 1 MiB, at least 2 MiB) zero
    bytes, about nbytes / 1000 bytes long.

    Made fast: after a full flush deflate forgets its history, so each further 1 MiB of zeros compresses to the
    same block, which is repeated rather than recompressed. The check sum in the trailer covers only the first
    2 MiB: a reader that decompressed it all would then call it corrupt; a bounded reader stops long before."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wrapper)
    mib = bytes(1 << 20)
    first = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + block * (nbytes // (1 << 20) - 1) + compressor.flush()
