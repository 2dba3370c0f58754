"""Connectivity searches: source, target, spatial, injection-coordinate and correlation searches and the projection
matrix, on experiments built from real experiment profiles (``truth_density`` of real Allen experiments at 100 um,
plus variants: mirrored, Cre lines, noise, no-data planes) and a planted experiment; checked against plain float64
/ pandas references, paging, input validation, and the same searches on a dask LocalCluster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainmap.atlas import ReferenceSpace
from brainmap.data import tables
from brainmap.errors import BrainmapError, UnknownStructureError
from brainmap.pipeline.unionize import unionize_projection
from brainmap.search import MatrixStore, MissingSearchDataError, SearchInputError, UnknownDataSetError
from brainmap.search.connectivity import (
    ConnectivitySearch,
    allen_record,
    connectivity_grid,
    create_projection_store,
    densest_paths,
    projection_matrix,
    run_service,
    store_values_at,
)
from brainmap.specimen.synthetic.signal import truth_density

#: Real experiments whose profiles the data are made of: VISp, IC (with VISp among its injection structures),
#: FRP, VISp + VISrl.
REAL = [100141219, 127091083, 100140756, 113887162]
#: Variants of each real profile: (transgenic line, mirrored to the left hemisphere, no-data planes).
VARIANTS = [("Cux2-IRES-Cre", True, False), ("Rbp4-Cre_KL100", False, True), ("", False, False)]
PLANTED = 999_000_001
#: The planted experiment: its densest voxel at SEED (cerebellum), a ridge SEED -> BEND -> its injection at SITE.
SEED_IJK, BEND_IJK, SITE_IJK = (110, 30, 40), (75, 14, 40), (40, 20, 40)
RIDGE, PEAK, BACKGROUND = 0.5, 0.9, 0.0005


def _unionize(density: np.ndarray, fraction: np.ndarray, space: ReferenceSpace, experiment_id: int) -> pd.DataFrame:
    one = np.ones_like(density)
    inj = (fraction > 0).astype(density.dtype)
    grids = dict(data_mask=one, sum_pixels=one * 8e4, injection_fraction=fraction, injection_density=density * inj,
                 injection_energy=density * inj * 100, injection_sum_pixel_intensities=one * 8e6 * inj,
                 projection_density=density, projection_energy=density * 100, sum_pixel_intensities=one * 8e6)
    return unionize_projection(grids, space, experiment_id=experiment_id)


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def _ridge_distance(points: np.ndarray) -> np.ndarray:
    s, m, p = (np.asarray(v, dtype=np.float64) for v in (SEED_IJK, BEND_IJK, SITE_IJK))
    return np.minimum(_segment_distance(points, s, m), _segment_distance(points, m, p))


def _planted(space: ReferenceSpace) -> tuple[np.ndarray, np.ndarray]:
    """Background everywhere in the brain, a tube of RIDGE from SEED via BEND to SITE, PEAK at SEED, an injection
    (fraction 1, density 1) at SITE."""
    brain = space.annotation > 0
    ijk = np.argwhere(brain).astype(np.float64)
    density = np.zeros(space.shape, dtype=np.float32, order="F")
    density[brain] = BACKGROUND
    tube = ijk[_ridge_distance(ijk) <= 1.0].astype(np.int64)
    density[tuple(tube.T)] = RIDGE
    density[SEED_IJK] = PEAK
    fraction = np.zeros_like(density)
    fraction[SITE_IJK] = 1.0
    density[SITE_IJK] = 1.0
    return density, fraction


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Experiments, unionizes and float32 / uint8 stores of 4 real profiles x 4 + 1 planted experiment."""
    space = ReferenceSpace.bundled(100)
    grid = connectivity_grid()
    knox = tables.knox_experiments()
    rng = np.random.default_rng(3)
    records, rows, unionizes = [], [], []
    for i, eid in enumerate(REAL):
        truth = truth_density("connectivity", experiment_id=eid, resolution_um=100, space=space)
        density, fraction = truth.signal_density, truth.injection_fraction
        record = knox.loc[eid].to_dict()
        record["transgenic_line"] = ""
        union = _unionize(density, fraction, space, eid)
        records.append(record)
        rows.append(density.ravel(order="F"))
        unionizes.append(union)
        for j, (line, mirrored, gaps) in enumerate(VARIANTS):
            vid = 900_000_000 + 10 * i + j
            variant = density[:, :, ::-1] if mirrored else density
            variant = np.clip(variant * rng.lognormal(0.0, 0.3, variant.shape).astype(np.float32), 0, 1)
            if gaps:
                variant[rng.choice(space.shape[0], 4, replace=False)] = np.nan
            rec = dict(record, id=vid, transgenic_line=line, specimen_name=f"variant-{vid}",
                       injection_volume=record["injection_volume"] * (1.1 + 0.1 * j))
            if mirrored:
                rec["injection_z"] = 11400 - record["injection_z"]
            factor = 0.5 + 0.37 * j + 0.011 * i
            derived = union.assign(experiment_id=vid)
            for metric in ("projection_volume", "normalized_projection_volume", "sum_projection_pixels"):
                derived[metric] = derived[metric] * factor
            if mirrored:
                derived["hemisphere_id"] = derived["hemisphere_id"].map({1: 2, 2: 1, 3: 3})
            records.append(rec)
            rows.append(np.asarray(variant, dtype=np.float32).ravel(order="F"))
            unionizes.append(derived)
    density, fraction = _planted(space)
    mop = 985
    records.append(dict(id=PLANTED, transgenic_line="", injection_structures=[mop], primary_injection_structure=mop,
                        injection_x=SITE_IJK[0] * 100 + 50, injection_y=SITE_IJK[1] * 100 + 50,
                        injection_z=SITE_IJK[2] * 100 + 50, injection_volume=0.01, specimen_name="planted",
                        strain="C57BL/6J", gender="M", product_id=5))
    rows.append(density.ravel(order="F"))
    unionizes.append(_unionize(density, fraction, space, PLANTED))
    experiments = pd.DataFrame.from_records(records)
    experiments = experiments[["id", "transgenic_line", "injection_structures", "primary_injection_structure",
                               "injection_x", "injection_y", "injection_z", "injection_volume", "specimen_name",
                               "strain", "gender", "product_id"]]
    unionize = pd.concat(unionizes, ignore_index=True)
    root = tmp_path_factory.mktemp("connectivity")
    values = np.stack(rows)
    stores = {}
    for encoding in ("float32", "uint8"):
        store = create_projection_store(root / encoding, encoding=encoding)
        store.append(values, experiments["id"].to_numpy(), no_data_value=None)
        stores[encoding] = MatrixStore.open(store.path)
    searches = {enc: ConnectivitySearch(experiments, unionize, store, grid) for enc, store in stores.items()}
    return dict(space=space, grid=grid, experiments=experiments, unionizes=unionize, stores=stores,
                search=searches["float32"], search8=searches["uint8"], planted_density=density)


def _ids(ranking) -> list[int]:
    return [row.id for row in ranking.page(0, 10**6)]


def _descendant_set(space: ReferenceSpace, acronyms: list[str]) -> set[int]:
    tree = space.structure_tree
    ids = [tree.get_structures_by_acronym([a])[0]["id"] for a in acronyms]
    return {d for sub in tree.descendant_ids(ids) for d in sub}


# ------------------------------------------------------------------------------------------------ source
def test_source_search_finds_experiments_injected_in_visp_descendants(world):
    search, experiments, space = world["search"], world["experiments"], world["space"]
    inside = _descendant_set(space, ["VISp"])

    def expected(mask):
        chosen = experiments[mask]
        chosen = chosen.sort_values(["injection_volume", "id"], ascending=[False, True], kind="stable")
        return chosen["id"].tolist()

    any_structure = experiments["injection_structures"].apply(lambda ids: any(s in inside for s in ids))
    primary = experiments["primary_injection_structure"].isin(inside)
    assert _ids(search.source("VISp")) == expected(any_structure)
    assert 127091083 in _ids(search.source("VISp"))  # IC injection reaching VISp
    assert _ids(search.source("VISp", primary_structure_only=True)) == expected(primary)
    assert 127091083 not in _ids(search.source(385, primary_structure_only=True))
    isocortex = _descendant_set(space, ["Isocortex"])
    in_cortex = experiments["injection_structures"].apply(lambda ids: any(s in isocortex for s in ids))
    assert _ids(search.source("Isocortex")) == expected(in_cortex)

    # Filters: wild type only (line id 0), one Cre line, the injection hemisphere, product ids.
    wild = experiments["transgenic_line"] == ""
    assert _ids(search.source("VISp", transgenic_lines=[0])) == expected(any_structure & wild)
    cux2 = experiments["transgenic_line"] == "Cux2-IRES-Cre"
    assert _ids(search.source("VISp", transgenic_lines=["cux2-ires-cre"])) == expected(any_structure & cux2)
    left = experiments["injection_z"] < 5700
    assert _ids(search.source("VISp", injection_hemisphere="left")) == expected(any_structure & left)
    assert set(_ids(search.source("VISp", injection_hemisphere="left"))) <= {900_000_000 + 10 * i for i in range(4)}
    assert _ids(search.source("VISp", product_ids=[5])) == expected(any_structure & (experiments["product_id"] == 5))


def test_source_rows_carry_allens_fields(world):
    row = world["search"].source("VISp", primary_structure_only=True).top(1)[0]
    record = allen_record(row)
    for key in ("id", "structure-abbrev", "structure-name", "structure-id", "injection-structures",
                "injection-coordinates", "injection-volume", "transgenic-line", "sum", "num-voxels"):
        assert key in record
    assert record["structure-abbrev"] == "VISp"
    assert record["injection-structures"][0]["abbreviation"] == "VISp"
    assert row.sum > 0 and row.num_voxels == world["grid"].brain_voxels().size  # the whole brain by default


# ------------------------------------------------------------------------------------------------ target
def _reference_target(unionizes, tree, acronyms, hemisphere, metric, threshold=0.0):
    """Plain pandas: sum ``metric`` over the projection rows of the listed structures that are not inside
    another listed one, in one hemisphere; keep sums above the threshold; descending, ties by id."""
    ids = [tree.get_structures_by_acronym([a])[0]["id"] for a in acronyms]
    kept = [s for s in ids if not any(a in ids and a != s for a in tree.ancestor_ids([s])[0])]
    rows = unionizes[~unionizes["is_injection"] & unionizes["structure_id"].isin(kept)
                     & (unionizes["hemisphere_id"] == hemisphere)]
    sums = rows.groupby("experiment_id")[metric].sum()
    sums = sums[sums > threshold]
    return sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))


@pytest.mark.parametrize("domain, hemisphere, metric", [
    (["LGd", "LP"], 3, "projection_volume"),
    (["Isocortex", "VISp", "CP"], 1, "projection_volume"),  # VISp lies inside Isocortex: counted once
    (["SCs", "MB"], 2, "normalized_projection_volume"),
])
def test_target_search_agrees_with_a_float64_pandas_reference(world, domain, hemisphere, metric):
    search, tree = world["search"], world["space"].structure_tree
    side = {1: "left", 2: "right", 3: None}[hemisphere]
    ranking = search.target(domain, target_hemisphere=side, metric=metric)
    expected = _reference_target(world["unionizes"], tree, domain, hemisphere, metric)
    got = ranking.page(0, 10**6).rows
    assert [r.id for r in got] == [eid for eid, _ in expected]
    for row, (_, value) in zip(got, expected):
        assert row.sum == pytest.approx(value, rel=1e-12, abs=1e-300)
    mask = world["grid"].structure_voxels([tree.get_structures_by_acronym([a])[0]["id"] for a in domain], hemisphere)
    assert got[0].num_voxels == mask.size


def test_target_search_filters_and_threshold(world):
    search, tree = world["search"], world["space"].structure_tree
    expected = _reference_target(world["unionizes"], tree, ["LGd"], 3, "projection_volume", threshold=1e-3)
    ranking = search.target("LGd", target_threshold=1e-3)
    assert _ids(ranking) == [eid for eid, _ in expected]
    wild = set(world["experiments"].loc[world["experiments"]["transgenic_line"] == "", "id"])
    everyone = _reference_target(world["unionizes"], tree, ["LGd"], 3, "projection_volume")
    assert _ids(search.target("LGd", transgenic_lines="0")) == [e for e, _ in everyone if e in wild]
    assert set(_ids(search.target("LGd", injection_structures="VISp", primary_structure_only=True))) <= set(
        _ids(search.source("VISp", primary_structure_only=True)))


# ------------------------------------------------------------------------------------------------ spatial
def test_the_planted_experiment_ranks_first_at_its_densest_point_and_its_path_follows_the_ridge(world):
    search = world["search"]
    seed_um = [(c + 0.5) * 100 for c in SEED_IJK]
    ranking = search.spatial(seed_um)
    top = ranking.top(3)
    assert top[0].id == PLANTED and top[0].density == pytest.approx(PEAK, abs=1e-6)
    assert all(row.density < PEAK for row in top[1:])
    path = top[0].path
    assert path[0]["coord"] == seed_um
    assert path[-1]["coord"] == [SITE_IJK[0] * 100 + 50, SITE_IJK[1] * 100 + 50, SITE_IJK[2] * 100 + 50]
    ijk = np.floor(np.asarray([p["coord"] for p in path]) / 100).astype(np.int64)
    assert np.all(_ridge_distance(ijk.astype(np.float64)) <= 1.0)  # never leaves the ridge
    assert min(np.linalg.norm(ijk - np.asarray(BEND_IJK), axis=1)) <= 1.5  # through the bend
    assert all(p["density"] >= RIDGE for p in path)
    assert len(path) <= 2 * np.abs(np.subtract(SEED_IJK, SITE_IJK)).sum()
    # The 8-bit store finds it too.
    assert world["search8"].spatial(seed_um).top(1)[0].id == PLANTED


@pytest.mark.parametrize("encoding", ["float32", "uint8"])
@pytest.mark.parametrize("point, threshold", [([8850, 1150, 8050], 0.001), ([5200, 4300, 3100], 0.0),
                                              ([7650, 2150, 7850], 0.01)])
def test_spatial_ranking_agrees_with_a_float64_reference(world, encoding, point, threshold):
    search = world["search"] if encoding == "float32" else world["search8"]
    store = world["stores"][encoding]
    grid = world["grid"]
    column = store.column_positions([grid.voxel_at_point(point)])[0]
    values = store.decode(slice(None))[:, column]  # plain float64, NaN = no data
    ids = store.data_set_ids
    expected = sorted(((-v, i) for v, i in zip(values, ids) if not np.isnan(v) and v >= threshold))
    got = search.spatial(point, threshold=threshold, paths=False).page(0, 10**6).rows
    assert [r.id for r in got] == [i for _, i in expected]
    assert [r.density for r in got] == pytest.approx([-v for v, _ in expected], rel=1e-12)
    assert all(r.path is None for r in got)


def _reference_walk(density_at, start, end):
    """The walk, one voxel at a time with plain loops: among the 26 neighbours strictly nearer the end and within
    60 degrees of its direction, the densest (no data = 0, outside the brain = -1), ties to the straighter."""
    here, path = tuple(start), [tuple(start)]
    while here != tuple(end):
        d = np.subtract(end, here).astype(float)
        best, best_key = None, -np.inf
        for o in [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)]:
            o_arr = np.asarray(o, float)
            dot, norm = float(o_arr @ d), float(np.linalg.norm(o_arr))
            cos = dot / (norm * float(np.linalg.norm(d)))
            if not (2 * dot > norm * norm and cos > 0.5):
                continue
            nb = tuple(np.add(here, o))
            value = density_at(nb)
            key = (0.0 if np.isnan(value) else value) + 1e-7 * cos
            if key > best_key:
                best, best_key = nb, key
        here = best
        path.append(here)
    return path


def test_paths_agree_with_a_plain_loop_walk_on_random_data_with_no_data(world, tmp_path):
    grid = world["grid"]
    rng = np.random.default_rng(11)
    brain = grid.brain_voxels()
    volumes = rng.random((3, grid.n_voxels)).astype(np.float32)
    volumes[rng.random(volumes.shape) < 0.05] = np.nan
    store = create_projection_store(tmp_path / "random", encoding="uint8")
    store.append(volumes, [1, 2, 3], no_data_value=None)
    store = MatrixStore.open(store.path)
    decoded = np.full((3, grid.n_voxels), -1.0)
    decoded[:, store.columns] = store.decode(slice(None))
    lookup = np.full(grid.n_voxels, -1)
    lookup[store.columns] = np.arange(store.n_columns)
    starts = grid.voxel_ijk(rng.choice(brain, 12))
    ends = grid.voxel_ijk(rng.choice(brain, 12))
    rows = rng.integers(0, 3, 12)
    walked = densest_paths(store_values_at(store.raw, "uint8", store.row_offset, store.row_scale, rows, lookup),
                           starts, ends, grid.shape)
    for k in range(12):
        flat_density = decoded[rows[k]]
        expected = _reference_walk(lambda v: flat_density[grid.flat_index(v)], starts[k], ends[k])
        ijk, values = walked.path(k)
        assert [tuple(v) for v in ijk.tolist()] == expected
        reference = flat_density[grid.flat_index(ijk)]
        np.testing.assert_array_equal(np.where(reference < 0, np.nan, reference), values)


def test_one_experiments_path_from_any_point(world):
    search = world["search"]
    path = search.path(PLANTED, [(c + 0.5) * 100 for c in (100, 25, 40)])  # a point off the ridge
    assert path[0]["coord"] == [10050.0, 2550.0, 4050.0]
    assert path[-1]["coord"] == [4050, 2050, 4050]
    assert path[-1]["density"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ injection coordinate
@pytest.mark.parametrize("point", [[8800, 1100, 8070], [5000, 4000, 3000], [1500, 3500, 5000]])
def test_injection_coordinate_ranking_agrees_with_brute_force(world, point):
    experiments = world["experiments"]
    expected = []
    for _, rec in experiments.iterrows():
        distance = float(np.sqrt(sum((rec[f"injection_{a}"] - p) ** 2 for a, p in zip("xyz", point))))
        expected.append((distance, int(rec["id"])))
    expected.sort()
    got = world["search"].injection_coordinate(point).page(0, 10**6).rows
    assert [r.id for r in got] == [i for _, i in expected]
    assert [r.distance for r in got] == pytest.approx([d for d, _ in expected], rel=1e-12)
    near = world["search"].injection_coordinate(point, injection_distance_threshold=2000).page().rows
    assert [r.id for r in near] == [i for d, i in expected if d <= 2000]
    cre = world["search"].injection_coordinate(point, transgenic_lines=["Rbp4-Cre_KL100"]).page().rows
    assert {r.transgenic_line for r in cre} == {"Rbp4-Cre_KL100"}


# ------------------------------------------------------------------------------------------------ correlation
@pytest.mark.parametrize("encoding", ["float32", "uint8"])
@pytest.mark.parametrize("domain, hemisphere", [(None, None), ("Isocortex", "left"), (["TH", "CP"], "right")])
def test_correlation_agrees_with_a_plain_float64_reference(world, reference_pearson, encoding, domain, hemisphere):
    search = world["search"] if encoding == "float32" else world["search8"]
    store, grid = world["stores"][encoding], world["grid"]
    seed = 900_000_011  # a variant with no-data planes
    side = {"left": 1, "right": 2, None: 3}[hemisphere]
    voxels = grid.structure_voxels(997 if domain is None else domain, side)
    cols = store.column_positions(voxels)
    x = store.decode(slice(None))[:, cols]
    y = x[store.row_index(seed)]
    got = {r.id: r for r in search.correlation(seed, domain, hemisphere=hemisphere).page(0, 10**6)}
    for i, eid in enumerate(store.data_set_ids.tolist()):
        r, n = reference_pearson(x[i], y, 3)
        if np.isnan(r):  # constant there (the planted experiment's background): no r, left out
            assert eid not in got
            continue
        assert got[eid].r == pytest.approx(r, abs=3e-7 if encoding == "float32" else 5e-7)
        assert got[eid].num_voxels == n
    assert search.correlation(seed, domain, hemisphere=hemisphere).top(1)[0].id == seed


def test_correlation_is_exact_where_the_rows_are_nearly_empty(world, reference_pearson):
    """Over the cerebellum a VISp injection's density is ~1e-5 while its whole-brain mean is ~4e-3: rows are
    centred on their own means over each chunk of the domain, so float32 partial sums lose nothing (float32 sums
    about the store's whole-brain centre cost 0.15 in r here)."""
    store, grid = world["stores"]["float32"], world["grid"]
    cols = store.column_positions(grid.structure_voxels("CB"))
    x = store.decode(slice(None))[:, cols]
    y = x[store.row_index(100141219)]
    for row in world["search"].correlation(100141219, "CB").page():
        r, n = reference_pearson(x[store.row_index(row.id)], y, 3)
        assert row.r == pytest.approx(r, abs=1e-7) and row.num_voxels == n


def test_correlation_filters_keep_the_seed(world):
    search = world["search"]
    rows = search.correlation(900_000_011, transgenic_lines=["Cux2-IRES-Cre"]).page().rows
    assert {r.transgenic_line for r in rows if r.id != 900_000_011} == {"Cux2-IRES-Cre"}
    assert 900_000_011 in [r.id for r in rows]
    ascending = search.correlation(900_000_011, sort_order="asc").page().rows
    assert [r.r for r in ascending] == sorted(r.r for r in ascending)


# ------------------------------------------------------------------------------------------------ projection matrix
def test_projection_matrix_equals_a_row_loop_pivot(world):
    unionizes, tree = world["unionizes"], world["space"].structure_tree
    ids = [900_000_031, 100141219, PLANTED, 900_000_000]
    structures = ["VISp", "LGd", "CP", "MO1"]  # MO1 has no voxels: a NaN column
    result = projection_matrix(unionizes, ids, structures, [1, 2], "normalized_projection_volume")
    sids = [tree.get_structures_by_acronym([a])[0]["id"] for a in structures]
    expected = np.full((len(ids), 8), np.nan)
    for _, row in unionizes[~unionizes["is_injection"] & unionizes["experiment_id"].isin(ids)].iterrows():
        if row["structure_id"] in sids and row["hemisphere_id"] in (1, 2):
            column = (int(row["hemisphere_id"]) - 1) * 4 + sids.index(row["structure_id"])
            expected[ids.index(row["experiment_id"]), column] = row["normalized_projection_volume"]
    np.testing.assert_array_equal(result.matrix, expected)
    assert result.rows == ids
    assert [c["label"] for c in result.columns] == ["VISp-L", "LGd-L", "CP-L", "MO1-L",
                                                   "VISp-R", "LGd-R", "CP-R", "MO1-R"]
    from_index = world["search"].projection_matrix(ids, structures, [1, 2], "normalized_projection_volume")
    np.testing.assert_array_equal(from_index.matrix, expected)
    assert from_index.columns == result.columns
    both = projection_matrix(unionizes, ids, ["VISp"], parameter="projection_density")  # hemispheres present
    assert [c["hemisphere_id"] for c in both.columns] == [1, 2, 3]
    assert set(both.to_dict()) == {"matrix", "rows", "columns"}


# ------------------------------------------------------------------------------------------------ paging
def test_paging_never_skips_or_repeats_a_row(world):
    search = world["search8"]
    rankings = [search.source("Isocortex"), search.target(["TH", "Isocortex"]),
                search.spatial([5200, 4300, 3100], threshold=0.0), search.injection_coordinate([6000, 3000, 5000]),
                search.correlation(100141219)]
    for ranking in rankings:
        full = _ids(ranking)
        assert len(full) == ranking.total_rows == len(set(full)) > 5
        for size in (1, 2, 3, 7):
            walked = [row.id for page in ranking.pages(size) for row in page]
            assert walked == full
        page = ranking.page(4, 3)
        assert page.total_rows == len(full) and [r.id for r in page] == full[4:7]
        assert ranking.page(len(full), 10).rows == []


def test_pages_of_spatial_rows_build_the_same_paths_whatever_the_page(world):
    ranking = world["search"].spatial([8850, 1150, 8050])
    whole = ranking.page(0, 50).rows
    pieces = [row for start in range(0, 50, 7) for row in ranking.page(start, 7).rows]
    assert [(r.id, r.path) for r in whole] == [(r.id, r.path) for r in pieces]


# ------------------------------------------------------------------------------------------------ validation
def test_every_search_validates_its_inputs(world):
    search = world["search"]
    with pytest.raises(UnknownStructureError, match="VISq"):
        search.source("VISq")
    with pytest.raises(UnknownStructureError, match="VISq"):
        search.target(["LGd", "VISq"])
    with pytest.raises(UnknownStructureError, match="VISq"):
        search.spatial([8800, 1100, 8070], injection_structures="VISq")
    with pytest.raises(UnknownStructureError):
        search.correlation(100141219, "VISq")
    with pytest.raises(UnknownStructureError, match="VISq"):
        projection_matrix(world["unionizes"], [100141219], ["VISq"])
    with pytest.raises(UnknownDataSetError, match="123"):
        search.correlation(123)
    with pytest.raises(UnknownDataSetError, match="123"):
        search.spatial([8800, 1100, 8070], section_data_sets=[100141219, 123])
    with pytest.raises(UnknownDataSetError, match="123"):
        search.projection_matrix([100141219, 123], ["VISp"])
    with pytest.raises(UnknownDataSetError, match="123"):
        projection_matrix(world["unionizes"], [123], ["VISp"])
    with pytest.raises(UnknownDataSetError, match="123"):
        search.path(123, [8800, 1100, 8070])
    with pytest.raises(SearchInputError, match="empty domain"):
        search.target("MO1")  # no voxels at 100 um, so no unionize rows
    with pytest.raises(SearchInputError, match="no voxel"):
        search.correlation(100141219, "MO1")
    with pytest.raises(SearchInputError, match="outside the brain"):
        search.spatial([100, 100, 100])
    with pytest.raises(SearchInputError, match="outside the brain"):
        search.injection_coordinate([100, 100, 100])
    with pytest.raises(SearchInputError, match="outside the grid"):
        search.spatial([90000, 100, 100])
    with pytest.raises(SearchInputError, match="three"):
        search.injection_coordinate([1, 2])
    with pytest.raises(SearchInputError, match="threshold"):
        search.spatial([8800, 1100, 8070], threshold=-1)
    with pytest.raises(SearchInputError, match="target_hemisphere"):
        search.target("LGd", target_hemisphere="up")
    with pytest.raises(SearchInputError, match="Cre-Nope"):
        search.source("VISp", transgenic_lines=["Cre-Nope"])
    with pytest.raises(SearchInputError, match="metric"):
        search.target("LGd", metric="energy_per_banana")
    with pytest.raises(SearchInputError, match="num_rows"):
        search.source("VISp").page(0, -1)
    with pytest.raises(SearchInputError, match="unknown parameter"):
        run_service(search, "mouse_connectivity_target_spatial", seed_point="8800,1100,8070", colour="red")
    with pytest.raises(SearchInputError, match="unknown connectivity service"):
        run_service(search, "mouse_connectivity_everything")
    # Missing search data: a LookupError (a server's 404, not a 500) naming the command that builds it.
    from brainmap.server.errors import status_of

    for call in (lambda s: s.spatial([8800, 1100, 8070]), lambda s: s.correlation(world["experiments"]["id"][0])):
        with pytest.raises(MissingSearchDataError, match="brainmap load") as missing:
            call(ConnectivitySearch(world["experiments"]))
        assert status_of(missing.value) == 404
    with pytest.raises(MissingSearchDataError, match="unionize"):
        ConnectivitySearch(world["experiments"]).target("LGd")


# ------------------------------------------------------------------------------------------------ Allen's services
def test_allens_services_take_allens_parameters(world):
    search = world["search"]
    page = run_service(search, "mouse_connectivity_injection_structure", injection_structures="VISp,IC",
                       primary_structure_only="true", num_rows=3)
    assert page.num_rows == 3 and page.total_rows == len(_ids(search.source(["VISp", "IC"], primary_structure_only=True)))
    target = run_service(search, "mouse_connectivity_injection_structure", injection_structures="Isocortex",
                         target_domain="LGd,LP", target_hemisphere="left")
    assert [r.id for r in target] == _ids(search.target(["LGd", "LP"], target_hemisphere="left",
                                                        injection_structures=["Isocortex"]))
    spatial = run_service(search, "mouse_connectivity_target_spatial", seed_point="11050,3050,4050",
                          section_data_set=PLANTED)
    assert [r.id for r in spatial] == [PLANTED] and spatial.rows[0].path
    coordinate = run_service(search, "mouse_connectivity_injection_coordinate", seed_point=[8800, 1100, 8070],
                             transgenic_lines="0", start_row=1, num_rows=2)
    assert [r.id for r in coordinate] == _ids(search.injection_coordinate([8800, 1100, 8070], transgenic_lines=[0]))[1:3]
    correlation = run_service(search, "mouse_connectivity_correlation", row=100141219, structures="Isocortex",
                              hemisphere="right")
    assert correlation.rows[0].id == 100141219
    envelope = correlation.to_dict()
    assert envelope["success"] and envelope["total_rows"] == correlation.total_rows


# ------------------------------------------------------------------------------------------------ dask
@pytest.fixture(scope="module")
def client():
    pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    from brainmap.search import _kernels

    _kernels.warm_up()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        yield client


def test_searches_on_a_local_cluster_equal_the_local_searches(world, client):
    from brainmap.search.connectivity import DistributedConnectivitySearch

    local = world["search8"]
    remote = DistributedConnectivitySearch(world["experiments"], world["unionizes"], world["stores"]["uint8"],
                                           client, world["grid"], chunk_rows=5)  # 4 chunks over 2 workers
    assert len(remote.matrix.chunks[0]) == 4
    for point in ([8850, 1150, 8050], [(c + 0.5) * 100 for c in SEED_IJK]):
        a, b = remote.spatial(point).page(0, 100), local.spatial(point).page(0, 100)
        assert a.total_rows == b.total_rows > 0
        assert [(r.id, r.density, r.path) for r in a] == [(r.id, r.density, r.path) for r in b]
    a, b = remote.correlation(100141219, "Isocortex", hemisphere="right"), local.correlation(100141219, "Isocortex",
                                                                                              hemisphere="right")
    assert [(r.id, r.num_voxels) for r in a.page(0, 100)] == [(r.id, r.num_voxels) for r in b.page(0, 100)]
    assert [r.r for r in a.page(0, 100)] == pytest.approx([r.r for r in b.page(0, 100)], abs=1e-12)
    assert _ids(remote.target("LGd")) == _ids(local.target("LGd"))
    assert remote.path(PLANTED, [8850, 1150, 8050]) == local.path(PLANTED, [8850, 1150, 8050])
    float32 = DistributedConnectivitySearch(world["experiments"], None, world["stores"]["float32"], client,
                                            world["grid"], chunk_rows=9)
    seed_um = [(c + 0.5) * 100 for c in SEED_IJK]
    assert float32.spatial(seed_um).page(0, 5).rows == world["search"].spatial(seed_um).page(0, 5).rows


def test_a_grid_whose_corner_is_not_at_zero_places_paths_and_hemispheres_by_its_origin():
    """Allen's 200 um grid has voxel 0's corner at -100 um: voxel centres are 200 i um, the midline 5700 um."""
    from brainmap.search.connectivity import ExperimentTable, Paths, path_points
    from brainmap.search.grid import SearchGrid

    grid = SearchGrid.ish()
    assert grid.origin_um == -100.0
    experiments = pd.DataFrame({"id": [1, 2, 3], "injection_structures": [[385]] * 3,
                                "primary_injection_structure": [385] * 3, "injection_x": [8000.0] * 3,
                                "injection_y": [1000.0] * 3, "injection_z": [5750.0, 5650.0, 5790.0],
                                "injection_volume": [0.1] * 3})
    assert ExperimentTable(experiments, grid).hemisphere.tolist() == [2, 1, 2]
    walk = Paths(np.array([0, 2]), np.array([[0, 0, 0], [3, 4, 5]]), np.array([0.5, np.nan]))
    (points,) = path_points(walk, grid.resolution_um, origin_um=grid.origin_um)
    assert [p["coord"] for p in points] == grid.voxel_center_um(grid.flat_index(np.array([[0, 0, 0], [3, 4, 5]]))).tolist()
    assert points[0]["coord"] == [0.0, 0.0, 0.0] and points[1]["density"] is None
