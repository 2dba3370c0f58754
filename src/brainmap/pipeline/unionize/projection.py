"""Projection structure unionization: Allen's ProjectionStructureUnionize rows from connectivity grids.

For every structure (with its descendants) and hemisphere (1 left, 2 right, 3 both), an *injection* record
and a *projection* record, following Allen's semantics:

Inputs per grid voxel: ``sum_pixels`` (image pixels sampled in the voxel), ``injection_fraction``,
``injection_density``, ``injection_energy``, ``projection_density``, ``projection_energy``, optional
``aav_exclusion_fraction`` (artefact mask; > 0 means excluded), ``sum_pixel_intensities``,
``injection_sum_pixel_intensities`` and ``data_mask``. Voxels with ``data_mask`` 0 or annotation 0 count nowhere.

* Injection record: sums over the structure's voxels of ``sum_pixels * injection_fraction`` (-> sum_pixels),
  ``sum_pixels * injection_density`` (-> sum_projection_pixels), ``sum_pixels * injection_energy``
  (-> sum_projection_pixel_intensity) and ``injection_sum_pixel_intensities`` (-> sum_pixel_intensity);
  the max voxel is the argmax of ``injection_density``.
* Projection record: the same sums with ``projection_density``, ``projection_energy`` and
  ``sum_pixel_intensities`` over the voxels where ``injection_fraction != 0`` or the voxel is not excluded, minus
  the injection record's sums, per directly annotated structure (before the roll-up, as AllenSDK does).
* Max voxel: a record has one only when its own ``sum_projection_pixels`` is > 0 (otherwise 0 at (0, 0, 0)):
  the voxel of the largest ``injection_density`` (injection) or ``projection_density * (1 - injection_fraction)``
  over the counted voxels (projection).
* Ancestors add their descendants' sums (exact zeros stay zero) and take the max voxel in AllenSDK's order: their
  own record first, then the descendants' in ascending signed label order (left labels negated), a later record
  winning a tie (``ancestor.max <= child.max``); both hemispheres: the side AllenSDK meets first, then the other
  under the same rule (:func:`~brainmap.pipeline.unionize.reduction.roll_up_allen_maxima`).
* Ratios: projection_density = sum_projection_pixels / sum_pixels, projection_energy =
  sum_projection_pixel_intensity / sum_pixels, projection_intensity = sum_projection_pixel_intensity /
  sum_projection_pixels (0 unless > 0); volume and projection_volume = pixel counts x pixel_size^2 x spacing x
  1e-9 mm3; normalized_projection_volume = projection_volume / (the whole brain's injection sum_projection_pixels x
  the same scale; 0 without an injection); max_voxel_x/y/z = voxel index x spacing in um (AP, DV, LR).
* Rows with sum_pixels == 0 are left out.

Equal to AllenSDK 2.16.2's ``TissuecyteUnionizer`` row for row (rtol 1e-9; ``tests/pipeline/
test_unionize_allensdk.py``) except where AllenSDK's answer hangs on ``np.argsort``'s unstable order: two voxels of
one structure tied for its largest value (brainmap takes the first in memory order), a record with projection
pixels but no positive density (AllenSDK then reports its first voxel in sort order, brainmap none), and a max voxel
at sort position 0 (AllenSDK reports (0, 0, 0)). Sums are float64 (AllenSDK sums float32 grids in float32).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from brainmap.atlas.annotation_stream import StreamedAnnotation
from brainmap.atlas.reference_space import ReferenceSpace
from brainmap.io.nrrd_stream import VolumeSlabs
from brainmap.pipeline.unionize.grids import PROJECTION_GRID_NAMES, GridFolder, require
from brainmap.pipeline.unionize._projection_pass import (
    SUM_NAMES, projection_direct_sums, projection_direct_sums_streamed,
)
from brainmap.pipeline.unionize.reduction import roll_up_allen_maxima, roll_up_sums, voxel_coordinates_um

#: Allen's ProjectionStructureUnionize columns, in AllenSDK's order.
PROJECTION_UNIONIZE_COLUMNS = [
    "hemisphere_id", "id", "is_injection", "max_voxel_density", "max_voxel_x", "max_voxel_y", "max_voxel_z",
    "normalized_projection_volume", "projection_density", "projection_energy", "projection_intensity",
    "projection_volume", "experiment_id", "structure_id", "sum_pixel_intensity", "sum_pixels",
    "sum_projection_pixel_intensity", "sum_projection_pixels", "volume",
]

#: Allen's two-photon pixel: 0.35 um x 0.35 um in-plane.
ALLEN_PIXEL_SIZE_UM = 0.35


def unionize_projection(
    grids: Mapping[str, np.ndarray] | str | Path,
    space: ReferenceSpace,
    *,
    experiment_id: int | None = None,
    pixel_size_um: float = ALLEN_PIXEL_SIZE_UM,
    spacing_um: float | None = None,
    slabs: VolumeSlabs | None = None,
) -> pd.DataFrame:
    """Allen's ProjectionStructureUnionize rows of one experiment.

    Parameters
    ----------
    grids : mapping name -> (AP, DV, LR) volume, or a folder of ``{name}_{res}.nrrd`` files
        The volumes named in :data:`PROJECTION_GRID_NAMES` (and optionally ``aav_exclusion_fraction``), on the
        grid of ``space``, any real dtype. They are reduced in one compiled pass over the volume; files are read
        slab by slab (ranges of LR planes, decoded in parallel threads) when the annotation is in file order.
    space : ReferenceSpace
        The annotation on the same grid.
    experiment_id : int, optional
        Written into the ``experiment_id`` column.
    pixel_size_um : float
        In-plane size of an image pixel (Allen: 0.35 um).
    spacing_um : float, optional
        The grid spacing in um (default: the space's resolution along AP), used for volumes and coordinates.
    slabs : VolumeSlabs, optional
        ``grids``' files already being decoded (:func:`~brainmap.pipeline.unionize.grids.projection_volume_slabs`,
        started before the annotation was loaded); only when ``grids`` is a GridFolder read slab by slab.

    Returns
    -------
    DataFrame with :data:`PROJECTION_UNIONIZE_COLUMNS`; ``id`` is left empty (the store assigns record ids).
    """
    if isinstance(grids, (str, Path)):
        grids = GridFolder(grids, resolution=int(round(space.resolution[0])))
    require(grids, PROJECTION_GRID_NAMES, "projection unionize")
    spacing = float(space.resolution[0] if spacing_um is None else spacing_um)
    scale = pixel_size_um**2 * spacing * 1e-9  # mm3 per pixel

    if isinstance(space, StreamedAnnotation) and not isinstance(grids, GridFolder):
        raise ValueError("an annotation streamed slab by slab needs grid files (a GridFolder), not arrays")
    if isinstance(grids, GridFolder) and (isinstance(space, StreamedAnnotation)
                                          or space.label_index.compact.flags.f_contiguous):
        # Files in file order: read slab by slab, several volumes in parallel (memory independent of the size).
        direct = projection_direct_sums_streamed(space, grids.paths, slabs=slabs)
    else:
        if slabs is not None:
            slabs.close()
            raise ValueError("unionize_projection: slabs are for grid files read slab by slab")
        exclusion = grids["aav_exclusion_fraction"] if "aav_exclusion_fraction" in grids else None
        direct = projection_direct_sums(space, grids, exclusion)
    # Each structure's projection record is its voxels' sums minus its injection record (AllenSDK subtracts
    # per directly annotated structure, then adds records up the ontology).
    direct_sums = direct.sums.copy()
    direct_sums[1] -= direct_sums[0]
    rolled = roll_up_sums(space, direct_sums)  # (record, quantity, hemisphere 1/2/3, structure)
    injection = dict(zip(SUM_NAMES, rolled[0]))
    projection = dict(zip(SUM_NAMES, rolled[1]))
    present = direct.voxels > 0
    maxima = []
    for record in range(2):
        # A record has a max voxel only when its own sum_projection_pixels is > 0.
        has = direct_sums[record, 1] > 0
        value = np.where(has, direct.max_value[record], 0.0)
        flat = np.where(has, direct.max_flat[record], -1)
        maxima.append(roll_up_allen_maxima(space, value, flat, present))
    injection_max, projection_max = maxima

    # The whole brain's injection volume normalizes every row.
    injection_volume = direct_sums[0, 1].sum() * scale
    tables = [
        _records(space, injection, injection_max, True, scale, spacing, injection_volume),
        _records(space, projection, projection_max, False, scale, spacing, injection_volume),
    ]
    table = pd.concat(tables, ignore_index=True)
    table["experiment_id"] = pd.array([experiment_id] * len(table), dtype="Int64")
    table["id"] = pd.array([None] * len(table), dtype="Int64")
    return table[PROJECTION_UNIONIZE_COLUMNS]


def _records(
    space: ReferenceSpace,
    sums: dict[str, np.ndarray],
    maxima,
    is_injection: bool,
    scale: float,
    spacing: float,
    injection_volume: float,
) -> pd.DataFrame:
    """Rows for one record kind: every structure x hemisphere (1, 2, 3) with sum_pixels > 0."""
    n = len(space.ontology_order.ids)
    keep = sums["sum_pixels"] > 0
    hemisphere = np.repeat(np.array([1, 2, 3])[:, None], n, axis=1)
    structure = np.broadcast_to(space.ontology_order.ids[None, :], (3, n))
    sum_pixels = sums["sum_pixels"][keep]
    sum_projection_pixels = sums["sum_projection_pixels"][keep]
    sum_intensity = sums["sum_projection_pixel_intensity"][keep]
    coords = voxel_coordinates_um(space, maxima.flat_index[keep], spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        projection_intensity = np.where(sum_projection_pixels > 0, sum_intensity / sum_projection_pixels, 0.0)
        projection_volume = sum_projection_pixels * scale
        normalized = projection_volume / injection_volume if injection_volume > 0 else np.zeros_like(projection_volume)
    return pd.DataFrame({
        "hemisphere_id": hemisphere[keep],
        "is_injection": is_injection,
        "max_voxel_density": maxima.value[keep],
        "max_voxel_x": coords[:, 0].round().astype(np.int64),
        "max_voxel_y": coords[:, 1].round().astype(np.int64),
        "max_voxel_z": coords[:, 2].round().astype(np.int64),
        "normalized_projection_volume": normalized,
        "projection_density": sum_projection_pixels / sum_pixels,
        "projection_energy": sum_intensity / sum_pixels,
        "projection_intensity": projection_intensity,
        "projection_volume": projection_volume,
        "structure_id": structure[keep],
        "sum_pixel_intensity": sums["sum_pixel_intensity"][keep],
        "sum_pixels": sum_pixels,
        "sum_projection_pixel_intensity": sum_intensity,
        "sum_projection_pixels": sum_projection_pixels,
        "volume": sum_pixels * scale,
    })
