"""The hostile files of issue 17, one test each: decompression bombs, lying sizes, unbounded skips, FIFOs and the
malformed inputs that used to escape as OverflowError, IndexError, ValueError, RuntimeError or LZMAError.

Each must raise brainmap's FormatError naming the file (and the field), quickly and without allocating what the
file claims. Memory is measured with tracemalloc (numpy's and the decompressors' buffers are traced); hangs are
caught by running the reader in a thread with a generous bound (a hang guard, not a timing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from brainmap.errors import FormatError
from brainmap.io import read_grid_bundle, read_metaimage, read_nrrd, read_nrrd_header, write_metaimage
from brainmap.specimen.folder import read_dataset

_spec = importlib.util.spec_from_file_location("brainmap_tests_hostile_files", Path(__file__).with_name(
    "hostile_files.py"))
hostile = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules.setdefault("brainmap_tests_hostile_files", hostile)
_spec.loader.exec_module(hostile)  # type: ignore[union-attr]

MiB = 1 << 20
HANG_GUARD_S = 60.0  # far above the milliseconds these take; only a hang reaches it


def peak_bytes(call: Callable[[], Any]) -> tuple[BaseException | None, int]:
    """Run ``call``; return (the exception it raised, the peak traced allocation in bytes)."""
    tracemalloc.start()
    try:
        call()
        error = None
    except BaseException as exc:  # noqa: BLE001 - returned to the test, which checks its type
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak


def format_error(call: Callable[[], Any], *fragments: str, max_bytes: int = 64 * MiB) -> str:
    """``call`` raises FormatError holding every fragment, with a traced peak under ``max_bytes``."""
    error, peak = peak_bytes(call)
    assert isinstance(error, FormatError), f"expected FormatError, got {type(error).__name__}: {error}"
    message = str(error)
    for fragment in fragments:
        assert fragment in message, message
    assert peak < max_bytes, f"peak {peak / MiB:.0f} MiB reading a hostile file: {message}"
    return message


def finishes(call: Callable[[], Any], unblock: Callable[[], None] | None = None) -> BaseException | None:
    """Run ``call`` in a thread; fail if it has not returned within the hang guard. Returns what it raised."""
    outcome: dict[str, BaseException | None] = {"error": None}

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    if thread.is_alive():
        if unblock is not None:
            unblock()
        pytest.fail(f"the reader hung for {HANG_GUARD_S:.0f} s")
    return outcome["error"]


# -- decompression bombs ---------------------------------------------------------------------------------------
def test_bzip2_nrrd_bomb_with_a_small_header(tmp_path):
    """785 bytes of bzip2 (1 GiB of zeros) behind a header saying 16 voxels: used ~2 GB, now stops at 17 bytes."""
    path = tmp_path / "bomb.nrrd"
    fields = {"type": "unsigned char", "dimension": "1", "sizes": "16", "encoding": "bzip2"}
    path.write_bytes(hostile.nrrd_bytes(fields, hostile.BZIP2_1GIB_OF_ZEROS))
    message = format_error(lambda: read_nrrd(path), str(path), "more bytes than the header says", "expected 16")
    assert "too large" not in message  # the old, misleading answer under a memory cap


def test_gzip_nrrd_bomb(tmp_path):
    path = tmp_path / "bomb.nrrd"
    fields = {"type": "unsigned char", "dimension": "1", "sizes": "1000", "encoding": "gzip"}
    path.write_bytes(hostile.nrrd_bytes(fields, hostile.deflate_bomb(1 << 30, 31)))
    format_error(lambda: read_nrrd(path), str(path), "more bytes than the header says", "expected 1,000")


def test_nrrd_header_claiming_more_than_its_gzip_can_hold(tmp_path):
    """A lying header asking for 1 TB allocates nothing: the output grows only with the data."""
    path = tmp_path / "liar.nrrd"
    fields = {"type": "float", "dimension": "3", "sizes": "4000 4000 4000", "endian": "little", "encoding": "gzip"}
    path.write_bytes(hostile.nrrd_bytes(fields, hostile.deflate_bomb(4 * MiB, 31)))
    format_error(lambda: read_nrrd(path), str(path), "gzip data")


def test_grid_zip_bomb(tmp_path):
    """A 1 MB zip whose energy.raw expands to 1 GiB behind a 16^3 header: refused from the zip's own record."""
    header = b"NDims = 3\nDimSize = 16 16 16\nElementType = MET_FLOAT\nElementDataFile = energy.raw\n"
    path = tmp_path / "bomb.zip"
    path.write_bytes(_zip_with_deflate_member(header, hostile.deflate_bomb(1 << 30)[2:-4], 1 << 30))
    assert path.stat().st_size < 2 * MiB
    format_error(lambda: read_grid_bundle(path), str(path), "energy.raw", "longer than its header allows")


def test_grid_zip_bomb_whose_record_lies(tmp_path):
    """The zip's record says 16 KiB (as the header does), the data expand to 1 GiB: stops after 16 KiB + 1."""
    header = b"NDims = 3\nDimSize = 16 16 16\nElementType = MET_FLOAT\nElementDataFile = energy.raw\n"
    path = tmp_path / "bomb.zip"
    path.write_bytes(_zip_with_deflate_member(header, hostile.deflate_bomb(1 << 30)[2:-4], 16 * 16 * 16 * 4))
    format_error(lambda: read_grid_bundle(path), str(path), "energy.raw")


def test_grid_zip_bomb_matching_a_huge_header(tmp_path):
    """The same bomb behind a header that agrees with it (1024^3 bytes x 4): over the bundle's volume limit."""
    header = b"NDims = 3\nDimSize = 1024 1024 256\nElementType = MET_FLOAT\nElementDataFile = energy.raw\n"
    path = tmp_path / "bomb.zip"
    path.write_bytes(_zip_with_deflate_member(header, hostile.deflate_bomb(1 << 30)[2:-4], 1 << 30))
    format_error(lambda: read_grid_bundle(path), str(path), "energy.mhd", "more than the")


def test_grid_zip_with_a_100000_cubed_header(tmp_path):
    header = b"NDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_FLOAT\nElementDataFile = energy.raw\n"
    bundle = hostile.zip_bytes({"energy.mhd": header, "energy.raw": bytes(MiB)})
    format_error(lambda: read_grid_bundle(bundle), "DimSize")


def test_zlib_mha_with_a_100000_cubed_header(tmp_path):
    """Raised an uncaught MemoryError (or used ~2 GB)."""
    path = tmp_path / "huge.mha"
    fields = {"NDims": "3", "DimSize": "100000 100000 100000", "ElementType": "MET_FLOAT", "CompressedData": "True"}
    path.write_bytes(hostile.mha_bytes(fields, hostile.deflate_bomb(64 * MiB)))
    format_error(lambda: read_metaimage(path), str(path), "DimSize")


def test_zlib_mha_header_larger_than_its_data(tmp_path):
    """DimSize 1024 x 1024 x 512 floats (2 GiB) over 64 KB of zlib: fails after reading what is there."""
    path = tmp_path / "liar.mha"
    fields = {"NDims": "3", "DimSize": "1024 1024 512", "ElementType": "MET_FLOAT", "CompressedData": "True"}
    path.write_bytes(hostile.mha_bytes(fields, hostile.deflate_bomb(64 * MiB)))
    format_error(lambda: read_metaimage(path), str(path), "compressed data", max_bytes=160 * MiB)


def _zip_with_deflate_member(header: bytes, raw_deflate: bytes, size: int) -> bytes:
    """A zip of ``energy.mhd`` (``header``) and ``energy.raw`` given as raw deflate data claiming ``size`` bytes
    (its CRC is wrong; a reader must refuse it before it gets there)."""
    import struct
    import zlib

    out = bytearray()
    central = bytearray()
    entries = [("energy.mhd", 0, header, len(header), zlib.crc32(header)), ("energy.raw", 8, raw_deflate, size, 0)]
    for name, method, payload, file_size, crc in entries:
        offset = len(out)
        encoded = name.encode()
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(payload), file_size,
                           len(encoded), 0) + encoded + payload
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(payload),
                               file_size, len(encoded), 0, 0, 0, 0, 0o644 << 16, offset) + encoded
    out += central + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 2, 2, len(central), len(out), 0)
    return bytes(out)


# -- skips and FIFOs ---------------------------------------------------------------------------------------------
def test_huge_line_skip_is_bounded(tmp_path):
    """'line skip: 10^12' looped readline (10^7 already took 6 s)."""
    path = tmp_path / "skip.nrrd"
    fields = {"type": "unsigned char", "dimension": "1", "sizes": "4", "encoding": "raw",
              "line skip": str(10**12)}
    path.write_bytes(hostile.nrrd_bytes(fields, b"abcd"))
    error = finishes(lambda: read_nrrd(path))
    assert isinstance(error, FormatError) and "line skip" in str(error) and str(path) in str(error), error


def test_huge_byte_skip_on_gzip_data_is_bounded(tmp_path):
    path = tmp_path / "skip.nrrd"
    fields = {"type": "unsigned char", "dimension": "1", "sizes": "4", "encoding": "gzip", "byte skip": str(10**15)}
    path.write_bytes(hostile.nrrd_bytes(fields, hostile.deflate_bomb(2 * MiB, 31)))
    format_error(lambda: read_nrrd(path), str(path))


def _fifo(path: Path) -> Callable[[], None]:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)

    def unblock() -> None:  # let a reader stuck in open() go
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)

    return unblock


def test_metaimage_whose_data_file_is_a_fifo(tmp_path):
    """Blocked forever."""
    header = tmp_path / "grid.mhd"
    header.write_text("NDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = grid.raw\n")
    unblock = _fifo(tmp_path / "grid.raw")
    error = finishes(lambda: read_metaimage(header), unblock)
    assert isinstance(error, FormatError) and "FIFO" in str(error) and str(header) in str(error), error


@pytest.mark.parametrize("reader", [read_nrrd, read_nrrd_header, read_metaimage, read_grid_bundle])
def test_readers_refuse_a_fifo(tmp_path, reader):
    unblock = _fifo(tmp_path / "pipe")
    error = finishes(lambda: reader(tmp_path / "pipe"), unblock)
    assert isinstance(error, FormatError) and "FIFO" in str(error), error


def test_nrrd_detached_data_file_is_a_fifo(tmp_path):
    path = tmp_path / "volume.nhdr"
    fields = {"type": "unsigned char", "dimension": "1", "sizes": "4", "encoding": "raw", "data file": "volume.raw"}
    path.write_bytes(hostile.nrrd_bytes(fields, b""))
    unblock = _fifo(tmp_path / "volume.raw")
    error = finishes(lambda: read_nrrd(path), unblock)
    assert isinstance(error, FormatError) and "FIFO" in str(error), error


def test_dataset_json_that_is_a_fifo(tmp_path):
    unblock = _fifo(tmp_path / "dataset.json")
    error = finishes(lambda: read_dataset(tmp_path), unblock)
    assert isinstance(error, FormatError) and "FIFO" in str(error), error


# -- malformed inputs that escaped as other exception types --------------------------------------------------------
def test_dimsize_of_2_to_the_63(tmp_path):
    """OverflowError in numpy's prod."""
    path = tmp_path / "big.mha"
    path.write_bytes(hostile.mha_bytes({"NDims": "3", "DimSize": f"{2**63} 1 1", "ElementType": "MET_UCHAR"}, b"x"))
    format_error(lambda: read_metaimage(path), str(path), "DimSize")


def test_dimsize_overflowing_int64_in_product(tmp_path):
    """Sizes whose product wraps int64 (negative dimensions / cannot reshape)."""
    path = tmp_path / "wrap.mha"
    path.write_bytes(hostile.mha_bytes({"NDims": "2", "DimSize": f"{2**62} 4", "ElementType": "MET_FLOAT"}, b"x"))
    format_error(lambda: read_metaimage(path), str(path), "DimSize")


def test_nrrd_sizes_of_2_to_the_63(tmp_path):
    path = tmp_path / "big.nrrd"
    path.write_bytes(hostile.nrrd_bytes({"type": "uchar", "dimension": "2", "sizes": f"{2**63} 2",
                                         "encoding": "raw"}, b"x"))
    format_error(lambda: read_nrrd(path), str(path), "sizes")


def test_nrrd_empty_space_origin(tmp_path):
    """IndexError inside pynrrd."""
    path = tmp_path / "origin.nrrd"
    fields = {"type": "uchar", "dimension": "1", "sizes": "2", "encoding": "raw", "space dimension": "3",
              "space origin": ""}
    path.write_bytes(hostile.nrrd_bytes(fields, b"ab"))
    format_error(lambda: read_nrrd(path), str(path), "NRRD header")


def test_embedded_nul_in_element_data_file(tmp_path):
    """ValueError: embedded null byte."""
    path = tmp_path / "nul.mhd"
    path.write_bytes(b"NDims = 1\nDimSize = 2\nElementType = MET_UCHAR\nElementDataFile = a\x00b.raw\n")
    format_error(lambda: read_metaimage(path), str(path), "ElementDataFile", "NUL")


def test_header_size_beyond_the_data(tmp_path):
    """Offset overflow: HeaderSize of 2^63 on compressed data."""
    path = tmp_path / "offset.mha"
    fields = {"NDims": "1", "DimSize": "2", "ElementType": "MET_UCHAR", "CompressedData": "True",
              "HeaderSize": str(2**63)}
    path.write_bytes(hostile.mha_bytes(fields, b"\x78\x9c"))
    format_error(lambda: read_metaimage(path), str(path), "HeaderSize")


def test_encrypted_zip_member():
    """RuntimeError: File is encrypted, password required."""
    bundle = hostile.mark_encrypted(hostile.zip_bytes({
        "energy.mhd": b"NDims = 1\nDimSize = 2\nElementType = MET_UCHAR\nElementDataFile = energy.raw\n",
        "energy.raw": b"ab"}))
    format_error(lambda: read_grid_bundle(bundle), "energy.mhd", "encrypted")


def test_corrupt_lzma_zip_member():
    """LZMAError."""
    bundle = bytearray(hostile.zip_bytes({
        "energy.mhd": b"NDims = 1\nDimSize = 4096\nElementType = MET_UCHAR\nElementDataFile = energy.raw\n",
        "energy.raw": bytes(range(256)) * 16}, zipfile.ZIP_LZMA))
    at = bundle.find(b"energy.raw") + len("energy.raw") + 20  # inside the member's LZMA data
    bundle[at : at + 16] = b"\xff" * 16
    format_error(lambda: read_grid_bundle(bytes(bundle)), "energy.raw")


def test_dataset_json_nested_too_deeply(tmp_path):
    (tmp_path / "dataset.json").write_text("[" * 200_000 + "]" * 200_000)
    format_error(lambda: read_dataset(tmp_path), "dataset.json", "nested too deeply")


def test_dataset_json_integer_too_long(tmp_path):
    (tmp_path / "dataset.json").write_text('{"schema_version": ' + "9" * 5000 + "}")
    format_error(lambda: read_dataset(tmp_path), "dataset.json", "not valid JSON")


def test_dataset_json_id_beyond_64_bits(tmp_path):
    doc = {"schema_version": 1, "id": 2**63, "plane": "coronal", "product": "ISH", "section_thickness_um": 25,
           "sampling_um": 200, "pixel_size_um": 1.0, "images": []}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    format_error(lambda: read_dataset(tmp_path), "dataset.json", "id", "64-bit")


def test_a_real_volume_still_reads(tmp_path):
    """The limits do not refuse good files: a 2 MiB gzip MetaImage and NRRD round trip."""
    data = np.arange(2 * MiB // 4, dtype=np.float32).reshape(128, 64, 64)
    write_metaimage(tmp_path / "ok.mha", data, 200, compress=True)
    np.testing.assert_array_equal(read_metaimage(tmp_path / "ok.mha")[0], data)
