"""Cached tables (structure unionizes) in a small column-major binary format.

A table is a dict of equal-length 1-D NumPy columns. On disk (``.columns`` files)::

    BRAINMAP-COLUMNS 1\\n
    {"n_rows": N, "columns": [[name, dtype, offset], ...]}\\n     (JSON, one line; offsets from the file start)
    column data, each column contiguous, little-endian, 8-byte aligned

so one column of one experiment is one ``seek`` + ``fromfile``: a warm cache of hundreds of experiments'
unionizes yields the few columns a projection matrix needs in milliseconds (a CSV would take seconds, a NumPy
record array reads every column). Integer ids are ``int64``, ``is_injection`` is ``bool``, other numbers
``float64`` (null -> NaN), text fixed-width unicode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from brainmap.errors import FormatError

__all__ = ["INTEGER_COLUMNS", "concat_tables", "read_table", "records_to_columns", "table_bytes", "to_dataframe"]

MAGIC = b"BRAINMAP-COLUMNS 1\n"
#: Columns stored as int64 (Allen's ids and codes).
INTEGER_COLUMNS = frozenset({"id", "experiment_id", "section_data_set_id", "structure_id", "hemisphere_id"})
BOOL_COLUMNS = frozenset({"is_injection"})

Table = dict[str, np.ndarray]


def _column(name: str, values: list[Any]) -> np.ndarray:
    if name in BOOL_COLUMNS:
        return np.array([bool(v) for v in values], dtype=bool)
    if name in INTEGER_COLUMNS and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                       for v in values):
        return np.array(values, dtype=np.int64)
    if all(v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)) for v in values):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.array(["" if v is None else str(v) for v in values], dtype=str)


def records_to_columns(rows: list[dict[str, Any]], columns: Iterable[str] | None = None) -> Table:
    """A table from API rows (dicts); ``columns`` fixes the column order (default every key in order of first
    appearance). Nested values (lists, dicts) are left out."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key, value in row.items():
                if not isinstance(value, (list, dict)):
                    seen.setdefault(key)
        columns = list(seen)
    return {name: _column(name, [row.get(name) for row in rows]) for name in columns}


def table_bytes(table: Mapping[str, np.ndarray]) -> bytes:
    """The file bytes of a table (see the module docstring)."""
    arrays = {name: np.ascontiguousarray(np.asarray(values)) for name, values in table.items()}
    lengths = {a.shape for a in arrays.values()}
    if len(lengths) > 1 or any(len(s) != 1 for s in lengths):
        raise ValueError(f"a table's columns must be 1-D and of one length, got shapes {sorted(lengths)}")
    n_rows = next(iter(lengths))[0] if lengths else 0
    arrays = {name: a.astype(a.dtype.newbyteorder("<")) for name, a in arrays.items()}
    for width in range(8, 10_000, 8):  # the header's length depends on the offsets, which depend on it
        offset = len(MAGIC) + width
        layout = []
        for name, a in arrays.items():
            layout.append([name, a.dtype.str, offset])
            offset += -(-a.nbytes // 8) * 8
        header = json.dumps({"n_rows": n_rows, "columns": layout}).encode() + b"\n"
        if len(header) <= width:
            break
    header = header[:-1] + b" " * (width - len(header)) + b"\n"
    parts = [MAGIC, header]
    for a in arrays.values():
        data = a.tobytes()
        parts += [data, b"\0" * (-len(data) % 8)]
    return b"".join(parts)


def read_table(path: Path, columns: Iterable[str] | None = None) -> Table:
    """The table at ``path`` (only ``columns`` if given; a missing one is a :class:`FormatError`)."""
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise FormatError(f"{path}: not a brainmap column table")
        try:
            header = json.loads(fh.readline())
            n_rows = int(header["n_rows"])
            layout = {name: (dtype, offset) for name, dtype, offset in header["columns"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"{path}: bad column-table header ({exc})") from None
        wanted = list(layout) if columns is None else list(columns)
        out = {}
        for name in wanted:
            if name not in layout:
                raise FormatError(f"{path}: no column {name!r}; it has {', '.join(layout)}")
            dtype, offset = layout[name]
            fh.seek(offset)
            out[name] = np.fromfile(fh, dtype=np.dtype(dtype), count=n_rows)
            if out[name].size != n_rows:
                raise FormatError(f"{path}: column {name} is truncated")
    return out


def concat_tables(tables: list[Table]) -> Table:
    """One table of the rows of several (the columns of the first)."""
    if not tables:
        return {}
    return {name: np.concatenate([t[name] for t in tables]) for name in tables[0]}


def to_dataframe(table: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A DataFrame with one column per table column."""
    return pd.DataFrame(dict(table))
