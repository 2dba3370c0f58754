"""The bounded-memory accumulator for large grids (issue 18): the same bits as the dense accumulator, the same
files written slab by slab, its scratch files removed (and those a crashed process left)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from brainmap.pipeline.grid import GridAccumulator, GridSpec, Gridder, SpillAccumulator
from brainmap.pipeline.grid.projection import write_projection_grids_streamed
from brainmap.pipeline.grid.resample import PartialGrid
from brainmap.pipeline.grid.spill import remove_stale_spill_folders, spill_section

from .test_grid_stream import _bits, _partials


def _sagittal(spec: GridSpec) -> PartialGrid:
    """A sagittal section's partial (a few LR planes, whole AP x DV): the other orientation of the spill's blocks."""
    rng = np.random.default_rng(7)
    n = 50_000
    ijk = np.stack([rng.integers(0, spec.shape[0], n), rng.integers(0, spec.shape[1], n),
                    rng.integers(spec.shape[2] // 3, spec.shape[2] // 3 + 3, n)], axis=1)
    values = {"covered": rng.random(n), "sum_pixels": rng.random(n) * (rng.random(n) < 0.4)}
    return PartialGrid(spec, spec.flat_index(ijk), values)


@pytest.mark.parametrize("resolution, planes", [(100, 1), (100, 7), (25, 5)])
def test_spill_gives_the_dense_accumulators_bits(tmp_path, resolution, planes):
    spec = GridSpec.allen(resolution)
    partials = _partials(spec, sections=5) + [_sagittal(spec)]
    # at 100 um coverage and tissue go dense (at 25 um that would take 9 dense volumes of 0.6 GB; the sparse
    # entries give the same bits: test_grid_stream.py)
    dense = GridAccumulator(spec, dense_fraction=1e-3 if resolution == 100 else 0.25).add_all(partials)
    assert bool(dense.sums) == (resolution == 100)
    with SpillAccumulator(spec, tmp_path, block_planes=planes) as spill:
        spill.add_all(partials)
        assert spill.sections == len(partials) and set(spill.names) == set(dense.names)
        assert len(list(spill.folder.glob("*.spill"))) == len(partials) and spill.spilled_bytes > 0
        plane = spec.shape[0] * spec.shape[1]
        for k in range(0, spec.shape[2], 4):  # in file order, as the writer reads (blocks decoded once)
            for name in dense.names:
                lo, hi = k * plane, min(k + 4, spec.shape[2]) * plane
                assert _bits(spill.get_range(name, lo, hi)) == _bits(dense.get_range(name, lo, hi)), (name, k)
        lo, hi = 12345, spec.n_voxels - 999  # across blocks, unaligned
        assert _bits(spill.get_range("covered", lo, hi)) == _bits(dense.get_range("covered", lo, hi))
        assert not spill.get_range("no such quantity", 0, 10).any()
        with pytest.raises(ValueError, match="outside the grid"):
            spill.get_range("covered", 0, spec.n_voxels + 1)
        if resolution == 100:  # the files written slab by slab: byte for byte (zlib), slabs and blocks unaligned
            a = write_projection_grids_streamed(tmp_path / "dense", dense, 40.0, deflate="zlib",
                                                slab_bytes=132 * 80 * 8 * 3)
            b = write_projection_grids_streamed(tmp_path / "spill", spill, 40.0, deflate="zlib",
                                                slab_bytes=132 * 80 * 8 * 3)
            for x, y in zip(a, b, strict=True):
                assert x.name == y.name and x.read_bytes() == y.read_bytes(), x.name
        folder = spill.folder
    assert not folder.exists()  # closed: the scratch files are gone
    with pytest.raises(ValueError, match="closed"):
        spill.add(partials[0])


def test_spill_refuses_what_it_cannot_do(tmp_path):
    spec = GridSpec.allen(100)
    spill = SpillAccumulator(spec, tmp_path)
    with pytest.raises(TypeError, match="section order"):
        spill.merge(SpillAccumulator(spec, tmp_path))
    with pytest.raises(ValueError, match="accumulator on"):
        spill.add(_partials(GridSpec.allen(50), sections=1)[0])
    folder = spill.folder
    del spill  # collected: its folder goes too
    assert not folder.exists()


def test_a_crashed_process_spill_folder_is_removed_by_the_next(tmp_path):
    spec = GridSpec.allen(100)
    # A process that made a spill folder and died without cleaning up (SIGKILL: no finalizer runs).
    code = ("import os, sys; from brainmap.pipeline.grid import GridSpec, SpillAccumulator; "
            "s = SpillAccumulator(GridSpec.allen(100), sys.argv[1]); print(s.folder, flush=True); os._exit(0)")
    left = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, capture_output=True,
                          text=True).stdout.strip()
    assert os.path.isdir(left)
    (tmp_path / "unrelated").mkdir()
    with SpillAccumulator(spec, tmp_path) as spill:
        assert not os.path.exists(left) and (tmp_path / "unrelated").is_dir()
        assert remove_stale_spill_folders(tmp_path) == 0  # its own folder is alive
        assert spill.folder.is_dir()


def test_the_gridder_spills_only_grids_too_large_to_hold(tmp_path):
    from brainmap.specimen import SectionDataSet

    dataset = SectionDataSet(id=1, plane="coronal", product="connectivity", section_thickness_um=100.0,
                             sampling_um=100.0, pixel_size_um=10.0, images=[])
    gridder = Gridder(dataset, GridSpec.allen(25), params=None, spill_dir=str(tmp_path),
                      extra_specs=(GridSpec.allen(10),))
    assert gridder.spill_planes == {GridSpec.allen(10): 3}  # 32 MB: 3 planes of 8.4 MB
    parts = gridder.accumulator().parts
    assert isinstance(parts[0], GridAccumulator) and isinstance(parts[1], SpillAccumulator)
    assert parts[1].folder.parent == tmp_path and parts[1].block_planes == 3


def test_sections_spilled_in_the_worker_add_up_as_partials_do(tmp_path):
    spec = GridSpec.allen(100)
    partials = _partials(spec, sections=4)
    with SpillAccumulator(spec, tmp_path, block_planes=4) as a, SpillAccumulator(spec, tmp_path, block_planes=4) as b:
        a.add_all(partials)
        # what a worker sends (pickled on the way), one section without the injection's quantities
        b.add_all(pickle.loads(pickle.dumps(spill_section(p, 4))) for p in partials)
        assert a.names == b.names and any(len(p.values) < len(a.names) for p in partials)
        for name in a.names:
            assert _bits(a.get(name)) == _bits(b.get(name)), name
        with pytest.raises(ValueError, match="blocks of 5"):
            b.add(spill_section(partials[0], 5))
