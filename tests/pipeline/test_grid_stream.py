"""The grid stage without dense whole-grid accumulators (issue 18): the sparse-until-dense GridAccumulator gives
the bits of adding every partial into dense vectors (written out here, the accumulator's former method), and
the volumes written slab by slab are byte for byte the files of the whole-volume path."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.io import read_nrrd
from brainmap.pipeline.detect import DetectionResult, NoiseModel
from brainmap.pipeline.grid import GridAccumulator, GridSpec
from brainmap.pipeline.grid.projection import (
    PROJECTION_VOLUMES, grid_projection_section, projection_volumes, write_projection_grids,
    write_projection_grids_streamed,
)
from brainmap.specimen import Affine2d, Affine3d, Alignment2d, Alignment3d, SectionDataSet, SectionImage, nominal_tvr


def _partials(spec: GridSpec, sections: int = 4, tilt_deg: float = 4.0):
    """Partial grids of tilted coronal sections: tissue over part of the image, sparse signal, an injection site
    in two sections (hand-made detections; 40 um pixels)."""
    rows, cols, pixel = 200, 285, 40.0
    theta = np.deg2rad(tilt_deg)
    tilt = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    images = [SectionImage(id=100 + n, section_number=n, channels=["tissue", "signal"], width=cols, height=rows,
                           alignment2d=Alignment2d.from_tsv(Affine2d(np.eye(2) * pixel, np.array([3.0, 7.0]))))
              for n in range(60, 60 + sections)]
    dataset = SectionDataSet(id=1, plane="coronal", product="connectivity", section_thickness_um=100.0,
                             sampling_um=100.0, pixel_size_um=pixel, images=images,
                             alignment3d=Alignment3d.from_tvr(Affine3d(tilt @ nominal_tvr("coronal").matrix,
                                                                       np.array([37.0, 11.0, 0.0]))))
    rng = np.random.default_rng(18)
    out = []
    for k, image in enumerate(images):
        tissue = np.zeros((rows, cols), bool)
        tissue[20:180, 10 + k : 260] = True
        mask = np.where(tissue & (rng.random((rows, cols)) < 0.05), rng.integers(1, 4000, (rows, cols)), 0)
        site = None
        if k in (2, 3):
            site = np.zeros((rows, cols), bool)
            site[90:110, 100:130] = True
        counts = (rng.random((rows, cols)) * 500).astype(np.uint16)
        detection = DetectionResult(mask=mask.astype(np.uint16), tissue=tissue, injection=site, signal_counts=counts,
                                    noise=NoiseModel(1.0, 0.0, 0.0), tissue_threshold=0.0)
        out.append(grid_projection_section(dataset, image, detection, spec))
    return out


def _dense(spec: GridSpec, partials) -> dict[str, np.ndarray]:
    sums: dict[str, np.ndarray] = {}
    for partial in partials:
        for name, values in partial.values.items():
            np.add.at(sums.setdefault(name, np.zeros(spec.n_voxels)), partial.index, values)
    return sums


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("dense_fraction", [0.25, 1e-2])  # 1e-2: coverage and tissue go dense part way through
def test_accumulator_gives_the_dense_bits(dense_fraction):
    spec = GridSpec.allen(50)
    partials = _partials(spec)
    reference = _dense(spec, partials)
    accumulator = GridAccumulator(spec, dense_fraction=dense_fraction).add_all(partials)
    if dense_fraction < 0.1:
        assert "covered" in accumulator.sums and "injection_pixels" in accumulator.entries
    else:
        assert not accumulator.sums  # nothing dense: a few sections touch a small part of the 50 um grid
    for name, values in reference.items():
        assert _bits(accumulator.get(name)) == _bits(values), name
        lo, hi = 12345, 2 * 10**6
        assert _bits(accumulator.get_range(name, lo, hi)) == _bits(values[lo:hi]), name
    # A tree reduction: the sum of two halves, as dense ``left += right``.
    left = GridAccumulator(spec, dense_fraction=dense_fraction).add_all(partials[:2])
    right = GridAccumulator(spec, dense_fraction=dense_fraction).add_all(partials[2:])
    merged = left.merge(right)
    halves = (_dense(spec, partials[:2]), _dense(spec, partials[2:]))
    for name in reference:
        want = halves[0].get(name, np.zeros(spec.n_voxels)) + halves[1].get(name, np.zeros(spec.n_voxels))
        assert _bits(merged.get(name)) == _bits(want), name
    assert merged.sections == len(partials)


@pytest.mark.parametrize("dense_fraction", [0.25, 1e-2, 0.0])
def test_packed_partials_added_as_they_travel_give_the_dense_bits(dense_fraction):
    """The runner adds a worker's packed partial (a bit mask of each quantity's non-zero entries and their values)
    without unpacking it: the compiled adds into dense quantities and the masked entries of sparse ones must give
    np.add.at's bits, whether a quantity is dense from the start, goes dense part way or stays sparse."""
    from brainmap.pipeline.run.runner import PackedPartial

    spec = GridSpec.allen(50)
    partials = _partials(spec)
    reference = _dense(spec, partials)
    accumulator = GridAccumulator(spec, dense_fraction=dense_fraction)
    for partial in partials:
        packed = PackedPartial.pack(partial)
        assert any(bits is not None for bits, _ in packed.values.values())
        accumulator.add_masked(packed.spec, packed.index, packed.values)
    assert ("covered" in accumulator.sums) == (dense_fraction < 0.1)
    assert accumulator.sections == len(partials)
    for name, values in reference.items():
        assert _bits(accumulator.get(name)) == _bits(values), name


def test_compiled_adds_are_numpys_and_refuse_what_does_not_fit():
    from brainmap.pipeline.grid._scatter import add_masked, add_unique
    from brainmap.pipeline.grid.resample import POPULATE_BYTES, zeroed

    rng = np.random.default_rng(6)
    index = np.sort(rng.choice(10**6, 50_000, replace=False)).astype(np.int32)
    values = rng.normal(size=index.size) * 10.0 ** rng.integers(-8, 8, index.size)
    mask = rng.random(index.size) < 0.4
    start = rng.normal(size=10**6)
    want = start.copy()
    want[index] += values
    got = start.copy()
    add_unique(got, index, values)
    assert _bits(got) == _bits(want)
    want[index[mask]] += values[mask]
    add_masked(got, index, np.packbits(mask), values[mask])
    assert _bits(got) == _bits(want)
    with pytest.raises(ValueError, match="selects"):
        add_masked(got, index, np.packbits(mask), values[mask][1:])
    with pytest.raises(IndexError):
        add_unique(np.zeros(10), np.array([3, 10]), np.ones(2))
    single = start.astype(np.float32)  # float32 volumes: each sum rounded once, as numpy's gather, add, scatter
    want32 = single.copy()
    want32[index] = want32[index] + values
    add_unique(single, index, values)
    assert _bits(single) == _bits(want32)
    with pytest.raises(ValueError, match="float64 or float32"):
        add_unique(np.zeros(10, np.int64), np.array([3]), np.ones(1))
    big = zeroed(POPULATE_BYTES // 8 + 1)  # mapped with its pages (Linux), zeros, writable
    assert big.dtype == np.float64 and big.flags.writeable and not big.any()
    big[-1] += 1.0
    assert big.sum() == 1.0
    big32 = zeroed(POPULATE_BYTES // 4 + 1, np.float32)
    assert big32.dtype == np.float32 and big32.size == POPULATE_BYTES // 4 + 1 and big32.flags.writeable
    assert not big32.any()


@pytest.mark.parametrize("resolution, tilt_deg", [(25, 4.0), (50, 4.0), (100, 4.0), (25, 0.0), (50, 30.0)])
def test_compiled_coronal_path_gives_the_numpy_paths_bits(monkeypatch, resolution, tilt_deg):
    """splat_slab makes a coronal cut whose pieces stay in their columns in compiled loops (column sums, drift
    test, pieces); forced down the numpy path (plane by plane, then per voxel) the same sections must give the same
    partials bit for bit (30 degrees: pieces drift out of their columns, both runs take the numpy path)."""
    from brainmap.pipeline.grid import resample

    spec = GridSpec.allen(resolution)
    compiled = _partials(spec, sections=2, tilt_deg=tilt_deg)
    monkeypatch.setattr(resample, "drifts_out_of_columns", lambda *args: True)  # the numpy path
    numpy_path = _partials(spec, sections=2, tilt_deg=tilt_deg)
    for mine, theirs in zip(compiled, numpy_path, strict=True):
        assert mine.index.size > 1000 and bool(np.all(np.diff(mine.index) > 0))
        assert _bits(mine.index) == _bits(theirs.index)
        assert list(mine.values) == list(theirs.values)
        for name in mine.values:
            assert _bits(mine.values[name]) == _bits(theirs.values[name]), name


@pytest.mark.parametrize("half", [0.0, 0.2, 0.5, 0.75, 1.0, 1.6])
def test_footprint_column_sums_are_numpys_expressions(half):
    """The compiled column sums give splat_slab's former numpy expressions bit for bit: footprints of every
    width (none, under half a voxel, a coarse pixel over several voxels), points on voxel edges, outside the
    grid or the window, of weight 0."""
    from brainmap.pipeline.grid._splat import footprint_column_sums
    from brainmap.pipeline.grid.resample import _footprint_pairs

    rng = np.random.default_rng(11)
    n, shape = 4000, (40, 30)
    f1, f2 = rng.uniform(-3, 43, n), rng.uniform(-3, 33, n)
    f1[:200] = np.round(f1[:200] * 4) / 4  # on voxel edges and quarters
    f2[100:300] = np.round(f2[100:300])
    w = rng.integers(0, 5, n).astype(float)  # weight 0 for a fifth
    values = np.stack([w, rng.normal(size=n) * 10.0 ** rng.integers(-6, 6, n), rng.random(n)], axis=1)
    lo, counts = (0, 0), shape  # splat_slab's window holds every column the points reach inside the grid
    if half > 0:
        l1, l2, share, copies = _footprint_pairs(f1, f2, half)
    else:
        l1, l2, share, copies = np.floor(f1).astype(np.int64), np.floor(f2).astype(np.int64), np.ones(n), 1
    w0 = np.tile(w, copies) * share
    ok = (w0 > 0) & (l1 >= 0) & (l1 < shape[0]) & (l2 >= 0) & (l2 < shape[1])
    key = np.where(ok, (l1 - lo[0]) + counts[0] * (l2 - lo[1]), 0)
    size = counts[0] * counts[1]
    want_count = np.bincount(key, weights=np.where(ok, w0, 0.0), minlength=size)
    share = np.where(ok, share, 0.0)
    count, sums, kept = footprint_column_sums(f1, f2, half, w, values, lo, counts, shape)
    assert kept == int(ok.sum()) > 1000
    assert _bits(count) == _bits(want_count)
    for q in range(values.shape[1]):
        want = np.bincount(key, weights=np.tile(values[:, q], copies) * share, minlength=size)
        assert _bits(np.ascontiguousarray(sums[:, q])) == _bits(want), q
    with pytest.raises(IndexError, match="outside the window"):  # never a write outside the table
        footprint_column_sums(f1, f2, half, w, values, (2, 1), (30, 20), shape)


def test_streamed_files_equal_the_whole_volume_files(tmp_path):
    spec = GridSpec.allen(100)
    accumulator = GridAccumulator(spec).add_all(_partials(spec))
    whole = write_projection_grids(tmp_path / "whole", projection_volumes(accumulator, 40.0), spec)
    slabbed = write_projection_grids_streamed(tmp_path / "slabbed", accumulator, 40.0, deflate="zlib",
                                              slab_bytes=132 * 80 * 8 * 7, threads=2)  # 7 planes a slab
    fast = write_projection_grids_streamed(tmp_path / "fast", accumulator, 40.0, slab_bytes=132 * 80 * 8 * 7)
    volumes = projection_volumes(accumulator, 40.0)
    for path in fast:  # ISA-L's deflate: other bytes, the same volumes
        volume, header = read_nrrd(path)
        name = path.name.removesuffix("_100.nrrd")
        assert header["encoding"] == "gzip" and _bits(volume) == _bits(volumes[name]), name
    assert sorted(p.name for p in slabbed) == sorted(p.name for p in whole) == sorted(
        f"{name}_100.nrrd" for name in PROJECTION_VOLUMES)
    for path in whole:
        assert (tmp_path / "slabbed" / path.name).read_bytes() == path.read_bytes(), path.name


def test_the_volumes_are_the_quantities_over_the_tissue_pixels_inside_the_data_mask(tmp_path):
    """Allen's volumes from the summed quantities, written out here with numpy's own expressions (not the module's
    buffers): the whole-volume path and the streamed files (slabs of 7 and 3 planes: the slab writer's two sets
    of arrays taken in turn, a short last slab) hold exactly these bits."""
    spec = GridSpec.allen(100)
    accumulator = GridAccumulator(spec, dense_fraction=1e-2).add_all(_partials(spec))
    assert accumulator.entries and accumulator.sums  # sparse and dense quantities both
    get = accumulator.get
    pixels = get("sum_pixels")
    data = get("covered") >= 0.5 * (100 / 40.0) ** 2
    has = data & (pixels > 0)
    safe = np.where(pixels > 0, pixels, 1.0)
    want = {"projection_density": np.where(has, get("sum_projection_pixels") / safe, 0.0),
            "projection_energy": np.where(has, get("sum_projection_intensity") / safe, 0.0),
            "injection_fraction": np.where(has, get("injection_pixels") / safe, 0.0),
            "injection_density": np.where(has, get("injection_projection_pixels") / safe, 0.0),
            "injection_energy": np.where(has, get("injection_projection_intensity") / safe, 0.0),
            "sum_pixels": np.where(data, pixels, 0.0),
            "sum_pixel_intensities": np.where(data, get("sum_pixel_intensities"), 0.0),
            "injection_sum_pixel_intensities": np.where(data, get("injection_sum_pixel_intensities"), 0.0),
            "data_mask": data.astype(np.uint8)}
    assert has.sum() > 1000 and want["injection_density"].any() and (want["projection_density"] > 0).sum() > 100
    volumes = projection_volumes(accumulator, 40.0)
    for planes in (7, 3):
        paths = write_projection_grids_streamed(tmp_path / str(planes), accumulator, 40.0,
                                                slab_bytes=132 * 80 * 8 * planes)
        for path in paths:
            name = path.name.removesuffix("_100.nrrd")
            expected = spec.volume(want[name], np.uint8 if name == "data_mask" else np.float64)
            assert _bits(volumes[name]) == _bits(expected), name
            assert _bits(read_nrrd(path)[0]) == _bits(expected), (planes, name)


@pytest.mark.parametrize("plane", ["coronal", "sagittal", "horizontal"])
def test_reduce_partial_sums_each_voxel_once_as_np_add_at_does(plane):
    """A section's entries summed per voxel over its window (AP planes, flat range, or np.unique): each voxel
    once, ascending, the sums np.add.at gives into a whole volume (to rounding: the order of additions differs)."""
    from brainmap.pipeline.grid.resample import PartialGrid, reduce_partial

    spec = GridSpec.allen(25)
    rng = np.random.default_rng(3)
    n = 200_000
    ijk = np.stack([rng.integers(200, 203, n), rng.integers(0, 320, n), rng.integers(0, 456, n)], axis=1)
    if plane == "sagittal":
        ijk = np.stack([rng.integers(0, 528, n), rng.integers(0, 320, n), rng.integers(100, 102, n)], axis=1)
    elif plane == "horizontal":
        ijk = np.stack([rng.integers(0, 528, n), rng.integers(150, 152, n), rng.integers(0, 456, n)], axis=1)
    index = spec.flat_index(ijk)
    values = {"a": rng.random(n), "b": rng.uniform(-1, 1, n)}
    unique, sums = reduce_partial(PartialGrid(spec, index, values))
    assert np.array_equal(unique, np.unique(index))
    for name, v in values.items():
        dense = np.zeros(spec.n_voxels)
        np.add.at(dense, index, v)
        np.testing.assert_allclose(sums[name], dense[unique], rtol=1e-12, atol=1e-12)
