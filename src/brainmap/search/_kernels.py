"""The per-query passes over a search matrix: one streaming read of the matrix per query.

Every search reduces to a few sums per row (or per column) over a set of columns, computed on the stored
values without decoding them (see :mod:`brainmap.search.matrix`: for ``uint8`` a value is
``offset + scale * q**2``, so sums of ``v = q**2`` and of the data flag ``w = [q > 0]`` suffice; for
``float32`` ``v`` is the value and ``w = [not NaN]``):

``pearson_sums``  per row: ``n = sum w``, ``sum x``, ``sum x^2``, ``sum w s``, ``sum w s^2``, ``sum x s`` over the
                  columns, for a seed vector ``s`` (Pearson's r over the voxels where both have data), in float64
                  with ``x = v - centre`` (a per-row reference, e.g. the row's stored mean). Computed in chunks of
                  2,048 columns, each centred on its own means: the row on its mean over the chunk's domain voxels
                  where it has data, the seed on its mean over the chunk's domain voxels; float32 sums of those
                  small deviations are shifted exactly into the float64 totals. So no domain loses precision to a
                  centre far from its values (a small domain, a nearly empty row), and a row constant over the
                  domain sums to exactly zero variance.
``pair_sums``     per row: ``sum w``, ``sum v`` over two weighted column sets (a differential search's two means).
``column_sums``   per column: six sums over rows with per-row coefficients (a seed-point / AGEA correlation map).

Columns are given as a :class:`ColumnPlan`: when the wanted columns fill at least ``DENSE_FRACTION`` (a fifth)
of their span the kernel streams the span contiguously with 0/1 weights (vectorized; no gather); otherwise it
gathers them.

Engines
-------
``numba`` (used when numba is installed): fused passes, compiled once (cached in ``__pycache__``), that
release the GIL; rows (or column blocks) are split over a thread pool of ``threads`` threads (default: the
usable cores, or ``BRAINMAP_SEARCH_THREADS``). Float32 partial sums over chunks of 4,096 columns (16 rows for
``column_sums``) are added into float64. The Pearson kernel takes rows in blocks of 16 over each 2,048-column
chunk of the seed (which stays in L1). Where the domain covers a whole 2,048-column block of the store, the
store's ``chunk_stats`` give the row's count and mean there, so the chunk is one pass of three sums (``sum dx``,
``sum dx^2``, ``sum dx s``; the seed's sums are known when the row has data at every column); elsewhere a
first pass decodes the chunk into L1 buffers and counts the row's data, a second sums about its mean.
``numpy``: the same sums with BLAS on decoded blocks of 256 rows (float32 for pair sums; float64, chunk by
chunk as above, for Pearson sums), several times slower (numpy's uint8 -> float32 conversion alone runs at
~5 G values/s; no extra dependency). ``BRAINMAP_SEARCH_ENGINE=numpy|numba`` overrides the default.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

try:  # pragma: no cover - depends on the environment
    import numba
    from numba import types as _nbtypes
    from numba.extending import overload as _overload

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False

ENGINES = ("numba", "numpy")
#: Use a contiguous weighted pass when the wanted columns fill at least this fraction of their span. Gathering
#: scattered columns still touches nearly every cache line of a row, so it only pays for small sets (measured
#: at 25,000 x 27,000: 4,900 gathered columns beat a dense pass, 6,600 lose to it).
DENSE_FRACTION = 0.2
_CHUNK = 4096  # columns per float32 partial sum (pair kernels)
_PEARSON_CHUNK = 2048  # columns per chunk of the Pearson kernels (each centred on its own means)
_PEARSON_ROWS = 16  # rows that pass over one chunk of the seed while it is in L1 (measured: 1, 48 are slower)
_COLUMN_BLOCK = 2048  # columns per task in column_sums
_FLUSH_ROWS = 16  # rows per float32 partial sum in column_sums
_NUMPY_BLOCK_ROWS = 256


def default_engine() -> str:
    """``numba`` if installed, else ``numpy``; the environment variable ``BRAINMAP_SEARCH_ENGINE`` overrides."""
    chosen = os.environ.get("BRAINMAP_SEARCH_ENGINE", "").strip().lower()
    if chosen:
        return resolve_engine(chosen)
    return "numba" if HAVE_NUMBA else "numpy"


def resolve_engine(engine: str | None) -> str:
    if engine is None:
        return default_engine()
    engine = str(engine).lower()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "numba" and not HAVE_NUMBA:
        raise ImportError("engine 'numba' needs numba (pip install numba); use engine='numpy'")
    return engine


@dataclass(frozen=True)
class ColumnPlan:
    """Which columns a pass reads, and how: ``dense`` (stream ``[lo, hi)`` with weights) or gather ``cols``."""

    cols: np.ndarray
    lo: int
    hi: int
    dense: bool

    @classmethod
    def of(cls, cols: np.ndarray, dense: bool | None = None) -> "ColumnPlan":
        cols = np.asarray(cols, dtype=np.int64)
        if cols.size == 0:
            raise ValueError("a column plan needs at least one column")
        lo, hi = int(cols[0]), int(cols[-1]) + 1
        if dense is None:
            dense = cols.size >= DENSE_FRACTION * (hi - lo)
        return cls(cols, lo, hi, bool(dense))

    def layout(self, values_at_cols: np.ndarray) -> np.ndarray:
        """``values_at_cols`` (aligned with ``cols``) laid out for the kernel: float32, over the span (zeros at
        unwanted columns) when dense, as given when gathering."""
        values = np.asarray(values_at_cols, dtype=np.float32)
        if not self.dense:
            return np.ascontiguousarray(values)
        out = np.zeros(self.hi - self.lo, dtype=np.float32)
        out[self.cols - self.lo] = values
        return out


# ------------------------------------------------------------------------------------------------ numpy engine
def _decode_block(block: np.ndarray, encoding: str, center: np.ndarray | None = None,
                  dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``(w, v)`` of a row block; ``v - center * w`` when a per-row centre is given."""
    if encoding == "uint8":
        q = block.astype(dtype)
        w, v = np.minimum(q, 1.0), q * q
    else:
        data = ~np.isnan(block)
        w, v = data.astype(dtype), np.where(data, block, 0).astype(dtype)
    if center is not None:
        v -= center.astype(dtype)[:, None] * w
    return w, v


def _np_blocks(raw: np.ndarray, plan: ColumnPlan):
    """``(first row, last row, first column of the layout, block)``: row blocks x column chunks of the plan's
    columns, so that float32 BLAS sums run over at most ``_CHUNK`` columns before being added into float64."""
    for start in range(0, raw.shape[0], _NUMPY_BLOCK_ROWS):
        stop = min(start + _NUMPY_BLOCK_ROWS, raw.shape[0])
        rows = raw[start:stop]
        width = (plan.hi - plan.lo) if plan.dense else plan.cols.size
        for c0 in range(0, width, _CHUNK):
            c1 = min(c0 + _CHUNK, width)
            block = rows[:, plan.lo + c0 : plan.lo + c1] if plan.dense else rows[:, plan.cols[c0:c1]]
            yield start, stop, c0, c1, block


@dataclass(frozen=True)
class _PearsonLayout:
    """A Pearson pass's per-query vectors over the plan's span (dense) or columns (gather), float32, in chunks of
    ``_PEARSON_CHUNK``: the domain weights ``m`` (0/1), the seed centred on its mean over each chunk's domain
    columns ``s`` (0 outside the domain) and ``s**2``; per chunk, float64: the number of domain columns, the sums
    of ``s`` and ``s**2`` over them (what a row with data at all of them sums) and the mean taken out, ``ybar``."""

    m: np.ndarray
    s: np.ndarray
    s2: np.ndarray
    n_domain: np.ndarray
    s_domain: np.ndarray
    s2_domain: np.ndarray
    ybar: np.ndarray

    @classmethod
    def of(cls, plan: ColumnPlan, seed: np.ndarray) -> "_PearsonLayout":
        seed = np.asarray(seed, dtype=np.float64)
        if plan.dense:
            width = plan.hi - plan.lo
            s = np.zeros(width)
            s[plan.cols - plan.lo] = seed
            m = np.zeros(width)
            m[plan.cols - plan.lo] = 1.0
        else:
            width = plan.cols.size
            s, m = seed.copy(), np.ones(width)
        n_chunks = -(-width // _PEARSON_CHUNK)
        pad = n_chunks * _PEARSON_CHUNK - width
        ms = np.pad(m, (0, pad)).reshape(n_chunks, _PEARSON_CHUNK)
        ss = np.pad(s, (0, pad)).reshape(n_chunks, _PEARSON_CHUNK)
        n_domain = ms.sum(axis=1)
        ybar = np.divide(ss.sum(axis=1), n_domain, out=np.zeros(n_chunks), where=n_domain > 0)
        centred = ((ss - ybar[:, None]) * ms).astype(np.float32)
        squared = centred * centred
        return cls(np.ascontiguousarray(m, dtype=np.float32), centred.ravel()[:width].copy(),
                   squared.ravel()[:width].copy(), n_domain.astype(np.float32),
                   centred.sum(axis=1, dtype=np.float64), squared.sum(axis=1, dtype=np.float64), ybar)


def _np_pearson(raw, encoding, plan, seed, center):
    """The numpy engine's Pearson sums: the same chunked centring as the numba kernels, in float64."""
    lay = _PearsonLayout.of(plan, seed)
    out = np.zeros((raw.shape[0], 6))
    width = lay.m.size
    for start in range(0, raw.shape[0], _NUMPY_BLOCK_ROWS):
        stop = min(start + _NUMPY_BLOCK_ROWS, raw.shape[0])
        rows = raw[start:stop]
        g = center[start:stop]
        for c, c0 in enumerate(range(0, width, _PEARSON_CHUNK)):
            c1 = min(c0 + _PEARSON_CHUNK, width)
            block = rows[:, plan.lo + c0 : plan.lo + c1] if plan.dense else rows[:, plan.cols[c0:c1]]
            w, v = _decode_block(block, encoding, dtype=np.float64)
            m, s, s2 = lay.m[c0:c1].astype(np.float64), lay.s[c0:c1].astype(np.float64), lay.s2[c0:c1].astype(np.float64)
            w *= m
            v *= m
            n = w.sum(axis=1)
            kx = np.divide(v.sum(axis=1), n, out=np.zeros(n.size), where=n > 0)
            dx = v - kx[:, None] * w
            sy, syy = w @ s, w @ s2
            a = np.where(n > 0, kx - g, 0.0)
            b = lay.ybar[c]
            ty = sy + n * b
            sx0 = dx.sum(axis=1)
            out[start:stop, 0] += n
            out[start:stop, 1] += sx0 + n * a
            out[start:stop, 2] += np.einsum("ij,ij->i", dx, dx) + 2.0 * a * sx0 + n * a * a
            out[start:stop, 3] += ty
            out[start:stop, 4] += syy + 2.0 * b * sy + n * b * b
            out[start:stop, 5] += dx @ s + b * sx0 + a * ty
    return out


def _np_pair(raw, encoding, plan, w1, w2):
    rhs = np.stack([plan.layout(w1), plan.layout(w2)], axis=1)
    out = np.zeros((raw.shape[0], 4))
    for start, stop, c0, c1, block in _np_blocks(raw, plan):
        w, v = _decode_block(block, encoding)
        ws = w @ rhs[c0:c1]
        vs = v @ rhs[c0:c1]
        out[start:stop, 0] += ws[:, 0]
        out[start:stop, 1] += vs[:, 0]
        out[start:stop, 2] += ws[:, 1]
        out[start:stop, 3] += vs[:, 1]
    return out


def _np_columns(raw, encoding, lo, hi, cw, cv, cvv, active):
    out = np.zeros((6, hi - lo))
    for start in range(0, active.size, _NUMPY_BLOCK_ROWS):
        rows = active[start : start + _NUMPY_BLOCK_ROWS]
        w, v = _decode_block(raw[rows, lo:hi], encoding, dtype=np.float64)
        out += (w.T @ cw[rows].astype(np.float64)).T
        out += (v.T @ cv[rows].astype(np.float64)).T
        out[2] += (v * v).T @ cvv[rows].astype(np.float64)
    return out


# ------------------------------------------------------------------------------------------------ numba engine
if HAVE_NUMBA:  # pragma: no branch
    # Fast-math without 'nnan'/'ninf': the float32 encoding marks no data with NaN and must test for it.
    _FM = {"reassoc", "contract", "nsz", "arcp"}

    def _decode(x):  # pragma: no cover - replaced by the overload inside numba
        raise NotImplementedError

    @_overload(_decode, inline="always")
    def _decode_impl(x):
        if isinstance(x, _nbtypes.Integer):

            def impl(x):  # uint8 code: w = [q > 0], v = q**2 (q = 0 gives v = 0)
                q = np.float32(x)
                return min(q, np.float32(1.0)), q * q

            return impl
        if isinstance(x, _nbtypes.Float):

            def impl(x):  # float: no data is NaN
                f = np.float32(x)
                ok = f == f
                return (np.float32(1.0) if ok else np.float32(0.0)), (f if ok else np.float32(0.0))

            return impl
        return None

    def _decode_masked(x, m):  # pragma: no cover - replaced by the overload inside numba
        raise NotImplementedError

    @_overload(_decode_masked)
    def _decode_masked_impl(x, m):
        """``(w, v)`` of a stored value times a 0/1 domain weight ``m``: 0 outside the domain and where no data."""
        if isinstance(x, _nbtypes.Integer):

            def impl(x, m):
                q = np.float32(x) * m
                return min(q, np.float32(1.0)), q * q

            return impl
        if isinstance(x, _nbtypes.Float):

            def impl(x, m):
                f = np.float32(x)
                ok = f == f
                return (m if ok else np.float32(0.0)), (f * m if ok else np.float32(0.0))

            return impl
        return None

    def _value(x):  # pragma: no cover - replaced by the overload inside numba
        raise NotImplementedError

    @_overload(_value, inline="always")
    def _value_impl(x):
        """The stored value ``v`` where there is known to be data: ``q**2`` for a code, else the value."""
        if isinstance(x, _nbtypes.Integer):

            def impl(x):
                q = np.float32(x)
                return q * q

            return impl
        return lambda x: np.float32(x)

    def _total_zero(x):  # pragma: no cover - replaced by the overload inside numba
        raise NotImplementedError

    @_overload(_total_zero, inline="always")
    def _total_zero_impl(x):
        """The start of a chunk's sum of stored values: float32 for codes, float64 for float32 values (so that a
        constant chunk's mean is its value exactly)."""
        if isinstance(x, _nbtypes.Integer):
            return lambda x: np.float32(0.0)
        return lambda x: np.float64(0.0)

    def _shift(x, total, n):  # pragma: no cover - replaced by the overload inside numba
        raise NotImplementedError

    @_overload(_shift, inline="always")
    def _shift_impl(x, total, n):
        """A chunk's centre from pass A: its mean, rounded to an integer for codes (``q**2`` are integers: a
        constant chunk then centres to exactly 0; the float32 sum may be off by a few units)."""
        if isinstance(x, _nbtypes.Integer):
            return lambda x, total, n: np.float32(np.rint(total / n))
        return lambda x, total, n: np.float32(total / n)

    _JIT = dict(nogil=True, fastmath=_FM, cache=True)

    _INLINE = dict(nogil=True, fastmath=_FM, cache=True, inline="always")

    @numba.njit(**_INLINE)
    def _pass_full(bv, mm, ss, m, kx):  # pragma: no cover - compiled
        """Pass B over decoded values with data at every domain voxel: sums of dx, dx**2, dx s (dx = v - kx)."""
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a4 = np.float32(0.0)
        for k in range(m):
            dx = bv[k] - kx * mm[k]
            a0 += dx
            a1 += dx * dx
            a4 += dx * ss[k]
        return a0, a1, a4

    @numba.njit(**_INLINE)
    def _pass_part(bv, bw, ss, ss2, m, kx):  # pragma: no cover - compiled
        """Pass B over decoded values with some data missing: also the seed's sums over the data voxels."""
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a4 = np.float32(0.0)
        f2 = np.float32(0.0)
        f3 = np.float32(0.0)
        for k in range(m):
            w = bw[k]
            dx = bv[k] - kx * w
            a0 += dx
            a1 += dx * dx
            f2 += w * ss[k]
            f3 += w * ss2[k]
            a4 += dx * ss[k]
        return a0, a1, a4, f2, f3

    @numba.njit(**_INLINE)
    def _pass_full_raw(r, ss, kx):  # pragma: no cover - compiled
        """:func:`_pass_full` straight from the stored values of a block the domain covers whole (one pass)."""
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a4 = np.float32(0.0)
        for k in range(r.size):
            dx = _value(r[k]) - kx
            a0 += dx
            a1 += dx * dx
            a4 += dx * ss[k]
        return a0, a1, a4

    @numba.njit(**_INLINE)
    def _pass_part_raw(r, ss, ss2, kx):  # pragma: no cover - compiled
        """:func:`_pass_part` straight from the stored values of a block the domain covers whole (one pass)."""
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a4 = np.float32(0.0)
        f2 = np.float32(0.0)
        f3 = np.float32(0.0)
        one = np.float32(1.0)
        for k in range(r.size):
            w, v = _decode_masked(r[k], one)
            dx = v - kx * w
            a0 += dx
            a1 += dx * dx
            f2 += w * ss[k]
            f3 += w * ss2[k]
            a4 += dx * ss[k]
        return a0, a1, a4, f2, f3

    @numba.njit(**_INLINE)
    def _merge(acc, j, n, kx, g, b, a0, a1, a4, sy, syy):  # pragma: no cover - compiled
        """Add one chunk's float32 sums about its own centres (``kx`` for the row, ``b`` for the seed) to
        ``acc[j]`` as sums about ``g`` and 0: over the chunk's data ``x - g = (x - kx) + a``, ``y = (y - b) + b``,
        expanded exactly in float64."""
        fn = np.float64(n)
        sx0 = np.float64(a0)
        a = np.float64(kx) - g
        ty = sy + fn * b
        acc[j, 0] += fn
        acc[j, 1] += sx0 + fn * a
        acc[j, 2] += np.float64(a1) + 2.0 * a * sx0 + fn * a * a
        acc[j, 3] += ty
        acc[j, 4] += syy + 2.0 * b * sy + fn * b * b
        acc[j, 5] += np.float64(a4) + b * sx0 + a * ty

    @numba.njit(**_INLINE)
    def _chunk_from_buffers(x0, bv, bw, m, n, total, mm, ss, ss2, full, sy_dom, syy_dom, b, g, acc, j):  # pragma: no cover
        """Pass B of one chunk of one row after pass A (values ``bv``, data flags ``bw``; ``n`` data voxels whose
        values sum to ``total``), centred on the row's own mean there."""
        if n == 0:
            return
        kx = _shift(x0, total, n)
        if full:  # data at every domain voxel of the chunk: the seed's sums over them are known
            a0, a1, a4 = _pass_full(bv, mm, ss, m, kx)
            _merge(acc, j, n, kx, g, b, a0, a1, a4, sy_dom, syy_dom)
        else:
            a0, a1, a4, f2, f3 = _pass_part(bv, bw, ss, ss2, m, kx)
            _merge(acc, j, n, kx, g, b, a0, a1, a4, np.float64(f2), np.float64(f3))

    @numba.njit(**_JIT)
    def _nb_pearson_dense(raw, rows, r0, r1, lo, hi, mf, s, s2, ndom, sdom, s2dom, ybar, whole, stats, first,
                          center, out, block_rows):  # pragma: no cover - compiled
        span = hi - lo
        n_chunks = (span + _PEARSON_CHUNK - 1) // _PEARSON_CHUNK
        acc = np.zeros((max(block_rows, 1), 6))
        bv = np.empty(_PEARSON_CHUNK, np.float32)
        bw = np.empty(_PEARSON_CHUNK, np.float32)
        x0 = raw[0, 0]
        for b0 in range(r0, r1, block_rows):
            b1 = min(b0 + block_rows, r1)
            acc[:] = 0.0
            for c in range(n_chunks):  # a chunk's seed stays in L1 while the block's rows pass over it
                c0 = c * _PEARSON_CHUNK
                c1 = min(c0 + _PEARSON_CHUNK, span)
                mm = mf[c0:c1]
                ss = s[c0:c1]
                ss2 = s2[c0:c1]
                for i in range(b0, b1):
                    r = raw[rows[i], lo + c0 : lo + c1]
                    if whole[c]:  # the domain is this whole block of the store: its stored count and mean hold
                        n = stats[rows[i], first + c, 0]
                        if n == 0:
                            continue
                        kx = _shift(x0, stats[rows[i], first + c, 1], np.float32(1.0))
                        if n == ndom[c]:
                            a0, a1, a4 = _pass_full_raw(r, ss, kx)
                            _merge(acc, i - b0, n, kx, center[i], ybar[c], a0, a1, a4, sdom[c], s2dom[c])
                        else:
                            a0, a1, a4, f2, f3 = _pass_part_raw(r, ss, ss2, kx)
                            _merge(acc, i - b0, n, kx, center[i], ybar[c], a0, a1, a4, np.float64(f2), np.float64(f3))
                        continue
                    m = r.size
                    cnt = np.float32(0.0)
                    tot = _total_zero(x0)
                    for k in range(m):  # pass A: decode once into L1 buffers; count and sum the data
                        w, v = _decode_masked(r[k], mm[k])
                        bv[k] = v
                        bw[k] = w
                        cnt += w
                        tot += v
                    _chunk_from_buffers(x0, bv, bw, m, cnt, tot, mm, ss, ss2, cnt == ndom[c], sdom[c], s2dom[c],
                                        ybar[c], center[i], acc, i - b0)
            for i in range(b0, b1):
                for t in range(6):
                    out[i, t] = acc[i - b0, t]

    @numba.njit(**_JIT)
    def _nb_pearson_gather(raw, rows, r0, r1, cols, mf, s, s2, ndom, sdom, s2dom, ybar, center, out,
                           block_rows):  # pragma: no cover - compiled
        span = cols.size
        n_chunks = (span + _PEARSON_CHUNK - 1) // _PEARSON_CHUNK
        acc = np.zeros((max(block_rows, 1), 6))
        bv = np.empty(_PEARSON_CHUNK, np.float32)
        bw = np.empty(_PEARSON_CHUNK, np.float32)
        x0 = raw[0, 0]
        for b0 in range(r0, r1, block_rows):
            b1 = min(b0 + block_rows, r1)
            acc[:] = 0.0
            for c in range(n_chunks):
                c0 = c * _PEARSON_CHUNK
                c1 = min(c0 + _PEARSON_CHUNK, span)
                cc = cols[c0:c1]
                mm = mf[c0:c1]
                ss = s[c0:c1]
                ss2 = s2[c0:c1]
                for i in range(b0, b1):
                    row = raw[rows[i]]
                    m = cc.size
                    cnt = np.float32(0.0)
                    tot = _total_zero(x0)
                    for k in range(m):
                        w, v = _decode_masked(row[cc[k]], np.float32(1.0))
                        bv[k] = v
                        bw[k] = w
                        cnt += w
                        tot += v
                    _chunk_from_buffers(x0, bv, bw, m, cnt, tot, mm, ss, ss2, cnt == ndom[c], sdom[c], s2dom[c],
                                        ybar[c], center[i], acc, i - b0)
            for i in range(b0, b1):
                for t in range(6):
                    out[i, t] = acc[i - b0, t]

    @numba.njit(**_JIT)
    def _nb_pair_dense(raw, rows, r0, r1, lo, hi, m1, m2, out):  # pragma: no cover - compiled
        span = hi - lo
        for i in range(r0, r1):
            row = raw[rows[i]]
            t0 = 0.0
            t1 = 0.0
            t2 = 0.0
            t3 = 0.0
            for c0 in range(0, span, _CHUNK):
                c1 = min(c0 + _CHUNK, span)
                r = row[lo + c0 : lo + c1]
                p1 = m1[c0:c1]
                p2 = m2[c0:c1]
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                for k in range(r.size):
                    w, v = _decode(r[k])
                    a0 += w * p1[k]
                    a1 += v * p1[k]
                    a2 += w * p2[k]
                    a3 += v * p2[k]
                t0 += a0
                t1 += a1
                t2 += a2
                t3 += a3
            out[i, 0] = t0
            out[i, 1] = t1
            out[i, 2] = t2
            out[i, 3] = t3

    @numba.njit(**_JIT)
    def _nb_pair_gather(raw, rows, r0, r1, cols, m1, m2, out):  # pragma: no cover - compiled
        n = cols.size
        for i in range(r0, r1):
            row = raw[rows[i]]
            t0 = 0.0
            t1 = 0.0
            t2 = 0.0
            t3 = 0.0
            for c0 in range(0, n, _CHUNK):
                c1 = min(c0 + _CHUNK, n)
                cc = cols[c0:c1]
                p1 = m1[c0:c1]
                p2 = m2[c0:c1]
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                for k in range(cc.size):
                    w, v = _decode(row[cc[k]])
                    a0 += w * p1[k]
                    a1 += v * p1[k]
                    a2 += w * p2[k]
                    a3 += v * p2[k]
                t0 += a0
                t1 += a1
                t2 += a2
                t3 += a3
            out[i, 0] = t0
            out[i, 1] = t1
            out[i, 2] = t2
            out[i, 3] = t3

    @numba.njit(**_JIT)
    def _nb_columns(raw, c0, c1, cw, cv, cvv, active, out):  # pragma: no cover - compiled
        # out: (6, width of the whole pass); this call fills columns [c0, c1) of raw into out[:, c0 - base ...]
        # through the caller's view (out is already offset to c0).
        width = c1 - c0
        p0 = np.zeros(width, np.float32)
        p1 = np.zeros(width, np.float32)
        p2 = np.zeros(width, np.float32)
        p3 = np.zeros(width, np.float32)
        p4 = np.zeros(width, np.float32)
        p5 = np.zeros(width, np.float32)
        pending = 0
        for j in range(active.size):
            i = active[j]
            r = raw[i][c0:c1]
            w0 = cw[i, 0]
            w1 = cw[i, 1]
            w2 = cw[i, 2]
            w3 = cw[i, 3]
            w4 = cw[i, 4]
            w5 = cw[i, 5]
            v1 = cv[i, 1]
            v2 = cv[i, 2]
            v5 = cv[i, 5]
            vv = cvv[i]
            for k in range(width):
                w, v = _decode(r[k])
                p0[k] += w0 * w
                p1[k] += w1 * w + v1 * v
                p2[k] += w2 * w + (v2 + vv * v) * v
                p3[k] += w3 * w
                p4[k] += w4 * w
                p5[k] += w5 * w + v5 * v
            pending += 1
            if pending == _FLUSH_ROWS or j == active.size - 1:
                for k in range(width):
                    out[0, k] += p0[k]
                    out[1, k] += p1[k]
                    out[2, k] += p2[k]
                    out[3, k] += p3[k]
                    out[4, k] += p4[k]
                    out[5, k] += p5[k]
                    p0[k] = 0.0
                    p1[k] = 0.0
                    p2[k] = 0.0
                    p3[k] = 0.0
                    p4[k] = 0.0
                    p5[k] = 0.0
                pending = 0

    @numba.njit(nogil=True, cache=True)
    def _nb_encode_uint8(x, r0, r1, lo, hi, codes):  # pragma: no cover - compiled
        for i in range(r0, r1):
            row = x[i]
            mn = np.inf
            mx = -np.inf
            for k in range(row.size):
                v = row[k]
                if v < mn:  # NaN compares false: skipped
                    mn = v
                if v > mx:
                    mx = v
            out = codes[i]
            if mn > mx:  # no data at all
                lo[i] = 0.0
                hi[i] = 0.0
                out[:] = 0
                continue
            lo[i] = mn
            hi[i] = mx
            scale = (np.float64(mx) - np.float64(mn)) / 65024.0
            inverse = 1.0 / scale if scale > 0 else 0.0
            for k in range(row.size):
                v = row[k]
                if v != v:
                    out[k] = 0
                else:
                    u = 1.0 + (np.float64(v) - mn) * inverse
                    t = np.floor(np.sqrt(u))
                    if u > t * (t + 1.0) + 0.5:
                        t += 1.0
                    out[k] = np.uint8(min(t, 255.0))

    @numba.njit(nogil=True, cache=True)
    def _nb_stream(raw, r0, r1, out):  # pragma: no cover - compiled
        for i in range(r0, r1):
            row = raw[i]
            acc = np.uint32(0)
            for k in range(row.size):
                acc += row[k]
            out[i] = acc


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def default_threads() -> int:
    """Threads a pass uses by default: ``BRAINMAP_SEARCH_THREADS``, else the number of usable cores."""
    env = os.environ.get("BRAINMAP_SEARCH_THREADS", "").strip()
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _run_split(kernel, n_items: int, threads: int | None, args_for) -> None:
    """Run ``kernel(*args_for(a, b))`` over ``[0, n_items)`` split in pieces, on ``threads`` threads (the numba
    kernels release the GIL). Several pieces per thread keep the threads busy when one is slowed down."""
    threads = default_threads() if threads is None else max(1, int(threads))
    pieces = 1 if threads == 1 or n_items < 2 else min(n_items, threads * 8)
    bounds = np.linspace(0, n_items, pieces + 1).astype(np.int64)
    if pieces == 1:
        kernel(*args_for(0, n_items))
        return
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < threads:  # type: ignore[attr-defined]
            _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="brainmap-search")
        pool = _POOL
    futures = [pool.submit(kernel, *args_for(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for future in futures:
        future.result()


def _check_rows(rows: np.ndarray | None, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n, dtype=np.int64)
    rows = np.ascontiguousarray(rows, dtype=np.int64).ravel()
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"row positions must lie in [0, {n})")
    return rows


def _is_all(rows: np.ndarray) -> bool:
    return rows.size == 0 or (rows[0] == 0 and rows[-1] == rows.size - 1 and bool(np.all(np.diff(rows) == 1)))


def _check_raw(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise ValueError(f"a search matrix is 2-D, got shape {raw.shape}")
    if not raw.flags.c_contiguous:
        raw = np.ascontiguousarray(raw)
    return raw


# ------------------------------------------------------------------------------------------------ public
def pearson_sums(raw, encoding: str, plan: ColumnPlan, seed: np.ndarray, center: np.ndarray | None = None,
                 engine: str | None = None, threads: int | None = None, rows: np.ndarray | None = None,
                 chunk_stats: np.ndarray | None = None) -> np.ndarray:
    """(rows, 6) float64: ``n, sum v', sum v'^2, sum w s, sum w s^2, sum v' s`` over ``plan``'s columns, with
    ``v' = v - center[row]`` where there is data (the reference the float64 sums are reported about; the kernel
    itself centres every chunk on the row's own mean, see the module docstring) and ``seed`` aligned with
    ``plan.cols`` (finite). ``rows``: only these rows (positions into ``raw``; the output and ``center`` follow
    their order), read in place (no copy of a memory-mapped matrix). ``chunk_stats``: the store's
    (all rows, blocks of 2,048 columns, 2) counts and means (:attr:`MatrixStore.chunk_stats`), for the one-pass
    path over blocks the domain covers whole; without them every chunk takes two passes (same sums).
    """
    raw = _check_raw(raw)
    engine = resolve_engine(engine)
    seed = np.asarray(seed, dtype=np.float64)
    rows = _check_rows(rows, raw.shape[0])
    center = np.zeros(rows.size) if center is None else np.ascontiguousarray(center, dtype=np.float64)
    if center.shape != (rows.size,):
        raise ValueError(f"center must have one value per row ({rows.size}), got shape {center.shape}")
    if engine == "numpy" or rows.size == 0:
        return _np_pearson(raw if rows.size == raw.shape[0] and _is_all(rows) else raw[rows], encoding, plan, seed,
                           center)
    out = np.empty((rows.size, 6))
    if plan.dense:  # chunks on the store's blocks of _PEARSON_CHUNK columns (those chunk_stats describe)
        plan = ColumnPlan(plan.cols, plan.lo - plan.lo % _PEARSON_CHUNK, plan.hi, True)
    lay = _PearsonLayout.of(plan, seed)
    vectors = (lay.m, lay.s, lay.s2, lay.n_domain, lay.s_domain, lay.s2_domain, lay.ybar)
    block_rows = _PEARSON_ROWS
    if plan.dense:
        first = plan.lo // _PEARSON_CHUNK
        n_chunks = lay.n_domain.size
        whole = np.zeros(n_chunks, dtype=np.bool_)
        if chunk_stats is not None:
            stats = np.asarray(chunk_stats, dtype=np.float32)
            if stats.ndim != 3 or stats.shape[0] != raw.shape[0] or stats.shape[2] != 2 or \
                    stats.shape[1] != -(-raw.shape[1] // _PEARSON_CHUNK):
                raise ValueError(f"chunk_stats must be (rows, blocks of {_PEARSON_CHUNK} columns, 2) for a "
                                 f"{raw.shape} matrix, got {stats.shape}")
            ends = np.minimum((first + np.arange(n_chunks) + 1) * _PEARSON_CHUNK, raw.shape[1]) - plan.lo
            starts = np.arange(n_chunks) * _PEARSON_CHUNK
            whole = (ends <= plan.hi - plan.lo) & (lay.n_domain == ends - starts)
        else:
            stats = np.zeros((0, 0, 2), np.float32)
        _run_split(_nb_pearson_dense, rows.size, threads,
                   lambda a, b: (raw, rows, a, b, plan.lo, plan.hi, *vectors, whole, stats, first, center, out,
                                 block_rows))
    else:
        _run_split(_nb_pearson_gather, rows.size, threads,
                   lambda a, b: (raw, rows, a, b, plan.cols, *vectors, center, out, block_rows))
    return out


def pair_sums(raw, encoding: str, plan: ColumnPlan, w1: np.ndarray, w2: np.ndarray, engine: str | None = None,
              threads: int | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """(rows, 4) float64: ``sum w m1, sum v m1, sum w m2, sum v m2`` over ``plan``'s columns, for 0/1 weights
    ``w1``, ``w2`` aligned with ``plan.cols``; ``rows`` as for :func:`pearson_sums`."""
    raw = _check_raw(raw)
    engine = resolve_engine(engine)
    rows = _check_rows(rows, raw.shape[0])
    if engine == "numpy" or rows.size == 0:
        return _np_pair(raw if _is_all(rows) and rows.size == raw.shape[0] else raw[rows], encoding, plan, w1, w2)
    out = np.empty((rows.size, 4))
    m1, m2 = plan.layout(w1), plan.layout(w2)
    if plan.dense:
        _run_split(_nb_pair_dense, rows.size, threads, lambda a, b: (raw, rows, a, b, plan.lo, plan.hi, m1, m2, out))
    else:
        _run_split(_nb_pair_gather, rows.size, threads, lambda a, b: (raw, rows, a, b, plan.cols, m1, m2, out))
    return out


def column_sums(raw, encoding: str, lo: int, hi: int, cw: np.ndarray, cv: np.ndarray, cvv: np.ndarray,
                engine: str | None = None, threads: int | None = None) -> np.ndarray:
    """(6, hi - lo) float64: for each column ``c`` in ``[lo, hi)``, ``sum_i cw[i, j] w_ic + cv[i, j] v_ic``
    (+ ``cvv[i] v_ic^2`` for j = 2), over the rows whose coefficients are not all zero. Only sums 1, 2 and 5
    take a ``v`` term (``cv[:, 0]``, ``cv[:, 3]``, ``cv[:, 4]`` must be 0)."""
    raw = _check_raw(raw)
    engine = resolve_engine(engine)
    if np.any(np.asarray(cv)[:, [0, 3, 4]] != 0):
        raise ValueError("column_sums: cv[:, 0], cv[:, 3] and cv[:, 4] must be zero (those sums take no v term)")
    cw = np.ascontiguousarray(cw, dtype=np.float32)
    cv = np.ascontiguousarray(cv, dtype=np.float32)
    cvv = np.ascontiguousarray(cvv, dtype=np.float32)
    active = np.flatnonzero(np.any(cw != 0, axis=1) | np.any(cv != 0, axis=1) | (cvv != 0)).astype(np.int64)
    if engine == "numpy" or raw.shape[0] == 0 or active.size == 0:
        return _np_columns(raw, encoding, lo, hi, cw, cv, cvv, active)
    out = np.zeros((6, hi - lo))
    n_blocks = -(-(hi - lo) // _COLUMN_BLOCK)

    def args(a, b):  # column blocks a..b
        c0 = lo + a * _COLUMN_BLOCK
        c1 = min(lo + b * _COLUMN_BLOCK, hi)
        return raw, c0, c1, cw, cv, cvv, active, out[:, c0 - lo : c1 - lo]

    _run_split(_nb_columns, n_blocks, threads, args)
    return out


def streaming_pass(raw, engine: str | None = None, threads: int | None = None) -> int:
    """One plain read of every byte of ``raw`` (a byte sum): the memory-bandwidth floor of a query."""
    raw = _check_raw(raw)
    flat = raw.reshape(raw.shape[0], -1).view(np.uint8)
    if resolve_engine(engine) == "numba":
        out = np.empty(flat.shape[0], np.uint32)
        _run_split(_nb_stream, flat.shape[0], threads, lambda a, b: (flat, a, b, out))
        return int(out.sum())
    total = 0
    for start in range(0, flat.shape[0], 4096):
        total += int(flat[start : start + 4096].sum(dtype=np.uint64))
    return total


def encode_uint8_rows(x: np.ndarray, engine: str | None = None, threads: int | None = None):
    """``(codes, lo, hi)`` of float rows ``x`` (NaN = no data): square-root companded codes (see
    :func:`brainmap.search.matrix.encode_uint8`, which calls this with numba), row minima and maxima."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if resolve_engine(engine) != "numba" or x.ndim != 2:
        raise ValueError("encode_uint8_rows needs the numba engine and a 2-D array")
    codes = np.empty(x.shape, dtype=np.uint8)
    lo = np.empty(x.shape[0])
    hi = np.empty(x.shape[0])
    _run_split(_nb_encode_uint8, x.shape[0], threads, lambda a, b: (x, a, b, lo, hi, codes))
    return codes, lo, hi


def warm_up(engine: str | None = None) -> None:
    """Compile (or load from cache) the numba kernels for both encodings, so that a first query is not slow."""
    if resolve_engine(engine) != "numba":
        return
    for dtype, encoding in ((np.uint8, "uint8"), (np.float32, "float32")):
        raw = np.ones((2, 8), dtype=dtype)
        for dense in (True, False):
            plan = ColumnPlan.of(np.array([0, 5]), dense=dense)
            pearson_sums(raw, encoding, plan, np.array([0.5, -0.5]), np.zeros(2), "numba")
            pair_sums(raw, encoding, plan, np.ones(2), np.ones(2), "numba")
        column_sums(raw, encoding, 0, 8, np.ones((2, 6)), np.zeros((2, 6)), np.ones(2), "numba")
    streaming_pass(np.ones((2, 8), np.uint8), "numba")
    encode_uint8_rows(np.ones((2, 8), np.float32), "numba")
