"""Compiled :func:`~brainmap.pipeline.align.reconstruct.place_section_and_mask`: the same arithmetic per grid
point, fused.

The numpy code (``reconstruct._place_section_and_mask_numpy``) gathers each corner's ``(value, mask)`` pair as
one complex64 item and multiplies it by the float32 corner weight, which numpy does as a complex product with
``(weight, 0)``: ``(v w - m 0, v 0 + m w)``. The loop below does those float32 operations, in that order, for the
four corners, without fused multiply-adds (numba's default): the same bits, signed zeros included. It only
avoids the temporaries and the one numpy pass per operation (measured in docs/performance-demo.md, round 8).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["place_pair"]


@numba.njit(nogil=True, cache=True)
def place_pair(image, mask, a, b, rows, cols):  # pragma: no cover - compiled
    """``(values, mask)`` float32 ``(rows, cols)``: ``image`` (float32) and ``mask`` (bool, same shape, at least 2 x 2)
    bilinearly resampled at grid point ``(r, c)`` -> image ``(row, col) = (a[1, 0] c + a[1, 1] r + b[1],
    a[0, 0] c + a[0, 1] r + b[0])``; 0 outside the first and last pixel centres."""
    n_rows, n_cols = image.shape
    values = np.empty((rows, cols), np.float32)
    placed = np.empty((rows, cols), np.float32)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for r in range(rows):
        for c in range(cols):
            u = a[1, 0] * c + a[1, 1] * r + b[1]
            v = a[0, 0] * c + a[0, 1] * r + b[0]
            if not (u >= 0 and u <= n_rows - 1 and v >= 0 and v <= n_cols - 1):
                values[r, c] = zero
                placed[r, c] = zero
                continue
            fi = np.floor(u)
            fi = fi if fi > 0 else 0.0  # np.clip(floor(u), 0, n_rows - 2) in float64, then the integer
            fi = fi if fi < n_rows - 2 else float(n_rows - 2)
            fj = np.floor(v)
            fj = fj if fj > 0 else 0.0
            fj = fj if fj < n_cols - 2 else float(n_cols - 2)
            i0 = np.int64(fi)
            j0 = np.int64(fj)
            fu = np.float32(u - i0)
            fv = np.float32(v - j0)
            gu = one - fu
            gv = one - fv
            w = gu * gv
            x = image[i0, j0]
            m = np.float32(mask[i0, j0])
            re = x * w - m * zero
            im = x * zero + m * w
            w = gu * fv
            x = image[i0, j0 + 1]
            m = np.float32(mask[i0, j0 + 1])
            re = re + (x * w - m * zero)
            im = im + (x * zero + m * w)
            w = fu * gv
            x = image[i0 + 1, j0]
            m = np.float32(mask[i0 + 1, j0])
            re = re + (x * w - m * zero)
            im = im + (x * zero + m * w)
            w = fu * fv
            x = image[i0 + 1, j0 + 1]
            m = np.float32(mask[i0 + 1, j0 + 1])
            re = re + (x * w - m * zero)
            im = im + (x * zero + m * w)
            values[r, c] = re
            placed[r, c] = im
    return values, placed
