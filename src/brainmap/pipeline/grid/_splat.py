"""Compiled pieces of :func:`~brainmap.pipeline.grid.resample.splat_slab`: the same arithmetic, fused.

Each loop does the element-wise operations of the numpy expressions it replaces, in the same order and without
fused multiply-adds (numba's default), so the results are the same bits; it only avoids the temporaries and the
passes of one numpy call per operation (measured on the demo's 25 um sections: docs/performance-demo.md,
round 6). The numpy expressions are kept beside each call in ``resample.py``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["coronal_pieces", "drifts_out_of_columns", "footprint_column_sums"]


@numba.njit(nogil=True, cache=True)
def _taps(f, half, taps, index, share):  # pragma: no cover - compiled
    """resample._footprint_taps (and _footprint_shares under half a voxel; a point without a footprint: one tap
    of share 1): ``index[j, p]``, ``share[j, p]``; np.minimum/np.maximum/np.clip as numpy takes them (a tie
    gives the second operand)."""
    for p in range(f.size):
        x = f[p]
        if half <= 0:
            index[0, p] = np.int64(np.floor(x))
            share[0, p] = 1.0
        elif half <= 0.5:
            main = np.floor(x)
            frac = x - main
            below = half - frac
            below = below if below > 0.0 else 0.0
            above = frac + half - 1.0
            above = above if above > 0.0 else 0.0
            spill = (below + above) / (2.0 * half)
            index[0, p] = np.int64(main)
            share[0, p] = 1.0 - spill
            index[1, p] = np.int64(main) + 1 if above > 0 else np.int64(main) - 1
            share[1, p] = spill
        else:
            lo = x - half
            hi = x + half
            first = np.floor(lo)
            for j in range(taps):
                voxel = first + j
                index[j, p] = np.int64(voxel)
                v1 = voxel + 1
                top = hi if hi < v1 else v1
                bottom = lo if lo > voxel else voxel
                d = top - bottom
                share[j, p] = (d if d > 0.0 else 0.0) / (2 * half)


@numba.njit(nogil=True, cache=True)
def _footprint_column_sums(f1, f2, half, taps, w_point, values, lo1, lo2, n1, n2, s1, s2
                           ):  # pragma: no cover - compiled
    n, nq = values.shape
    index1 = np.empty((taps, n), np.int64)
    share1 = np.empty((taps, n))
    index2 = np.empty((taps, n), np.int64)
    share2 = np.empty((taps, n))
    _taps(f1, half, taps, index1, share1)
    _taps(f2, half, taps, index2, share2)
    count = np.zeros(n1 * n2)
    out = np.zeros((n1 * n2, nq))
    kept = 0
    for b in range(taps):  # the entries in _footprint_pairs' order: copies (axis 2's tap slowest), then points
        for a in range(taps):
            for p in range(n):
                i1 = index1[a, p]
                i2 = index2[b, p]
                s = share1[a, p] * share2[b, p]
                w0 = w_point[p] * s
                if w0 > 0 and i1 >= 0 and i1 < s1 and i2 >= 0 and i2 < s2:
                    if i1 < lo1 or i1 >= lo1 + n1 or i2 < lo2 or i2 >= lo2 + n2:
                        return count, out, -1  # a column outside the window: the caller's error
                    k = (i1 - lo1) + n1 * (i2 - lo2)
                    kept += 1
                else:
                    k = 0
                    s = 0.0
                    w0 = 0.0
                count[k] += w0
                for q in range(nq):
                    out[k, q] += values[p, q] * s
    return count, out, kept


def footprint_column_sums(f1: np.ndarray, f2: np.ndarray, half: float, w_point: np.ndarray, values: np.ndarray,
                          lo: tuple[int, int], n: tuple[int, int], shape: tuple[int, int]
                          ) -> tuple[np.ndarray, np.ndarray, int]:
    """``splat_slab``'s column sums from the points, in one compiled pass: each point's square footprint of
    half-side ``half`` (voxels) at ``(f1, f2)`` (voxel units) split over the columns it overlaps
    (``resample._footprint_pairs``; one tap of share 1 without a footprint), its weight ``w_point`` times each
    share and each of its ``values`` (``(n points, quantities)``) times each share summed per column of the
    window of ``n = (n1, n2)`` columns from ``lo = (lo1, lo2)``: the numpy expressions' ``np.bincount(key,
    np.tile(w_point, copies) * share)`` and ``np.bincount(key, np.tile(values[:, q], copies) * share)``, the
    entries outside the grid ``shape = (s1, s2)`` or of weight <= 0 going to column 0 with share 0, in the same
    order: the same bits, without the ``copies * n`` index, share and weight arrays (see ``splat_slab``).

    Returns
    -------
    count : (n1 * n2,) float64, the weights per column.
    sums : (n1 * n2, quantities) float64.
    kept : the number of entries inside the grid with a positive weight.
    """
    taps = 1 if half <= 0 else 2 if half <= 0.5 else int(np.ceil(2 * half)) + 1
    f1, f2, w_point = (np.ascontiguousarray(a, dtype=np.float64).ravel() for a in (f1, f2, w_point))
    values = np.ascontiguousarray(values, dtype=np.float64)
    if not (f1.size == f2.size == w_point.size == values.shape[0]) or values.ndim != 2:
        raise ValueError("footprint_column_sums: f1, f2, w_point and values' rows must be the points")
    count, sums, kept = _footprint_column_sums(f1, f2, float(half), taps, w_point, values, int(lo[0]), int(lo[1]),
                                               int(n[0]), int(n[1]), int(shape[0]), int(shape[1]))
    if kept < 0:
        raise IndexError(f"footprint_column_sums: a footprint inside the grid falls outside the window of {n} "
                         f"columns from {lo}")
    return count, sums, kept


@numba.njit(nogil=True, cache=True)
def _drifts(lo, hi, u, first, planes, use_half, p1, p2, r1, r2, c1, c2):  # pragma: no cover - compiled
    for c in range(u.size):
        for j in range(planes):
            k = first[c] + j
            if use_half:
                seg_lo = k if k > lo[c] else lo[c]
                k1 = k + 1
                seg_hi = k1 if k1 < hi[c] else hi[c]
                t = (seg_lo + seg_hi) * 0.5 - u[c]
            else:
                t = 0.0
            if np.int64(np.floor(p1[c] + t * r1)) != c1[c] or np.int64(np.floor(p2[c] + t * r2)) != c2[c]:
                return True
    return False


def drifts_out_of_columns(drift: float, lo: np.ndarray, hi: np.ndarray, u: np.ndarray, first: np.ndarray,
                          planes: int, use_half: bool, p1: np.ndarray, p2: np.ndarray, r1: float, r2: float,
                          c1: np.ndarray, c2: np.ndarray) -> bool:
    """Whether any piece's lateral position, ``floor(p + t r)`` at its middle ``t``, leaves its column ``c``
    (``splat_slab``'s ``array_equal`` test of ``i1``, ``i2`` against ``c1``, ``c2``; the same values); False
    without a ``drift`` (voxels over the slab's half-thickness) above 1e-3, which splat_slab does not follow."""
    if drift <= 1e-3:
        return False
    return bool(_drifts(lo, hi, u, first, int(planes), bool(use_half), np.asarray(p1, np.float64),
                        np.asarray(p2, np.float64), float(r1), float(r2), c1, c2))


@numba.njit(nogil=True, cache=True)
def _piece_weight(lo, hi, k, use_half, scale, total_weight):  # pragma: no cover - compiled
    if not use_half:
        return total_weight
    seg_lo = k if k > lo else lo  # np.maximum(lo, k)
    k1 = k + 1
    seg_hi = k1 if k1 < hi else hi  # np.minimum(hi, k + 1)
    d = seg_hi - seg_lo
    if d < 0.0:
        d = 0.0
    return d * scale


@numba.njit(nogil=True, cache=True)
def _kept_weight(lo, hi, k, use_half, scale, total_weight, n_axis):  # pragma: no cover - compiled
    """A piece's weight where it is kept (positive, its plane inside the grid), else 0."""
    w = _piece_weight(lo, hi, k, use_half, scale, total_weight)
    ik = np.int64(k)
    return w if (w > 0 and ik >= 0 and ik < n_axis) else 0.0


@numba.njit(nogil=True, cache=True)
def _count_pieces(lo, hi, first, planes, use_half, scale, total_weight, n_axis):  # pragma: no cover - compiled
    m = 0
    for c in range(first.size):
        for j in range(planes):
            if _kept_weight(lo[c], hi[c], first[c] + j, use_half, scale, total_weight, n_axis) > 0:
                m += 1
    return m


@numba.njit(nogil=True, cache=True)
def _coronal_pieces(lo, hi, first, planes, use_half, scale, total_weight, n_axis, offset, sums, flat, values
                    ):  # pragma: no cover - compiled
    m = 0
    for c in range(first.size):
        for j in range(planes):
            k = first[c] + j
            w = _kept_weight(lo[c], hi[c], k, use_half, scale, total_weight, n_axis)
            if not w > 0:
                continue
            flat[m] = np.int64(k) + offset[c]
            for q in range(len(values)):
                values[q][m] = w * sums[q, c]
            m += 1
    return m


def coronal_pieces(lo: np.ndarray, hi: np.ndarray, first: np.ndarray, planes: int, use_half: bool, scale: float,
                   total_weight: float, n_axis: int, offset: np.ndarray, sums: np.ndarray
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The pieces of a cut along the grid's fastest axis whose pieces stay in their columns, column by column,
    planes in order: ``(flat indices, each quantity's values)`` -- ``splat_slab``'s coronal path: piece
    ``(c, j)`` at plane ``k = first[c] + j`` weighs ``max(min(hi, k + 1) - max(lo, k), 0) * scale`` (or
    ``total_weight`` without a slab), is kept where that is positive and the plane inside ``0 .. n_axis - 1``,
    lies at ``k + offset[c]`` and carries ``weight * sums[:, c]``. The pieces are counted first and each output
    made at its size, one array per quantity (a 25 um section's nine quantities in one block were 53 MB: a fresh
    mapping whose page faults cost three times the loop)."""
    lo, hi, first = (np.ascontiguousarray(a, dtype=np.float64) for a in (lo, hi, first))
    sums = np.ascontiguousarray(sums, dtype=np.float64)
    args = (lo, hi, first, int(planes), bool(use_half), float(scale), float(total_weight), int(n_axis))
    m = _count_pieces(*args)
    flat = np.empty(m, np.int64)
    values = [np.empty(m) for _ in range(sums.shape[0])]
    if m and values:
        _coronal_pieces(*args, np.ascontiguousarray(offset, dtype=np.int64), sums, flat, tuple(values))
    return flat, values
