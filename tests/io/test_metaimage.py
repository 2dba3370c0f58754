"""MetaImage (.mhd/.raw, .mha): round trips, byte orders, Allen's grid layout, every kind of broken file."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

import brainmap.io.atomic as atomic_module
from brainmap.errors import FormatError
from brainmap.io import ELEMENT_TYPES, read_metaimage, write_metaimage
from brainmap.io.metaimage import parse_metaimage_header

ISH_SHAPE = (67, 41, 58)  # Allen's 200 um ISH grid: (AP, DV, LR)
ALLEN_STYLE_HEADER = """ObjectType = Image
NDims = 3
BinaryData = True
BinaryDataByteOrderMSB = {msb}
CompressedData = False
TransformMatrix = 1 0 0 0 1 0 0 0 1
Offset = 0 0 0
CenterOfRotation = 0 0 0
AnatomicalOrientation = RAI
ElementSpacing = 200 200 200
DimSize = 67 41 58
ElementType = MET_FLOAT
ElementDataFile = energy.raw
"""
TYPE_OF = {"i1": "MET_CHAR", "u1": "MET_UCHAR", "i2": "MET_SHORT", "u2": "MET_USHORT", "i4": "MET_INT",
           "u4": "MET_UINT", "i8": "MET_LONG_LONG", "u8": "MET_ULONG_LONG", "f4": "MET_FLOAT", "f8": "MET_DOUBLE"}


def expression_grid(seed: int = 0) -> np.ndarray:
    """A float32 ISH-like grid: non-negative energies and -1 (no data) outside a band of sections."""
    rng = np.random.default_rng(seed)
    grid = rng.gamma(0.5, 2.0, ISH_SHAPE).astype(np.float32)
    grid[:5] = -1
    grid[:, :, 50:] = -1
    return grid


def sample(dtype: str, shape=(4, 3, 2)) -> np.ndarray:
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "f":
        values = (np.arange(n) - n / 2) * 1.25
    else:
        info = np.iinfo(dt)
        values = [int(info.min) + (int(info.max) - int(info.min)) * k // (n - 1) for k in range(n)]
    return np.array(values, dtype=dt.newbyteorder("=")).astype(dt).reshape(shape)


def header_fields(path: Path) -> dict[str, str]:
    lines = path.read_bytes().split(b"ElementDataFile")[0].decode().splitlines()
    return dict(line.split(" = ", 1) for line in lines if line)


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".mhd", ".mha"])
@pytest.mark.parametrize("msb", [False, True])
@pytest.mark.parametrize("dtype", ["i1", "u1", "<i2", "<u2", "<i4", ">u4", "<i8", "<u8", "<f4", ">f8"])
def test_round_trip_every_element_type(tmp_path, dtype, msb, suffix):
    data = sample(dtype)
    path = tmp_path / f"volume{suffix}"
    write_metaimage(path, data, (10, 20, 30), offset=(-5, 0, 2.5), byte_order_msb=msb)
    back, header = read_metaimage(path)
    np.testing.assert_array_equal(back, data)
    assert back.shape == (4, 3, 2) and back.dtype == np.dtype(dtype).newbyteorder("=")
    assert header.element_type == TYPE_OF[np.dtype(dtype).str[1:]]
    assert header.dim_size == (4, 3, 2)
    assert header.element_spacing == (10.0, 20.0, 30.0) and header.offset == (-5.0, 0.0, 2.5)
    assert header.byte_order_msb is msb
    if suffix == ".mhd":
        assert header.element_data_file == "volume.raw"
        assert (tmp_path / "volume.raw").stat().st_size == data.nbytes
    else:
        assert header.element_data_file == "LOCAL"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["volume.mha"]


def test_written_header_is_what_itk_writes(tmp_path):
    write_metaimage(tmp_path / "energy.mhd", expression_grid(), 200)
    assert (tmp_path / "energy.mhd").read_text() == ALLEN_STYLE_HEADER.format(msb="False").replace(
        "AnatomicalOrientation = RAI\n", ""
    )
    payload = (tmp_path / "energy.raw").read_bytes()
    assert len(payload) == 67 * 41 * 58 * 4
    # x (AP) varies fastest in the file.
    grid = expression_grid()
    values = np.frombuffer(payload, "<f4")
    np.testing.assert_array_equal(values[5:8], grid[5:8, 0, 0])
    assert values[67 + 10] == grid[10, 1, 0] and values[67 * 41 + 10] == grid[10, 0, 1]


def test_allen_expression_grid_layout_and_no_data_values(tmp_path):
    grid = expression_grid()
    (tmp_path / "energy.mhd").write_text(ALLEN_STYLE_HEADER.format(msb="False"))
    (tmp_path / "energy.raw").write_bytes(grid.astype("<f4").tobytes(order="F"))
    data, header = read_metaimage(tmp_path / "energy.mhd")
    assert data.shape == ISH_SHAPE and data.dtype == np.float32
    np.testing.assert_array_equal(data, grid)
    assert (data == -1).sum() == (grid == -1).sum() > 0  # -1 = no data, kept as stored
    assert header.element_spacing == (200.0, 200.0, 200.0)
    assert header.extra["AnatomicalOrientation"] == "RAI"
    assert header.extra["TransformMatrix"] == "1 0 0 0 1 0 0 0 1"
    assert data.flags.writeable


def test_big_endian_raw_is_read_correctly(tmp_path):
    grid = expression_grid(1)
    (tmp_path / "energy.mhd").write_text(ALLEN_STYLE_HEADER.format(msb="True"))
    (tmp_path / "energy.raw").write_bytes(grid.astype(">f4").tobytes(order="F"))
    data, header = read_metaimage(tmp_path / "energy.mhd")
    assert header.byte_order_msb is True and data.dtype == np.dtype("=f4")
    np.testing.assert_array_equal(data, grid)
    # The older spelling ElementByteOrderMSB means the same.
    text = ALLEN_STYLE_HEADER.format(msb="True").replace("BinaryDataByteOrderMSB", "ElementByteOrderMSB")
    (tmp_path / "energy.mhd").write_text(text)
    np.testing.assert_array_equal(read_metaimage(tmp_path / "energy.mhd")[0], grid)


@pytest.mark.parametrize("suffix", [".mhd", ".mha"])
def test_compressed_data(tmp_path, suffix):
    grid = expression_grid(2)
    path = tmp_path / f"energy{suffix}"
    write_metaimage(path, grid, 200, compress=True)
    fields = header_fields(path)
    assert fields["CompressedData"] == "True" and int(fields["CompressedDataSize"]) < grid.nbytes
    if suffix == ".mhd":
        assert (tmp_path / "energy.zraw").exists() and not (tmp_path / "energy.raw").exists()
    np.testing.assert_array_equal(read_metaimage(path)[0], grid)


def test_header_size_channels_and_two_dimensions(tmp_path):
    rgb = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)  # [x, y, channel]
    (tmp_path / "rgb.mhd").write_text(
        "ObjectType = Image\nNDims = 2\nDimSize = 4 3\nElementNumberOfChannels = 3\nHeaderSize = 5\n"
        "ElementType = MET_UCHAR\nElementDataFile = rgb.raw\n"
    )
    interleaved = np.moveaxis(rgb, -1, 0).tobytes(order="F")  # channel fastest, then x, then y
    (tmp_path / "rgb.raw").write_bytes(b"HEAD!" + interleaved)
    data, header = read_metaimage(tmp_path / "rgb.mhd")
    assert header.channels == 3 and data.shape == (4, 3, 3)
    np.testing.assert_array_equal(data, rgb)
    (tmp_path / "rgb.mhd").write_text((tmp_path / "rgb.mhd").read_text().replace("HeaderSize = 5", "HeaderSize = -1"))
    np.testing.assert_array_equal(read_metaimage(tmp_path / "rgb.mhd")[0], rgb)


def test_element_type_conversion(tmp_path):
    path = tmp_path / "v.mha"
    write_metaimage(path, np.array([[[1.5, -2.0]]]), element_type="MET_FLOAT")
    data, header = read_metaimage(path)
    assert header.element_type == "MET_FLOAT" and data.dtype == np.float32
    write_metaimage(path, np.array([[[1, 255]]]), element_type="met_uchar")
    assert read_metaimage(path)[0].dtype == np.uint8
    with pytest.raises(ValueError, match="range"):
        write_metaimage(path, np.array([[[1, 256]]]), element_type="MET_UCHAR")
    with pytest.raises(ValueError, match="cannot store"):
        write_metaimage(path, np.array([[[1.5]]]), element_type="MET_INT")
    with pytest.raises(ValueError, match="unknown element_type"):
        write_metaimage(path, np.array([[[1]]]), element_type="MET_COMPLEX")


def test_supported_element_types():
    assert set(ELEMENT_TYPES) >= {"MET_FLOAT", "MET_DOUBLE", "MET_UINT", "MET_INT", "MET_UCHAR", "MET_CHAR",
                                  "MET_SHORT", "MET_USHORT", "MET_LONG", "MET_ULONG"}
    assert np.dtype(ELEMENT_TYPES["MET_LONG"]).itemsize == 4  # MetaIO's MET_LONG is 4 bytes


def test_parse_header_from_bytes_gives_local_data_offset():
    raw = b"NDims = 1\nDimSize = 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n\x01\x02"
    header, offset = parse_metaimage_header(raw, "memory.mha")
    assert raw[offset:] == b"\x01\x02" and header.dim_size == (2,)


# ------------------------------------------------------------------------------------------- broken files


@pytest.fixture()
def grid_files(tmp_path) -> tuple[Path, Path]:
    write_metaimage(tmp_path / "energy.mhd", expression_grid(), 200)
    return tmp_path / "energy.mhd", tmp_path / "energy.raw"


def assert_format_error(path: Path, *fragments: str) -> str:
    with pytest.raises(FormatError) as caught:
        read_metaimage(path)
    message = str(caught.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_raw(grid_files):
    header, raw = grid_files
    raw.unlink()
    assert_format_error(header, "energy.raw", "missing")


def test_raw_shorter_than_dim_size_says(grid_files):
    header, raw = grid_files
    raw.write_bytes(raw.read_bytes()[:-4])
    assert_format_error(header, "energy.raw", "shorter", "expected 637,304 bytes", "got 637,300")


def test_raw_longer_than_dim_size_says(grid_files):
    header, raw = grid_files
    raw.write_bytes(raw.read_bytes() + b"\0\0")
    assert_format_error(header, "energy.raw", "longer", "got 637,306")


def test_mha_local_data_truncated(tmp_path):
    path = tmp_path / "energy.mha"
    write_metaimage(path, expression_grid(), 200)
    path.write_bytes(path.read_bytes()[:-100])
    assert_format_error(path, "LOCAL", "shorter")


def test_truncated_compressed_data(tmp_path):
    path = tmp_path / "energy.mhd"
    write_metaimage(path, expression_grid(), 200, compress=True)
    zraw = tmp_path / "energy.zraw"
    zraw.write_bytes(zraw.read_bytes()[:-50])
    assert_format_error(path, "energy.zraw", "truncated")
    zraw.write_bytes(zlib.compress(expression_grid().tobytes(order="F") + b"more"))
    assert_format_error(path, "energy.zraw", "longer")
    zraw.write_bytes(b"not zlib data at all")
    assert_format_error(path, "energy.zraw", "corrupt")


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ("ElementType = MET_FLOAT", "ElementType = MET_QUATERNION", ("unknown ElementType 'MET_QUATERNION'",)),
        ("DimSize = 67 41 58\n", "", ("no DimSize",)),
        ("ElementType = MET_FLOAT\n", "", ("no ElementType",)),
        ("ElementDataFile = energy.raw\n", "", ("no ElementDataFile",)),
        ("DimSize = 67 41 58", "DimSize = 67 forty-one 58", ("DimSize", "not a list of numbers")),
        ("ElementSpacing = 200 200 200", "ElementSpacing = 200 x 200", ("ElementSpacing", "not a list of numbers")),
        ("ElementSpacing = 200 200 200", "ElementSpacing = 200 200", ("ElementSpacing", "needs 3 values")),
        ("NDims = 3", "NDims = three", ("NDims", "not an integer")),
        ("NDims = 3", "NDims = 4", ("NDims = 4", "lists 3 sizes")),
        ("DimSize = 67 41 58", "DimSize = 67 41", ("NDims = 3", "lists 2 sizes")),
        ("DimSize = 67 41 58", "DimSize = 67 0 58", ("positive",)),
        ("BinaryDataByteOrderMSB = False", "BinaryDataByteOrderMSB = Maybe", ("neither True nor False",)),
        ("BinaryData = True", "BinaryData = False", ("text data",)),
        ("ObjectType = Image", "ObjectType = Tube", ("not an image",)),
        ("ObjectType = Image", "ObjectType Image", ("not a MetaImage header", "line 1")),
        ("NDims = 3", "NDims = 3\nNDims = 3", ("NDims appears twice",)),
        ("ElementDataFile = energy.raw", "ElementDataFile = LIST", ("not supported",)),
    ],
)
def test_bad_header(grid_files, old, new, fragments):
    header, _ = grid_files
    text = header.read_text()
    assert old in text
    header.write_text(text.replace(old, new))
    assert_format_error(header, *fragments)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b"hello world\n"])
def test_not_a_metaimage(tmp_path, content):
    path = tmp_path / "garbage.mhd"
    path.write_bytes(content)
    assert_format_error(path)


def test_missing_header_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.mhd"):
        read_metaimage(tmp_path / "nothing.mhd")


# ------------------------------------------------------------------------------------------- writer failures


def test_failed_write_leaves_both_files_untouched(grid_files, monkeypatch):
    header, raw = grid_files
    before = header.read_bytes(), raw.read_bytes()
    real_replace = atomic_module.os.replace

    def failing_replace(source, target):
        if str(target).endswith(".raw"):
            raise OSError("disk full")
        return real_replace(source, target)

    monkeypatch.setattr(atomic_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_metaimage(header, np.zeros((2, 2, 2), np.float32), 100)
    assert (header.read_bytes(), raw.read_bytes()) == before
    assert sorted(p.name for p in header.parent.iterdir()) == ["energy.mhd", "energy.raw"]


def test_unwritable_data_is_refused_before_touching_files(grid_files):
    header, raw = grid_files
    before = header.read_bytes(), raw.read_bytes()
    with pytest.raises(ValueError):
        write_metaimage(header, np.zeros((2, 2, 2), complex))
    with pytest.raises(ValueError, match="values"):
        write_metaimage(header, np.zeros((2, 2, 2)), spacing=(1, 2))
    assert (header.read_bytes(), raw.read_bytes()) == before


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<u2"])
def test_data_as_a_buffer_is_the_copied_bytes(order, dtype):
    """``as_buffer``: the data bytes as a read-only view where the array is in the file's layout (Fortran order):
    of its own memory when it is also in the file's byte order (little-endian), else of the converted array;
    other layouts get the same bytes copied."""
    from brainmap.io.metaimage import encode_metaimage

    array = np.asarray(np.arange(4 * 3 * 5).reshape(4, 3, 5), dtype=dtype, order=order)
    header, copied = encode_metaimage(array, 25.0, data_file="x.raw")
    header_b, viewed = encode_metaimage(array, 25.0, data_file="x.raw", as_buffer=True)
    assert header_b == header and bytes(viewed) == copied
    assert isinstance(viewed, memoryview) == (order == "F")
    if isinstance(viewed, memoryview):
        assert viewed.readonly
        assert np.shares_memory(np.frombuffer(viewed, np.uint8), array) == (dtype[0] == "<")


@pytest.mark.parametrize("suffix", [".mhd", ".mha"])
def test_a_fortran_order_array_is_written_as_its_c_order_copy(tmp_path, suffix):
    """``write_metaimage`` writes a Fortran-order array from its own memory: the same files as its C-order copy."""
    array = np.asfortranarray(np.random.default_rng(3).normal(size=(6, 5, 4)).astype(np.float32))
    paths = []
    for name, given in (("f", array), ("c", np.ascontiguousarray(array))):
        path = tmp_path / f"{name}{suffix}"
        write_metaimage(path, given, 25.0)
        paths.append(path)
    assert paths[0].read_bytes().replace(b"f.raw", b"c.raw") == paths[1].read_bytes()
    if suffix == ".mhd":
        assert (tmp_path / "f.raw").read_bytes() == (tmp_path / "c.raw").read_bytes()
    np.testing.assert_array_equal(read_metaimage(paths[0])[0], array)
