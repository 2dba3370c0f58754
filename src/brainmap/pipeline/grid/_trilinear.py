"""Compiled trilinear sampling of several volumes at the same points, added into running sums.

``out[q] += scipy.ndimage.map_coordinates(volumes[q], coords, order=1, mode="constant", cval=0.0,
prefilter=False)`` for every ``q``, with the same arithmetic as scipy's (1.6 and later) order-1 interpolation, so
the same bits: a point outside ``[0, n - 1]`` on any axis is the constant 0 (no interpolation past the edges);
inside, each axis's weights are ``1 - f`` and ``1 - (1 - f)`` for the fraction ``f`` past ``floor``; the eight
corners are visited with the last axis fastest, each value multiplied by the three weights in axis order and added
to a sum that starts at 0. One pass finds each point's corners and weights once for all volumes, where
``map_coordinates`` finds them again per volume (the ISH gridding samples five: 5.2 -> 1.7 s for a 100 um grid).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["add_trilinear", "axis_corners", "blend"]


@numba.njit(nogil=True, cache=True)
def axis_corners(c, n):  # pragma: no cover - compiled
    """For a coordinate ``0 <= c <= n - 1`` on an axis of ``n``: the corner below, the one above (the last
    voxel again at ``c == n - 1``, where its weight is 0: scipy's mirrored neighbour adds the same 0) and their
    weights ``1 - x``, ``1 - (1 - x)``, ``x`` the fraction past the floor."""
    f = np.floor(c)
    i = int(f)
    a = 1.0 - (c - f)
    return i, min(i + 1, n - 1), a, 1.0 - a


@numba.njit(nogil=True, cache=True)
def blend(volumes, q, i0, j0, a0, b0, i1, j1, a1, b1, i2, j2, a2, b2):  # pragma: no cover - compiled
    """Volume ``q`` of ``volumes`` (Q, n0, n1, n2) interpolated from the corners of :func:`axis_corners` of
    each axis: the corners with the last axis fastest, each value (in double) times the weights in axis order,
    added to a sum that starts at 0."""
    t = 0.0
    t += np.float64(volumes[q, i0, i1, i2]) * a0 * a1 * a2
    t += np.float64(volumes[q, i0, i1, j2]) * a0 * a1 * b2
    t += np.float64(volumes[q, i0, j1, i2]) * a0 * b1 * a2
    t += np.float64(volumes[q, i0, j1, j2]) * a0 * b1 * b2
    t += np.float64(volumes[q, j0, i1, i2]) * b0 * a1 * a2
    t += np.float64(volumes[q, j0, i1, j2]) * b0 * a1 * b2
    t += np.float64(volumes[q, j0, j1, i2]) * b0 * b1 * a2
    t += np.float64(volumes[q, j0, j1, j2]) * b0 * b1 * b2
    return t


@numba.njit(nogil=True, cache=True)
def _add_trilinear(volumes, coords, out):  # pragma: no cover - compiled
    _, n0, n1, n2 = volumes.shape
    for k in range(coords.shape[1]):
        c0, c1, c2 = coords[0, k], coords[1, k], coords[2, k]
        if not (0.0 <= c0 <= n0 - 1 and 0.0 <= c1 <= n1 - 1 and 0.0 <= c2 <= n2 - 1):  # NaN too: the constant 0
            continue
        i0, j0, a0, b0 = axis_corners(c0, n0)
        i1, j1, a1, b1 = axis_corners(c1, n1)
        i2, j2, a2, b2 = axis_corners(c2, n2)
        for q in range(volumes.shape[0]):
            out[q, k] += blend(volumes, q, i0, j0, a0, b0, i1, j1, a1, b1, i2, j2, a2, b2)


def add_trilinear(out: np.ndarray, volumes: np.ndarray, coords: np.ndarray) -> None:
    """Add each of ``volumes`` sampled trilinearly at ``coords`` into ``out`` (module docstring).

    Parameters
    ----------
    out : (Q, n) float64, contiguous; changed in place.
    volumes : (Q, n0, n1, n2) float64 array (made contiguous here).
    coords : (3, n) float64 array index coordinates (axis 0, 1, 2) of the n points.

    Examples
    --------
    >>> v = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> out = np.zeros((1, 2))
    >>> add_trilinear(out, v, np.array([[0.5, 2.0], [0.5, 0.0], [0.5, 0.0]]))
    >>> out  # the centre's mean; a point past the last plane is 0
    array([[3.5, 0. ]])
    """
    volumes = np.ascontiguousarray(volumes, dtype=np.float64)
    coords = np.ascontiguousarray(coords, dtype=np.float64)
    if volumes.ndim != 4 or coords.ndim != 2 or coords.shape[0] != 3:
        raise ValueError(f"volumes (Q, n0, n1, n2) and coords (3, n), not {volumes.shape} and {coords.shape}")
    if out.shape != (volumes.shape[0], coords.shape[1]) or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous float64 {(volumes.shape[0], coords.shape[1])} array")
    _add_trilinear(volumes, coords, out)
