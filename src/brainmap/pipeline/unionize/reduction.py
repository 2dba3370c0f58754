"""One label-indexed reduction for all structures and both hemispheres, then the roll-up through the ontology.

Structure unionization sums per-voxel quantities over every structure (with its descendants) and hemisphere.
Doing that with one mask per structure costs one pass over the volume per structure; here the cost does not
grow with the number of structures:

1. Once per grid, each selected voxel (in the brain, with data) gets a *bin*: its structure's compact preorder
   index plus ``n + 1`` if it lies in the right hemisphere (:class:`StructureBins`).
2. Each quantity is one ``np.bincount`` over the bins (direct sums per structure and hemisphere), and each
   maximum one scatter-max over the voxels with a positive value.
3. The roll-up adds every structure's descendants by prefix sums over the preorder, and takes the largest
   maximum over each subtree with the ancestor closure (a structures x structures matrix).

The projection unionizer does steps 1 and 2 in one compiled pass (``_projection_pass.py``) and shares step 3
(:func:`roll_up_sums`, :func:`roll_up_maxima`) with the ISH unionizer, which uses :class:`StructureBins`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainmap.atlas.label_index import flat_view
from brainmap.atlas.reference_space import ReferenceSpace, midline_index


def _layout(template: np.ndarray) -> str:
    return "F" if (template.flags.f_contiguous and not template.flags.c_contiguous) else "C"


@dataclass
class MaxVoxels:
    """Per structure and hemisphere (3, n): the largest value and the flat index of its voxel (-1 if none)."""

    value: np.ndarray
    flat_index: np.ndarray


class StructureBins:
    """The selected voxels of a grid, binned by structure (preorder position) and hemisphere.

    Parameters
    ----------
    space : ReferenceSpace
        The annotation on the same grid as the volumes to reduce (same shape).
    selected : bool array shaped like the annotation, optional
        Voxels to count (e.g. ``data_mask > 0``); voxels outside the brain (label 0) never count.
    """

    def __init__(self, space: ReferenceSpace, selected: np.ndarray | None = None):
        index = space.label_index
        self.space = space
        self.n = len(index.order)
        self.shape = space.shape
        self.order = _layout(index.compact)
        compact = index.flat
        keep = compact != 0
        if selected is not None:
            if selected.shape != self.shape:
                raise ValueError(f"selection shape {selected.shape} differs from the annotation's {self.shape}")
            keep &= flat_view(self.like_annotation(selected)).astype(bool, copy=False)
        self.keep = keep
        right = np.zeros(self.shape, dtype=bool, order=self.order)
        right[:, :, midline_index(self.shape[2]) :] = True
        bins = compact[keep].astype(np.intp)
        bins[flat_view(right)[keep]] += self.n + 1
        self.bins = bins

    def like_annotation(self, volume: np.ndarray) -> np.ndarray:
        """``volume`` in the annotation's memory order, so flat views line up voxel for voxel."""
        volume = np.asarray(volume)
        if volume.shape != self.shape:
            raise ValueError(f"volume shape {volume.shape} differs from the annotation's {self.shape}")
        return np.asfortranarray(volume) if self.order == "F" else np.ascontiguousarray(volume)

    def gather(self, volume: np.ndarray, dtype=np.float64) -> np.ndarray:
        """The values of ``volume`` at the selected voxels, in bin order (float64 by default)."""
        return flat_view(self.like_annotation(volume))[self.keep].astype(dtype, copy=False)

    # --------------------------------------------------------------- sums
    def sums(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Direct sums (2, n) per hemisphere (left, right) and structure; voxel counts without weights."""
        total = np.bincount(self.bins, weights=weights, minlength=2 * (self.n + 1))
        return total.reshape(2, self.n + 1)[:, 1:]

    def roll_up(self, direct: np.ndarray) -> np.ndarray:
        """(2, n) direct sums -> (3, n) sums with descendants for hemispheres 1, 2 and 3 (both)."""
        return roll_up_sums(self.space, direct)

    # --------------------------------------------------------------- maxima
    def selected_flat_positions(self) -> np.ndarray:
        """Flat (memory-order) index of every selected voxel, in bin order."""
        return np.flatnonzero(self.keep)

    def max_voxels(self, values: np.ndarray) -> MaxVoxels:
        """Largest positive ``values`` (gathered, bin order) per structure and hemisphere, rolled up.

        Zero ``values`` where a voxel must not count. Ties keep the first voxel in memory order. A structure
        with no positive value gets 0 and index -1.
        """
        n = self.n
        best = np.zeros(2 * (n + 1))
        np.maximum.at(best, self.bins, values)
        hits = np.flatnonzero((values > 0) & (values == best[self.bins]))
        first_bins, first = np.unique(self.bins[hits], return_index=True)
        flat = np.full(2 * (n + 1), -1, dtype=np.int64)
        flat[first_bins] = self.selected_flat_positions()[hits[first]]
        return roll_up_maxima(self.space, best.reshape(2, n + 1)[:, 1:], flat.reshape(2, n + 1)[:, 1:])

    def voxel_coordinates_um(self, flat_index: np.ndarray, spacing_um: np.ndarray) -> np.ndarray:
        """(..., 3) voxel index x spacing in um (AP, DV, LR) of flat indices; 0 where the index is -1."""
        return voxel_coordinates_um(self.space, flat_index, spacing_um)


def roll_up_sums(space: ReferenceSpace, direct: np.ndarray) -> np.ndarray:
    """(..., 2, n) direct sums per hemisphere (left, right) and preorder structure -> (..., 3, n) sums with
    descendants for hemispheres 1, 2 and 3 (both).

    A product with the ancestor closure, not prefix sums over the preorder: a structure whose descendants all
    contribute exactly 0 sums to exactly 0 (AllenSDK adds records one by one; a prefix-sum difference would leave
    a floating-point residue and keep a row AllenSDK leaves out).
    """
    direct = np.asarray(direct, dtype=np.float64)
    closure = space.ontology_order.ancestor_closure().astype(np.float64)
    rolled = np.einsum("ad,...d->...a", closure, direct)
    return np.concatenate([rolled, rolled.sum(axis=-2, keepdims=True)], axis=-2)


def roll_up_allen_maxima(
    space: ReferenceSpace, direct_value: np.ndarray, direct_flat: np.ndarray, present: np.ndarray
) -> MaxVoxels:
    """Max voxels rolled up the ontology and across hemispheres in AllenSDK's ``TissuecyteUnionizer`` order.

    Parameters
    ----------
    direct_value, direct_flat : (2 hemispheres, n preorder structures)
        Each direct record's max voxel density and the flat index of its voxel; 0 and -1 where the record has
        none (AllenSDK sets a max voxel only when the record's ``sum_projection_pixels`` is > 0).
    present : (2, n) bool
        Which structures have directly annotated voxels (with data) in each hemisphere: AllenSDK's records.

    Notes
    -----
    AllenSDK starts an ancestor from its own direct record and then visits its descendants' direct records in
    ascending signed label order (left labels are negated), taking a record's max voxel when
    ``ancestor.max <= record.max``: the result is the largest value, held by the last record in that order.
    The bilateral record takes the hemisphere met first in AllenSDK's record order, then the other one under the
    same ``<=`` rule (see :func:`_left_first`).
    """
    n = direct_value.shape[1]
    closure = space.ontology_order.ancestor_closure()  # [a, d]: d in the subtree of a
    ids = space.ontology_order.ids.astype(np.float64)
    value = np.zeros((3, n))
    flat_index = np.full((3, n), -1, dtype=np.int64)
    own = np.eye(n, dtype=bool)
    for h, sign in ((0, -1.0), (1, 1.0)):
        candidate = closure & present[h][None, :]
        values = np.where(candidate, direct_value[h][None, :], -np.inf)
        best = values.max(axis=1)
        # Among the records holding the largest value, the last visited: the own record is visited first.
        rank = np.where(candidate & (values == best[:, None]), sign * ids[None, :], -np.inf)
        rank[own & candidate & (values == best[:, None])] = -np.inf
        tied_own_only = np.isneginf(rank).all(axis=1)
        pick = np.where(tied_own_only, np.arange(n), rank.argmax(axis=1))
        has = np.isfinite(best)
        value[h] = np.where(has, best, 0.0)
        flat_index[h] = np.where(has, direct_flat[h][pick], -1)
    left_first = _left_first(space, present)
    first = np.where(left_first, 0, 1)
    second = 1 - first
    columns = np.arange(n)
    second_wins = value[first, columns] <= value[second, columns]
    chosen = np.where(second_wins, second, first)
    value[2] = value[chosen, columns]
    flat_index[2] = flat_index[chosen, columns]
    none = value <= 0
    value[none], flat_index[none] = 0.0, -1
    return MaxVoxels(value, flat_index)


def _left_first(space: ReferenceSpace, present: np.ndarray) -> np.ndarray:
    """Whether AllenSDK meets a structure's left record before its right one (per preorder structure).

    Its records are keyed by signed label: first the directly annotated ones in ascending order (all left ones
    before all right ones), then ancestors as they are created while propagating left descendants before right
    ones. So the left record comes first when the structure is annotated directly on the left, or, annotated
    directly on neither side, when it has a directly annotated left descendant.
    """
    closure = space.ontology_order.ancestor_closure()
    left_below = (closure & present[0][None, :]).any(axis=1)
    return present[0] | (~present[1] & left_below)


def roll_up_maxima(space: ReferenceSpace, direct_value: np.ndarray, direct_flat: np.ndarray) -> MaxVoxels:
    """Direct maxima (2 hemispheres, n preorder structures) -> each structure's largest over its subtree.

    ``direct_flat`` holds the flat index of each maximum's voxel (-1 if none). Hemisphere 3 (both) takes the
    larger of left and right (left on ties). Values <= 0 mean "no voxel": 0 and index -1.
    """
    n = direct_value.shape[1]
    closure = space.ontology_order.ancestor_closure()  # structures x structures: is column in row's subtree
    value = np.empty((3, n))
    flat_index = np.empty((3, n), dtype=np.int64)
    for h in range(2):
        candidates = np.where(closure, direct_value[h][None, :], -1.0)
        pick = candidates.argmax(axis=1)
        value[h] = candidates[np.arange(n), pick]
        flat_index[h] = direct_flat[h][pick]
    both_right = value[1] > value[0]
    value[2] = np.where(both_right, value[1], value[0])
    flat_index[2] = np.where(both_right, flat_index[1], flat_index[0])
    none = value <= 0
    value[none], flat_index[none] = 0.0, -1
    return MaxVoxels(value, flat_index)


def voxel_coordinates_um(space: ReferenceSpace, flat_index: np.ndarray, spacing_um) -> np.ndarray:
    """(..., 3) voxel index x spacing in um (AP, DV, LR) of flat indices in the annotation's memory order; 0 where
    the index is -1."""
    flat = np.asarray(flat_index)
    # A streamed annotation (no label index in memory) is in file (Fortran) order.
    order = getattr(space, "memory_order", None) or _layout(space.label_index.compact)
    ijk = np.stack(np.unravel_index(np.maximum(flat, 0), space.shape, order=order), axis=-1)
    coords = ijk * np.asarray(spacing_um)
    coords[flat < 0] = 0
    return coords
