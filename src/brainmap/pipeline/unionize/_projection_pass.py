"""The projection unionizer's one pass over the volume: every sum and maximum of both records at once.

A compiled loop visits each voxel once, in the annotation's memory order, and adds its contributions to the
injection and projection sums of its (structure, hemisphere) bin and to both records' running maxima. It reads
the ten input volumes where they lie (no gathered copies, no products as temporaries), so it costs about one
streaming pass over the inputs whatever the number of structures. :func:`projection_direct_sums` is the entry
point; ``reduction.StructureBins`` is the same reduction written with numpy (used by the ISH unionizer and, in the
tests, as the reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from brainmap.atlas.label_index import flat_view
from brainmap.atlas.reference_space import ReferenceSpace, midline_index

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


@numba.njit(nogil=True, cache=True)
def _pass(compact, n, n_outer, n_inner, lr_is_outer, midline, data_mask, sum_pixels, injection_fraction,
          injection_density, injection_energy, injection_intensities, projection_density, projection_energy,
          intensities, exclusion, use_exclusion):  # pragma: no cover - compiled
    bins = 2 * (n + 1)
    sums = np.zeros((8, bins))
    best = np.zeros((2, bins))
    where = np.full((2, bins), -1, dtype=np.int64)
    voxels = np.zeros(bins, dtype=np.int64)
    for o in range(n_outer):
        for i in range(n_inner):
            f = o * n_inner + i
            c = compact[f]
            if c == 0 or data_mask[f] == 0:  # AllenSDK: annotation[logical_not(data_mask)] = 0
                continue
            lr = o if lr_is_outer else i
            b = np.int64(c) + (n + 1 if lr >= midline else 0)
            voxels[b] += 1
            sp = np.float64(sum_pixels[f])
            fraction = np.float64(injection_fraction[f])
            density = np.float64(injection_density[f])
            sums[0, b] += sp * fraction
            sums[1, b] += sp * density
            sums[2, b] += sp * np.float64(injection_energy[f])
            sums[3, b] += np.float64(injection_intensities[f])
            if density > best[0, b]:
                best[0, b] = density
                where[0, b] = f
            # Projection: voxels in the injection or not excluded by the artefact mask (AllenSDK:
            # logical_or(injection_fraction, not exclusion > 0)).
            if use_exclusion and exclusion[f] > 0 and fraction == 0:
                continue
            projected = np.float64(projection_density[f])
            sums[4, b] += sp
            sums[5, b] += sp * projected
            sums[6, b] += sp * np.float64(projection_energy[f])
            sums[7, b] += np.float64(intensities[f])
            outside = projected * (1.0 - fraction)
            if outside > best[1, b]:
                best[1, b] = outside
                where[1, b] = f
    return sums, best, where, voxels


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
    sums, best, where, voxels = _pass(
        compact, n, n_outer, n_inner, fortran, midline_index(n_lr), flat("data_mask"), flat("sum_pixels"),
        flat("injection_fraction"), flat("injection_density"), flat("injection_energy"),
        flat("injection_sum_pixel_intensities"), flat("projection_density"), flat("projection_energy"),
        flat("sum_pixel_intensities"), flat(exclusion) if use_exclusion else np.zeros(1, np.uint8), use_exclusion,
    )
    # Bin 0 and n + 1 are "outside the brain" of each hemisphere; drop them.
    sums = sums.reshape(2, 4, 2, n + 1)[..., 1:]
    return DirectSums(sums, best.reshape(2, 2, n + 1)[..., 1:], where.reshape(2, 2, n + 1)[..., 1:],
                      voxels.reshape(2, n + 1)[:, 1:])
