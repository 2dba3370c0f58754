"""NRRD reading and writing: byte-exact Allen files, every dtype, every kind of broken file."""

from __future__ import annotations

import bz2
import gzip
import hashlib
from importlib import resources
from pathlib import Path

import nrrd
import numpy as np
import pytest

import brainmap.io.nrrd as nrrd_module
from brainmap.errors import FormatError
from brainmap.io import read_nrrd, read_nrrd_header, write_nrrd
from brainmap.io.nrrd_stream import NrrdSlabs

CCF = Path(str(resources.files("brainmap") / "data" / "ccf2017"))
ALLEN_SHA256 = {
    25: "c620cbcc562183e4dcd40250d440130501781f74b41de35b1c1bdabace290c42",
    50: "84e7cecea1b03af16e923c3639602b8324929f833425ba03582bf56f962ea0d4",
    100: "451e6a82f531d3db4b58056d024d3e2311703c2adc15cefa75e0268e7f0e69a4",
}
ALLEN_SHAPE = {25: (528, 320, 456), 50: (264, 160, 228), 100: (132, 80, 114)}
ALLEN_HEADER_25 = (
    b"NRRD0004\n# Complete NRRD file format specification at:\n# http://teem.sourceforge.net/nrrd/format.html\n"
    b"type: unsigned int\ndimension: 3\nspace: left-posterior-superior\nsizes: 528 320 456\n"
    b"space directions: (25,0,0) (0,25,0) (0,0,25)\nkinds: domain domain domain\nendian: little\n"
    b"encoding: gzip\nspace origin: (0,0,0)\n\n"
)
DTYPES = ["i1", "u1", "<i2", ">i2", "<u2", "<i4", ">u4", "<i8", "<u8", "<f4", ">f4", "<f8", ">f8"]
TEEM_TYPE = {"i1": "signed char", "u1": "unsigned char", "i2": "short", "u2": "unsigned short", "i4": "int",
             "u4": "unsigned int", "i8": "long long int", "u8": "unsigned long long int", "f4": "float",
             "f8": "double"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def header_text(path: Path) -> str:
    raw = path.read_bytes()
    return raw[: raw.index(b"\n\n") + 1].decode("ascii")


def sample(dtype: str, shape=(5, 4, 3)) -> np.ndarray:
    """Values spanning the dtype's range, in a distinct order along every axis."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "f":
        values = np.linspace(-1e3, 1e3, n) * np.pi
        values[0], values[1] = np.finfo(dt).max, np.finfo(dt).tiny
    else:
        info = np.iinfo(dt)
        steps = [int(info.min) + (int(info.max) - int(info.min)) * k // (n - 1) for k in range(n)]
        values = np.array(steps, dtype=dt.newbyteorder("="))
        assert values[0] == info.min and values[-1] == info.max
    return values.astype(dt).reshape(shape)


# ------------------------------------------------------------------------------------------- the Allen files


@pytest.fixture(scope="module")
def annotation_25() -> tuple[np.ndarray, dict]:
    return read_nrrd(CCF / "annotation_25.nrrd")


def test_bundled_files_are_the_allen_files():
    for resolution, digest in ALLEN_SHA256.items():
        assert sha256(CCF / f"annotation_{resolution}.nrrd") == digest


def test_read_allen_annotation(annotation_25):
    data, header = annotation_25
    assert data.shape == (528, 320, 456)  # (AP, DV, LR)
    assert data.dtype == np.uint32 and data.flags.writeable
    assert header["type"] == "unsigned int" and header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(header["space directions"], np.diag([25.0, 25.0, 25.0]))
    assert 0 in data and data.max() > 1000  # outside the brain is 0; CCF ids reach the hundreds of millions
    # The midline is at LR = 5700 um: the annotation is (nearly) mirror-symmetric about it.
    left, right = data[:, :, :228], data[:, :, 228:][:, :, ::-1]
    assert (left == right).mean() > 0.95
    # The 100 um file is the 25 um one subsampled (same axis order) and matches pynrrd's own reader.
    data_100, _ = read_nrrd(CCF / "annotation_100.nrrd")
    np.testing.assert_array_equal(data_100, data[::4, ::4, ::4])
    reference, _ = nrrd.read(str(CCF / "annotation_100.nrrd"))
    np.testing.assert_array_equal(data_100, reference)


@pytest.mark.parametrize("resolution", [100, 50, 25])
def test_writing_allen_annotation_back_is_byte_exact(resolution, tmp_path, annotation_25):
    source = CCF / f"annotation_{resolution}.nrrd"
    data, header = annotation_25 if resolution == 25 else read_nrrd(source)
    assert data.shape == ALLEN_SHAPE[resolution]
    out = tmp_path / f"annotation_{resolution}.nrrd"
    write_nrrd(out, data, header)
    assert sha256(out) == ALLEN_SHA256[resolution]
    assert out.read_bytes() == source.read_bytes()
    if resolution == 25:
        assert out.read_bytes()[: len(ALLEN_HEADER_25) + 10] == ALLEN_HEADER_25 + bytes.fromhex("1f8b0800000000000003")


def test_default_header_from_spacing_is_allens(tmp_path):
    data, _ = read_nrrd(CCF / "annotation_100.nrrd")
    out = tmp_path / "a.nrrd"
    write_nrrd(out, data, spacing_um=100)
    assert out.read_bytes() == (CCF / "annotation_100.nrrd").read_bytes()


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("encoding", ["gzip", "raw"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(dtype, encoding, tmp_path):
    data = sample(dtype)
    out = tmp_path / "v.nrrd"
    write_nrrd(out, data, spacing_um=(10, 20, 30.5), encoding=encoding)
    back, header = read_nrrd(out)
    assert back.shape == (5, 4, 3)
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back, data)
    text = header_text(out)
    assert f"type: {TEEM_TYPE[np.dtype(dtype).str[1:]]}\n" in text
    assert f"encoding: {encoding}\n" in text
    assert "space directions: (10,0,0) (0,20,0) (0,0,30.5)\n" in text
    # teem writes 'endian' only for multi-byte types, and always little here (big-endian input is converted).
    assert ("endian: little\n" in text) == (np.dtype(dtype).itemsize > 1)
    assert "endian: big" not in text
    # pynrrd (an independent reader) agrees.
    reference, _ = nrrd.read(str(out))
    np.testing.assert_array_equal(reference, data)


def test_file_layout_is_first_axis_fastest(tmp_path):
    data = np.arange(24, dtype="<u2").reshape(2, 3, 4)
    out = tmp_path / "v.nrrd"
    write_nrrd(out, data, spacing_um=1, encoding="raw")
    payload = np.frombuffer(out.read_bytes()[-48:], dtype="<u2")
    np.testing.assert_array_equal(payload[:4], [data[0, 0, 0], data[1, 0, 0], data[0, 1, 0], data[1, 1, 0]])
    np.testing.assert_array_equal(payload, data.ravel(order="F"))


def test_float64_projection_grid_is_type_double(tmp_path):
    grid = np.random.default_rng(1).random((13, 8, 11))
    out = tmp_path / "density.nrrd"
    write_nrrd(out, grid, spacing_um=100)
    assert "type: double\n" in header_text(out)
    np.testing.assert_array_equal(read_nrrd(out)[0], grid)


def test_bool_is_written_as_unsigned_char(tmp_path):
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 2, 0] = True
    out = tmp_path / "mask.nrrd"
    write_nrrd(out, mask, spacing_um=10)
    back, header = read_nrrd(out)
    assert header["type"] == "unsigned char" and back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask)


def test_header_passed_back_keeps_space_fields_and_key_values(tmp_path):
    data = sample("<f4")
    first = tmp_path / "first.nrrd"
    header = {
        "space": "right-anterior-superior",
        "space directions": np.array([[0.0, 0.0, 10.0], [0.0, 10.0, 0.0], [-10.0, 0.0, 0.0]]),
        "space origin": np.array([-5.5, 0.0, 1e-3]),
        "kinds": ["domain", "domain", "domain"],
        "space units": ["um", "um", "um"],
        "type": "this is ignored",
        "encoding": "raw",  # ignored too: the encoding argument decides
        "allen version": "ccf 2017",  # not a NRRD field: written as a key/value pair
    }
    write_nrrd(first, data, header)
    back, read_header = read_nrrd(first)
    np.testing.assert_array_equal(back, data)
    text = header_text(first)
    assert "type: float\n" in text and "encoding: gzip\n" in text
    assert "space: right-anterior-superior\n" in text
    assert "space directions: (0,0,10) (0,10,0) (-10,0,0)\n" in text
    assert "space origin: (-5.5,0,0.001)\n" in text
    assert 'space units: "um" "um" "um"\n' in text
    assert "allen version:=ccf 2017\n" in text
    # Passing the read header back reproduces the file exactly.
    second = tmp_path / "second.nrrd"
    write_nrrd(second, back, read_header)
    assert second.read_bytes() == first.read_bytes()
    # spacing_um and origin_um replace the header's values.
    third = tmp_path / "third.nrrd"
    write_nrrd(third, back, read_header, spacing_um=(1, 2, 3), origin_um=(7, 8, 9))
    text = header_text(third)
    assert "space directions: (1,0,0) (0,2,0) (0,0,3)\n" in text and "space origin: (7,8,9)\n" in text


def test_numbers_are_formatted_like_teem(tmp_path):
    out = tmp_path / "v.nrrd"
    write_nrrd(out, sample("u1"), spacing_um=(0.1, 25.0, 2.5), origin_um=(-12.25, 0, 3))
    text = header_text(out)
    assert "space directions: (0.10000000000000001,0,0) (0,25,0) (0,0,2.5)\n" in text
    assert "space origin: (-12.25,0,3)\n" in text


def test_two_dimensional_data_gets_spacings(tmp_path):
    image = np.arange(12, dtype=np.uint16).reshape(4, 3)
    out = tmp_path / "section.nrrd"
    write_nrrd(out, image, spacing_um=(0.35, 0.35))
    text = header_text(out)
    assert "dimension: 2\n" in text and "spacings: 0.34999999999999998 0.34999999999999998\n" in text
    assert "space" not in text.replace("spacings", "")
    back, header = read_nrrd(out)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(header["spacings"], [0.35, 0.35])


def test_detached_header_and_bzip2_and_byte_skip(tmp_path):
    data = sample("<i2")
    (tmp_path / "v.raw.gz").write_bytes(gzip.compress(data.tobytes(order="F")))
    (tmp_path / "v.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nendian: little\nencoding: gzip\ndata file: v.raw.gz\n"
    )
    np.testing.assert_array_equal(read_nrrd(tmp_path / "v.nhdr")[0], data)
    (tmp_path / "skip.raw").write_bytes(b"JUNKJUNK" + data.astype(">i2").tobytes(order="F"))
    (tmp_path / "skip.nhdr").write_text(
        "NRRD0004\ntype: int16\ndimension: 3\nsizes: 5 4 3\nendian: big\nencoding: raw\nbyte skip: 8\n"
        "data file: skip.raw\n"
    )
    np.testing.assert_array_equal(read_nrrd(tmp_path / "skip.nhdr")[0], data)
    (tmp_path / "skip.nhdr").write_text((tmp_path / "skip.nhdr").read_text().replace("byte skip: 8", "byte skip: -1"))
    np.testing.assert_array_equal(read_nrrd(tmp_path / "skip.nhdr")[0], data)  # -1: the data end the file
    (tmp_path / "v.nrrd").write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nendian: little\nencoding: bzip2\n\n"
        + bz2.compress(data.tobytes(order="F"))
    )
    np.testing.assert_array_equal(read_nrrd(tmp_path / "v.nrrd")[0], data)
    (tmp_path / "t.nrrd").write_bytes(
        b"NRRD0004\ntype: float\ndimension: 2\nsizes: 3 2\nencoding: ascii\n\n1 2 3\n4 5.5 -6\n"
    )
    np.testing.assert_array_equal(read_nrrd(tmp_path / "t.nrrd")[0], [[1, 4], [2, 5.5], [3, -6]])


def test_read_header_only():
    header = read_nrrd_header(CCF / "annotation_25.nrrd")
    assert list(header["sizes"]) == [528, 320, 456] and header["encoding"] == "gzip"


# ------------------------------------------------------------------------------------------- broken files


@pytest.fixture()
def allen_100() -> bytes:
    return (CCF / "annotation_100.nrrd").read_bytes()


def data_start(raw: bytes) -> int:
    return raw.index(b"\n\n") + 2


def _read_by_slabs(path: Path) -> None:
    """Every slab of the streaming reader (issue 18): it must refuse what read_nrrd refuses, with the same words."""
    for _ in NrrdSlabs(path).slabs(1):
        pass


def assert_format_error(path: Path, *fragments: str) -> FormatError:
    for read in (read_nrrd, _read_by_slabs):
        with pytest.raises(FormatError) as caught:
            read(path)
        message = str(caught.value)
        assert str(path) in message
        for fragment in fragments:
            assert fragment in message, message
        assert isinstance(caught.value, ValueError)
    return caught.value


def test_truncated_gzip(tmp_path, allen_100):
    bad = tmp_path / "annotation.nrrd"
    bad.write_bytes(allen_100[: data_start(allen_100) + 1024])
    assert_format_error(bad, "gzip data is truncated", "expected 4,815,360 bytes after decompression")


def test_gzip_missing_only_its_crc_trailer(tmp_path, allen_100):
    bad = tmp_path / "annotation.nrrd"
    bad.write_bytes(allen_100[:-4])  # pynrrd reads this without complaint
    assert_format_error(bad, "truncated", "CRC")


def test_corrupt_gzip(tmp_path, allen_100):
    start = data_start(allen_100)
    bad = tmp_path / "annotation.nrrd"
    bad.write_bytes(allen_100[: start + 5000] + bytes(200) + allen_100[start + 5200 :])
    assert_format_error(bad, "gzip data is corrupt")


def test_header_sizes_bigger_than_gzip_data(tmp_path, allen_100):
    bad = tmp_path / "annotation.nrrd"
    bad.write_bytes(allen_100.replace(b"sizes: 132 80 114", b"sizes: 132 80 115"))
    assert_format_error(bad, "fewer bytes than the header says", "4,857,600", "4,815,360")


def test_header_sizes_smaller_than_gzip_data(tmp_path, allen_100):
    bad = tmp_path / "annotation.nrrd"
    bad.write_bytes(allen_100.replace(b"sizes: 132 80 114", b"sizes: 132 80 113"))
    assert_format_error(bad, "more bytes than the header says", "expected 4,773,120", "got 4,815,360")


def test_trailing_garbage_after_gzip(tmp_path, allen_100):
    bad = tmp_path / "annotation.nrrd"
    bad.write_bytes(allen_100 + b"extra bytes")
    assert_format_error(bad, "unexpected bytes")


@pytest.fixture()
def raw_file(tmp_path) -> Path:
    path = tmp_path / "raw.nrrd"
    write_nrrd(path, sample("<i4"), spacing_um=10, encoding="raw")
    return path


def test_truncated_raw(raw_file):
    raw_file.write_bytes(raw_file.read_bytes()[:-5])
    assert_format_error(raw_file, "raw data is truncated", "expected 240 bytes, got 235")


def test_raw_longer_than_header_says(raw_file):
    raw_file.write_bytes(raw_file.read_bytes() + b"\0" * 8)
    assert_format_error(raw_file, "longer than the header says", "240", "248")


def test_raw_header_sizes_bigger_than_data(raw_file):
    raw_file.write_bytes(raw_file.read_bytes().replace(b"sizes: 5 4 3", b"sizes: 5000 4000 3000"))
    assert_format_error(raw_file, "truncated", "240,000,000,000")


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        (b"type: int", b"type: quaternion", "unknown NRRD type 'quaternion'"),
        (b"type: int", b"type: block", "block"),
        (b"encoding: raw", b"encoding: zstd", "unknown NRRD encoding 'zstd'"),
        (b"dimension: 3", b"dimension: 2", "'dimension: 2' but 'sizes:' lists 3 sizes"),
        (b"endian: little\n", b"", "needs 'endian: little' or 'endian: big'"),
        (b"endian: little", b"endian: middle", "endian: middle"),
        (b"sizes: 5 4 3", b"sizes: 5 four 3", "bad NRRD header"),
        (b"sizes: 5 4 3", b"sizes: 5 0 3", "must be positive"),
        (b"type: int\n", b"", "lacks the required field 'type:'"),
        (b"kinds: domain domain domain\n", b"kinds domain domain domain\n", "bad NRRD header"),
        (b"NRRD0004", b"NRRD0009", "Unsupported NRRD file version"),
    ],
)
def test_bad_header(raw_file, old, new, fragment):
    content = raw_file.read_bytes()
    assert old in content
    raw_file.write_bytes(content.replace(old, new, 1))
    assert_format_error(raw_file, fragment)
    if fragment.startswith(("unknown", "'dimension", "lacks", "block")):
        with pytest.raises(FormatError, match="raw.nrrd"):
            read_nrrd_header(raw_file)


@pytest.mark.parametrize("content", [b"", b"GIF89a\x00\x01garbage", bytes(range(256)) * 4, b"NRRD"])
def test_not_a_nrrd(tmp_path, content):
    bad = tmp_path / "garbage.nrrd"
    bad.write_bytes(content)
    assert_format_error(bad)


def test_missing_detached_data_file(tmp_path):
    header = tmp_path / "v.nhdr"
    header.write_text("NRRD0004\ntype: short\ndimension: 1\nsizes: 4\nendian: little\nencoding: raw\n"
                      "data file: nowhere.raw\n")
    assert_format_error(header, "nowhere.raw", "missing")


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "missing.nrrd"
    with pytest.raises(FileNotFoundError, match="missing.nrrd"):
        read_nrrd(missing)
    with pytest.raises(FileNotFoundError, match="missing.nrrd"):
        read_nrrd_header(missing)


# ------------------------------------------------------------------------------------------- writer failures


def test_unwritable_data_leaves_target_untouched(tmp_path, raw_file):
    before = raw_file.read_bytes()
    for bad in (np.zeros((2, 2, 2), complex), np.array([["a"]]), np.float64(3.0)):
        with pytest.raises(ValueError):
            write_nrrd(raw_file, bad, spacing_um=1)
    assert raw_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.nrrd"]


def test_crash_while_writing_leaves_target_untouched(tmp_path, raw_file, monkeypatch):
    before = raw_file.read_bytes()

    def crash(fh, payload, encoding, level):
        fh.write(payload[:10].tobytes())
        raise OSError("disk full")

    monkeypatch.setattr(nrrd_module, "_write_data", crash)
    with pytest.raises(OSError, match="disk full"):
        write_nrrd(raw_file, sample("<f8"), spacing_um=1)
    assert raw_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.nrrd"]  # no temporary file left behind


def test_bad_arguments(tmp_path):
    out = tmp_path / "v.nrrd"
    with pytest.raises(ValueError, match="spacing_um"):
        write_nrrd(out, sample("u1"))
    with pytest.raises(ValueError, match="encoding"):
        write_nrrd(out, sample("u1"), spacing_um=1, encoding="bzip9")
    with pytest.raises(ValueError, match="kinds"):
        write_nrrd(out, sample("u1"), {"kinds": ["domain", "domain"]})
    with pytest.raises(ValueError, match="space origin"):
        write_nrrd(out, sample("u1"), spacing_um=1, origin_um=(1, 2))
    assert not out.exists()
