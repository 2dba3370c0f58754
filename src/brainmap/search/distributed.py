"""The expression searches on a dask.distributed cluster, over the store as a chunked dask array.

:func:`store_array` exposes a :class:`~brainmap.search.matrix.MatrixStore` as a dask array chunked by rows
(all columns per chunk). Its chunks are read by memory-mapping the store's file by path in whichever worker
runs the task, so no matrix data travels through the scheduler: workers must see the store at the same path
(a local cluster, or a shared file system). :class:`DistributedExpressionSearch` is an
:class:`~brainmap.search.expression.ExpressionSearch` whose passes run as one task per chunk (row sums are
concatenated; the column sums of a seed-point search are added up); planning, validation, ranking and paging
are the same code, so the results are the same.

    from dask.distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        search = DistributedExpressionSearch(store, client, chunk_rows=2048)
        page = search.differential("TH", "Isocortex").page(0, 50)

Needs ``dask[distributed]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from brainmap.search import _kernels
from brainmap.search.expression import CorrelationPlan, DifferentialPlan, ExpressionSearch, SeedPointPlan
from brainmap.search.grid import SearchGrid
from brainmap.search.matrix import MatrixStore

try:  # pragma: no cover - depends on the environment
    import dask
    import dask.array as da

    HAVE_DASK = True
except ImportError:  # pragma: no cover
    HAVE_DASK = False

#: Rows per chunk by default (2048 rows x 26,000 voxels = 53 MB of uint8).
DEFAULT_CHUNK_ROWS = 2048


class StoreRows:
    """A read-only array-like over a store's matrix file, memory-mapped on first access in each process.

    Pickles as its path, dtype and shape (never the data).
    """

    ndim = 2

    def __init__(self, path: str | os.PathLike[str], dtype: np.dtype, shape: tuple[int, int]):
        self.path = str(path)
        self.dtype = np.dtype(dtype)
        self.shape = (int(shape[0]), int(shape[1]))
        self._map: np.ndarray | None = None

    @classmethod
    def of(cls, store: MatrixStore) -> "StoreRows":
        return cls(Path(store.path) / "values.bin", store.dtype, (store.n_rows, store.n_columns))

    def _mapped(self) -> np.ndarray:
        if self._map is None:
            self._map = np.asarray(np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape))
        return self._map

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._mapped()[key]

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype.str, "shape": self.shape}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], np.dtype(state["dtype"]), tuple(state["shape"]))  # type: ignore[misc]

    def __dask_tokenize__(self) -> tuple:
        stat = os.stat(self.path)
        return (type(self).__name__, self.path, self.dtype.str, self.shape, stat.st_mtime_ns, stat.st_size)


def store_array(store: MatrixStore, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> "da.Array":
    """The store's matrix (in its encoding) as a dask array chunked by ``chunk_rows`` rows."""
    _need_dask()
    if store.n_rows == 0:
        raise ValueError(f"store {store.path} has no rows")
    chunk_rows = max(1, min(int(chunk_rows), store.n_rows))
    source = StoreRows.of(store)
    return da.from_array(source, chunks=(chunk_rows, store.n_columns), asarray=False, lock=False,
                         name=f"search-matrix-{dask.base.tokenize(source)}")


# ------------------------------------------------------------------------------------------------ tasks
def _pearson_block(block, center, stats, encoding, plan, seed, engine):
    stats = np.asarray(stats)  # the rows' chunk_stats, flattened to 2-D so that dask aligns them with the rows
    return _kernels.pearson_sums(np.asarray(block), encoding, plan, seed, np.asarray(center).ravel(), engine, threads=1,
                                 chunk_stats=stats.reshape(stats.shape[0], -1, 2))


def _pair_block(block, encoding, plan, w1, w2, engine):
    return _kernels.pair_sums(np.asarray(block), encoding, plan, w1, w2, engine, threads=1)


def _column_block(block, encoding, lo, hi, cw, cv, cvv, engine):
    return _kernels.column_sums(np.asarray(block), encoding, lo, hi, cw, cv, cvv, engine, threads=1)


def _add(*parts):
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


class DistributedExpressionSearch(ExpressionSearch):
    """:class:`ExpressionSearch` whose passes run on a dask cluster, one task per chunk of rows.

    Parameters
    ----------
    store : MatrixStore
    client : dask.distributed.Client, optional
        Without one, dask's default scheduler runs the tasks.
    grid, engine : as for :class:`ExpressionSearch` (the engine runs in the workers, one thread per task)
    chunk_rows : rows per chunk (task)
    """

    def __init__(self, store: MatrixStore, client: Any = None, grid: SearchGrid | None = None,
                 engine: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        _need_dask()
        super().__init__(store, grid, engine, threads=1)
        self.client = client
        self.chunk_rows = int(chunk_rows)
        self.matrix = store_array(store, self.chunk_rows)

    def _share(self, *values: Any) -> list[Any]:
        """Send arguments to the workers once (not once per task) when there is a client."""
        if self.client is None:
            return list(values)
        return [self.client.scatter(v, broadcast=True, hash=False) if isinstance(v, (np.ndarray, _kernels.ColumnPlan))
                else v for v in values]

    def _compute(self, collection: Any) -> np.ndarray:
        if self.client is None:
            return np.asarray(dask.compute(collection)[0])
        return np.asarray(self.client.compute(collection, optimize_graph=True).result())

    def correlation_sums(self, plan: CorrelationPlan) -> np.ndarray:
        args = self._share(self.store.encoding, plan.plan, plan.seed_values, self.engine)
        center = da.from_array(self.store.row_center[:, None], chunks=(self.matrix.chunks[0], 1))
        flat = self.store.chunk_stats.reshape(self.store.n_rows, -1)
        stats = da.from_array(flat, chunks=(self.matrix.chunks[0], flat.shape[1]))
        sums = da.map_blocks(_pearson_block, self.matrix, center, stats, *args, dtype=np.float64,
                             chunks=(self.matrix.chunks[0], (6,)))
        return self._compute(sums)

    def differential_sums(self, plan: DifferentialPlan) -> np.ndarray:
        args = self._share(self.store.encoding, plan.plan, plan.w_target, plan.w_contrast, self.engine)
        sums = self.matrix.map_blocks(_pair_block, *args, dtype=np.float64, chunks=(self.matrix.chunks[0], (4,)))
        return self._compute(sums)

    def seed_point_sums(self, plan: SeedPointPlan) -> np.ndarray:
        blocks = self.matrix.to_delayed()[:, 0]
        bounds = np.cumsum((0,) + self.matrix.chunks[0])
        parts = []
        for block, r0, r1 in zip(blocks, bounds[:-1], bounds[1:]):
            cw, cv, cvv = plan.cw[r0:r1], plan.cv[r0:r1], plan.cvv[r0:r1]
            if not (cw.any() or cv.any() or cvv.any()):
                continue  # no row of this chunk has data at the seed
            parts.append(dask.delayed(_column_block)(block, self.store.encoding, plan.lo, plan.hi, cw, cv, cvv,
                                                     self.engine))
        if not parts:
            return np.zeros((6, plan.hi - plan.lo))
        return self._compute(dask.delayed(_add)(*parts))


def _need_dask() -> None:
    if not HAVE_DASK:  # pragma: no cover - depends on the environment
        raise ImportError("distributed searches need dask (pip install 'dask[distributed]')")


__all__ = ["DEFAULT_CHUNK_ROWS", "DistributedExpressionSearch", "StoreRows", "store_array"]
