"""Compiled pieces of :func:`~brainmap.pipeline.grid.resample.splat_slab`: the same arithmetic, fused.

Each loop does the element-wise operations of the numpy expressions it replaces, in the same order and without
fused multiply-adds (numba's default), so the results are the same bits; it only avoids the temporaries and the
passes of one numpy call per operation (measured on the demo's 25 um sections: docs/performance-demo.md,
round 6). The numpy expressions are kept beside each call in ``resample.py``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["column_sums", "coronal_pieces", "drifts_out_of_columns"]


@numba.njit(nogil=True, cache=True)
def _column_sums(key, share, values, size):  # pragma: no cover - compiled
    n, nq = values.shape
    out = np.zeros((size, nq))
    for e in range(key.size):
        k = key[e]
        s = share[e]
        p = e % n  # np.tile(values, copies)[e]
        for q in range(nq):
            out[k, q] += values[p, q] * s
    return out


def column_sums(key: np.ndarray, share: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Each column of ``values`` (``(n points, quantities)``) tiled over the footprint copies, times ``share``
    and summed per ``key``: ``np.bincount(key, np.tile(values[:, q], copies) * share, minlength=size)`` for every
    quantity ``q`` at once, as a ``(size, quantities)`` array (the same additions in the same order).

    Parameters
    ----------
    key : (copies * n,) int64 bins in ``0 .. size - 1``.
    share : (copies * n,) float64.
    values : (n, quantities) float64.
    size : number of bins.
    """
    key = np.ascontiguousarray(key, dtype=np.int64)
    share = np.ascontiguousarray(share, dtype=np.float64)
    values = np.ascontiguousarray(values, dtype=np.float64)
    if key.shape != share.shape or values.ndim != 2 or (values.shape[0] and key.size % values.shape[0]):
        raise ValueError("column_sums: key and share must be copies of the points")
    if key.size and (int(key.min()) < 0 or int(key.max()) >= size):
        raise IndexError(f"column_sums: bins outside 0..{size - 1}")
    return _column_sums(key, share, values, int(size))


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
