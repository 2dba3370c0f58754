"""Ten connectivity grid files as Allen ships them (gzip NRRD, type double, ``{name}_{res}.nrrd``), written once
and cached, for timing whole commands from files.

The volumes are made on the 100 um grid, demo-like (an injection blob, projections that vary by structure and
fall off with distance, sum_pixels and intensities over the brain, zeros outside it, a few missing sections), then
upsampled to 25 or 10 um by linear interpolation (so voxel values differ as in real grids, which compress about
as Allen's do), written with teem's gzip level 6. Cache: ``$BRAINMAP_BENCH_CACHE`` or
``~/.cache/brainmap/bench``; a folder is reused once its ``complete`` marker exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainmap.atlas import ReferenceSpace
from brainmap.io import write_nrrd

NAMES = [
    "data_mask", "sum_pixels", "injection_fraction", "injection_density", "injection_energy",
    "injection_sum_pixel_intensities", "projection_density", "projection_energy", "sum_pixel_intensities",
    "aav_exclusion_fraction",
]
#: Grid shapes (AP, DV, LR) Allen uses.
SHAPES = {100: (132, 80, 114), 25: (528, 320, 456), 10: (1320, 800, 1140)}


def cache_dir() -> Path:
    return Path(os.environ.get("BRAINMAP_BENCH_CACHE", Path.home() / ".cache" / "brainmap" / "bench"))


def _coarse() -> dict[str, np.ndarray]:
    """The ten volumes at 100 um (float64)."""
    space = ReferenceSpace.bundled(100)
    rng = np.random.default_rng(18)
    brain = space.label_index.compact > 0
    structure_level = rng.random(len(space.ontology_order) + 1) ** 4
    per_voxel = structure_level[space.label_index.compact]
    ap, dv, lr = np.ogrid[:132, :80, :114]
    distance2 = (ap - 75.0) ** 2 + (dv - 25.0) ** 2 + (lr - 85.0) ** 2
    blob = np.exp(-distance2 / (2 * 3.0**2))
    fraction = np.where(blob > 0.05, blob, 0.0) * brain
    sections = np.ones(132, bool)
    sections[rng.choice(132, 6, replace=False)] = False  # missing sections
    mask = (brain | (rng.random(brain.shape) < 0.3)) & sections[:, None, None]
    sum_pixels = mask * np.rint(rng.uniform(6e4, 8e4, (132, 1, 1)))  # pixels sampled: one figure per section
    projection = np.clip(per_voxel * np.exp(-np.sqrt(distance2) / 40.0) + fraction, 0, 1) * brain
    return {
        "data_mask": mask.astype(float),
        "sum_pixels": sum_pixels,
        "injection_fraction": fraction,
        "injection_density": fraction * 0.8,
        "injection_energy": fraction * 0.8 * 3000.0,
        "injection_sum_pixel_intensities": fraction * sum_pixels * 2000.0,
        "projection_density": projection,
        "projection_energy": projection * 2500.0,
        "sum_pixel_intensities": sum_pixels * (300.0 + 2000.0 * projection),
        "aav_exclusion_fraction": ((rng.random(brain.shape) < 0.002) & brain).astype(float),
    }


def grid_folder(resolution: int) -> Path:
    """The folder of the ten ``{name}_{resolution}.nrrd`` files, written now if not cached."""
    folder = cache_dir() / f"grids_{resolution}"
    if (folder / "complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    factor = 100 // resolution
    for name, coarse in _coarse().items():
        target = folder / f"{name}_{resolution}.nrrd"
        if target.exists():
            continue
        fine = np.empty(SHAPES[resolution], dtype=np.float64, order="F")
        # Linear upsampling, then masks stay masks (values 0/1) as Allen's are.
        ndimage.zoom(coarse, factor, output=fine, order=1, grid_mode=True, mode="nearest")
        if name in ("data_mask", "aav_exclusion_fraction"):
            np.greater_equal(fine, 0.5, out=fine)
        elif name in ("sum_pixels", "sum_pixel_intensities", "injection_sum_pixel_intensities"):
            np.rint(fine, out=fine)  # counts and sums of integer pixel values
        np.maximum(fine, 0.0, out=fine)
        write_nrrd(target, fine, spacing_um=resolution)
        del fine
    (folder / "complete").write_text("ten gzip double grids\n")
    return folder


if __name__ == "__main__":
    import sys

    for res in sys.argv[1:] or ["25"]:
        print(grid_folder(int(res)))
