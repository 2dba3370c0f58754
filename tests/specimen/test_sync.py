"""Image synchronization: image <-> reference, image -> image, structure -> image."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.specimen.model import (
    NotAlignedError,
    SectionDataSet,
    SectionImage,
    nominal_tvr,
    pixels_to_reference,
)
from brainmap.specimen.sync import (
    EmptyStructureError,
    ImageSyncResult,
    ReferencePoint,
    image_to_image,
    image_to_reference,
    reference_to_image,
    structure_centroid_um,
    structure_to_image,
)
from brainmap.specimen.transforms import Affine2d, Affine3d, Alignment2d, Alignment3d

WIDTH, HEIGHT = 64, 48
ATOL = 1e-8


def rotation(rng: np.random.Generator, scale: float) -> np.ndarray:
    angle = rng.uniform(-0.3, 0.3)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale


def make_dataset(rng: np.random.Generator, plane: str, dataset_id: int, n_sections: int = 8,
                 tvr: Affine3d | None = None) -> SectionDataSet:
    """Coronal connectivity (100 um sections, numbers 0, 1, ...) or sagittal ISH (25 um sections every 200 um,
    numbers 2, 10, 18, ...), each section with its own random Alignment2d."""
    coronal = plane == "coronal"
    thickness, step, first, pixel = (100.0, 1, 0, 0.35) if coronal else (25.0, 8, 2, 1.0)
    images = [
        SectionImage(
            id=dataset_id * 1000 + k, section_number=first + k * step, channels=["signal"], width=WIDTH,
            height=HEIGHT,
            alignment2d=Alignment2d.from_tsv(Affine2d(rotation(rng, pixel * rng.uniform(0.9, 1.1)),
                                                      rng.uniform(-200, 200, 2))))
        for k in range(n_sections)
    ]
    if tvr is None:
        wobble = np.eye(3) + rng.normal(scale=0.03, size=(3, 3))
        tvr = Affine3d(nominal_tvr(plane).matrix @ wobble, rng.uniform(3000, 6000, 3))
    return SectionDataSet(id=dataset_id, plane=plane, product="connectivity" if coronal else "ish",
                          section_thickness_um=thickness, sampling_um=100.0 if coronal else 200.0,
                          pixel_size_um=pixel, images=images, alignment3d=Alignment3d.from_tvr(tvr))


def dataset_through(rng, plane: str, dataset_id: int, point_um: np.ndarray, image_index: int,
                    xy: np.ndarray) -> SectionDataSet:
    """A data set whose image ``image_index`` shows ``point_um`` (reference microns) at pixel ``xy``: its tvr
    is random, with the translation chosen so that the specimen point of that pixel lands on the point."""
    draft = make_dataset(rng, plane, dataset_id)
    image = draft.images[image_index]
    specimen = np.r_[image.alignment2d.tsv.apply(xy), image.section_number * draft.section_thickness_um]
    matrix = nominal_tvr(plane).matrix @ (np.eye(3) + rng.normal(scale=0.03, size=(3, 3)))
    draft.alignment3d = Alignment3d.from_tvr(Affine3d(matrix, point_um - matrix @ specimen))
    return draft


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_image_to_reference_and_back(rng):
    dataset = make_dataset(rng, "coronal", 1)
    image = dataset.images[3]
    point = image_to_reference(dataset, image, 12.5, 30.25)
    assert isinstance(point, ReferencePoint)
    expected = pixels_to_reference(dataset, image, [12.5, 30.25])
    np.testing.assert_allclose(point.to_array(), expected, rtol=0, atol=ATOL)
    assert point.to_dict() == {"x": point.x, "y": point.y, "z": point.z}
    assert image_to_reference(dataset, image.id, 12.5, 30.25) == point  # the image or its id

    found = reference_to_image(dataset, point)
    assert isinstance(found, ImageSyncResult)
    assert (found.section_data_set_id, found.section_image_id, found.section_number) == (1, image.id, 3)
    assert found.x == pytest.approx(12.5, abs=ATOL) and found.y == pytest.approx(30.25, abs=ATOL)
    assert set(found.to_dict()) == {"section_data_set_id", "section_image_id", "section_number", "x", "y"}
    assert reference_to_image(dataset, list(expected)) == found


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_round_trip_every_section(rng, plane):
    dataset = make_dataset(rng, plane, 2)
    for image in dataset.images:
        for x, y in rng.uniform(0, [WIDTH, HEIGHT], (5, 2)):
            found = reference_to_image(dataset, image_to_reference(dataset, image, x, y))
            assert found.section_image_id == image.id
            np.testing.assert_allclose([found.x, found.y], [x, y], rtol=0, atol=ATOL)


def test_image_to_image_between_datasets_with_different_transforms(rng):
    """A coronal source pixel maps to the known pixels of a coronal and a sagittal target through the
    reference, each target built so that its section shows the same reference point at a known pixel."""
    source = make_dataset(rng, "coronal", 10)
    src_image, src_xy = source.images[4], np.array([20.0, 33.5])
    point = pixels_to_reference(source, src_image, src_xy)
    coronal_xy, sagittal_xy = np.array([41.25, 7.0]), np.array([3.5, 44.0])
    coronal = dataset_through(rng, "coronal", 20, point, 6, coronal_xy)
    sagittal = dataset_through(rng, "sagittal", 30, point, 2, sagittal_xy)

    results = image_to_image(source, src_image, *src_xy, [coronal, sagittal, source])
    assert [r.section_data_set_id for r in results] == [20, 30, 10]
    assert [r.section_image_id for r in results] == [coronal.images[6].id, sagittal.images[2].id, src_image.id]
    assert [r.section_number for r in results] == [6, 18, 4]
    for result, xy in zip(results, [coronal_xy, sagittal_xy, src_xy]):
        np.testing.assert_allclose([result.x, result.y], xy, rtol=0, atol=ATOL)

    back = image_to_image(sagittal, sagittal.images[2].id, *sagittal_xy, [source])[0]
    assert back.section_image_id == src_image.id
    np.testing.assert_allclose([back.x, back.y], src_xy, rtol=0, atol=ATOL)


def test_reference_to_image_takes_the_nearest_usable_section(rng):
    dataset = make_dataset(rng, "coronal", 3)  # sections 0..7, 100 um apart
    image = dataset.images[5]
    specimen = np.r_[image.alignment2d.tsv.apply([10.0, 10.0]), 540.0]  # 40 um past section 5
    point = dataset.alignment3d.tvr.apply(specimen)
    assert reference_to_image(dataset, point).section_number == 5
    dataset.images[5].failed = True
    found = reference_to_image(dataset, point)
    assert found.section_number == 6  # 60 um away, section 4 is 140 um away
    np.testing.assert_allclose([found.x, found.y], dataset.images[6].alignment2d.tvs.apply(specimen[:2]), atol=ATOL)
    for other in dataset.images:
        other.failed = True
    with pytest.raises(NotAlignedError):
        reference_to_image(dataset, point)


def test_reference_to_image_wants_one_point(rng):
    with pytest.raises(ValueError, match="one"):
        reference_to_image(make_dataset(rng, "coronal", 4), np.zeros((2, 3)))


class FakeReferenceSpace:
    """A tiny annotation (AP, DV, LR) with anisotropic voxels: label 10 a box in the left hemisphere,
    label 20 a bilateral box, label 30 (a child of 20) a box in the right hemisphere."""

    resolution = (100.0, 50.0, 1000.0)  # AP 2000 um, DV 500 um, LR 12000 um (midline 5700 between 5 and 6)

    def __init__(self) -> None:
        self.annotation = np.zeros((20, 10, 12), dtype=np.uint32)
        self.annotation[2:6, 1:4, 1:3] = 10  # LR voxels 1..2: left
        self.annotation[10:15, 5:9, 2:10] = 20  # LR voxels 2..9: both sides
        self.annotation[16:18, 0:2, 8:11] = 30
        self.children = {20: [30]}

    def make_structure_mask(self, ids):
        wanted = set(ids)
        for structure in ids:
            wanted.update(self.children.get(structure, []))
        return np.isin(self.annotation, list(wanted))


def box_centroid_um(ap, dv, lr, resolution):
    """Centre of a box of voxels [a, b) per axis, microns (voxel i covers [i*res, (i+1)*res))."""
    return np.array([(a + b) / 2 * r for (a, b), r in zip((ap, dv, lr), resolution)])


def test_structure_centroid(rng):
    space = FakeReferenceSpace()
    res = space.resolution
    np.testing.assert_allclose(structure_centroid_um(space, 10), box_centroid_um((2, 6), (1, 4), (1, 3), res))
    # 20 with its child 30: the voxel-count-weighted mean of both boxes
    n20, n30 = 5 * 4 * 8, 2 * 2 * 3
    expected = (box_centroid_um((10, 15), (5, 9), (2, 10), res) * n20
                + box_centroid_um((16, 18), (0, 2), (8, 11), res) * n30) / (n20 + n30)
    np.testing.assert_allclose(structure_centroid_um(space, 20), expected)
    # one hemisphere: LR voxels 0..5 have centres < 5700 (left), 6.. are right
    np.testing.assert_allclose(structure_centroid_um(space, 30, hemisphere_id=2),
                               box_centroid_um((16, 18), (0, 2), (8, 11), res))
    left = structure_centroid_um(space, 20, hemisphere_id=1)
    np.testing.assert_allclose(left, box_centroid_um((10, 15), (5, 9), (2, 6), res))
    assert left[2] < 5700
    with pytest.raises(EmptyStructureError, match="structure 10 has no voxel in the annotation in the right"):
        structure_centroid_um(space, 10, hemisphere_id=2)
    with pytest.raises(EmptyStructureError, match="structure 99 has no voxel"):
        structure_centroid_um(space, 99)
    with pytest.raises(ValueError, match="hemisphere_id"):
        structure_centroid_um(space, 10, hemisphere_id=4)


def test_structure_to_image_lands_on_the_centroid(rng):
    space = FakeReferenceSpace()
    centroid = structure_centroid_um(space, 10)
    dataset = dataset_through(rng, "coronal", 40, centroid, 3, np.array([17.0, 29.0]))
    found = structure_to_image(dataset, 10, space)
    assert (found.section_data_set_id, found.section_image_id) == (40, dataset.images[3].id)
    np.testing.assert_allclose([found.x, found.y], [17.0, 29.0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(image_to_reference(dataset, found.section_image_id, found.x, found.y).to_array(),
                               centroid, rtol=0, atol=ATOL)

    sagittal = dataset_through(rng, "sagittal", 50, structure_centroid_um(space, 20, 1), 5, np.array([60.0, 2.0]))
    found = structure_to_image(sagittal, 20, space, hemisphere_id=1)
    assert found.section_image_id == sagittal.images[5].id
    np.testing.assert_allclose([found.x, found.y], [60.0, 2.0], rtol=0, atol=ATOL)


def test_structure_centroid_with_scalar_resolution():
    space = FakeReferenceSpace()
    space.resolution = 25.0
    np.testing.assert_allclose(structure_centroid_um(space, 10), box_centroid_um((2, 6), (1, 4), (1, 3), (25.0,) * 3))
