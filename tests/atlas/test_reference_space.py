"""The reference space on the real CCF 2017 annotation: shapes, labels, counts, masks, hemispheres, slices."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace
from brainmap.atlas.bundled import ANNOTATION_SHAPES, MIDLINE_LR_UM
from brainmap.atlas.reference_space import midline_index
from brainmap.errors import UnknownStructureError

MAJOR_DIVISIONS = [315, 698, 1089, 703, 477, 803, 549, 1097, 313, 771, 354, 512]


def test_shapes_and_resolution_ladder(space25, space50, space100):
    for space, res in ((space25, 25), (space50, 50), (space100, 100)):
        assert space.shape == ANNOTATION_SHAPES[res]
        np.testing.assert_array_equal(space.resolution, [res] * 3)
        np.testing.assert_array_equal(space.extent_um, [13200, 8000, 11400])
    # Allen's coarser files are the 25 um one subsampled; downsample() reproduces them exactly.
    np.testing.assert_array_equal(space100.annotation, space25.annotation[::4, ::4, ::4])
    np.testing.assert_array_equal(space50.annotation, space25.annotation[::2, ::2, ::2])
    np.testing.assert_array_equal(space25.downsample(100).annotation, space100.annotation)
    np.testing.assert_array_equal(space25.downsample(50).annotation, space50.annotation)


def test_label_sets_and_every_label_in_the_ontology(space25, space50, space100, tree):
    for space, n_labels in ((space50, 671), (space100, 670)):
        labels, counts = np.unique(space.annotation, return_counts=True)
        assert labels.size == n_labels  # the data README's counts, 0 included
        assert labels[0] == 0
        assert set(labels[1:].tolist()) <= set(tree.node_ids())
        direct = space.direct_voxel_counts()
        assert direct[direct > 0].to_dict() == dict(zip(labels[1:].tolist(), counts[1:].tolist()))
    # At 25 um np.unique would sort 77 M voxels; the label index checks every voxel's label against the
    # ontology as it is built, so its non-zero direct counts are the label set.
    direct = space25.direct_voxel_counts()
    assert int((direct > 0).sum()) == 671
    assert direct.sum() == np.count_nonzero(space25.annotation)


def test_root_and_major_divisions_agree_across_resolutions(space25, space50, space100):
    volumes = {}
    for space in (space25, space50, space100):
        voxel_mm3 = float(np.prod(space.resolution)) * 1e-9
        volumes[int(space.resolution[0])] = space.total_voxel_counts() * voxel_mm3
    assert volumes[25].loc[997] == pytest.approx(506.05, abs=0.01)  # the whole brain, mm3
    for sid in [997] + MAJOR_DIVISIONS:
        # Subsampling moves each boundary by under a coarse voxel; on these large structures that is well
        # under 1 % (root) and 2 % (divisions) of the volume.
        tolerance = 0.01 if sid == 997 else 0.02
        assert volumes[50].loc[sid] == pytest.approx(volumes[25].loc[sid], rel=tolerance)
        assert volumes[100].loc[sid] == pytest.approx(volumes[25].loc[sid], rel=tolerance)
    # The major divisions tile most of the brain (the rest is fibre tracts, ventricles and unassigned grey).
    assert 0.8 < sum(volumes[25].loc[s] for s in MAJOR_DIVISIONS) / volumes[25].loc[997] < 1.0


def test_root_mask_is_every_labelled_voxel(space25):
    assert np.array_equal(space25.make_structure_mask([997]), space25.annotation != 0)


def test_structure_mask_direct_only_and_union(space100, tree):
    ann = space100.annotation
    visp = tree.get_structures_by_acronym(["VISp"])[0]["id"]
    layers = tree.child_ids([visp])[0]
    np.testing.assert_array_equal(space100.make_structure_mask([visp]), np.isin(ann, [visp] + layers))
    assert not space100.make_structure_mask([visp], direct_only=True).any()  # VISp is labelled only by its layers
    union = space100.make_structure_mask([315, 1089])
    np.testing.assert_array_equal(union, space100.make_structure_mask([315]) | space100.make_structure_mask([1089]))
    masks = dict(space100.many_structure_masks([315, 1089]))
    assert set(masks) == {315, 1089} and masks[315].sum() == space100.total_voxel_counts().loc[315]
    with pytest.raises(UnknownStructureError, match="123456789"):
        space100.make_structure_mask([123456789])


def test_hemispheres_split_at_the_5700_um_midline(space25, space100):
    for space in (space25, space100):
        mid = midline_index(space.shape[2])
        assert mid * space.resolution[2] == MIDLINE_LR_UM
        left, right = space.hemisphere_mask(1), space.hemisphere_mask(2)
        assert not (left & right).any() and (left | right).all()
        assert left[:, :, mid - 1].all() and right[:, :, mid].all()
        both = space.total_voxel_counts(3)
        np.testing.assert_array_equal(space.total_voxel_counts(1) + space.total_voxel_counts(2), both)
    counts = space25.total_voxel_counts()
    assert counts.loc[997] == np.count_nonzero(space25.annotation)
    # The CCF is symmetric to within a fraction of a percent per hemisphere.
    assert space25.total_voxel_counts(1).loc[997] == pytest.approx(counts.loc[997] / 2, rel=0.01)
    with pytest.raises(ValueError, match="hemisphere_id"):
        space25.hemisphere_mask(4)


def test_voxel_and_micron_conversions(space25):
    voxels = np.array([[0, 0, 0], [527, 319, 455], [100, 200, 228]])
    centres = space25.voxel_to_um(voxels)
    np.testing.assert_allclose(centres[0], [12.5, 12.5, 12.5])
    np.testing.assert_array_equal(space25.um_to_voxel(centres), voxels)
    np.testing.assert_array_equal(space25.um_to_voxel(space25.voxel_to_um(voxels, center=False)), voxels)
    with pytest.raises(ValueError, match="outside"):
        space25.um_to_voxel([[13200.0, 0.0, 0.0]], check_bounds=True)


def test_slice_images_are_coloured_by_the_ontology(space25, tree):
    coronal = space25.get_slice_image("coronal", 7000)
    assert coronal.shape == (320, 456, 3) and coronal.dtype == np.uint8
    sagittal = space25.get_slice_image(2, 4000)
    assert sagittal.shape == (320, 528, 3)
    horizontal = space25.get_slice_image("horizontal", 3000)
    assert horizontal.shape == (528, 456, 3)
    # Each pixel has its structure's colour; unassigned pixels are black.
    labels = space25.annotation[280, :, :]
    colours = tree.get_colormap()
    j, k = np.argwhere(labels != 0)[1234]
    assert coronal[j, k].tolist() == list(colours[int(labels[j, k])])
    assert (coronal[labels == 0] == 0).all()
    with pytest.raises(ValueError, match="outside the volume"):
        space25.get_slice_image("coronal", 20000)


def test_remove_unassigned_keeps_only_structures_with_voxels(space100):
    space = ReferenceSpace(space100.structure_tree, space100.annotation, 100)
    tree = space.remove_unassigned()
    totals = space100.total_voxel_counts()
    assert set(tree.node_ids()) == set(totals.index[totals > 0].tolist())
    assert len(tree) < len(space100.structure_tree)
    # The space keeps working on the smaller tree.
    np.testing.assert_array_equal(space.make_structure_mask([997]), space100.annotation != 0)


def test_structure_volume_and_centroid(space25):
    assert space25.structure_volume_mm3(997) == pytest.approx(506.05, abs=0.01)
    centroid = space25.structure_centroid_um(997)
    # Near the midline and the middle of the brain's AP extent.
    assert abs(centroid[2] - MIDLINE_LR_UM) < 50
    assert 5000 < centroid[0] < 8000
    left_centroid = space25.structure_centroid_um(385)  # VISp: both hemispheres, so on the midline too
    assert abs(left_centroid[2] - MIDLINE_LR_UM) < 100 and left_centroid[0] > 8500  # posterior cortex


def test_from_files_and_bad_resolution(tmp_path):
    from brainmap.atlas import bundled

    space = ReferenceSpace.from_files(bundled.annotation_path(100))
    np.testing.assert_array_equal(space.resolution, [100, 100, 100])
    with pytest.raises(ValueError, match="bundled resolutions"):
        ReferenceSpace.bundled(10)
    with pytest.raises(ValueError, match="resolution"):
        ReferenceSpace(space.structure_tree, space.annotation, [-1])
