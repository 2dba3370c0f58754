"""Connectivity gridding: Allen's projection grid volumes at 10, 25, 50 or 100 um.

Per section (:func:`grid_projection_section`, a Dask task can call it): the detection's per-pixel quantities are
summed over blocks of pixels and splatted over the section's slab into reference voxels
(:mod:`~brainmap.pipeline.grid.resample`). Quantities (per voxel, weighted sums; a weight of 1 = one pixel):

==============================  ==================================================================
``sum_pixels``                  tissue pixels
``covered``                     all imaged pixels (tissue or not): the data mask's coverage
``sum_projection_pixels``       detected signal pixels
``sum_projection_intensity``    detected signal intensity (the mask's values, counts)
``sum_pixel_intensities``       raw signal counts of the tissue pixels
``injection_pixels``            tissue pixels in the injection site
``injection_projection_pixels`` detected pixels in the site
``injection_projection_intensity``  their intensity
``injection_sum_pixel_intensities`` raw signal counts in the site
==============================  ==================================================================

Volumes (:func:`projection_volumes`), as Allen's and as :func:`brainmap.pipeline.unionize.unionize_projection`
reads them:

* ``projection_density = sum_projection_pixels / sum_pixels`` (all detected signal, the injection included:
  the unionizer subtracts the injection record), ``projection_energy = sum_projection_intensity / sum_pixels``;
* ``injection_fraction = injection_pixels / sum_pixels``, ``injection_density = injection_projection_pixels /
  sum_pixels``, ``injection_energy = injection_projection_intensity / sum_pixels`` (normalized by all the
  voxel's pixels, so ``sum_pixels x injection_density`` is the voxel's injection signal pixels);
* ``sum_pixels``, ``sum_pixel_intensities``, ``injection_sum_pixel_intensities``: the sums;
* ``data_mask`` = 1 where the voxel lies at least half (``min_coverage``) within the slabs of usable sections
  (``covered x pixel^2 / res^2 >= min_coverage``); every volume is 0 elsewhere.

Files (:func:`write_projection_grids`): ``{name}_{res}.nrrd`` with Allen's header, grids as double,
``data_mask`` as unsigned char.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from brainmap.io.nrrd import write_nrrd
from brainmap.io.nrrd_write_stream import NrrdSlabWriter
from brainmap.pipeline.detect.core import DetectionResult
from brainmap.pipeline.grid.resample import (
    GridAccumulator,
    GridSpec,
    PartialGrid,
    block_centres,
    block_sums,
    section_affine,
    splat_slab,
)
from brainmap.specimen.model import SectionDataSet, SectionImage

__all__ = [
    "PROJECTION_QUANTITIES",
    "PROJECTION_VOLUMES",
    "default_block_px",
    "grid_projection_section",
    "projection_volumes",
    "write_projection_grids",
    "write_projection_grids_streamed",
]

PROJECTION_QUANTITIES = (
    "sum_pixels", "covered", "sum_projection_pixels", "sum_projection_intensity", "sum_pixel_intensities",
    "injection_pixels", "injection_projection_pixels", "injection_projection_intensity",
    "injection_sum_pixel_intensities",
)

#: The volumes written, in Allen's names.
PROJECTION_VOLUMES = (
    "projection_density", "projection_energy", "injection_fraction", "injection_density", "injection_energy",
    "data_mask", "sum_pixels", "sum_pixel_intensities", "injection_sum_pixel_intensities",
)


def default_block_px(pixel_size_um: float, resolution_um: float, fraction: float = 0.5) -> int:
    """Block side (pixels) for gridding: the largest whole number of pixels within ``fraction`` of a voxel."""
    return max(1, int(fraction * resolution_um / pixel_size_um))


def grid_projection_section(dataset: SectionDataSet, image: SectionImage, detection: DetectionResult,
                            spec: GridSpec, *, block_px: int | None = None, slab_um: float | None = None
                            ) -> PartialGrid:
    """One section's contribution to the connectivity grids (module docstring for the quantities).

    Parameters
    ----------
    dataset, image : the data set (with its Alignment3d) and the section image (with its Alignment2d).
    detection : what :func:`~brainmap.pipeline.detect.detect_section` found in the image.
    spec : the reference grid.
    block_px : pixels are summed over blocks of this side first (default half a voxel: each block goes whole to
        the voxel of its centroid).
    slab_um : the slab the section stands for (specimen um along the cut; default ``dataset.sampling_um``).
    """
    block = block_px or default_block_px(dataset.pixel_size_um, spec.resolution_um)
    slab = float(slab_um if slab_um is not None else dataset.sampling_um)
    tissue = detection.tissue
    shape = tissue.shape
    signal = detection.mask
    quantities = {
        "sum_pixels": block_sums(tissue, block),
        "sum_projection_pixels": block_sums(signal > 0, block),
        "sum_projection_intensity": block_sums(signal, block),
        "sum_pixel_intensities": block_sums(detection.signal_counts * tissue, block),
    }
    if detection.injection is not None:
        site = detection.injection
        in_site = signal * site
        quantities.update({
            "injection_pixels": block_sums(site, block),
            "injection_projection_pixels": block_sums(in_site > 0, block),
            "injection_projection_intensity": block_sums(in_site, block),
            "injection_sum_pixel_intensities": block_sums(detection.signal_counts * site, block),
        })
    x, y, count = block_centres(shape, block)
    quantities["covered"] = count
    matrix, offset = section_affine(dataset, image)
    xs, ys = x.ravel(), y.ravel()
    points = np.stack([matrix[a, 0] * xs + matrix[a, 1] * ys + offset[a] for a in range(3)], axis=1)
    if dataset.deformation is not None:  # the non-linear part of the alignment, after the affine
        points = dataset.deformation.apply(points)
    direction = dataset.alignment3d.tvr.matrix[:, 2]
    normal = np.cross(matrix[:, 0], matrix[:, 1])
    pixel_um = float(np.sqrt(abs(np.linalg.det(image.alignment2d.tsv.matrix))))
    return splat_slab(points, {k: v.ravel() for k, v in quantities.items()}, direction, slab, spec, weight="covered",
                      footprint_um=block * pixel_um, plane=(normal, offset))


def _volume_values(get, full: float, min_coverage: float, entries=None, out: dict[str, np.ndarray] | None = None
                   ) -> dict[str, np.ndarray]:
    """The volumes' flat values (float64; ``data_mask`` bool) from ``get(quantity)``: the same element-wise
    formulas over the whole grid or a range of it (the same bits either way). ``entries(quantity)``, if given,
    returns a sparse quantity's ``(positions, values)`` in that range (None for a dense one): its volumes are
    then computed at those positions only (0 elsewhere, as ``0 / pixels`` is), not over the whole range -- the
    demo's 25 um signal and injection quantities are sparse, and their quotients were a third of the writing.
    ``out`` (:func:`_value_buffers`) receives the values (and its scratch arrays are overwritten); a slab writer
    reuses two of them instead of fresh arrays for every slab, whose pages the kernel zeroed each time (2.4 GB of
    page faults and 2.8 s of system time per demo, docs/performance-demo.md, round 16). None: new arrays."""
    pixels = get("sum_pixels")
    if out is None:
        out = _value_buffers(pixels.size)
    safe, positive, data, has = out["_safe"], out["_positive"], out["data_mask"], out["_has"]
    np.greater_equal(get("covered"), min_coverage * full, out=data)
    np.greater(pixels, 0, out=positive)
    safe.fill(1.0)
    np.copyto(safe, pixels, where=positive)  # np.where(pixels > 0, pixels, 1.0)
    np.logical_and(data, positive, out=has)

    def where(mask: np.ndarray, name: str, divide: bool, target: np.ndarray, values=None) -> np.ndarray:
        # np.where(mask, values / safe if divide else values, 0.0), written into ``target``; ``values`` given:
        # the quantity's, already read
        sparse = entries(name) if entries is not None and values is None else None
        target.fill(0.0)
        if sparse is None:
            values = get(name) if values is None else values
            if divide:
                np.divide(values, safe, out=target, where=mask)
            else:
                np.copyto(target, values, where=mask)
            return target
        at, values = sparse
        target[at] = np.where(mask[at], values / safe[at] if divide else values, 0.0)
        return target

    volumes = {name: where(has, quantity, True, out[name]) for name, quantity in _QUOTIENTS}
    volumes["sum_pixels"] = where(data, "sum_pixels", False, out["sum_pixels"], pixels)
    for name in ("sum_pixel_intensities", "injection_sum_pixel_intensities"):
        volumes[name] = where(data, name, False, out[name])
    volumes["data_mask"] = data
    return volumes


#: The volumes that are a quantity over the voxel's tissue pixels: (volume, quantity).
_QUOTIENTS = (("projection_density", "sum_projection_pixels"), ("projection_energy", "sum_projection_intensity"),
              ("injection_fraction", "injection_pixels"), ("injection_density", "injection_projection_pixels"),
              ("injection_energy", "injection_projection_intensity"))


def _value_buffers(n: int) -> dict[str, np.ndarray]:
    """Arrays of ``n`` values for :func:`_volume_values`: each volume's (``data_mask`` bool, the rest float64)
    and its scratch arrays (names starting with ``_``)."""
    buffers = {name: np.empty(n, dtype=bool if name == "data_mask" else np.float64) for name in PROJECTION_VOLUMES}
    buffers.update(_safe=np.empty(n), _positive=np.empty(n, dtype=bool), _has=np.empty(n, dtype=bool))
    return buffers


def projection_volumes(accumulator: GridAccumulator, pixel_size_um: float, *, min_coverage: float = 0.5
                       ) -> dict[str, np.ndarray]:
    """Allen's connectivity volumes (module docstring) from the summed partial grids, ``(AP, DV, LR)`` arrays in
    Fortran order: float64, ``data_mask`` uint8. Whole volumes in memory: :func:`write_projection_grids_streamed`
    writes the same files slab by slab."""
    spec = accumulator.spec
    full = (spec.resolution_um / pixel_size_um) ** 2  # pixels a fully covered voxel receives
    flat = _volume_values(accumulator.get, full, min_coverage)
    return {name: spec.volume(values, np.uint8 if name == "data_mask" else np.float64)
            for name, values in flat.items()}


def write_projection_grids(folder: str | os.PathLike[str], volumes: dict[str, np.ndarray], spec: GridSpec
                           ) -> list[Path]:
    """Write each volume as ``{name}_{res}.nrrd`` (Allen's header, gzip; written atomically); the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, volume in volumes.items():
        path = folder / f"{name}_{spec.resolution_label}.nrrd"
        write_nrrd(path, volume, spacing_um=spec.resolution_um, origin_um=spec.origin_um)
        paths.append(path)
    return paths


#: Bytes of one float64 slab of one volume while writing slab by slab.
SLAB_BYTES = 1 << 24


def write_projection_grids_streamed(folder: str | os.PathLike[str], accumulator: GridAccumulator,
                                    pixel_size_um: float, *, min_coverage: float = 0.5,
                                    slab_bytes: int = SLAB_BYTES, threads: int | None = None,
                                    deflate: str = "isal") -> list[Path]:
    """:func:`write_projection_grids` of :func:`projection_volumes`, slab by slab (ranges of LR planes): the same
    volumes without whole volumes in memory (one slab of each of the nine at a time, compressed in ``threads``
    threads, default the CPUs available: deflate releases the GIL). ``deflate="zlib"`` writes the same files
    byte for byte; the default ISA-L deflate writes the same data an order of magnitude faster
    (:class:`~brainmap.io.nrrd_write_stream.NrrdSlabWriter`). A :class:`~brainmap.pipeline.grid.spill.
    SpillAccumulator` (10 um) is read in its blocks of LR planes instead of ``slab_bytes``."""
    spec = accumulator.spec
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = (spec.resolution_um / pixel_size_um) ** 2
    plane = spec.shape[0] * spec.shape[1]
    planes = max(1, slab_bytes // (plane * 8))
    planes = getattr(accumulator, "block_planes", planes)  # a SpillAccumulator's blocks: each decoded once
    paths = {name: folder / f"{name}_{spec.resolution_label}.nrrd" for name in PROJECTION_VOLUMES}
    workers = threads or min(len(paths), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else (os.cpu_count() or 1))
    with ExitStack() as stack:
        writers = {name: stack.enter_context(NrrdSlabWriter(
            path, spec.shape, np.uint8 if name == "data_mask" else np.float64, spacing_um=spec.resolution_um,
            origin_um=spec.origin_um, deflate=deflate)) for name, path in paths.items()}
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, workers),
                                                      thread_name_prefix="grid-write"))
        entries = getattr(accumulator, "get_entries", None)  # a GridAccumulator's sparse quantities
        writing: list = []
        # two sets of arrays, in turn: one filled while the threads deflate the other
        buffers = [_value_buffers(min(planes, spec.shape[2]) * plane) for _ in range(2)]
        for k0 in range(0, spec.shape[2], planes):
            k1 = min(k0 + planes, spec.shape[2])
            out = {name: b[: (k1 - k0) * plane] for name, b in buffers[(k0 // planes) % 2].items()}
            values = _volume_values(lambda name: accumulator.get_range(name, k0 * plane, k1 * plane), full,
                                    min_coverage, entries and (lambda name: entries(name, k0 * plane, k1 * plane)),
                                    out=out)
            shape = spec.shape[:2] + (k1 - k0,)
            slabs = {name: v.reshape(shape, order="F") for name, v in values.items()}
            # This slab's quotients were computed while the threads deflated the one before (pipelined: the
            # quotients are a third of the writing, measured; each writer still gets its slabs in order).
            for done in writing:
                done.result()
            writing = [pool.submit(writers[name].write, slabs[name]) for name in writers]
        for done in writing:
            done.result()
    return list(paths.values())
