"""Atlas plates drawn from the CCF annotation: structure labels, coloured pictures and SVG boundaries.

A plate (:mod:`brainmap.atlas.plates`) is one slice of the 25 um annotation. :func:`plate_labels` gives its
structure ids (rows DV; columns LR for coronal plates, AP for sagittal ones); :func:`plate_picture` colours them
as Allen's annotated plates are coloured (the ontology's ``color_hex_triplet``, white outside the brain), with
black boundaries; :func:`plate_svg` traces each structure's regions as closed SVG paths (marching squares at the
half-level of the structure's indicator, so a path runs along the boundary between pixel centres), one
``<path>`` per region, carrying Allen's ``structure_id`` and filled with its colour. Coordinates are plate pixels
(25 um), divided by ``2**downsample``.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage

from brainmap.atlas.plates import AtlasPlate
from brainmap.atlas.reference_space import ReferenceSpace

__all__ = ["plate_labels", "plate_picture", "plate_svg"]


def _space() -> ReferenceSpace:
    return ReferenceSpace.bundled(25)


def plate_labels(plate: AtlasPlate, space: ReferenceSpace | None = None) -> np.ndarray:
    """(height, width) uint32 structure ids of the plate (0 outside the brain)."""
    space = space or _space()
    annotation = np.asarray(space.annotation)
    if plate.plane == "coronal":
        return np.ascontiguousarray(annotation[plate.index, :, :])  # rows DV, columns LR
    return np.ascontiguousarray(annotation[:, :, plate.index].T)  # rows DV, columns AP


def _boundaries(labels: np.ndarray) -> np.ndarray:
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edge


def plate_picture(plate: AtlasPlate, annotation: bool = True, downsample: int = 0,
                  space: ReferenceSpace | None = None) -> np.ndarray:
    """(rows, cols, 3) uint8: with ``annotation``, structures in the ontology's colours with black boundaries on
    white; without, the boundaries alone (grey on white: brainmap has no Nissl plates). ``downsample`` halves
    the size that many times (nearest pixel)."""
    space = space or _space()
    labels = plate_labels(plate, space)
    picture = np.full(labels.shape + (3,), 255, dtype=np.uint8)
    edge = _boundaries(labels)
    if annotation:
        ids, inverse = np.unique(labels, return_inverse=True)
        colormap = space.structure_tree.get_colormap()
        colors = np.array([[255, 255, 255] if i == 0 else colormap[int(i)] for i in ids], dtype=np.uint8)
        picture = colors[inverse.reshape(labels.shape)]
        picture[edge] = 0
    else:
        picture[edge] = 96
    step = 2 ** int(downsample)
    return np.ascontiguousarray(picture[::step, ::step])


def _path(contour: np.ndarray, scale: float) -> str:
    points = contour[:, ::-1] * scale  # (row, col) -> (x, y)
    body = " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
    return f"M {body} Z"


def plate_svg(plate: AtlasPlate, structure_ids: Iterable[int] | None = None, downsample: int = 0,
              space: ReferenceSpace | None = None) -> str:
    """The plate's structure boundaries as SVG: one closed ``<path>`` per connected region of each structure
    (only ``structure_ids``, with their descendants' voxels, when given), ``structure_id`` and Allen's colour
    on each."""
    from skimage.measure import find_contours

    space = space or _space()
    labels = plate_labels(plate, space)
    tree = space.structure_tree
    colors = tree.get_hex_colormap("#")
    names = tree.get_acronym_map()
    wanted: dict[int, int] | None = None
    if structure_ids is not None:
        wanted = {}
        for sid in structure_ids:
            for d in tree.descendant_ids([int(sid)])[0]:
                wanted.setdefault(int(d), int(sid))
        present, inverse = np.unique(labels, return_inverse=True)
        mapped = np.array([wanted.get(int(i), 0) for i in present], dtype=np.uint32)
        labels = mapped[inverse.reshape(labels.shape)]
    scale = 1.0 / 2 ** int(downsample)
    height, width = labels.shape
    ids, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    paths = []
    for k, box in enumerate(ndimage.find_objects(compact + 1), start=0):
        sid = int(ids[k]) if k < ids.size else 0
        if box is None or sid == 0:
            continue
        rows, cols = box
        r0, c0 = max(rows.start - 1, 0), max(cols.start - 1, 0)
        crop = np.pad(compact[r0:rows.stop + 1, c0:cols.stop + 1] == k, 1)
        for contour in find_contours(crop.astype(np.float32), 0.5):
            if len(contour) < 3:
                continue
            contour = contour + (r0 - 1, c0 - 1)
            acronym = names.get(sid, "")
            paths.append(f'<path id="{sid}-{len(paths)}" structure_id="{sid}" acronym="{acronym}" '
                         f'style="stroke:black;fill:{colors.get(sid, "#FFFFFF")}" d="{_path(contour, scale)}"/>')
    w, h = width * scale, height * scale
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{w:g}" height="{h:g}" '
            f'viewBox="0 0 {w:g} {h:g}" atlas_image_id="{plate.id}">\n<g id="structures" graphic_group_label_id="28">\n'
            + "\n".join(paths) + "\n</g>\n</svg>\n")
