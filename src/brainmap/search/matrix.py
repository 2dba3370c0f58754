"""The search matrix: data sets x voxels, memory-mapped on disk, with row metadata; appendable.

One row per data set (an ISH expression-energy grid, or an injection's projection-density grid), one column
per voxel of a grid (flat indices in Allen's raw order, see :mod:`brainmap.search.grid`): all 159,326 voxels
of the 200 um grid, a coverage subset of them, or the brain voxels of the 100 um connectivity grid.

Encodings
---------
``float32``
    The values as given; no data is NaN. 4 bytes per value (25,000 x 159,326 = 16 GB).
``uint8`` (the compact encoding, 1 byte per value)
    Per row, square-root companded 8-bit codes: ``value = offset + scale * q**2`` for ``q`` in 1..255, and
    ``q = 0`` is no data. ``offset`` and ``scale`` are chosen per row so that codes 1 and 255 are the row's
    minimum and maximum; each value gets the code whose reconstruction is nearest. Square-root steps are fine
    where most expression values are (low) and coarse only at the rare high values, so heavy-tailed rows keep
    their precision (on log-normal rows with max/std 50, Pearson's r moves by < 6e-4; linear 8-bit moves it
    by 4e-3). Because a row's values are an affine function of ``q**2``, a search computes correlations
    directly on ``q**2`` with no decoding, and means as ``offset + scale * mean(q**2)``.

Files (a folder)
----------------
``matrix.json``        format, version, encoding, grid, number of rows and columns, plane names (written last:
                       it is the commit point of an append)
``columns.npy``        the flat voxel index of every column (sorted)
``values.bin``         the matrix, row-major, ``n_rows * n_columns`` values of the encoding's dtype
``rows.csv``           ``data_set_id`` and text metadata (``gene``, ``plane``, ...) per row
``row_params.npy``     (n_rows, 6) float64 per row: ``offset, scale`` (0, 1 for float32); ``centre``, the mean
                       stored value ``v`` (``q**2`` or the value) over the row's data, which the searches subtract
                       before summing so that float32 sums lose no precision to a large mean; and the row's
                       statistics over all columns: ``n`` (data voxels), ``sum(v - centre)``,
                       ``sum((v - centre)**2)`` (``row_totals``)
``column_counts.npy``  (n_planes, n_columns) int32: how many data sets of each plane have data in each column
``chunk_stats.npy``    (n_rows, n_chunks, 2) float32: per row and block of ``CHUNK_COLUMNS`` columns, the number
                       of data voxels and the mean stored value ``v`` over them (the Pearson kernel's centre for
                       a block its domain covers whole; computed on first use for stores made without it)

Appending writes the new rows after the existing ones, flushes them, rewrites the small metadata files
atomically and finally ``matrix.json``; a crash leaves the previous state readable (bytes past the committed
rows are ignored and overwritten by the next append). One writer at a time.
"""

from __future__ import annotations

import json
import operator
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from brainmap.errors import FormatError
from brainmap.io.atomic import atomic_write
from brainmap.search.results import SearchInputError, UnknownDataSetError

FORMAT = "brainmap-search-matrix"
VERSION = 1
ENCODINGS: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}
#: Rows encoded per chunk while appending (bounds the float temporaries to ~100 MB at the full grid).
_APPEND_CHUNK_ROWS = 128
#: Largest 8-bit code; ``q**2 - 1`` spans 0 .. 65024.
_QMAX = 255
_QSPAN = float(_QMAX * _QMAX - 1)
#: Columns per block of ``chunk_stats`` (the Pearson kernel's chunk, :data:`brainmap.search._kernels._PEARSON_CHUNK`).
CHUNK_COLUMNS = 2048


@dataclass(frozen=True)
class GridSpec:
    """The voxel grid a store's columns index: shape (AP, DV, LR) and voxel size (um)."""

    shape: tuple[int, int, int]
    resolution_um: tuple[float, float, float]

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    @classmethod
    def ish(cls) -> "GridSpec":
        """The 200 um ISH expression grid (67 x 41 x 58)."""
        from brainmap.search.grid import GRID_RESOLUTION_UM, GRID_SHAPE

        return cls(GRID_SHAPE, (float(GRID_RESOLUTION_UM),) * 3)

    @classmethod
    def of(cls, grid: Any) -> "GridSpec":
        """The spec of a :class:`~brainmap.search.grid.SearchGrid` (or a GridSpec)."""
        if isinstance(grid, GridSpec):
            return grid
        return cls(tuple(int(n) for n in grid.shape), tuple(float(r) for r in grid.resolution_um))  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "resolution_um": list(self.resolution_um), "order": "F"}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "GridSpec":
        return cls(tuple(int(n) for n in data["shape"]), tuple(float(r) for r in data["resolution_um"]))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ encoding
def encode_uint8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Square-root companded 8-bit codes of ``values`` (k, n) float with NaN = no data.

    Returns ``(codes uint8 (k, n), offset (k,), scale (k,))`` with ``value ~= offset + scale * codes**2`` and
    code 0 where there is no data; each value gets the code whose reconstruction is nearest. A row whose data
    are all equal gets code 1 everywhere and scale 0. Works in float32 (a few passes over the block).
    """
    x = np.asarray(values)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    from brainmap.search import _kernels

    if x.ndim == 2 and _kernels.default_engine() == "numba":  # one pass per row instead of a dozen
        codes, lo, hi = _kernels.encode_uint8_rows(x)
        scale = (hi - lo) / _QSPAN
        return codes, lo - scale, scale
    with np.errstate(invalid="ignore"):
        lo = np.fmin.reduce(x, axis=1).astype(np.float64)  # fmin/fmax skip NaN; NaN for a row without data
        hi = np.fmax.reduce(x, axis=1).astype(np.float64)
    empty = np.isnan(lo)
    lo[empty] = 0.0
    hi[empty] = 0.0
    scale = (hi - lo) / _QSPAN
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    # u = 1 + (x - lo) / scale in [1, 65025] (1 for a constant row; NaN where no data -> 0 -> code 0)
    u = x - lo.astype(np.float32)[:, None]
    u *= inverse.astype(np.float32)[:, None]
    u += np.float32(1.0)
    np.nan_to_num(u, copy=False, nan=0.0)
    t = np.sqrt(u)
    np.floor(t, out=t)  # t = floor(sqrt(u)); the nearest square is t**2 or (t + 1)**2
    # (t + 1)**2 - u < u - t**2  <=>  u > t**2 + t + 0.5
    up = u > t * (t + np.float32(1.0)) + np.float32(0.5)
    t += up
    np.minimum(t, np.float32(_QMAX), out=t)
    codes = t.astype(np.uint8)
    return codes, lo - scale, scale


def decode_uint8(codes: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Values (float64, NaN = no data) of 8-bit codes with per-row ``offset`` and ``scale``."""
    q = np.asarray(codes).astype(np.float64)
    out = np.asarray(offset, dtype=np.float64)[:, None] + np.asarray(scale, dtype=np.float64)[:, None] * q * q
    out[np.asarray(codes) == 0] = np.nan
    return out


# ------------------------------------------------------------------------------------------------ the store
class MatrixStore:
    """A data sets x voxels matrix on disk (see the module docstring). Open with :meth:`open`, make with
    :meth:`create`, grow with :meth:`append`.

    Attributes
    ----------
    path : Path
    encoding : "uint8" or "float32"
    grid : GridSpec
    columns : (n_columns,) int64, read-only
        Flat voxel index of each column, ascending.
    rows : pandas.DataFrame
        ``data_set_id`` (int64) and text metadata columns, one row per data set, in row order.
    kind, value_name : str
        What the rows are ("expression", "projection") and which value ("energy", "projection_density").
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        meta_path = self.path / "matrix.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FormatError(f"{self.path}: not a search matrix store (no matrix.json)") from None
        except json.JSONDecodeError as error:
            raise FormatError(f"{meta_path}: not valid JSON ({error})") from None
        if meta.get("format") != FORMAT:
            raise FormatError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
        if int(meta.get("version", 0)) > VERSION:
            raise FormatError(f"{meta_path}: version {meta.get('version')} is newer than this brainmap reads ({VERSION})")
        encoding = meta.get("encoding")
        if encoding not in ENCODINGS:
            raise FormatError(f"{meta_path}: encoding {encoding!r} is not one of {sorted(ENCODINGS)}")
        self.encoding: str = encoding
        self.dtype = ENCODINGS[encoding]
        self.grid = GridSpec.from_json(meta["grid"])
        self.kind: str = meta.get("kind", "expression")
        self.value_name: str = meta.get("value_name", "energy")
        self.n_rows = int(meta["n_rows"])
        self.n_columns = int(meta["n_columns"])
        self.planes: list[str] = list(meta.get("planes", []))
        self.metadata_columns: list[str] = list(meta.get("metadata_columns", ["gene", "plane"]))

        columns = np.load(self.path / "columns.npy")
        if columns.shape != (self.n_columns,):
            raise FormatError(f"{self.path / 'columns.npy'}: {columns.shape[0]} columns, matrix.json says {self.n_columns}")
        self.columns = columns.astype(np.int64)
        self.columns.flags.writeable = False

        self.rows = self._read_rows()
        params = np.load(self.path / "row_params.npy") if self.n_rows else np.zeros((0, 6))
        if params.ndim != 2 or params.shape[0] < self.n_rows or params.shape[1] != 6:
            raise FormatError(f"{self.path / 'row_params.npy'}: shape {params.shape}, expected ({self.n_rows}, 6)")
        self.row_offset = np.ascontiguousarray(params[: self.n_rows, 0], dtype=np.float64)
        self.row_scale = np.ascontiguousarray(params[: self.n_rows, 1], dtype=np.float64)
        self.row_center = np.ascontiguousarray(params[: self.n_rows, 2], dtype=np.float64)
        #: (n_rows, 3): over all columns, data voxels, sum(v - centre), sum((v - centre)**2)
        self.row_totals = np.ascontiguousarray(params[: self.n_rows, 3:6], dtype=np.float64)
        counts_path = self.path / "column_counts.npy"
        counts = np.load(counts_path) if counts_path.exists() else np.zeros((0, self.n_columns), np.int32)
        if counts.shape != (len(self.planes), self.n_columns):
            raise FormatError(f"{counts_path}: shape {counts.shape}, expected {(len(self.planes), self.n_columns)}")
        self._column_counts = counts.astype(np.int64)
        self._id_index: dict[int, int] | None = None
        self._column_lookup: np.ndarray | None = None
        self._raw: np.ndarray | None = None
        self._metadata_arrays: dict[str, np.ndarray] = {}
        self._chunk_stats: np.ndarray | None = None
        values_path = self.path / "values.bin"
        need = self.n_rows * self.n_columns * self.dtype.itemsize
        if not values_path.exists():
            raise FormatError(f"{values_path}: missing")
        if values_path.stat().st_size < need:
            raise FormatError(f"{values_path}: {values_path.stat().st_size} bytes, {need} needed for {self.n_rows} rows")

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        columns: np.ndarray | None = None,
        grid: Any = None,
        encoding: str = "uint8",
        kind: str = "expression",
        value_name: str = "energy",
        metadata_columns: Sequence[str] = ("gene", "plane"),
        overwrite: bool = False,
    ) -> "MatrixStore":
        """An empty store at ``path`` over ``columns`` (flat voxel indices; default every voxel of ``grid``;
        ``grid`` default: the 200 um ISH grid)."""
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {sorted(ENCODINGS)}, got {encoding!r}")
        spec = GridSpec.ish() if grid is None else GridSpec.of(grid)
        cols = np.arange(spec.n_voxels, dtype=np.int64) if columns is None else np.asarray(columns, dtype=np.int64).ravel()
        if cols.size == 0:
            raise ValueError("a store needs at least one column")
        if np.any(np.diff(cols) <= 0):
            raise ValueError("columns must be strictly increasing flat voxel indices (sorted, no repeats)")
        if cols[0] < 0 or cols[-1] >= spec.n_voxels:
            raise ValueError(f"columns must lie in [0, {spec.n_voxels}) for grid {spec.shape}")
        names = [str(c) for c in metadata_columns]
        if "data_set_id" in names or len(set(names)) != len(names):
            raise ValueError(f"metadata_columns must be distinct and not 'data_set_id': {names}")
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
            if (path / "matrix.json").exists() or not any(path.iterdir()):
                shutil.rmtree(path)
            else:
                raise FileExistsError(f"{path} exists and is not a search matrix store; not replacing it")
        path.mkdir(parents=True)
        with atomic_write(path / "columns.npy") as fh:
            np.save(fh, cols)
        (path / "values.bin").touch()
        with atomic_write(path / "rows.csv", "w", encoding="utf-8", newline="") as fh:
            pd.DataFrame(columns=["data_set_id", *names]).to_csv(fh, index=False)
        with atomic_write(path / "row_params.npy") as fh:
            np.save(fh, np.zeros((0, 6)))
        with atomic_write(path / "column_counts.npy") as fh:
            np.save(fh, np.zeros((0, cols.size), np.int32))
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "encoding": encoding,
            "kind": kind,
            "value_name": value_name,
            "grid": spec.to_json(),
            "n_rows": 0,
            "n_columns": int(cols.size),
            "planes": [],
            "metadata_columns": names,
        }
        _write_json(path / "matrix.json", meta)
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "MatrixStore":
        """Open an existing store (read the metadata; the matrix is memory-mapped on first use)."""
        return cls(path)

    def _read_rows(self) -> pd.DataFrame:
        rows_path = self.path / "rows.csv"
        dtypes = {name: str for name in self.metadata_columns}
        frame = pd.read_csv(rows_path, dtype={"data_set_id": np.int64, **dtypes}, keep_default_na=False)
        if len(frame) < self.n_rows:
            raise FormatError(f"{rows_path}: {len(frame)} rows, matrix.json says {self.n_rows}")
        frame = frame.iloc[: self.n_rows].reset_index(drop=True)  # rows past n_rows: an interrupted append
        for name in self.metadata_columns:
            if name not in frame.columns:
                frame[name] = ""
        return frame[["data_set_id", *self.metadata_columns]]

    # ------------------------------------------------------------------ the matrix
    @property
    def raw(self) -> np.ndarray:
        """The stored matrix (n_rows, n_columns) in its encoding, memory-mapped read-only (no copy)."""
        if self._raw is None:
            if self.n_rows == 0:
                self._raw = np.zeros((0, self.n_columns), dtype=self.dtype)
            else:
                mm = np.memmap(self.path / "values.bin", dtype=self.dtype, mode="r", shape=(self.n_rows, self.n_columns))
                self._raw = np.asarray(mm)  # an ndarray view of the mapping (kernels want a plain ndarray)
        return self._raw

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.n_columns * self.dtype.itemsize

    @property
    def chunk_stats(self) -> np.ndarray:
        """(n_rows, n_chunks, 2) float32: per row and block of ``CHUNK_COLUMNS`` columns, the number of data voxels
        and the mean stored value over them. Read from ``chunk_stats.npy``; a store made without it gets it
        computed (one pass) and written, if the folder is writable."""
        if self._chunk_stats is None:
            n_chunks = -(-self.n_columns // CHUNK_COLUMNS)
            path = self.path / "chunk_stats.npy"
            stats = np.load(path, mmap_mode="r") if path.exists() else None
            if stats is None or stats.shape[0] < self.n_rows or stats.shape[1:] != (n_chunks, 2):
                stats = np.concatenate([_chunk_statistics(self.raw[a : a + 1024], self.encoding)
                                        for a in range(0, self.n_rows, 1024)] or [np.zeros((0, n_chunks, 2), np.float32)])
                try:
                    with atomic_write(path) as fh:
                        np.save(fh, stats)
                except OSError:
                    pass  # a read-only store: keep them in memory
            self._chunk_stats = np.ascontiguousarray(stats[: self.n_rows], dtype=np.float32)
        return self._chunk_stats

    def decode(self, rows: Any = slice(None)) -> np.ndarray:
        """Values of ``rows`` (positions: a slice, an int or an array) as float64, NaN where no data."""
        single = isinstance(rows, (int, np.integer))
        index = np.asarray([rows]) if single else rows
        block = self.raw[index]
        if self.encoding == "float32":
            out = block.astype(np.float64)
        else:
            positions = np.arange(self.n_rows)[index]
            out = decode_uint8(block, self.row_offset[positions], self.row_scale[positions])
        return out[0] if single else out

    def values_of(self, data_set_id: int) -> np.ndarray:
        """One data set's values over the columns (float64, NaN = no data)."""
        return self.decode(self.row_index(data_set_id))

    # ------------------------------------------------------------------ rows
    @property
    def data_set_ids(self) -> np.ndarray:
        return self.rows["data_set_id"].to_numpy(dtype=np.int64)

    def row_index(self, data_set_id: Any) -> int:
        """The row position of a data set id; :class:`UnknownDataSetError` if the store has no such row."""
        if self._id_index is None:
            self._id_index = {int(d): i for i, d in enumerate(self.data_set_ids)}
        try:
            key = operator.index(data_set_id)
        except TypeError:
            try:
                key = int(str(data_set_id).strip())
            except ValueError:
                raise UnknownDataSetError(f"not a data set id: {data_set_id!r}") from None
        position = self._id_index.get(int(key))
        if position is None:
            raise UnknownDataSetError(f"unknown data set {key}: not among the {self.n_rows:,} rows of {self.path}")
        return position

    def metadata(self, position: int, name: str) -> str | None:
        """Text metadata ``name`` of the row at ``position``, None if the store has no such column or it is empty."""
        column = self.metadata_array(name)
        return None if column is None else column[position]

    def metadata_array(self, name: str) -> np.ndarray | None:
        """Text metadata ``name`` of every row as an object array (None where empty), or None if the store has no
        such column. Cached: the searches build result rows from it."""
        if name not in self.metadata_columns:
            return None
        cache = self._metadata_arrays
        if name not in cache:
            values = self.rows[name].tolist()
            cache[name] = np.array([None if v == "" else str(v) for v in values], dtype=object)
        return cache[name]

    # ------------------------------------------------------------------ columns
    def column_positions(self, voxels: np.ndarray) -> np.ndarray:
        """Sorted column positions of those flat ``voxels`` that are columns of this store."""
        if self._column_lookup is None:
            lookup = np.full(self.grid.n_voxels, -1, dtype=np.int64)
            lookup[self.columns] = np.arange(self.n_columns)
            self._column_lookup = lookup
        voxels = np.asarray(voxels, dtype=np.int64).ravel()
        voxels = voxels[(voxels >= 0) & (voxels < self.grid.n_voxels)]
        positions = self._column_lookup[voxels]
        positions = positions[positions >= 0]
        if positions.size > 1 and not np.all(positions[1:] > positions[:-1]):  # sorted voxels give sorted positions
            positions = np.sort(positions)
            positions = positions[np.concatenate(([True], positions[1:] != positions[:-1]))]
        return positions

    def column_data_counts(self, planes: Iterable[str] | str | None = None) -> tuple[np.ndarray, int]:
        """``(counts, n_rows)``: per column, how many data sets (of ``planes`` only, if given) have data there,
        and how many data sets that is."""
        if planes is None:
            chosen = list(range(len(self.planes)))
        else:
            wanted = [planes] if isinstance(planes, str) else list(planes)
            unknown = [p for p in wanted if p not in self.planes]
            if unknown:
                raise SearchInputError(f"no data sets of plane(s) {unknown} in this store (planes: {self.planes})")
            chosen = [self.planes.index(p) for p in wanted]
        counts = self._column_counts[chosen].sum(axis=0) if chosen else np.zeros(self.n_columns, np.int64)
        plane_of = self.rows["plane"].to_numpy() if "plane" in self.rows.columns else np.full(self.n_rows, "")
        n_rows = int(np.isin(plane_of, [self.planes[i] for i in chosen]).sum()) if planes is not None else self.n_rows
        return counts, n_rows

    # ------------------------------------------------------------------ append
    def append(
        self,
        values: np.ndarray,
        data_set_ids: Sequence[int] | np.ndarray,
        *,
        no_data_value: float | None = -1.0,
        **metadata: Sequence[Any] | str | None,
    ) -> range:
        """Add data sets as new rows; returns their row positions.

        Parameters
        ----------
        values : (k, n_columns) or (k, grid voxels) array-like
            One row per data set, over the store's columns or over every voxel of the grid in flat order
            (Allen's ``energy.raw``), from which the store's columns are taken. NaN and ``no_data_value``
            (Allen's -1; None for none) mark no data; infinite values are refused.
        data_set_ids : k integers, distinct and new to the store.
        **metadata : one text value per row (or one for all) for the store's metadata columns, e.g.
            ``gene=["Pdyn", ...], plane="coronal"``; missing columns are left empty.
        """
        ids = np.asarray(data_set_ids).reshape(-1)
        if ids.dtype.kind not in "iu":
            try:
                ids = ids.astype(np.int64)
            except (TypeError, ValueError):
                raise SearchInputError(f"data set ids must be integers, got {ids[:3].tolist()}...") from None
        ids = ids.astype(np.int64)
        k = ids.size
        values = np.asarray(values)
        if values.ndim == 1 and k == 1:
            values = values[None, :]
        if values.ndim != 2 or values.shape[0] != k:
            raise SearchInputError(f"values must be ({k}, {self.n_columns}) for {k} data set id(s), got {values.shape}")
        if values.shape[1] == self.grid.n_voxels and self.n_columns != self.grid.n_voxels:
            take_columns = True
        elif values.shape[1] == self.n_columns:
            take_columns = False
        else:
            raise SearchInputError(
                f"values have {values.shape[1]} columns; this store has {self.n_columns} "
                f"(or give all {self.grid.n_voxels} grid voxels)"
            )
        if np.unique(ids).size != k:
            raise SearchInputError("data set ids repeat within the appended rows")
        clash = np.intersect1d(ids, self.data_set_ids)
        if clash.size:
            raise SearchInputError(f"data set id(s) already in the store: {clash[:10].tolist()}")
        unknown_meta = sorted(set(metadata) - set(self.metadata_columns))
        if unknown_meta:
            raise SearchInputError(f"unknown metadata column(s) {unknown_meta}; this store has {self.metadata_columns}")
        meta_cols: dict[str, list[str]] = {}
        for name in self.metadata_columns:
            given = metadata.get(name)
            if given is None or isinstance(given, str):
                meta_cols[name] = ["" if given is None else str(given)] * k
            else:
                seq = ["" if v is None else str(v) for v in given]
                if len(seq) != k:
                    raise SearchInputError(f"metadata {name!r} has {len(seq)} values for {k} rows")
                meta_cols[name] = seq

        row_bytes = self.n_columns * self.dtype.itemsize
        new_offset = np.empty(k)
        new_scale = np.empty(k)
        new_stats = np.empty((k, 4))
        new_chunks = np.empty((k, -(-self.n_columns // CHUNK_COLUMNS), 2), np.float32)
        counts = {p: np.zeros(self.n_columns, np.int64) for p in self.planes}
        plane_values = meta_cols.get("plane", [""] * k)
        with open(self.path / "values.bin", "r+b") as fh:
            fh.truncate(self.n_rows * row_bytes)  # drop bytes of an interrupted append
            fh.seek(self.n_rows * row_bytes)
            for start in range(0, k, _APPEND_CHUNK_ROWS):
                stop = min(start + _APPEND_CHUNK_ROWS, k)
                chunk = values[start:stop]
                if take_columns:
                    chunk = chunk[:, self.columns]
                x = np.array(chunk, dtype=np.float32)  # float32 keeps far more than 8-bit codes need
                if no_data_value is not None:
                    x[x == np.float32(no_data_value)] = np.nan
                if np.isinf(x).any():
                    bad = int(np.flatnonzero(np.isinf(x).any(axis=1))[0]) + start
                    raise SearchInputError(
                        f"data set {int(ids[bad])}: infinite values, or values beyond float32's range "
                        "(use NaN or -1 for no data)"
                    )
                if self.encoding == "uint8":
                    codes, off, sc = encode_uint8(x)
                    fh.write(np.ascontiguousarray(codes).tobytes())
                    data = codes != 0
                    new_stats[start:stop] = _row_statistics(codes, "uint8")
                    new_chunks[start:stop] = _chunk_statistics(codes, "uint8")
                else:
                    stored = x
                    fh.write(np.ascontiguousarray(stored, dtype="<f4").tobytes())
                    off, sc = np.zeros(stop - start), np.ones(stop - start)
                    data = ~np.isnan(stored)
                    new_stats[start:stop] = _row_statistics(stored, "float32")
                    new_chunks[start:stop] = _chunk_statistics(stored, "float32")
                new_offset[start:stop] = off
                new_scale[start:stop] = sc
                for j in range(stop - start):
                    plane = plane_values[start + j]
                    if plane not in counts:
                        counts[plane] = np.zeros(self.n_columns, np.int64)
                    counts[plane] += data[j]
            fh.flush()
            os.fsync(fh.fileno())

        # Metadata (atomically, each), then matrix.json: the commit point.
        rows = pd.concat([self.rows, pd.DataFrame({"data_set_id": ids, **meta_cols})], ignore_index=True)
        with atomic_write(self.path / "rows.csv", "w", encoding="utf-8", newline="") as fh:
            rows.to_csv(fh, index=False)
        old = np.column_stack([self.row_offset, self.row_scale, self.row_center, self.row_totals])
        params = np.vstack([old, np.column_stack([new_offset, new_scale, new_stats])])
        with atomic_write(self.path / "row_params.npy") as fh:
            np.save(fh, params)
        old_chunks = self.chunk_stats if self.n_rows else np.zeros((0,) + new_chunks.shape[1:], np.float32)
        with atomic_write(self.path / "chunk_stats.npy") as fh:
            np.save(fh, np.concatenate([old_chunks, new_chunks]))
        planes = list(self.planes) + [p for p in counts if p not in self.planes]
        old = {p: self._column_counts[i] for i, p in enumerate(self.planes)}
        table = np.stack([old.get(p, 0) + counts[p] for p in planes]).astype(np.int32) if planes else np.zeros((0, self.n_columns), np.int32)
        with atomic_write(self.path / "column_counts.npy") as fh:
            np.save(fh, table)
        meta = json.loads((self.path / "matrix.json").read_text(encoding="utf-8"))
        meta.update(n_rows=self.n_rows + k, planes=planes)
        _write_json(self.path / "matrix.json", meta)
        first = self.n_rows
        self.__init__(self.path)  # re-read: new row count, fresh mapping
        return range(first, first + k)

    # ------------------------------------------------------------------ derived stores
    def subset(
        self,
        path: str | os.PathLike[str],
        voxels: np.ndarray | None = None,
        data_set_ids: Sequence[int] | None = None,
        overwrite: bool = False,
        block_rows: int = 1024,
    ) -> "MatrixStore":
        """A new store at ``path`` with only the columns at flat ``voxels`` (those that are columns here) and/or
        only ``data_set_ids`` (in that order). Codes are copied as they are (no re-encoding, no precision lost):
        e.g. ``store.subset(p, coverage_voxels(store))`` is Allen's ~26,000-voxel search set."""
        cols = np.arange(self.n_columns) if voxels is None else self.column_positions(voxels)
        if cols.size == 0:
            raise SearchInputError("none of the given voxels is a column of this store")
        positions = np.arange(self.n_rows) if data_set_ids is None else np.asarray([self.row_index(d) for d in data_set_ids], dtype=np.int64)
        out = MatrixStore.create(
            path, self.columns[cols], self.grid, self.encoding, self.kind, self.value_name, self.metadata_columns, overwrite
        )
        raw = self.raw
        full = cols.size == self.n_columns
        counts: dict[str, np.ndarray] = {}
        plane_of = self.rows["plane"].to_numpy() if "plane" in self.rows.columns else np.full(self.n_rows, "")
        stats = np.empty((positions.size, 4))
        chunks = np.empty((positions.size, -(-cols.size // CHUNK_COLUMNS), 2), np.float32)
        with open(out.path / "values.bin", "r+b") as fh:
            for start in range(0, positions.size, block_rows):
                pos = positions[start : start + block_rows]
                block = raw[pos] if full else raw[pos][:, cols]
                fh.write(np.ascontiguousarray(block).tobytes())
                stats[start : start + pos.size] = _row_statistics(block, self.encoding)
                chunks[start : start + pos.size] = _chunk_statistics(block, self.encoding)
                data = (block != 0) if self.encoding == "uint8" else ~np.isnan(block)
                for plane in np.unique(plane_of[pos]):
                    counts.setdefault(str(plane), np.zeros(cols.size, np.int64))
                    counts[str(plane)] += data[plane_of[pos] == plane].sum(axis=0)
            fh.flush()
            os.fsync(fh.fileno())
        rows = self.rows.iloc[positions].reset_index(drop=True)
        with atomic_write(out.path / "rows.csv", "w", encoding="utf-8", newline="") as fh:
            rows.to_csv(fh, index=False)
        with atomic_write(out.path / "row_params.npy") as fh:
            np.save(fh, np.column_stack([self.row_offset[positions], self.row_scale[positions], stats]))
        with atomic_write(out.path / "chunk_stats.npy") as fh:
            np.save(fh, chunks)
        planes = [p for p in self.planes if p in counts] + [p for p in counts if p not in self.planes]
        with atomic_write(out.path / "column_counts.npy") as fh:
            np.save(fh, np.stack([counts[p] for p in planes]).astype(np.int32) if planes else np.zeros((0, cols.size), np.int32))
        meta = json.loads((out.path / "matrix.json").read_text(encoding="utf-8"))
        meta.update(n_rows=int(positions.size), planes=planes)
        _write_json(out.path / "matrix.json", meta)
        return MatrixStore(out.path)

    def __repr__(self) -> str:
        return (
            f"MatrixStore({str(self.path)!r}, {self.n_rows:,} {self.kind} rows x {self.n_columns:,} voxels, "
            f"{self.encoding}, {self.nbytes / 2**20:,.0f} MiB)"
        )


def _data_and_values(block: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """``(data, v)`` of a block of stored rows: where there is data, and the float64 values the Pearson sums run on
    (``q**2`` for uint8, whose 0 means no data; the value for float32, whose NaN does; 0 where no data)."""
    block = np.asarray(block)
    if encoding == "uint8":
        return block != 0, block.astype(np.float64) ** 2
    data = ~np.isnan(block)
    return data, np.where(data, block, 0).astype(np.float64)


def _row_statistics(block: np.ndarray, encoding: str) -> np.ndarray:
    """(rows, 4) float64 per row over its data: centre = mean of v, n, sum(v - centre), sum((v - centre)**2),
    with ``v = q**2`` (uint8) or the value (float32)."""
    data, v = _data_and_values(block, encoding)
    n = data.sum(axis=1).astype(np.float64)
    center = np.divide(v.sum(axis=1), n, out=np.zeros(n.size), where=n > 0)
    v -= center[:, None]
    v[~data] = 0.0
    return np.column_stack([center, n, v.sum(axis=1), np.einsum("ij,ij->i", v, v)])


def _chunk_statistics(block: np.ndarray, encoding: str) -> np.ndarray:
    """(rows, n_chunks, 2) float32 per row and block of ``CHUNK_COLUMNS`` columns: the number of data voxels and
    the mean of ``v`` (``q**2`` or the value) over them (0 without data)."""
    data, v = _data_and_values(block, encoding)
    starts = np.arange(0, block.shape[1], CHUNK_COLUMNS)
    if block.shape[0] == 0:
        return np.zeros((0, starts.size, 2), np.float32)
    n = np.add.reduceat(data, starts, axis=1).astype(np.float64)
    total = np.add.reduceat(v, starts, axis=1)
    mean = np.divide(total, n, out=np.zeros_like(total), where=n > 0)
    return np.stack([n, mean], axis=-1).astype(np.float32)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")


__all__ = ["ENCODINGS", "GridSpec", "MatrixStore", "decode_uint8", "encode_uint8"]
