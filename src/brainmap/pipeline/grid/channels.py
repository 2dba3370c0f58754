"""Reference-aligned image channel volumes: each section image channel resampled into the CCF (Allen's
``ImagesResampledTo25MicronARA``: red, green and blue volumes at 25 um, a zip of MetaImages).

Every usable section's channels are summed over blocks of pixels and spread over the slab the section stands
for, exactly as the connectivity grids are (:func:`~brainmap.pipeline.grid.resample.splat_slab`); a voxel's value
is the mean intensity of the pixels it received (counts, as the images hold them), 0 where no section reached.
The channels are mapped to Allen's names by colour: ``tissue`` (or ``red``) -> red, ``signal`` (or ``green``) ->
green, ``blue`` -> blue (zeros when a data set has no such channel).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from brainmap.pipeline.grid.resample import (
    GridSpec,
    block_centres,
    block_sums,
    section_affine,
    splat_slab,
)
from brainmap.specimen.model import SectionDataSet, SectionImage

__all__ = ["CHANNEL_VOLUMES_FILE", "resample_channels", "write_channel_volumes"]

#: The file name the loader registers as Allen's WellKnownFile type of these volumes.
CHANNEL_VOLUMES_FILE = "ImagesResampledTo25MicronARA.zip"
_COLOURS = {"red": ("tissue", "red"), "green": ("signal", "green"), "blue": ("blue",)}


def _channel(arrays: Mapping[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray | None:
    return next((arrays[n] for n in names if n in arrays), None)


def resample_channels(dataset: SectionDataSet, read_images: Callable[[SectionImage], Mapping[str, np.ndarray]],
                      resolution_um: int = 25, block_px: int | None = None) -> dict[str, np.ndarray]:
    """``{"red", "green", "blue"}``: (AP, DV, LR) float32 volumes of the mean channel intensity per voxel of
    Allen's ``resolution_um`` grid, from the data set's usable sections (``read_images(image)`` -> channels)."""
    if dataset.alignment3d is None:
        raise ValueError(f"SectionDataSet {dataset.id} has no Alignment3d: align it first")
    spec = GridSpec.allen(resolution_um)
    block = block_px or max(1, int(resolution_um / dataset.pixel_size_um / 2))
    direction = dataset.alignment3d.tvr.matrix[:, 2]
    # Sparse partials, summed once per quantity with bincount at the end: a dense float64 accumulator per
    # quantity is 0.6 GB at 25 um (GridAccumulator); the partials of a whole data set are a few MB.
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for image in dataset.usable_images():
        arrays = read_images(image)
        shape = next(iter(arrays.values())).shape
        quantities = {"pixels": block_sums(np.ones(shape, dtype=np.float64), block)}
        for colour, names in _COLOURS.items():
            channel = _channel(arrays, names)
            if channel is not None:
                quantities[colour] = block_sums(channel.astype(np.float64), block)
        x, y, count = block_centres(shape, block)
        quantities["covered"] = count
        matrix, offset = section_affine(dataset, image)
        xs, ys = x.ravel(), y.ravel()
        points = np.stack([matrix[a, 0] * xs + matrix[a, 1] * ys + offset[a] for a in range(3)], axis=1)
        normal = np.cross(matrix[:, 0], matrix[:, 1])
        pixel_um = float(np.sqrt(abs(np.linalg.det(image.alignment2d.tsv.matrix))))
        partial = splat_slab(points, {k: v.ravel() for k, v in quantities.items()}, direction,
                             float(dataset.sampling_um), spec, weight="covered", footprint_um=block * pixel_um,
                             plane=(normal, offset))
        for name, values in partial.values.items():
            parts.setdefault(name, []).append((partial.index, values))

    def total(name: str) -> np.ndarray:
        if name not in parts:
            return np.zeros(spec.n_voxels)
        index = np.concatenate([i for i, _ in parts[name]])
        values = np.concatenate([v for _, v in parts[name]])
        return np.bincount(index, weights=values, minlength=spec.n_voxels)

    pixels = total("pixels")
    reached = pixels > 0
    safe = np.where(reached, pixels, 1.0)
    del pixels
    out = {}
    for colour in _COLOURS:
        out[colour] = spec.volume(np.where(reached, total(colour) / safe, 0.0).astype(np.float32))
    return out


def write_channel_volumes(folder: str | os.PathLike[str], volumes: Mapping[str, np.ndarray],
                          resolution_um: int = 25) -> Path:
    """Write the volumes as Allen's zip of MetaImages (``red.mhd/.raw``, ...) at ``folder/`` +
    :data:`CHANNEL_VOLUMES_FILE` (atomically)."""
    from brainmap.io.grid_bundle import write_grid_bundle

    path = Path(folder) / CHANNEL_VOLUMES_FILE
    write_grid_bundle(path, dict(volumes), (float(resolution_um),) * 3)
    return path
