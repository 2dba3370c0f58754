"""ISH structure unionization: Allen's StructureUnionize rows from expression grids.

Inputs per grid voxel (200 um grid for Allen's ISH, any grid here): ``sum_pixels`` (tissue pixels sampled),
``sum_expressing_pixels``, ``sum_pixel_intensity`` (intensity of all tissue pixels),
``sum_expressing_pixel_intensity`` and ``energy`` (-1 where there is no data). For every structure, with its
descendants, over the whole brain (Allen's StructureUnionize has no hemisphere; one row per structure and data set):

* sum_pixels, sum_expressing_pixels, sum_pixel_intensity, sum_expressing_pixel_intensity: sums over its voxels;
* expression_density = sum_expressing_pixels / sum_pixels;
* expression_energy = sum_expressing_pixel_intensity / sum_pixels;
* voxel_energy_mean and voxel_energy_cv (population std / mean) of ``energy`` over its voxels with data.

Voxels outside the brain or without data (``sum_pixels`` 0 or ``energy`` -1) count nowhere; rows with
sum_pixels == 0 are left out. :func:`unionize_expression_by_hemisphere` gives the same figures per hemisphere
(hemisphere_id 1 left, 2 right, 3 both) as a separate brainmap table, not Allen's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from brainmap.atlas.annotation_stream import StreamedAnnotation
from brainmap.atlas.label_index import flat_view
from brainmap.atlas.reference_space import ReferenceSpace, midline_index
from brainmap.errors import FormatError
from brainmap.io.nrrd_stream import SLAB_BYTES, iter_volume_slabs
from brainmap.pipeline.unionize.grids import GridFolder, require
from brainmap.pipeline.unionize._projection_pass import SlabLabels
from brainmap.pipeline.unionize.reduction import StructureBins, roll_up_sums

#: Allen's StructureUnionize (ISH) columns, in the Allen API's order.
ISH_UNIONIZE_COLUMNS = [
    "id", "section_data_set_id", "structure_id", "sum_pixels", "sum_expressing_pixels", "sum_pixel_intensity",
    "sum_expressing_pixel_intensity", "expression_density", "expression_energy", "voxel_energy_mean",
    "voxel_energy_cv",
]
#: brainmap's per-hemisphere ISH table (not an Allen model): the same figures with ``hemisphere_id``.
ISH_HEMISPHERE_COLUMNS = ISH_UNIONIZE_COLUMNS[:3] + ["hemisphere_id"] + ISH_UNIONIZE_COLUMNS[3:]

ISH_GRID_NAMES = ["sum_pixels", "sum_expressing_pixels", "sum_pixel_intensity", "sum_expressing_pixel_intensity",
                  "energy"]
_SUMS = ISH_GRID_NAMES[:4]


def _by_hemisphere(grids, space: ReferenceSpace) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(sums (3, n) per quantity, energy mean (3, n), energy cv (3, n)) for hemispheres 1, 2, 3 (both)."""
    if isinstance(grids, (str, Path)):
        grids = GridFolder(grids, resolution=int(round(space.resolution[0])))
    require(grids, ISH_GRID_NAMES, "expression unionize")
    if isinstance(space, StreamedAnnotation) and not isinstance(grids, GridFolder):
        raise ValueError("an annotation streamed slab by slab needs grid files (a GridFolder), not arrays")
    if isinstance(grids, GridFolder) and (isinstance(space, StreamedAnnotation)
                                          or space.label_index.compact.flags.f_contiguous):
        direct = _direct_sums_streamed(space, grids.paths)  # files in file order: slab by slab
    else:
        energy_volume = np.asarray(grids["energy"])
        pixels_volume = np.asarray(grids["sum_pixels"])
        bins = StructureBins(space, selected=(pixels_volume > 0) & (energy_volume >= 0))
        energy = bins.gather(energy_volume)
        direct = {name: bins.sums(bins.gather(grids[name])) for name in _SUMS}
        direct.update(voxels=bins.sums(), energy=bins.sums(energy), energy_sq=bins.sums(energy * energy))
    sums = {name: roll_up_sums(space, direct[name]) for name in _SUMS}
    voxels = roll_up_sums(space, direct["voxels"])
    energy_sum = roll_up_sums(space, direct["energy"])
    energy_sq = roll_up_sums(space, direct["energy_sq"])
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = energy_sum / voxels
        variance = np.maximum(energy_sq / voxels - mean * mean, 0.0)
        cv = np.where(mean > 0, np.sqrt(variance) / mean, 0.0)
    return sums, mean, cv


def _direct_sums_streamed(space: ReferenceSpace, paths: Mapping[str, str | os.PathLike[str]], *,
                          slab_bytes: int = SLAB_BYTES, threads: int | None = None) -> dict[str, np.ndarray]:
    """The direct (2, n) sums of the in-memory path, over NRRD files read slab by slab (ranges of LR planes), bit
    for bit: each bin's values are added one by one in memory order, as ``np.bincount`` adds them, the running
    sums carried from slab to slab. Memory: a few slabs, whatever the grid."""
    slab_labels = SlabLabels(space)
    n, n_lr = len(space.ontology_order), space.shape[2]
    plane = space.shape[0] * space.shape[1]
    midline = midline_index(n_lr)
    names = ISH_GRID_NAMES
    totals = {name: np.zeros(2 * (n + 1)) for name in [*_SUMS, "energy", "energy_sq"]}
    voxels = np.zeros(2 * (n + 1), dtype=np.int64)
    end = 0
    for start, slabs in iter_volume_slabs({**{name: paths[name] for name in names}, **slab_labels.files},
                                          slab_bytes=slab_bytes, threads=threads):
        k = slabs[names[0]].shape[2]
        if slabs[names[0]].shape[:2] != space.shape[:2] or start + k > n_lr:
            raise FormatError(f"{paths[names[0]]}: grid volume shape differs from the annotation's {space.shape}")
        end = start + k
        labels = slab_labels(start, k, slabs)
        flat = {name: flat_view(slabs[name]) for name in names}
        keep = (labels != 0) & (flat["sum_pixels"] > 0) & (flat["energy"] >= 0)
        bins = labels[keep].astype(np.intp)
        right = np.repeat(np.arange(start, end) >= midline, plane)[keep]
        bins[right] += n + 1
        np.add.at(voxels, bins, 1)
        for name in _SUMS:
            np.add.at(totals[name], bins, flat[name][keep].astype(np.float64, copy=False))
        energy = flat["energy"][keep].astype(np.float64, copy=False)
        np.add.at(totals["energy"], bins, energy)
        np.add.at(totals["energy_sq"], bins, energy * energy)
    if end != n_lr:
        raise FormatError(f"{paths[names[0]]}: grid volume shape differs from the annotation's {space.shape}")
    direct = {name: values.reshape(2, n + 1)[:, 1:] for name, values in totals.items()}
    direct["voxels"] = voxels.reshape(2, n + 1)[:, 1:]
    return direct


def _table(space: ReferenceSpace, sums, mean, cv, keep: np.ndarray, structure: np.ndarray) -> pd.DataFrame:
    pixels = sums["sum_pixels"][keep]
    return pd.DataFrame({
        "structure_id": structure[keep],
        "sum_pixels": pixels,
        "sum_expressing_pixels": sums["sum_expressing_pixels"][keep],
        "sum_pixel_intensity": sums["sum_pixel_intensity"][keep],
        "sum_expressing_pixel_intensity": sums["sum_expressing_pixel_intensity"][keep],
        "expression_density": sums["sum_expressing_pixels"][keep] / pixels,
        "expression_energy": sums["sum_expressing_pixel_intensity"][keep] / pixels,
        "voxel_energy_mean": mean[keep],
        "voxel_energy_cv": cv[keep],
    })


def unionize_expression(
    grids: Mapping[str, np.ndarray] | str | Path,
    space: ReferenceSpace,
    *,
    section_data_set_id: int | None = None,
) -> pd.DataFrame:
    """Allen's StructureUnionize rows of one ISH data set: one per structure (module docstring for the formulas).

    ``grids`` maps the names in :data:`ISH_GRID_NAMES` to (AP, DV, LR) volumes on the grid of ``space``,
    or is a folder of ``{name}_{res}.nrrd`` files. Returns :data:`ISH_UNIONIZE_COLUMNS`; ``id`` is left empty
    (the store assigns record ids).
    """
    sums, mean, cv = _by_hemisphere(grids, space)
    both = {name: values[2] for name, values in sums.items()}
    table = _table(space, both, mean[2], cv[2], both["sum_pixels"] > 0, space.ontology_order.ids)
    table["section_data_set_id"] = pd.array([section_data_set_id] * len(table), dtype="Int64")
    table["id"] = pd.array([None] * len(table), dtype="Int64")
    return table[ISH_UNIONIZE_COLUMNS]


def unionize_expression_by_hemisphere(
    grids: Mapping[str, np.ndarray] | str | Path,
    space: ReferenceSpace,
    *,
    section_data_set_id: int | None = None,
) -> pd.DataFrame:
    """brainmap's per-hemisphere ISH figures (:data:`ISH_HEMISPHERE_COLUMNS`; hemisphere_id 1 left, 2 right,
    3 both): the rows of :func:`unionize_expression` computed per hemisphere. Not an Allen model; the store does
    not load it."""
    sums, mean, cv = _by_hemisphere(grids, space)
    n = len(space.ontology_order.ids)
    keep = sums["sum_pixels"] > 0
    table = _table(space, sums, mean, cv, keep, np.broadcast_to(space.ontology_order.ids[None, :], (3, n)))
    table["hemisphere_id"] = np.repeat(np.array([1, 2, 3])[:, None], n, axis=1)[keep]
    table["section_data_set_id"] = pd.array([section_data_set_id] * len(table), dtype="Int64")
    table["id"] = pd.array([None] * len(table), dtype="Int64")
    return table[ISH_HEMISPHERE_COLUMNS]
