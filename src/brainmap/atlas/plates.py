"""Atlas plates: coronal and sagittal planes of the CCF annotation, served as Allen's atlas images and drawings.

Allen's adult mouse reference atlas (Atlas 1, coronal; Atlas 2, sagittal) is a set of drawn plates. brainmap has
no drawings: it cuts the bundled 25 um CCF 2017 annotation every 100 um instead (coronal plates across the whole
brain, sagittal plates across the left hemisphere, as Allen's sagittal atlas) and draws each plate's structures
in the ontology's colours (``/api/v2/atlas_image_download``) or as SVG paths (``/api/v2/svg_download``).
Plate ``k`` (``section_number = k + 1``) is the annotation slice at index ``4 k + 2`` (the middle of the ``k``-th
100 um slab): an image of 25 um pixels, so pixel ``(x, y)`` is annotation voxel ``(x, y)`` of the slice
(coronal: x = LR, y = DV; sagittal: x = AP, y = DV).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ATLAS_STRUCTURES_GROUP", "ATLASES", "AtlasPlate", "PLATE_RESOLUTION_UM", "atlas_plates", "plate_by_id"]

#: Allen's atlas ids and names, the plane they cut and the id of the first plate (brainmap's own ids).
ATLASES = {
    1: {"name": "Mouse, P56, Coronal", "plane": "coronal", "first_id": 90_000_001},
    2: {"name": "Mouse, P56, Sagittal", "plane": "sagittal", "first_id": 90_100_001},
}
#: Allen's graphic group of the adult mouse atlas plates' structure boundaries (``svg_download/{id}?groups=28``).
ATLAS_STRUCTURES_GROUP = 28
#: Pixel size of a plate (um): the bundled 25 um annotation.
PLATE_RESOLUTION_UM = 25
_STEP = 4  # 100 um between plates
_SHAPE = (528, 320, 456)  # the 25 um annotation (AP, DV, LR)


@dataclass(frozen=True)
class AtlasPlate:
    """One plate: its id, atlas, plane, section number, annotation slice index and size in pixels."""

    id: int
    atlas_id: int
    plane: str
    section_number: int
    index: int
    width: int
    height: int

    @property
    def position_um(self) -> float:
        """Centre of the plate's slice along the cutting axis (um)."""
        return (self.index + 0.5) * PLATE_RESOLUTION_UM

    def to_row(self) -> dict:
        """The plate as an ``AtlasImage`` row."""
        return {"id": self.id, "data_set_id": self.atlas_id, "section_number": self.section_number,
                "annotated": True, "width": self.width, "height": self.height,
                "resolution": float(PLATE_RESOLUTION_UM), "x": 0, "y": 0}


@lru_cache(maxsize=1)
def atlas_plates() -> tuple[AtlasPlate, ...]:
    """Every plate of atlases 1 and 2, in id order."""
    plates = []
    ap, dv, lr = _SHAPE
    for atlas_id, atlas in ATLASES.items():
        if atlas["plane"] == "coronal":
            count, width = ap // _STEP, lr
        else:
            count, width = (lr // 2) // _STEP, ap
        for k in range(count):
            plates.append(AtlasPlate(atlas["first_id"] + k, atlas_id, atlas["plane"], k + 1, _STEP * k + _STEP // 2,
                                     width, dv))
    return tuple(plates)


def plate_by_id(plate_id: int) -> AtlasPlate | None:
    """The plate with this id, or None."""
    for plate in atlas_plates():
        if plate.id == plate_id:
            return plate
    return None
