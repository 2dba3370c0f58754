"""ISH structure unionization: Allen's StructureUnionize rows from expression grids.

Inputs per grid voxel (200 um grid for Allen's ISH, any grid here): ``sum_pixels`` (tissue pixels sampled),
``sum_expressing_pixels``, ``sum_expressing_pixel_intensity`` and ``energy`` (-1 where there is no data).
For every structure (with its descendants) and hemisphere (1 left, 2 right, 3 both):

* sum_pixels, sum_expressing_pixels, sum_expressing_pixel_intensity: sums over its voxels;
* expression_density = sum_expressing_pixels / sum_pixels;
* expression_energy = sum_expressing_pixel_intensity / sum_pixels;
* voxel_energy_mean and voxel_energy_cv (population std / mean) of ``energy`` over its voxels with data.

Voxels outside the brain or without data (``sum_pixels`` 0 or ``energy`` -1) count nowhere; rows with
sum_pixels == 0 are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from brainmap.atlas.reference_space import ReferenceSpace
from brainmap.pipeline.unionize.grids import GridFolder, require
from brainmap.pipeline.unionize.reduction import StructureBins

#: Allen's StructureUnionize (ISH) columns.
ISH_UNIONIZE_COLUMNS = [
    "id", "section_data_set_id", "structure_id", "hemisphere_id", "expression_density", "expression_energy",
    "sum_pixels", "sum_expressing_pixels", "sum_expressing_pixel_intensity", "voxel_energy_mean", "voxel_energy_cv",
]

ISH_GRID_NAMES = ["sum_pixels", "sum_expressing_pixels", "sum_expressing_pixel_intensity", "energy"]


def unionize_expression(
    grids: Mapping[str, np.ndarray] | str | Path,
    space: ReferenceSpace,
    *,
    section_data_set_id: int | None = None,
) -> pd.DataFrame:
    """Allen's StructureUnionize rows of one ISH data set (see the module docstring for the formulas).

    ``grids`` maps the names in :data:`ISH_GRID_NAMES` to (AP, DV, LR) volumes on the grid of ``space``,
    or is a folder of ``{name}_{res}.nrrd`` files.
    """
    if isinstance(grids, (str, Path)):
        grids = GridFolder(grids, resolution=int(round(space.resolution[0])))
    require(grids, ISH_GRID_NAMES, "expression unionize")
    energy_volume = np.asarray(grids["energy"])
    pixels_volume = np.asarray(grids["sum_pixels"])
    bins = StructureBins(space, selected=(pixels_volume > 0) & (energy_volume >= 0))
    sums = {name: bins.roll_up(bins.sums(bins.gather(grids[name]))) for name in ISH_GRID_NAMES[:3]}
    energy = bins.gather(energy_volume)
    voxels = bins.roll_up(bins.sums())
    energy_sum = bins.roll_up(bins.sums(energy))
    energy_sq = bins.roll_up(bins.sums(energy * energy))
    keep = sums["sum_pixels"] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = energy_sum / voxels
        variance = np.maximum(energy_sq / voxels - mean * mean, 0.0)
        cv = np.where(mean > 0, np.sqrt(variance) / mean, 0.0)
    n = bins.n
    hemisphere = np.repeat(np.array([1, 2, 3])[:, None], n, axis=1)
    structure = np.broadcast_to(space.ontology_order.ids[None, :], (3, n))
    table = pd.DataFrame({
        "structure_id": structure[keep],
        "hemisphere_id": hemisphere[keep],
        "expression_density": sums["sum_expressing_pixels"][keep] / sums["sum_pixels"][keep],
        "expression_energy": sums["sum_expressing_pixel_intensity"][keep] / sums["sum_pixels"][keep],
        "sum_pixels": sums["sum_pixels"][keep],
        "sum_expressing_pixels": sums["sum_expressing_pixels"][keep],
        "sum_expressing_pixel_intensity": sums["sum_expressing_pixel_intensity"][keep],
        "voxel_energy_mean": mean[keep],
        "voxel_energy_cv": cv[keep],
    })
    table["section_data_set_id"] = pd.array([section_data_set_id] * len(table), dtype="Int64")
    table["id"] = pd.array([None] * len(table), dtype="Int64")
    return table[ISH_UNIONIZE_COLUMNS]
