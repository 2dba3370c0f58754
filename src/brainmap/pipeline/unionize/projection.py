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
  ``sum_pixel_intensities`` over the voxels where ``injection_fraction > 0`` or the voxel is not excluded, minus
  the injection record's sums; the max voxel is the argmax of ``projection_density * (1 - injection_fraction)``
  there, and ``max_voxel_density`` is that value.
* Ancestors add their descendants' sums and keep the largest max voxel.
* Ratios: projection_density = sum_projection_pixels / sum_pixels, projection_energy =
  sum_projection_pixel_intensity / sum_pixels, projection_intensity = sum_projection_pixel_intensity /
  sum_projection_pixels; volume and projection_volume = pixel counts x pixel_size^2 x spacing x 1e-9 mm3;
  normalized_projection_volume = projection_volume / (the whole brain's injection sum_projection_pixels x the
  same scale); max_voxel_x/y/z = voxel index x spacing in um (AP, DV, LR). Rows with sum_pixels == 0 are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from brainmap.atlas.reference_space import ReferenceSpace
from brainmap.pipeline.unionize.grids import GridFolder, require
from brainmap.pipeline.unionize.reduction import StructureBins

#: Allen's ProjectionStructureUnionize columns, in AllenSDK's order.
PROJECTION_UNIONIZE_COLUMNS = [
    "hemisphere_id", "id", "is_injection", "max_voxel_density", "max_voxel_x", "max_voxel_y", "max_voxel_z",
    "normalized_projection_volume", "projection_density", "projection_energy", "projection_intensity",
    "projection_volume", "experiment_id", "structure_id", "sum_pixel_intensity", "sum_pixels",
    "sum_projection_pixel_intensity", "sum_projection_pixels", "volume",
]

#: Grid volumes the projection unionizer reads (``aav_exclusion_fraction`` is optional).
PROJECTION_GRID_NAMES = [
    "data_mask", "sum_pixels", "injection_fraction", "injection_density", "injection_energy",
    "injection_sum_pixel_intensities", "projection_density", "projection_energy", "sum_pixel_intensities",
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
) -> pd.DataFrame:
    """Allen's ProjectionStructureUnionize rows of one experiment.

    Parameters
    ----------
    grids : mapping name -> (AP, DV, LR) volume, or a folder of ``{name}_{res}.nrrd`` files
        The volumes named in :data:`PROJECTION_GRID_NAMES` (and optionally ``aav_exclusion_fraction``), on the
        grid of ``space``. A folder is read one volume at a time.
    space : ReferenceSpace
        The annotation on the same grid.
    experiment_id : int, optional
        Written into the ``experiment_id`` column.
    pixel_size_um : float
        In-plane size of an image pixel (Allen: 0.35 um).
    spacing_um : float, optional
        The grid spacing in um (default: the space's resolution along AP), used for volumes and coordinates.

    Returns
    -------
    DataFrame with :data:`PROJECTION_UNIONIZE_COLUMNS`; ``id`` is left empty (the store assigns record ids).
    """
    if isinstance(grids, (str, Path)):
        grids = GridFolder(grids, resolution=int(round(space.resolution[0])))
    require(grids, PROJECTION_GRID_NAMES, "projection unionize")
    spacing = float(space.resolution[0] if spacing_um is None else spacing_um)
    scale = pixel_size_um**2 * spacing * 1e-9  # mm3 per pixel

    bins = StructureBins(space, selected=np.asarray(grids["data_mask"]) > 0)
    sum_pixels = bins.gather(grids["sum_pixels"])

    def summed(weights: np.ndarray) -> np.ndarray:
        return bins.roll_up(bins.sums(weights))

    # Injection record.
    injection_fraction = bins.gather(grids["injection_fraction"])
    injection_density = bins.gather(grids["injection_density"])
    injection = {
        "sum_pixels": summed(sum_pixels * injection_fraction),
        "sum_projection_pixels": summed(sum_pixels * injection_density),
        "sum_projection_pixel_intensity": summed(sum_pixels * bins.gather(grids["injection_energy"])),
        "sum_pixel_intensity": summed(bins.gather(grids["injection_sum_pixel_intensities"])),
    }
    injection_max = bins.max_voxels(injection_density)
    del injection_density

    # Projection record: voxels in the injection or not excluded, minus the injection record.
    excluded = None
    if "aav_exclusion_fraction" in grids:
        excluded = (bins.gather(grids["aav_exclusion_fraction"]) > 0) & ~(injection_fraction > 0)
        if not excluded.any():
            excluded = None
    counted_pixels = sum_pixels if excluded is None else np.where(excluded, 0.0, sum_pixels)
    projection_density = bins.gather(grids["projection_density"])
    intensities = bins.gather(grids["sum_pixel_intensities"])
    if excluded is not None:
        intensities[excluded] = 0.0
    projection = {
        "sum_pixels": summed(counted_pixels),
        "sum_projection_pixels": summed(counted_pixels * projection_density),
        "sum_projection_pixel_intensity": summed(counted_pixels * bins.gather(grids["projection_energy"])),
        "sum_pixel_intensity": summed(intensities),
    }
    for name in projection:
        projection[name] = projection[name] - injection[name]
    outside_injection = projection_density * (1.0 - injection_fraction)
    if excluded is not None:
        outside_injection[excluded] = 0.0
    projection_max = bins.max_voxels(outside_injection)

    # The whole brain's injection volume normalizes every row.
    injection_volume = injection["sum_projection_pixels"][2, 0] * scale  # preorder position 0 is the root
    tables = [
        _records(bins, injection, injection_max, True, scale, spacing, injection_volume),
        _records(bins, projection, projection_max, False, scale, spacing, injection_volume),
    ]
    table = pd.concat(tables, ignore_index=True)
    table["experiment_id"] = pd.array([experiment_id] * len(table), dtype="Int64")
    table["id"] = pd.array([None] * len(table), dtype="Int64")
    return table[PROJECTION_UNIONIZE_COLUMNS]


def _records(
    bins: StructureBins,
    sums: dict[str, np.ndarray],
    maxima,
    is_injection: bool,
    scale: float,
    spacing: float,
    injection_volume: float,
) -> pd.DataFrame:
    """Rows for one record kind: every structure x hemisphere (1, 2, 3) with sum_pixels > 0."""
    n = bins.n
    keep = sums["sum_pixels"] > 0
    hemisphere = np.repeat(np.array([1, 2, 3])[:, None], n, axis=1)
    structure = np.broadcast_to(bins.space.ontology_order.ids[None, :], (3, n))
    sum_pixels = sums["sum_pixels"][keep]
    sum_projection_pixels = sums["sum_projection_pixels"][keep]
    sum_intensity = sums["sum_projection_pixel_intensity"][keep]
    coords = bins.voxel_coordinates_um(maxima.flat_index[keep], spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        projection_intensity = np.where(sum_projection_pixels > 0, sum_intensity / sum_projection_pixels, 0.0)
        projection_volume = sum_projection_pixels * scale
        normalized = projection_volume / injection_volume if injection_volume > 0 else np.full_like(projection_volume, np.nan)
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
