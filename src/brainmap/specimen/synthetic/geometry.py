"""The geometry of a synthetic specimen: how the brain sits in the specimen volume, which sections are cut,
where each section image's pixels are, and what damage each section has.

Everything follows ``docs/dataset-format.md``: image pixels ``(x, y)`` -> specimen ``(sx, sy) = tsv(x, y)``,
``sz = section_number * section_thickness_um`` -> reference ``(AP, DV, LR) = tvr(sx, sy, sz)``, microns.

* :func:`random_specimen_transform` draws the true ``tvr``: the plane's nominal axis permutation
  (:func:`~brainmap.specimen.model.nominal_tvr`), then a rotation of up to ``max_rotation_deg`` about a random
  axis and an anisotropic scale (tissue shrinkage/expansion, per reference axis) about the centre of the
  reference volume, and a shift of up to ``max_shift_um`` (per axis) -- so the brain stays in view.
* :func:`plan_specimen` finds the brain's extent along the cutting axis through that transform, picks the
  section numbers (connectivity: 100 um sections, every one, ~130-140 coronal sections; ISH: 25 um sections,
  every 8th -- 200 um apart -- ~60 coronal, or ~20-25 sagittal over the LEFT hemisphere only; no coronal
  section the posterior face of the volume cuts), sizes one image
  canvas for all sections (tissue footprint plus a margin), and draws for each section a 2-D jitter (rotation
  up to ``max_jitter_deg``, shift up to ``max_jitter_shift_um``): the true Alignment2d.
* Damage (:class:`DamageRates`): missing sections (a gap in the section numbers), failed sections (written,
  flagged ``failed``, with a large loss of tissue), tears (a thin crack without tissue along a random smooth
  curve) and bubbles (an ellipse: less tissue, a bright haze and rim). The damage of each section is stored in
  pixel coordinates so the renderer and the truth files agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainmap.atlas import ReferenceSpace
from brainmap.atlas.bundled import MIDLINE_LR_UM
from brainmap.specimen.model import PLANES, nominal_tvr
from brainmap.specimen.transforms import Affine2d, Affine3d, Alignment2d

__all__ = [
    "SAMPLING",
    "DamageRates",
    "SectionPlan",
    "SpecimenPlan",
    "brain_points_um",
    "face_cut_limits",
    "plan_specimen",
    "plan_to_dict",
    "random_specimen_transform",
    "section_numbers",
]

#: (section_thickness_um, sampling_um) per product.
SAMPLING: dict[str, tuple[float, float]] = {"connectivity": (100.0, 100.0), "ish": (25.0, 200.0)}
#: Centre of the CCF volume, microns (AP, DV, LR): the pivot of the specimen's rotation and scale.
REFERENCE_CENTER_UM = np.array([6600.0, 4000.0, 5700.0])


@dataclass(frozen=True)
class DamageRates:
    """Probabilities, per section, of each kind of damage (independent draws).

    Attributes:
        missing: the section is lost: no image, a gap in the section numbers.
        failed: the section is badly damaged (a large part of the tissue lost) and flagged ``failed``.
        tear: a thin crack without tissue along a random curve.
        bubble: an air bubble: an ellipse with less tissue, a bright haze and a bright rim.
        fold: a fold: a band of tissue (100-400 um) lies folded over its neighbour band (doubled there, bare
            glass where it came from); drawn only when above 0, so specimens without folds keep their draws.
        at_least_one: when no section drew any damage, give one (not the first or last) a tear, so that a
            damaged data set always shows damage.
    """

    missing: float = 0.03
    failed: float = 0.02
    tear: float = 0.08
    bubble: float = 0.05
    at_least_one: bool = True
    fold: float = 0.0

    @classmethod
    def none(cls) -> DamageRates:
        """No damage at all."""
        return cls(0.0, 0.0, 0.0, 0.0, at_least_one=False)


@dataclass
class SectionPlan:
    """One section of the plan.

    Attributes:
        section_number: physical section index; ``sz = section_number * section_thickness_um``.
        image_id: the SectionImage id.
        alignment2d: the TRUE Alignment2d (pixel ``(x, y)`` <-> specimen ``(sx, sy)`` um).
        jitter: the 2-D jitter drawn: ``{"rotation_deg", "shift_um": [dx, dy]}``.
        failed: flagged failed (badly damaged).
        damage: damage records in pixel coordinates: ``{"kind": "tear", "points": [[x, y], ...],
            "width_px": w}``, ``{"kind": "bubble", "center": [x, y], "axes": [a, b], "angle_deg": t}``,
            ``{"kind": "loss", "point": [x, y], "normal": [nx, ny]}`` (tissue on the side the normal points to
            is gone; failed sections).
    """

    section_number: int
    image_id: int
    alignment2d: Alignment2d
    jitter: dict[str, Any]
    failed: bool = False
    damage: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SpecimenPlan:
    """Everything geometric about a synthetic specimen.

    Attributes:
        product, plane: as in SectionDataSet.
        section_thickness_um, sampling_um, pixel_size_um: microns.
        tvr: the TRUE specimen volume -> reference transform.
        width, height: the image canvas in pixels (the same for every section).
        sections: the imaged sections, by increasing section number (missing ones excluded).
        missing_section_numbers: sections lost (a gap in the numbers).
        specimen: the draws of :func:`random_specimen_transform` (rotation, scale, shift).
        hemisphere: 1 when only the left hemisphere is cut (sagittal ISH), else 3.
    """

    product: str
    plane: str
    section_thickness_um: float
    sampling_um: float
    pixel_size_um: float
    tvr: Affine3d
    width: int
    height: int
    sections: list[SectionPlan]
    missing_section_numbers: list[int]
    specimen: dict[str, Any]
    hemisphere: int = 3


def _apply(affine: Affine3d, points: np.ndarray) -> np.ndarray:
    """``affine`` applied to ``(N, 3)`` points, column by column (faster than a matmul with a 3-wide inner axis
    for many points)."""
    out = np.empty_like(points, dtype=np.float64)
    for i in range(3):
        m = affine.matrix[i]
        out[:, i] = m[0] * points[:, 0] + m[1] * points[:, 1] + m[2] * points[:, 2] + affine.translation[i]
    return out


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues' rotation matrix about a unit axis."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def random_specimen_transform(rng: np.random.Generator, plane: str = "coronal", *, max_rotation_deg: float = 5.0,
                              scale_range: tuple[float, float] = (0.95, 1.05), max_shift_um: float = 300.0,
                              info: dict[str, Any] | None = None) -> Affine3d:
    """A random true ``tvr`` (specimen volume -> reference, microns) for a cut of ``plane``.

    ``tvr(s) = C + shift + R S (P s - C)``: ``P`` is :func:`nominal_tvr` (so that nominally the specimen axes are
    the plane's, and the specimen coordinates of a point equal its permuted reference coordinates); ``R`` a
    rotation by an angle uniform in ``[0, max_rotation_deg]`` about a uniformly random axis; ``S`` a diagonal
    scale per reference axis, uniform in ``scale_range``; ``C`` the centre of the reference volume, the pivot;
    ``shift`` uniform in ``[-max_shift_um, max_shift_um]`` per axis. ``info``, if given, receives the draws.
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    p = nominal_tvr(plane).matrix
    axis = rng.normal(size=3)
    angle = np.deg2rad(rng.uniform(0.0, max_rotation_deg))
    rotation = _rotation(axis, angle)
    scale = rng.uniform(scale_range[0], scale_range[1], size=3)
    shift = rng.uniform(-max_shift_um, max_shift_um, size=3)
    matrix = rotation @ np.diag(scale) @ p
    translation = REFERENCE_CENTER_UM + shift - rotation @ np.diag(scale) @ REFERENCE_CENTER_UM
    if info is not None:
        info.update({"rotation_axis": (axis / np.linalg.norm(axis)).tolist(), "rotation_deg": float(np.rad2deg(angle)),
                     "scale": scale.tolist(), "shift_um": shift.tolist(), "pivot_um": REFERENCE_CENTER_UM.tolist()})
    return Affine3d(matrix, translation)


def brain_points_um(space: ReferenceSpace, step_um: float = 100.0, hemisphere: int = 3) -> np.ndarray:
    """Centres ``(N, 3)`` (AP, DV, LR um) of the voxels inside the brain (annotation != 0), subsampled to about
    ``step_um``; ``hemisphere`` 1 keeps LR < 5700 only, 2 LR >= 5700, 3 both."""
    factor = max(1, int(round(step_um / float(np.min(space.resolution)))))
    sub = space.annotation[::factor, ::factor, ::factor]
    idx = np.argwhere(sub != 0) * factor
    points = (idx + 0.5) * space.resolution
    if hemisphere == 1:
        points = points[points[:, 2] < MIDLINE_LR_UM]
    elif hemisphere == 2:
        points = points[points[:, 2] >= MIDLINE_LR_UM]
    return points


def section_numbers(z_min_um: float, z_max_um: float, thickness_um: float, every: int, phase: int) -> list[int]:
    """Section numbers ``n`` with ``n % every == phase`` whose plane ``n * thickness_um`` lies in
    ``[z_min_um, z_max_um]``, plus one beyond each end when its plane is within ``thickness * every / 2`` (so
    the sections span the brain)."""
    first = int(np.ceil(z_min_um / thickness_um))
    first += (phase - first) % every
    half = thickness_um * every / 2.0
    if (first - every) * thickness_um >= z_min_um - half and first - every >= 0:
        first -= every
    last = int(np.floor(z_max_um / thickness_um))
    last -= (last - phase) % every
    if (last + every) * thickness_um <= z_max_um + half:
        last += every
    return list(range(max(first, phase), last + 1, every))


def face_cut_limits(space: ReferenceSpace, tvr: Affine3d) -> tuple[float, float]:
    """``(z_min, z_max)``: the section planes ``sz`` (um) that the reference volume's faces do not cut.

    The brain reaches some faces of the volume (in CCF v3 the medulla runs through the posterior face, AP =
    13,200 um): the tissue beyond is not in the reference, so a section whose plane crosses such a face over
    the brain's cross-section there would show an artificial straight cut. For each face with brain voxels
    that the sections run roughly parallel to (the cutting axis within 45 degrees of the face's normal), the
    plane at ``sz`` must stay inside the volume over the face's brain footprint (the face's brain voxel
    centres, mapped into the specimen): this bounds ``sz``. Faces the cutting axis runs along (a sagittal
    series and the posterior face) give no bound: every such section meets them. ``(-inf, inf)`` when no face
    bounds the planes.
    """
    z_min, z_max = -np.inf, np.inf
    trv = tvr.inverse()
    matrix = tvr.matrix
    res = np.asarray(space.resolution, dtype=np.float64)
    for axis in range(3):
        along = matrix[axis, 2]  # d(reference axis) / d(sz)
        if abs(along) < np.cos(np.deg2rad(45.0)) * np.linalg.norm(matrix[:, 2]):
            continue
        n = space.shape[axis]
        for index, bound in ((0, 0.0), (n - 1, n * res[axis])):
            face = np.argwhere(np.take(space.annotation, index, axis=axis) != 0)
            if face.size == 0:
                continue
            others = [a for a in range(3) if a != axis]
            points = np.empty((len(face), 3))
            points[:, axis] = bound
            for col, a in enumerate(others):
                points[:, a] = (face[:, col] + 0.5) * res[a]
            footprint = _apply(trv, points)[:, :2] @ matrix[axis, :2]  # the in-plane part of the axis coordinate
            if index == 0:  # stay at coordinate >= 0: along * sz >= -t - footprint
                limit = (-tvr.translation[axis] - footprint) / along
                if along > 0:
                    z_min = max(z_min, float(limit.max()))
                else:
                    z_max = min(z_max, float(limit.min()))
            else:  # stay at coordinate <= bound
                limit = (bound - tvr.translation[axis] - footprint) / along
                if along > 0:
                    z_max = min(z_max, float(limit.min()))
                else:
                    z_min = max(z_min, float(limit.max()))
    return z_min, z_max


def _draw_tear(rng: np.random.Generator, center: np.ndarray, size_px: np.ndarray, pixel_um: float) -> dict:
    """A tear: a smooth random curve (polyline in pixels) across part of the tissue, 15-50 um wide."""
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    length = rng.uniform(0.3, 0.7) * float(np.min(size_px))
    start = center + rng.uniform(-0.2, 0.2, 2) * size_px - direction * length / 2
    t = np.linspace(0.0, 1.0, 64)
    wiggle = (rng.uniform(0.03, 0.1) * length * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 6.3))
              + np.cumsum(rng.normal(0, 0.004 * length, t.size)))
    points = start + np.outer(t * length, direction) + np.outer(wiggle, normal)
    return {"kind": "tear", "points": points.round(2).tolist(), "width_px": float(rng.uniform(15, 50) / pixel_um)}


def _draw_bubble(rng: np.random.Generator, center: np.ndarray, size_px: np.ndarray, pixel_um: float) -> dict:
    """A bubble: an ellipse of semi-axes 150-600 um somewhere over the tissue."""
    axes = rng.uniform(150.0, 600.0, 2) / pixel_um
    return {"kind": "bubble", "center": (center + rng.uniform(-0.3, 0.3, 2) * size_px).round(2).tolist(),
            "axes": axes.round(2).tolist(), "angle_deg": float(rng.uniform(0, 180))}


def _draw_fold(rng: np.random.Generator, center: np.ndarray, size_px: np.ndarray, pixel_um: float) -> dict:
    """A fold: a straight line across the tissue; the band of 100-400 um behind it lies folded over the band in
    front of it."""
    angle = rng.uniform(0, 2 * np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    point = center + normal * rng.uniform(0.15, 0.4) * float(np.min(size_px))
    return {"kind": "fold", "point": point.round(2).tolist(), "normal": normal.round(6).tolist(),
            "width_px": float(rng.uniform(100.0, 400.0) / pixel_um)}


def _draw_loss(rng: np.random.Generator, center: np.ndarray, size_px: np.ndarray) -> dict:
    """A failed section's loss: the tissue beyond a random straight line (20-45 % of the canvas) is gone."""
    angle = rng.uniform(0, 2 * np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    point = center + normal * rng.uniform(0.0, 0.25) * float(np.min(size_px))
    return {"kind": "loss", "point": point.round(2).tolist(), "normal": normal.round(6).tolist()}


def plan_specimen(space: ReferenceSpace, product: str, plane: str, pixel_size_um: float, rng: np.random.Generator,
                  *, dataset_id: int, damage: DamageRates | None = None, max_rotation_deg: float = 5.0,
                  scale_range: tuple[float, float] = (0.95, 1.05), max_shift_um: float = 300.0,
                  max_jitter_deg: float = 3.0, max_jitter_shift_um: float = 200.0, margin_um: float = 500.0,
                  hemisphere: int | None = None) -> SpecimenPlan:
    """Plan a synthetic specimen: the true 3-D transform, the sections, their true 2-D transforms and damage.

    Args:
        space: the reference space (any resolution; its annotation gives the brain's extent).
        product: ``"connectivity"`` (100 um sections, all imaged) or ``"ish"`` (25 um sections, every 8th).
        plane: ``"coronal"`` or ``"sagittal"``.
        pixel_size_um: image pixel size, microns.
        rng: the random generator (everything drawn here comes from it, in a fixed order).
        dataset_id: the SectionDataSet id; image ids are ``dataset_id * 1000 + section_number``.
        damage: damage probabilities (``None``: no damage).
        hemisphere: 1 to cut only the left hemisphere (LR < 5700; the default for sagittal ISH), 3 for all.

    The sections span the brain along the cutting axis: the extent of the brain's voxels (or the left
    hemisphere's) mapped through ``trv``, less the sections whose plane a face of the reference volume cuts
    across the brain (:func:`face_cut_limits`: the posterior coronal sections through the medulla, which runs
    out of the volume). For a left-hemisphere series, the last section is the last one whose
    plane stays at LR < 5700 over the whole tissue footprint, so no image holds right-hemisphere tissue.
    """
    if product not in SAMPLING:
        raise ValueError(f"product must be one of {tuple(SAMPLING)}, got {product!r}")
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be a positive number of microns, got {pixel_size_um!r}")
    damage = damage or DamageRates.none()
    if hemisphere is None:
        hemisphere = 1 if (product == "ish" and plane == "sagittal") else 3
    thickness, sampling = SAMPLING[product]
    every = int(round(sampling / thickness))

    specimen_info: dict[str, Any] = {}
    tvr = random_specimen_transform(rng, plane, max_rotation_deg=max_rotation_deg, scale_range=scale_range,
                                    max_shift_um=max_shift_um, info=specimen_info)
    trv = tvr.inverse()
    all_points = _apply(trv, brain_points_um(space, 100.0))
    cut_points = _apply(trv, brain_points_um(space, 100.0, hemisphere)) if hemisphere != 3 else all_points
    z_min, z_max = float(cut_points[:, 2].min()), float(cut_points[:, 2].max())
    if hemisphere == 1:
        # LR on a section plane: row 2 of tvr; its largest value over the tissue footprint must stay < midline.
        a = tvr.matrix[2]
        footprint_max = float(np.max(all_points[:, :2] @ a[:2]))
        if a[2] <= 0:
            raise ValueError("the cutting axis does not run left to right; cannot cut a left hemisphere series")
        z_max = min(z_max, (MIDLINE_LR_UM - 1.0 - tvr.translation[2] - footprint_max) / a[2])
    phase = int(rng.integers(every))
    numbers = section_numbers(z_min, z_max, thickness, every, phase)
    if hemisphere == 1:  # never past the midline, even by the half-step allowance at the end
        numbers = [n for n in numbers if n * thickness <= z_max]
    face_min, face_max = face_cut_limits(space, tvr)  # no section the volume's faces cut (posterior coronal)
    numbers = [n for n in numbers if n >= 0 and face_min <= n * thickness <= face_max]
    if not numbers:
        raise ValueError("no section intersects the brain; check the transform")

    # One canvas for all sections: the footprint of the cut tissue plus margins for the jitter.
    lo, hi = cut_points[:, :2].min(axis=0) - 50.0, cut_points[:, :2].max(axis=0) + 50.0
    center_um = (lo + hi) / 2.0
    half = (hi - lo) / 2.0
    half_diag = float(np.hypot(*half))
    pad = margin_um + max_jitter_shift_um + np.sin(np.deg2rad(max_jitter_deg)) * half_diag
    width = int(np.ceil(2 * (half[0] + pad) / pixel_size_um))
    height = int(np.ceil(2 * (half[1] + pad) / pixel_size_um))
    canvas_center = np.array([width / 2.0, height / 2.0])
    size_px = 2 * half / pixel_size_um

    sections: list[SectionPlan] = []
    missing: list[int] = []
    for n in numbers:
        theta = np.deg2rad(rng.uniform(-max_jitter_deg, max_jitter_deg))
        shift = rng.uniform(-max_jitter_shift_um, max_jitter_shift_um, 2)
        c, s = np.cos(theta), np.sin(theta)
        matrix = pixel_size_um * np.array([[c, -s], [s, c]])
        tsv = Affine2d(matrix, center_um + shift - matrix @ canvas_center)
        draws = rng.random(4)
        # where the tissue centre lands in this image
        tissue_px = tsv.inverse().apply(center_um)
        records: list[dict[str, Any]] = []
        is_missing = draws[0] < damage.missing
        failed = (not is_missing) and draws[1] < damage.failed
        if failed:
            records.append(_draw_loss(rng, tissue_px, size_px))
        if draws[2] < damage.tear:
            records.append(_draw_tear(rng, tissue_px, size_px, pixel_size_um))
        if draws[3] < damage.bubble:
            records.append(_draw_bubble(rng, tissue_px, size_px, pixel_size_um))
        if damage.fold > 0 and rng.random() < damage.fold:
            records.append(_draw_fold(rng, tissue_px, size_px, pixel_size_um))
        if is_missing:
            missing.append(n)
            continue
        sections.append(SectionPlan(section_number=n, image_id=int(dataset_id) * 1000 + n,
                                    alignment2d=Alignment2d.from_tsv(tsv), failed=bool(failed), damage=records,
                                    jitter={"rotation_deg": float(np.rad2deg(theta)), "shift_um": shift.tolist()}))
    if not sections:
        raise ValueError("every section was drawn missing; lower DamageRates.missing")
    if damage.at_least_one and not missing and not any(sec.damage for sec in sections):
        pick = sections[int(rng.integers(1, len(sections) - 1))] if len(sections) > 2 else sections[0]
        tissue_px = pick.alignment2d.tvs.apply(center_um)
        pick.damage.append(_draw_tear(rng, tissue_px, size_px, pixel_size_um))
    return SpecimenPlan(product=product, plane=plane, section_thickness_um=thickness, sampling_um=sampling,
                        pixel_size_um=float(pixel_size_um), tvr=tvr, width=width, height=height, sections=sections,
                        missing_section_numbers=missing, specimen=specimen_info, hemisphere=int(hemisphere))


def plan_to_dict(plan: SpecimenPlan) -> dict[str, Any]:
    """The plan's truth as plain JSON types (used by ``truth/transforms.json``)."""
    from brainmap.specimen.transforms import Alignment3d

    return {
        "product": plan.product,
        "plane": plan.plane,
        "section_thickness_um": plan.section_thickness_um,
        "sampling_um": plan.sampling_um,
        "pixel_size_um": plan.pixel_size_um,
        "width": plan.width,
        "height": plan.height,
        "hemisphere_id": plan.hemisphere,
        "specimen": plan.specimen,
        "alignment3d": Alignment3d.from_tvr(plan.tvr).to_allen(),
        "missing_section_numbers": plan.missing_section_numbers,
        "images": [{"id": s.image_id, "section_number": s.section_number, "failed": s.failed,
                    "alignment2d": s.alignment2d.to_allen(), "jitter": s.jitter, "damage": s.damage}
                   for s in plan.sections],
    }

