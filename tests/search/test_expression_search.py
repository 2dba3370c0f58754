"""Differential, correlation and seed-point searches: planted patterns, agreement with a plain float64
reference on data with no-data voxels, Allen's threshold options, paging, input validation."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.errors import UnknownStructureError
from brainmap.search import (
    ExpressionSearch,
    MatrixStore,
    SearchInputError,
    UnknownDataSetError,
    correlation_search,
    differential_search,
    seed_point_search,
)
from brainmap.search._kernels import HAVE_NUMBA
from brainmap.search.expression import _fold_changes, parse_threshold, pearson_from_sums
from brainmap.search.matrix import GridSpec

ENGINES = ["numpy"] + (["numba"] if HAVE_NUMBA else [])


# ------------------------------------------------------------------------------------------------ helpers
def _reference_differential(values, target_cols, contrast_cols):
    with np.errstate(invalid="ignore", divide="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m1 = np.nanmean(values[:, target_cols], axis=1)
            m2 = np.nanmean(values[:, contrast_cols], axis=1)
    return m1, m2


@pytest.fixture(scope="module")
def random_store(tmp_path_factory, ish_grid):
    """Plain random values (not synthetic patterns) with 15 % no-data voxels, on the thalamus, isocortex and
    hippocampus voxels: 120 data sets, float32 and uint8."""
    rng = np.random.default_rng(11)
    voxels = np.union1d(np.union1d(ish_grid.structure_voxels("TH"), ish_grid.structure_voxels("Isocortex")),
                        ish_grid.structure_voxels("HPF"))
    n = 120
    latent = rng.standard_normal((n, 4))
    patterns = rng.standard_normal((4, voxels.size))
    x = np.exp(0.6 * latent @ patterns + 0.5 * rng.standard_normal((n, voxels.size)))
    x[rng.random(x.shape) < 0.15] = np.nan
    x[7, :] = np.nan  # a data set without any data
    x[9, : voxels.size // 2] = np.nan
    root = tmp_path_factory.mktemp("random")
    out = {}
    for encoding in ("float32", "uint8"):
        store = MatrixStore.create(root / encoding, voxels, encoding=encoding)
        store.append(x, np.arange(1000, 1000 + n), gene=[f"G{i}" for i in range(n)], plane="sagittal")
        out[encoding] = MatrixStore.open(store.path)
    out["values"] = x
    return out


# ------------------------------------------------------------------------------------------------ agreement
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("encoding", ["float32", "uint8"])
@pytest.mark.parametrize("domain", [None, "HPF", ["VISp", "MOp", "TH"]])
def test_correlation_agrees_with_a_plain_float64_reference(random_store, ish_grid, reference_pearson, engine,
                                                           encoding, domain):
    store = random_store[encoding]
    values = store.decode()  # the stored values (8-bit codes decoded): the reference sees what the search sees
    search = ExpressionSearch(store, ish_grid, engine=engine)
    seed = 1003
    ranking = search.correlation(seed, domain)
    cols = search.domain_columns(domain)
    seed_values = values[store.row_index(seed), cols]
    expected = np.array([reference_pearson(values[i, cols], seed_values, 3)[0] for i in range(store.n_rows)])
    got = np.full(store.n_rows, np.nan)
    for row in ranking.page(0, 10_000):
        got[store.row_index(row.data_set_id)] = row.r
        assert row.n_voxels == reference_pearson(values[store.row_index(row.data_set_id), cols], seed_values, 3)[1]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    # Every 2,048-column chunk is centred on the row's own mean there: float32 sums stay within ~1e-7 of float64.
    np.testing.assert_allclose(got, expected, atol=3e-7)
    assert ranking.total_rows == np.count_nonzero(~np.isnan(expected))
    assert ranking.top(1)[0].data_set_id == seed and ranking.top(1)[0].r == pytest.approx(1.0, abs=1e-6)
    rs = [row.r for row in ranking.page(0, 10_000)]
    assert rs == sorted(rs, reverse=True)


def test_compact_encoding_agrees_with_float32(random_store, ish_grid):
    f32 = ExpressionSearch(random_store["float32"], ish_grid).correlation(1010, "Isocortex").page(0, 10_000)
    u8 = ExpressionSearch(random_store["uint8"], ish_grid).correlation(1010, "Isocortex").page(0, 10_000)
    r32 = {row.data_set_id: row.r for row in f32}
    r8 = {row.data_set_id: row.r for row in u8}
    assert r32.keys() == r8.keys()
    assert max(abs(r32[k] - r8[k]) for k in r32) < 1e-3
    # and against the original (unstored, float64) values
    x = random_store["values"]
    cols = ExpressionSearch(random_store["uint8"], ish_grid).domain_columns("Isocortex")
    for row in u8.rows[:20]:
        i = row.data_set_id - 1000
        both = ~np.isnan(x[i, cols]) & ~np.isnan(x[10, cols])
        assert row.r == pytest.approx(np.corrcoef(x[i, cols][both], x[10, cols][both])[0, 1], abs=1e-3)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("encoding", ["float32", "uint8"])
def test_differential_agrees_with_a_plain_float64_reference(random_store, ish_grid, engine, encoding):
    store = random_store[encoding]
    values = store.decode()
    search = ExpressionSearch(store, ish_grid, engine=engine)
    ranking = search.differential("TH", ["Isocortex", "HPF"])
    m1, m2 = _reference_differential(values, search.domain_columns("TH"), search.domain_columns(["Isocortex", "HPF"]))
    expected = m1 / m2
    rows = ranking.page(0, 10_000).rows
    assert ranking.total_rows == np.count_nonzero(~np.isnan(expected)) == store.n_rows - 1  # row 7 has no data
    for row in rows:
        i = store.row_index(row.data_set_id)
        assert row.fold_change == pytest.approx(expected[i], rel=1e-6)
        assert row.target_mean == pytest.approx(m1[i], rel=1e-6)
        assert row.contrast_mean == pytest.approx(m2[i], rel=1e-6)
        assert row.target_voxels == np.count_nonzero(~np.isnan(values[i, search.domain_columns("TH")]))
    folds = [row.fold_change for row in rows]
    assert folds == sorted(folds, reverse=True)


def test_seed_point_agrees_with_a_plain_float64_reference(stores, ish_grid, reference_pearson):
    for encoding in ("float32", "uint8"):
        store = stores[encoding]
        values = store.decode()
        search = ExpressionSearch(store, ish_grid)
        point = [6800, 4200, 5600]
        ranking = search.seed_point(point, "HPF", min_data_sets=5)
        seed = values[:, store.column_positions([ish_grid.voxel_at_point(point)])[0]]
        cols = search.domain_columns("HPF")
        expected = {int(store.columns[c]): reference_pearson(values[:, c], seed, 5) for c in cols}
        rows = ranking.page(0, 100_000).rows
        assert len(rows) == sum(not np.isnan(r) for r, _ in expected.values())
        for row in rows:
            r, n = expected[row.voxel]
            assert row.r == pytest.approx(r, abs=1e-5) and row.n_data_sets == n
            assert row.structure_id == ish_grid.structure_id_at(row.voxel)
        assert [row.r for row in rows] == sorted((row.r for row in rows), reverse=True)


# ------------------------------------------------------------------------------------------------ planted
def test_a_data_set_built_to_be_the_best_match_ranks_first(tmp_path, stores, synthetic):
    base = stores["uint8"]
    seed_id = int(base.data_set_ids[10])
    seed = base.decode(10)
    rng = np.random.default_rng(5)
    twin = seed * rng.lognormal(0.0, 0.05, seed.size)  # the seed's pattern, 5 % noise
    store = base.subset(tmp_path / "planted", None)
    store.append(twin[None, :], [1], gene="Twin", plane="sagittal", no_data_value=None)
    for encoding_store in (store,):
        ranking = ExpressionSearch(encoding_store).correlation(seed_id)
        top = ranking.top(3)
        assert [top[0].data_set_id, top[1].data_set_id] == [seed_id, 1]
        assert top[1].r > 0.99 > top[2].r


def test_a_gene_enriched_in_thalamus_over_isocortex_tops_the_differential_search(tmp_path, stores, ish_grid):
    store = stores["coverage"].subset(tmp_path / "planted", None)
    rng = np.random.default_rng(6)
    flat = np.full(ish_grid.n_voxels, 0.3)
    flat[ish_grid.structure_voxels("TH")] = 40.0  # well above every synthetic gene's TH / Isocortex ratio
    flat = flat * rng.lognormal(0.0, 0.2, flat.size)
    store.append(flat[None, :], [42], gene="Planted", plane="sagittal")
    ranking = ExpressionSearch(store).differential("TH", "Isocortex")
    best = ranking.top(1)[0]
    assert best.data_set_id == 42 and best.gene == "Planted"
    assert best.fold_change == pytest.approx(40.0 / 0.3, rel=0.1)
    # Reversed, it is at the bottom.
    assert ExpressionSearch(store).differential("Isocortex", "TH").page(ranking.total_rows - 1, 1)[0].data_set_id == 42


def test_seed_point_finds_the_voxels_that_share_the_seeds_profile(tmp_path, ish_grid):
    rng = np.random.default_rng(8)
    voxels = ish_grid.structure_voxels(["CA1", "TH"])
    n = 60
    x = rng.lognormal(0.0, 0.5, (n, voxels.size))
    seed_voxel = ish_grid.voxel_at_point([6800, 4200, 5600])
    assert seed_voxel in voxels
    partners = rng.choice(voxels[voxels != seed_voxel], 5, replace=False)
    seed_col = np.searchsorted(voxels, seed_voxel)
    for p in partners:  # same profile across data sets, up to an affine map and a little noise
        x[:, np.searchsorted(voxels, p)] = 2.0 * x[:, seed_col] + 0.1 + 0.01 * rng.standard_normal(n)
    store = MatrixStore.create(tmp_path / "agea", voxels, encoding="uint8")
    store.append(x, np.arange(n), plane="coronal")
    ranking = ExpressionSearch(store, ish_grid).seed_point([6800, 4200, 5600])
    top = ranking.top(6)
    assert top[0].voxel == seed_voxel and top[0].r == pytest.approx(1.0, abs=1e-6)
    assert {row.voxel for row in top[1:]} == set(partners.tolist())
    volume = ranking.volume()
    assert volume.shape == ish_grid.shape and volume.dtype == np.float32
    assert volume[tuple(ish_grid.voxel_ijk(seed_voxel))] == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(volume[0, 0, 0])
    assert top[0].acronym == ish_grid.structure_tree.get_acronym_map()[top[0].structure_id]
    np.testing.assert_allclose(top[0].position_um, ish_grid.voxel_center_um(seed_voxel))


# ------------------------------------------------------------------------------------------------ thresholds
def test_thresholds_clamp_the_domain_means_as_allens_pairs(tmp_path, ish_grid):
    th, ctx = ish_grid.structure_voxels("TH"), ish_grid.structure_voxels("Isocortex")
    voxels = np.union1d(th, ctx)
    in_th = np.isin(voxels, th)
    rows = np.zeros((4, voxels.size))
    rows[0, in_th] = 5.0  # absent from the contrast: infinite fold change without thresholds
    rows[1, in_th], rows[1, ~in_th] = 80.0, 2.0  # target mean above 50
    rows[2] = 0.0  # 0 / 0: undefined
    rows[3, in_th], rows[3, ~in_th] = 3.0, 0.5
    store = MatrixStore.create(tmp_path / "t", voxels, encoding="float32")
    store.append(rows, [1, 2, 3, 4])
    search = ExpressionSearch(store, ish_grid)
    plain = search.differential("TH", "Isocortex").page()
    assert [r.data_set_id for r in plain] == [1, 2, 4] and plain.total_rows == 3
    assert plain[0].fold_change == np.inf and plain[1].fold_change == pytest.approx(40.0)
    clamped = search.differential("TH", "Isocortex", threshold1=(0, 50), threshold2="1,50").page()
    assert [(r.data_set_id, r.fold_change) for r in clamped] == [(2, pytest.approx(25.0)), (1, pytest.approx(5.0)),
                                                               (4, pytest.approx(3.0)), (3, pytest.approx(0.0))]
    assert clamped[0].target_mean == pytest.approx(80.0)  # rows report the unclamped means
    for bad in ("1", (3, 1), ("a", 2), (0, np.inf), 5):
        with pytest.raises(SearchInputError, match="threshold1"):
            search.differential("TH", "Isocortex", threshold1=bad)
    assert parse_threshold(None, "t") is None and parse_threshold([0, 50], "t") == (0.0, 50.0)


# ------------------------------------------------------------------------------------------------ paging
def test_paging_never_skips_or_repeats_a_row(random_store, ish_grid):
    store = random_store["uint8"]
    search = ExpressionSearch(store, ish_grid)
    for ranking in (search.correlation(1003), search.differential("TH", "Isocortex")):
        full = [row.data_set_id for row in ranking.page(0, 10_000)]
        assert len(full) == len(set(full)) == ranking.total_rows
        for size in (1, 7, 50):
            walked = [row.data_set_id for page in ranking.pages(size) for row in page]
            assert walked == full
            start, pieces = 0, []
            while start < ranking.total_rows:
                page = ranking.page(start, size)
                assert page.total_rows == ranking.total_rows and page.start_row == start
                pieces += [row.data_set_id for row in page]
                start += len(page)
            assert pieces == full
        assert ranking.page(ranking.total_rows + 5, 10).rows == []
        assert ranking.page(3, 0).rows == []
    # Ties (equal fold changes) are ordered by data set id, so pages are stable across calls.
    a = [r.data_set_id for r in search.differential("TH", "TH").page(0, 10_000)]
    assert a == sorted(a) and a == [r.data_set_id for r in search.differential("TH", "TH").page(0, 10_000)]


def test_pages_mirror_allens_envelope(random_store, ish_grid):
    page = correlation_search(random_store["float32"], 1003, "HPF", start_row=2, num_rows=3, grid=ish_grid)
    envelope = page.to_dict()
    assert envelope["success"] is True and envelope["start_row"] == 2 and envelope["num_rows"] == 3
    assert envelope["total_rows"] == page.total_rows and len(envelope["msg"]) == 3
    assert set(envelope["msg"][0]) == {"data_set_id", "gene", "plane", "r", "n_voxels"}
    frame = page.to_dataframe()
    assert list(frame.index) == [2, 3, 4] and list(frame.columns) == ["data_set_id", "gene", "plane", "r", "n_voxels"]
    diff = differential_search(random_store["float32"], "TH", "Isocortex", num_rows=5, grid=ish_grid)
    assert len(diff) == 5 and diff.total_rows == 119
    assert ExpressionSearch(random_store["float32"], ish_grid).correlation(1003, sort_order="asc").top(1)[0].r < 0


# ------------------------------------------------------------------------------------------------ validation
def test_every_search_validates_its_inputs(tmp_path, random_store, stores, ish_grid):
    store = random_store["uint8"]
    search = ExpressionSearch(store, ish_grid)
    with pytest.raises(UnknownStructureError, match="THX"):
        search.correlation(1003, "THX")
    with pytest.raises(UnknownStructureError):
        search.differential("TH", [315, 999999999])
    with pytest.raises(UnknownDataSetError, match="5"):
        search.correlation(5)
    with pytest.raises(SearchInputError, match="domain .*no voxel"):
        search.correlation(1003, "CB")  # the cerebellum is not among this store's voxels
    with pytest.raises(SearchInputError, match="contrast set .*no voxel"):
        search.differential("TH", "CB")
    with pytest.raises(SearchInputError, match="target and contrast"):
        search.differential(None, "TH")
    with pytest.raises(SearchInputError, match="has data in 0"):
        search.correlation(1007)  # the data set without data
    with pytest.raises(SearchInputError, match="sort_order"):
        search.correlation(1003, sort_order="up")
    with pytest.raises(SearchInputError, match="min_voxels"):
        search.correlation(1003, min_voxels=1)
    with pytest.raises(SearchInputError, match="outside the brain"):
        search.seed_point([100, 100, 100])
    with pytest.raises(SearchInputError, match="outside the grid"):
        search.seed_point([-105, 100, 100])
    with pytest.raises(SearchInputError, match="not one of this store"):
        search.seed_point([10000, 5000, 5600])  # a brain voxel, but not in this store
    with pytest.raises(SearchInputError, match="start_row"):
        correlation_search(store, 1003, start_row=-1, grid=ish_grid)
    with pytest.raises(SearchInputError, match="num_rows"):
        search.correlation(1003).page(0, "ten")
    with pytest.raises(SearchInputError, match="seed voxel .* data in"):
        seed_point_search(stores["uint8"], [6800, 4200, 5600], min_data_sets=10_000)
    other_grid = MatrixStore.create(tmp_path / "other", [1, 2], grid=GridSpec((10, 10, 10), (100.0,) * 3))
    with pytest.raises(ValueError, match="pass its SearchGrid"):
        ExpressionSearch(other_grid)
    with pytest.raises(ValueError, match="differs"):
        ExpressionSearch(other_grid, ish_grid)


# ------------------------------------------------------------------------------------------------ exact head
def test_an_exact_float32_store_makes_the_head_of_8bit_rankings_float32s(random_store, stores, ish_grid):
    for u8, f32 in ((random_store["uint8"], random_store["float32"]), (stores["uint8"], stores["float32"])):
        refined = ExpressionSearch(u8, ish_grid, exact=f32, exact_rows=30)
        plain32 = ExpressionSearch(f32, ish_grid)
        for seed in u8.data_set_ids[[3, 10, 20]]:
            for domain in (None, "HPF"):
                head = refined.correlation(int(seed), domain).top(30)
                want = plain32.correlation(int(seed), domain).top(30)
                assert [(a.data_set_id, a.r, a.n_voxels) for a in head] == [(b.data_set_id, b.r, b.n_voxels) for b in want]
        for target, contrast, t2 in (("TH", "Isocortex", None), ("HPF", ["TH", "Isocortex"], (1, 50))):
            head = refined.differential(target, contrast, threshold2=t2).top(30)
            want = plain32.differential(target, contrast, threshold2=t2).top(30)
            assert [a.data_set_id for a in head] == [b.data_set_id for b in want]
            for a, b in zip(head, want):
                assert a.fold_change == pytest.approx(b.fold_change, rel=1e-12)
        assert refined.correlation(int(u8.data_set_ids[3])).total_rows == plain32.correlation(int(u8.data_set_ids[3])).total_rows


def test_the_exact_store_must_match(random_store, stores, ish_grid):
    with pytest.raises(ValueError, match="same rows and columns"):
        ExpressionSearch(random_store["uint8"], ish_grid, exact=stores["float32"])
    with pytest.raises(ValueError, match="float32"):
        ExpressionSearch(random_store["uint8"], ish_grid, exact=random_store["uint8"])
    with pytest.raises(SearchInputError, match="exact_rows"):
        ExpressionSearch(random_store["uint8"], ish_grid, exact=random_store["float32"], exact_rows=0)


def test_quantization_bounds_contain_float32s_r_and_fold_change(random_store, stores, ish_grid):
    """The bounds the exact head relies on: every row's float32 score lies within the bounds computed from its
    8-bit sums, for both stores, several seeds and domains (a failure would let a true head row be missed)."""
    from brainmap.search.expression import fold_change_bounds, quantization_bounds

    for u8, f32 in ((random_store["uint8"], random_store["float32"]), (stores["uint8"], stores["float32"])):
        search = ExpressionSearch(u8, ish_grid, exact=f32)
        plain32 = ExpressionSearch(f32, ish_grid)
        widths = []
        for seed in u8.data_set_ids[[3, 10, 20]]:
            for domain in (None, "HPF", "CA1"):
                plan = search.plan_correlation(int(seed), domain)  # the seed read from the float32 store
                sums8 = search.correlation_sums(plan)
                r8, _ = pearson_from_sums(sums8, plan.min_voxels)
                r32, _ = pearson_from_sums(plain32.correlation_sums(plan), plan.min_voxels)
                lower, upper = quantization_bounds(sums8, u8.row_center, r8, plan.min_voxels)
                ok = ~np.isnan(r32)
                assert np.all(lower[ok] <= r32[ok]) and np.all(r32[ok] <= upper[ok])
                assert np.all(np.isnan(lower) == (np.rint(sums8[:, 0]) < plan.min_voxels))
                widths.append(np.nanmedian(upper - lower))
        assert np.median(widths) < 0.1  # informative, not just [-1, 1]
        for target, contrast, t1, t2 in (("TH", "Isocortex", None, None), ("HPF", ["TH", "Isocortex"], (0, 50), (1, 50))):
            plan = search.plan_differential(target, contrast, t1, t2)
            sums8 = search.differential_sums(plan)
            f8, m1, m2, _, _ = _fold_changes(sums8, u8.row_offset, u8.row_scale, plan)
            fold32 = _fold_changes(plain32.differential_sums(plan), np.zeros(f32.n_rows), np.ones(f32.n_rows), plan)[0]
            lower, upper = fold_change_bounds(sums8, u8.row_scale, m1, m2, plan)
            ok = ~np.isnan(fold32)
            assert np.all(lower[ok] <= fold32[ok]) and np.all(fold32[ok] <= upper[ok])


def test_the_exact_head_rescores_only_rows_that_can_reach_it(stores, ish_grid):
    u8, f32 = stores["uint8"], stores["float32"]
    refined = ExpressionSearch(u8, ish_grid, exact=f32, exact_rows=10)
    plain32 = ExpressionSearch(f32, ish_grid)
    seed = int(u8.data_set_ids[10])
    for order in ("desc", "asc"):
        head = refined.correlation(seed, sort_order=order).top(10)
        assert 10 <= refined.last_rescored < u8.n_rows  # the bound prunes: not every row is read from float32
        want = plain32.correlation(seed, sort_order=order).top(10)
        assert [(a.data_set_id, a.r) for a in head] == [(b.data_set_id, b.r) for b in want]
