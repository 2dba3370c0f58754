"""Expression grid searches over a :class:`~brainmap.search.matrix.MatrixStore`: differential, correlation and
seed-point (AGEA) searches, as Allen's ``service::mouse_differential``, ``service::mouse_correlation`` and
``service::mouse_agea``.

Differential search (``mouse_differential``: ``structures1`` = target, ``structures2`` = contrast)
    The target voxel set is every voxel of any target structure (with descendants), the contrast voxel set
    likewise. For each data set: ``target_mean`` and ``contrast_mean`` are its mean values over the voxels of
    each set where it has data, and ``fold_change = target_mean / contrast_mean``; rows sorted by fold change,
    descending. A voxel may be in both sets (e.g. thalamus against grey matter).

    Thresholds (``threshold1`` for the target, ``threshold2`` for the contrast): Allen documents each as a
    "comma delimited integer pair indicating thresholds for domain 1 / 2" and its web application sends
    ``threshold1=0,50``, ``threshold2=1,50``. We apply a pair ``(lo, hi)`` to the domain's mean: it is clamped
    into ``[lo, hi]`` before the ratio (with Allen's pairs a contrast mean below 1 counts as 1, so genes absent
    from the contrast rank by their target expression instead of all being infinite, and means above 50 --
    usually artefacts -- count as 50). The rows report the unclamped means. Without thresholds the ratio is
    plain: a contrast mean of 0 gives an infinite fold change (ranked first) and 0/0 leaves the row out.
    Rows with no data in the target or in the contrast set are left out; ``total_rows`` counts the rest.

Correlation search (``mouse_correlation``: ``row`` = the seed data set, ``structures`` = the domain)
    The domain is every voxel of the given structures (default: the whole brain) among the store's columns;
    for each data set, Pearson's r with the seed over the domain voxels where both have data (at least
    ``min_voxels``; rows with fewer, or with no variance there, are left out). Sorted by r, descending by
    default (``sort_order="asc"`` for anti-correlated patterns first). The seed itself ranks first (r = 1).

Seed-point search (``mouse_agea``: ``seed_point`` in um)
    The seed voxel is the grid voxel containing the point; for every voxel of the domain, Pearson's r between
    its values and the seed voxel's across the data sets that have data at both (at least
    ``min_data_sets``; by default half of the data sets that have data at the seed, so that a voxel that only a
    few data sets cover -- e.g. the right hemisphere, where sagittal data sets have none -- cannot reach a high
    r by chance). Sorted by r, descending; ``SeedPointRanking.volume()`` gives the map as a volume.

Ties are broken by data set id (by flat voxel index for seed-point searches), so that paging never skips or
repeats a row. Every search validates its inputs: an unknown structure (``UnknownStructureError``), an unknown
data set (``UnknownDataSetError``), an empty domain, a seed without data in the domain, a point outside the
brain or a bad threshold or page (``SearchInputError``).

How it is fast: each search is one fused pass over the matrix in its stored encoding (see
:mod:`brainmap.search._kernels`), computing a handful of sums per row from which r or the means follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np

from brainmap.search import _kernels
from brainmap.search.grid import SearchGrid
from brainmap.search.matrix import GridSpec, MatrixStore
from brainmap.search.results import (
    DEFAULT_NUM_ROWS,
    CorrelationRow,
    DifferentialRow,
    Ranking,
    SearchInputError,
    SearchPage,
    VoxelCorrelationRow,
    rank_order,
)

#: A row is "constant" over the compared voxels when its variance there is below this fraction of its mean
#: square about the sums' reference. The Pearson kernel centres every chunk on the row's own mean (a constant row
#: sums to exactly 0), so only float64 rounding is left: 1e-12.
PEARSON_VARIANCE_FLOOR = 1e-12
#: The same for the seed-point column sums, which are float32 partial sums about the rows' stored centres.
COLUMN_VARIANCE_FLOOR = 1e-7


# ------------------------------------------------------------------------------------------------ helpers
def parse_threshold(value: Any, name: str) -> tuple[float, float] | None:
    """``None`` or a ``(lo, hi)`` pair from a pair of numbers or Allen's ``"lo,hi"`` text."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    else:
        try:
            parts = list(value)
        except TypeError:
            raise SearchInputError(f"{name} must be a pair (lo, hi) or 'lo,hi', got {value!r}") from None
    if len(parts) != 2:
        raise SearchInputError(f"{name} must be a pair (lo, hi) or 'lo,hi', got {value!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except (TypeError, ValueError):
        raise SearchInputError(f"{name} must hold two numbers, got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise SearchInputError(f"{name} must be finite with lo <= hi, got {value!r}")
    return lo, hi


def pearson_from_sums(sums: np.ndarray, min_n: int,
                      variance_floor: float = PEARSON_VARIANCE_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """``(r, n)`` from (k, 6) sums ``n, Sx, Sxx, Sy, Syy, Sxy``; r is NaN where n < min_n or a variance is at most
    ``variance_floor`` times its mean square about the sums' reference (see :data:`PEARSON_VARIANCE_FLOOR`)."""
    sums = np.asarray(sums, dtype=np.float64)
    n, sx, sxx, sy, syy, sxy = sums.T
    with np.errstate(invalid="ignore", divide="ignore"):
        vx = n * sxx - sx * sx
        vy = n * syy - sy * sy
        r = (n * sxy - sx * sy) / np.sqrt(vx * vy)
    constant = (vx <= variance_floor * np.abs(n * sxx)) | (vy <= variance_floor * np.abs(n * syy))
    r[(n < min_n) | constant | ~np.isfinite(r)] = np.nan
    np.clip(r, -1.0, 1.0, out=r)
    return r, np.rint(n).astype(np.int64)


#: Added to both sides of a quantization bound: the rounding of the two computations of r (float32 partial
#: sums over chunks centred on their own means, added in float64: ~1e-7 of r; 100 times that, to be safe).
BOUND_ROUNDING = 1e-5


def quantization_bounds(sums: np.ndarray, center: np.ndarray, r: np.ndarray, min_n: int,
                        rounding: float = BOUND_ROUNDING) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)``: per row of an 8-bit store, bounds on the r that the float32 values it was encoded from
    give with the same seed, from the 8-bit pass's own sums (``pearson_sums`` of ``v = q**2`` about
    ``center``) and its r. NaN where fewer than ``min_n`` voxels are compared (no r either way); -1, 1 where
    the 8-bit row gives no r or the bound says nothing.

    The bound. A value ``x`` of a row with offset ``o`` and scale ``c`` gets the code ``q`` whose square is
    nearest to ``u = 1 + (x - min) / c``, and ``x = o + c u``, so ``|x - (o + c q**2)| = c |u - q**2| <=
    c (q + 1/2)`` (the squares next to ``q**2`` are ``2q - 1`` and ``2q + 1`` away; 0.51 here, for the
    float32 rounding of ``u``). Over the voxels compared, the error vector ``e`` of the row then has
    ``|e|**2 <= c**2 sum (q + 0.51)**2 <= c**2 (S + 1.02 sqrt(n S) + 0.2601 n)`` with ``S = sum q**2``
    (Cauchy-Schwarz for ``sum q``). Pearson's r is the cosine of the angle between the two rows centred
    over those voxels; centring is an orthogonal projection, so it does not lengthen ``e``, and adding ``e``
    to the 8-bit row centred (length ``c sqrt(M)``, ``M`` its centred sum of squares of ``q**2``) turns it by
    at most ``theta = arcsin(rho)``, ``rho = |e| / (c sqrt(M))`` (the scale ``c`` cancels). The seed is the
    same in both (read from the float32 store), so the float32 angle to it is within ``theta`` of the 8-bit
    angle ``phi = arccos(r)``: ``cos(phi + theta) <= r_float32 <= cos(phi - theta)``, widened by
    ``rounding`` for the arithmetic of both passes. A worst case (every value half a step off); real
    differences are ~20 times smaller.
    """
    sums = np.asarray(sums, dtype=np.float64)
    n, sx, sxx = sums[:, 0], sums[:, 1], sums[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        centred = sxx - sx * sx / n
        total = np.maximum(sx + n * np.asarray(center, dtype=np.float64), 0.0)  # sum of q**2
        error2 = total + 1.02 * np.sqrt(n * total) + 0.2601 * n
        rho = np.sqrt(error2 / centred)
        theta = np.arcsin(np.clip(rho, 0.0, 1.0))
        phi = np.arccos(np.clip(r, -1.0, 1.0))
        lower = np.cos(np.minimum(phi + theta, np.pi)) - rounding
        upper = np.cos(np.maximum(phi - theta, 0.0)) + rounding
    vague = np.isnan(r) | ~(centred > 0) | ~(rho < 1.0)
    lower[vague], upper[vague] = -1.0, 1.0
    lower[n < min_n], upper[n < min_n] = np.nan, np.nan
    return np.maximum(lower, -1.0), np.minimum(upper, 1.0)


def _fold_changes(sums: np.ndarray, offset: np.ndarray, scale: np.ndarray, plan: "DifferentialPlan"):
    """``(fold, target_mean, contrast_mean, n_target, n_contrast)`` from (k, 4) pair sums; fold is NaN where a
    set has no data or for 0/0."""
    n1, s1, n2, s2 = np.asarray(sums, dtype=np.float64).T
    with np.errstate(invalid="ignore", divide="ignore"):
        mean1 = offset + scale * (s1 / n1)
        mean2 = offset + scale * (s2 / n2)
        c1 = mean1 if plan.threshold1 is None else np.clip(mean1, *plan.threshold1)
        c2 = mean2 if plan.threshold2 is None else np.clip(mean2, *plan.threshold2)
        fold = c1 / c2
    fold[(n1 < 0.5) | (n2 < 0.5)] = np.nan
    return fold, mean1, mean2, n1, n2


def fold_change_bounds(sums: np.ndarray, scale: np.ndarray, mean1: np.ndarray, mean2: np.ndarray,
                       plan: "DifferentialPlan", rounding: float = BOUND_ROUNDING) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)``: per row of an 8-bit store, bounds on the fold change its float32 values give, from the
    8-bit pass's pair sums (``n1, sum q**2, n2, sum q**2``) and means. Each value is within ``scale (q + 0.51)``
    of its 8-bit value (see :func:`quantization_bounds`), so a mean over ``n`` voxels is within
    ``scale (sqrt(S / n) + 0.51)`` (``S = sum q**2``; Cauchy-Schwarz); clamping to a threshold pair is monotone,
    and the ratio's bounds follow from the two intervals (none, -inf..inf, when the contrast interval reaches 0).
    Widened by ``rounding`` (relative). NaN where a domain has no data (no fold change either way)."""
    sums = np.asarray(sums, dtype=np.float64)
    n1, s1, n2, s2 = sums.T
    with np.errstate(invalid="ignore", divide="ignore"):
        e1 = scale * (np.sqrt(s1 / n1) + 0.51)
        e2 = scale * (np.sqrt(s2 / n2) + 0.51)
        a_lo, a_hi, b_lo, b_hi = mean1 - e1, mean1 + e1, mean2 - e2, mean2 + e2
        if plan.threshold1 is not None:
            a_lo, a_hi = np.clip(a_lo, *plan.threshold1), np.clip(a_hi, *plan.threshold1)
        if plan.threshold2 is not None:
            b_lo, b_hi = np.clip(b_lo, *plan.threshold2), np.clip(b_hi, *plan.threshold2)
        corners = np.stack([a_lo / b_lo, a_lo / b_hi, a_hi / b_lo, a_hi / b_hi])
        lower = np.min(corners, axis=0)
        upper = np.max(corners, axis=0)
    lower = lower - rounding * np.abs(lower)
    upper = upper + rounding * np.abs(upper)
    vague = ~(b_lo > 0) | np.isnan(lower) | np.isnan(upper)
    lower[vague], upper[vague] = -np.inf, np.inf
    none = (n1 < 0.5) | (n2 < 0.5)
    lower[none], upper[none] = np.nan, np.nan
    return lower, upper


def _check_min(value: Any, name: str, least: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SearchInputError(f"{name} must be an integer, got {value!r}") from None
    if number < least or number != value:
        raise SearchInputError(f"{name} must be an integer >= {least}, got {value!r}")
    return number


def _check_sort_order(sort_order: str) -> bool:
    if sort_order not in ("asc", "desc"):
        raise SearchInputError(f"sort_order must be 'asc' or 'desc', got {sort_order!r}")
    return sort_order == "desc"


# ------------------------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class CorrelationPlan:
    """What a correlation pass needs: the columns (domain voxels where the seed has data) and the seed there."""

    seed_row: int
    plan: _kernels.ColumnPlan
    seed_values: np.ndarray  # centred and scaled, aligned with plan.cols
    min_voxels: int
    descending: bool


@dataclass(frozen=True)
class DifferentialPlan:
    plan: _kernels.ColumnPlan
    w_target: np.ndarray
    w_contrast: np.ndarray
    threshold1: tuple[float, float] | None
    threshold2: tuple[float, float] | None


@dataclass(frozen=True)
class SeedPointPlan:
    seed_voxel: int
    seed_column: int
    columns: np.ndarray  # domain columns
    lo: int
    hi: int
    cw: np.ndarray
    cv: np.ndarray
    cvv: np.ndarray
    min_data_sets: int
    descending: bool


class ExpressionSearch:
    """The searches over one store (and its grid, for structures and points).

    Parameters
    ----------
    store : MatrixStore
    grid : SearchGrid, optional
        Default: the 200 um ISH grid when the store is on it (otherwise required).
    engine : "numba", "numpy" or None (default: :func:`brainmap.search._kernels.default_engine`)
    threads : threads per pass (default: the usable cores)
    exact : MatrixStore, optional
        A float32 store with the same rows and columns as ``store`` (e.g. the float32 original of an 8-bit
        store). The 8-bit pass ranks every row (correlations with the seed read from ``exact``); then every row
        whose float32 score can reach the first ``exact_rows`` -- by a bound on the 8-bit quantization error
        (:func:`quantization_bounds`, :func:`fold_change_bounds`), not by a guess -- is re-scored from
        ``exact``, so the first ``exact_rows`` rows are float32's, in float32's order, with float32's values.
        Only those rows of ``exact`` are read, in place (memory-mapped); ``last_rescored`` says how many.
    exact_rows : int
        How many rows of a ranking are made exact (default 100).
    """

    def __init__(self, store: MatrixStore, grid: SearchGrid | None = None, engine: str | None = None,
                 threads: int | None = None, exact: MatrixStore | None = None, exact_rows: int = 100):
        if grid is None:
            if store.grid != GridSpec.ish():
                raise ValueError(f"store {store.path} is on grid {store.grid}; pass its SearchGrid")
            grid = SearchGrid.ish()
        if GridSpec.of(grid) != store.grid:
            raise ValueError(f"grid {GridSpec.of(grid)} differs from the store's {store.grid}")
        self.store = store
        self.grid = grid
        self.engine = _kernels.resolve_engine(engine)
        self.threads = threads
        if exact is not None:
            if exact.encoding != "float32":
                raise ValueError(f"the exact store must be float32, {exact.path} is {exact.encoding}")
            if not (np.array_equal(exact.columns, store.columns) and np.array_equal(exact.data_set_ids, store.data_set_ids)):
                raise ValueError(f"the exact store {exact.path} must have the same rows and columns as {store.path}")
            if exact is store or store.encoding == "float32":
                exact = None
        self.exact = exact
        self.exact_rows = _check_min(exact_rows, "exact_rows", 1)
        self.last_rescored = 0
        self._domains: dict[tuple[int, ...], tuple[int, np.ndarray]] = {}

    # ------------------------------------------------------------------ domains
    def domain_columns(self, structures: Any = None, what: str = "domain") -> np.ndarray:
        """Sorted column positions of the voxels of ``structures`` (default: the whole brain) in the store."""
        if structures is None:
            ids = tuple(self.grid.structure_tree.root_ids())
            label = "the whole brain"
        else:
            ids = tuple(sorted(self.grid.resolve_structures(structures)))
            label = f"structure(s) {structures!r}"
        cached = self._domains.get(ids)
        if cached is None:
            voxels = self.grid.structure_voxels(list(ids))
            cached = (voxels.size, self.store.column_positions(voxels))
            if len(self._domains) > 256:
                self._domains.clear()
            self._domains[ids] = cached
        n_voxels, cols = cached
        if cols.size == 0:
            raise SearchInputError(
                f"the {what} ({label}: {n_voxels} grid voxel(s)) has no voxel among this store's "
                f"{self.store.n_columns:,} columns"
            )
        return cols

    @cached_property
    def _acronyms(self) -> dict[int, str]:
        return self.grid.structure_tree.get_acronym_map()

    def _text(self, name: str) -> np.ndarray:
        """Row metadata ``name`` as an object array (all None if the store has no such column)."""
        column = self.store.metadata_array(name)
        return np.full(self.store.n_rows, None, dtype=object) if column is None else column

    # ------------------------------------------------------------------ correlation
    def plan_correlation(self, seed: Any, domain: Any = None, min_voxels: int = 3,
                         sort_order: str = "desc") -> CorrelationPlan:
        descending = _check_sort_order(sort_order)
        min_voxels = _check_min(min_voxels, "min_voxels", 2)
        seed_row = self.store.row_index(seed)
        cols = self.domain_columns(domain)
        # With an exact store the seed is read from it: both passes then use the same seed, and only the rows'
        # quantization separates the 8-bit r from float32's (see _refine_correlation).
        values = (self.store if self.exact is None else self.exact).decode(seed_row)[cols]
        has = ~np.isnan(values)
        if has.sum() < min_voxels:
            raise SearchInputError(
                f"seed data set {self.store.data_set_ids[seed_row]} has data in {int(has.sum())} of the "
                f"{cols.size} domain voxels; at least {min_voxels} are needed"
            )
        cols, values = cols[has], values[has]
        centred = values - values.mean()
        spread = np.abs(centred).max()
        if spread == 0:
            raise SearchInputError(
                f"seed data set {self.store.data_set_ids[seed_row]} is constant over the domain: no correlation is defined"
            )
        return CorrelationPlan(seed_row, _kernels.ColumnPlan.of(cols), centred / spread, min_voxels, descending)

    def correlation_sums(self, plan: CorrelationPlan) -> np.ndarray:
        return _kernels.pearson_sums(self.store.raw, self.store.encoding, plan.plan, plan.seed_values,
                                     self.store.row_center, self.engine, self.threads,
                                     chunk_stats=self.store.chunk_stats)

    def finish_correlation(self, plan: CorrelationPlan, sums: np.ndarray) -> Ranking[CorrelationRow]:
        r, n = pearson_from_sums(sums, plan.min_voxels)
        if self.exact is not None:
            self._refine_correlation(plan, sums, r, n)
        ids = self.store.data_set_ids
        order = rank_order(r, ids, plan.descending)
        genes, planes = self._text("gene"), self._text("plane")

        def make_rows(positions: np.ndarray) -> list[CorrelationRow]:
            return [CorrelationRow(*fields) for fields in zip(ids[positions].tolist(), genes[positions].tolist(),
                                                              planes[positions].tolist(), r[positions].tolist(),
                                                              n[positions].tolist())]

        return Ranking(order, lambda p: make_rows(np.array([p]))[0],
                       f"correlation with data set {ids[plan.seed_row]} over {plan.plan.cols.size} voxels", make_rows)

    def _exact_head(self, key_lo: np.ndarray, key_hi: np.ndarray, rescore: Callable[[np.ndarray], np.ndarray]) -> int:
        """Re-score (``rescore(positions)`` -> their float32 keys, NaN = left out) every row whose float32 key
        (larger = ranked earlier) can reach the first ``exact_rows``, given bounds ``key_lo <= key <= key_hi``
        (NaN: never ranked). Let ``T`` be the ``k``-th largest lower bound: once ``k`` re-scored rows have float32
        keys ``>= T``, every row with ``key_hi < T`` ranks after them, so the head of float32's ranking is among
        the re-scored rows. Returns how many rows were re-scored."""
        done = np.zeros(key_lo.size, dtype=bool)
        invalid = np.zeros(key_lo.size, dtype=bool)
        keys = np.full(key_lo.size, np.nan)
        while True:
            sure = np.flatnonzero(~np.isnan(key_lo) & ~invalid)
            k = min(self.exact_rows, sure.size)
            if k == 0:
                break
            threshold = np.partition(key_lo[sure], sure.size - k)[sure.size - k]
            candidates = np.flatnonzero(key_hi >= threshold)  # NaN bounds never qualify
            todo = candidates[~done[candidates]]
            if todo.size:
                keys[todo] = rescore(todo)
                done[todo] = True
                invalid[todo] = np.isnan(keys[todo])
            # A row float32 leaves out (an 8-bit row that float32 finds constant) does not reach T: then T is
            # lowered (it is taken over the other rows) and the rows it adds are re-scored too.
            if np.count_nonzero(keys[candidates] >= threshold) >= k or not todo.size:
                break
        return int(done.sum())

    def _refine_correlation(self, plan: CorrelationPlan, sums: np.ndarray, r: np.ndarray, n: np.ndarray) -> None:
        """Make the first ``exact_rows`` rows of an 8-bit correlation ranking float32's (ids, order, r, n): the
        rows whose float32 r can reach them (:func:`quantization_bounds`) are re-scored from the float32 store."""
        exact = self.exact
        assert exact is not None
        lower, upper = quantization_bounds(sums, self.store.row_center, r, plan.min_voxels)
        sign = 1.0 if plan.descending else -1.0

        def rescore(todo: np.ndarray) -> np.ndarray:
            rows_sums = _kernels.pearson_sums(exact.raw, "float32", plan.plan, plan.seed_values,
                                              exact.row_center[todo], self.engine, self.threads, rows=todo,
                                              chunk_stats=exact.chunk_stats)
            r[todo], n[todo] = pearson_from_sums(rows_sums, plan.min_voxels)
            return sign * r[todo]

        key_lo, key_hi = (lower, upper) if plan.descending else (-upper, -lower)
        self.last_rescored = self._exact_head(key_lo, key_hi, rescore)

    def correlation(self, seed: Any, domain: Any = None, *, min_voxels: int = 3,
                    sort_order: str = "desc") -> Ranking[CorrelationRow]:
        """Pearson's r of every data set with data set ``seed`` over ``domain`` (structures; default the brain)."""
        plan = self.plan_correlation(seed, domain, min_voxels, sort_order)
        return self.finish_correlation(plan, self.correlation_sums(plan))

    # ------------------------------------------------------------------ differential
    def plan_differential(self, target: Any, contrast: Any, threshold1: Any = None,
                          threshold2: Any = None) -> DifferentialPlan:
        t1 = parse_threshold(threshold1, "threshold1")
        t2 = parse_threshold(threshold2, "threshold2")
        if target is None or contrast is None:
            raise SearchInputError("a differential search needs target and contrast structures")
        c1 = self.domain_columns(target, "target set")
        c2 = self.domain_columns(contrast, "contrast set")
        union = np.union1d(c1, c2)
        return DifferentialPlan(_kernels.ColumnPlan.of(union), np.isin(union, c1).astype(np.float64),
                                np.isin(union, c2).astype(np.float64), t1, t2)

    def differential_sums(self, plan: DifferentialPlan) -> np.ndarray:
        return _kernels.pair_sums(self.store.raw, self.store.encoding, plan.plan, plan.w_target, plan.w_contrast,
                                  self.engine, self.threads)

    def finish_differential(self, plan: DifferentialPlan, sums: np.ndarray) -> Ranking[DifferentialRow]:
        store = self.store
        fold, mean1, mean2, n1, n2 = _fold_changes(sums, store.row_offset, store.row_scale, plan)
        if self.exact is not None:
            self._refine_differential(plan, sums, fold, mean1, mean2, n1, n2)
        ids = store.data_set_ids
        order = rank_order(fold, ids, descending=True)
        k1, k2 = np.rint(n1).astype(np.int64), np.rint(n2).astype(np.int64)
        genes, planes = self._text("gene"), self._text("plane")

        def make_rows(positions: np.ndarray) -> list[DifferentialRow]:
            return [DifferentialRow(*fields) for fields in zip(
                ids[positions].tolist(), genes[positions].tolist(), planes[positions].tolist(),
                fold[positions].tolist(), mean1[positions].tolist(), mean2[positions].tolist(),
                k1[positions].tolist(), k2[positions].tolist())]

        return Ranking(order, lambda p: make_rows(np.array([p]))[0], "differential search", make_rows)

    def _refine_differential(self, plan: DifferentialPlan, sums: np.ndarray, fold: np.ndarray, mean1: np.ndarray,
                             mean2: np.ndarray, n1: np.ndarray, n2: np.ndarray) -> None:
        """Make the first ``exact_rows`` rows of an 8-bit differential ranking float32's: the rows whose float32
        fold change can reach them (:func:`fold_change_bounds`) are re-scored from the float32 store."""
        exact = self.exact
        assert exact is not None
        lower, upper = fold_change_bounds(sums, self.store.row_scale, mean1, mean2, plan)

        def rescore(todo: np.ndarray) -> np.ndarray:
            rows_sums = _kernels.pair_sums(exact.raw, "float32", plan.plan, plan.w_target, plan.w_contrast,
                                           self.engine, self.threads, rows=todo)
            f, m1, m2, k1, k2 = _fold_changes(rows_sums, np.zeros(todo.size), np.ones(todo.size), plan)
            fold[todo], mean1[todo], mean2[todo], n1[todo], n2[todo] = f, m1, m2, k1, k2
            return f

        self.last_rescored = self._exact_head(lower, upper, rescore)

    def differential(self, target: Any, contrast: Any, *, threshold1: Any = None,
                     threshold2: Any = None) -> Ranking[DifferentialRow]:
        """Fold change of every data set: mean over the ``target`` structures' voxels / mean over ``contrast``'s."""
        plan = self.plan_differential(target, contrast, threshold1, threshold2)
        return self.finish_differential(plan, self.differential_sums(plan))

    def differential_columns(self, target_columns: np.ndarray, contrast_columns: np.ndarray, *,
                             threshold1: Any = None, threshold2: Any = None,
                             what: str = "differential search") -> Ranking[DifferentialRow]:
        """Fold change of every data set between two sets of store columns (sorted positions), as
        :meth:`differential` does between the voxels of two structure sets."""
        t1 = parse_threshold(threshold1, "threshold1")
        t2 = parse_threshold(threshold2, "threshold2")
        for cols, name in ((target_columns, "target"), (contrast_columns, "contrast")):
            if cols.size == 0:
                raise SearchInputError(f"the {name} voxels of the {what} are empty")
        union = np.union1d(target_columns, contrast_columns)
        plan = DifferentialPlan(_kernels.ColumnPlan.of(union), np.isin(union, target_columns).astype(np.float64),
                                np.isin(union, contrast_columns).astype(np.float64), t1, t2)
        return self.finish_differential(plan, self.differential_sums(plan))

    def gene_finder(self, seed_point: Sequence[float], correlation_threshold1: float,
                    correlation_threshold2: float, *, threshold1: Any = None, threshold2: Any = None,
                    domain: Any = None) -> Ranking[DifferentialRow]:
        """AGEA's gene finder: data sets by fold change of mean expression between the voxels whose correlation
        with the seed voxel is at least ``correlation_threshold2`` (the target, the seed's cluster) and those at
        least ``correlation_threshold1`` (the contrast), with ``threshold1``/``threshold2`` clamping the means
        as :meth:`differential` does."""
        for value, name in ((correlation_threshold1, "correlation_threshold1"),
                            (correlation_threshold2, "correlation_threshold2")):
            if not -1.0 <= float(value) <= 1.0:
                raise SearchInputError(f"{name} must be a correlation in [-1, 1], got {value!r}")
        ranking = self.seed_point(seed_point, domain)
        r = np.nan_to_num(ranking.r, nan=-2.0)
        target = self.store.column_positions(ranking.voxels[r >= float(correlation_threshold2)])
        contrast = self.store.column_positions(ranking.voxels[r >= float(correlation_threshold1)])
        return self.differential_columns(target, contrast, threshold1=threshold1, threshold2=threshold2,
                                         what="gene finder (voxels correlated with the seed)")

    # ------------------------------------------------------------------ seed point (AGEA)
    def plan_seed_point(self, seed_point: Sequence[float], domain: Any = None, min_data_sets: int | None = None,
                        sort_order: str = "desc") -> SeedPointPlan:
        descending = _check_sort_order(sort_order)
        if min_data_sets is not None:
            min_data_sets = _check_min(min_data_sets, "min_data_sets", 2)
        voxel = self.grid.voxel_at_point(seed_point)
        found = self.store.column_positions([voxel])
        if found.size == 0:
            raise SearchInputError(
                f"seed point {list(seed_point)} um is in voxel {self.grid.voxel_ijk(voxel).tolist()}, which is not "
                f"one of this store's {self.store.n_columns:,} voxels (outside its coverage set?)"
            )
        column = int(found[0])
        cols = self.domain_columns(domain)
        store = self.store
        raw_column = np.asarray(store.raw[:, column])
        if store.encoding == "uint8":
            q = raw_column.astype(np.float64)
            has = raw_column != 0
            c = store.row_offset + store.row_scale * q * q
        else:
            c = raw_column.astype(np.float64)
            has = ~np.isnan(c)
        n_seed = int(has.sum())
        if min_data_sets is None:
            min_data_sets = max(3, -(-n_seed // 2))
        if n_seed < min_data_sets:
            raise SearchInputError(
                f"the seed voxel {self.grid.voxel_ijk(voxel).tolist()} has data in {n_seed} data set(s); "
                f"at least {min_data_sets} are needed"
            )
        c = np.where(has, c - c[has].mean(), 0.0)
        spread = np.abs(c).max()
        if spread == 0:
            raise SearchInputError("the seed voxel has the same value in every data set: no correlation is defined")
        c /= spread
        p = has.astype(np.float64)
        a, b = store.row_scale * p, store.row_offset * p
        n = store.n_rows
        cw = np.zeros((n, 6))
        cv = np.zeros((n, 6))
        cw[:, 0] = p
        cw[:, 1] = b
        cw[:, 2] = b * store.row_offset
        cw[:, 3] = c
        cw[:, 4] = c * c
        cw[:, 5] = store.row_offset * c
        cv[:, 1] = a
        cv[:, 2] = 2.0 * a * store.row_offset
        cv[:, 5] = store.row_scale * c
        cvv = a * store.row_scale
        return SeedPointPlan(voxel, column, cols, int(cols[0]), int(cols[-1]) + 1, cw, cv, cvv, min_data_sets, descending)

    def seed_point_sums(self, plan: SeedPointPlan) -> np.ndarray:
        return _kernels.column_sums(self.store.raw, self.store.encoding, plan.lo, plan.hi, plan.cw, plan.cv, plan.cvv,
                                    self.engine, self.threads)

    def finish_seed_point(self, plan: SeedPointPlan, sums: np.ndarray) -> "SeedPointRanking":
        sums = np.asarray(sums)[:, plan.columns - plan.lo]
        r, n = pearson_from_sums(sums.T, plan.min_data_sets, COLUMN_VARIANCE_FLOOR)
        voxels = self.store.columns[plan.columns]
        order = rank_order(r, voxels, plan.descending)
        grid = self.grid
        structure = grid.structure_id_at(voxels)
        acronyms = self._acronyms

        def make_rows(positions: np.ndarray) -> list[VoxelCorrelationRow]:
            v = voxels[positions]
            ijk = grid.voxel_ijk(v)
            centre = grid.voxel_center_um(v)
            sid = structure[positions].tolist()
            return [VoxelCorrelationRow(a, tuple(b), tuple(c), d, acronyms.get(d), e, f) for a, b, c, d, e, f in zip(
                v.tolist(), ijk.tolist(), centre.tolist(), sid, r[positions].tolist(), n[positions].tolist())]

        return SeedPointRanking(order, lambda k: make_rows(np.array([k]))[0], grid, voxels, r, n, plan.seed_voxel,
                                make_rows)

    def seed_point(self, seed_point: Sequence[float], domain: Any = None, *, min_data_sets: int | None = None,
                   sort_order: str = "desc") -> "SeedPointRanking":
        """Pearson's r, across data sets, of every domain voxel with the voxel at ``seed_point`` (AP, DV, LR um)."""
        plan = self.plan_seed_point(seed_point, domain, min_data_sets, sort_order)
        return self.finish_seed_point(plan, self.seed_point_sums(plan))


class SeedPointRanking(Ranking[VoxelCorrelationRow]):
    """The voxels of a seed-point search, best first; also the whole map as a volume."""

    def __init__(self, order: np.ndarray, make_row: Callable[[int], VoxelCorrelationRow], grid: SearchGrid,
                 voxels: np.ndarray, r: np.ndarray, n: np.ndarray, seed_voxel: int,
                 make_rows: Callable[[np.ndarray], list[VoxelCorrelationRow]] | None = None):
        super().__init__(order, make_row, f"seed-point correlation with voxel {seed_voxel}", make_rows)
        self.grid = grid
        self.voxels = voxels
        self.r = r
        self.n = n
        self.seed_voxel = seed_voxel

    def volume(self, fill: float = np.nan) -> np.ndarray:
        """The correlation map, (AP, DV, LR) float32; ``fill`` outside the domain and where r is undefined."""
        return self.grid.to_volume(self.r.astype(np.float32), self.voxels, fill=fill).astype(np.float32)


# ------------------------------------------------------------------------------------------------ Allen-style calls
def differential_search(store: MatrixStore, target: Any, contrast: Any, *, threshold1: Any = None,
                        threshold2: Any = None, start_row: int = 0, num_rows: int = DEFAULT_NUM_ROWS,
                        grid: SearchGrid | None = None, engine: str | None = None) -> SearchPage[DifferentialRow]:
    """One page of a differential search (``service::mouse_differential``); see :class:`ExpressionSearch`."""
    from brainmap.search.results import check_page

    check_page(start_row, num_rows)
    ranking = ExpressionSearch(store, grid, engine).differential(target, contrast, threshold1=threshold1,
                                                                 threshold2=threshold2)
    return ranking.page(start_row, num_rows)


def correlation_search(store: MatrixStore, seed: Any, domain: Any = None, *, sort_order: str = "desc",
                       min_voxels: int = 3, start_row: int = 0, num_rows: int = DEFAULT_NUM_ROWS,
                       grid: SearchGrid | None = None, engine: str | None = None) -> SearchPage[CorrelationRow]:
    """One page of a correlation search (``service::mouse_correlation``); see :class:`ExpressionSearch`."""
    from brainmap.search.results import check_page

    check_page(start_row, num_rows)
    ranking = ExpressionSearch(store, grid, engine).correlation(seed, domain, min_voxels=min_voxels,
                                                                sort_order=sort_order)
    return ranking.page(start_row, num_rows)


def seed_point_search(store: MatrixStore, seed_point: Sequence[float], domain: Any = None, *,
                      min_data_sets: int | None = None, start_row: int = 0, num_rows: int = DEFAULT_NUM_ROWS,
                      grid: SearchGrid | None = None, engine: str | None = None) -> SearchPage[VoxelCorrelationRow]:
    """One page of a seed-point (AGEA) search (``service::mouse_agea``); see :class:`ExpressionSearch`."""
    from brainmap.search.results import check_page

    check_page(start_row, num_rows)
    ranking = ExpressionSearch(store, grid, engine).seed_point(seed_point, domain, min_data_sets=min_data_sets)
    return ranking.page(start_row, num_rows)


__all__ = [
    "CorrelationPlan",
    "DifferentialPlan",
    "ExpressionSearch",
    "SeedPointPlan",
    "SeedPointRanking",
    "correlation_search",
    "differential_search",
    "parse_threshold",
    "pearson_from_sums",
    "seed_point_search",
]
