"""Cached tables (structure unionizes) as uncompressed NumPy ``.npy`` record arrays.

A record array loads in tens of microseconds and its columns are ready for vectorized work, so a warm cache
of hundreds of experiments' unionizes is read in milliseconds (CSV would take seconds). Integer ids are
``int64``, ``is_injection`` is ``bool``, other numbers ``float64`` (null -> NaN), text fixed-width unicode.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

__all__ = ["INTEGER_COLUMNS", "records_to_array", "table_bytes", "read_table"]

#: Columns stored as int64 (Allen's ids and codes).
INTEGER_COLUMNS = frozenset({"id", "experiment_id", "section_data_set_id", "structure_id", "hemisphere_id"})
BOOL_COLUMNS = frozenset({"is_injection"})


def _column(name: str, values: list[Any]) -> np.ndarray:
    if name in BOOL_COLUMNS:
        return np.array([bool(v) for v in values], dtype=bool)
    if name in INTEGER_COLUMNS and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                       for v in values):
        return np.array(values, dtype=np.int64)
    if all(v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)) for v in values):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.array(["" if v is None else str(v) for v in values], dtype=str)


def records_to_array(rows: list[dict[str, Any]], columns: Iterable[str] | None = None) -> np.ndarray:
    """A record array from API rows (dicts); ``columns`` fixes the column order (default the first row's keys,
    then any others in order of appearance). Nested values (lists, dicts) are dropped."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key, value in row.items():
                if not isinstance(value, (list, dict)):
                    seen.setdefault(key)
        columns = list(seen)
    columns = list(columns)
    arrays = [_column(name, [row.get(name) for row in rows]) for name in columns]
    if not columns:
        return np.zeros(0, dtype=[("id", np.int64)])
    return np.rec.fromarrays(arrays, names=columns) if rows else \
        np.zeros(0, dtype=[(c, a.dtype if a.size else np.float64) for c, a in zip(columns, arrays)])


def table_bytes(table: np.ndarray) -> bytes:
    """The ``.npy`` bytes of a record array."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(table), allow_pickle=False)
    return buffer.getvalue()


def read_table(path: Path) -> np.ndarray:
    """The record array of a cached ``.npy`` table."""
    return np.load(path, allow_pickle=False)


def to_dataframe(table: np.ndarray) -> pd.DataFrame:
    """A DataFrame with one column per field of the record array."""
    return pd.DataFrame({name: table[name] for name in table.dtype.names or ()})
