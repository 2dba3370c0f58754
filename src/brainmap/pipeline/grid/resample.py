"""Shared gridding pieces: the reference grid, the pixel -> reference affine, block sums and slab splatting.

Conventions (``docs/architecture.md``): volumes are indexed (AP, DV, LR); microns in that order; voxel ``i`` of
a grid covers ``[origin + i * res, origin + (i + 1) * res)``, ``origin`` being the corner of voxel 0
(:attr:`GridSpec.origin_um`). The connectivity grids (10-100 um, the CCF annotation's) have ``origin = 0``: voxel
``i`` covers ``[i res, (i + 1) res)``. Allen's 200 um ISH grid is *centred*: voxel ``i`` is centred at ``200 i``
um and covers ``[200 i - 100, 200 i + 100)`` (``origin = -100``), the sampling of its grid annotation
(``annotation_25[::8, ::8, ::8]``, :mod:`brainmap.atlas.expression_grid`) and the one Allen's real coverage masks
match (``tests/pipeline/test_grid.py``). Images are ``(rows, cols)``; pixel ``(x, y)`` = ``(col, row)`` covers
``[x, x + 1) x [y, y + 1)``.

**Pixel -> reference.** For one section image the map is affine (``tvr`` of ``tsv``, with ``sz =
section_number x section_thickness_um``), so a ``(3, 2)`` matrix and an offset give every pixel's reference
position (:func:`section_affine`); no per-pixel transform is ever evaluated.

**Blocks.** Per-pixel quantities are first summed over square blocks of pixels (:func:`block_sums`, strided
additions: about one pass), and each block is placed at the centroid of its pixels. Blocks are smaller than a
voxel (default half a voxel) and a block that straddles a voxel boundary is shared by area between the two
(its footprint, taken axis-aligned), so blocks that do not tile the voxels evenly leave no moire in the sums.
A pixel coarser than half a voxel is a block of its own, and its footprint is shared by area over every voxel it
overlaps (50 um pixels on the 25 um grid: two or three per axis): every voxel under the imaged area gets data.

**Slab splatting (connectivity).** A section stands for a slab of the specimen ``sz +- slab / 2`` (``slab`` =
the sampling interval, e.g. 100 um: consecutive sections tile the specimen). A block's slab is the segment
``p + t e``, ``|t| <= slab / 2``, with ``e = tvr[:, 2]`` the cutting direction in the reference. Along the
reference axis closest to ``e`` the segment crosses voxel planes; each voxel gets the length of the segment
inside its plane, over the grid spacing (the lateral drift of a tilted cut is followed per plane). A pixel's
weights therefore add up to ``slab / res``, and a voxel inside the imaged tissue receives ``(res / pixel)^2``
pixels: the unionizer's volume ``sum_pixels x pixel^2 x res`` is the voxel's volume, and grids finer than the
sections (25 um from 100 um sections) have no empty planes.

A section's contribution is a :class:`PartialGrid`: the flat indices (Fortran order, AP fastest, as Allen's
raw files) of the voxels it touched and the sums there -- small, and summed over sections by a
:class:`GridAccumulator` (a map over sections and a reduction).
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import DTypeLike

from brainmap.atlas.expression_grid import (EXPRESSION_GRID_ORIGIN_UM, EXPRESSION_GRID_RESOLUTION_UM,
                                             EXPRESSION_GRID_SHAPE)
from brainmap.pipeline.grid._scatter import add_masked, add_unique
from brainmap.pipeline.grid._splat import coronal_pieces, drifts_out_of_columns, footprint_column_sums
from brainmap.specimen.model import SectionDataSet, SectionImage

__all__ = [
    "ALLEN_ORIGINS_UM",
    "ALLEN_SHAPES",
    "GridAccumulator",
    "GridSpec",
    "PartialGrid",
    "block_centres",
    "block_sums",
    "reduce_partial",
    "section_affine",
    "splat_slab",
]

#: Allen's grid shapes (AP, DV, LR) per resolution (um): the CCF annotation volumes.
ALLEN_SHAPES: dict[int, tuple[int, int, int]] = {
    10: (1320, 800, 1140),
    25: (528, 320, 456),
    50: (264, 160, 228),
    100: (132, 80, 114),
    # Allen's ISH expression grid (one voxel more per axis than 13200 x 8000 x 11400 um)
    EXPRESSION_GRID_RESOLUTION_UM: EXPRESSION_GRID_SHAPE,
}
#: The corner of voxel 0 (um, each axis) of Allen's grids where it is not 0: the 200 um ISH grid's voxel ``i`` is
#: centred at ``200 i`` um (covers ``[200 i - 100, 200 i + 100)``), as its annotation ``annotation_25[::8]``.
ALLEN_ORIGINS_UM: dict[int, float] = {EXPRESSION_GRID_RESOLUTION_UM: EXPRESSION_GRID_ORIGIN_UM}


@dataclass(frozen=True)
class GridSpec:
    """A regular reference grid: voxel ``(i, j, k)`` covers ``origin + [i, i + 1) * res`` along (AP, DV, LR).

    Attributes:
        resolution_um: voxel side (um).
        shape: (AP, DV, LR) voxels.
        origin_um: the corner of voxel 0 (um, AP, DV, LR): 0 for the connectivity grids, -100 for Allen's 200 um
            ISH grid (voxel ``i`` centred at ``200 i`` um; :meth:`allen`).
    """

    resolution_um: float
    shape: tuple[int, int, int]
    origin_um: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.resolution_um) and self.resolution_um > 0):
            raise ValueError(f"GridSpec.resolution_um must be positive, got {self.resolution_um!r}")
        if len(self.shape) != 3 or any(int(n) < 1 for n in self.shape):
            raise ValueError(f"GridSpec.shape must be three positive sizes, got {self.shape!r}")
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "origin_um", tuple(float(v) for v in self.origin_um))

    @classmethod
    def allen(cls, resolution_um: int) -> GridSpec:
        """Allen's grid at 10, 25, 50 or 100 um (the CCF annotation's shape, voxel ``i`` covering ``[i res,
        (i + 1) res)``) or 200 um (the ISH grid, 67 x 41 x 58, voxel ``i`` centred at ``200 i``: origin -100 um)."""
        res = int(round(resolution_um))
        if res not in ALLEN_SHAPES:
            raise ValueError(f"no Allen grid at {resolution_um} um; choose one of {sorted(ALLEN_SHAPES)}")
        return cls(float(res), ALLEN_SHAPES[res], (ALLEN_ORIGINS_UM.get(res, 0.0),) * 3)

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    @property
    def resolution_label(self) -> str:
        """The resolution as written in file names (``100`` for 100 um)."""
        res = self.resolution_um
        return str(int(round(res))) if abs(res - round(res)) < 1e-9 else f"{res:g}"

    @property
    def first_centre_um(self) -> tuple[float, float, float]:
        """The centre of voxel 0 (um, AP, DV, LR): ``origin + res / 2`` (0 for Allen's ISH grid), what a
        MetaImage ``Offset`` holds."""
        return tuple(float(v) + 0.5 * self.resolution_um for v in self.origin_um)  # type: ignore[return-value]

    def voxel_centres_um(self) -> np.ndarray:
        """``(n_voxels, 3)`` centres (um, AP, DV, LR) in Fortran order (AP fastest), as :meth:`flat_index`."""
        axes = [self.origin_um[a] + (np.arange(n) + 0.5) * self.resolution_um for a, n in enumerate(self.shape)]
        grids = np.meshgrid(*axes, indexing="ij")
        return np.stack([g.ravel(order="F") for g in grids], axis=1)

    def flat_index(self, ijk: np.ndarray) -> np.ndarray:
        """Flat Fortran-order indices of ``(..., 3)`` voxel indices: ``i + n_ap * (j + n_dv * k)``."""
        ijk = np.asarray(ijk, dtype=np.int64)
        return ijk[..., 0] + self.shape[0] * (ijk[..., 1] + self.shape[1] * ijk[..., 2])

    def volume(self, flat_values: np.ndarray, dtype=None) -> np.ndarray:
        """A flat Fortran-order vector -> the ``(AP, DV, LR)`` volume (Fortran memory order, like the CCF)."""
        out = np.asarray(flat_values).reshape(self.shape, order="F")
        return out if dtype is None else out.astype(dtype, order="F", copy=False)


# -- geometry ---------------------------------------------------------------------------------------------------
def section_affine(dataset: SectionDataSet, image: SectionImage) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix (3, 2), offset (3,))`` with ``reference_um = matrix @ (x, y) + offset`` for pixel ``(x, y)`` of
    ``image`` (``tvr`` of ``(tsv(x, y), section_number x section_thickness_um)``). Needs both alignments."""
    if image.alignment2d is None:
        raise ValueError(f"SectionImage {image.id} (section {image.section_number}) has no Alignment2d")
    if dataset.alignment3d is None:
        raise ValueError(f"SectionDataSet {dataset.id} has no Alignment3d")
    tsv = image.alignment2d.tsv
    tvr = dataset.alignment3d.tvr
    sz = dataset.section_position_um(image.section_number)
    matrix = tvr.matrix[:, :2] @ tsv.matrix
    offset = tvr.matrix[:, :2] @ tsv.translation + tvr.matrix[:, 2] * sz + tvr.translation
    return matrix, offset


# -- blocks ----------------------------------------------------------------------------------------------------
def block_sums(image: np.ndarray, block: int, dtype=None) -> np.ndarray:
    """Sums of ``image`` over ``block`` x ``block`` pixel blocks -> ``(ceil(rows / block), ceil(cols / block))``
    (the last row/column of blocks may be partial). Strided additions: about one pass over the image.

    ``dtype`` of the sums: default float32 while they stay exact (below 2**24), else float64."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.view(np.uint8)
    if dtype is None:
        top = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else float("inf")
        dtype = np.float32 if top * block * block < 2**24 else np.float64
    if block <= 1:
        return image.astype(dtype)
    rows, cols = image.shape
    nby, nbx = -(-rows // block), -(-cols // block)
    by_rows = np.zeros((nby, cols), dtype=dtype)
    for i in range(block):
        part = image[i::block]
        by_rows[: part.shape[0]] += part
    out = np.zeros((nby, nbx), dtype=dtype)
    for j in range(block):
        part = by_rows[:, j::block]
        out[:, : part.shape[1]] += part
    return out


def block_centres(shape: tuple[int, int], block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, pixel count)`` of every block (``(nby, nbx)`` arrays): the centroid (pixels, ``x`` = column)
    of the block's pixels and their number."""
    rows, cols = shape
    starts_y = np.arange(0, rows, block)
    starts_x = np.arange(0, cols, block)
    ends_y = np.minimum(starts_y + block, rows)
    ends_x = np.minimum(starts_x + block, cols)
    cy, cx = (starts_y + ends_y) / 2.0, (starts_x + ends_x) / 2.0
    y, x = np.meshgrid(cy, cx, indexing="ij")
    count = np.outer(ends_y - starts_y, ends_x - starts_x).astype(np.float64)
    return x, y, count


# -- partial grids ---------------------------------------------------------------------------------------------
@dataclass
class PartialGrid:
    """One section's contribution to a grid: sums at the voxels it touched.

    Attributes:
        spec: the grid.
        index: int64 flat voxel indices (Fortran order); an index may repeat (its values add up).
        values: quantity name -> float64 sums, aligned with ``index``.
    """

    spec: GridSpec
    index: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(self.index.nbytes + sum(v.nbytes for v in self.values.values()))


def _footprint_shares(f: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split a square footprint of half-side ``half`` (voxels, <= 0.5) centred at ``f`` (voxel units) along one
    axis: ``(main index, main share, other index, other share)``, the other being the neighbour it spills
    into (share 0 if it spills into none)."""
    main = np.floor(f)
    frac = f - main
    main = main.astype(np.int64)
    if half <= 0:
        return main, np.ones_like(f), main, np.zeros_like(f)
    below = np.clip(half - frac, 0.0, None)
    above = np.clip(frac + half - 1.0, 0.0, None)
    other = np.where(above > 0, main + 1, main - 1)
    share = (below + above) / (2.0 * half)
    return main, 1.0 - share, other, share


def _footprint_taps(f: np.ndarray, half: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split a square footprint of half-side ``half`` (voxels, any size) centred at ``f`` (voxel units) along one
    axis: ``(indices, shares)``, one array of each per voxel the footprint may overlap, shares by overlap length.

    Up to half a voxel this is :func:`_footprint_shares` (the voxel and the neighbour it spills into, the same
    bits); a wider footprint (a pixel coarser than the grid, e.g. 50 um pixels on the 25 um grid) overlaps
    ``ceil(2 half) + 1`` voxels at most, each getting its share: every voxel under the pixel receives data, so the
    data mask has no holes between the pixels' centres and no pixel is lost with the voxels it barely touches.
    """
    if half <= 0.5:
        main, share, other, spill = _footprint_shares(f, half)
        return [main, other], [share, spill]
    lo, hi = f - half, f + half
    first = np.floor(lo)
    indices, shares = [], []
    for j in range(int(math.ceil(2 * half)) + 1):
        voxel = first + j
        indices.append(voxel.astype(np.int64))
        shares.append(np.clip(np.minimum(hi, voxel + 1) - np.maximum(lo, voxel), 0.0, None) / (2 * half))
    return indices, shares


def _footprint_pairs(f1: np.ndarray, f2: np.ndarray, half: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A square footprint of half-side ``half`` (voxels) at each ``(f1, f2)`` (voxel units) split over the voxels
    it overlaps (:func:`_footprint_taps` along each axis): ``(index 1, index 2, share, copies)``, each of
    ``copies`` blocks of entries one pair of taps, the first axis fastest."""
    (i1, h1), (i2, h2) = _footprint_taps(f1, half), _footprint_taps(f2, half)
    l1 = np.concatenate([a for _ in i2 for a in i1])
    l2 = np.concatenate([b for b in i2 for _ in i1])
    share = np.concatenate([a * b for b in h2 for a in h1])
    return l1, l2, share, len(i1) * len(i2)


def splat_slab(points_um: np.ndarray, quantities: Mapping[str, np.ndarray], direction: np.ndarray,
               slab_um: float, spec: GridSpec, *, weight: str, footprint_um: float = 0.0,
               plane: tuple[np.ndarray, np.ndarray] | None = None) -> PartialGrid:
    """Spread point quantities over a slab into grid voxels (module docstring).

    Parameters
    ----------
    points_um : (n, 3)
        Reference positions (um, AP, DV, LR) of the points (block centroids) on the section's plane.
    quantities : name -> (n,) arrays
        What each point carries (pixel counts, intensity sums, ...).
    direction : (3,)
        Reference displacement (um) per um along the cutting axis (``tvr[:, 2]``).
    slab_um : float
        The slab's thickness along the cutting axis (specimen um), centred on the plane.
    spec : GridSpec
    weight : str
        The quantity that weighs the points' positions (the number of pixels they stand for); points where it
        is 0 are left out.
    footprint_um : float
        Side (um) of the square each point stands for (a block of pixels): a point near a voxel boundary is
        shared between the voxels by the areas on each side, so blocks that do not tile voxels evenly leave no
        moire in the sums. 0: points.
    plane : (normal (3,), a point (3,)), optional
        The section's plane in the reference (um). Given, a column's position is where the plane crosses the
        middle of the column; otherwise it is the weighted mean of its points (three more sums).

    Returns
    -------
    PartialGrid whose sums over all voxels equal the quantities' totals times ``slab_um / res`` (less what falls
    outside the grid).

    Method: the points are first summed per *column* -- the grid voxel line along the reference axis closest
    to the cut (``axis``) that holds them on the section's plane -- with their footprints shared between
    neighbouring columns by area; each column is then spread over the voxel planes its slab crosses along
    ``axis`` (exact overlap lengths), with the lateral drift of a tilted cut taken at the middle of each piece.
    The points of one column lie within ``res x tan(tilt)`` of each other along ``axis`` (< 0.1 voxel for a 5
    degree tilt), which is all a column's single position gives away. Cost: one ``bincount`` per quantity over
    the points (four entries each with a footprint, more for a pixel coarser than half a voxel), then work per
    column. The result holds each voxel once, ascending: :func:`reduce_partial` of the pieces taken plane by
    plane (the same bits), made without sorting where no piece drifts out of its column and the cut runs along AP
    (the demo's).
    """
    points = np.asarray(points_um, dtype=np.float64)
    e = np.asarray(direction, dtype=np.float64)
    res = spec.resolution_um
    shape = spec.shape
    axis = int(np.argmax(np.abs(e)))
    o1, o2 = [a for a in range(3) if a != axis]
    empty = PartialGrid(spec, np.zeros(0, np.int64), {name: np.zeros(0) for name in quantities})
    w_point = np.asarray(quantities[weight], dtype=np.float64).ravel()
    origin = np.asarray(spec.origin_um)
    half = 0.5 * footprint_um / res
    f1, f2 = (points[:, o1] - origin[o1]) / res, (points[:, o2] - origin[o2]) / res
    if points.shape[0] == 0:
        return empty
    m1, m2 = np.floor(f1).astype(np.int64), np.floor(f2).astype(np.int64)
    # -- columns: sums (and, without the plane, weighted mean positions) per lateral voxel, over a window of
    # columns from the main indices (a footprint reaches ceil(half) voxels further, at least one), clipped
    reach = max(1, int(math.ceil(half)))
    l1_lo, l2_lo = max(int(m1.min()) - reach, 0), max(int(m2.min()) - reach, 0)
    n1 = min(int(m1.max()) + reach, shape[o1] - 1) - l1_lo + 1
    n2 = min(int(m2.max()) + reach, shape[o2] - 1) - l2_lo + 1
    normal = None if plane is None else np.asarray(plane[0], dtype=np.float64)
    by_plane = normal is not None and abs(normal[axis]) > 1e-9
    names = list(quantities)
    table = [np.asarray(quantities[name], dtype=np.float64).ravel() for name in names]
    if not by_plane:
        scaled = (points - origin) / res  # voxel units
        table += [w_point * scaled[:, axis], w_point * scaled[:, o1], w_point * scaled[:, o2]]
    # In one compiled pass (_splat.footprint_column_sums, round 7; the same additions in the same order) what
    # was, in numpy:
    #   l1, l2, share, copies = _footprint_pairs(f1, f2, half)      (m1, m2, ones, 1 without a footprint)
    #   w0 = np.tile(w_point, copies) * share
    #   ok = (w0 > 0) & (l1 >= 0) & (l1 < shape[o1]) & (l2 >= 0) & (l2 < shape[o2])
    #   key = np.where(ok, (l1 - l1_lo) + n1 * (l2 - l2_lo), 0); share, w0 = (np.where(ok, a, 0.0) for a in ...)
    #   count = np.bincount(key, weights=w0, minlength=n1 * n2)
    #   each quantity's np.bincount(key, weights=np.tile(values, copies) * share, minlength=n1 * n2)
    if n1 <= 0 or n2 <= 0:
        return empty
    count, column_table, kept = footprint_column_sums(f1, f2, half, w_point, np.stack(table, axis=1),
                                                      (l1_lo, l2_lo), (n1, n2), (shape[o1], shape[o2]))
    if not kept:
        return empty
    columns = np.flatnonzero(count > 0)
    count = count[columns]
    summed = column_table[columns].T.copy()
    sums = dict(zip(names, summed))
    c1 = columns % n1 + l1_lo
    c2 = columns // n1 + l2_lo
    if by_plane:
        p1, p2 = c1 + 0.5, c2 + 0.5
        through = (np.asarray(plane[1], dtype=np.float64) - origin) / res
        u = (normal @ through - normal[o1] * p1 - normal[o2] * p2) / normal[axis]
    else:
        u, p1, p2 = (summed[len(names) + a] / count for a in range(3))
        summed = summed[: len(names)]
    # -- along the cut: exact overlaps with the voxel planes, lateral drift at each piece's middle
    total_weight = slab_um / res
    half = 0.5 * slab_um * abs(e[axis]) / res
    drift = max(abs(e[o1]), abs(e[o2])) * 0.5 * slab_um / res
    lo, hi = u - half, u + half
    first = np.floor(lo)
    planes = int(math.ceil(2 * half)) + 1 if half > 0 else 1
    strides = (1, shape[0], shape[0] * shape[1])  # of spec.flat_index
    if axis == 0 and not drifts_out_of_columns(drift, lo, hi, u, first, planes, half > 0, p1, p2,
                                                e[o1] / e[axis], e[o2] / e[axis], c1, c2):
        # A coronal cut whose pieces stay in their columns: columns ascend by (LR, DV) (their key) and AP is the
        # flat index's fastest axis, so the pieces column by column, planes in order, are each voxel once,
        # ascending -- reduce_partial's output, with no sorting (docs/performance-demo.md, round 5); made in one
        # compiled pass (_splat.coronal_pieces: the numpy expressions below, fused; round 6).
        flat, values = coronal_pieces(lo, hi, first, planes, half > 0,
                                      total_weight / (2 * half) if half > 0 else 0.0, total_weight, shape[axis],
                                      c1 * strides[o1] + c2 * strides[o2], summed)
        if flat.size == 0:
            return empty
        return PartialGrid(spec, flat, dict(zip(names, values)))
    # every (plane, column) piece at once: (planes, columns) arrays
    k = first + np.arange(planes, dtype=np.float64)[:, None]
    if half > 0:
        seg_lo, seg_hi = np.maximum(lo, k), np.minimum(hi, k + 1)
        w = np.maximum(seg_hi - seg_lo, 0.0) * (total_weight / (2 * half))
        t = (seg_lo + seg_hi) * 0.5 - u  # along ``axis``, voxels, from the plane
    else:
        w, t = np.full(k.shape, total_weight), np.zeros(k.shape)
    if drift > 1e-3:
        i1 = np.floor(p1 + t * (e[o1] / e[axis])).astype(np.int64)
        i2 = np.floor(p2 + t * (e[o2] / e[axis])).astype(np.int64)
        if np.array_equal(i1, np.broadcast_to(c1, i1.shape)) and np.array_equal(i2, np.broadcast_to(c2, i2.shape)):
            i1, i2 = c1, c2  # a drift too small to leave the column (the demo's: under half a voxel)
    else:
        i1, i2 = c1, c2
    ik = k.astype(np.int64)
    # the pieces inside the grid, and their flat (Fortran-order) indices from the 1-D voxel indices: the
    # values of spec.flat_index without an (n, 3) array (a quarter of the demo's gridding time, measured)
    good = ((w > 0) & (ik >= 0) & (ik < shape[axis]) & (i1 >= 0) & (i1 < shape[o1]) & (i2 >= 0)
            & (i2 < shape[o2]))
    cell = np.flatnonzero(good)  # plane by plane
    if cell.size == 0:
        return empty
    src = cell % good.shape[1]
    i1, i2 = (i.ravel()[cell] if i.ndim == 2 else i[src] for i in (i1, i2))
    flat = ik.ravel()[cell] * strides[axis] + i1 * strides[o1] + i2 * strides[o2]
    wts = w.ravel()[cell]
    # Summed per voxel here, each quantity's values made in the voxels' order: reduce_partial's sums of the
    # pieces in this order (wts * sums[src]) without making them first (docs/performance-demo.md, round 5)
    unique, order, compact = _voxel_map(flat, shape[0])
    if order is not None:  # each voxel once: a permutation
        wts, src = wts[order], src[order]
        return PartialGrid(spec, unique, {name: wts * q[src] for name, q in sums.items()})
    return PartialGrid(spec, unique, {name: np.bincount(compact, weights=wts * q[src], minlength=unique.size)
                                      for name, q in sums.items()})


def _voxel_map(index: np.ndarray, n_ap: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Where a partial's entries go once summed per voxel: ``(unique, order, compact)``.

    ``unique``: the voxels (flat indices, ascending). ``order`` (when each voxel has one entry, else None): the
    entries in that order, ``unique == index[order]``. ``compact`` (otherwise): each entry's position in
    ``unique``. The voxels are counted over the smallest window holding the partial: its range of flat indices
    (a sagittal section: a few LR planes) or of AP planes (a coronal one: local index ``(ap - ap0) + n_ap_window x
    (dv + n_dv x lr)``, in the same order as the flat index), else (a window more than 16 x the entries, e.g. a
    horizontal section) ``np.unique``.
    """
    lo, hi = int(index.min()), int(index.max()) + 1
    ap = index % n_ap
    rest = index // n_ap
    a0, a1 = int(ap.min()), int(ap.max()) + 1
    rest0, rest1 = int(rest.min()), int(rest.max()) + 1
    by_range, by_planes = hi - lo, (a1 - a0) * (rest1 - rest0)
    if min(by_range, by_planes) > 16 * index.size + (1 << 16):
        unique, inverse = np.unique(index, return_inverse=True)
        if unique.size == index.size:
            return unique, np.argsort(index, kind="stable"), None
        return unique, None, inverse.ravel()
    if by_range <= by_planes:
        local, size = index - lo, by_range
    else:
        local, size = (ap - a0) + (a1 - a0) * (rest - rest0), by_planes
    seen = np.bincount(local, minlength=size) > 0
    touched = np.flatnonzero(seen)
    if by_range <= by_planes:
        unique = touched + lo
    else:  # ascending: the local index orders voxels as the flat index does
        unique = (touched % (a1 - a0) + a0) + n_ap * (touched // (a1 - a0) + rest0)
    position = (np.cumsum(seen) - 1)[local]
    if unique.size < index.size:
        return unique, None, position
    order = np.empty(index.size, dtype=np.intp)
    order[position] = np.arange(index.size)
    return unique, order, None


def reduce_partial(partial: PartialGrid) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A partial's sums per voxel: (flat indices, each voxel once, ascending; name -> float64 sums).

    Each voxel's entries are added in the partial's order, from 0.0 (``np.bincount``); a partial whose index is
    already ascending with each voxel once (:func:`splat_slab`'s) is returned as it is, and one whose voxels each
    have one entry is put in order (the sums of a single entry, but for a -0.0 that a bincount would make 0.0:
    an accumulator adds them to the same bits). Summing a section's entries per voxel first and adding those
    sums to the grid replaces ``np.add.at`` over the whole volume (a third of the demo's 25 um grid stage) and
    changes the order of additions: a grid may differ from the old one in the last bits.
    """
    index = np.asarray(partial.index, dtype=np.int64)
    names = list(partial.values)
    values = [np.asarray(partial.values[name], dtype=np.float64) for name in names]
    if index.size < 2 or bool(np.all(index[1:] > index[:-1])):
        return index, dict(zip(names, values))
    unique, order, compact = _voxel_map(index, partial.spec.shape[0])
    if order is not None:
        return unique, {name: v[order] for name, v in zip(names, values)}
    return unique, {name: np.bincount(compact, weights=v, minlength=unique.size) for name, v in zip(names, values)}


#: Dense volumes from this many bytes are mapped with their pages at once (:func:`zeroed`).
POPULATE_BYTES = 1 << 26


def zeroed(n: int, dtype: DTypeLike = np.float64) -> np.ndarray:
    """A vector of ``n`` zeros (float64, or ``dtype``), its pages mapped at once when it is large (a 25 um float64
    volume: 616 MB).

    ``np.zeros`` maps the memory lazily and asks for transparent huge pages: the accumulator's first adds into a
    new dense volume (scattered over every column of the grid) then fault each 2 MB page in, and where the
    machine's memory is fragmented the kernel compacts memory to make each one -- measured in the demo's main
    process, 1.0-1.3 s of CPU per 25 um volume (six per demo), 0.05 s when free huge pages were at hand. An
    anonymous ``mmap`` with ``MAP_POPULATE`` (Linux) maps zeroed 4 KiB pages in one call: 0.17-0.19 s, whatever
    the fragmentation (docs/performance-demo.md, round 6). Elsewhere, or for small vectors, ``np.zeros``."""
    dtype = np.dtype(dtype)
    nbytes = int(n) * dtype.itemsize
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is None or nbytes < POPULATE_BYTES:
        return np.zeros(n, dtype=dtype)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(memory, dtype=dtype)  # the array holds the mapping; unmapped with it


class GridAccumulator:
    """Sums :class:`PartialGrid` s, each quantity sparse (its non-zero entries) until it touches many voxels.

    A quantity is kept as the list of the non-zero ``(index, value)`` entries it received, in order; once they
    take more memory than ``dense_fraction`` of a dense float64 volume, it becomes a dense flat vector
    (``sums``), the entries added in the same order. Detected signal and the injection site stay sparse; the
    coverage and tissue pixels of a data set that spans the grid go dense. Each partial is first summed per voxel
    (:func:`reduce_partial`); both give the same bits as adding those sums, partial after partial, into a dense
    vector: the same additions in the same order (an exact 0 added changes nothing).
    At 25 um a dense quantity is 0.6 GB, 9.6 GB at 10 um.

    ``add`` one partial at a time, ``merge`` another accumulator (a tree reduction); read a quantity whole with
    :meth:`get` or a range of flat indices with :meth:`get_range` (:func:`~brainmap.pipeline.grid.projection.
    write_projection_grids_streamed` writes volumes slab by slab that way).
    """

    def __init__(self, spec: GridSpec, dense_fraction: float = 0.25):
        self.spec = spec
        self.sums: dict[str, np.ndarray] = {}  # dense quantities
        self.entries: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # sparse ones, non-zero entries in order
        self._entry_count: dict[str, int] = {}
        self._dense_limit = dense_fraction * spec.n_voxels / 2  # entries: 16 bytes each, a dense voxel 8
        self._consolidated: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.sections = 0

    @property
    def names(self) -> list[str]:
        return [*self.sums, *self.entries]

    def _add_entries(self, name: str, index: np.ndarray, values: np.ndarray, bits: np.ndarray | None = None
                     ) -> None:
        """Add entries whose ``index`` holds each voxel once (:func:`reduce_partial`), in range (checked by the
        caller); with ``bits`` (``np.packbits`` of a mask over ``index``) ``values`` are those of the entries
        whose bit is set, every other entry being 0."""
        if name in self.sums:
            # unique indices: the bits of ``sums[index] += values`` (np.add.at's), in one compiled pass
            if bits is None:
                add_unique(self.sums[name], index, values, check=False)
            else:
                add_masked(self.sums[name], index, bits, values, check=False)
            return
        if bits is not None:
            index = index[np.unpackbits(bits, count=index.size).view(bool)]
            if index.size != values.size:
                raise ValueError(f"{name}: the mask selects {index.size} entries for {values.size} values")
        else:
            keep = values != 0
            if not keep.all():
                index, values = index[keep], values[keep]
        # kept: views of something larger (a partial's shared-memory block, a received message) copied, so the
        # accumulator holds only these entries
        index = index.astype(np.int64, copy=False)
        index, values = (a.copy() if a.base is not None else a for a in (index, values))
        self._consolidated.pop(name, None)
        self.entries.setdefault(name, []).append((index, values))
        self._entry_count[name] = self._entry_count.get(name, 0) + len(index)
        if self._entry_count[name] > self._dense_limit:
            dense = zeroed(self.spec.n_voxels)
            for chunk_index, chunk_values in self.entries.pop(name):
                add_unique(dense, chunk_index, chunk_values, check=False)
            del self._entry_count[name]
            self.sums[name] = dense

    def _check_index(self, index: np.ndarray) -> None:
        if index.size and (int(index.min()) < 0 or int(index.max()) >= self.spec.n_voxels):
            raise IndexError(f"a partial's flat indices fall outside the grid's {self.spec.n_voxels} voxels")

    def add(self, partial: PartialGrid, *, reduced: bool = False) -> GridAccumulator:
        """Add a partial; ``reduced``: it is already :func:`reduce_partial`'s output (each voxel once, ascending),
        e.g. summed per voxel in the worker that made it."""
        if partial.spec != self.spec:
            raise ValueError(f"partial grid on {partial.spec}, accumulator on {self.spec}")
        index, values = (partial.index, partial.values) if reduced else reduce_partial(partial)
        self._check_index(index)
        for name, sums in values.items():
            self._add_entries(name, index, np.asarray(sums, dtype=np.float64))
        self.sections += 1
        return self

    def add_masked(self, spec: GridSpec, index: np.ndarray,
                   values: Mapping[str, tuple[np.ndarray | None, np.ndarray]]) -> GridAccumulator:
        """Add a reduced partial (each voxel once, ascending) given as its ``index`` (int32 or int64) and, per
        quantity, ``(bits, values)``: ``bits`` an ``np.packbits`` mask of the entries that are not 0 and
        ``values`` theirs, or ``(None, values)`` with every entry's value (``runner.PackedPartial``'s form).
        The same bits as :meth:`add` of the unpacked partial: the entries that are 0 add nothing."""
        if spec != self.spec:
            raise ValueError(f"partial grid on {spec}, accumulator on {self.spec}")
        self._check_index(index)
        for name, (bits, nonzero) in values.items():
            nonzero = np.asarray(nonzero, dtype=np.float64)
            if bits is None and nonzero.size != index.size:
                raise ValueError(f"{name}: {nonzero.size} values for {index.size} entries")
            self._add_entries(name, index, nonzero, bits)
        self.sections += 1
        return self

    def merge(self, other: GridAccumulator) -> GridAccumulator:
        if other.spec != self.spec:
            raise ValueError(f"cannot merge grids on {other.spec} and {self.spec}")
        for name, values in other.sums.items():
            if name in self.sums:
                self.sums[name] += values
            elif name in self.entries:  # ours become dense: our sum first, then theirs, as dense + dense
                self.sums[name] = self.get(name)
                self.sums[name] += values
                del self.entries[name], self._entry_count[name]
                self._consolidated.pop(name, None)
            else:
                self.sums[name] = values.copy()
        for name in other.entries:
            # Their sums per voxel, added after ours: the bits of a dense ``ours += theirs``.
            index, values = other._consolidate(name)
            self._add_entries(name, index, values)
        self.sections += other.sections
        return self

    def add_all(self, partials: Iterable[PartialGrid]) -> GridAccumulator:
        for partial in partials:
            self.add(partial)
        return self

    def _consolidate(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A sparse quantity's sums: (sorted unique flat indices, their sums, each the additions in order)."""
        if name not in self._consolidated:
            chunks = self.entries[name]
            index = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
            values = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0)
            unique, inverse = np.unique(index, return_inverse=True)
            # bincount adds each bin's weights in array order from 0.0: np.add.at's additions.
            self._consolidated[name] = unique, np.bincount(inverse, weights=values, minlength=len(unique))
        return self._consolidated[name]

    def get(self, name: str) -> np.ndarray:
        """The flat sums of a quantity (zeros if no section had it), a dense vector."""
        return self.get_range(name, 0, self.spec.n_voxels)

    def get_entries(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray] | None:
        """A sparse quantity's sums at flat indices ``start .. stop - 1``: (their positions from ``start``, the
        sums there; every other voxel of the range holds 0); None for a dense quantity."""
        if name in self.sums:
            return None
        if name not in self.entries:
            return np.zeros(0, np.int64), np.zeros(0)
        index, values = self._consolidate(name)
        lo, hi = np.searchsorted(index, [start, stop])
        return index[lo:hi] - start, values[lo:hi]

    def get_range(self, name: str, start: int, stop: int) -> np.ndarray:
        """The sums at flat indices ``start .. stop - 1`` (a view for a dense quantity; do not write to it)."""
        if name in self.sums:
            return self.sums[name][start:stop]
        out = np.zeros(stop - start)
        at, values = self.get_entries(name, start, stop)  # type: ignore[misc]
        out[at] = values
        return out
