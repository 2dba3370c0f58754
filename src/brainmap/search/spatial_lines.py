"""Spatial search lines: Allen's example script ("download the spatial search lines emanating from the injection
site and the coordinates of grid voxels inside of the injection site mask; output all of this to a json file")
as one function and a CLI command, on local grid volumes instead of web requests.

The script's workflow, step for step:

1. the voxels of the experiment's projection-density volume with density in ``density_range`` (inclusive;
   Allen's default [0.04, 0.3], "a relatively low range ... to avoid fiber tracts");
2. without those in the fiber-tract annotation (structure 1009 "fiber tracts" with its descendants, on the
   annotation of the density grid -- the script looks the 25 um fiber-tract volume up at ``index * 4``, which
   is the same sampling) and, unlike the script, without voxels outside the brain;
3. for each, the spatial search's line for that experiment from the voxel ("seed point" ``index * spacing``,
   as the script sends it) to the injection site: the same densest-voxel walk as
   :meth:`brainmap.search.connectivity.ConnectivitySearch.spatial` (so the lines equal that search's paths
   for this experiment), all walks at once; densities along a path are None where there is no data;
4. the injection site's voxels: ``index * spacing`` of every voxel whose injection value is above
   ``injection_threshold`` (the script's ``INJECTION_MASK_THRESHOLD``, 0.5);
5. written as JSON: ``{"lines": [{"id", "seed_point", "density", "path": [{"coord", "density"}, ...]}, ...],
   "injectionCoordinates": [[x, y, z], ...]}`` (the script's keys) plus what was asked for.

The injection site (where every line ends) is the injection centroid as AllenSDK computes it
(``MouseConnectivityApi.calculate_injection_centroid``: the mean voxel position weighted by injection density x
injection fraction, times the spacing), unless given.

The CLI entry (``brainmap search lines GRID_DIR --out lines.json``) is :func:`run_spatial_lines_cli`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from brainmap.atlas import ReferenceSpace
from brainmap.errors import FormatError
from brainmap.io.atomic import atomic_write
from brainmap.search.connectivity import FIBER_TRACTS_ID, densest_paths, path_points, volume_values_at
from brainmap.search.results import SearchInputError

#: Allen's example: the density range of the voxels that get a line, and the injection mask threshold.
DEFAULT_DENSITY_RANGE = (0.04, 0.3)
DEFAULT_INJECTION_THRESHOLD = 0.5
#: Walks per vectorized batch (bounds the (walks x 26) temporaries to a few tens of MB).
_BATCH = 50_000


def injection_centroid_um(injection_fraction: np.ndarray, injection_density: np.ndarray | None = None,
                          resolution_um: Sequence[float] | float = 100.0) -> np.ndarray:
    """AllenSDK's injection centroid (um, AP/DV/LR): over voxels with injection fraction > 0, the voxel indices
    weighted by injection density x fraction (by the fraction alone without a density), times the spacing.
    Raises :class:`SearchInputError` when the volume has no injection."""
    fraction = np.asarray(injection_fraction, dtype=np.float64)
    voxels = np.nonzero(fraction > 0)
    weights = fraction[voxels]
    if injection_density is not None:
        weights = weights * np.asarray(injection_density, dtype=np.float64)[voxels]
    total = float(np.sum(weights))
    if not total > 0:
        raise SearchInputError("the injection volume has no injection (no voxel above 0): no injection site")
    centroid = np.array([np.dot(weights, v) for v in voxels]) / total
    return centroid * np.broadcast_to(np.asarray(resolution_um, dtype=np.float64), (3,))


def spatial_search_lines(projection_density: np.ndarray, injection: np.ndarray, space: ReferenceSpace | None = None,
                         *, injection_density: np.ndarray | None = None,
                         density_range: Sequence[float] = DEFAULT_DENSITY_RANGE,
                         injection_threshold: float = DEFAULT_INJECTION_THRESHOLD, exclude_fiber_tracts: bool = True,
                         injection_site_um: Sequence[float] | None = None,
                         data_set_id: int | None = None) -> dict[str, Any]:
    """The spatial search lines of one experiment (see the module docstring).

    Parameters
    ----------
    projection_density : (AP, DV, LR) volume on ``space``'s grid
    injection : (AP, DV, LR) injection fraction (or injection density) volume: thresholded for
        ``injectionCoordinates`` and, as the fraction, used for the injection centroid
    space : ReferenceSpace of the grid (default: the bundled one at 100 um)
    injection_density : optional, weights the centroid as AllenSDK does
    density_range : (lo, hi) inclusive
    injection_threshold : injection voxels are those with ``injection > injection_threshold``
    exclude_fiber_tracts : skip voxels of fiber tracts (structure 1009 and descendants)
    injection_site_um : where the lines end (default the injection centroid)
    data_set_id : written into the lines' ``id``

    Returns
    -------
    dict with ``lines``, ``injectionCoordinates`` and ``data_set_id``, ``resolution_um``, ``density_range``,
    ``injection_threshold``, ``exclude_fiber_tracts``, ``injection_site``.
    """
    space = space or ReferenceSpace.bundled(100)
    density = np.asarray(projection_density)
    injection = np.asarray(injection)
    for name, volume in (("projection_density", density), ("injection", injection)):
        if volume.shape != tuple(space.shape):
            raise SearchInputError(f"{name} has shape {volume.shape}; the reference space is {tuple(space.shape)}")
    lo, hi = _density_range(density_range)
    threshold = float(injection_threshold)
    if not np.isfinite(threshold):
        raise SearchInputError(f"injection_threshold must be a finite number, got {injection_threshold!r}")
    resolution = np.asarray(space.resolution, dtype=np.float64)
    if injection_site_um is None:
        site = injection_centroid_um(injection, injection_density, resolution)
    else:
        site = np.asarray(injection_site_um, dtype=np.float64).reshape(3)
    end = np.clip(np.floor(site / resolution).astype(np.int64), 0, np.asarray(space.shape) - 1)

    brain = space.annotation > 0
    with np.errstate(invalid="ignore"):
        chosen = brain & (density >= lo) & (density <= hi)
    if exclude_fiber_tracts:
        chosen &= ~space.make_structure_mask([FIBER_TRACTS_ID])
    seeds = np.argwhere(chosen)  # C order: AP slowest, as the script's np.argwhere
    values_at = volume_values_at(density, brain)
    lines: list[dict[str, Any]] = []
    for start in range(0, len(seeds), _BATCH):
        batch = seeds[start : start + _BATCH]
        walked = densest_paths(values_at, batch, np.repeat(end[None, :], len(batch), axis=0), space.shape)
        routes = path_points(walked, resolution, np.repeat(site[None, :], len(batch), axis=0))
        seed_points = (batch * resolution).tolist()
        seed_density = density[tuple(batch.T)].astype(np.float64).tolist()
        lines.extend({"id": data_set_id, "seed_point": p, "density": d, "path": route}
                     for p, d, route in zip(seed_points, seed_density, routes))
    with np.errstate(invalid="ignore"):
        injection_voxels = np.argwhere(injection > threshold)
    return {
        "data_set_id": data_set_id,
        "resolution_um": resolution.tolist(),
        "density_range": [lo, hi],
        "injection_threshold": threshold,
        "exclude_fiber_tracts": bool(exclude_fiber_tracts),
        "injection_site": site.tolist(),
        "lines": lines,
        "injectionCoordinates": (injection_voxels * resolution).tolist(),
    }


def _density_range(density_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in density_range)
    except (TypeError, ValueError):
        raise SearchInputError(f"density_range must be two numbers (lo, hi), got {density_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise SearchInputError(f"density_range must be finite with lo <= hi, got {density_range!r}")
    return lo, hi


def write_spatial_lines_json(path: str | Path, lines: Mapping[str, Any]) -> Path:
    """Write :func:`spatial_search_lines`'s result as JSON, atomically (NaN densities become null)."""
    path = Path(path)
    try:
        text = json.dumps(lines, separators=(",", ":"), allow_nan=False)  # the C encoder: fast
    except (TypeError, ValueError):  # NaN or numpy scalars somewhere: clean a copy
        text = json.dumps(_jsonable(lines), separators=(",", ":"), allow_nan=False)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.write("\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def run_spatial_lines_cli(grid_dir_or_volumes: str | Path | Mapping[str, np.ndarray], out_json: str | Path, *,
                          density_range: Sequence[float] = DEFAULT_DENSITY_RANGE,
                          injection_threshold: float = DEFAULT_INJECTION_THRESHOLD, exclude_fiber_tracts: bool = True,
                          data_set_id: int | None = None, resolution: int | None = None,
                          space: ReferenceSpace | None = None) -> dict[str, Any]:
    """``brainmap search lines GRID_DIR --out lines.json``: read an experiment's grid files (Allen's names:
    ``projection_density_100.nrrd`` and ``injection_fraction_100.nrrd``, else ``injection_density_100.nrrd``;
    ``injection_density`` also weights the centroid when both are there), compute its spatial search lines and
    write them (atomically). ``grid_dir_or_volumes`` may also be a mapping of those names to volumes.

    Returns a summary: ``out`` (the path), ``lines``, ``injection_voxels``, ``injection_site``, ``resolution_um``.
    Raises :class:`~brainmap.errors.FormatError` naming a missing volume, and :class:`SearchInputError` for bad
    parameters or volumes that do not fit the reference space.
    """
    if isinstance(grid_dir_or_volumes, Mapping):
        volumes: Mapping[str, Any] = grid_dir_or_volumes
        where = "the given volumes"
        grid_resolution = resolution
    else:
        from brainmap.pipeline.unionize import GridFolder

        folder = GridFolder(grid_dir_or_volumes, resolution=resolution)
        volumes, where, grid_resolution = folder, str(folder.folder), folder.resolution
    if "projection_density" not in volumes:
        raise FormatError(f"{where}: no projection_density volume (have {sorted(volumes)})")
    injection_name = next((n for n in ("injection_fraction", "injection_density") if n in volumes), None)
    if injection_name is None:
        raise FormatError(f"{where}: no injection_fraction or injection_density volume (have {sorted(volumes)})")
    density = np.asarray(volumes["projection_density"])
    injection = np.asarray(volumes[injection_name])
    weights = (np.asarray(volumes["injection_density"])
               if injection_name == "injection_fraction" and "injection_density" in volumes else None)
    if space is None:
        space = _space_for(density.shape, grid_resolution, where)
    lines = spatial_search_lines(density, injection, space, injection_density=weights, density_range=density_range,
                                 injection_threshold=injection_threshold, exclude_fiber_tracts=exclude_fiber_tracts,
                                 data_set_id=data_set_id)
    out = write_spatial_lines_json(out_json, lines)
    return {"out": str(out), "lines": len(lines["lines"]), "injection_voxels": len(lines["injectionCoordinates"]),
            "injection_site": lines["injection_site"], "resolution_um": lines["resolution_um"]}


def _space_for(shape: tuple[int, ...], resolution: int | None, where: str) -> ReferenceSpace:
    """The bundled reference space whose grid has ``shape`` (at ``resolution`` when known)."""
    candidates = [resolution] if resolution is not None else [100, 50, 25]
    for res in candidates:
        try:
            space = ReferenceSpace.bundled(int(res))
        except (FileNotFoundError, ValueError, KeyError):
            continue
        if tuple(space.shape) == tuple(shape):
            return space
    raise SearchInputError(f"{where}: volumes of shape {tuple(shape)} match no bundled annotation "
                           f"({', '.join(f'{r} um' for r in candidates)}); pass space=")


__all__ = [
    "DEFAULT_DENSITY_RANGE",
    "DEFAULT_INJECTION_THRESHOLD",
    "injection_centroid_um",
    "run_spatial_lines_cli",
    "spatial_search_lines",
    "write_spatial_lines_json",
]
