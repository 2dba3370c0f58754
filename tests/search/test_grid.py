"""The 200 um grid: annotation, flat order, structure voxel sets, points, coverage, the real coverage masks."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace
from brainmap.errors import UnknownStructureError
from brainmap.search import GRID_SHAPE, GRID_VOXELS, MatrixStore, SearchInputError, coverage_voxels, read_coverage_mask
from brainmap.search.grid import expression_grid_annotation


def test_grid_annotation_is_the_25um_one_subsampled_in_a_box_one_voxel_larger(ish_grid, space25):
    assert ish_grid.shape == GRID_SHAPE == (67, 41, 58)
    assert ish_grid.n_voxels == GRID_VOXELS == 159_326
    np.testing.assert_array_equal(ish_grid.resolution_um, [200, 200, 200])
    ann = ish_grid.annotation
    np.testing.assert_array_equal(ann[:66, :40, :57], space25.annotation[::8, ::8, ::8])
    assert not ann[66].any() and not ann[:, 40].any() and not ann[:, :, 57].any()
    np.testing.assert_array_equal(expression_grid_annotation(space25.annotation), ann)
    assert ish_grid.brain_voxels().size == np.count_nonzero(ann)


def test_flat_indices_follow_allens_raw_order_ap_fastest(ish_grid):
    assert int(ish_grid.flat_index((1, 0, 0))) == 1
    assert int(ish_grid.flat_index((0, 1, 0))) == 67
    assert int(ish_grid.flat_index((0, 0, 1))) == 67 * 41
    flat = np.array([0, 1, 67, 12345, GRID_VOXELS - 1])
    np.testing.assert_array_equal(ish_grid.flat_index(ish_grid.voxel_ijk(flat)), flat)
    volume = np.arange(GRID_VOXELS, dtype=np.float64).reshape(GRID_SHAPE, order="F")
    np.testing.assert_array_equal(ish_grid.to_flat(volume), np.arange(GRID_VOXELS))
    np.testing.assert_array_equal(ish_grid.to_volume(ish_grid.to_flat(volume)), volume)
    np.testing.assert_array_equal(ish_grid.voxel_center_um(ish_grid.flat_index((3, 4, 5))), [600, 800, 1000])


def test_structure_voxels_include_descendants_and_accept_ids_acronyms_names(ish_grid, tree):
    isocortex = ish_grid.structure_voxels("Isocortex")
    np.testing.assert_array_equal(isocortex, ish_grid.structure_voxels(315))
    np.testing.assert_array_equal(isocortex, ish_grid.structure_voxels(["315"]))
    np.testing.assert_array_equal(isocortex, ish_grid.structure_voxels("isocortex"))  # case-insensitive name
    visp = ish_grid.structure_voxels("VISp")
    assert visp.size > 0 and np.isin(visp, isocortex).all()
    # A parent labels few voxels directly: the set comes from its descendants.
    direct = np.flatnonzero(ish_grid.to_flat(ish_grid.annotation) == 315)
    assert direct.size < isocortex.size / 10
    both = ish_grid.structure_voxels(["TH", "Isocortex"])
    assert both.size == np.union1d(isocortex, ish_grid.structure_voxels("TH")).size
    left = ish_grid.structure_voxels("TH", hemisphere=1)
    assert left.size > 0 and (ish_grid.voxel_ijk(left)[:, 2] < 29).all()
    assert np.all(np.diff(isocortex) > 0)


def test_unknown_or_missing_structures_are_clear_errors(ish_grid):
    with pytest.raises(UnknownStructureError, match="VISpp"):
        ish_grid.structure_voxels("VISpp")
    with pytest.raises(UnknownStructureError, match="123456789"):
        ish_grid.structure_voxels(123456789)
    with pytest.raises(SearchInputError, match="empty"):
        ish_grid.structure_voxels([])


def test_points_map_to_voxels_and_points_outside_the_brain_are_refused(ish_grid):
    voxel = ish_grid.voxel_at_point([6800, 4200, 5600])
    np.testing.assert_array_equal(ish_grid.voxel_ijk(voxel), [34, 21, 28])
    assert ish_grid.structure_id_at(voxel) > 0
    with pytest.raises(SearchInputError, match="outside the grid"):
        ish_grid.voxel_at_point([-110, 4000, 5000])
    with pytest.raises(SearchInputError, match="outside the grid"):
        ish_grid.voxel_at_point([6800, 4200, 11500])
    with pytest.raises(SearchInputError, match="outside the brain"):
        ish_grid.voxel_at_point([100, 100, 100])
    with pytest.raises(SearchInputError, match="three"):
        ish_grid.voxel_at_point([1, 2])
    with pytest.raises(SearchInputError, match="finite"):
        ish_grid.voxel_at_point([np.nan, 2, 3])


def test_coverage_counts_data_sets_per_voxel(tmp_path, ish_grid):
    columns = np.array([10, 20, 30, 40])
    store = MatrixStore.create(tmp_path / "s", columns, encoding="float32")
    nan = np.nan
    values = np.array([[1, 2, nan, nan], [1, nan, 3, nan], [1, 2, 3, nan], [1, 2, nan, 4], [1, 2, 3, 4]], float)
    store.append(values, [1, 2, 3, 4, 5], plane=["sagittal", "sagittal", "coronal", "coronal", "coronal"])
    np.testing.assert_array_equal(coverage_voxels(store), [10, 20])  # 5/5 and 4/5 >= 80 %
    np.testing.assert_array_equal(coverage_voxels(store, 0.6), [10, 20, 30])
    # coronal rows 3-5: 3/3, 3/3, 2/3, 2/3
    np.testing.assert_array_equal(coverage_voxels(store, planes="coronal"), [10, 20])
    np.testing.assert_array_equal(coverage_voxels(store, 0.6, planes=["coronal"]), [10, 20, 30, 40])
    with pytest.raises(SearchInputError, match="horizontal"):
        coverage_voxels(store, planes="horizontal")
    with pytest.raises(SearchInputError, match="fraction"):
        coverage_voxels(store, 1.5)


def test_synthetic_coverage_looks_like_allens(stores, synthetic):
    store = stores["uint8"]
    counts, n = store.column_data_counts()
    np.testing.assert_array_equal(counts, synthetic.coverage_counts(n)[store.columns])
    mixed = coverage_voxels(store)
    coronal = coverage_voxels(store, planes="coronal")
    # Allen: ~26,000 voxels covered by > 80 % of all data sets (left hemisphere: sagittal data), 58,387 coronal.
    assert 20_000 < mixed.size < 35_000
    assert 50_000 < coronal.size < 65_000
    assert (stores["uint8"].columns.size == GRID_VOXELS) and stores["coverage"].n_columns == mixed.size


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_real_coverage_masks_agree_with_our_grid_orientation(shared_data, ish_grid, plane):
    pytest.importorskip("h5py", reason="reading MINC2 (HDF5) masks needs h5py")
    mask = read_coverage_mask(shared_data(f"ish/{plane}_200um_coverage_bin0.8.mnc"))
    assert mask.shape == GRID_SHAPE
    brain = ish_grid.annotation > 0
    inside = (mask & brain).sum() / mask.sum()
    assert inside > 0.95  # 97.7 % (coronal) and 97.9 % (sagittal) of the covered voxels are in our brain
    # The same masks mis-oriented (AP or DV flipped) fit far worse: the orientation is right.
    for axis in (0, 1):
        assert (np.flip(mask, axis) & brain).sum() / mask.sum() < inside - 0.05
    lr = np.nonzero(mask)[2]
    if plane == "sagittal":  # sagittal data sets span the left hemisphere only (LR index < 29)
        assert mask.sum() > 20_000 and (lr < 29).all()
    else:  # coronal ones both hemispheres, like Allen's 58,387-voxel "coronal only" set
        assert 55_000 < mask.sum() < 65_000 and (lr < 29).mean() == pytest.approx(0.5, abs=0.05)
        iou = (mask & brain).sum() / (mask | brain).sum()
        assert iou > 0.9


def test_ish_grid_voxels_are_centred_on_multiples_of_200_um_as_the_gridding_stage_writes_them(ish_grid):
    """Voxel i of Allen's 200 um grid is centred at 200 i um (covers [200 i - 100, 200 i + 100)), the convention of
    the gridding stage's GridSpec.allen(200) and of the grid annotation (annotation_25[::8] samples 200 i um)."""
    from brainmap.pipeline.grid.resample import GridSpec

    spec = GridSpec.allen(200)
    assert spec.shape == ish_grid.shape
    np.testing.assert_allclose(ish_grid.voxel_center_um(np.arange(ish_grid.n_voxels)), spec.voxel_centres_um())
    inside = ish_grid.voxel_at_point([6899, 4299, 5699])
    np.testing.assert_array_equal(ish_grid.voxel_ijk(inside), [34, 21, 28])
    np.testing.assert_array_equal(ish_grid.voxel_ijk(ish_grid.voxel_at_point([6901, 4301, 5701])), [35, 22, 29])
    np.testing.assert_array_equal(ish_grid.voxel_ijk(ish_grid.voxel_at_point([-99, 0, 0], require_brain=False)),
                                  [0, 0, 0])
    # The point a voxel's annotation was sampled at (the 25 um voxel 8 i) lies in that voxel.
    space25 = ReferenceSpace.bundled(25)
    ijk = np.array([34, 21, 28])
    sampled_at_um = space25.voxel_to_um(ijk * 8)
    np.testing.assert_array_equal(ish_grid.voxel_ijk(ish_grid.voxel_at_point(sampled_at_um)), ijk)
