"""The alignment module on small virtual specimens: accuracy against the truth, damage, write-back, errors.

The specimens are drawn with appearances that share nothing with the aligner's template (fluorescence,
brightfield, RGB: :mod:`brainmap.specimen.synthetic.appearance`), never the template-derived "nissl" one: no
test compares the aligner with the template it was built from.

The specimens are made by the virtual microscope with its truth at 100 um (the template and densities the
images sample) and 50 um pixels, and aligned to the 100 um reference (the same resolution: the bundled coarse
annotations are subsamples of the 25 um one, ``annotation_25[::4, ::4, ::4]``, so their voxel i holds the
label at ``(4 i + 0.5) * 25`` um, 37.5 um short of its nominal centre; mixing resolutions would add that shift).

Error bounds at this resolution: the 100 um reference voxel is four times the 25 um one, and the images are
drawn from a 100 um template, so the structure edges that carry the registration are four times blurrier. We
still ask for sub-voxel accuracy: median <= 50 um (half a voxel) and 95th percentile <= 100 um (one voxel) --
the issue's 25 um targets, i.e. four times as strict relative to the voxel. (Measured on these specimens:
connectivity median 9 um, p95 22 um; sagittal ISH median 10 um, p95 65 um -- its p95 comes from the
lateral-most section, a speck of cortex a few template voxels across.) The full-size 25 um accuracy and speed
runs are in ``benchmarks/bench_align.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from brainmap.pipeline.align import (
    AlignmentError,
    AlignSettings,
    align_dataset,
    align_sections,
    alignment_error,
    run_align_cli,
)
from brainmap.pipeline.align.register import (
    Grid2d,
    Sampler,
    TemplatePyramid,
    affine_from_sitk,
    affine_to_sitk,
    block_mean,
    register_affine_2d,
    register_affine_3d,
)
from brainmap.specimen import (
    Affine2d,
    Affine3d,
    MissingFileError,
    SectionDataSet,
    SectionImage,
    read_dataset,
    write_dataset,
)
from brainmap.specimen import pixels_to_reference, reference_to_pixels
from brainmap.specimen.synthetic import read_truth
from brainmap.specimen.synthetic.geometry import DamageRates
from brainmap.specimen.synthetic.make import make_specimen

RESOLUTION = 100
MEDIAN_BOUND_UM = 50.0
P95_BOUND_UM = 100.0
#: More damage than the default rates, so that the small data set surely has missing and failed sections.
DAMAGE = DamageRates(missing=0.06, failed=0.05, tear=0.12, bubble=0.08)


# -- specimens (made once per module) ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def connectivity(tmp_path_factory) -> Path:
    """A damaged coronal connectivity specimen (~130 sections), aligned in place with align_dataset."""
    folder = tmp_path_factory.mktemp("align") / "connectivity"
    make_specimen("connectivity", folder, experiment_id=112672974, seed=7, pixel_size_um=50.0,
                  truth_resolution_um=RESOLUTION, damage=DAMAGE, progress=False, appearance="fluorescence")
    return folder


@pytest.fixture(scope="module")
def aligned_connectivity(connectivity):
    result = align_dataset(connectivity, reference_resolution_um=RESOLUTION, progress=False)
    alignment2d, alignment3d = result.alignment2d, result.alignment3d
    return connectivity, alignment2d, alignment3d


@pytest.fixture(scope="module")
def sagittal(tmp_path_factory) -> Path:
    """A sagittal ISH specimen of the left hemisphere (~25 sections every 200 um)."""
    folder = tmp_path_factory.mktemp("align") / "sagittal"
    make_specimen("ish", folder, gene="Pvalb", plane="sagittal", seed=11, pixel_size_um=50.0,
                  truth_resolution_um=RESOLUTION, damage=True, progress=False, appearance="brightfield")
    return folder


def _error(folder: Path, alignment2d, alignment3d):
    dataset = read_dataset(folder)
    truth = read_truth(folder)
    return alignment_error(folder, dataset, alignment2d, alignment3d, truth.alignment2d, truth.alignment3d)


# -- accuracy ---------------------------------------------------------------------------------------------------
def test_connectivity_coronal_is_accurate_despite_damage(aligned_connectivity):
    folder, alignment2d, alignment3d = aligned_connectivity
    truth = read_truth(folder)
    dataset = read_dataset(folder)
    assert truth.info["missing_section_numbers"], "the specimen should have missing sections"
    failed = [image for image in dataset.images if image.failed]
    assert failed, "the specimen should have failed sections"
    assert set(alignment2d) == {image.id for image in dataset.images}  # failed ones get an alignment too
    error = _error(folder, alignment2d, alignment3d)
    assert error.median_um <= MEDIAN_BOUND_UM, error.summary()
    assert error.p95_um <= P95_BOUND_UM, error.summary()
    # sections with tears or bubbles are aligned as well as the rest
    torn = {i["section_number"] for i in truth.info["images"]
            if not i["failed"] and any(d["kind"] in ("tear", "bubble") for d in i["damage"])}
    assert torn
    per_section = error.per_section_median_um()
    assert all(per_section[n] <= P95_BOUND_UM for n in torn if n in per_section), \
        {n: round(per_section[n]) for n in torn if n in per_section}


def test_sagittal_half_brain_lands_on_its_hemisphere_and_is_accurate(sagittal, capsys):
    result = run_align_cli(sagittal, reference_resolution_um=RESOLUTION)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "sections aligned" in printed[0] and str(sagittal) in printed[0]
    dataset = read_dataset(sagittal)
    assert dataset.alignment3d is not None and dataset.alignment3d.tvr.is_close(result.alignment3d.tvr)
    error = _error(sagittal, result.alignment2d, result.alignment3d)
    assert error.median_um <= MEDIAN_BOUND_UM, error.summary()
    assert error.p95_um <= P95_BOUND_UM, error.summary()
    # the cut hemisphere is the left one: the image centres map to LR < 5700 um
    image = dataset.sorted_images()[len(dataset.images) // 2]
    centre = np.array([image.width / 2, image.height / 2])
    sxy = image.alignment2d.tsv.apply(centre)
    point = dataset.alignment3d.tvr.apply(np.r_[sxy, dataset.section_position_um(image.section_number)])
    assert point[2] < 5700.0


def test_non_linear_stage_recovers_a_warp_and_every_mapping_goes_through_it(tmp_path):
    folder = tmp_path / "warped"
    make_specimen("ish", folder, gene="Pvalb", seed=3, pixel_size_um=50.0, truth_resolution_um=RESOLUTION,
                  damage=DamageRates(fold=0.05), progress=False, appearance="rgb", warp=(250.0, 300.0))
    dataset = read_dataset(folder)
    truth = read_truth(folder)
    affine = align_sections(folder, dataset, AlignSettings(reference_resolution_um=RESOLUTION, nonlinear=False))
    result = align_dataset(folder, reference_resolution_um=RESOLUTION, progress=False)
    alignment2d, alignment3d = result.alignment2d, result.alignment3d
    stored = read_dataset(folder)
    assert stored.deformation is not None and (folder / "deformation.nrrd").exists()
    both = dict(true_deformation=truth.deformation)
    before = alignment_error(folder, dataset, affine.alignment2d, affine.alignment3d, truth.alignment2d,
                             truth.alignment3d, **both)
    after = alignment_error(folder, dataset, alignment2d, alignment3d, truth.alignment2d, truth.alignment3d,
                            estimated_deformation=stored.deformation, **both)
    assert after.median_um < before.median_um, (before.summary(), after.summary())
    # image -> reference goes through the deformation, and reference -> image undoes it
    image = stored.usable_images()[len(stored.usable_images()) // 2]
    xy = np.array([[image.width / 2, image.height / 2], [image.width / 3, image.height / 2]])
    affine_only = alignment3d.tvr.apply(np.c_[image.alignment2d.tsv.apply(xy),
                                              np.full(2, stored.section_position_um(image.section_number))])
    points = pixels_to_reference(stored, image, xy)
    assert np.allclose(points, stored.deformation.apply(affine_only))
    back = reference_to_pixels(stored, points)
    assert np.all(back.section_image_id == image.id) and np.allclose(back.xy, xy, atol=0.05)
    # aligning again without the non-linear stage removes the stale field
    from brainmap.specimen import update_alignment

    update_alignment(folder, affine.alignment2d, affine.alignment3d, None)
    assert not (folder / "deformation.nrrd").exists() and read_dataset(folder).deformation is None


# -- dataset.json ------------------------------------------------------------------------------------------------
def test_alignments_are_written_back_and_read(aligned_connectivity):
    folder, alignment2d, alignment3d = aligned_connectivity
    dataset = read_dataset(folder)
    assert dataset.alignment3d is not None
    assert dataset.alignment3d.tvr.is_close(alignment3d.tvr) and dataset.alignment3d.trv.is_close(alignment3d.trv)
    for image in dataset.images:
        assert image.alignment2d is not None
        assert image.alignment2d.tsv.is_close(alignment2d[image.id].tsv)
        assert image.alignment2d.tvs.is_close(alignment2d[image.id].tvs)
    # the stored transforms map the specimen into the brain: image centres land inside the reference volume
    for image in dataset.usable_images()[::10]:
        sxy = image.alignment2d.tsv.apply([image.width / 2, image.height / 2])
        ap, dv, lr = dataset.alignment3d.tvr.apply(np.r_[sxy, dataset.section_position_um(image.section_number)])
        assert 0 < ap < 13200 and 0 < dv < 8000 and 0 < lr < 11400


# -- failures ----------------------------------------------------------------------------------------------------
def test_missing_image_file_fails_clearly(sagittal, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sagittal, copy)
    dataset = read_dataset(copy)
    victim = dataset.sorted_images()[3]
    (copy / "images" / victim.channels["tissue"]).unlink()
    with pytest.raises(MissingFileError, match=victim.channels["tissue"]):
        align_dataset(copy, reference_resolution_um=RESOLUTION, progress=False)
    with pytest.raises(MissingFileError, match="no such data set folder"):
        align_dataset(tmp_path / "nowhere", reference_resolution_um=RESOLUTION, progress=False)


def test_blank_images_fail_clearly(tmp_path):
    images = [SectionImage(id=10 + k, section_number=k, channels=["tissue"], width=40, height=30)
              for k in range(3)]
    dataset = SectionDataSet(id=5, plane="coronal", product="connectivity", section_thickness_um=100.0,
                             sampling_um=100.0, pixel_size_um=50.0, images=images)
    rng = np.random.default_rng(0)
    write_dataset(tmp_path, dataset, [rng.integers(100, 110, (30, 40)).astype(np.uint16) for _ in images])
    with pytest.raises(AlignmentError, match="no section image shows tissue"):
        align_sections(tmp_path, settings=AlignSettings(reference_resolution_um=RESOLUTION))


# -- building blocks ---------------------------------------------------------------------------------------------
def test_sitk_affine_round_trip_with_centre():
    affine = Affine3d(np.array([[0.1, 0.2, 1.0], [0.0, 1.05, 0.1], [0.98, 0.0, 0.05]]), np.array([10.0, -5.0, 3.0]))
    transform = affine_to_sitk(affine, center=(1000.0, 2000.0, 3000.0))
    point = np.array([123.0, 456.0, 789.0])
    assert np.allclose(transform.TransformPoint(tuple(point)), affine.apply(point))
    assert affine_from_sitk(transform, 3).is_close(affine)


def test_block_mean_keeps_pixel_geometry():
    image = np.arange(7 * 9, dtype=np.float32).reshape(7, 9)
    small = block_mean(image, 3)
    assert small.shape == (2, 3)  # incomplete blocks dropped
    assert small[1, 2] == image[3:6, 6:9].mean()


def _smooth_sampler(seed: int, points: int) -> tuple[np.ndarray, Sampler, np.ndarray]:
    """A smooth random 50 um volume, its Sampler and random points inside it (um)."""
    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.random((20, 16, 18)), 2).astype(np.float32)
    sampler = Sampler(volume, origin=(25.0, 25.0, 25.0), spacing=50.0, reverse=False)
    return volume, sampler, rng.uniform(30, 780, size=(3, points))


def test_sampler_matches_map_coordinates():
    volume, sampler, points = _smooth_sampler(1, 200)
    values, inside, gradient = sampler(points)
    expected = ndimage.map_coordinates(volume, (points - 25.0) / 50.0, order=1)
    assert np.allclose(values[inside > 0], expected[inside > 0], atol=1e-5)
    assert gradient.shape == (3, 200)


@pytest.mark.parametrize("shape, spacing, reverse", [((20, 16, 18), (50.0, 50.0, 50.0), False),
                                                     ((9, 5, 7), (30.0, 70.0, 50.0), False),
                                                     ((31, 23), (40.0, 25.0), True), ((2, 3), (1.0, 3.0), True)])
def test_sampler_rows_are_numpys_gradient_bit_for_bit(shape, spacing, reverse):
    """The Sampler's packed rows (value + gradient along the physical axes) are numpy's own np.gradient stacked,
    to the bit, although written straight into the rows."""
    values = np.random.default_rng(4).random(shape).astype(np.float32) * np.float32(3.7)
    physical = spacing[::-1] if reverse else spacing  # Sampler takes the physical spacing
    sampler = Sampler(values, origin=(0.0,) * len(shape), spacing=physical, reverse=reverse)
    gradients = np.gradient(values, *spacing)
    gradients = list(gradients) if isinstance(gradients, (list, tuple)) else [gradients]
    expected = np.stack([values, *(gradients[::-1] if reverse else gradients)], axis=-1).reshape(-1, len(shape) + 1)
    assert sampler.packed is not None and sampler.packed.dtype == np.float32
    assert np.array_equal(sampler.packed.view(np.uint32), expected.view(np.uint32))


def test_sampler_gradient_interpolates_numpys_gradient():
    volume, sampler, points = _smooth_sampler(5, 500)
    values, inside, gradient = sampler(points)
    only_values, only_inside = sampler(points, gradient=False)
    assert np.array_equal(values, only_values) and np.array_equal(inside, only_inside)
    for axis, g in enumerate(np.gradient(volume, 50.0)):
        expected = ndimage.map_coordinates(g, (points - 25.0) / 50.0, order=1)
        assert np.allclose(gradient[axis][inside > 0], expected[inside > 0], atol=1e-6)

@pytest.mark.parametrize("angle, scale, shift", [(0.0, 1.0, (0.0, 0.0)), (0.3, 1.07, (-130.0, 85.0)),
                                                  (-1.2, 0.93, (410.0, -260.0))])
def test_section_and_mask_placed_together_match_ndimage(angle, scale, shift):
    """build_volume's one-pass placement of a section and its mask gives what scipy's affine_transform (order 1,
    constant mode) gives for each, edges and the image's outside included."""
    from brainmap.pipeline.align.reconstruct import (SectionStack, SpecimenGrid, place_section,
                                                     place_section_and_mask)

    rng = np.random.default_rng(6)
    image = ndimage.gaussian_filter(rng.random((37, 45)), 1.5).astype(np.float32)
    mask = image > np.median(image)
    stack = SectionStack(images=[image], masks=[mask], factor=2, pixel_size_um=25.0, section_images=[],
                         sz_um=np.zeros(1), failed=np.zeros(1, dtype=bool))
    c, s = np.cos(angle), np.sin(angle)
    transform = Affine2d(scale * np.array([[c, -s], [s, c]]), np.array(shift))
    grid = SpecimenGrid((-1400.0, -900.0), 50.0, (61, 70))  # wider than the placed image on every side
    values, tissue = place_section_and_mask(stack, 0, transform, grid)
    expected_values = place_section(stack, 0, transform, grid)
    expected_tissue = place_section(stack, 0, transform, grid, mask=True)
    assert values.dtype == tissue.dtype == np.float32 and values.shape == grid.shape
    assert np.count_nonzero(expected_values) > 100 and np.count_nonzero(expected_values == 0) > 100
    assert np.allclose(values, expected_values, atol=2e-6)
    assert np.allclose(tissue, expected_tissue, atol=2e-6)
    assert np.array_equal(values == 0, expected_values == 0)


def test_affine_2d_registration_recovers_a_known_transform():
    """A smooth random image seen through a known affine (rotation 4 deg, scale 1.03, shift (120, -80) um)."""
    rng = np.random.default_rng(2)
    moving_values = ndimage.gaussian_filter(rng.random((200, 240)), 4).astype(np.float32)
    moving = Grid2d(moving_values, origin=(0.0, 0.0), spacing=20.0)
    angle = np.deg2rad(4.0)
    truth = Affine2d(1.03 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]),
                     np.array([120.0, -80.0]))
    rows, cols = np.mgrid[0:150, 0:180]
    fixed_points = np.stack([cols * 20.0 + 600.0, rows * 20.0 + 500.0], axis=-1)
    target = truth.apply(fixed_points) / 20.0
    fixed_values = ndimage.map_coordinates(moving_values, [target[..., 1], target[..., 0]], order=1)
    fixed = Grid2d(fixed_values.astype(np.float32), origin=(600.0, 500.0), spacing=20.0)
    start = Affine2d(np.eye(2), np.zeros(2))
    result = register_affine_2d(fixed, np.ones(fixed_values.shape, bool), moving, start,
                                sigmas_um=(100.0, 40.0, 0.0))
    error = np.abs(result.transform.apply(fixed_points.reshape(-1, 2)) - truth.apply(fixed_points.reshape(-1, 2)))
    assert error.max() < 2.0  # microns (a tenth of a pixel)
    assert -result.metric > 0.999 and result.metric < result.start_metric



def test_affine_3d_without_iterations_keeps_the_start_and_measures_it():
    """What the aligner does for a half brain (``HALF_BRAIN_SHAPE_ONLY``): the 3-D transform stays the shape
    stage's, and its correlation with the model is measured on the same voxels as a registration's would be."""
    rng = np.random.default_rng(3)
    template = ndimage.gaussian_filter(rng.random((24, 20, 22)), 2).astype(np.float32)
    pyramid = TemplatePyramid(template, 50.0)
    start = Affine3d(np.diag([1.02, 0.98, 1.0]), np.array([130.0, 90.0, 110.0]))
    slots, rows, cols = np.mgrid[0:8, 0:10, 0:12]
    specimen = np.stack([cols * 50.0, rows * 50.0, slots * 60.0], axis=-1).reshape(-1, 3)
    values = rng.random(specimen.shape[0]).astype(np.float32).reshape(8, 10, 12)  # not the template: r < 1
    result = register_affine_3d(values, np.ones(values.shape, np.uint8), (0.0, 0.0, 0.0), (50.0, 50.0, 60.0),
                                pyramid, start, sigmas_um=(0.0,), template_um=50.0, iterations=0)
    assert result.transform.is_close(start)
    sampled = ndimage.map_coordinates(template, (start.apply(specimen).T - 25.0) / 50.0, order=1)
    assert -result.metric == pytest.approx(np.corrcoef(values.ravel(), sampled)[0, 1], abs=1e-6)
    moved = register_affine_3d(values, np.ones(values.shape, np.uint8), (0.0, 0.0, 0.0), (50.0, 50.0, 60.0),
                               pyramid, start, sigmas_um=(0.0,), template_um=50.0, iterations=5)
    assert moved.metric < result.metric  # iterations do move it (the check above is not vacuous)
