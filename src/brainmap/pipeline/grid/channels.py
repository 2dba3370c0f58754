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

from brainmap.pipeline.grid._scatter import add_unique
from brainmap.pipeline.grid.resample import (
    GridSpec,
    block_centres,
    block_sums,
    reduce_partial,
    section_affine,
    splat_slab,
    zeroed,
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
    layout = _SlabMajor(spec.shape, int(np.argmax(np.abs(direction))))
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
            _add_partial(sums, partial, [n for n in ("pixels", *_COLOURS) if n in partial.values], layout)

    empty = np.zeros(spec.shape, dtype=np.float32, order="F")
    pixels = sums.pop("pixels", None)  # None only when no section reached the grid (nor then any colour)
    if pixels is not None:
        np.copyto(pixels, 1.0, where=~(pixels > 0))  # a safe divisor: unreached voxels hold 0 in every sum
    out = {}
    for colour in _COLOURS:
        total = sums.pop(colour, None)
        if total is None:
            out[colour] = empty
        else:
            np.divide(total, pixels, out=total)
            out[colour] = layout.volume(total)  # the grid's order; the sum is freed as the next one is taken
    return out


class _SlabMajor:
    """The memory layout the sums are added in: the grid's (AP, DV, LR) Fortran order with the sections' axis
    (``axis``, the one the slabs are thin along) moved last, so a section's voxels lie in a few runs of memory.

    In the grid's own order a coronal section's voxels are 2 KB apart (AP is the fastest axis): adding a data set's
    sums voxel by voxel took 3.3-3.8 s, against 1.4-1.7 s in this order, the index conversion and the mapped zeros
    included (a demo experiment, 123 sections; the same additions, so the same bits). A sagittal section's axis
    (LR) is already last."""

    def __init__(self, shape: tuple[int, int, int], axis: int):
        self.shape, self.axis = tuple(shape), axis
        self.order = [a for a in range(3) if a != axis] + [axis]

    def index(self, flat: np.ndarray) -> np.ndarray:
        """The flat indices (the grid's Fortran order) of voxels, in this layout's."""
        n_ap, n_dv, n_lr = self.shape
        if self.axis == 2:
            return flat
        rest, ap = np.divmod(flat, n_ap)  # rest = dv + n_dv lr
        if self.axis == 0:  # (DV, LR, AP)
            return rest + ap * (n_dv * n_lr)
        lr, dv = np.divmod(rest, n_dv)  # axis 1: (AP, LR, DV)
        return ap + n_ap * lr + n_ap * n_lr * dv

    def zeros(self) -> np.ndarray:
        """A flat float32 volume of zeros in this layout (pages mapped at once: first-touch faults took ~4 s of
        system time per data set)."""
        return zeroed(int(np.prod(self.shape)), np.float32)

    def volume(self, flat: np.ndarray) -> np.ndarray:
        """A flat volume in this layout as the grid's (AP, DV, LR) Fortran-order volume.

        A coronal layout is copied one LR plane at a time through a small buffer (the plane's source rows made
        contiguous first, then transposed) into a volume whose pages are mapped at once: 0.2-0.25 s for a 25 um
        float32 volume, the mapping included, where numpy's copy of the transposed view took 0.9-1.1 s (each
        voxel read from another page). An axis-1 layout keeps AP contiguous: numpy's copy of the view is fast."""
        n_ap, n_dv, n_lr = self.shape
        if self.axis == 2:
            return flat.reshape(self.shape, order="F")
        out = zeroed(flat.size, flat.dtype).reshape(self.shape, order="F")
        if self.axis == 1:  # memory (AP, LR, DV)
            np.copyto(out, flat.reshape(n_ap, n_lr, n_dv, order="F").transpose(0, 2, 1))
            return out
        rows = flat.reshape(n_ap, n_lr, n_dv)  # memory (DV, LR, AP), as C order: [ap, lr, dv]
        buffer = np.empty((n_ap, n_dv), dtype=flat.dtype)
        for plane in range(n_lr):
            np.copyto(buffer, rows[:, plane, :])
            out[:, :, plane] = buffer
        return out


def _add_partial(sums: dict[str, np.ndarray], partial, names: list[str], layout: _SlabMajor) -> None:
    """Add a section's partial sums into the flat float32 volumes of ``sums`` (in ``layout``), voxel by voxel
    where the partial has entries.

    Each voxel's float64 sum is added as ``float32(total + sum)``, the arithmetic of adding a float64 slab to the
    float32 volume; only the voxels the section reached are touched (the slab of planes it crosses, added whole,
    took ~90 ns per voxel), in one compiled pass (numpy's gather, add and scatter in the grid's order took 8.9 s of
    the 13.3 s a demo experiment's channels took to resample; :class:`_SlabMajor` gives this pass's figure)."""
    index, values = reduce_partial(partial)
    index = layout.index(index)
    for name in names:
        total = sums.get(name)
        if total is None:
            total = sums[name] = layout.zeros()
        add_unique(total, index, values[name])


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
