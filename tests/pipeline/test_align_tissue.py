"""The aligner's tissue detection on near-empty sections, and the alignment error over a virtual specimen's true
tissue.

A smooth background (a bias field, uneven illumination) thresholded above the slide has no edge: it is no tissue
(:func:`~brainmap.pipeline.align.reconstruct.edge_step`); real tissue under the same field is still found. The
field here is a Gaussian dimming of the slide (not the virtual microscope's bias model); the tissue is the real
GLTa sections of ``tests/data/glta`` (DATA_NOTICE.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from brainmap.pipeline.align import alignment_error
from brainmap.pipeline.align import reconstruct
from brainmap.pipeline.align.align import out_of_plane_shift_um
from brainmap.pipeline.align.reconstruct import SpecimenVolume, edge_step, normalize_section
from brainmap.specimen import read_dataset
from brainmap.specimen.folder import read_section_image
from brainmap.specimen.synthetic.make import make_specimen, read_truth
from brainmap.specimen.synthetic.render import OPTICS
from brainmap.specimen.synthetic.tissue_truth import true_tissue_masks
from brainmap.specimen.model import nominal_tvr
from brainmap.specimen.transforms import Affine2d, Affine3d, Alignment2d

GLTA = Path(__file__).resolve().parents[1] / "data" / "glta"
#: Gaussian dimmings of the slide (centre row, centre column, width as fractions of the image; depth).
FIELDS = [(0.3, 0.6, 0.2, 0.3), (0.5, 0.5, 0.25, 0.25), (0.2, 0.3, 0.15, 0.3), (0.4, 0.7, 0.3, 0.2)]


def _field(shape: tuple[int, int], cy: float, cx: float, width: float, depth: float) -> np.ndarray:
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    return (1.0 - depth * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))).astype(np.float32)


def _real(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.float32)[..., :3].sum(axis=2)


@pytest.mark.parametrize("noise", [0.0, 0.002])  # of the slide level (at 25-50 um working pixels slides are smooth)
@pytest.mark.parametrize("field", FIELDS)
def test_a_smooth_background_on_an_empty_slide_is_no_tissue(field, noise, monkeypatch):
    real = _real(sorted(GLTA.glob("*.png"))[3])
    slide = float(np.median(real[:8]))  # the real slide's level
    blank = slide * _field(real.shape, *field) + np.random.default_rng(0).normal(0, noise * slide, real.shape)
    values, mask = normalize_section(blank.astype(np.float32))
    assert not mask.any() and not values.any()
    # without the edge rule the dimming is taken for tissue (what the rule is for)
    monkeypatch.setattr(reconstruct, "MIN_EDGE_STEP", -np.inf)
    assert normalize_section(blank.astype(np.float32))[1].sum() > 0.2 * blank.size


def test_real_tissue_under_a_smooth_background_is_kept(monkeypatch):
    for path in sorted(GLTA.glob("*.png")):
        real = _real(path)
        _, plain = normalize_section(real)
        assert plain.sum() > 1000, path.name
        for field in FIELDS:
            dimmed = real * _field(real.shape, *field)
            values, mask = normalize_section(dimmed)
            assert edge_step(values, mask) > 3 * reconstruct.MIN_EDGE_STEP, (path.name, field)
            dice = 2.0 * (plain & mask).sum() / (plain.sum() + mask.sum())
            assert dice > 0.9, (path.name, field, dice)
            with monkeypatch.context() as m:  # the rule leaves real tissue's mask as it was
                m.setattr(reconstruct, "MIN_EDGE_STEP", -np.inf)
                assert np.array_equal(normalize_section(dimmed)[1], mask)


def _camera(level: np.ndarray, relative_sd: float, correlated: bool, rng: np.random.Generator) -> np.ndarray:
    """A camera's reading of ``level``: gamma-distributed counts of the given relative spread (shot noise is not
    Gaussian), optionally smeared over neighbours by a 0.7 pixel readout blur, spread kept (not the aligner's
    smoothing)."""
    shape = 1.0 / relative_sd ** 2
    noise = rng.gamma(shape, level / shape) - level
    if correlated:
        blurred = ndimage.gaussian_filter(noise, 0.7)
        noise = blurred * (noise.std() / blurred.std())
    return (level + noise).astype(np.float32)


@pytest.mark.parametrize("relative_sd", [0.005, 0.02, 0.05, 0.15])
@pytest.mark.parametrize("correlated", [False, True])
def test_a_noisy_empty_slide_is_no_tissue(relative_sd, correlated):
    # the real slide's level under a camera's noise: its specks above the old floor (~3 noise sigmas of the
    # smoothed image) were taken for tissue, none dropped as small beside the largest (the largest was a speck)
    real = _real(sorted(GLTA.glob("*.png"))[3])
    slide = np.full(real.shape, float(np.median(real[:8])))
    for seed in range(3):
        blank = _camera(slide, relative_sd, correlated, np.random.default_rng(seed))
        values, mask = normalize_section(blank)
        assert not mask.any() and not values.any(), (seed, int(mask.sum()))


@pytest.mark.parametrize("relative_sd", [0.005, 0.02, 0.05])
def test_real_tissue_under_a_camera_noise_keeps_its_mask(relative_sd):
    rng = np.random.default_rng(1)
    for path in sorted(GLTA.glob("*.png")):
        real = _real(path)
        _, plain = normalize_section(real)
        _, mask = normalize_section(_camera(np.maximum(real, 1.0), relative_sd, False, rng))
        dice = 2.0 * (plain & mask).sum() / (plain.sum() + mask.sum())
        assert dice > 0.9, (path.name, dice)
    noisy = _camera(np.maximum(_real(sorted(GLTA.glob("*.png"))[0]), 1.0), relative_sd, False, rng)
    mask = normalize_section(noisy)[1]
    with pytest.MonkeyPatch.context() as m:  # the seed rule leaves real tissue's mask as the floor made it
        m.setattr(reconstruct, "SEED_SIGMAS", 0.0)
        assert np.array_equal(normalize_section(noisy)[1], mask)


def test_the_smoothed_noise_is_measured_at_its_standard_deviation():
    rng = np.random.default_rng(3)
    for blur in (0.0, 0.7):
        noise = rng.normal(0.0, 1.0, (300, 400))
        if blur:
            noise = ndimage.gaussian_filter(noise, blur)
        smooth = ndimage.gaussian_filter(noise, reconstruct.SMOOTH_PX)
        ramp = np.linspace(0.0, 5.0 * smooth.std(), smooth.shape[1])[None, :]  # a bias field's slope
        sd = reconstruct._smoothed_noise_sd(smooth + ramp)
        assert sd == pytest.approx(smooth.std(), rel=0.1 if blur else 0.05)
        assert reconstruct._border_noise(smooth) < 0.5 * smooth.std()  # what the floor's ``noise`` reads


def test_the_empty_edge_section_of_a_virtual_sagittal_specimen_is_no_tissue(tmp_path):
    # the virtual microscope's lateral-most section of this draw is bare glass under its camera's noise
    from brainmap.pipeline.align.reconstruct import read_alignment_image

    folder = tmp_path / "sagittal"
    make_specimen("ish", folder, gene="Pvalb", plane="sagittal", pixel_size_um=40.0, truth_resolution_um=100,
                  seed=1928254200, progress=False)
    dataset = read_dataset(folder)
    images = [i for i in dataset.sorted_images() if not i.failed]
    first = read_alignment_image(folder, images[0], "tissue")
    assert np.percentile(first, 99.9) < 2.0 * np.median(first)  # no tissue drawn: glass and its noise
    assert not normalize_section(first)[1].any()
    for image in images[1:]:
        assert normalize_section(read_alignment_image(folder, image, "tissue"))[1].sum() > 100, image.section_number


@pytest.fixture(scope="module")
def specimen(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tissue_truth") / "ish"
    make_specimen("ish", folder, gene="Pvalb", pixel_size_um=100.0, truth_resolution_um=100, seed=5,
                  damage=True, progress=False)
    return folder


def test_true_tissue_masks_are_the_rendered_tissue(specimen):
    dataset = read_dataset(specimen)
    masks = true_tissue_masks(specimen, block_um=100.0)  # one block per pixel
    optics = OPTICS["ish"]
    agree = []
    for image in dataset.sorted_images():
        tissue = read_section_image(specimen, image, "tissue").astype(np.float64)
        seen = tissue > optics.tissue_offset + 0.15 * optics.tissue_gain
        mask = masks[image.id]
        assert mask.shape == seen.shape
        if seen.sum() + mask.sum() > 50:
            agree.append(2.0 * (seen & mask).sum() / (seen.sum() + mask.sum()))
    assert len(agree) > 20
    assert np.median(agree) > 0.9, np.round(agree, 3)


def test_alignment_error_samples_the_given_tissue(specimen):
    dataset = read_dataset(specimen)
    truth = read_truth(specimen)
    masks = true_tissue_masks(specimen, block_um=100.0)
    images = [i for i in dataset.sorted_images() if not i.failed]
    empty = images[len(images) // 2]
    masks[empty.id] = np.zeros_like(masks[empty.id])  # a section said to hold no tissue is not sampled
    exact = alignment_error(specimen, dataset, truth.alignment2d, truth.alignment3d, truth.alignment2d,
                            truth.alignment3d, tissue_masks=masks, block_um=100.0)
    assert exact.max_um < 1e-6
    assert empty.section_number not in set(exact.section_numbers.tolist())
    counts = {s: int((exact.section_numbers == s).sum()) for s in np.unique(exact.section_numbers)}
    for image in images:
        if image.id != empty.id and masks[image.id].any():
            assert counts[image.section_number] == min(200, int(masks[image.id].sum()))
    # moved by one pixel along the image x axis: every point is off by that pixel's length in the reference
    shift = Affine2d(np.eye(2), np.array([1.0, 0.0]))
    moved = {k: Alignment2d.from_tsv(a.tsv.compose(shift)) for k, a in truth.alignment2d.items()}
    off = alignment_error(specimen, dataset, moved, truth.alignment3d, truth.alignment2d, truth.alignment3d,
                          tissue_masks=masks, block_um=100.0)
    for image in images:
        expected = np.linalg.norm(truth.alignment3d.tvr.matrix[:, :2] @ truth.alignment2d[image.id].tsv.matrix[:, 0])
        assert 80.0 < expected < 120.0
        assert np.allclose(off.errors_um[off.section_numbers == image.section_number], expected, rtol=1e-6)


def test_out_of_plane_shift_measures_the_move_along_the_section_normal():
    mask = np.zeros((5, 20, 30), dtype=np.uint8)
    mask[1:4, 5:15, 10:25] = 1
    volume = SpecimenVolume(mask.astype(np.float32), mask, (0.0, 0.0, 0.0), (50.0, 50.0, 200.0))
    before = nominal_tvr("sagittal")
    normal = np.cross(before.matrix[:, 0], before.matrix[:, 1])
    in_plane = before.matrix[:, 0] / np.linalg.norm(before.matrix[:, 0])
    assert out_of_plane_shift_um(volume, before, Affine3d(before.matrix, before.translation + 150.0 * normal)) \
        == pytest.approx(150.0)
    assert out_of_plane_shift_um(volume, before, Affine3d(before.matrix, before.translation + 300.0 * in_plane)) \
        == pytest.approx(0.0, abs=1e-9)
    # a 5 degree turn about an in-plane axis through the tissue's middle tilts each half out of plane
    from scipy.spatial.transform import Rotation

    turn = Rotation.from_rotvec(np.deg2rad(5.0) * in_plane).as_matrix()
    centre = before.apply(volume.centroid_um()[None, :])[0]
    tilted = Affine3d(turn @ before.matrix, turn @ (before.translation - centre) + centre)
    rows_um = 10 * 50.0  # the tissue spans 10 rows: its halves move ~ +-sin(5 deg) x (a quarter of that), median
    assert out_of_plane_shift_um(volume, before, tilted) == pytest.approx(np.sin(np.deg2rad(5.0)) * rows_um / 4, rel=0.3)
