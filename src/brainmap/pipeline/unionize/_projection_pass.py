"""The projection unionizer's one pass over the volume: every sum and maximum of both records at once.

A compiled loop visits each voxel once, in the annotation's memory order, and adds its contributions to the
injection and projection sums of its (structure, hemisphere) bin and to both records' running maxima. It reads
the ten input volumes where they lie (no gathered copies, no products as temporaries), so it costs about one
streaming pass over the inputs whatever the number of structures. :func:`projection_direct_sums` is the entry
point; ``reduction.StructureBins`` is the same reduction written with numpy (used by the ISH unionizer and, in the
tests, as the reference).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from brainmap.atlas.annotation_stream import StreamedAnnotation
from brainmap.atlas.label_index import flat_view
from brainmap.atlas.reference_space import ReferenceSpace, midline_index
from brainmap.errors import FormatError
from brainmap.io.nrrd_stream import SLAB_BYTES, VolumeSlabs
from brainmap.pipeline.unionize.grids import ANNOTATION_KEY, PROJECTION_GRID_NAMES, projection_files

#: Rows of :attr:`DirectSums.sums`: the injection record's four sums, then the projection record's four
#: (before the injection record is subtracted).
SUM_NAMES = ("sum_pixels", "sum_projection_pixels", "sum_projection_pixel_intensity", "sum_pixel_intensity")


@dataclass
class DirectSums:
    """Per record, quantity, hemisphere and structure (preorder), the direct (not rolled-up) results.

    ``sums`` is (2 records, 4 quantities, 2 hemispheres, n structures) in :data:`SUM_NAMES` order, record 0
    the injection; ``max_value`` and ``max_flat`` are (2 records, 2 hemispheres, n): the largest positive value
    and the flat (memory-order) index of its first voxel, -1 where there is none; ``voxels`` is (2 hemispheres,
    n): the number of voxels with data labelled directly with each structure.
    """

    sums: np.ndarray
    max_value: np.ndarray
    max_flat: np.ndarray
    voxels: np.ndarray


def _accumulators(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Empty (sums, best, where, voxels) for :func:`_pass` over ``2 * (n + 1)`` bins."""
    bins = 2 * (n + 1)
    return (np.zeros((8, bins)), np.zeros((2, bins)), np.full((2, bins), -1, dtype=np.int64),
            np.zeros(bins, dtype=np.int64))


@numba.njit(nogil=True, cache=True)
def _pass(sums, best, where, voxels, first_outer, compact, n, n_outer, n_inner, lr_is_outer, midline, data_mask,
          sum_pixels, injection_fraction, injection_density, injection_energy, injection_intensities,
          projection_density, projection_energy, intensities, exclusion, use_exclusion):  # pragma: no cover - compiled
    """Add the voxels of outer rows ``first_outer .. first_outer + n_outer`` (the arrays hold just those rows) to
    the accumulators. Called once over the whole volume or once per slab in order: the same additions in the
    same order, so the same bits."""
    for o in range(n_outer):
        for i in range(n_inner):
            k = o * n_inner + i
            f = (first_outer + o) * n_inner + i  # flat index in the whole volume
            c = compact[k]
            if c == 0 or data_mask[k] == 0:  # AllenSDK: annotation[logical_not(data_mask)] = 0
                continue
            lr = first_outer + o if lr_is_outer else i
            b = np.int64(c) + (n + 1 if lr >= midline else 0)
            voxels[b] += 1
            sp = np.float64(sum_pixels[k])
            fraction = np.float64(injection_fraction[k])
            density = np.float64(injection_density[k])
            sums[0, b] += sp * fraction
            sums[1, b] += sp * density
            sums[2, b] += sp * np.float64(injection_energy[k])
            sums[3, b] += np.float64(injection_intensities[k])
            if density > best[0, b]:
                best[0, b] = density
                where[0, b] = f
            # Projection: voxels in the injection or not excluded by the artefact mask (AllenSDK:
            # logical_or(injection_fraction, not exclusion > 0)).
            if use_exclusion and exclusion[k] > 0 and fraction == 0:
                continue
            projected = np.float64(projection_density[k])
            sums[4, b] += sp
            sums[5, b] += sp * projected
            sums[6, b] += sp * np.float64(projection_energy[k])
            sums[7, b] += np.float64(intensities[k])
            outside = projected * (1.0 - fraction)
            if outside > best[1, b]:
                best[1, b] = outside
                where[1, b] = f


def projection_direct_sums(space: ReferenceSpace, grids, exclusion: np.ndarray | None) -> DirectSums:
    """One pass over the grids of one experiment (see :mod:`brainmap.pipeline.unionize.projection`).

    Parameters
    ----------
    space : ReferenceSpace
        The annotation on the grid of the volumes, (AP, DV, LR).
    grids : mapping name -> (AP, DV, LR) volume
        The projection unionizer's input volumes, any real dtype; a volume in the other memory order than the
        annotation is copied once.
    exclusion : volume or None
        ``aav_exclusion_fraction`` (> 0 means excluded from the projection record), or None.
    """
    index = space.label_index
    compact = index.flat
    fortran = index.compact.flags.f_contiguous and not index.compact.flags.c_contiguous
    n_lr = space.shape[2]

    def flat(name_or_volume) -> np.ndarray:
        volume = np.asarray(grids[name_or_volume] if isinstance(name_or_volume, str) else name_or_volume)
        if volume.shape != space.shape:
            raise ValueError(f"grid volume shape {volume.shape} differs from the annotation's {space.shape}")
        if volume.dtype == bool:
            volume = volume.view(np.uint8)
        volume = np.asfortranarray(volume) if fortran else np.ascontiguousarray(volume)
        return flat_view(volume)

    n_outer, n_inner = (n_lr, compact.size // n_lr) if fortran else (compact.size // n_lr, n_lr)
    use_exclusion = exclusion is not None
    n = len(index.order)
    sums, best, where, voxels = _accumulators(n)
    _pass(
        sums, best, where, voxels, 0, compact, n, n_outer, n_inner, fortran, midline_index(n_lr), flat("data_mask"),
        flat("sum_pixels"), flat("injection_fraction"), flat("injection_density"), flat("injection_energy"),
        flat("injection_sum_pixel_intensities"), flat("projection_density"), flat("projection_energy"),
        flat("sum_pixel_intensities"), flat(exclusion) if use_exclusion else np.zeros(1, np.uint8), use_exclusion,
    )
    return _direct(sums, best, where, voxels, n)


def projection_direct_sums_streamed(space: ReferenceSpace, paths: Mapping[str, str | os.PathLike[str]], *,
                                    slab_bytes: int = SLAB_BYTES, threads: int | None = None,
                                    slabs: VolumeSlabs | None = None) -> DirectSums:
    """:func:`projection_direct_sums` over NRRD files read slab by slab (ranges of LR planes), bit for bit equal.

    Parameters
    ----------
    space : ReferenceSpace or StreamedAnnotation
        The annotation on the grid of the files: a ReferenceSpace whose label index is in file (Fortran) order, as
        :func:`~brainmap.io.nrrd.read_nrrd` gives it (its compact labels read where they lie), or a
        :class:`~brainmap.atlas.annotation_stream.StreamedAnnotation` (its labels slab by slab: a 10 um grid).
    paths : mapping name -> NRRD path
        The volumes of :data:`PROJECTION_GRID_NAMES`, and ``aav_exclusion_fraction`` if present.
    slab_bytes : int
        About how many bytes a slab of one volume takes; memory is about 2 x 10 slabs, whatever the volume size.
    threads : int, optional
        Decoding threads (default: the CPUs available).
    slabs : VolumeSlabs, optional
        The same files already being decoded (:func:`~brainmap.pipeline.unionize.grids.projection_volume_slabs`,
        made before this was called); then ``slab_bytes`` and ``threads`` are its own.
    """
    labels = slab_labels(space)
    files = projection_files(paths, labels.files.get(ANNOTATION_KEY))
    names = [name for name in files if name != ANNOTATION_KEY]
    use_exclusion = "aav_exclusion_fraction" in paths
    if slabs is None:
        slabs = VolumeSlabs(files, slab_bytes=slab_bytes, threads=threads)
    elif slabs.paths != {name: Path(path) for name, path in files.items()}:
        slabs.close()
        raise ValueError("projection_direct_sums_streamed: the slabs given are not of this unionize's files")
    n = len(space.ontology_order)
    n_lr = space.shape[2]
    accumulators = _accumulators(n)
    midline = midline_index(n_lr)
    no_exclusion = np.zeros(1, np.uint8)
    end = 0
    for start, slab in slabs:
        first = slab[names[0]]
        if first.shape[:2] != space.shape[:2] or start + first.shape[2] > n_lr:
            raise FormatError(f"{paths[names[0]]}: grid volume shape differs from the annotation's {space.shape}")
        k = first.shape[2]
        end = start + k

        def flat(name: str) -> np.ndarray:
            volume = slab[name]
            return flat_view(volume.view(np.uint8) if volume.dtype == bool else volume)

        _pass(*accumulators, start, labels(start, k, slab), n, k, space.shape[0] * space.shape[1], True, midline,
              *(flat(name) for name in PROJECTION_GRID_NAMES),
              flat("aav_exclusion_fraction") if use_exclusion else no_exclusion, use_exclusion)
    if end != n_lr:
        raise FormatError(f"{paths[names[0]]}: grid volume shape differs from the annotation's {space.shape}")
    return _direct(*accumulators, n)


class SlabLabels:
    """Compact labels of LR planes ``start : start + k`` (flat, file order) for a streamed reduction.

    ``files`` holds the annotation file to decode along with the grid volumes (empty when the labels are in
    memory or derived on the fly); calling ``labels(start, k, slabs)`` gives the slab's labels.
    """

    def __init__(self, space):
        self.space = space
        self.files: dict[str, object] = {}
        if isinstance(space, StreamedAnnotation):
            if space.path is not None:
                self.files = {ANNOTATION_KEY: space.path}
        else:
            index = space.label_index
            if not index.compact.flags.f_contiguous:
                raise ValueError("a streamed reduction needs a label index in file (Fortran) order")
            self._flat = index.flat

    def __call__(self, start: int, k: int, slabs: Mapping[str, np.ndarray]) -> np.ndarray:
        space = self.space
        if isinstance(space, StreamedAnnotation):
            return space.compact_slab(start, k, slabs.get(ANNOTATION_KEY))
        plane = space.shape[0] * space.shape[1]
        return self._flat[start * plane : (start + k) * plane]


def slab_labels(space) -> SlabLabels:
    """The :class:`SlabLabels` of a ReferenceSpace (label index in file order) or a StreamedAnnotation."""
    return SlabLabels(space)


def _direct(sums: np.ndarray, best: np.ndarray, where: np.ndarray, voxels: np.ndarray, n: int) -> DirectSums:
    # Bin 0 and n + 1 are "outside the brain" of each hemisphere; drop them.
    sums = sums.reshape(2, 4, 2, n + 1)[..., 1:]
    return DirectSums(sums, best.reshape(2, 2, n + 1)[..., 1:], where.reshape(2, 2, n + 1)[..., 1:],
                      voxels.reshape(2, n + 1)[:, 1:])
