"""NrrdSlabWriter (issue 18): a volume written slab by slab is byte for byte write_nrrd's file, and read back
equal; a writer that fails or stops short leaves no file and an existing one untouched."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.io import read_nrrd, write_nrrd
from brainmap.io.nrrd_write_stream import NrrdSlabWriter


@pytest.mark.parametrize("encoding", ["gzip", "raw"])
@pytest.mark.parametrize("dtype", ["<f8", ">f8", "u1", "bool"])
@pytest.mark.parametrize("planes", [1, 3, 9])
def test_slabs_make_write_nrrds_file(tmp_path, encoding, dtype, planes):
    rng = np.random.default_rng(18)
    volume = np.asfortranarray((rng.random((13, 11, 9)) * 300).astype(dtype))
    whole, slabbed = tmp_path / "whole.nrrd", tmp_path / "slabbed.nrrd"
    write_nrrd(whole, volume, spacing_um=25, origin_um=(0, 0, 0), encoding=encoding)
    with NrrdSlabWriter(slabbed, volume.shape, volume.dtype, spacing_um=25, origin_um=(0, 0, 0),
                        encoding=encoding) as writer:
        for start in range(0, volume.shape[2], planes):
            writer.write(volume[..., start : start + planes])
    assert slabbed.read_bytes() == whole.read_bytes()
    back, _ = read_nrrd(slabbed)
    assert np.array_equal(back, volume)


def test_short_or_failed_writes_leave_no_file(tmp_path):
    path = tmp_path / "v.nrrd"
    path.write_bytes(b"before")
    with pytest.raises(ValueError, match="4 of 9 planes"):
        with NrrdSlabWriter(path, (5, 4, 9), np.float64, spacing_um=25) as writer:
            writer.write(np.zeros((5, 4, 4)))
    with pytest.raises(ValueError, match="does not fit"):
        with NrrdSlabWriter(path, (5, 4, 9), np.float64, spacing_um=25) as writer:
            writer.write(np.zeros((5, 3, 4)))
    with pytest.raises(ValueError, match="more than"):
        with NrrdSlabWriter(path, (5, 4, 9), np.float64, spacing_um=25) as writer:
            writer.write(np.zeros((5, 4, 10)))
    assert path.read_bytes() == b"before"
    assert [p.name for p in tmp_path.iterdir()] == ["v.nrrd"]


def test_isal_deflate_writes_the_same_volume(tmp_path):
    rng = np.random.default_rng(18)
    volume = np.asfortranarray(np.where(rng.random((40, 30, 20)) < 0.3, rng.random((40, 30, 20)), 0.0))
    path = tmp_path / "fast.nrrd"
    with NrrdSlabWriter(path, volume.shape, volume.dtype, spacing_um=25, deflate="isal") as writer:
        for start in range(0, 20, 6):
            writer.write(volume[..., start : start + 6])
    back, header = read_nrrd(path)
    assert header["encoding"] == "gzip" and np.array_equal(back, volume)
    with pytest.raises(ValueError, match="deflate"):
        NrrdSlabWriter(path, volume.shape, volume.dtype, spacing_um=25, deflate="lz4")
