"""Property-based fuzzing of the file readers (hypothesis): NRRD, MetaImage, grid-data zip and dataset.json.

Each test starts from valid files (every encoding the reader accepts) and mutates them -- flipped, inserted and
deleted bytes, truncation, header fields replaced by hostile values (2^63, -1, NUL, inf, huge skips, other
encodings) -- then reads the result. The property: the reader returns an array or raises brainmap's own
FormatError; any other exception type is a failure. A mutation that happens to leave the file valid must read
back as an array of the shape its header declares.

Budget: ``BRAINMAP_FUZZ_EXAMPLES`` examples per test (default 60, a few seconds in all, derandomized so that CI
is reproducible). docs/hardening.md gives the long run: ``BRAINMAP_FUZZ_EXAMPLES=20000
BRAINMAP_FUZZ_RANDOM=1 pytest tests/io/test_fuzz_readers.py``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from brainmap.errors import BrainmapError  # noqa: E402
from brainmap.io import encode_metaimage, grid_bundle_bytes, read_grid_bundle, read_metaimage, read_nrrd  # noqa: E402
from brainmap.specimen.folder import read_dataset  # noqa: E402

EXAMPLES = int(os.environ.get("BRAINMAP_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("BRAINMAP_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large], database=None)

#: Values a hostile header puts in a numeric or name field.
HOSTILE_VALUES = [
    "0", "-1", "-2", "1", "3", str(2**31), str(2**32 + 1), str(2**62), str(2**63), str(2**63 - 1), str(2**64),
    "9" * 30, "1e308", "inf", "-inf", "nan", "", " ", "\x00", "a\x00b", "(1,2", "(nan,nan,nan)", "none", "LOCAL",
    "LIST", "%d", "../../etc/passwd", "/dev/zero", "True", "False", "gzip", "bzip2", "raw", "ascii", "block",
    "MET_FLOAT", "MET_QUATERNION", "1 2 3 4 5 6 7 8", "10000 10000 10000", "100000 100000 100000",
]

# -- seeds --------------------------------------------------------------------------------------------------------
VOLUME = (np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2) - 5.5) / 3


def _nrrd(encoding: str, body: bytes, extra: str = "") -> bytes:
    header = ("NRRD0004\n# made by the fuzz suite\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
              "sizes: 4 3 2\nspace directions: (25,0,0) (0,25,0) (0,0,25)\nkinds: domain domain domain\n"
              f"endian: little\nencoding: {encoding}\n{extra}space origin: (0,0,0)\n\n")
    return header.encode() + body


_RAW = VOLUME.T.astype("<f4").tobytes()  # first axis fastest
NRRD_SEEDS = [
    _nrrd("raw", _RAW),
    _nrrd("gzip", gzip.compress(_RAW)),
    _nrrd("bzip2", bz2.compress(_RAW)),
    _nrrd("ascii", " ".join(str(v) for v in VOLUME.T.ravel()).encode() + b"\n"),
    _nrrd("raw", b"skip me\n" + _RAW, "line skip: 1\n"),
    _nrrd("gzip", gzip.compress(b"\0" * 7 + _RAW), "byte skip: 7\n"),
]
MHA_SEEDS = [b"".join(encode_metaimage(VOLUME, 200)), b"".join(encode_metaimage(VOLUME, 200, compress=True)),
             b"".join(encode_metaimage(VOLUME.astype(np.int16), (100, 200, 300), byte_order_msb=True))]
BUNDLE_SEEDS = [grid_bundle_bytes({"energy": VOLUME, "density": VOLUME / 2}),
                grid_bundle_bytes({"energy": VOLUME})]
DATASET_SEED = json.dumps({
    "schema_version": 1, "id": 7, "plane": "coronal", "product": "ish", "section_thickness_um": 25.0,
    "sampling_um": 200.0, "pixel_size_um": 1.0, "metadata": {"gene": "Gad1"},
    "alignment3d": {**{f"trv_{k:02d}": float(k in (0, 4, 8)) for k in range(12)},
                    **{f"tvr_{k:02d}": float(k in (0, 4, 8)) for k in range(12)}},
    "images": [{"id": 11, "section_number": 3, "width": 8, "height": 6, "failed": False,
                "channels": {"expression": "11_expression.tif"},
                "alignment2d": {**{f"tsv_{k:02d}": float(k in (0, 3)) for k in range(6)},
                                **{f"tvs_{k:02d}": float(k in (0, 3)) for k in range(6)}}}],
}, indent=1).encode()


# -- mutations ----------------------------------------------------------------------------------------------------
@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], separator: bytes) -> bytes:
    """A seed with a few mutations: header fields set to hostile values, bytes flipped/inserted/deleted, a cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "field", "flip", "insert", "delete", "truncate", "duplicate"]))
        if kind == "field":
            lines = bytes(data).split(b"\n")
            candidates = [i for i, line in enumerate(lines[:40]) if separator in line]
            if candidates:
                i = draw(st.sampled_from(candidates))
                key = lines[i].split(separator, 1)[0]
                value = draw(st.sampled_from(HOSTILE_VALUES) | st.text(max_size=12)).encode("utf-8", "replace")
                lines[i] = key + separator + value
                data = bytearray(b"\n".join(lines))
        elif kind == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=16) | st.sampled_from([b"\n", b"\n\n", b"\x00"]))
        elif kind == "delete" and data:
            at = draw(st.integers(0, len(data) - 1))
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        elif kind == "duplicate" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


def _only_brainmap_errors(read, *args) -> object:
    try:
        return read(*args)
    except BrainmapError:
        return None


@FUZZ
@given(data=mutated(NRRD_SEEDS, b": "))
def test_nrrd_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("nrrd") / "volume.nrrd"
    path.write_bytes(data)
    result = _only_brainmap_errors(read_nrrd, path)
    if result is not None:
        array, header = result
        assert array.shape == tuple(int(s) for s in np.atleast_1d(header["sizes"]))


@FUZZ
@given(data=mutated(MHA_SEEDS, b" = "))
def test_metaimage_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("mha") / "volume.mha"
    path.write_bytes(data)
    result = _only_brainmap_errors(read_metaimage, path)
    if result is not None:
        array, header = result
        assert array.shape == header.shape


@FUZZ
@given(data=mutated(BUNDLE_SEEDS, b" = "))
def test_grid_bundle_reader(data):
    result = _only_brainmap_errors(read_grid_bundle, data)
    if result is not None:
        for array, header in result.values():
            assert array.shape == header.shape


@FUZZ
@given(header=mutated([b"".join(encode_metaimage(VOLUME, 200, data_file="volume.raw"))[:-len(_RAW)]], b" = "),
       payload=mutated([_RAW, gzip.compress(_RAW)], b"\n"))
def test_metaimage_with_a_data_file(tmp_path_factory, header, payload):
    folder = tmp_path_factory.mktemp("mhd")
    (folder / "volume.mhd").write_bytes(header)
    (folder / "volume.raw").write_bytes(payload)
    _only_brainmap_errors(read_metaimage, folder / "volume.mhd")


@FUZZ
@given(members=st.lists(st.tuples(st.sampled_from(["energy.mhd", "energy.raw", "density.mhd", "a/energy.mhd",
                                                   "density.raw", "x.mha"]),
                                  mutated(BUNDLE_SEEDS[1:] + [b"".join(encode_metaimage(VOLUME, 200))], b" = ")),
                        max_size=4, unique_by=lambda member: member[0]),
       method=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
def test_grid_bundle_members(members, method):
    """Zips built from mutated members, in every compression method zipfile knows."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, payload in members:
            archive.writestr(name, payload)
    _only_brainmap_errors(read_grid_bundle, buffer.getvalue())


@FUZZ
@given(data=mutated([DATASET_SEED], b": "))
def test_dataset_json_reader(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("dataset")
    (folder / "dataset.json").write_bytes(data)
    _only_brainmap_errors(lambda: read_dataset(folder, check_files=False))


def test_the_seeds_are_valid(tmp_path):
    """Every seed reads back as the volume it holds: the mutations start from good files."""
    for k, data in enumerate(NRRD_SEEDS):
        (tmp_path / f"{k}.nrrd").write_bytes(data)
        np.testing.assert_allclose(read_nrrd(tmp_path / f"{k}.nrrd")[0], VOLUME, rtol=1e-6)
    for k, data in enumerate(MHA_SEEDS):
        (tmp_path / f"{k}.mha").write_bytes(data)
        assert read_metaimage(tmp_path / f"{k}.mha")[0].shape == VOLUME.shape
    for data in BUNDLE_SEEDS:
        np.testing.assert_array_equal(read_grid_bundle(data)["energy"][0], VOLUME)
    (tmp_path / "dataset.json").write_bytes(DATASET_SEED)
    assert read_dataset(tmp_path, check_files=False).images[0].id == 11
    assert Path(tmp_path / "dataset.json").exists()
