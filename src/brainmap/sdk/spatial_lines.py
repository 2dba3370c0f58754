"""The spatial search lines of an experiment (Allen's example script, as SDK calls).

The lines are the paths that the connectivity spatial search draws from a target voxel back to the injection
site. :func:`download_lines` takes the experiment's projection density (the cache's resolution, e.g. 100 um),
keeps the voxels whose density is within ``density_range`` (a low range avoids fibre tracts; default Allen's
0.04-0.3), drops those inside the fiber-tracts annotation (structure 1009 and its descendants, at
``fiber_tract_resolution``, 25 um as the example), and asks ``mouse_connectivity_target_spatial`` at each
remaining voxel's position (voxel index x spacing, um, [AP, DV, LR]) for the experiment's path.
:func:`download_injection_coordinates` lists the positions (um) of the voxels whose injection density is above
a threshold. The voxel selection is vectorized; the service calls run on a few threads.

    from brainmap.sdk import MouseConnectivityCache
    from brainmap.sdk.spatial_lines import spatial_search_lines

    mcc = MouseConnectivityCache(resolution=100)
    data = spatial_search_lines(mcc, 156394513, density_range=(0.04, 0.3), injection_threshold=0.5)
    # {"lines": [[{"coord": [x, y, z], "density": d}, ...], ...], "injectionCoordinates": [[x, y, z], ...]}
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from brainmap.sdk.errors import SdkError

__all__ = ["FIBER_TRACTS_ID", "download_injection_coordinates", "download_lines", "seed_voxels",
           "spatial_search_lines"]

#: Allen's "fiber tracts" structure.
FIBER_TRACTS_ID = 1009


def _spacing(header: dict[str, Any]) -> np.ndarray:
    directions = header.get("space directions")
    if directions is None:
        raise SdkError("the volume's NRRD header has no 'space directions' (its spacing)")
    return np.abs(np.diag(np.asarray(directions, dtype=np.float64)))


def seed_voxels(density: np.ndarray, spacing_um: np.ndarray, density_range: tuple[float, float],
                fiber_tracts: np.ndarray, fiber_spacing_um: np.ndarray) -> np.ndarray:
    """Indices (n, 3) of the voxels with ``density_range[0] <= density <= density_range[1]`` whose position
    falls outside the fiber-tract mask (and inside its volume), in index order."""
    low, high = density_range
    if not low <= high:
        raise SdkError(f"density_range must be (low, high) with low <= high, got {density_range!r}")
    indices = np.argwhere((density >= low) & (density <= high))
    scale = np.asarray(spacing_um, dtype=np.float64) / np.asarray(fiber_spacing_um, dtype=np.float64)
    fiber_index = (indices * scale).astype(np.int64)
    inside = np.all((fiber_index >= 0) & (fiber_index < np.asarray(fiber_tracts.shape)), axis=1)
    keep = np.zeros(len(indices), dtype=bool)
    ok = fiber_index[inside]
    keep[inside] = fiber_tracts[ok[:, 0], ok[:, 1], ok[:, 2]] == 0
    return indices[keep]


def download_lines(mcc: Any, data_set_id: int, density_range: tuple[float, float] = (0.04, 0.3),
                   fiber_tract_resolution: int = 25, max_seeds: int | None = None, threads: int = 4
                   ) -> list[list[dict[str, Any]]]:
    """The spatial search lines of ``data_set_id`` (see the module docstring): one path per seed voxel (at most
    ``max_seeds``, the first in index order), each ``[{"coord": [x, y, z] um, "density": d}, ...]``."""
    from brainmap.sdk.reference_space_cache import ReferenceSpaceCache

    density, header = mcc.get_projection_density(data_set_id)
    spacing = _spacing(header)
    fibers = ReferenceSpaceCache(fiber_tract_resolution, mcc.reference_space_key, mcc.manifest_file,
                                 api=mcc.api, offline=mcc.offline)
    tract_mask, tract_header = fibers.get_structure_mask(FIBER_TRACTS_ID)
    seeds = seed_voxels(density, spacing, density_range, tract_mask, _spacing(tract_header))
    if max_seeds is not None:
        seeds = seeds[:max_seeds]
    coords = (seeds * spacing).tolist()

    def lines_at(coord: list[float]) -> list[list[dict[str, Any]]]:
        rows = mcc.api.experiment_spatial_search(seed_point=coord, section_data_set=int(data_set_id))
        return [row["path"] for row in rows if row.get("path")]

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        found = list(pool.map(lines_at, coords))
    return [line for lines in found for line in lines]


def download_injection_coordinates(mcc: Any, data_set_id: int, injection_threshold: float) -> list[list[float]]:
    """Positions (um, voxel index x spacing, [AP, DV, LR]) of the voxels whose injection density is above
    ``injection_threshold``."""
    injection, header = mcc.get_injection_density(data_set_id)
    return (np.argwhere(injection > injection_threshold) * _spacing(header)).tolist()


def spatial_search_lines(mcc: Any, data_set_id: int, density_range: tuple[float, float] = (0.04, 0.3),
                         injection_threshold: float = 0.0, out: str | Path | None = None, **kwargs: Any
                         ) -> dict[str, Any]:
    """``{"lines", "injectionCoordinates"}`` as the example script writes them (to ``out`` as JSON if given)."""
    data = {"lines": download_lines(mcc, data_set_id, density_range, **kwargs),
            "injectionCoordinates": download_injection_coordinates(mcc, data_set_id, injection_threshold)}
    if out is not None:
        from brainmap.io.atomic import atomic_write

        with atomic_write(out, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
    return data
