"""Connectivity search at Allen's scale: 3,000 experiments x the 100 um grid's 505,359 brain voxels.

Searches: spatial (a column read, then a page of rows with their densest-voxel paths), target (from the unionize
cube), correlation over projection density (one pass of the shared Pearson kernel, which centres every chunk of a
row on its own mean), injection coordinate, and the projection matrix of 200 experiments x 300 structures x 2
hemispheres (target for the SDK: <= 0.2 s, from a unionize table as ``get_projection_matrix`` gets it). Query
figures are the fastest of several runs (the machine is shared; medians in the notes) and matrix passes are
printed beside one plain streaming pass over the same bytes. Also, for scale: building the stores and the index,
the correlation's precision over the cerebellum (rows ~400 times below their whole-brain mean) against float64, the same
searches on a dask.distributed LocalCluster (2 workers x 1 thread), and one experiment's spatial search lines.

The data are synthetic on the real grid and ontology: 12 real experiments' profiles (``truth_density`` at
100 um) and their unionizes, each repeated with log-normal voxel noise, mirrored to the left hemisphere for every
other copy, with Cre lines; no-data planes in one experiment of seven. Stores go to a temporary folder
(``BRAINMAP_BENCH_TMP``; ~7.6 GB: uint8 1.5 GB + float32 6.1 GB) removed at the end;
``BRAINMAP_BENCH_CONNECTIVITY_ROWS`` sets fewer experiments, ``BRAINMAP_BENCH_CONNECTIVITY_FLOAT32=0`` skips the
float32 store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import pandas as pd

from benchmarks.report import Figure
from benchmarks.search_timing import note as _note, streaming_floor as _floor, timed
from brainmap.atlas import ReferenceSpace
from brainmap.data import tables
from brainmap.pipeline.unionize import unionize_projection
from brainmap.search import MatrixStore, _kernels
from brainmap.search.connectivity import (
    ConnectivitySearch,
    connectivity_grid,
    create_projection_store,
    projection_matrix,
)
from brainmap.search.expression import pearson_from_sums
from brainmap.specimen.synthetic.signal import truth_density

N_ROWS = int(os.environ.get("BRAINMAP_BENCH_CONNECTIVITY_ROWS", "3000"))
WITH_FLOAT32 = os.environ.get("BRAINMAP_BENCH_CONNECTIVITY_FLOAT32", "1") != "0"
#: Primary injection structures of the real profiles (the first such experiment of the bundled tables).
PROFILES = ["VISp", "IC", "FRP", "CP", "MOp", "MOs", "MRN", "PAG", "DG", "CA3", "ENTl", "MD"]
LINES = ["", "", "Cux2-IRES-Cre", "Rbp4-Cre_KL100", "Sim1-Cre_KJ18", "Ntsr1-Cre_GN220", "Emx1-IRES-Cre"]
#: Seed points (um): the middle voxel of VISp, LGd, CP, MOp, SCs, CA1, PAG in the right hemisphere.
POINTS = [[9650, 1050, 8350], [7350, 3350, 8050], [5350, 5650, 8050], [4650, 2250, 7950], [9450, 1150, 6450],
          [8450, 5050, 8750], [7850, 3950, 6050]]
UNIONIZE_COLUMNS = ["experiment_id", "structure_id", "hemisphere_id", "is_injection", "projection_volume",
                    "normalized_projection_volume", "projection_density", "projection_energy"]


# ------------------------------------------------------------------------------------------------ data
def _profiles(space: ReferenceSpace):
    """(ids, knox records, density volumes as flat rows, unionize tables) of the real profiles."""
    knox = tables.knox_experiments()
    usable = set(tables.synthetic_connectivity_experiment_ids())
    ids, rows, unions = [], [], []
    for abbrev in PROFILES:
        eid = int(knox[(knox["structure_abbrev"] == abbrev) & knox["id"].isin(usable)]["id"].iloc[0])
        truth = truth_density("connectivity", experiment_id=eid, resolution_um=100, space=space)
        density, fraction = truth.signal_density, truth.injection_fraction
        one = np.ones_like(density)
        inj = (fraction > 0).astype(density.dtype)
        grids = dict(data_mask=one, sum_pixels=one * 8e4, injection_fraction=fraction, injection_density=density * inj,
                     injection_energy=density * inj * 100, injection_sum_pixel_intensities=one * 8e6 * inj,
                     projection_density=density, projection_energy=density * 100, sum_pixel_intensities=one * 8e6)
        ids.append(eid)
        rows.append(density)
        unions.append(unionize_projection(grids, space, experiment_id=eid)[UNIONIZE_COLUMNS])
    return ids, knox.loc[ids], rows, unions


def _experiments(base_ids, records, n: int):
    """The synthetic experiments table: copy j of profile j % P, mirrored for odd copies, Cre lines cycling."""
    rng = np.random.default_rng(2)
    p = len(base_ids)
    base = np.arange(n) % p
    mirrored = (np.arange(n) // p) % 2 == 1
    frame = records.iloc[base].reset_index(drop=True).copy()
    frame["id"] = 500_000_000 + np.arange(n)
    frame["transgenic_line"] = [LINES[j % len(LINES)] for j in range(n)]
    frame["injection_volume"] = frame["injection_volume"] * rng.uniform(0.5, 1.5, n)
    frame.loc[mirrored, "injection_z"] = 11400 - frame.loc[mirrored, "injection_z"]
    frame["specimen_name"] = [f"synthetic-{j}" for j in range(n)]
    factors = rng.lognormal(0.0, 0.5, n)
    return frame, base, mirrored, factors


def _unionizes(unions, base, mirrored, factors, ids) -> pd.DataFrame:
    """Every experiment's unionize rows: its profile's, scaled, hemispheres swapped when mirrored (vectorized)."""
    parts = []
    for b, union in enumerate(unions):
        members = np.flatnonzero(base == b)
        r = len(union)
        hemisphere = np.tile(union["hemisphere_id"].to_numpy(), members.size)
        swap = np.repeat(mirrored[members], r) & (hemisphere < 3)
        hemisphere[swap] = 3 - hemisphere[swap]
        part = {"experiment_id": np.repeat(ids[members], r), "structure_id": np.tile(union["structure_id"], members.size),
                "hemisphere_id": hemisphere, "is_injection": np.tile(union["is_injection"], members.size)}
        scale = np.repeat(factors[members], r)
        for metric in UNIONIZE_COLUMNS[4:]:
            part[metric] = np.tile(union[metric].to_numpy(), members.size) * scale
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


def _fill(stores, profiles, base, mirrored, ids, block: int = 128) -> float:
    """Append the synthetic density rows to the stores; returns seconds."""
    began = time.perf_counter()
    rng = np.random.default_rng(5)
    flat = [np.asarray(v, dtype=np.float32) for v in profiles]
    flat = [(v.ravel(order="F"), v[:, :, ::-1].ravel(order="F")) for v in flat]
    brain = stores[0].columns
    for start in range(0, ids.size, block):
        stop = min(start + block, ids.size)
        values = np.empty((stop - start, brain.size), dtype=np.float32)
        for k, j in enumerate(range(start, stop)):
            row = values[k]
            rng.standard_normal(brain.size, dtype=np.float32, out=row)
            row *= np.float32(0.3)
            np.exp(row, out=row)
            row *= flat[base[j]][int(mirrored[j])][brain]
            np.minimum(row, np.float32(1.0), out=row)
            if j % 7 == 3:  # a few damaged sections: no data on some coronal planes
                ap = brain % 132
                row[np.isin(ap, rng.choice(132, 3, replace=False))] = np.nan
        for store in stores:
            store.append(values, ids[start:stop], no_data_value=None)
    return time.perf_counter() - began


# ------------------------------------------------------------------------------------------------ run
def run() -> list[Figure]:
    figures: list[Figure] = []
    _kernels.warm_up()
    space = ReferenceSpace.bundled(100)
    grid = connectivity_grid()
    root = tempfile.mkdtemp(prefix="brainmap-bench-connectivity-", dir=os.environ.get("BRAINMAP_BENCH_TMP"))
    try:
        started = time.perf_counter()
        base_ids, records, profiles, unions = _profiles(space)
        experiments, base, mirrored, factors = _experiments(base_ids, records, N_ROWS)
        ids = experiments["id"].to_numpy()
        unionizes = _unionizes(unions, base, mirrored, factors, ids)
        made_tables = time.perf_counter() - started
        stores = [create_projection_store(os.path.join(root, "uint8"), encoding="uint8")]
        if WITH_FLOAT32:
            stores.append(create_projection_store(os.path.join(root, "float32"), encoding="float32"))
        seconds = _fill(stores, profiles, base, mirrored, ids)
        stores = [MatrixStore.open(s.path) for s in stores]
        store8 = stores[0]
        figures.append(Figure("make the data (12 real profiles, tables, stores)", made_tables + seconds, None, "s",
                              note=f"{N_ROWS:,} experiments x {store8.n_columns:,} voxels: uint8 "
                                   f"{store8.nbytes / 1e9:.2f} GB" + (f", float32 {stores[1].nbytes / 1e9:.2f} GB"
                                                                       if WITH_FLOAT32 else "")
                                   + f"; {len(unionizes):,} unionize rows; stores {seconds:.0f} s"))
        best, _, search = timed(lambda: ConnectivitySearch(experiments, unionizes, store8, grid), repeat=1)
        cube_s, _, _ = timed(lambda: search.unionizes.cube("projection_volume"), repeat=1)
        figures.append(Figure("index: experiments table + unionize cube (one metric)", best + cube_s, None, "s",
                              note=f"table {best:.2f} s, cube pivot {cube_s:.2f} s"))
        figures += _spatial(search, store8)
        figures += _table_searches(search, experiments, unionizes, space)
        figures += _correlation(search, stores, experiments, unionizes, grid)
        figures += _distributed(experiments, unionizes, store8, grid, search)
        figures += _lines(profiles, space)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def _spatial(search: ConnectivitySearch, store: MatrixStore) -> list[Figure]:
    out = []
    points = iter(POINTS * 10)
    search.spatial(POINTS[0]).page(0, 10)  # warm
    best, median, page = timed(lambda: search.spatial(next(points), paths=False).page(0, 2000))
    column_bytes = store.n_rows * store.dtype.itemsize
    out.append(Figure("spatial search: rank by density at a point (no paths)", best, None, "s",
                      note=_note(median, extra=f"{page.total_rows:,} of {store.n_rows:,} experiments >= 0.001; "
                                               f"reads one column ({column_bytes / 1e3:.0f} kB, strided)")))
    best, median, page = timed(lambda: search.spatial(next(points)).page(0, 50))
    steps = np.mean([len(r.path) for r in page])
    out.append(Figure("spatial search: first page of 50 rows with paths", best, None, "s",
                      note=_note(median, extra=f"mean path {steps:.0f} voxels")))
    best, median, page = timed(lambda: search.spatial(next(points)).page(0, 2000), repeat=3)
    steps = np.mean([len(r.path) for r in page])
    out.append(Figure("spatial search: a page of 2,000 rows with paths (Allen's default)", best, None, "s",
                      note=_note(median, extra=f"{len(page)} paths, mean {steps:.0f} voxels, walked together")))
    return out


def _table_searches(search: ConnectivitySearch, experiments: pd.DataFrame, unionizes: pd.DataFrame,
                    space: ReferenceSpace) -> list[Figure]:
    out = []
    domains = iter([["LGd", "LP"], "CP", ["Isocortex"], "TH", ["SCs", "SCm"], "MOp", "HPF"] * 10)
    search.target("LGd")
    best, median, page = timed(lambda: search.target(next(domains), target_hemisphere="right").page(0, 2000))
    out.append(Figure("target search: rank by projection volume in target structures", best, None, "s",
                      note=_note(median, extra=f"{page.total_rows:,} rows; from the (experiments x structures x "
                                               "hemispheres) cube, domain voxel count included")))
    best, median, page = timed(lambda: search.source("Isocortex", transgenic_lines=[0]).page(0, 2000))
    out.append(Figure("source search: injected in Isocortex (descendants), wild type", best, None, "s",
                      note=_note(median, extra=f"{page.total_rows:,} rows")))
    points = iter(POINTS * 10)
    best, median, page = timed(lambda: search.injection_coordinate(next(points)).page(0, 2000))
    out.append(Figure("injection-coordinate search: nearest injection sites", best, None, "s",
                      note=_note(median, extra=f"{page.total_rows:,} rows")))

    # The projection matrix: 200 experiments x 300 summary structures x 2 hemispheres.
    rng = np.random.default_rng(9)
    chosen = np.sort(rng.choice(experiments["id"].to_numpy(), min(200, len(experiments)), replace=False)).tolist()
    structures = space.structure_tree.structure_set_member_ids(167587189)[:300]
    table = unionizes[unionizes["experiment_id"].isin(chosen)].reset_index(drop=True)  # what the SDK holds
    best, median, matrix = timed(lambda: projection_matrix(table, chosen, structures, [1, 2], "projection_density"))
    out.append(Figure("projection matrix 200 x 300 x 2 from a unionize table", best, 0.2, "s",
                      note=_note(median, extra=f"{len(table):,} rows pivoted; {np.isnan(matrix.matrix).mean():.0%} "
                                               "NaN (structures without voxels at 100 um)")))
    best, median, cube = timed(lambda: search.projection_matrix(chosen, structures, [1, 2], "projection_density"))
    same = np.array_equal(cube.matrix, matrix.matrix, equal_nan=True)
    out.append(Figure("projection matrix 200 x 300 x 2 from the index's cube", best, 0.2, "s",
                      note=_note(median, extra=f"{'equal to' if same else 'DIFFERS from'} the table pivot")))
    sample = table.iloc[:20_000]
    started = time.perf_counter()
    _sdk_style(sample, chosen, structures, [1, 2], "projection_density")
    loop_s = (time.perf_counter() - started) * len(table) / len(sample)
    out.append(Figure("projection matrix, AllenSDK's row loop (for scale)", loop_s, None, "s",
                      note=f"iterrows extrapolated from {len(sample):,} of {len(table):,} rows"))
    return out


def _sdk_style(unionizes, experiment_ids, structure_ids, hemisphere_ids, parameter):
    """AllenSDK's get_projection_matrix loop (for scale)."""
    rows = {e: i for i, e in enumerate(experiment_ids)}
    columns = {(h, s): i for i, (h, s) in enumerate((h, s) for h in hemisphere_ids for s in structure_ids)}
    matrix = np.full((len(rows), len(columns)), np.nan)
    selected = unionizes[~unionizes["is_injection"] & unionizes["structure_id"].isin(structure_ids)
                         & unionizes["hemisphere_id"].isin(hemisphere_ids)]
    for _, row in selected.iterrows():
        matrix[rows[row["experiment_id"]], columns[(row["hemisphere_id"], row["structure_id"])]] = row[parameter]
    return matrix


def _correlation(search: ConnectivitySearch, stores: list[MatrixStore], experiments: pd.DataFrame,
                 unionizes: pd.DataFrame, grid) -> list[Figure]:
    out = []
    rng = np.random.default_rng(4)
    seeds = iter(rng.choice(experiments["id"].to_numpy(), 40, replace=False).tolist())
    for store in stores:
        index = search if store is stores[0] else ConnectivitySearch(experiments, None, store, grid)
        floor = _floor(store.raw)
        out.append(Figure(f"streaming pass, {store.n_rows:,} x {store.n_columns:,} {store.encoding}", floor, None,
                          "s", note=f"{store.nbytes / 1e9 / floor:.1f} GB/s"))
        index.correlation(next(seeds))  # warm
        best, median, page = timed(lambda: index.correlation(next(seeds)).page(0, 2000), repeat=5)
        out.append(Figure(f"correlation, whole brain (505k voxels, {store.encoding})", best, None, "s",
                          note=_note(median, floor, store.nbytes, f"one pass; "
                                                                 f"{page.total_rows:,} rows")))
        best, median, _ = timed(lambda: index.correlation(next(seeds), "Isocortex", hemisphere="right",
                                                           transgenic_lines=[0]).page(0, 2000), repeat=3)
        out.append(Figure(f"correlation, right Isocortex, wild type ({store.encoding})", best, None, "s",
                          note=_note(median, floor, store.nbytes)))
    # Precision over the cerebellum, where a VISp injection's rows are ~1e-5 against a whole-brain mean of ~4e-3
    # (float32 sums about that mean lost 0.15 in r), for 200 rows, against float64.
    store = stores[-1]
    index = search if store is stores[0] else ConnectivitySearch(experiments, None, store, grid)
    seed = int(experiments["id"].iloc[0])  # a VISp profile
    plan = index._expr.plan_correlation(seed, "CB", 3, "desc")
    rows = np.arange(0, store.n_rows, max(1, store.n_rows // 200))
    x = _decode(store, rows, plan.plan.cols)
    y = _decode(store, np.array([store.row_index(seed)]), plan.plan.cols)[0]
    reference = np.array([_pearson(a, y) for a in x])
    ours = pearson_from_sums(index._correlation_sums(plan), 3)[0][rows]
    out.append(Figure(f"correlation over CB: max |r - r_float64| ({store.encoding})",
                      float(np.nanmax(np.abs(ours - reference))) * 1e6, None, "x1e-6",
                      note=f"{rows.size} rows; every chunk centred on the row's own mean (float32 sums about the "
                           "whole-brain centre: 0.15)"))
    return out


def _decode(store: MatrixStore, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 values (NaN = no data) of some rows at some columns, without decoding whole rows."""
    codes = store.raw[rows][:, cols]
    if store.encoding == "float32":
        return codes.astype(np.float64)
    q = codes.astype(np.float64)
    values = store.row_offset[rows, None] + store.row_scale[rows, None] * q * q
    values[codes == 0] = np.nan
    return values


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    both = ~np.isnan(a) & ~np.isnan(b)
    if both.sum() < 3 or np.ptp(a[both]) == 0 or np.ptp(b[both]) == 0:
        return np.nan
    return float(np.corrcoef(a[both], b[both])[0, 1])


def _distributed(experiments, unionizes, store, grid, local) -> list[Figure]:
    try:
        from dask.distributed import Client, LocalCluster

        from brainmap.search.connectivity import DistributedConnectivitySearch
    except ImportError:
        return [Figure("dask.distributed searches", float("nan"), None, "s", note="dask[distributed] not installed")]
    out = []
    started = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        startup = time.perf_counter() - started
        search = DistributedConnectivitySearch(experiments, unionizes, store, client, grid, chunk_rows=512)
        search.spatial(POINTS[0]).page(0, 10)  # warm: workers import, map the file, load the kernels
        search.correlation(int(experiments["id"].iloc[1]))
        points = iter(POINTS * 10)
        best, median, page = timed(lambda: search.spatial(next(points)).page(0, 50), repeat=5)
        same = [(r.id, r.path) for r in search.spatial(POINTS[1]).page(0, 50)] == [
            (r.id, r.path) for r in local.spatial(POINTS[1]).page(0, 50)]
        out.append(Figure("dask LocalCluster (2x1): spatial search, 50 rows with paths", best, None, "s",
                          note=_note(median, extra=f"{len(search.matrix.chunks[0])} chunks; cluster start "
                                                   f"{startup:.1f} s; {'equal to' if same else 'DIFFERS from'} local")))
        seeds = iter(experiments["id"].iloc[2:40].tolist())
        best, median, _ = timed(lambda: search.correlation(next(seeds)).page(0, 2000), repeat=5)
        seed = int(experiments["id"].iloc[50])
        a, b = search.correlation(seed).top(100), local.correlation(seed).top(100)
        same = [r.id for r in a] == [r.id for r in b]
        out.append(Figure("dask LocalCluster (2x1): correlation, whole brain (uint8)", best, None, "s",
                          note=_note(median, extra=f"top 100 {'equal' if same else 'DIFFER'}")))
    return out


def _lines(profiles, space) -> list[Figure]:
    from brainmap.search.spatial_lines import spatial_search_lines, write_spatial_lines_json

    density = profiles[0]
    fraction = (density >= 0.999).astype(np.float32)  # the profile's injection core
    best, median, lines = timed(lambda: spatial_search_lines(density, fraction, space), repeat=3)
    out = [Figure("spatial search lines of one experiment (density 0.04-0.3)", best, None, "s",
                  note=_note(median, extra=f"{len(lines['lines']):,} lines, "
                                           f"{sum(len(x['path']) for x in lines['lines']):,} path points"))]
    with tempfile.TemporaryDirectory() as folder:
        best, median, _ = timed(lambda: write_spatial_lines_json(os.path.join(folder, "lines.json"), lines), repeat=3)
        size = os.path.getsize(os.path.join(folder, "lines.json"))
    out.append(Figure("   ... written as JSON (atomic)", best, None, "s", note=_note(median, extra=f"{size / 1e6:.0f} MB")))
    return out
