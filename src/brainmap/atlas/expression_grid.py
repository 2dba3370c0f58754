"""Allen's 200 um ISH expression grid: 67 x 41 x 58 voxels (AP, DV, LR) = 159,326, voxel ``i`` centred at 200 i um.

The grid box is one voxel larger per axis than the 25 um annotation subsampled by 8 (66 x 40 x 57); the extra
last planes are unassigned (0). Voxel ``(i, j, k)`` takes the label at ``(200 i, 200 j, 200 k)`` um: it is
centred there and covers ``[200 i - 100, 200 i + 100)`` um along each axis (the convention ISH gridding follows,
:mod:`brainmap.pipeline.grid.expression`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from brainmap.atlas.reference_space import ReferenceSpace

EXPRESSION_GRID_RESOLUTION_UM = 200
EXPRESSION_GRID_SHAPE = (67, 41, 58)
#: The corner of voxel 0 (um, every axis): voxel ``i`` covers ``[200 i - 100, 200 i + 100)``.
EXPRESSION_GRID_ORIGIN_UM = -0.5 * EXPRESSION_GRID_RESOLUTION_UM
_SUBSAMPLE = 8


def expression_grid_annotation(annotation_25: np.ndarray) -> np.ndarray:
    """The 200 um grid annotation (67 x 41 x 58, uint32, Fortran order) from the 25 um one (528 x 320 x 456):
    ``annotation_25[::8, ::8, ::8]`` in a box one voxel larger per axis."""
    annotation_25 = np.asarray(annotation_25)
    if annotation_25.ndim != 3:
        raise ValueError(f"the 25 um annotation must be 3-D (AP, DV, LR), got shape {annotation_25.shape}")
    sub = annotation_25[::_SUBSAMPLE, ::_SUBSAMPLE, ::_SUBSAMPLE]
    grid = np.zeros(tuple(n + 1 for n in sub.shape), dtype=np.uint32, order="F")
    grid[: sub.shape[0], : sub.shape[1], : sub.shape[2]] = sub
    return grid


@lru_cache(maxsize=1)
def expression_grid_space() -> ReferenceSpace:
    """The bundled ontology on the 200 um expression grid (for ISH structure unionization and search)."""
    space25 = ReferenceSpace.bundled(25)
    return ReferenceSpace(space25.structure_tree, expression_grid_annotation(space25.annotation),
                          EXPRESSION_GRID_RESOLUTION_UM)
