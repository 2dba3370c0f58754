"""Compiled :meth:`~brainmap.pipeline.align.register.Sampler.__call__`: the same arithmetic, fused per point.

The loop does the element-wise operations of the numpy expressions it replaces (``register._sample_numpy``), in
the same order and without fused multiply-adds (numba's default), so the results are the same bits: float64
array coordinates ``(p - origin) / spacing``, their floor, the float32 fraction, each corner's float32 weight
multiplied axis by axis from the first, the corners' float32 products added in the numpy code's corner order,
then the float64 value times the 0/1 inside weight. It only avoids the temporaries and the one numpy pass per
operation (the ``2**k`` gathers, the weight products, the clipping): measured in docs/performance-demo.md,
round 8.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["sample"]


@numba.njit(nogil=True, cache=True)
def _corner(points, origin, spacing, axis, p, size):  # pragma: no cover - compiled
    """Array axis ``axis``'s cell of point ``p``: ``(lower clipped to 0..size - 2, float32 fraction, inside)``."""
    c = (points[axis, p] - origin[axis]) / spacing[axis]
    low = np.floor(c)
    frac = np.float32(c - low)
    i = np.int64(low)
    inside = i >= 0 and i < size - 1
    i = i if i > 0 else 0  # np.clip(i, 0, size - 2): the maximum, then the minimum
    i = i if i < size - 2 else size - 2
    return i, frac, inside


@numba.njit(nogil=True, cache=True)
def _sample3(points, origin, spacing, ax0, ax1, ax2, shape, strides, table, out, valid
             ):  # pragma: no cover - compiled
    """3-D: ``out[ch, p]`` and ``valid[p]``; array axis ``a`` reads physical row ``ax_a`` of ``points``."""
    n = points.shape[1]
    channels = table.shape[1]
    one = np.float32(1.0)
    s0, s1, s2 = strides[0], strides[1], strides[2]
    for p in range(n):
        i0, f0, in0 = _corner(points, origin, spacing, ax0, p, shape[0])
        i1, f1, in1 = _corner(points, origin, spacing, ax1, p, shape[1])
        i2, f2, in2 = _corner(points, origin, spacing, ax2, p, shape[2])
        base = s0 * i0 + s1 * i1 + s2 * i2
        g0, g1, g2 = one - f0, one - f1, one - f2
        # each corner's weight: the per-axis factors multiplied from the first axis, as the numpy code does
        w00, w01, w10, w11 = g0 * g1, g0 * f1, f0 * g1, f0 * f1
        v = 1.0 if in0 and in1 and in2 else 0.0
        valid[p] = v
        for ch in range(channels):
            a = table[base, ch] * (w00 * g2)
            a = a + table[base + s2, ch] * (w00 * f2)
            a = a + table[base + s1, ch] * (w01 * g2)
            a = a + table[base + s1 + s2, ch] * (w01 * f2)
            a = a + table[base + s0, ch] * (w10 * g2)
            a = a + table[base + s0 + s2, ch] * (w10 * f2)
            a = a + table[base + s0 + s1, ch] * (w11 * g2)
            a = a + table[base + s0 + s1 + s2, ch] * (w11 * f2)
            out[ch, p] = np.float64(a) * v


@numba.njit(nogil=True, cache=True)
def _sample2(points, origin, spacing, ax0, ax1, shape, strides, table, out, valid):  # pragma: no cover - compiled
    """2-D: as :func:`_sample3`."""
    n = points.shape[1]
    channels = table.shape[1]
    one = np.float32(1.0)
    s0, s1 = strides[0], strides[1]
    for p in range(n):
        i0, f0, in0 = _corner(points, origin, spacing, ax0, p, shape[0])
        i1, f1, in1 = _corner(points, origin, spacing, ax1, p, shape[1])
        base = s0 * i0 + s1 * i1
        g0, g1 = one - f0, one - f1
        v = 1.0 if in0 and in1 else 0.0
        valid[p] = v
        for ch in range(channels):
            a = table[base, ch] * (g0 * g1)
            a = a + table[base + s1, ch] * (g0 * f1)
            a = a + table[base + s0, ch] * (f0 * g1)
            a = a + table[base + s0 + s1, ch] * (f0 * f1)
            out[ch, p] = np.float64(a) * v


def sample(points: np.ndarray, origin: np.ndarray, spacing: np.ndarray, reverse: bool, shape: np.ndarray,
           strides: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of ``table``'s channels at physical ``points`` ``(k, n)``.

    Parameters
    ----------
    points : float64 ``(k, n)`` physical points (microns).
    origin, spacing : float64 ``(k,)``, physical units: the position of element 0 and the element spacing, per
        physical axis.
    reverse : whether array axis ``a`` is physical axis ``k - 1 - a``.
    shape, strides : int64 ``(k,)``: the array's shape and its strides in elements.
    table : float32 ``(size, channels)``: the array's elements (C order), one row of channels per element.

    Returns
    -------
    ``(values (channels, n) float64, inside (n,) float64 0/1)``: 0 at points outside the array's cells.
    """
    points = np.ascontiguousarray(points, dtype=np.float64)
    channels = table.shape[1]
    out = np.empty((channels, points.shape[1]), dtype=np.float64)
    valid = np.empty(points.shape[1], dtype=np.float64)
    k = points.shape[0]
    axes = [k - 1 - a if reverse else a for a in range(k)]  # the physical row of each array axis
    if k == 3:
        _sample3(points, origin, spacing, *axes, shape, strides, table, out, valid)
    elif k == 2:
        _sample2(points, origin, spacing, *axes, shape, strides, table, out, valid)
    else:
        raise ValueError(f"a Sampler interpolates 2-D or 3-D images, not {k}-D")
    return out, valid
