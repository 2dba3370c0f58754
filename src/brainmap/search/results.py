"""Typed search results, Allen-style paging, and the errors searches raise.

Every search ranks *all* the rows it can score, once, into a fixed order (by its score, ties broken by
data set id, then by position), and a page is a slice of that order: ``page(start_row, num_rows)`` for
consecutive starts never skips or repeats a row, whatever the page sizes. The page mirrors Allen's
response envelope (``success``, ``start_row``, ``num_rows``, ``total_rows``, ``msg``).
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

import numpy as np
import pandas as pd

from brainmap.errors import BrainmapError

#: Allen's default page size for its search services (``num_rows``).
DEFAULT_NUM_ROWS = 2000


class UnknownDataSetError(BrainmapError, LookupError):
    """A data set id (a row of a search matrix) is not in the store."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else "unknown data set"


class MissingSearchDataError(BrainmapError, LookupError):
    """A search needs data that has not been built (a search store, the unionize rows); the message names the
    command that builds it. HTTP 404 on a server."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else "missing search data"


#: How a data directory gets its search stores (for messages).
BUILD_HINT = "brainmap load DATA_SET_FOLDERS --data-dir DATA_DIR builds it from the data sets' grid files"


class SearchInputError(BrainmapError, ValueError):
    """A search parameter is invalid: an empty domain, a seed with no data there, a point outside the brain,
    a bad threshold or page."""


# ------------------------------------------------------------------------------------------------ rows
# Plain slotted dataclasses: a page builds up to thousands of them (a frozen dataclass is ~8x slower to make).
@dataclass(slots=True)
class DifferentialRow:
    """One data set of a differential search.

    ``fold_change = target_mean / contrast_mean`` after the thresholds (if any) clamp the two means;
    ``target_mean`` and ``contrast_mean`` are the unclamped means of the data set's values over the voxels of
    each set that have data, and ``target_voxels`` / ``contrast_voxels`` count those voxels.
    """

    data_set_id: int
    gene: str | None
    plane: str | None
    fold_change: float
    target_mean: float
    contrast_mean: float
    target_voxels: int
    contrast_voxels: int


@dataclass(slots=True)
class CorrelationRow:
    """One data set of a correlation search: Pearson's ``r`` with the seed over the ``n_voxels`` domain voxels
    where both have data."""

    data_set_id: int
    gene: str | None
    plane: str | None
    r: float
    n_voxels: int


@dataclass(slots=True)
class VoxelCorrelationRow:
    """One voxel of a seed-point (AGEA) search: Pearson's ``r`` between this voxel's values and the seed voxel's
    across the ``n_data_sets`` data sets with data at both.

    ``voxel`` is the flat grid index (Allen's raw order, AP fastest), ``ijk`` its (AP, DV, LR) indices and
    ``position_um`` the voxel centre in microns (AP, DV, LR).
    """

    voxel: int
    ijk: tuple[int, int, int]
    position_um: tuple[float, float, float]
    structure_id: int
    acronym: str | None
    r: float
    n_data_sets: int


Row = TypeVar("Row")


# ------------------------------------------------------------------------------------------------ pages
def check_page(start_row: Any, num_rows: Any) -> tuple[int, int]:
    """Validated ``(start_row, num_rows)``: non-negative integers (``SearchInputError`` otherwise)."""
    out = []
    for name, value in (("start_row", start_row), ("num_rows", num_rows)):
        try:
            number = operator.index(value)
        except TypeError:
            raise SearchInputError(f"{name} must be an integer, got {value!r}") from None
        if number < 0:
            raise SearchInputError(f"{name} must be >= 0, got {number}")
        out.append(int(number))
    return out[0], out[1]


@dataclass(frozen=True)
class SearchPage(Generic[Row]):
    """One page of a ranked result, as Allen's services return it.

    ``rows`` are the rows ``start_row .. start_row + num_rows - 1`` of the ranking (fewer at its end);
    ``total_rows`` is the length of the whole ranking.
    """

    start_row: int
    num_rows: int
    total_rows: int
    rows: list[Row]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]

    def to_dataframe(self) -> pd.DataFrame:
        """The page's rows as a table (one column per row field), indexed by rank."""
        return _rows_frame(self.rows, self.start_row)

    def to_dict(self) -> dict[str, Any]:
        """Allen's response envelope: ``{"success", "id", "start_row", "num_rows", "total_rows", "msg": [...]}``."""
        return {
            "success": True,
            "id": 0,
            "start_row": self.start_row,
            "num_rows": len(self.rows),
            "total_rows": self.total_rows,
            "msg": [_jsonable(asdict(row)) for row in self.rows],  # type: ignore[call-overload]
        }


class Ranking(Generic[Row]):
    """All scored rows of one search in their final order; ``page()`` slices it.

    Built by the searches: ``order`` holds row positions best first; ``make_row(position)`` builds the typed
    row for one position, ``make_rows(positions)`` (optional) a list of them at once; only the rows of a
    requested page are built.
    """

    def __init__(self, order: np.ndarray, make_row: Callable[[int], Row], description: str = "",
                 make_rows: Callable[[np.ndarray], list[Row]] | None = None):
        self.order = np.asarray(order, dtype=np.int64)
        self._make_row = make_row
        self._make_rows = make_rows
        self.description = description

    @property
    def total_rows(self) -> int:
        return int(self.order.size)

    def __len__(self) -> int:
        return self.total_rows

    def page(self, start_row: int = 0, num_rows: int = DEFAULT_NUM_ROWS) -> SearchPage[Row]:
        """Rows ``start_row`` to ``start_row + num_rows - 1`` of the ranking (0-based, like Allen's)."""
        start_row, num_rows = check_page(start_row, num_rows)
        positions = self.order[start_row : start_row + num_rows]
        if self._make_rows is not None:
            rows = self._make_rows(positions)
        else:
            rows = [self._make_row(int(p)) for p in positions]
        return SearchPage(start_row, num_rows, self.total_rows, rows)

    def top(self, n: int = 10) -> list[Row]:
        """The best ``n`` rows."""
        return self.page(0, n).rows

    def pages(self, num_rows: int = DEFAULT_NUM_ROWS) -> Iterator[SearchPage[Row]]:
        """Every page of ``num_rows`` rows, in order."""
        _, num_rows = check_page(0, num_rows)
        if num_rows == 0:
            raise SearchInputError("num_rows must be > 0 to walk the pages")
        for start in range(0, self.total_rows, num_rows):
            yield self.page(start, num_rows)

    def to_dataframe(self) -> pd.DataFrame:
        """The whole ranking as a table (builds every row: for exports, not for serving pages)."""
        return self.page(0, self.total_rows).to_dataframe()

    def __repr__(self) -> str:
        what = f" {self.description}" if self.description else ""
        return f"Ranking({self.total_rows} rows{what})"


def rank_order(score: np.ndarray, ids: np.ndarray, descending: bool = True) -> np.ndarray:
    """Positions of the finite-or-infinite (not NaN) ``score`` entries, best first, ties by ``ids`` ascending
    (then by position): a total order, so pages of it never skip or repeat a row."""
    score = np.asarray(score, dtype=np.float64)
    keep = np.flatnonzero(~np.isnan(score))
    key = -score[keep] if descending else score[keep]
    # lexsort: the last key is the primary one.
    order = np.lexsort((keep, np.asarray(ids)[keep], key))
    return keep[order]


# ------------------------------------------------------------------------------------------------ helpers
def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if np.isfinite(v) else ("Infinity" if v > 0 else "-Infinity" if v < 0 else None)
    return value


def _rows_frame(rows: Sequence[Any], start: int) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame()
    names = [f.name for f in fields(rows[0])]
    frame = pd.DataFrame([[getattr(r, n) for n in names] for r in rows], columns=names)
    frame.index = pd.RangeIndex(start, start + len(rows), name="rank")
    return frame
