"""Compiled adds of a partial grid's entries into a dense flat volume (the accumulator's dense quantities).

``volume[index] += values`` with each index once is numpy's gather, add and scatter: three passes with an int64
index checked twice and a temporary. These loops do the same additions (one ``+`` per entry, in the entries'
order, no fused multiply-add) in one pass: the same bits. :func:`add_masked` reads a packed quantity (a bit mask of
its non-zero entries and their values, ``runner.PackedPartial``) as it travelled, so the entries that are 0 are
neither unpacked nor added (adding an exact +0 leaves a sum unchanged: a sum that starts at +0 never becomes -0).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["add_masked", "add_unique"]


@numba.njit(nogil=True, cache=True)
def _add_unique(volume, index, values):  # pragma: no cover - compiled
    for i in range(index.size):
        volume[index[i]] += values[i]


@numba.njit(nogil=True, cache=True)
def _add_masked(volume, index, bits, values):  # pragma: no cover - compiled
    j = 0
    for i in range(index.size):
        if (bits[i >> 3] >> (7 - (i & 7))) & 1:  # np.packbits' order: the first entry is the high bit
            volume[index[i]] += values[j]
            j += 1
    return j


@numba.njit(nogil=True, cache=True)
def _count_masked(bits, n):  # pragma: no cover - compiled
    count = 0
    for i in range(n):
        count += (bits[i >> 3] >> (7 - (i & 7))) & 1
    return count


def _check(volume: np.ndarray, index: np.ndarray, check: bool, dtypes: tuple = (np.float64,)) -> None:
    if volume.ndim != 1 or volume.dtype not in dtypes or not volume.flags.c_contiguous:
        names = " or ".join(np.dtype(d).name for d in dtypes)
        raise ValueError(f"the volume must be a flat, contiguous {names} array")
    if index.dtype.kind not in "iu":
        raise TypeError(f"flat indices must be integers, not {index.dtype}")
    if check and index.size and (int(index.min()) < 0 or int(index.max()) >= volume.size):
        raise IndexError(f"flat indices outside a volume of {volume.size} voxels")


def add_unique(volume: np.ndarray, index: np.ndarray, values: np.ndarray, *, check: bool = True) -> None:
    """``volume[index] += values`` for an ``index`` that holds each voxel at most once (the same bits).

    A float32 volume gets ``float32(volume[i] + values[k])``, the float64 sum rounded once: the bits of numpy's
    ``volume[index] = volume[index] + values``.

    Parameters
    ----------
    volume : (n_voxels,) float64 or float32, contiguous; changed in place.
    index : (m,) int32 or int64 flat indices, each at most once.
    values : (m,) float64.
    check : bool
        Check that every index lies in the volume (False: the caller has).
    """
    index = np.ascontiguousarray(index)
    values = np.ascontiguousarray(values, dtype=np.float64)
    if index.ndim != 1 or index.shape != values.shape:
        raise ValueError(f"{index.size} indices for {values.size} values")
    _check(volume, index, check, (np.float64, np.float32))
    _add_unique(volume, index, values)


def add_masked(volume: np.ndarray, index: np.ndarray, bits: np.ndarray, values: np.ndarray, *,
               check: bool = True) -> None:
    """Add the entries of ``index`` whose bit is set in ``bits`` (``np.packbits`` of a boolean mask over
    ``index``), the k-th of them getting ``values[k]``: ``volume[index[mask]] += values`` (the same bits).

    Parameters
    ----------
    volume : (n_voxels,) float64, contiguous; changed in place.
    index : (m,) int32 or int64 flat indices, each at most once.
    bits : (ceil(m / 8),) uint8, as ``np.packbits(mask)``.
    values : (number of set bits,) float64.
    check : bool
        Check that every index lies in the volume (False: the caller has).
    """
    index = np.ascontiguousarray(index)
    bits = np.ascontiguousarray(bits, dtype=np.uint8)
    values = np.ascontiguousarray(values, dtype=np.float64)
    if index.ndim != 1 or bits.size != (index.size + 7) // 8:
        raise ValueError(f"{bits.size} mask bytes for {index.size} entries")
    selected = _count_masked(bits, index.size)
    if selected != values.size:
        raise ValueError(f"the mask selects {selected} entries for {values.size} values")
    _check(volume, index, check)
    _add_masked(volume, index, bits, values)
