"""Ten connectivity grid files as Allen ships them (gzip NRRD, type double, ``{name}_{res}.nrrd``), written once
and cached, for timing whole commands from files.

The volumes are made on the 100 um grid, demo-like (an injection blob, projections that vary by structure and
fall off with distance, sum_pixels and intensities over the brain, zeros outside it, a few missing sections), then
upsampled to 25 or 10 um by linear interpolation (so voxel values differ as in real grids, which compress about
as Allen's do). Each volume is computed and written slab by slab (ranges of LR planes, :class:`NrrdSlabWriter`), so
writing a 10 um volume (9.6 GB of doubles) holds about one slab: the linear upsampling is separable, done per axis
with the weights of ``scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")``. 25 um files are deflated with
zlib level 6 as teem writes Allen's; 10 um ones with ISA-L level 1 (zlib level 6 would take about half an hour of
CPU for the ten; the reader inflates either). Cache: ``$BRAINMAP_BENCH_CACHE`` or ``~/.cache/brainmap/bench``; a
folder is reused once its ``complete`` marker exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from brainmap.atlas import ReferenceSpace
from brainmap.io.nrrd_write_stream import NrrdSlabWriter

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


def _linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w): output voxel j = (1 - w) * input[i0] + w * input[i1], as ``ndimage.zoom(order=1,
    grid_mode=True, mode="nearest")`` places voxel centres (edges repeat the edge voxel)."""
    source = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(source).astype(np.intp)
    return i0, np.minimum(i0 + 1, n_in - 1), source - i0


def _upsampled_slab(coarse: np.ndarray, axes: list, k0: int, k1: int) -> np.ndarray:
    """Planes ``k0:k1`` (last axis) of the linear upsampling of ``coarse`` (one axis at a time)."""
    i0, i1, w = (a[k0:k1] for a in axes[2])
    out = coarse[:, :, i0] * (1 - w) + coarse[:, :, i1] * w
    i0, i1, w = axes[0]
    out = out[i0] * (1 - w)[:, None, None] + out[i1] * w[:, None, None]
    i0, i1, w = axes[1]
    return out[:, i0] * (1 - w)[None, :, None] + out[:, i1] * w[None, :, None]


def grid_folder(resolution: int) -> Path:
    """The folder of the ten ``{name}_{resolution}.nrrd`` files, written now (slab by slab) if not cached."""
    folder = cache_dir() / f"grids_{resolution}"
    if (folder / "complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[resolution]
    axes = [_linear_weights(n, m) for n, m in zip(SHAPES[100], shape)]
    planes = max(1, (64 << 20) // (shape[0] * shape[1] * 8))  # ~64 MB slabs
    deflate = "zlib" if resolution >= 25 else "isal"
    for name, coarse in _coarse().items():
        target = folder / f"{name}_{resolution}.nrrd"
        if target.exists():
            continue
        with NrrdSlabWriter(target, shape, np.float64, spacing_um=resolution, deflate=deflate) as writer:
            for k0 in range(0, shape[2], planes):
                fine = _upsampled_slab(coarse, axes, k0, min(k0 + planes, shape[2]))
                # Masks stay masks (values 0/1) as Allen's are; pixel counts and sums stay integers.
                if name in ("data_mask", "aav_exclusion_fraction"):
                    fine = (fine >= 0.5).astype(np.float64)
                elif name in ("sum_pixels", "sum_pixel_intensities", "injection_sum_pixel_intensities"):
                    np.rint(fine, out=fine)
                np.maximum(fine, 0.0, out=fine)
                writer.write(fine)
    (folder / "complete").write_text("ten gzip double grids\n")
    return folder


def annotation_file(resolution: int = 10) -> Path:
    """An ``annotation_{resolution}.nrrd`` (uint32 structure ids, gzip, as Allen's ReferenceSpaceCache downloads)
    made by nearest-neighbour upsampling of the bundled 25 um annotation, computed and written slab by slab; cached.
    Allen's own annotation_10.nrrd is not bundled nor in ../shared; this stands in for it (same shape and type)."""
    from brainmap.atlas import bundled
    from brainmap.atlas.annotation_stream import _gather_plane, nearest_indices
    from brainmap.io import read_nrrd

    target = cache_dir() / f"ccf_{resolution}" / f"annotation_{resolution}.nrrd"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    coarse = read_nrrd(bundled.annotation_path(25))[0].astype(np.uint32, copy=False)
    shape = SHAPES[resolution]
    axes = [nearest_indices(n, 25.0, m, float(resolution)) for n, m in zip(coarse.shape, shape)]
    planes = max(1, (64 << 20) // (shape[0] * shape[1] * 4))
    with NrrdSlabWriter(target, shape, np.uint32, spacing_um=resolution, deflate="isal") as writer:
        for k0 in range(0, shape[2], planes):
            k1 = min(k0 + planes, shape[2])
            slab = np.empty(shape[:2] + (k1 - k0,), dtype=np.uint32, order="F")
            for j in range(k1 - k0):
                _gather_plane(coarse, axes[0], axes[1], axes[2][k0 + j], slab[:, :, j])
            writer.write(slab)
    return target


if __name__ == "__main__":
    import sys

    for res in sys.argv[1:] or ["25"]:
        print(grid_folder(int(res)))
