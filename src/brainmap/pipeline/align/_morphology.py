"""Compiled binary dilation and erosion of 2-D masks by the 4-connected cross, iterated: the same masks as
``scipy.ndimage.binary_dilation(mask, iterations=n)`` and ``binary_erosion(mask, iterations=n, border_value=1)``.

``n`` dilations by the cross reach exactly the pixels within city-block distance ``n`` of the mask (a path of
``n`` cross steps between two pixels of the image stays in their bounding box, so the image border does not
matter); an erosion with the border counted as mask is the complement's dilation. The city-block distance,
capped at ``n + 1``, comes from the classic two raster passes (exact for this metric). scipy runs one pass over
the image per iteration plus its setup per call (~0.3-1 ms per section mask, thousands of calls per data set):
measured in docs/performance-demo.md, round 8.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["dilate", "erode"]


@numba.njit(nogil=True, cache=True)
def _within(mask, value, n, out):  # pragma: no cover - compiled
    """``out[r, c]``: a pixel equal to ``value`` lies within city-block distance ``n`` of ``(r, c)``."""
    rows, cols = mask.shape
    far = np.int32(n + 1)
    d = np.empty((rows, cols), np.int32)
    for r in range(rows):
        for c in range(cols):
            if mask[r, c] == value:
                v = 0
            else:
                v = far
                if r > 0 and d[r - 1, c] + 1 < v:
                    v = d[r - 1, c] + 1
                if c > 0 and d[r, c - 1] + 1 < v:
                    v = d[r, c - 1] + 1
            d[r, c] = v
    for r in range(rows - 1, -1, -1):
        for c in range(cols - 1, -1, -1):
            v = d[r, c]
            if r < rows - 1 and d[r + 1, c] + 1 < v:
                v = d[r + 1, c] + 1
            if c < cols - 1 and d[r, c + 1] + 1 < v:
                v = d[r, c + 1] + 1
            d[r, c] = v
            out[r, c] = v <= n


def dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``ndimage.binary_dilation(mask, iterations=iterations)`` (the 4-connected cross) of a 2-D mask: bool."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    if mask.ndim != 2 or iterations < 1:
        raise ValueError("dilate: a 2-D mask and at least one iteration")
    out = np.empty(mask.shape, dtype=bool)
    _within(mask, True, int(iterations), out)
    return out


def erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``ndimage.binary_erosion(mask, iterations=iterations, border_value=1)`` (the 4-connected cross) of a 2-D
    mask: bool."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    if mask.ndim != 2 or iterations < 1:
        raise ValueError("erode: a 2-D mask and at least one iteration")
    out = np.empty(mask.shape, dtype=bool)
    _within(mask, False, int(iterations), out)
    np.logical_not(out, out=out)
    return out
