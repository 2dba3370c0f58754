"""The alignment module: a section data set -> every section's Alignment2d and the data set's Alignment3d.

Allen's "Image Alignment" reconstructs a 3-D specimen volume from the section images and registers it to the
3-D reference model by maximizing image correlation. As built here (:func:`align_sections`):

1. **Read** each section's alignment channel (``tissue`` for the virtual microscope), block-average it to the
   section working pixel (~ the reference resolution, >= 25 um), make it tissue-positive on a zero background,
   find the tissue (Otsu, with a noise floor) and scale the tissue median to 1 (:mod:`.reconstruct`).
2. **Reconstruct** the specimen volume at the volume working pixel (~50 um): each section centred on its tissue
   centre of mass, one slot per section position (missing and failed sections are empty slots, masked out).
   (Allen's section-to-section registration is available, ``neighbour_registration``, but off: its drift
   along ~130 sections hurt the first 3-D registration more than the jitter it removed; the template-driven
   2-D refinement below removes the jitter instead.)
3. **3-D start**: the plane's nominal axis permutation (:func:`~brainmap.specimen.model.nominal_tvr`) with the
   specimen's centre of mass on the template's whole brain, left or right hemisphere, each refined by a coarse
   SimpleITK similarity registration (200 um, correlation); the best wins -- a sagittal data set of one
   hemisphere starts on its side.
4. **3-D affine** specimen -> reference (:func:`.register.register_affine_3d`): Levenberg-Marquardt on the
   normalized correlation between the specimen volume's tissue voxels (fixed: a half brain or a torn section
   only samples where there is tissue) and the template (moving), coarse to fine (smoothing 400 -> 0 um).
   With the default contrast-agnostic model, a half brain starts each round from the shape stage's transform,
   refined on the rebuilt volume's outline in the later rounds (:data:`HALF_BRAIN_SHAPE_ONLY`), and keeps the
   intensity model's registration from there only if it stays in plane (:data:`HALF_BRAIN_MAX_SHIFT`). After the first
   3-D registration, a section whose tissue is far larger than the brain's cross-section there is taken for
   background and placed as its neighbour (:func:`implausible_tissue`).
5. **2-D refinement** (:func:`refine_sections`): the template is resampled into every section's plane through
   the 3-D transform and the section registered to it with a 2-D affine (Levenberg-Marquardt, correlation
   over the section's tissue); implausible results (scale outside 0.75..1.33, anisotropy > 1.25) are
   refused; a section far off is retried from its tissue centroid put on the slice's; a section whose slice
   stays uncorrelated (< 0.6) is placed by rigid registration to its nearest good neighbour if that works.
6. **Rounds**: rebuild the volume from the refined sections, re-register in 3-D (finer smoothing levels), refine
   the sections again, at the section working pixel. Three rounds by default: the 3-D and 2-D estimates
   feed each other (the first 3-D sees a jittered stack; each round roughly halves the error).

Outputs: ``tsv = T o diag(pixel_size_um)`` per section (``T``: image-um -> specimen um) and ``tvr`` (specimen ->
reference um), with their inverses; :func:`align_dataset` writes them into ``dataset.json``. The specimen
frame is the reconstruction's own (sections centred on their tissue); only the composition ``tvr o tsv``
is meaningful, which is what :mod:`.accuracy` measures.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brainmap.atlas import ReferenceSpace
from brainmap.atlas.template import make_template
from brainmap.atlas.template_cache import cached_make_template, template_dir
from brainmap.specimen.folder import read_dataset, update_alignment
from brainmap.specimen.model import SPECIMEN_AXES, SectionDataSet, nominal_tvr
from brainmap.specimen.deformation import DeformationField
from brainmap.specimen.transforms import Affine2d, Affine3d, Alignment2d, Alignment3d

from brainmap.pipeline.align import _morphology
from brainmap.pipeline.align.contrast import intensity_model_volume, shape_refine, shape_register
from brainmap.pipeline.align.nonlinear import CONTROL_UM, register_deformation
from brainmap.pipeline.align.contrast import template_likeness
from brainmap.pipeline.align.reconstruct import (
    AlignmentError,
    SectionStack,
    SpecimenGrid,
    SpecimenVolume,
    build_volume,
    centroid_transforms,
    covering_grid,
    load_sections,
    place_section,
    register_neighbours,
    section_spacing,
    tissue_shown,
)
from brainmap.pipeline.align.register import (
    Grid2d,
    Sampler,
    TemplatePyramid,
    block_mean,
    image_2d,
    reference_image,
    register_affine_2d,
    register_affine_3d,
    register_section,
    register_volume,
    specimen_image,
)

log = logging.getLogger(__name__)

__all__ = [
    "AlignResult",
    "AlignSettings",
    "ReferenceTemplate",
    "align_dataset",
    "align_sections",
    "choose_start",
    "reference_template",
    "refine_sections",
    "register_to_template",
    "run_align_cli",
    "sections_without_tissue",
]


# -- settings and results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlignSettings:
    """Knobs of the aligner (defaults are the tested ones).

    Attributes:
        reference_resolution_um: the reference template's voxel size (25, 50 or 100 um).
        section_um: section working pixel for the 2-D refinement (default: max(25 um, the reference
            resolution); an integer multiple of the image pixel, the nearest).
        volume_um: in-plane pixel of the reconstructed volume for the 3-D registration (default: max(50 um,
            the reference resolution); an integer multiple of the section working pixel).
        rounds: 3-D / 2-D rounds. The first registers the volume from scratch (start search, smoothing
            ``first_volume_sigmas_um``) and refines the sections at the volume pixel (``first_sigmas_um``);
            each later one rebuilds the volume from the refined sections, re-registers it from the previous
            transform (``volume_sigmas_um``) and refines the sections at the section pixel (``sigmas_um``).
        neighbour_registration: run the section-to-section registration before the first 3-D registration
            (off by default: on the virtual microscope's specimens its drift hurt more than it helped).
        volume_points: at most this many tissue voxels of the specimen volume in the 3-D metric.
        section_points: at most this many tissue pixels of a section in the 2-D metric.
        early_volume_points, early_section_points: the same in every round but the last (a random subset of the
            last round's points): those rounds only make the volume the next round registers, and their errors
            average out over its sections and voxels (docs/performance-demo.md, round 6: the demo's six data
            sets 44.2 -> 33.0 s CPU, error against their truth no larger).
        first_centroid_start: in the first round, always also try each section from its centroid start (else
            only when its first result correlates poorly).
        first_volume_sigmas_um: smoothing levels (coarse to fine, microns) of the first 3-D registration.
        volume_sigmas_um: smoothing levels of the later 3-D registrations (unsmoothed only: they start from the
            previous round's transform, tens of microns off; the demo's six data sets measured 6.35/15.29 um
            without the 100 um level, 6.86/16.19 um with it, and a few seconds less CPU; docs/performance-demo.md,
            round 6).
        first_sigmas_um: smoothing levels (coarse to fine, microns) of the first 2-D refinement (sections may
            be off by a few hundred microns).
        sigmas_um: smoothing levels of the later 2-D refinements.
        channel: the image channel to align on (None: "tissue" or the first common channel).
        contrast: ``"model"`` (default; contrast-agnostic, :mod:`.contrast`: a shape stage with flips and
            hemispheres, then registration to the specimen's own per-structure intensity model, re-estimated in
            turn) or ``"template"`` (the template's values as they are, correlation; the earlier aligner).
        nonlinear: after the affine rounds, a smooth free-form deformation of the reference space
            (:mod:`.nonlinear`), stored beside the Alignment3d.
        template_check: with ``contrast="model"``, after the first 3-D registration measure how much the
            specimen looks like the template (:func:`.contrast.template_likeness`); at least
            :data:`TEMPLATE_LIKENESS`, the later rounds use ``"template"`` (``AlignResult.contrast``). Off by
            default: on a Nissl-like virtual specimen (50 um pixels, 50 um template) the switch measured 32/87 um
            (median/p95) against 27/65 um for the model throughout (and 37/99 um for ``"template"`` throughout).
        sparse_nonlinear: with fewer than :data:`NONLINEAR_MIN_SECTIONS` usable sections, run the non-linear
            stage in the sectioning plane only, on a :data:`SPARSE_CONTROL_UM` grid (else skip it there). Off by
            default: on a 23-section sagittal brightfield specimen with a warp (50 um pixels, 100 um template) it
            measured 99/258 um (median/p95) against 102/247 um without, for 35 s more.
    """

    reference_resolution_um: int = 25
    section_um: float | None = None
    volume_um: float | None = None
    rounds: int = 3
    neighbour_registration: bool = False
    volume_points: int = 100000
    section_points: int = 20000
    early_volume_points: int = 25000
    early_section_points: int = 5000
    first_centroid_start: bool = False
    first_volume_sigmas_um: tuple[float, ...] = (400.0, 200.0, 100.0, 0.0)
    volume_sigmas_um: tuple[float, ...] = (0.0,)
    first_sigmas_um: tuple[float, ...] = (200.0, 100.0, 50.0, 0.0)
    sigmas_um: tuple[float, ...] = (0.0,)
    channel: str | None = None
    contrast: str = "model"
    nonlinear: bool = True
    template_check: bool = False
    sparse_nonlinear: bool = False

    @property
    def section_working_um(self) -> float:
        return float(self.section_um or max(25.0, self.reference_resolution_um))

    @property
    def volume_working_um(self) -> float:
        return float(self.volume_um or max(50.0, self.reference_resolution_um))


@dataclass
class AlignResult:
    """What the aligner found.

    Attributes:
        alignment2d: image id -> Alignment2d (pixel ``(x, y)`` <-> specimen ``(sx, sy)`` um), every image.
        alignment3d: specimen ``(sx, sy, sz)`` um <-> reference ``(AP, DV, LR)`` um.
        section_correlation: image id -> normalized correlation of the section with its template slice (0..1;
            NaN for a section without tissue, which gets the transform of the nearest section with tissue).
        volume_correlation: normalized correlation of the reconstructed volume with the template.
        rejected: image ids whose last 2-D refinement found nothing better than their current transform.
        seconds: wall time of the alignment.
        warnings: what looks wrong with the result (an implausible 3-D scale, a poor volume correlation).
        doubtful_below: the section correlation under which a section is doubtful.
        deformation: the non-linear deformation after the affine (``W o tvr``), or None.
        contrast: the similarity the last rounds used: ``"model"`` or ``"template"`` (chosen by the template
            check, or asked for).
        without_tissue: image ids of the sections (not failed) that show no tissue (an empty slide: placed by the
            nearest section with tissue, not to be gridded).
    """

    alignment2d: dict[int, Alignment2d]
    alignment3d: Alignment3d
    section_correlation: dict[int, float]
    volume_correlation: float
    rejected: list[int] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    doubtful_below: float = 0.6
    deformation: DeformationField | None = None
    contrast: str = "model"
    without_tissue: list[int] = field(default_factory=list)

    @property
    def doubtful(self) -> list[int]:
        """Image ids whose final correlation with their template slice is below ``doubtful_below``
        (:data:`FALLBACK_BELOW`, scaled by what the data set's volume reaches with its target), or
        that show no tissue: their Alignment2d is the aligner's best guess but may be wrong (a section at the
        edge of the reference volume, one with almost no tissue, a failed one)."""
        return [i for i, c in self.section_correlation.items() if not (c >= self.doubtful_below)]

    def summary(self) -> str:
        """One line: sections, correlations, doubtful sections, time."""
        values = np.array([v for v in self.section_correlation.values() if np.isfinite(v)])
        median = float(np.median(values)) if values.size else float("nan")
        doubtful = self.doubtful
        listed = ", ".join(map(str, doubtful[:5])) + (" ..." if len(doubtful) > 5 else "")
        return (f"{len(self.alignment2d)} sections aligned; volume correlation {self.volume_correlation:.3f}, "
                f"median section correlation {median:.3f}; {len(doubtful)} doubtful"
                f"{f' (image {listed})' if doubtful else ''}; {self.seconds:.1f} s"
                + "".join(f"; WARNING: {w}" for w in self.warnings))


# -- the reference template -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceTemplate:
    """The Nissl-like template the sections are registered to, and its brain mask.

    Attributes:
        volume: float32 (AP, DV, LR), values 0..1.
        resolution_um: voxel size, microns.
        brain: bool (AP, DV, LR), annotation > 0.
        labels: compact annotation labels (AP, DV, LR; 0 outside the brain) for the contrast-agnostic intensity
            model (:mod:`.contrast`), or None (then only the template's own values can be registered to).
        pyramid: coarser/smoothed versions with gradients, made on demand (the 3-D registration's moving images).
        sampler: trilinear values of ``volume`` at reference points (template slices).
    """

    volume: np.ndarray
    resolution_um: float
    brain: np.ndarray
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)
    pyramid: TemplatePyramid = field(init=False, repr=False, compare=False)
    sampler: Sampler = field(init=False, repr=False, compare=False)
    _cache: dict = field(init=False, repr=False, compare=False, default_factory=dict)  # images, pyramids, centroids

    def __post_init__(self) -> None:
        object.__setattr__(self, "pyramid", TemplatePyramid(self.volume, self.resolution_um))
        object.__setattr__(self, "sampler", Sampler(self.volume, (self.resolution_um / 2,) * 3,
                                                    self.resolution_um, reverse=False, with_gradient=False))

    def centroids_um(self) -> dict[str, np.ndarray]:
        """Reference (AP, DV, LR) um of the centre of mass of the whole brain and of each hemisphere (computed
        once per template: three passes over the brain mask)."""
        if "centroids" in self._cache:
            return {name: value.copy() for name, value in self._cache["centroids"].items()}
        res = self.resolution_um
        n_lr = self.brain.shape[2]
        mid = (n_lr + 1) // 2
        out = {}
        for name, lr in (("brain", slice(0, n_lr)), ("left", slice(0, mid)), ("right", slice(mid, n_lr))):
            idx = np.array(np.nonzero(self.brain[:, :, lr]), dtype=np.float64).mean(axis=1)
            idx[2] += lr.start
            out[name] = (idx + 0.5) * res
        self._cache["centroids"] = {name: value.copy() for name, value in out.items()}
        return out

    def brain_pyramid(self) -> TemplatePyramid:
        """The brain mask (0/1) as a pyramid: the shape stage's moving image."""
        if "brain" not in self._cache:
            self._cache["brain"] = TemplatePyramid(self.brain.astype(np.float32), self.resolution_um)
        return self._cache["brain"]

    def modelled(self, volume: SpecimenVolume, tvr: Affine3d, deformation: DeformationField | None = None
                 ) -> ReferenceTemplate:
        """A template whose values are the specimen's own mean intensity per annotated structure at ``tvr``
        (:func:`.contrast.intensity_model_volume`), same brain and labels."""
        if self.labels is None:
            raise AlignmentError("the contrast-agnostic intensity model needs the annotation's labels")
        model = intensity_model_volume(self.labels, self.resolution_um, volume, tvr, deformation=deformation)
        return ReferenceTemplate(model, self.resolution_um, self.brain, self.labels)

    def sitk_image(self, voxel_um: float):
        """The template block-averaged to about ``voxel_um`` as a SimpleITK image (physical AP, DV, LR um)."""
        factor = max(1, int(round(voxel_um / self.resolution_um)))
        if factor not in self._cache:
            self._cache[factor] = reference_image(block_mean(self.volume, factor), self.resolution_um * factor)
        return self._cache[factor]


@functools.lru_cache(maxsize=1)
def reference_template(resolution_um: int = 25, *, use_cache: bool = True) -> ReferenceTemplate:
    """The reference template at ``resolution_um`` (25, 50 or 100), made once per process: a cached average
    template if there is one (:func:`cached_template_path`), else the bundled reference space's
    annotation-derived Nissl-like one (:func:`brainmap.atlas.template.make_template`, seed 0, ~5 s at 25 um;
    kept in the same folder once made and read back by later processes:
    :func:`brainmap.atlas.template_cache.cached_make_template`). ``use_cache=False``: made here, neither file
    read nor written."""
    cached = cached_template_path(resolution_um) if use_cache else None
    if cached is not None:
        log.info("reference template: %s", cached)
        return template_from_file(cached, resolution_um)

    space = ReferenceSpace.bundled(resolution_um)
    made = cached_make_template(space, seed=0) if use_cache else make_template(space, seed=0)
    volume = np.ascontiguousarray(made, dtype=np.float32)
    return ReferenceTemplate(volume, float(space.resolution[0]), np.ascontiguousarray(space.annotation > 0),
                             np.ascontiguousarray(space.label_index.compact))


def cached_template_path(resolution_um: int) -> Path | None:
    """The cached average template file for ``resolution_um`` (``average_template_{resolution}.nrrd``, e.g.
    Allen's, which ``ReferenceSpaceCache.get_template_volume`` fetches) in :func:`~brainmap.atlas.template_cache.
    template_dir` (``$BRAINMAP_TEMPLATE_DIR``, else ``~/.cache/brainmap``), if there is one."""
    path = template_dir() / f"average_template_{int(resolution_um)}.nrrd"
    return path if path.is_file() else None


def template_from_file(path: str | os.PathLike[str], resolution_um: int = 25) -> ReferenceTemplate:
    """A reference template from a volume file in the CCF (NRRD, ``(AP, DV, LR)`` at ``resolution_um``, e.g.
    Allen's ``average_template_25.nrrd``), scaled to 0..1 (its 99.9th percentile), with the bundled brain mask
    and labels.

    Raises:
        AlignmentError: the file does not have the reference volume's shape at ``resolution_um``.
        FormatError / MissingFileError: from the NRRD reader.
    """
    from brainmap.io.nrrd import read_nrrd

    space = ReferenceSpace.bundled(resolution_um)
    volume, _ = read_nrrd(path)
    if tuple(volume.shape) != tuple(space.shape):
        raise AlignmentError(f"{path}: a template of shape {tuple(volume.shape)}; the reference volume at "
                             f"{resolution_um} um is {tuple(space.shape)} (AP, DV, LR)")
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    top = float(np.percentile(volume[::4, ::4, ::4], 99.9)) or 1.0
    volume = np.clip(volume / top, 0.0, 1.0)
    return ReferenceTemplate(volume, float(space.resolution[0]), np.ascontiguousarray(space.annotation > 0),
                             np.ascontiguousarray(space.label_index.compact))


# -- 3-D ----------------------------------------------------------------------------------------------------------
def _volume_level(volume: SpecimenVolume, factor: int):
    """Fixed image and mask of one level: the specimen volume block-averaged in-plane by ``factor``."""
    if factor == 1:
        v, m = volume.volume, volume.mask
    else:
        v = block_mean(volume.volume, (1, factor, factor))
        m = (block_mean(volume.mask, (1, factor, factor)) >= 0.5).astype(np.uint8)
    sx, sy, sz = volume.spacing_um
    origin = (volume.origin_um[0] + (factor - 1) * sx / 2, volume.origin_um[1] + (factor - 1) * sy / 2,
              volume.origin_um[2])
    spacing = (sx * factor, sy * factor, sz)
    return specimen_image(v, origin, spacing), specimen_image(m, origin, spacing)


def _initial_tvr(plane: str, specimen_centroid: np.ndarray, reference_centroid: np.ndarray) -> Affine3d:
    """The nominal axis permutation with the specimen centroid mapped onto a reference centroid."""
    nominal = nominal_tvr(plane)
    return Affine3d(nominal.matrix, reference_centroid - nominal.matrix @ specimen_centroid)


#: Specimen LR extent / brain LR extent above which the specimen is taken for a whole brain, below which for one
#: hemisphere (in between, all three starts are tried).
WHOLE_BRAIN_ABOVE, HEMISPHERE_BELOW = 0.75, 0.6


def _lr_extent_ratio(volume: SpecimenVolume, template: ReferenceTemplate, plane: str) -> float:
    """The specimen's tissue extent along its nominally left-right axis over the template brain's LR extent
    (1st to 99th percentiles of the tissue positions)."""
    axis = SPECIMEN_AXES[plane].index(2)  # the specimen axis that nominally runs along LR
    index = np.nonzero(volume.mask)[2 - axis]  # mask is indexed (sz, sy, sx)
    lo, hi = np.percentile(index, [1, 99]) * volume.spacing_um[axis]
    if "lr_extent" not in template._cache:  # the template's part, once per template
        lr = np.nonzero(np.any(template.brain, axis=(0, 1)))[0]
        template._cache["lr_extent"] = np.percentile(
            np.repeat(lr, np.count_nonzero(template.brain, axis=(0, 1))[lr]), [1, 99]) * template.resolution_um
    brain_lo, brain_hi = template._cache["lr_extent"]
    return float((hi - lo) / max(brain_hi - brain_lo, 1.0))


def _start_names(volume: SpecimenVolume, template: ReferenceTemplate, plane: str) -> list[str]:
    """Where the specimen may sit: the whole brain (it spans more than 3/4 of the brain's width), a hemisphere
    (less than 0.6), or any of the three."""
    ratio = _lr_extent_ratio(volume, template, plane)
    return ["brain"] if ratio > WHOLE_BRAIN_ABOVE else ["left", "right"] if ratio < HEMISPHERE_BELOW \
        else ["brain", "left", "right"]


def choose_start(volume: SpecimenVolume, template: ReferenceTemplate, plane: str, *,
                 voxel_um: float = 200.0) -> Affine3d:
    """The starting specimen -> reference transform: the plane's nominal axis permutation with the specimen's
    centre of mass put on the template's whole brain (the specimen spans more than 3/4 of the brain's width),
    or on its left or right hemisphere (less than 0.6; in between, all three), each refined by a coarse
    similarity registration (SimpleITK, correlation, ~``voxel_um`` pixels); the best correlation wins. A data
    set of one hemisphere so starts on its side."""
    ratio = _lr_extent_ratio(volume, template, plane)
    names = ["brain"] if ratio > WHOLE_BRAIN_ABOVE else ["left", "right"] if ratio < HEMISPHERE_BELOW \
        else ["brain", "left", "right"]
    factor = max(1, int(round(voxel_um / volume.spacing_um[0])))
    fixed, mask = _volume_level(volume, factor)
    moving = template.sitk_image(voxel_um)
    center = volume.centroid_um()
    centroids = template.centroids_um()
    tries = []
    for name in names:
        start = _initial_tvr(plane, center, centroids[name])
        try:
            outcome = register_volume(fixed, mask, moving, start, center=center, samples=10000, iterations=60,
                                      learning_rate_um=400.0, min_step_um=20.0, similarity_only=True)
        except RuntimeError as exc:  # SimpleITK: e.g. every sample left the template
            log.info("start on the %s: registration failed (%s)", name, str(exc).splitlines()[-1])
            tries.append((0.0, name, start))
            continue
        log.info("start on the %s (LR extent ratio %.2f): correlation %.3f", name, ratio, -outcome.metric)
        tries.append((outcome.metric, name, outcome.transform))
    return min(tries, key=lambda t: t[0])[2]


def register_to_template(volume: SpecimenVolume, template: ReferenceTemplate, plane: str, *,
                         sigmas_um: tuple[float, ...], initial: Affine3d | None = None,
                         max_points: int = 200000, iterations: int = 20) -> tuple[Affine3d, float]:
    """3-D affine registration of the specimen volume to the template (:func:`.register.register_affine_3d`),
    from ``initial`` or from :func:`choose_start`. Returns the specimen -> reference affine and the final
    normalized correlation (``iterations=0``: ``initial`` and its correlation at the finest level)."""
    if initial is None:
        initial = choose_start(volume, template, plane)
    outcome = register_affine_3d(volume.volume, volume.mask, volume.origin_um, volume.spacing_um,
                                 template.pyramid, initial, sigmas_um=sigmas_um if iterations else sigmas_um[-1:],
                                 template_um=max(volume.spacing_um[0], template.resolution_um),
                                 max_points=max_points, iterations=iterations)
    return outcome.transform, -outcome.metric


#: A section whose tissue covers more than this many times the largest brain cross-section within one section
#: spacing of where the first 3-D registration puts it (plus :data:`TISSUE_AREA_SLACK_MM2`) shows no tissue the
#: aligner can use: its "tissue" is background that the tissue detection took for it (measured: the bias field of
#: an almost empty lateral-most sagittal section, 71 mm2 of "tissue" where the brain's cross-section is a few mm2;
#: registered, it landed 1.3 mm off). Its mask is emptied, so it is placed as its nearest section with tissue.
TISSUE_AREA_RATIO = 2.0
TISSUE_AREA_SLACK_MM2 = 1.0


def implausible_tissue(stack: SectionStack, template: ReferenceTemplate, tvr: Affine3d, *,
                       spacing_um: float = 100.0) -> list[int]:
    """Indices of the sections whose tissue area is implausible for their plane (:data:`TISSUE_AREA_RATIO`):
    the brain's cross-section is measured on a ``spacing_um`` grid of the specimen plane mapped by ``tvr``, at
    the section's position and one section spacing either side."""
    box = brain_plane_box(template, tvr)
    gx, gy = np.meshgrid(np.arange(box[0, 0], box[1, 0], spacing_um), np.arange(box[0, 1], box[1, 1], spacing_um))
    plane = np.stack([gx.ravel(), gy.ravel()], axis=1)
    shape = np.array(template.brain.shape)
    dz = section_spacing(stack.sz_um)

    def brain_mm2(sz_um: float) -> float:
        points = np.concatenate([plane, np.full((plane.shape[0], 1), sz_um)], axis=1)
        index = np.floor(tvr.apply(points) / template.resolution_um).astype(np.int64)
        index = index[np.all((index >= 0) & (index < shape), axis=1)]
        return float(np.count_nonzero(template.brain[index[:, 0], index[:, 1], index[:, 2]])) * spacing_um ** 2 / 1e6

    areas: dict[float, float] = {}  # by position: a section's neighbours measure the same planes

    def brain_at(sz_um: float) -> float:
        if sz_um not in areas:
            areas[sz_um] = brain_mm2(sz_um)
        return areas[sz_um]

    flagged = []
    for k in range(len(stack)):
        if not stack.has_tissue(k):
            continue
        tissue = float(stack.masks[k].sum()) * stack.working_um ** 2 / 1e6
        brain = max(brain_at(float(stack.sz_um[k]) + d) for d in (-dz, 0.0, dz))
        if tissue > TISSUE_AREA_RATIO * brain + TISSUE_AREA_SLACK_MM2:
            flagged.append(k)
    return flagged


# -- 2-D refinement -----------------------------------------------------------------------------------------------
def _plausible(transform: Affine2d) -> bool:
    """Whether a section's image-um -> specimen transform is a plausible near-rigid map (singular values in
    0.75..1.33, shear small)."""
    singular = np.linalg.svd(transform.matrix, compute_uv=False)
    return bool(singular.min() > 0.75 and singular.max() < 1.33 and singular.max() / singular.min() < 1.25)


def template_slice(template: ReferenceTemplate, tvr: Affine3d, sz_um: float, grid: SpecimenGrid) -> np.ndarray:
    """The template resampled (trilinear; 0 outside the volume) into the specimen plane ``sz = sz_um`` on
    ``grid`` through ``tvr``: float32 ``grid.shape``."""
    rows, cols = grid.shape
    sx = grid.origin[0] + np.arange(cols) * grid.spacing
    sy = grid.origin[1] + np.arange(rows) * grid.spacing
    m, t = tvr.matrix, tvr.translation
    # reference = m[:, 0] sx + m[:, 1] sy + (m[:, 2] sz + t), as (3, rows * cols) without a BLAS call
    offset = m[:, 2] * sz_um + t
    points = (m[:, 0, None, None] * sx[None, None, :] + m[:, 1, None, None] * sy[None, :, None]
              + offset[:, None, None]).reshape(3, -1)
    values, _ = template.sampler(points, gradient=False)
    return values.reshape(rows, cols).astype(np.float32)


def _section_grid(stack: SectionStack, k: int, transform: Affine2d, plane_box: np.ndarray, spacing: float,
                  margin_um: float = 600.0) -> SpecimenGrid:
    """A specimen-plane grid covering section ``k``'s tissue placed by ``transform`` and ``plane_box`` (a
    ``(2, 2)`` [[sx_min, sy_min], [sx_max, sy_max]] box, e.g. the template brain's extent in the plane)."""
    rows, cols = np.nonzero(stack.masks[k])
    box = np.array([[cols.min(), rows.min()], [cols.max() + 1, rows.min()], [cols.min(), rows.max() + 1],
                    [cols.max() + 1, rows.max() + 1]], dtype=np.float64) * stack.working_um
    corners = np.concatenate([transform.apply(box), plane_box])
    lo = np.floor((corners.min(axis=0) - margin_um) / spacing) * spacing  # on a lattice common to all grids
    hi = corners.max(axis=0) + margin_um
    shape = tuple(int(np.ceil(v)) for v in (hi - lo)[::-1] / spacing)
    return SpecimenGrid((float(lo[0]), float(lo[1])), float(spacing), shape)  # type: ignore[arg-type]


def brain_plane_box(template: ReferenceTemplate, tvr: Affine3d) -> np.ndarray:
    """The ``(sx, sy)`` extent (``[[min], [max]]``, specimen um) of the template's brain bounding box mapped
    into the specimen frame."""
    index = [np.flatnonzero(np.any(template.brain, axis=tuple(a for a in range(3) if a != axis)))
             for axis in range(3)]
    lo = np.array([i[0] for i in index]) * template.resolution_um
    hi = (np.array([i[-1] for i in index]) + 1) * template.resolution_um
    corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    specimen = tvr.inverse().apply(corners)[:, :2]
    return np.array([specimen.min(axis=0), specimen.max(axis=0)])


#: Template value above which a template voxel counts as tissue (outside the brain is 0.02, ventricles 0.05).
TEMPLATE_TISSUE = 0.1


def _centroid_start(stack: SectionStack, k: int, transform: Affine2d, target: np.ndarray,
                    grid: SpecimenGrid) -> Affine2d | None:
    """``transform`` moved so that section ``k``'s tissue centroid lands on the template slice's tissue
    centroid (None if the slice shows too little tissue)."""
    tissue = target > TEMPLATE_TISSUE
    if tissue.sum() < 20:
        return None
    rows, cols = np.nonzero(tissue)
    centre = np.asarray(grid.origin) + np.array([cols.mean(), rows.mean()]) * grid.spacing
    return Affine2d(transform.matrix, centre - transform.matrix @ stack.centroid_um(k))


#: A section whose refined correlation with its template slice is below this is retried from the centroid start.
RETRY_BELOW = 0.8
#: Smoothing levels (microns, coarse to fine) of a registration from the centroid start, which may be a few
#: hundred microns off.
WIDE_SIGMAS_UM = (200.0, 100.0, 50.0, 0.0)


def refine_sections(stack: SectionStack, transforms: list[Affine2d], template: ReferenceTemplate, tvr: Affine3d,
                    *, sigmas_um: tuple[float, ...] = (100.0, 50.0, 0.0), max_points: int = 20000,
                    centroid_start: bool = True, progress: bool = False,
                    description: str = "refining sections", expected: float = 1.0
                    ) -> tuple[list[Affine2d], np.ndarray, list[int]]:
    """2-D affine registration of every section (fixed) to the template resampled into its plane (moving),
    :func:`.register.register_affine_2d`.

    Each section is registered from its current transform; with ``centroid_start``, or when that gives a
    correlation below :data:`RETRY_BELOW`, also from the centroid start (the current transform moved so that
    the section's tissue centroid lands on the template slice's tissue centroid; it rescues a section placed
    far off). ``expected`` (0..1) scales :data:`RETRY_BELOW` and :data:`FALLBACK_BELOW`: the correlation a
    well-aligned section reaches with its target relative to a template made like it (the contrast-agnostic
    intensity model is piecewise constant, and real sections correlate less with it). Of the starts and the
    results that are plausible (:func:`_plausible`), the one with the highest
    correlation wins (all are measured on the same pixels and slice). The template slice is sampled at the
    coarser of the section's working pixel and the template voxel, over the brain's extent in the plane.

    Returns:
        the refined ``T`` per section, the final correlation per section (NaN without tissue), and the
        indices of sections that kept their current transform (no result beat it).
    """
    refined = list(transforms)
    correlation = np.full(len(stack), np.nan)
    kept: list[int] = []
    plane_box = brain_plane_box(template, tvr)
    spacing = max(stack.working_um, template.resolution_um)
    for k in tqdm(range(len(stack)), desc=description, unit="section", disable=not progress, leave=False):
        if not stack.has_tissue(k):
            continue
        fixed = Grid2d(stack.images[k], stack.image_origin(), stack.working_um)
        mask = _morphology.dilate(stack.masks[k], 2)  # ndimage.binary_dilation(..., iterations=2)
        # the slice around the section's tissue; over the brain's whole extent in the plane when the centroid
        # start is (or may be) needed
        box = plane_box if centroid_start else np.zeros((0, 2))
        grid = _section_grid(stack, k, transforms[k], box, spacing)
        slice_ = template_slice(template, tvr, float(stack.sz_um[k]), grid)
        first = register_affine_2d(fixed, mask, Grid2d(slice_, grid.origin, grid.spacing), transforms[k],
                                   sigmas_um=sigmas_um, max_points=max_points)
        candidates = [(first.start_metric, 0, transforms[k])]
        if _plausible(first.transform):
            candidates.append((first.metric, 1, first.transform))
        if centroid_start or -min(candidates)[0] < RETRY_BELOW * expected:
            if not centroid_start:
                grid = _section_grid(stack, k, transforms[k], plane_box, spacing)
                slice_ = template_slice(template, tvr, float(stack.sz_um[k]), grid)
            moved = _centroid_start(stack, k, transforms[k], slice_, grid)
            if moved is not None and np.linalg.norm(moved.translation - transforms[k].translation) > 50.0:
                second = register_affine_2d(fixed, mask, Grid2d(slice_, grid.origin, grid.spacing), moved,
                                            sigmas_um=WIDE_SIGMAS_UM, max_points=max_points)
                candidates.append((second.start_metric, 2, moved))
                if _plausible(second.transform):
                    candidates.append((second.metric, 3, second.transform))
        metric, which, best = min(candidates, key=lambda c: (c[0], c[1]))
        log.debug("section %d: candidates %s -> %d", stack.section_images[k].section_number,
                  [(round(-c[0], 3), c[1]) for c in candidates], which)
        refined[k] = best
        correlation[k] = -metric
        if which == 0:
            kept.append(k)
    for k in np.flatnonzero(correlation < FALLBACK_BELOW * expected):
        placed = place_by_neighbour(stack, int(k), refined, correlation, good=RETRY_BELOW * expected)
        if placed is not None:
            log.debug("section %d: correlation %.3f with the template; placed by its neighbour",
                      stack.section_images[k].section_number, correlation[k])
            refined[k] = placed
    return refined, correlation, kept


#: A section whose best correlation with its template slice stays below this (a degenerate slice: e.g. at the
#: edge of the reference volume) is placed by rigid registration to its nearest well-aligned neighbour.
FALLBACK_BELOW = 0.6


#: Smallest correlation with the neighbour for which :func:`place_by_neighbour` is trusted.
NEIGHBOUR_ACCEPT = 0.7


def place_by_neighbour(stack: SectionStack, k: int, transforms: list[Affine2d], correlation: np.ndarray,
                       *, good: float = RETRY_BELOW) -> Affine2d | None:
    """Section ``k``'s ``T`` from rigid registration (SimpleITK, :func:`.register.register_section`) to its
    nearest usable neighbour whose template correlation is at least ``good``, placed in the specimen plane
    by that neighbour's ``T``. None if no such neighbour exists, or if the registered section correlates with
    it less than :data:`NEIGHBOUR_ACCEPT` (then the template's best candidate stands)."""
    usable = [j for j in range(len(stack)) if j != k and not stack.failed[j] and stack.has_tissue(j)
              and np.isfinite(correlation[j]) and correlation[j] >= good]
    if not usable:
        return None
    j = min(usable, key=lambda i: (abs(stack.sz_um[i] - stack.sz_um[k]), i))
    grid = _section_grid(stack, j, transforms[j], np.zeros((0, 2)), stack.working_um, margin_um=1000.0)
    rows, cols = np.nonzero(stack.masks[j])
    neighbour_centre = transforms[j].apply((np.array([cols.mean(), rows.mean()]) + 0.5) * stack.working_um)
    start = Affine2d(transforms[j].matrix, neighbour_centre - transforms[j].matrix @ stack.centroid_um(k))
    reference = image_2d(place_section(stack, j, transforms[j], grid), grid.origin, grid.spacing)
    try:
        outcome = register_section(stack.sitk_image(k, smooth_px=1.0), stack.sitk_mask(k), reference, start,
                                   center=stack.centroid_um(k), kind="rigid", samples=4000, iterations=100,
                                   learning_rate=2.0 * stack.working_um, min_step=0.05 * stack.working_um)
    except RuntimeError:  # SimpleITK: e.g. every sample left the neighbour's image
        return None
    if -outcome.metric < NEIGHBOUR_ACCEPT or outcome.metric > outcome.start_metric:
        return None
    return outcome.transform


#: A 3-D transform whose scales leave this range, or a volume correlation below the minimum, is reported.
PLAUSIBLE_SCALE = (0.7, 1.4)
MIN_VOLUME_CORRELATION = 0.5


def _check_result(tvr: Affine3d, volume_correlation: float) -> list[str]:
    """Warnings about an alignment that is probably wrong."""
    warnings = []
    scales = np.linalg.svd(tvr.matrix, compute_uv=False)
    if scales.min() < PLAUSIBLE_SCALE[0] or scales.max() > PLAUSIBLE_SCALE[1]:
        warnings.append(f"the specimen -> reference transform scales by {scales.min():.2f}..{scales.max():.2f}, "
                        f"outside {PLAUSIBLE_SCALE[0]}..{PLAUSIBLE_SCALE[1]}: the 3-D registration probably failed")
    if not volume_correlation >= MIN_VOLUME_CORRELATION:
        warnings.append(f"the specimen volume correlates only {volume_correlation:.2f} with the template (below "
                        f"{MIN_VOLUME_CORRELATION}): the alignment is doubtful")
    return warnings


def _fill_empty_sections(stack: SectionStack, transforms: list[Affine2d]) -> list[Affine2d]:
    """Sections without tissue get the ``T`` of the nearest section with tissue (same image canvas: a
    plausible guess; they are reported as doubtful)."""
    with_tissue = [k for k in range(len(stack)) if stack.has_tissue(k)]
    return [t if stack.has_tissue(k) else transforms[min(with_tissue, key=lambda j: (abs(j - k), j))]
            for k, t in enumerate(transforms)]


#: The full non-linear stage runs only on data sets with at least this many usable sections: on a 23-section
#: sagittal hemisphere (200 um apart) it overfitted (95th percentile error 104 -> 357 um, measured), while it helped
#: on 34 real coronal sections and on 64-131-section virtual specimens.
NONLINEAR_MIN_SECTIONS = 30
#: A half brain (the shape stage's best start is a hemisphere) keeps the shape stage's 3-D transform: the
#: intensity model's 3-D registration is not run on it. The per-structure model is the same in both hemispheres
#: (the annotation's labels are not sided) and a hemisphere gives it nothing across the midline to hold on to: on
#: the 23-section sagittal brightfield benchmark specimen (8 um pixels, 25 um template) it slid the specimen
#: 470 um out of plane (median left-right error 30 um after the shape stage, 467 um after it; alignment error
#: 556/1506 um median/p95), where keeping the shape's transform and refining the sections in 2-D against the
#: model measured 54/155 um.
HALF_BRAIN_SHAPE_ONLY = True
#: ... and in the later rounds its 3-D transform is the shape fit refined on the volume rebuilt from the refined
#: sections (:func:`.contrast.shape_refine`). Measured on the sagittal benchmark specimens (8 um pixels, 25 um
#: template; loaded machine): unseen brightfield + warp 53.6/148.5 -> 48.6/152.2 um (median/p95), today's appearance
#: 31.5/194.9 -> 12.3/94.7 um (before either rule, with the intensity model's 3-D registration: 7.3/81.7 um).
HALF_BRAIN_SHAPE_ROUNDS = True
#: ... and the intensity model's 3-D registration, run from the shape's transform, is kept if it moves the half brain
#: out of plane (:func:`out_of_plane_shift_um`) by at most this fraction of the section spacing (0: never run on a
#: half brain). Measured on the sagittal benchmark specimens (8 um pixels, 25 um template, 200 um spacing: at most
#: 100 um; loaded machine): unseen brightfield + warp 43.2/88.2 -> 41.4/83.0 um (median/p95), today's appearance
#: 12.3/94.7 -> 7.6/81.0 um; both moved 2-16 um per round (kept). When the lateral-most section's bias field was
#: taken for tissue (without :data:`.reconstruct.MIN_EDGE_STEP`), the first round's step moved it 258 um: kept,
#: 184/529 um; refused, 42.7/176 um.
HALF_BRAIN_MAX_SHIFT = 0.5


def out_of_plane_shift_um(volume: SpecimenVolume, before: Affine3d, after: Affine3d) -> float:
    """How far ``after`` moves the specimen volume's tissue from where ``before`` puts it, along the normal of the
    section planes (``before``'s): the median absolute displacement over the tissue voxels, reference um."""
    slots, rows, cols = np.nonzero(volume.mask)
    spacing = np.asarray(volume.spacing_um, dtype=np.float64)
    points = np.asarray(volume.origin_um)[None, :] + np.stack([cols, rows, slots], axis=1) * spacing[None, :]
    normal = np.cross(before.matrix[:, 0], before.matrix[:, 1])
    normal /= np.linalg.norm(normal)
    return float(np.median(np.abs((after.apply(points) - before.apply(points)) @ normal)))


#: A specimen whose per-structure means correlate at least this much with the template's looks like the template
#: (``AlignSettings.template_check``).
TEMPLATE_LIKENESS = 0.5
#: With fewer usable sections the non-linear stage (``AlignSettings.sparse_nonlinear``) moves tissue only within
#: the sectioning plane, on a control grid this coarse (um).
SPARSE_CONTROL_UM = 1000.0


# -- the whole module -----------------------------------------------------------------------------------------------
def align_sections(folder: str | os.PathLike[str], dataset: SectionDataSet | None = None,
                   settings: AlignSettings = AlignSettings(), *, template: ReferenceTemplate | None = None,
                   progress: bool = False) -> AlignResult:
    """Align a data set folder (nothing is written): see the module docstring for the method.

    Args:
        folder: the data set folder.
        dataset: its data set record (read from the folder if None).
        settings: the aligner's knobs.
        template: the reference template (default: :func:`reference_template` at the settings' resolution).
        progress: show progress bars.

    Raises:
        MissingFileError: an image file is missing.
        AlignmentError: nothing alignable (no tissue).
    """
    started = time.perf_counter()
    if dataset is None:
        dataset = read_dataset(folder)
    if template is None:
        template = reference_template(settings.reference_resolution_um)
    stack = load_sections(folder, dataset, working_um=settings.section_working_um, channel=settings.channel,
                          progress=progress)
    coarse = stack.downsampled(max(1, int(round(settings.volume_working_um / stack.working_um))))
    log.info("read %d sections: %.1f s", len(stack), time.perf_counter() - started)
    transforms = centroid_transforms(coarse)
    if settings.neighbour_registration:
        transforms = register_neighbours(coarse, transforms, spacing=coarse.working_um, progress=progress)
        log.info("section-to-section: %.1f s", time.perf_counter() - started)
    grid = covering_grid(coarse, transforms, coarse.working_um)  # the volume's in-plane grid, kept
    tvr: Affine3d | None = None
    rounds = max(1, settings.rounds)
    if settings.contrast not in ("model", "template"):
        raise ValueError(f"contrast must be 'model' or 'template', got {settings.contrast!r}")
    contrast = settings.contrast  # "model" may turn into "template" after the first round (below)
    shape_placed = False  # a half brain: the shape stage's 3-D transform is kept (see HALF_BRAIN_SHAPE_ONLY)
    for round_ in range(1, rounds + 1):
        first = round_ == 1
        # the earlier rounds only feed the next round's volume: fewer points (AlignSettings.early_*_points)
        last = round_ == rounds
        volume_points = settings.volume_points if last else min(settings.volume_points,
                                                                 settings.early_volume_points)
        section_points = settings.section_points if last else min(settings.section_points,
                                                                  settings.early_section_points)
        volume = build_volume(coarse, transforms, grid)
        target = template
        if contrast == "model":
            if first:
                tvr, shape_correlation, start = shape_register(
                    volume, template.brain_pyramid(), dataset.plane, template.centroids_um(),
                    _start_names(volume, template, dataset.plane))
                shape_placed = HALF_BRAIN_SHAPE_ONLY and start.startswith(("left", "right"))
                log.info("shape stage (start %s, correlation %.3f%s): %.1f s", start, shape_correlation,
                         "; a half brain: kept in 3-D" if shape_placed else "", time.perf_counter() - started)
            elif shape_placed and HALF_BRAIN_SHAPE_ROUNDS:
                tvr, shape_correlation = shape_refine(volume, template.brain_pyramid(), tvr)
                log.info("round %d/%d, shape (correlation %.3f): %.1f s", round_, rounds, shape_correlation,
                         time.perf_counter() - started)
            target = template.modelled(volume, tvr)
        shape_tvr = tvr
        tvr, volume_correlation = register_to_template(
            volume, target, dataset.plane, initial=tvr, max_points=volume_points,
            sigmas_um=settings.first_volume_sigmas_um if first else settings.volume_sigmas_um,
            iterations=20 if not shape_placed or HALF_BRAIN_MAX_SHIFT > 0 else 0)
        if shape_placed and HALF_BRAIN_MAX_SHIFT > 0:
            shift = out_of_plane_shift_um(volume, shape_tvr, tvr)
            limit = HALF_BRAIN_MAX_SHIFT * section_spacing(stack.sz_um)
            log.info("round %d/%d: the intensity model's 3-D step moves the half brain %.0f um out of plane (%s)",
                     round_, rounds, shift, "kept" if shift <= limit else f"over {limit:.0f} um: refused")
            if shift > limit:
                tvr, volume_correlation = register_to_template(
                    volume, target, dataset.plane, initial=shape_tvr, max_points=volume_points,
                    sigmas_um=settings.volume_sigmas_um, iterations=0)
        log.info("round %d/%d, 3-D (correlation %.3f): %.1f s", round_, rounds, volume_correlation,
                 time.perf_counter() - started)
        if first:
            implausible = implausible_tissue(stack, template, tvr)
            if implausible:
                for k in implausible:
                    log.warning("section %d: its tissue covers %.0f mm2, far more than the brain where it lies: "
                                "taken for background (a bias field?), the section is placed as its neighbour",
                                stack.section_images[k].section_number,
                                stack.masks[k].sum() * stack.working_um ** 2 / 1e6)
                for k in implausible:
                    for s in {id(stack): stack, id(coarse): coarse}.values():
                        s.masks[k] = np.zeros_like(s.masks[k])
                        s.images[k] = np.zeros_like(s.images[k])
                volume = build_volume(coarse, transforms, grid)
        if first and contrast == "model" and settings.template_check and template.labels is not None:
            # A specimen that looks like the template (its per-structure means follow the template's) is refined
            # with the template's own values from here on: measured on today's Nissl-like specimens, the
            # template similarity aligns them better than the specimen's per-structure model does.
            likeness = template_likeness(template.labels, template.volume, template.resolution_um, volume, tvr)
            log.info("template check: likeness %.3f (the template's similarity from %.2f)", likeness,
                     TEMPLATE_LIKENESS)
            if likeness >= TEMPLATE_LIKENESS:
                contrast = "template"
                tvr, volume_correlation = register_to_template(volume, template, dataset.plane, initial=tvr,
                                                               max_points=volume_points,
                                                               sigmas_um=settings.volume_sigmas_um)
        if contrast == "model":
            target = template.modelled(volume, tvr)
        else:
            target = template
        # what a well-aligned section reaches: the volume's correlation relative to the template's typical 0.9
        expected = 1.0 if contrast == "template" else float(np.clip(volume_correlation / 0.9, 0.3, 1.0))
        # the first round refines at the volume's (coarse) pixel, later rounds at the section working pixel
        transforms, correlation, rejected = refine_sections(
            coarse if first else stack, transforms, target, tvr, progress=progress, expected=expected,
            centroid_start=first and settings.first_centroid_start,
            max_points=section_points,
            sigmas_um=settings.first_sigmas_um if first else settings.sigmas_um,
            description=f"round {round_}/{rounds}: refining sections")
        log.info("round %d/%d, 2-D at %g um: %.1f s", round_, rounds, (coarse if first else stack).working_um,
                 time.perf_counter() - started)
    assert tvr is not None
    deformation = None
    usable = int(sum(stack.has_tissue(k) and not stack.failed[k] for k in range(len(stack))))
    sparse = usable < NONLINEAR_MIN_SECTIONS
    if settings.nonlinear and sparse and not settings.sparse_nonlinear:
        log.info("non-linear stage skipped: %d usable sections (fewer than %d)", usable, NONLINEAR_MIN_SECTIONS)
    elif settings.nonlinear:
        volume = build_volume(coarse, transforms, grid)
        target = template.modelled(volume, tvr) if contrast == "model" else template
        # few sections: in-plane displacements only, on a coarser grid (module docstring of .nonlinear)
        deformation, before, after = register_deformation(
            volume, tvr, target.pyramid, in_plane=sparse,
            control_um=SPARSE_CONTROL_UM if sparse else CONTROL_UM)
        log.info("non-linear stage (correlation %.3f -> %.3f%s): %.1f s", before, after,
                 "" if deformation is not None else ", refused", time.perf_counter() - started)
    transforms = _fill_empty_sections(stack, transforms)
    warnings = _check_result(tvr, volume_correlation)
    for warning in warnings:
        log.warning("SectionDataSet %d: %s", dataset.id, warning)
    scale = Affine2d(np.eye(2) * dataset.pixel_size_um, np.zeros(2))
    alignment2d = {image.id: Alignment2d.from_tsv(t.compose(scale))
                   for image, t in zip(stack.section_images, transforms)}
    return AlignResult(
        alignment2d=alignment2d, alignment3d=Alignment3d.from_tvr(tvr),
        section_correlation={image.id: float(c) for image, c in zip(stack.section_images, correlation)},
        volume_correlation=float(volume_correlation),
        rejected=[stack.section_images[k].id for k in rejected],
        seconds=time.perf_counter() - started, warnings=warnings, doubtful_below=FALLBACK_BELOW * expected,
        deformation=deformation, contrast=contrast,
        without_tissue=[image.id for k, image in enumerate(stack.section_images)
                        if not stack.failed[k] and not stack.has_tissue(k)])


def sections_without_tissue(folder: str | os.PathLike[str], dataset: SectionDataSet | None = None, *,
                            reference_resolution_um: int = 25) -> list[int]:
    """Image ids of the sections (not failed) whose alignment image shows no tissue, as the aligner reads them at
    the working pixel of ``reference_resolution_um`` (:func:`.reconstruct.tissue_shown`): for a data set aligned
    elsewhere, whose sections the aligner did not read. None are named when fewer than half the usable sections show
    tissue: the aligner finds tissue against a slide's border, and images without one (windows inside the brain)
    show it none, which does not make them empty.
    """
    dataset = read_dataset(folder) if dataset is None else dataset
    shown = tissue_shown(folder, dataset,
                         working_um=AlignSettings(reference_resolution_um=reference_resolution_um).section_working_um)
    usable = [image.id for image in dataset.sorted_images() if not image.failed]
    empty = [i for i in usable if not shown[i]]
    if 2 * (len(usable) - len(empty)) < len(usable):
        return []
    return empty


def align_dataset(folder: str | os.PathLike[str], *, reference_resolution_um: int = 25,
                  progress: bool = True, nonlinear: bool = True, contrast: str = "model",
                  first_levels_um: tuple[tuple[float, ...], tuple[float, ...]] | None = None
                  ) -> AlignResult:
    """Align a data set folder to the reference and store the result in its ``dataset.json``.

    Args:
        folder: a data set folder (``dataset.json`` + ``images/``); its images need not be aligned.
        reference_resolution_um: the reference template's voxel size: 25 (most accurate), 50 or 100 um.
        progress: show progress bars.
        nonlinear: run the non-linear stage after the affine (:class:`AlignSettings`).
        contrast: ``"model"`` (any stain) or ``"template"`` (a specimen with the template's contrast)
            (:class:`AlignSettings`).
        first_levels_um: the first round's smoothing levels, ``(first_volume_sigmas_um, first_sigmas_um)``
            (:class:`AlignSettings`; None: its defaults).

    Returns:
        What the aligner found (:class:`AlignResult`): every image's pixel ``(x, y)`` <-> specimen ``(sx, sy)`` um
        transform, the data set's specimen ``(sx, sy, sz)`` um <-> reference ``(AP, DV, LR)`` um one, and the
        sections without tissue.

    Raises:
        MissingFileError: the folder, ``dataset.json`` or an image file is missing.
        AlignmentError: the images show no tissue.
    """
    levels = {} if first_levels_um is None else {"first_volume_sigmas_um": tuple(first_levels_um[0]),
                                                 "first_sigmas_um": tuple(first_levels_um[1])}
    result = align_sections(folder, settings=AlignSettings(reference_resolution_um=reference_resolution_um,
                                                           nonlinear=nonlinear, contrast=contrast, **levels),
                            progress=progress)
    update_alignment(folder, result.alignment2d, result.alignment3d, result.deformation)
    return result


def run_align_cli(folder: str | os.PathLike[str], reference_resolution_um: int = 25, *,
                  template: str | os.PathLike[str] | None = None, contrast: str = "model",
                  nonlinear: bool = True) -> AlignResult:
    """``brainmap align DIR [--template FILE] [--contrast model|template] [--affine-only]``: align the data set
    in ``folder``, write the transforms into its ``dataset.json`` (and ``deformation.nrrd``) and print a
    one-line summary (progress bars on stderr). Returns the result.

    ``template``: a volume in the CCF at ``reference_resolution_um`` (e.g. Allen's average template) instead of
    the default (a cached average template, else the annotation-derived one). With ``contrast="model"`` only
    its brain and labels matter (the specimen's own intensity model is registered to); with ``"template"`` its
    values are registered to directly (a specimen of the same contrast)."""
    folder = Path(folder)
    dataset = read_dataset(folder)
    reference = template_from_file(template, reference_resolution_um) if template is not None else None
    result = align_sections(folder, dataset, AlignSettings(reference_resolution_um=reference_resolution_um,
                                                           contrast=contrast, nonlinear=nonlinear),
                            template=reference, progress=True)
    update_alignment(folder, result.alignment2d, result.alignment3d, result.deformation)
    print(f"aligned data set {dataset.id} ({dataset.product}, {dataset.plane}) in {folder}: {result.summary()}")
    return result
