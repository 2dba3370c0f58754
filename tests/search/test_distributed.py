"""The searches on a real dask.distributed LocalCluster over the chunked store give the local results."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from brainmap.search import ExpressionSearch  # noqa: E402
from brainmap.search.distributed import DistributedExpressionSearch, StoreRows, store_array  # noqa: E402


@pytest.fixture(scope="module")
def client():
    # Compile (or load) the kernels once here, so that the workers load them from numba's cache.
    from brainmap.search import _kernels

    _kernels.warm_up()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        yield client


def _same(a, b, tol=0.0):
    pa, pb = a.page(0, 500), b.page(0, 500)
    assert pa.total_rows == pb.total_rows > 0
    if tol == 0.0:
        assert pa.rows == pb.rows
    else:
        got = {getattr(r, "voxel", None) or r.data_set_id: r for r in pa}
        for row in pb:
            other = got[getattr(row, "voxel", None) or row.data_set_id]
            assert other.r == pytest.approx(row.r, abs=tol)


def test_store_as_a_chunked_dask_array_reads_the_same_values(stores):
    store = stores["coverage"]
    array = store_array(store, chunk_rows=50)
    assert array.shape == store.raw.shape and array.dtype == store.raw.dtype
    assert array.chunks[0] == (50, 50, 50, 50, 40) and array.chunks[1] == (store.n_columns,)
    np.testing.assert_array_equal(array[45:130].compute(), store.raw[45:130])
    rows = StoreRows.of(store)
    rows[0:2]  # maps the file
    clone = pickle.loads(pickle.dumps(rows))  # pickles the path, never the data
    assert len(pickle.dumps(rows)) < 1000 and clone._map is None
    np.testing.assert_array_equal(clone[3:5], store.raw[3:5])


def test_searches_on_a_local_cluster_equal_the_local_searches(stores, client, ish_grid):
    store = stores["coverage"]
    local = ExpressionSearch(store, ish_grid)
    remote = DistributedExpressionSearch(store, client, ish_grid, chunk_rows=64)  # 4 chunks over 2 workers
    seed = int(store.data_set_ids[4])
    _same(remote.correlation(seed), local.correlation(seed))
    _same(remote.correlation(seed, ["HPF", "TH"]), local.correlation(seed, ["HPF", "TH"]))
    _same(remote.differential("TH", "Isocortex", threshold2=(1, 50)),
          local.differential("TH", "Isocortex", threshold2=(1, 50)))
    # Column sums are added chunk by chunk: the same up to float rounding.
    _same(remote.seed_point([6800, 4200, 5600]), local.seed_point([6800, 4200, 5600]), tol=1e-6)


def test_float32_stores_work_on_the_cluster_too(stores, client, ish_grid):
    store = stores["float32"]
    remote = DistributedExpressionSearch(store, client, ish_grid, chunk_rows=120)
    _same(remote.differential("HPF", "TH"), ExpressionSearch(store, ish_grid).differential("HPF", "TH"))


def test_without_a_client_dask_runs_the_same_searches_locally(stores, ish_grid):
    store = stores["coverage"]
    remote = DistributedExpressionSearch(store, None, ish_grid, chunk_rows=100)
    local = ExpressionSearch(store, ish_grid)
    _same(remote.differential("HPF", "Isocortex"), local.differential("HPF", "Isocortex"))
