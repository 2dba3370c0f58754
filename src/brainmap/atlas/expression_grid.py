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


def expression_grid_annotation(annotation: np.ndarray, resolution_um: int = 25) -> np.ndarray:
    """The 200 um grid annotation (uint32, Fortran order) from an annotation at ``resolution_um``: every
    ``200 / resolution_um``-th voxel from the first, in a box one voxel larger per axis.

    Parameters
    ----------
    annotation : (AP, DV, LR) ndarray
        Structure ids; the CCF's 25 um one is 528 x 320 x 456 voxels.
    resolution_um : int
        Its voxel size in um: 25, 50 or 100 (a divisor of 200).

    Returns
    -------
    (67, 41, 58) ndarray for the CCF at any of the three resolutions.

    Examples
    --------
    >>> from brainmap.atlas import ReferenceSpace
    >>> expression_grid_annotation(ReferenceSpace.bundled(100).annotation, 100).shape
    (67, 41, 58)
    """
    annotation = np.asarray(annotation)
    if annotation.ndim != 3:
        raise ValueError(f"the annotation must be 3-D (AP, DV, LR), got shape {annotation.shape}")
    if resolution_um <= 0 or EXPRESSION_GRID_RESOLUTION_UM % resolution_um:
        raise ValueError(f"the annotation's voxels must divide {EXPRESSION_GRID_RESOLUTION_UM} um, "
                         f"got {resolution_um} um")
    step = EXPRESSION_GRID_RESOLUTION_UM // int(resolution_um)
    sub = annotation[::step, ::step, ::step]
    grid = np.zeros(tuple(n + 1 for n in sub.shape), dtype=np.uint32, order="F")
    grid[: sub.shape[0], : sub.shape[1], : sub.shape[2]] = sub
    return grid


def on_expression_grid(space: ReferenceSpace) -> ReferenceSpace:
    """``space``'s ontology on the 200 um expression grid, its annotation sampled by
    :func:`expression_grid_annotation` (an isotropic space of 25, 50 or 100 um voxels).

    Examples
    --------
    >>> from brainmap.atlas import ReferenceSpace
    >>> on_expression_grid(ReferenceSpace.bundled(100)).annotation.shape
    (67, 41, 58)
    """
    resolution = np.asarray(space.resolution, dtype=np.float64)
    if not np.allclose(resolution, resolution[0]) or abs(resolution[0] - round(resolution[0])) > 1e-9:
        raise ValueError(f"the reference space's voxels must be cubes of whole microns, got {resolution.tolist()} um")
    annotation = expression_grid_annotation(space.annotation, int(round(resolution[0])))
    return ReferenceSpace(space.structure_tree, annotation, EXPRESSION_GRID_RESOLUTION_UM)


@lru_cache(maxsize=1)
def expression_grid_space() -> ReferenceSpace:
    """The bundled ontology on the 200 um expression grid (for ISH structure unionization and search).

    Made from the bundled 100 um annotation: its every other voxel holds the same labels as the 25 um one's every
    eighth (CCF 2017, all 150,480 voxels; ``tests/atlas/test_expression_grid.py``) and it is read in ~10 ms,
    not ~1.2 s (the 25 um file: 77 M voxels to inflate, measured 2026-12-07; each Dask worker that unionizes an
    ISH data set made this space).
    """
    return on_expression_grid(ReferenceSpace.bundled(100))
