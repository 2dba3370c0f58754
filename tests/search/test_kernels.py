"""The shared Pearson kernel: every chunk centred on the row's own mean, so that rows far from the reference centre
(small domains, nearly empty rows, large offsets) keep float64's r; every engine and path agrees; the chunk
statistics the fast path uses are the store's rows'."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.search import MatrixStore, _kernels
from brainmap.search.expression import pearson_from_sums
from brainmap.search.matrix import CHUNK_COLUMNS, _chunk_statistics, encode_uint8

ENGINES = ["numpy"] + (["numba"] if _kernels.HAVE_NUMBA else [])


def _reference(x: np.ndarray, y: np.ndarray, min_n: int = 3) -> float:
    both = ~np.isnan(x) & ~np.isnan(y)
    if both.sum() < min_n or np.ptp(x[both]) == 0:
        return np.nan
    return float(np.corrcoef(x[both], y[both])[0, 1])


@pytest.fixture(scope="module")
def offset_rows():
    """float32 rows of a large constant plus small signals (mean/std ~ 1e5), 10 % no data, some rows without data
    over the first 3,000 columns, one constant over a block, one all empty: float32 sums about any centre far
    from a row's mean lose r to cancellation."""
    rng = np.random.default_rng(3)
    n_rows, n_cols = 70, 7_000
    latent = rng.standard_normal((n_rows, 3)) @ rng.standard_normal((3, n_cols))
    x = (1.0e4 + 0.1 * (latent + 0.5 * rng.standard_normal((n_rows, n_cols)))).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[::6, :3000] = np.nan
    x[5, 2048:4096] = np.float32(1.0e4)  # constant over one block
    x[7] = np.nan
    return x


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("with_stats", [True, False])
def test_pearson_sums_keep_float64s_r_far_from_the_centre(offset_rows, engine, dense, with_stats):
    x = offset_rows
    rng = np.random.default_rng(4)
    cols = np.sort(rng.choice(x.shape[1], 5_000, replace=False)) if dense else np.arange(100, 6_900, 7)
    if dense:
        cols = np.union1d(cols, np.arange(2048, 4096))  # one block the domain covers whole
    plan = _kernels.ColumnPlan.of(cols, dense=dense)
    seed_row = x[1, cols].astype(np.float64)
    has = ~np.isnan(seed_row)
    plan = _kernels.ColumnPlan.of(cols[has], dense=dense)
    seed = seed_row[has] - seed_row[has].mean()
    seed /= np.abs(seed).max()
    stats = _chunk_statistics(x, "float32") if with_stats else None
    # Reported about 1e4 - 50, ~500 standard deviations from every row's mean: float32 sums about it would lose
    # ~1e-2 in r; float64 sums lose nothing.
    sums = _kernels.pearson_sums(x, "float32", plan, seed, np.full(x.shape[0], 1e4 - 50), engine, threads=2,
                                 chunk_stats=stats)
    r, n = pearson_from_sums(sums, 3)
    expected = np.array([_reference(x[i, plan.cols].astype(np.float64), seed) for i in range(x.shape[0])])
    np.testing.assert_array_equal(np.isnan(r), np.isnan(expected))
    np.testing.assert_allclose(r, expected, atol=2e-7)
    assert np.isnan(r[7]) and n[7] == 0
    np.testing.assert_array_equal(n, (~np.isnan(x[:, plan.cols])).sum(axis=1))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_row_constant_over_the_domain_has_no_r(offset_rows, engine):
    x = offset_rows
    cols = np.arange(2048, 4096)  # where row 5 is constant
    seed = np.linspace(-1.0, 1.0, cols.size)
    for stats in (None, _chunk_statistics(x, "float32")):
        sums = _kernels.pearson_sums(x, "float32", _kernels.ColumnPlan.of(cols), seed, np.full(x.shape[0], 3.0),
                                     engine, chunk_stats=stats)
        r, _ = pearson_from_sums(sums, 3)
        assert np.isnan(r[5]) and np.isfinite(r[0])


def test_uint8_paths_agree_with_the_numpy_engine():
    rng = np.random.default_rng(5)
    values = rng.lognormal(0.0, 1.0, (40, 9_000)).astype(np.float32)
    values[rng.random(values.shape) < 0.05] = np.nan
    values[::4, 4096:6144] = np.nan  # no data over a whole block
    codes, _, _ = encode_uint8(values)
    stats = _chunk_statistics(codes, "uint8")
    cols = np.concatenate([np.arange(0, 4096), np.arange(4100, 9_000)])
    seed = rng.standard_normal(cols.size)
    plans = [_kernels.ColumnPlan.of(cols), _kernels.ColumnPlan.of(cols, dense=False)]
    reference = _kernels.pearson_sums(codes, "uint8", plans[0], seed, np.full(40, 500.0), "numpy")
    r0, n0 = pearson_from_sums(reference, 3)
    for plan in plans:
        for engine in ENGINES:
            for chunk_stats in (None, stats):
                r, n = pearson_from_sums(_kernels.pearson_sums(codes, "uint8", plan, seed, np.full(40, 500.0), engine,
                                                               chunk_stats=chunk_stats), 3)
                np.testing.assert_allclose(r, r0, atol=1e-7)
                np.testing.assert_array_equal(n, n0)
    with pytest.raises(ValueError, match="chunk_stats"):
        _kernels.pearson_sums(codes, "uint8", plans[0], seed, None, chunk_stats=stats[:, :2])


def test_stores_keep_their_rows_block_statistics(tmp_path):
    rng = np.random.default_rng(6)
    values = rng.lognormal(0.0, 1.0, (30, 5_000))
    values[rng.random(values.shape) < 0.2] = -1.0  # Allen's no data
    for encoding in ("uint8", "float32"):
        store = MatrixStore.create(tmp_path / encoding, np.arange(5_000) * 3, encoding=encoding)
        store.append(values[:10], np.arange(10))
        store.append(values[10:], np.arange(10, 30))
        stats = store.chunk_stats
        assert stats.shape == (30, -(-5_000 // CHUNK_COLUMNS), 2) and stats.dtype == np.float32
        np.testing.assert_array_equal(stats, _chunk_statistics(store.raw, encoding))
        assert stats[0, 0, 0] == np.count_nonzero(values[0, :CHUNK_COLUMNS] != -1.0)
        (store.path / "chunk_stats.npy").unlink()  # a store made before chunk_stats: computed on first use
        again = MatrixStore.open(store.path)
        np.testing.assert_array_equal(again.chunk_stats, stats)
        assert (store.path / "chunk_stats.npy").exists()
        part = store.subset(tmp_path / f"{encoding}-part", store.columns[1000:4500], data_set_ids=[3, 1, 2])
        np.testing.assert_array_equal(part.chunk_stats, _chunk_statistics(part.raw, encoding))
