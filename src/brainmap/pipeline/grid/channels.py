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
    reduce_partial,
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
    # One dense float32 sum per quantity (0.3 GB each at 25 um); each section's partial is summed per voxel and
    # added where it has entries. Keeping every section's sparse partials and summing them at the end held 6.5 GB
    # at 25 um (140 sections).
    sums: dict[str, np.ndarray] = {}
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
        if partial.index.size:
            _add_partial(sums, partial, [n for n in ("pixels", *_COLOURS) if n in partial.values])

    empty = np.zeros(spec.shape, dtype=np.float32, order="F")
    pixels = sums.pop("pixels", empty)
    reached = pixels > 0
    np.copyto(pixels, 1.0, where=~reached)  # a safe divisor: unreached voxels hold 0 in every sum
    out = {}
    for colour in _COLOURS:
        total = sums.pop(colour, None)
        if total is None:
            out[colour] = empty
        else:
            np.divide(total, pixels, out=total)
            out[colour] = total
    return out


def _add_partial(sums: dict[str, np.ndarray], partial, names: list[str]) -> None:
    """Add a section's partial sums into the (AP, DV, LR) float32 volumes of ``sums`` (Fortran order, as the
    partial's flat indices count), voxel by voxel where the partial has entries.

    Each voxel's float64 sum is added as ``float32(total + sum)``, the arithmetic of adding a float64 slab to the
    float32 volume; only the voxels the section reached are touched (the slab of planes it crosses, added whole,
    took ~90 ns per voxel: its planes are the short, strided axis of a Fortran-order volume)."""
    index, values = reduce_partial(partial)
    for name in names:
        total = sums.get(name)
        if total is None:
            total = sums[name] = np.zeros(partial.spec.shape, dtype=np.float32, order="F")
        flat = total.reshape(-1, order="F")  # a view: the volume is Fortran-contiguous
        flat[index] = flat[index] + values[name]


def write_channel_volumes(folder: str | os.PathLike[str], volumes: Mapping[str, np.ndarray],
                          resolution_um: int = 25) -> Path:
    """Write the volumes as Allen's zip of MetaImages (``red.mhd/.raw``, ...) at ``folder/`` +
    :data:`CHANNEL_VOLUMES_FILE` (atomically)."""
    from brainmap.io.grid_bundle import write_grid_bundle

    path = Path(folder) / CHANNEL_VOLUMES_FILE
    # A fast deflate (ISA-L's level 1): zlib's level 6 took 37 s for the red volume of a demo experiment and its
    # level 1 8 s (loaded machine); ISA-L's 1.2 s against zlib level 1's 5.2 s, quiet, for a file 10 % smaller.
    write_grid_bundle(path, dict(volumes), (float(resolution_um),) * 3, compresslevel=1, fast=True)
    return path
