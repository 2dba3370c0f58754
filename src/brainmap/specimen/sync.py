"""Image synchronization: what Allen's image sync services answer, computed from a data set's alignments.

Allen's services (``image_to_reference``, ``reference_to_image``, ``image_to_image``, ``structure_to_image``)
report locations on section images in pixels and locations in the reference space in microns. Here:

* pixels are ``(x = column, y = row)`` on a section image (see :mod:`brainmap.specimen.model`);
* reference points are ``(x, y, z) = (AP, DV, LR)`` microns, the PIR order of the CCF arrays, which is also
  the order of Allen's reference spaces 9 and 10 (+x posterior, +y inferior, +z right).

Allen keeps a second reference space (id 10) for sagittal data, a z (LR) flip of space 9, so that
left-hemisphere sagittal sections sync with the right-hemisphere coronal atlas. brainmap has one reference
space: a sagittal data set's ``tvr`` maps straight into the PIR space, its left-hemisphere sections to
``LR < 5700``. Whoever imports Allen's sagittal Alignment3d must fold that flip into ``tvr``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from brainmap.errors import BrainmapError
from brainmap.specimen.model import SectionDataSet, SectionImage, pixels_to_reference, reference_to_pixels

__all__ = [
    "MIDLINE_LR_UM",
    "EmptyStructureError",
    "ImageSyncResult",
    "ReferencePoint",
    "ReferenceSpaceLike",
    "image_to_image",
    "image_to_reference",
    "reference_to_image",
    "structure_centroid_um",
    "structure_to_image",
]

#: The LR position of the midline, microns: hemisphere 1 (left) is LR < this, 2 (right) LR >= this.
MIDLINE_LR_UM = 5700.0


class EmptyStructureError(BrainmapError, LookupError):
    """A structure has no voxel in the annotation (or in the hemisphere asked for), so it has no centroid."""

    def __str__(self) -> str:  # LookupError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else "empty structure"


class ReferenceSpaceLike(Protocol):
    """What :func:`structure_to_image` needs of a reference space (``brainmap.atlas.ReferenceSpace`` has it)."""

    annotation: np.ndarray  # uint32 structure ids, indexed (AP, DV, LR)
    resolution: Any  # microns: a float or an (AP, DV, LR) 3-tuple

    def make_structure_mask(self, structure_ids: Sequence[int]) -> np.ndarray: ...


@dataclass(frozen=True)
class ImageSyncResult:
    """A location on a section image, as Allen's ``image_sync`` record.

    Attributes:
        section_data_set_id: the data set.
        section_image_id: the image (the nearest usable section).
        section_number: that image's section number.
        x: column, pixels (continuous; may lie outside the image).
        y: row, pixels.
    """

    section_data_set_id: int
    section_image_id: int
    section_number: int
    x: float
    y: float

    def to_dict(self) -> dict[str, Any]:
        """The record as Allen's JSON fields."""
        return asdict(self)


@dataclass(frozen=True)
class ReferencePoint:
    """A point in the reference space, as Allen's ``image_to_reference`` answer: microns, PIR order.

    Attributes:
        x: AP, microns (+ = posterior).
        y: DV, microns (+ = ventral).
        z: LR, microns (+ = right; the midline is at 5700).
    """

    x: float
    y: float
    z: float

    def to_dict(self) -> dict[str, float]:
        """The point as Allen's JSON fields."""
        return asdict(self)

    def to_array(self) -> np.ndarray:
        """``[AP, DV, LR]`` microns."""
        return np.array([self.x, self.y, self.z])


def image_to_reference(dataset: SectionDataSet, section_image: SectionImage | int, x: float,
                       y: float) -> ReferencePoint:
    """The reference point (microns) under pixel ``(x = column, y = row)`` of one of the data set's images
    (the image or its id)."""
    ap, dv, lr = pixels_to_reference(dataset, section_image, [float(x), float(y)])
    return ReferencePoint(float(ap), float(dv), float(lr))


def reference_to_image(dataset: SectionDataSet, point_um: Sequence[float] | np.ndarray | ReferencePoint
                       ) -> ImageSyncResult:
    """The nearest usable section image of ``dataset`` to a reference point ``(AP, DV, LR)`` microns, and the
    pixel on it."""
    point = point_um.to_array() if isinstance(point_um, ReferencePoint) else np.asarray(point_um, dtype=float)
    if point.shape != (3,):
        raise ValueError(f"point_um must be one (AP, DV, LR) point in microns, got shape {point.shape}")
    found = reference_to_pixels(dataset, point)
    return ImageSyncResult(
        section_data_set_id=dataset.id,
        section_image_id=int(found.section_image_id),
        section_number=int(found.section_number),
        x=float(found.xy[0]),
        y=float(found.xy[1]),
    )


def image_to_image(src_dataset: SectionDataSet, src_image: SectionImage | int, x: float, y: float,
                   targets: Iterable[SectionDataSet]) -> list[ImageSyncResult]:
    """For each target data set (in order), the image and pixel corresponding to pixel ``(x, y)`` of
    ``src_image``, through the reference space."""
    point = image_to_reference(src_dataset, src_image, x, y)
    return [reference_to_image(target, point) for target in targets]


def _resolution(reference_space: ReferenceSpaceLike) -> np.ndarray:
    resolution = np.broadcast_to(np.asarray(reference_space.resolution, dtype=np.float64), (3,)).copy()
    if not (np.isfinite(resolution).all() and (resolution > 0).all()):
        raise ValueError(f"reference_space.resolution must be positive microns, got {reference_space.resolution!r}")
    return resolution


def structure_centroid_um(reference_space: ReferenceSpaceLike, structure_id: int,
                          hemisphere_id: int | None = None) -> np.ndarray:
    """The centroid ``(AP, DV, LR)`` microns of a structure's voxels (itself and its descendants, as
    ``make_structure_mask`` gives them): mean voxel index * resolution + resolution / 2 (voxel centres).

    ``hemisphere_id`` 1 (left, LR < 5700) or 2 (right) keeps one side; ``None`` (or 3, both) keeps all --
    for a bilateral structure the centroid is then near the midline, outside the structure itself.
    Two passes over the mask (per-axis voxel counts), no per-voxel index arrays.
    """
    resolution = _resolution(reference_space)
    mask = np.asarray(reference_space.make_structure_mask([structure_id]), dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"make_structure_mask returned an array of shape {mask.shape}, expected (AP, DV, LR)")
    if hemisphere_id in (1, 2):
        lr_centres = (np.arange(mask.shape[2]) + 0.5) * resolution[2]
        keep = lr_centres < MIDLINE_LR_UM if hemisphere_id == 1 else lr_centres >= MIDLINE_LR_UM
        mask = mask & keep[np.newaxis, np.newaxis, :]
    elif hemisphere_id not in (None, 3):
        raise ValueError(f"hemisphere_id must be 1 (left), 2 (right), 3 or None (both); got {hemisphere_id!r}")
    ap_dv = mask.sum(axis=2, dtype=np.int64)  # (AP, DV) counts: one pass
    lr = mask.sum(axis=(0, 1), dtype=np.int64)  # (LR,) counts: the second pass
    total = int(ap_dv.sum())
    if total == 0:
        side = {1: " in the left hemisphere", 2: " in the right hemisphere"}.get(hemisphere_id or 3, "")
        raise EmptyStructureError(f"structure {structure_id} has no voxel in the annotation{side}")
    profiles = (ap_dv.sum(axis=1), ap_dv.sum(axis=0), lr)
    mean_index = np.array([np.dot(np.arange(p.size), p) / total for p in profiles])
    return mean_index * resolution + resolution / 2


def structure_to_image(dataset: SectionDataSet, structure_id: int, reference_space: ReferenceSpaceLike,
                       hemisphere_id: int | None = None) -> ImageSyncResult:
    """The image and pixel of ``dataset`` at the centroid of a structure (see :func:`structure_centroid_um`
    for the centroid and ``hemisphere_id``)."""
    return reference_to_image(dataset, structure_centroid_um(reference_space, structure_id, hemisphere_id))
