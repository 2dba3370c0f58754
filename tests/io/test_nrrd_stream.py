"""The streaming NRRD reader (issue 18): slabs put together equal read_nrrd bit for bit, on Allen's real files and
on written gzip / raw / bzip2 doubles; hostile files are refused as read_nrrd refuses them (tests/io/test_nrrd.py's
damaged files run through both readers; the bombs here)."""

from __future__ import annotations

import bz2
import importlib.util
import sys
import threading
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import brainmap.io.limits as limits
from brainmap.errors import FormatError
from brainmap.io import read_nrrd, write_nrrd
from brainmap.io.nrrd_stream import NrrdSlabs, iter_volume_slabs

CCF = Path(str(resources.files("brainmap") / "data" / "ccf2017"))

_spec = importlib.util.spec_from_file_location("brainmap_tests_hostile_files", Path(__file__).with_name(
    "hostile_files.py"))
hostile = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules.setdefault("brainmap_tests_hostile_files", hostile)
_spec.loader.exec_module(hostile)  # type: ignore[union-attr]


def joined(path: Path, planes: int) -> np.ndarray:
    slabs = list(NrrdSlabs(path).slabs(planes))
    assert all(s.flags.f_contiguous for s in slabs)
    assert all(s.shape[-1] == planes for s in slabs[:-1])
    return np.concatenate(slabs, axis=-1)


def assert_bit_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.tobytes(order="F") == b.tobytes(order="F")


@pytest.mark.parametrize("resolution, planes", [(100, 1), (100, 7), (50, 16), (25, 64)])
def test_allen_annotation_slabs_equal_read_nrrd(resolution, planes):
    path = CCF / f"annotation_{resolution}.nrrd"
    whole, _ = read_nrrd(path)
    assert_bit_equal(joined(path, planes), whole)


@pytest.mark.parametrize("encoding", ["gzip", "raw"])
@pytest.mark.parametrize("dtype", ["<f8", ">f8", "<f4", "u1"])
def test_written_doubles_slab_by_slab(tmp_path, encoding, dtype):
    rng = np.random.default_rng(18)
    volume = (rng.random((13, 11, 9)) * 1e3).astype(dtype)
    volume[rng.random(volume.shape) < 0.5] = 0
    path = tmp_path / f"v.nrrd"
    write_nrrd(path, volume, spacing_um=25, encoding=encoding)
    whole, _ = read_nrrd(path)
    for planes in (1, 2, 4, 9, 50):
        got = joined(path, planes)
        assert_bit_equal(got, whole)
        assert got.dtype.isnative


def test_bzip2_and_byte_skip_and_detached(tmp_path):
    volume = np.arange(5 * 4 * 6, dtype="<f8").reshape(5, 4, 6) / 7
    payload = b"SKIPME" + np.asfortranarray(volume).tobytes(order="F")
    (tmp_path / "v.raw.bz2").write_bytes(bz2.compress(payload))
    (tmp_path / "v.nhdr").write_text("NRRD0004\ntype: double\ndimension: 3\nsizes: 5 4 6\nendian: little\n"
                                      "encoding: bzip2\nbyte skip: 6\ndata file: v.raw.bz2\n\n")
    assert_bit_equal(joined(tmp_path / "v.nhdr", 4), volume)
    assert_bit_equal(read_nrrd(tmp_path / "v.nhdr")[0], volume)


@pytest.mark.parametrize("inflater", ["zlib", "isal", "zlib-ng"])
def test_every_inflate_gives_the_same(tmp_path, monkeypatch, inflater):
    """zlib-ng (the default), python-isal and zlib (BRAINMAP_INFLATE=zlib / isal / zlib-ng) give the same slabs bit
    for bit, and the same whole volume."""
    path = CCF / "annotation_100.nrrd"
    raw = path.read_bytes()
    data = zlib.decompress(raw[raw.index(b"\n\n") + 2 :], zlib.MAX_WBITS | 16)  # the stdlib's, whole
    reference = np.frombuffer(data, dtype="<u4").reshape(read_nrrd(path)[0].shape, order="F")
    chosen = limits._choose_inflater(inflater)
    assert chosen.__name__.split(".")[-1] == {"zlib": "zlib", "isal": "isal_zlib", "zlib-ng": "zlib_ng"}[inflater]
    monkeypatch.setattr(limits, "_inflater", chosen)
    assert_bit_equal(joined(path, 5), reference)
    assert_bit_equal(read_nrrd(path)[0], reference)


def test_volume_set_slabs_in_parallel(tmp_path):
    rng = np.random.default_rng(1)
    volumes = {name: rng.random((20, 10, 33)) for name in ("a", "b", "c")}
    for name, volume in volumes.items():
        write_nrrd(tmp_path / f"{name}.nrrd", volume, spacing_um=25, encoding="gzip" if name != "b" else "raw")
    paths = {name: tmp_path / f"{name}.nrrd" for name in volumes}
    starts, pieces = [], {name: [] for name in volumes}
    for start, slabs in iter_volume_slabs(paths, slab_bytes=20 * 10 * 8 * 4, threads=2):
        starts.append(start)
        assert len({s.shape for s in slabs.values()}) == 1
        for name, slab in slabs.items():
            pieces[name].append(slab)
    assert starts == list(range(0, 33, 4))
    for name, volume in volumes.items():
        assert_bit_equal(np.concatenate(pieces[name], axis=-1), volume)


@pytest.mark.parametrize("ahead", [1, 2, 5])
def test_volume_set_read_ahead_gives_every_slab_once_and_stops_its_threads(tmp_path, ahead):
    """Any read-ahead depth gives the same slabs in order; a caller that stops early (or a damaged volume) leaves
    no decoding thread behind."""
    rng = np.random.default_rng(2)
    volumes = {name: rng.random((6, 5, 23)) for name in "abcd"}
    for name, volume in volumes.items():
        write_nrrd(tmp_path / f"{name}.nrrd", volume, spacing_um=25)
    paths = {name: tmp_path / f"{name}.nrrd" for name in volumes}
    slab_bytes = 6 * 5 * 8 * 2
    got = {name: [] for name in volumes}
    for _, slabs in iter_volume_slabs(paths, slab_bytes=slab_bytes, threads=3, ahead=ahead):
        for name, slab in slabs.items():
            got[name].append(slab)
    for name, volume in volumes.items():
        assert_bit_equal(np.concatenate(got[name], axis=-1), volume)
    slabs_iter = iter_volume_slabs(paths, slab_bytes=slab_bytes, threads=2, ahead=ahead)
    next(slabs_iter)
    slabs_iter.close()  # the caller stops after one slab
    assert not [t for t in threading.enumerate() if t.name.startswith("nrrd-slabs")]
    bad = tmp_path / "c.nrrd"
    bad.write_bytes(bad.read_bytes()[:-200])
    with pytest.raises(FormatError, match="c.nrrd: gzip data is truncated"):
        list(iter_volume_slabs(paths, slab_bytes=slab_bytes, threads=2, ahead=ahead))
    assert not [t for t in threading.enumerate() if t.name.startswith("nrrd-slabs")]


def test_volume_set_refuses_different_sizes(tmp_path):
    write_nrrd(tmp_path / "a.nrrd", np.zeros((4, 4, 4)), spacing_um=25)
    write_nrrd(tmp_path / "b.nrrd", np.zeros((4, 4, 5)), spacing_um=25)
    with pytest.raises(FormatError, match="b.nrrd: sizes 4 4 5 differ"):
        list(iter_volume_slabs({"a": tmp_path / "a.nrrd", "b": tmp_path / "b.nrrd"}))


def test_volume_set_reports_a_damaged_volume(tmp_path):
    write_nrrd(tmp_path / "a.nrrd", np.ones((8, 8, 8)), spacing_um=25)
    write_nrrd(tmp_path / "b.nrrd", np.ones((8, 8, 8)), spacing_um=25)
    bad = tmp_path / "b.nrrd"
    bad.write_bytes(bad.read_bytes()[:-4])  # the CRC trailer is missing: found only after the last slab
    with pytest.raises(FormatError, match="b.nrrd: gzip data is truncated.*CRC"):
        list(iter_volume_slabs({"a": tmp_path / "a.nrrd", "b": bad}, slab_bytes=8 * 8 * 8))


@pytest.mark.parametrize("codec", ["gzip", "bzip2"])
def test_bombs_stop_at_the_header_size(tmp_path, codec):
    path = tmp_path / "bomb.nrrd"
    fields = {"type": "unsigned char", "dimension": "1", "sizes": "1000", "encoding": codec}
    data = hostile.deflate_bomb(1 << 30, 31) if codec == "gzip" else hostile.BZIP2_1GIB_OF_ZEROS
    path.write_bytes(hostile.nrrd_bytes(fields, data))
    with pytest.raises(FormatError, match="more bytes than the header says"):
        list(NrrdSlabs(path).slabs(1))


def test_lying_header_costs_one_slab(tmp_path):
    """A header asking for 256 GB over 4 MB of gzip: one 64 MB slab at a time, then the data run out."""
    path = tmp_path / "liar.nrrd"
    fields = {"type": "float", "dimension": "3", "sizes": "4000 4000 4000", "endian": "little", "encoding": "gzip"}
    path.write_bytes(hostile.nrrd_bytes(fields, hostile.deflate_bomb(4 << 20, 31)))
    with pytest.raises(FormatError, match=f"{path}: gzip data"):
        for _ in NrrdSlabs(path).slabs(1):
            pass


@pytest.mark.parametrize("reuse", [False, True], ids=["read", "readinto"])
@pytest.mark.parametrize("inflate", ["zlib-ng", "isal", "zlib"])
@pytest.mark.parametrize("piece", [65_536, 100_003, 1 << 20, 5 << 20])
def test_iter_decompressed_pieces_mixed_ratios(monkeypatch, inflate, piece, reuse):
    """Runs of zeros (one call gives a whole piece: handed out without a copy) next to noise (pieces assembled from
    several calls), in two gzip members, a skipped prefix; every piece but the last full, the whole equal; read as
    new bytes or into the reused buffer."""
    import gzip
    import io

    monkeypatch.setattr(limits, "_inflater", limits._choose_inflater(inflate))
    rng = np.random.default_rng(18)
    data = b"".join([bytes(3 << 20), rng.integers(0, 4, 1 << 20, dtype=np.uint8).tobytes(), bytes(1 << 20),
                     rng.integers(0, 256, 300_001, dtype=np.uint8).tobytes()])
    skip = 777
    stream = gzip.compress(data[:2_000_000], 6) + gzip.compress(data[2_000_000:], 1)
    source = io.BytesIO(stream)
    pieces = list(limits.iter_decompressed(source.read, "gzip", len(data) - skip, "mixed", skip=skip, piece=piece,
                                           readinto=source.readinto if reuse else None))
    assert all(len(p) == piece for p in pieces[:-1]) and 0 < len(pieces[-1]) <= piece
    assert b"".join(p.tobytes() for p in pieces) == data[skip:]
    truncated = io.BytesIO(stream[:-9])
    with pytest.raises(FormatError, match="mixed"):
        list(limits.iter_decompressed(truncated.read, "gzip", len(data) - skip, "mixed", skip=skip, piece=piece,
                                      readinto=truncated.readinto if reuse else None))


def test_iter_decompressed_input_follows_the_last_piece(monkeypatch):
    """Empty planes then dense ones (a volume's edge, then its middle): each dense piece comes out of one call,
    its input estimated from the piece before it, not from the stream's ratio so far (which the zeros inflate:
    then most dense pieces came out short and were assembled by copies)."""
    import gzip
    import io

    rng = np.random.default_rng(7)
    piece = 1 << 20
    dense = rng.integers(0, 16, 24 * piece, dtype=np.uint8).tobytes()  # about 2:1
    data = bytes(24 * piece) + dense
    stream = gzip.compress(data, 1)
    calls = []
    step = limits._step

    def counted(decompressor, given, limit):
        out, tail = step(decompressor, given, limit)
        calls.append(len(out) < limit)
        return out, tail

    monkeypatch.setattr(limits, "_step", counted)
    source = io.BytesIO(stream)
    pieces = list(limits.iter_decompressed(source.read, "gzip", len(data), "dense", piece=piece,
                                           readinto=source.readinto))
    assert b"".join(p.tobytes() for p in pieces) == data
    assert len(calls) <= len(pieces) + 2, f"{len(calls)} calls for {len(pieces)} pieces"
    assert sum(calls) <= 2
