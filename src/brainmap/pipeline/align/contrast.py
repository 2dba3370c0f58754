"""Contrast-agnostic 3-D registration: a shape stage on the tissue mask, then an intensity model estimated from
the specimen itself.

Nothing is assumed about how the specimen's intensities relate to any template's (brightfield or fluorescence,
grey or colour, inverted or not):

1. **Shape** (:func:`shape_register`): the specimen's tissue mask (each section's, placed in the specimen
   volume) is registered to the reference brain mask (annotation > 0, lightly smoothed) by the same
   Levenberg-Marquardt correlation engine as the intensity stages (:func:`.register.register_affine_3d`), over
   the tissue and a 400 um band of slide around it, so the outline carries the fit. Inverted contrast cannot
   fool it. A multi-start tries the plane's nominal axes turned by every pair of flips of the specimen axes
   (anterior / posterior, left / right, dorsal / ventral: a stack in reverse order, upside-down images; mirror
   images cannot be told from the other hemisphere's, :func:`shape_starts`) and, for
   a specimen narrower than the brain, the left and the right hemisphere; the best correlation after a coarse
   fit wins and is refined. Scale is estimated by the affine.
   A half brain starts from this transform each round, refined on its rebuilt volume (:func:`shape_refine`);
   the intensity model's 3-D registration from it is kept only if it stays in plane (the aligner's
   ``HALF_BRAIN_MAX_SHIFT``).
2. **Intensity model** (:func:`intensity_model`): given the current specimen -> reference transform, the mean
   specimen intensity of every annotated structure (each compact label of the annotation, shrunk towards the
   tissue mean by the voxels it has: ``(sum + k mean) / (n + k)``, ``k`` = :data:`SHRINK_VOXELS`; 0 outside the
   brain) is painted into a model template, blurred by one voxel. The aligner registers to the model, then
   re-estimates it from the better-aligned specimen, in turn. This is a per-structure intensity mapping of any
   shape (monotone or not), as the correlation ratio assumes, estimated from the specimen and never from a
   template's values.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
from scipy import ndimage

from brainmap.specimen.model import nominal_tvr
from brainmap.specimen.transforms import Affine3d

from brainmap.pipeline.align.reconstruct import SpecimenVolume
from brainmap.pipeline.align.register import TemplatePyramid, register_affine_3d

__all__ = ["SHRINK_VOXELS", "intensity_model_volume", "shape_refine", "shape_register", "shape_starts",
           "structure_means", "template_likeness"]

log = logging.getLogger(__name__)

#: Pseudo-count of the per-structure means (voxels of the specimen volume).
SHRINK_VOXELS = 20.0
#: Width (um) of the band of bare slide around the tissue where the shape metric is evaluated too.
SHAPE_BAND_UM = 400.0
#: Smoothing levels (um) of the multi-start's coarse fits, and of the refinement of the best start.
SHAPE_START_SIGMAS_UM = (800.0, 400.0)
SHAPE_REFINE_SIGMAS_UM = (400.0, 200.0, 100.0)
#: Starts whose coarse correlation is within this of the best one are all refined.
CLOSE_STARTS = 0.03


def _shape_values(volume: SpecimenVolume, spacing_um: float) -> tuple[np.ndarray, np.ndarray]:
    """The tissue fraction volume and the region where the shape metric is evaluated: every slot with tissue,
    within :data:`SHAPE_BAND_UM` (in-plane) of it."""
    tissue = volume.tissue if volume.tissue is not None else (volume.volume > 0).astype(np.float32)
    radius = max(1, int(round(SHAPE_BAND_UM / spacing_um)))
    region = ndimage.maximum_filter(tissue >= 0.5, size=(1, 2 * radius + 1, 2 * radius + 1))
    return tissue, region


def shape_starts(volume: SpecimenVolume, plane: str, centroids: dict[str, np.ndarray],
                 names: list[str]) -> list[tuple[str, Affine3d]]:
    """Candidate starting transforms: the nominal axes turned by each pair of flips of the specimen axes (the
    identity and the three half-turns), the specimen centroid on each named reference centroid (``brain``,
    ``left``, ``right``). Mirror images (an odd number of flips) are left out: the brain being nearly
    symmetric, a mirrored specimen fits a mirrored placement as well as the true one (in the other hemisphere
    for half a brain), so they cannot be told apart from the images; sections are taken as seen from their
    nominal side."""
    nominal = nominal_tvr(plane).matrix
    centre = volume.centroid_um()
    starts = []
    for name in names:
        for flips in itertools.product((1.0, -1.0), repeat=3):
            if np.prod(flips) < 0:  # a mirror image: the same shape as a proper turn in the other hemisphere
                continue
            matrix = nominal @ np.diag(flips)
            label = f"{name}, flips {''.join('+' if f > 0 else '-' for f in flips)}"
            starts.append((label, Affine3d(matrix, centroids[name] - matrix @ centre)))
    return starts


def shape_register(volume: SpecimenVolume, brain: TemplatePyramid, plane: str, centroids: dict[str, np.ndarray],
                   names: list[str], *, max_points: int = 30000) -> tuple[Affine3d, float, str]:
    """The specimen -> reference affine that best overlays the specimen's tissue on the brain mask, from the
    best of :func:`shape_starts` (coarse fits), refined. Returns ``(transform, correlation, start label)``."""
    spacing = float(volume.spacing_um[0])
    tissue, region = _shape_values(volume, spacing)
    tries = []
    for label, start in shape_starts(volume, plane, centroids, names):
        try:
            outcome = register_affine_3d(tissue, region, volume.origin_um, volume.spacing_um, brain, start,
                                         sigmas_um=SHAPE_START_SIGMAS_UM, template_um=200.0,
                                         max_points=max_points // 2, iterations=10)
        except ValueError:  # too few voxels
            continue
        if not _plausible(outcome.transform):
            log.debug("shape start %s: implausible result", label)
            continue
        log.debug("shape start %s: correlation %.3f", label, -outcome.metric)
        tries.append((outcome.metric, label, outcome.transform))
    if not tries:
        from brainmap.pipeline.align.reconstruct import AlignmentError

        raise AlignmentError("no start of the shape registration gave a plausible transform (scales within "
                             "0.6..1.6): check the data set's pixel size, section thickness and plane")
    tries.sort(key=lambda t: t[0])
    # every start whose coarse fit comes close to the best is refined; the best refined fit wins (half a brain
    # fits its own and the other hemisphere almost equally well at 400-800 um)
    finals = []
    for metric, label, transform in tries:
        if metric > tries[0][0] + CLOSE_STARTS:
            break
        outcome = register_affine_3d(tissue, region, volume.origin_um, volume.spacing_um, brain, transform,
                                     sigmas_um=SHAPE_REFINE_SIGMAS_UM, template_um=100.0, max_points=max_points,
                                     iterations=15)
        if _plausible(outcome.transform):
            finals.append((outcome.metric, label, outcome.transform))
    if not finals:
        finals = [tries[0]]
    finals.sort(key=lambda t: t[0])
    metric, label, best = finals[0]
    log.info("shape stage: best start %s (of %d, %d refined), correlation %.3f (runner-up %.3f)", label,
             len(tries), len(finals), -metric, -finals[1][0] if len(finals) > 1 else float("nan"))
    return best, -metric, label


#: Smoothing levels (um) of :func:`shape_refine`.
SHAPE_ROUND_SIGMAS_UM = (100.0, 50.0, 0.0)


def shape_refine(volume: SpecimenVolume, brain: TemplatePyramid, initial: Affine3d, *,
                 max_points: int = 30000) -> tuple[Affine3d, float]:
    """The shape stage's fit (tissue on the brain mask) refined from ``initial`` at finer levels
    (:data:`SHAPE_ROUND_SIGMAS_UM`): a half brain's 3-D transform in the later rounds, once its sections have been
    refined in 2-D. Returns ``(transform, correlation)``; ``initial`` if the result is implausible."""
    spacing = float(volume.spacing_um[0])
    tissue, region = _shape_values(volume, spacing)
    outcome = register_affine_3d(tissue, region, volume.origin_um, volume.spacing_um, brain, initial,
                                 sigmas_um=SHAPE_ROUND_SIGMAS_UM, template_um=min(100.0, spacing),
                                 max_points=max_points, iterations=15)
    if not _plausible(outcome.transform):
        return initial, float("nan")
    return outcome.transform, -outcome.metric


def _plausible(transform: Affine3d) -> bool:
    """A specimen -> reference affine whose scales stay within 0.6..1.6 and anisotropy below 1.6."""
    singular = np.linalg.svd(transform.matrix, compute_uv=False)
    return bool(singular.min() > 0.6 and singular.max() < 1.6 and singular.max() / singular.min() < 1.6)


def intensity_model_volume(labels: np.ndarray, resolution_um: float, volume: SpecimenVolume, tvr: Affine3d,
                           *, shrink: float = SHRINK_VOXELS, deformation=None) -> np.ndarray:
    """The model template: every compact label's mean specimen intensity (see the module docstring), float32
    in ``labels``' shape (C order), not yet blurred.

    Args:
        labels: compact annotation labels (0 outside the brain), ``(AP, DV, LR)``.
        resolution_um: their voxel size.
        volume: the specimen volume (values over its mask are used).
        tvr: the current specimen -> reference transform.
        deformation: the current non-linear deformation after ``tvr`` (a DeformationField), or None.
    """
    means, _ = structure_means(labels, resolution_um, volume, tvr, shrink=shrink, deformation=deformation)
    return np.ascontiguousarray(means.astype(np.float32)[labels])


def structure_means(labels: np.ndarray, resolution_um: float, volume: SpecimenVolume, tvr: Affine3d, *,
                    shrink: float = SHRINK_VOXELS, deformation=None) -> tuple[np.ndarray, np.ndarray]:
    """Per compact label: the specimen's shrunk mean intensity (0 for label 0) and its voxel count, where
    ``tvr`` (and ``deformation``) put the specimen volume's mask voxels."""
    slots, rows, cols = np.nonzero(volume.mask)
    values = volume.volume[slots, rows, cols].astype(np.float64)
    spacing = np.asarray(volume.spacing_um, dtype=np.float64)
    points = np.asarray(volume.origin_um)[None, :] + np.stack([cols, rows, slots], axis=1) * spacing[None, :]
    reference = tvr.apply(points)
    if deformation is not None:
        reference = deformation.apply(reference)
    index = np.floor(reference / resolution_um).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.array(labels.shape)), axis=1)
    lab = np.zeros(values.size, dtype=np.int64)
    i = index[inside]
    lab[inside] = labels[i[:, 0], i[:, 1], i[:, 2]]
    n = int(labels.max()) + 1
    sums = np.bincount(lab, weights=values, minlength=n)
    counts = np.bincount(lab, minlength=n).astype(np.float64)
    brain = lab > 0
    mean = float(values[brain].mean()) if brain.any() else float(values.mean())
    means = (sums + shrink * mean) / (counts + shrink)
    means[0] = 0.0
    return means, counts


def template_likeness(labels: np.ndarray, template: np.ndarray, resolution_um: float, volume: SpecimenVolume,
                      tvr: Affine3d) -> float:
    """How much the specimen looks like ``template``: the correlation, over the annotated structures the
    specimen covers (weighted by its voxels in each), between the specimen's mean intensity per structure and
    the template's. Near 1 for a specimen with the template's contrast, whatever its noise and texture; low or
    negative for another stain (inverted fluorescence, other per-tissue contrasts)."""
    specimen, counts = structure_means(labels, resolution_um, volume, tvr)
    n = specimen.size
    t_sums = np.zeros(n)
    t_counts = np.zeros(n)
    for start in range(0, labels.shape[0], 32):  # slabs: no whole-volume float64 copy
        lab = labels[start:start + 32].ravel()
        t_sums += np.bincount(lab, weights=template[start:start + 32].ravel(), minlength=n)
        t_counts += np.bincount(lab, minlength=n)
    t_means = t_sums / np.maximum(t_counts, 1.0)
    w = counts.copy()
    w[0] = 0.0
    if w.sum() <= 0:
        return float("nan")
    a = specimen - np.average(specimen, weights=w)
    b = t_means - np.average(t_means, weights=w)
    denominator = np.sqrt(np.average(a * a, weights=w) * np.average(b * b, weights=w))
    return float(np.average(a * b, weights=w) / denominator) if denominator > 0 else float("nan")
