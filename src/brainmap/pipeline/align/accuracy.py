"""How far estimated alignments are from the true ones, in reference microns.

The metric (the one the alignment issue states): sample pixels in tissue on every usable section (not
failed), map each to the reference with the TRUE Alignment2d + Alignment3d and with the ESTIMATED ones
(``reference = tvr(tsv(x, y), section_number * section_thickness_um)``); the error of a pixel is the Euclidean
distance between the two reference points, in microns. Only the composition matters: the specimen volume is
an arbitrary intermediate frame, so estimated ``tsv``/``tvr`` need not equal the true ones separately.

Tissue is found on the alignment channel (``tissue`` for the virtual microscope) block-averaged to ~50 um
(the same normalization and Otsu-based mask as the aligner); the sampled points are uniform within the
tissue blocks, ``points_per_section`` per section (at most one per block), from a seeded generator: the
measurement is reproducible. Given masks of the true tissue (a virtual specimen's,
:func:`brainmap.specimen.synthetic.tissue_truth.true_tissue_masks`), the points are sampled in those instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from brainmap.specimen.deformation import DeformationField
from brainmap.specimen.model import SectionDataSet
from brainmap.specimen.transforms import Alignment2d, Alignment3d

from brainmap.pipeline.align.reconstruct import choose_channel, normalize_section, read_alignment_image
from brainmap.pipeline.align.register import block_mean

__all__ = ["AlignmentErrorStats", "alignment_error", "block_pixels", "reference_points", "tissue_pixels"]


@dataclass(frozen=True)
class AlignmentErrorStats:
    """The distribution of the point errors, microns.

    Attributes:
        errors_um: every sampled point's error, microns.
        normal_errors_um: the error's component along the normal of the true section planes (out of plane:
            what the 3-D registration gets wrong), absolute, microns; the rest is in-plane.
        section_numbers: the section of every point.
        median_um, p95_um, max_um, mean_um: statistics of ``errors_um``.
        n_sections: sections sampled.
    """

    errors_um: np.ndarray
    normal_errors_um: np.ndarray
    section_numbers: np.ndarray
    n_sections: int

    @property
    def median_um(self) -> float:
        return float(np.median(self.errors_um))

    @property
    def p95_um(self) -> float:
        return float(np.percentile(self.errors_um, 95))

    @property
    def max_um(self) -> float:
        return float(self.errors_um.max())

    @property
    def mean_um(self) -> float:
        return float(self.errors_um.mean())

    def per_section_median_um(self) -> dict[int, float]:
        """Median error of each sampled section, microns."""
        return {int(s): float(np.median(self.errors_um[self.section_numbers == s]))
                for s in np.unique(self.section_numbers)}

    @property
    def in_plane_errors_um(self) -> np.ndarray:
        """The error's component within the true section plane, microns."""
        return np.sqrt(np.maximum(self.errors_um ** 2 - self.normal_errors_um ** 2, 0.0))

    def summary(self) -> str:
        return (f"error over {self.errors_um.size} points on {self.n_sections} sections: median "
                f"{self.median_um:.1f} um, p95 {self.p95_um:.1f} um, max {self.max_um:.1f} um (out of plane: median "
                f"{np.median(self.normal_errors_um):.1f}, p95 {np.percentile(self.normal_errors_um, 95):.1f}; "
                f"in plane: median {np.median(self.in_plane_errors_um):.1f}, "
                f"p95 {np.percentile(self.in_plane_errors_um, 95):.1f})")


def tissue_pixels(pixels: np.ndarray, pixel_size_um: float, count: int, rng: np.random.Generator,
                  block_um: float = 50.0) -> np.ndarray:
    """``(n, 2)`` random pixel positions ``(x, y)`` (continuous, pixels) in the tissue of one image: ``count``
    tissue blocks of ~``block_um`` chosen without replacement (all of them if fewer), one uniform point in
    each."""
    factor = max(1, int(round(block_um / pixel_size_um)))
    _, mask = normalize_section(block_mean(pixels, factor))
    return block_pixels(mask, factor, count, rng)


def block_pixels(mask: np.ndarray, factor: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 2)`` random pixel positions ``(x, y)`` in the blocks of ``mask`` (block ``[R, C]`` covers pixels
    ``[R f, (R + 1) f) x [C f, (C + 1) f)``, ``f = factor``): ``count`` blocks chosen without replacement (all of
    them if fewer), one uniform point in each."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return np.zeros((0, 2))
    pick = rng.choice(rows.size, size=min(count, rows.size), replace=False)
    offsets = rng.uniform(0.0, factor, size=(pick.size, 2))
    return np.stack([cols[pick] * factor, rows[pick] * factor], axis=1).astype(np.float64) + offsets


def reference_points(dataset: SectionDataSet, section_number: int, xy: np.ndarray, alignment2d: Alignment2d,
                     alignment3d: Alignment3d, deformation: DeformationField | None = None) -> np.ndarray:
    """Pixels ``(n, 2)`` of the section at ``section_number`` -> reference ``(n, 3)`` (AP, DV, LR) um through
    the given transforms (and the non-linear ``deformation`` after the affine, if any)."""
    sxy = alignment2d.tsv.apply(xy)
    sz = np.full((xy.shape[0], 1), dataset.section_position_um(section_number))
    points = alignment3d.tvr.apply(np.concatenate([sxy, sz], axis=1))
    return deformation.apply(points) if deformation is not None else points


def alignment_error(folder: str | os.PathLike[str], dataset: SectionDataSet,
                    estimated2d: Mapping[int, Alignment2d], estimated3d: Alignment3d,
                    true2d: Mapping[int, Alignment2d], true3d: Alignment3d, *, points_per_section: int = 200,
                    channel: str | None = None, seed: int = 0,
                    true_deformation: DeformationField | None = None,
                    estimated_deformation: DeformationField | None = None,
                    tissue_masks: Mapping[int, np.ndarray] | None = None,
                    block_um: float = 50.0) -> AlignmentErrorStats:
    """The error of estimated alignments against true ones over tissue pixels of every usable section.

    Args:
        folder: the data set folder (its images give the tissue).
        dataset: the data set (``failed`` flags, section numbers and thickness, pixel size).
        estimated2d, true2d: image id -> Alignment2d. Sections missing from ``true2d`` are not sampled; a
            usable section missing from ``estimated2d`` is an error.
        estimated3d, true3d: the Alignment3d's.
        points_per_section: tissue points sampled per section.
        channel: the channel that shows tissue (default as the aligner).
        seed: the sampling seed.
        true_deformation, estimated_deformation: non-linear warps after the affines (None: none).
        tissue_masks: image id -> bool mask on the image's ``block_um`` blocks (as :func:`block_pixels`) to sample
            the points from, e.g. a virtual specimen's TRUE tissue; None: the tissue found on the images (the
            aligner's normalization and mask, :func:`tissue_pixels`). An image missing from it is not sampled.
        block_um: the sampling blocks' size, microns.

    Raises:
        KeyError: a usable section has a true Alignment2d but no estimated one.
        ValueError: no tissue point was found.
    """
    channel = choose_channel(dataset, channel)
    rng = np.random.default_rng(seed)
    normal = np.cross(true3d.tvr.matrix[:, 0], true3d.tvr.matrix[:, 1])
    normal /= np.linalg.norm(normal)
    errors, normal_errors, sections = [], [], []
    n_sections = 0
    for image in dataset.sorted_images():
        if image.failed or image.id not in true2d:
            continue
        if image.id not in estimated2d:
            raise KeyError(f"image {image.id} (section {image.section_number}) has no estimated Alignment2d")
        if tissue_masks is None:
            xy = tissue_pixels(read_alignment_image(folder, image, channel), dataset.pixel_size_um,
                               points_per_section, rng, block_um)
        elif image.id in tissue_masks:
            xy = block_pixels(tissue_masks[image.id], max(1, int(round(block_um / dataset.pixel_size_um))),
                              points_per_section, rng)
        else:
            continue
        if xy.shape[0] == 0:
            continue
        n_sections += 1
        truth = reference_points(dataset, image.section_number, xy, true2d[image.id], true3d, true_deformation)
        estimate = reference_points(dataset, image.section_number, xy, estimated2d[image.id], estimated3d,
                                    estimated_deformation)
        errors.append(np.linalg.norm(estimate - truth, axis=1))
        normal_errors.append(np.abs(np.einsum("ij,j->i", estimate - truth, normal)))
        sections.append(np.full(xy.shape[0], image.section_number))
    if not errors:
        raise ValueError(f"SectionDataSet {dataset.id}: no tissue pixel found on any usable section")
    return AlignmentErrorStats(np.concatenate(errors), np.concatenate(normal_errors), np.concatenate(sections),
                               n_sections)
