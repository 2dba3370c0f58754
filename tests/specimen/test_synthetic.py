"""The virtual microscope: template, geometry, truth signal, rendering and specimen folders.

Specimens here use coarse pixels (50-100 um) and 100 um truth volumes to stay fast; the full-size numbers are
in docs/virtual-microscope.md.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainmap.atlas import ReferenceSpace
from brainmap.data.tables import UnknownExperimentError, UnknownGeneError, connectivity_experiment
from brainmap.specimen import SectionDataSet, pixels_to_reference, read_dataset, read_section_image
from brainmap.specimen.transforms import Affine2d, Alignment2d
from brainmap.specimen.synthetic import make_template
from brainmap.specimen.synthetic.geometry import DamageRates, face_cut_limits, plan_specimen, random_specimen_transform
from brainmap.specimen.synthetic.make import make_specimen, read_truth
from brainmap.specimen.synthetic.render import (
    OPTICS,
    RenderSources,
    cell_signal,
    damage_masks,
    fibre_signal,
    pixel_reference_um,
    render_section,
    render_section_truth,
    sample_volume,
    tissue_volume,
)
from brainmap.specimen.synthetic.signal import expression_profile, truth_density, voxel_mean_density

EXPERIMENT = 112672974
GENE = "Pvalb"
FIBER_TRACTS, VENTRICLES, ISOCORTEX = 1009, 73, 315


# -- helpers --------------------------------------------------------------------------------------------------
def truly_aligned(folder: Path) -> SectionDataSet:
    """The data set of ``folder`` with its true transforms filled in from ``truth/``."""
    dataset = read_dataset(folder)
    truth = read_truth(folder)
    dataset.alignment3d = truth.alignment3d
    for image in dataset.images:
        image.alignment2d = truth.alignment2d[image.id]
    return dataset


def pixel_centres(image) -> np.ndarray:
    """``(height, width, 2)`` pixel centres ``(x, y)``."""
    y, x = np.mgrid[0:image.height, 0:image.width] + 0.5
    return np.stack([x, y], axis=-1)


def labels_at(space: ReferenceSpace, points_um: np.ndarray) -> np.ndarray:
    """Annotation labels at reference points (0 outside the volume)."""
    idx = np.floor(points_um / space.resolution).astype(int)
    inside = np.all((idx >= 0) & (idx < np.asarray(space.shape)), axis=-1)
    out = np.zeros(points_um.shape[:-1], dtype=np.int64)
    out[inside] = space.annotation[tuple(idx[inside].T)]
    return out


def volume_at(volume: np.ndarray, resolution: float, points_um: np.ndarray) -> np.ndarray:
    idx = np.clip(np.floor(points_um / resolution).astype(int), 0, np.asarray(volume.shape) - 1)
    return volume[tuple(np.moveaxis(idx, -1, 0))]


# -- fixtures -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conn(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("conn")
    make_specimen("connectivity", folder, experiment_id=EXPERIMENT, pixel_size_um=100.0, truth_resolution_um=100,
                  seed=3, progress=False)
    return folder


@pytest.fixture(scope="module")
def ish_coronal(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ish_coronal")
    make_specimen("ish", folder, gene=GENE, pixel_size_um=80.0, truth_resolution_um=100, seed=1, progress=False)
    return folder


@pytest.fixture(scope="module")
def ish_sagittal(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ish_sagittal")
    make_specimen("ish", folder, gene=GENE, plane="sagittal", pixel_size_um=50.0, truth_resolution_um=100, seed=2,
                  damage=False, progress=False)
    return folder


# -- template -------------------------------------------------------------------------------------------------
def test_template_shape_range_and_contrast(space100):
    template = make_template(space100)
    assert template.shape == space100.shape and template.dtype == np.float32
    assert template.min() >= 0.0 and template.max() <= 1.0
    fibre = template[space100.make_structure_mask([FIBER_TRACTS])].mean()
    cortex = template[space100.make_structure_mask([ISOCORTEX])].mean()
    ventricles = template[space100.make_structure_mask([VENTRICLES])].mean()
    outside = template[space100.annotation == 0].mean()
    assert fibre < cortex - 0.15
    assert ventricles < 0.25 and outside < 0.06
    # cell-dense layers brighter than layer 1
    granule = template[space100.make_structure_mask([632])].mean()  # DG-sg
    layer1 = template[space100.make_structure_mask([320, 656, 68])].mean()  # MOp1, MOs1, FRP1
    assert granule > cortex > layer1


def test_template_is_deterministic(space100):
    a, b = make_template(space100, seed=0), make_template(space100, seed=0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, make_template(space100, seed=1))


# -- geometry -------------------------------------------------------------------------------------------------
def test_random_specimen_transform_is_near_nominal():
    from brainmap.specimen import nominal_tvr

    tvr = random_specimen_transform(np.random.default_rng(0), "coronal", max_rotation_deg=5.0,
                                    scale_range=(0.95, 1.05), max_shift_um=300.0)
    p = nominal_tvr("coronal").matrix
    m = tvr.matrix @ p.T  # R S
    singular = np.linalg.svd(m, compute_uv=False)
    assert np.all((singular > 0.949) & (singular < 1.051))
    center = np.array([6600.0, 4000.0, 5700.0])
    moved = tvr.apply(p.T @ center)  # the specimen point nominally at the centre
    assert np.all(np.abs(moved - center) <= 300.0 + 1e-6)


def test_section_sampling(space100):
    rng = np.random.default_rng(0)
    conn = plan_specimen(space100, "connectivity", "coronal", 100.0, rng, dataset_id=1)
    numbers = [s.section_number for s in conn.sections]
    assert conn.section_thickness_um == conn.sampling_um == 100.0
    assert np.all(np.diff(numbers) == 1) and 120 <= len(numbers) <= 145
    ish = plan_specimen(space100, "ish", "coronal", 100.0, rng, dataset_id=1)
    numbers = np.array([s.section_number for s in ish.sections])
    assert (ish.section_thickness_um, ish.sampling_um) == (25.0, 200.0)
    assert np.all(np.diff(numbers) == 8) and 55 <= len(numbers) <= 70
    sag = plan_specimen(space100, "ish", "sagittal", 100.0, rng, dataset_id=1)
    assert 18 <= len(sag.sections) <= 30 and sag.hemisphere == 1


# -- folders --------------------------------------------------------------------------------------------------
def test_connectivity_folder(conn):
    dataset = read_dataset(conn)
    assert dataset.product == "connectivity" and dataset.plane == "coronal" and dataset.id == EXPERIMENT
    assert dataset.alignment3d is None and all(image.alignment2d is None for image in dataset.images)
    assert all(set(image.channels) == {"tissue", "signal"} for image in dataset.images)
    record = connectivity_experiment(EXPERIMENT)
    assert dataset.metadata["injection_coordinates_um"] == [record["injection_x"], record["injection_y"],
                                                            record["injection_z"]]
    assert dataset.metadata["injection_volume"] == record["injection_volume"]
    truth = read_truth(conn)
    assert set(truth.alignment2d) == {image.id for image in dataset.images}
    assert truth.signal_density.shape == truth.injection_fraction.shape == (132, 80, 114)
    image = dataset.images[0]
    pixels = read_section_image(conn, image, "signal")
    assert pixels.dtype == np.uint16 and pixels.max() <= OPTICS["connectivity"].max_count


@pytest.mark.parametrize("which", ["conn", "ish_coronal", "ish_sagittal"])
def test_true_transforms_put_tissue_in_the_brain(which, request, space100):
    folder = request.getfixturevalue(which)
    dataset = truly_aligned(folder)
    optics = OPTICS[dataset.product]
    hits = total = 0
    for image in dataset.sorted_images()[::4]:
        tissue = read_section_image(folder, image, "tissue").astype(float)
        is_tissue = tissue > optics.tissue_offset + 0.15 * optics.tissue_gain
        if not is_tissue.any():
            continue
        points = pixels_to_reference(dataset, image, pixel_centres(image)[is_tissue])
        hits += int(np.count_nonzero(labels_at(space100, points)))
        total += len(points)
    assert total > 1000
    assert hits / total > 0.97


def test_connectivity_signal_tracks_truth(conn, space100):
    dataset = truly_aligned(conn)
    truth = read_truth(conn)
    optics = OPTICS["connectivity"]
    threshold = optics.signal_offset + optics.background + 0.3 * optics.signal_gain
    labels, bright, density = [], [], []
    for image in dataset.images:
        points = pixels_to_reference(dataset, image, pixel_centres(image)).reshape(-1, 3)
        signal = read_section_image(conn, image, "signal").ravel()
        labels.append(labels_at(space100, points))
        bright.append(signal > threshold)
        density.append(volume_at(truth.signal_density, truth.resolution_um, points))
    labels, bright, density = map(np.concatenate, (labels, bright, density))
    ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    keep = (ids != 0) & (counts >= 30)
    fraction = np.bincount(inverse, weights=bright)[keep] / counts[keep]
    expected = np.bincount(inverse, weights=density)[keep] / counts[keep]
    assert keep.sum() > 100
    assert np.corrcoef(fraction, expected)[0, 1] > 0.9
    assert np.median(np.abs(fraction - expected)[expected > 0.05]) < 0.1


def test_injection_site_at_the_real_coordinate(conn):
    dataset = truly_aligned(conn)
    truth = read_truth(conn)
    saturated = []
    for image in dataset.images:
        signal = read_section_image(conn, image, "signal")
        at = signal >= OPTICS["connectivity"].max_count
        if at.any():
            saturated.append(pixels_to_reference(dataset, image, pixel_centres(image)[at]))
    points = np.concatenate(saturated)
    center = np.array(dataset.metadata["injection_coordinates_um"])
    assert np.linalg.norm(points.mean(axis=0) - center) < 200.0
    assert np.percentile(np.linalg.norm(points - center, axis=1), 90) < truth.info["injection_radius_um"] + 150
    # the truth volume's injection site too
    f = truth.injection_fraction
    idx = np.argwhere(f > 0)
    centroid = ((idx + 0.5) * truth.resolution_um * f[f > 0][:, None]).sum(0) / f.sum()
    assert np.linalg.norm(centroid - center) < 100.0
    assert f.sum() * truth.resolution_um ** 3 * 1e-9 == pytest.approx(dataset.metadata["injection_volume"],
                                                                         rel=0.1)


def test_connectivity_truth_meets_the_normalized_projection_volumes(conn, space100):
    truth = read_truth(conn)
    profile = truth.profile
    scale = read_dataset(conn).metadata["density_scale"]
    used = profile[(profile["status"] == "used") & (profile["projection_density"] > 0)]
    assert len(used) > 300 and (used["injection_voxels"] > 0).any()
    np.testing.assert_allclose(used["achieved_npv"], used["normalized_projection_volume"] * scale, rtol=1e-6)
    injection_volume = read_dataset(conn).metadata["injection_volume"]
    voxel_mm3 = truth.resolution_um ** 3 * 1e-9
    # Allen's projection record leaves the injection site out (AllenSDK subtracts the injection record): the
    # signal outside it, density - injection fraction per voxel, gives the NPV -- in the injected structures too.
    outside_site = truth.signal_density - truth.injection_fraction
    checked = pd.concat([used.nlargest(5, "normalized_projection_volume"), used.nlargest(2, "injection_voxels")])
    for _, row in checked.iterrows():
        mask = space100.make_structure_mask([int(row["structure_id"])])
        mask[space100.hemisphere_region(3 - int(row["hemisphere_id"]))] = False
        npv = outside_site[mask].sum() * voxel_mm3 / injection_volume
        assert npv == pytest.approx(row["normalized_projection_volume"] * scale, rel=0.02)


def test_ish_signal_tracks_truth(ish_coronal, space100):
    dataset = truly_aligned(ish_coronal)
    truth = read_truth(ish_coronal)
    optics = OPTICS["ish"]
    profile = truth.profile[truth.profile["hemisphere_id"] == 1].set_index("structure_id")
    labels, stain = [], []
    for image in dataset.images:
        points = pixels_to_reference(dataset, image, pixel_centres(image)).reshape(-1, 3)
        tissue = read_section_image(ish_coronal, image, "tissue").ravel().astype(float)
        signal = read_section_image(ish_coronal, image, "signal").ravel().astype(float)
        # the signal channel's unspecific background follows the tissue channel; remove it
        background = optics.signal_offset + (tissue - optics.tissue_offset) * optics.background / optics.tissue_gain
        labels.append(labels_at(space100, points))
        stain.append(signal - background)
    labels, stain = np.concatenate(labels), np.concatenate(stain)
    ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    keep = (ids != 0) & (counts >= 100)
    mean_stain = np.bincount(inverse, weights=stain)[keep] / counts[keep]
    fraction = profile.loc[ids[keep], "expression_fraction"].to_numpy()
    intensity = profile.loc[ids[keep], "expression_intensity"].to_numpy()
    expected = -np.log1p(-fraction) * intensity  # expected stain per area ~ cell rate x cell intensity
    assert np.corrcoef(mean_stain, expected)[0, 1] > 0.85


def test_rendered_fractions_follow_density():
    rng = np.random.default_rng(0)
    for d in (0.02, 0.1):
        density = np.full((600, 600), d, dtype=np.float32)
        fibres = fibre_signal(rng, density, None, pixel_um=2.0)
        assert (fibres > 0).mean() == pytest.approx(d, rel=0.15)
        cells = cell_signal(rng, density, np.ones_like(density), pixel_um=1.0, cell_diameter_um=12.0)
        assert (cells > 0.5).mean() == pytest.approx(d, rel=0.3)


@pytest.mark.parametrize("pixel_um", [40.0, 8.0, 4.0])
def test_cells_are_recorded_as_a_camera_integrates_light_over_each_pixel(pixel_um):
    """A camera pixel's value is the light falling on its area: a lone cell's stain per pixel is the Gaussian's
    integral over the pixel's box, here by brute force (the Gaussian evaluated at 40 x 40 points in each pixel and
    averaged), wherever in its pixel the cell lies. (The old bilinear splat, then a blur sampled at the pixels'
    centres, spread a cell on a pixel's corner over four pixels equally, even a cell far smaller than a pixel.)"""
    from brainmap.specimen.synthetic.render import _cell_signal

    diameter = 11.0
    sigma = diameter / 2.3548 / pixel_um
    area_px = np.pi * (diameter / 2) ** 2 / pixel_um ** 2
    density = np.zeros((32, 32), np.float32)
    density[16, 16] = 1 - np.exp(-0.8 * area_px)  # 0.8 cells expected in that one pixel
    sub = np.arange(32)[:, None] + (np.arange(40) + 0.5)[None, :] / 40  # pixel i spans [i, i + 1]
    lone = 0
    for seed in range(12):
        stain, centres = _cell_signal(np.random.default_rng(seed), density, np.ones_like(density), pixel_um,
                                      diameter)
        if len(centres) != 1:
            continue
        lone += 1
        (cx, cy), = centres
        gx = np.exp(-0.5 * ((sub - cx) / sigma) ** 2).mean(axis=1)
        gy = np.exp(-0.5 * ((sub - cy) / sigma) ** 2).mean(axis=1)
        shape = gy[:, None] * gx[None, :]
        np.testing.assert_allclose(stain / stain.sum(), shape / shape.sum(), atol=2e-3)
    assert lone >= 3


def test_stratified_fibres_keep_the_density_and_even_it_out(monkeypatch):
    """The fibre field stays uniform after stratification, and the fraction of signal pixels of 100 um windows
    varies far less around ``d`` than without it."""
    from brainmap.specimen.synthetic import render
    from brainmap.specimen.synthetic.render import stratify_uniform

    values = stratify_uniform(np.random.default_rng(1).random((203, 157)).astype(np.float32),
                              np.random.default_rng(2), 5)
    assert np.histogram(values, bins=10, range=(0, 1))[0] / values.size == pytest.approx(np.full(10, 0.1), abs=0.01)
    density = np.full((500, 500), 0.05, dtype=np.float32)

    def window_fractions() -> np.ndarray:
        signal = fibre_signal(np.random.default_rng(4), density, None, pixel_um=5.0) > 0
        return signal.reshape(25, 20, 25, 20).mean(axis=(1, 3))  # 100 um windows

    even = window_fractions()
    monkeypatch.setattr(render, "FIBRE_STRATA_UM", 0.0)
    plain = window_fractions()
    assert even.mean() == pytest.approx(0.05, rel=0.05) and plain.mean() == pytest.approx(0.05, rel=0.1)
    assert even.var() < plain.var() / 4


def _sources(space: ReferenceSpace, truth) -> RenderSources:
    return RenderSources(resolution_um=truth.resolution_um, tissue=tissue_volume(make_template(space), space),
                         signal_density=truth.signal_density, injection_fraction=truth.injection_fraction,
                         expression_intensity=truth.expression_intensity,
                         cell_diameter_um=truth.expression.cell_diameter_um if truth.expression else 12.0)


def test_render_section_truth_is_the_images_true_signal(space100):
    """The truth masks come with the very images render_section makes: axon pixels at the expected density,
    the injection site where the signal saturates; cells' discs where the stain is."""
    truth = truth_density("connectivity", experiment_id=EXPERIMENT, space=space100)
    sources = _sources(space100, truth)
    plan = plan_specimen(space100, "connectivity", "coronal", 10.0, np.random.default_rng(7), dataset_id=1,
                         damage=DamageRates(missing=0, failed=0, tear=1.0, bubble=0, at_least_one=False))
    record = connectivity_experiment(EXPERIMENT)
    centre = np.array([record[k] for k in ("injection_x", "injection_y", "injection_z")], dtype=float)
    sz = plan.tvr.inverse().apply(centre)[2]
    section = min(plan.sections, key=lambda s: abs(s.section_number * plan.section_thickness_um - sz))
    rendered = render_section_truth(plan, section, sources, seed=3)
    images = render_section(plan, section, sources, seed=3)
    assert all(np.array_equal(rendered.images[c], images[c]) for c in ("tissue", "signal"))
    mask, site = rendered.signal, rendered.injection
    assert mask.dtype == bool and mask.shape == images["signal"].shape
    assert site is not None and site.sum() > 100 and not (site & ~mask).any()
    assert np.mean(images["signal"][site] >= 0.9 * OPTICS["connectivity"].max_count) > 0.9
    keep, _ = damage_masks(mask.shape, section.damage)
    assert not mask[keep == 0].any() and (keep == 0).any()  # the tear holds no signal
    density = np.clip(sample_volume(sources.signal_density, sources.resolution_um,
                                    pixel_reference_um(plan, section)), 0, 1)
    axons = (keep > 0) & (sample_volume(sources.injection_fraction, sources.resolution_um,
                                        pixel_reference_um(plan, section)) == 0)
    assert mask[axons].mean() == pytest.approx(density[axons].mean(), rel=0.05)
    # ISH: the discs are where the stain is
    ish = truth_density("ish", gene=GENE, space=space100)
    plan = plan_specimen(space100, "ish", "coronal", 2.0, np.random.default_rng(8), dataset_id=1)
    small = replace(plan, width=300, height=300)
    section = replace(plan.sections[len(plan.sections) // 2], damage=[])
    ref = pixel_reference_um(plan, section)  # move the window onto the tissue: centre of the section
    rows, cols = np.nonzero(sample_volume(ish.signal_density, 100.0, ref[:, ::50, ::50]) > 0.02)
    assert rows.size
    tsv = section.alignment2d.tsv
    start = np.array([cols[rows.size // 2] * 50.0, rows[rows.size // 2] * 50.0])
    section = replace(section, alignment2d=Alignment2d.from_tsv(Affine2d(tsv.matrix, tsv.apply(start))))
    rendered = render_section_truth(small, section, _sources(space100, ish), seed=1)
    stain = rendered.images["signal"].astype(float)
    assert rendered.injection is None and rendered.signal.sum() > 50
    assert np.median(stain[rendered.signal]) > 2 * np.median(stain[~rendered.signal])


def test_voxel_mean_density_is_the_mean_of_the_rendered_field():
    rng = np.random.default_rng(3)
    volume = rng.random((6, 5, 7)).astype(np.float32)
    means = voxel_mean_density(volume, 100.0)
    # dense sampling of the field the renderer draws (trilinear, 0 beyond the volume) inside every voxel
    step = (np.arange(40) + 0.5) / 40 * 100.0
    for index in [(0, 0, 0), (2, 3, 4), (5, 4, 6), (3, 0, 2)]:
        grid = np.stack(np.meshgrid(*[i * 100.0 + step for i in index], indexing="ij")).reshape(3, -1)
        assert means[index] == pytest.approx(float(sample_volume(volume, 100.0, grid).mean()), abs=2e-3)
    coarse = voxel_mean_density(volume, 100.0, 200.0)
    assert coarse.shape == (3, 3, 4)
    assert coarse[1, 1, 1] == pytest.approx(means[2:4, 2:4, 2:4].mean())
    assert coarse[2, 2, 3] == pytest.approx(means[4:6, 4:5, 6:7].mean())  # a partial block
    with pytest.raises(ValueError, match="multiple"):
        voxel_mean_density(volume, 100.0, 150.0)


def test_no_coronal_section_is_cut_by_the_volume_face(space100):
    """The medulla runs out of the reference volume's posterior face: no coronal plane crosses that face over the
    brain's cross-section there; sagittal series are not bounded by it."""
    face = np.argwhere(space100.annotation[-1] != 0)
    end_um = space100.shape[0] * 100.0
    points = np.column_stack([np.full(len(face), end_um), (face + 0.5) * 100.0])
    for seed in range(4):
        plan = plan_specimen(space100, "connectivity", "coronal", 100.0, np.random.default_rng(seed), dataset_id=1)
        footprint = plan.tvr.inverse().apply(points)[:, :2]
        ap = footprint @ plan.tvr.matrix[0, :2] + plan.tvr.translation[0]
        last = plan.sections[-1].section_number * plan.section_thickness_um
        assert np.max(ap + plan.tvr.matrix[0, 2] * last) <= end_um + 1e-6
        beyond = (plan.sections[-1].section_number + 1) * plan.section_thickness_um
        assert np.max(ap + plan.tvr.matrix[0, 2] * beyond) > end_um  # the next one would cross it
        assert np.max(plan.tvr.apply(np.column_stack([footprint, np.full(len(footprint), last)]))[:, 0]) > 12000
        z_min, z_max = face_cut_limits(space100, plan.tvr)
        assert z_min == -np.inf and last <= z_max < beyond
    sagittal = plan_specimen(space100, "ish", "sagittal", 100.0, np.random.default_rng(0), dataset_id=1)
    assert face_cut_limits(space100, sagittal.tvr) == (-np.inf, np.inf)


def test_sagittal_ish_covers_only_the_left_hemisphere(ish_sagittal, space100):
    dataset = truly_aligned(ish_sagittal)
    assert dataset.plane == "sagittal"
    lr = []
    optics = OPTICS["ish"]
    for image in dataset.images:
        tissue = read_section_image(ish_sagittal, image, "tissue")
        is_tissue = tissue > optics.tissue_offset + 0.15 * optics.tissue_gain
        lr.append(pixels_to_reference(dataset, image, pixel_centres(image)[is_tissue])[:, 2])
    lr = np.concatenate(lr)
    assert np.mean(lr < 5700) > 0.999
    assert lr.max() > 5000 and lr.min() < 2000  # from lateral to near the midline


def test_damage(conn, ish_sagittal, space100):
    truth = read_truth(conn)
    damaged = [i for i in truth.info["images"] if i["damage"] or i["failed"]]
    assert damaged or truth.info["missing_section_numbers"]
    dataset = truly_aligned(conn)
    # tissue is gone where a tear or loss cut it
    for record in damaged:
        image = dataset.image(record["id"])
        keep, _ = damage_masks((image.height, image.width), [d for d in record["damage"] if d["kind"] != "bubble"])
        cut = keep < 0.01
        if not cut.any():
            continue
        points = pixels_to_reference(dataset, image, pixel_centres(image)[cut])
        in_brain = labels_at(space100, points) != 0
        tissue = read_section_image(conn, image, "tissue")[cut][in_brain]
        if tissue.size:
            assert np.mean(tissue < OPTICS["connectivity"].tissue_offset + 100) > 0.95
    clean = read_truth(ish_sagittal)
    assert not clean.info["missing_section_numbers"]
    assert not any(i["damage"] or i["failed"] for i in clean.info["images"])
    numbers = sorted(i["section_number"] for i in clean.info["images"])
    assert np.all(np.diff(numbers) == 8)


def test_damage_rates_none_and_forced(space100):
    plan = plan_specimen(space100, "ish", "coronal", 100.0, np.random.default_rng(5), dataset_id=2,
                         damage=DamageRates(missing=0, failed=0, tear=0, bubble=0, at_least_one=True))
    assert sum(bool(s.damage) for s in plan.sections) == 1
    failed = plan_specimen(space100, "ish", "coronal", 100.0, np.random.default_rng(5), dataset_id=2,
                           damage=DamageRates(missing=0.2, failed=0.2, tear=0, bubble=0))
    assert failed.missing_section_numbers and any(s.failed for s in failed.sections)


def test_same_seed_same_files(tmp_path, space100):
    def make(name: str, seed: int) -> Path:
        make_specimen("ish", tmp_path / name, gene=GENE, plane="sagittal", pixel_size_um=100.0,
                      truth_resolution_um=100, seed=seed, progress=False)
        return tmp_path / name

    first, again = make("first", 4), make("again", 4)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) > 40 and files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    # another seed: another pose, other sections
    plans = [plan_specimen(space100, "ish", "sagittal", 100.0, np.random.default_rng([seed, 0xB4A1]),
                           dataset_id=1) for seed in (4, 5)]
    assert not plans[0].tvr.is_close(plans[1].tvr)


def test_alignment_all_stores_the_truth(tmp_path):
    folder = tmp_path / "aligned"
    dataset = make_specimen("ish", folder, gene="pvalb", plane="sagittal", pixel_size_um=100.0,
                            truth_resolution_um=100, damage=False, progress=False, alignment="all")
    assert dataset.metadata["gene"] == "Pvalb"  # matched case-insensitively, stored as the table spells it
    dataset = read_dataset(folder)
    truth = read_truth(folder)
    assert dataset.alignment3d.tvr.is_close(truth.alignment3d.tvr)
    assert all(image.alignment2d.tsv.is_close(truth.alignment2d[image.id].tsv) for image in dataset.images)


def test_expression_profile_is_deterministic_and_sparse(tree):
    a, b = expression_profile("Pvalb", tree), expression_profile("Pvalb", tree)
    assert np.array_equal(a.fraction, b.fraction) and np.array_equal(a.intensity, b.intensity)
    assert not np.array_equal(a.fraction, expression_profile("Gad1", tree).fraction)
    assert np.mean(a.fraction < 0.01) > 0.3 and a.fraction.max() > 0.02
    assert np.all((a.intensity >= 0) & (a.intensity <= 1))


def test_truth_density_ish(space100):
    truth = truth_density("ish", gene="Gad1", space=space100)
    assert truth.signal_density.shape == space100.shape and truth.injection_fraction is None
    assert truth.signal_density[space100.annotation == 0].max() == 0
    # texture keeps each structure's mean
    direct, total = space100.direct_voxel_counts(), space100.total_voxel_counts()
    alone = direct.index[(direct > 0) & (direct == total)]  # labelled, and no labelled descendant
    profile = truth.profile.dropna(subset=["mean_density"])
    leaves = profile[profile["structure_id"].isin(alone) & (profile["expression_fraction"] < 0.4)]
    assert len(leaves) > 1000
    np.testing.assert_allclose(leaves["mean_density"], leaves["expression_fraction"], rtol=1e-3, atol=1e-6)


# -- errors ---------------------------------------------------------------------------------------------------
def test_bad_inputs(tmp_path, conn):
    with pytest.raises(UnknownExperimentError, match="not in"):
        make_specimen("connectivity", tmp_path / "a", experiment_id=1, progress=False)
    with pytest.raises(UnknownGeneError, match="no ISH experiment"):
        make_specimen("ish", tmp_path / "b", gene="NotAGene123", progress=False)
    with pytest.raises(UnknownGeneError):
        make_specimen("ish", tmp_path / "c", gene="Nothing", progress=False)  # the Nissl rows' placeholder
    with pytest.raises(ValueError, match="product"):
        make_specimen("mri", tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="experiment_id"):
        make_specimen("connectivity", tmp_path / "e", progress=False)
    with pytest.raises(ValueError, match="plane"):
        make_specimen("ish", tmp_path / "f", gene=GENE, plane="horizontal", progress=False)
    with pytest.raises(ValueError, match="pixel_size_um"):
        make_specimen("ish", tmp_path / "g", gene=GENE, pixel_size_um=-1, progress=False)
    with pytest.raises(FileExistsError):
        make_specimen("connectivity", conn, experiment_id=EXPERIMENT, progress=False)
    assert not any((tmp_path / name).exists() for name in "abcdefg")
    assert json.loads((conn / "dataset.json").read_text())["id"] == EXPERIMENT  # untouched


@pytest.mark.parametrize("volume_dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("coords_dtype", [np.float32, np.float64])
def test_sample_volume_is_map_coordinates_to_the_bit(volume_dtype, coords_dtype):
    """The compiled sampler gives scipy.ndimage.map_coordinates' float32 values bit for bit: inside, on the last
    voxel, at integer coordinates, just outside, NaN, order 0 and 1, any cval."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    shape = (23, 17, 29)
    volume = (rng.random(shape) * 200).astype(volume_dtype)
    n = 60_000
    reference = rng.uniform(-0.2, 1.2, (3, n)) * (np.array(shape, float)[:, None] * 50.0)
    edges = np.array(shape, float)[:, None] * 50.0 - 25.0  # the last voxel's centre (c = n - 1)
    reference[:, :300] = np.round(reference[:, :300] / 50.0) * 50.0 + 25.0  # voxel centres: integer c
    reference[0, 300:400], reference[1, 400:500], reference[2, 500:600] = edges[0], edges[1], edges[2]
    reference[:, 600:700] = 25.0 - rng.choice([1e-9, 1e-3, 0.0], (3, 100))  # at, and just below, c = 0
    reference[1, 700:710] = np.nan
    reference = reference.astype(coords_dtype).reshape(3, 300, 200)
    for order in (0, 1):
        for cval in (0.0, 3.5):
            ours = sample_volume(volume, 50.0, reference, order=order, cval=cval)
            coords = reference / np.float32(50.0) - np.float32(0.5)
            theirs = ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=cval,
                                             prefilter=False, output=np.float32)
            assert ours.shape == (300, 200) and ours.dtype == np.float32
            np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
