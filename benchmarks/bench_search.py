"""Expression grid search at Allen's scale: 25,000 data sets x 26,000 coverage voxels and x 159,326 grid voxels.

Targets (the search issue, this 2-core machine, warm page cache): at 25,000 x ~26,000 (the coverage set) in the
compact 8-bit encoding, a correlation query <= 0.15 s, a correlation over an arbitrary structure domain
<= 0.3 s, a differential search <= 0.15 s; at 25,000 x 159,326 (the full grid, 8-bit, memory-mapped), one
query <= 2 s; the 8-bit encoding's top 100 equal float32's in order with values within 1e-3 (the 8-bit pass,
then the rows a proven quantization bound lets reach the top 100 re-scored from the memory-mapped float32
store, all within the query's 0.15 s). Every query
figure is the fastest of several runs (other engineers share the machine; the median is in the note) and is
printed beside one plain streaming pass over the same bytes (the memory-bandwidth floor). Also, for scale:
creating the stores, the float32 store, the numpy engine (no numba), seed-point (AGEA) maps, and the same
searches on a dask.distributed LocalCluster (2 workers x 1 thread).

The data are synthetic (:mod:`brainmap.search.synthetic`: real grid, ontology and no-data patterns). The
stores are made in a temporary folder (``BRAINMAP_BENCH_TMP``, default the system's; about 7.5 GB on disk
and in the page cache) and removed at the end. ``BRAINMAP_BENCH_SEARCH_ROWS`` sets fewer data sets for a
quick run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks.report import Figure
from benchmarks.search_timing import note as _note, streaming_floor as _floor, timed
from brainmap.search import ExpressionSearch, MatrixStore, SearchGrid, _kernels
from brainmap.search.synthetic import SyntheticExpression

N_ROWS = int(os.environ.get("BRAINMAP_BENCH_SEARCH_ROWS", "25000"))
REPEAT = 7
DOMAINS = ["Isocortex", ["HPF", "TH"], "CP", "HY", ["VISp", "MOp", "SSp"], "MOB", "CA1"]


def run() -> list[Figure]:
    figures: list[Figure] = []
    engine = _kernels.default_engine()
    _kernels.warm_up()
    grid = SearchGrid.ish()
    synthetic = SyntheticExpression(grid, seed=0)
    root = tempfile.mkdtemp(prefix="brainmap-bench-search-", dir=os.environ.get("BRAINMAP_BENCH_TMP"))
    try:
        # ------------------------------------------------------------------ stores
        counts = synthetic.coverage_counts(N_ROWS)
        coverage = np.flatnonzero(counts >= np.ceil(0.8 * N_ROWS - 1e-9))
        full = MatrixStore.create(os.path.join(root, "full_u8"), encoding="uint8")
        cov8 = MatrixStore.create(os.path.join(root, "coverage_u8"), coverage, encoding="uint8")
        cov32 = MatrixStore.create(os.path.join(root, "coverage_f32"), coverage, encoding="float32")
        seconds = synthetic.fill([full, cov8, cov32], N_ROWS, block_rows=256)
        full, cov8, cov32 = (MatrixStore.open(s.path) for s in (full, cov8, cov32))
        figures.append(Figure("create 3 stores (generate + encode + write)", seconds, None, "s",
                              note=f"{N_ROWS:,} rows: full grid uint8 {full.nbytes / 1e9:.1f} GB, coverage "
                                   f"({coverage.size:,} voxels) uint8 {cov8.nbytes / 1e9:.2f} GB + float32 "
                                   f"{cov32.nbytes / 1e9:.2f} GB; {N_ROWS / seconds:,.0f} rows/s"))
        rng = np.random.default_rng(1)
        expressed = [r for r in rng.choice(N_ROWS, 200, replace=False) if synthetic.is_expressed(int(r))]
        seeds = [int(cov8.data_set_ids[r]) for r in expressed[:REPEAT]]
        seed_iter = iter(seeds * 10)

        # ------------------------------------------------------------------ 25,000 x 26,000, uint8
        search8 = ExpressionSearch(cov8, grid, engine=engine)
        floor8 = _floor(cov8.raw)
        figures.append(Figure(f"streaming pass, {N_ROWS:,} x {cov8.n_columns:,} uint8", floor8, None, "s",
                              note=f"{cov8.nbytes / 1e9 / floor8:.1f} GB/s"))
        search8.correlation(seeds[0])  # warm
        best, median, ranking = timed(lambda: search8.correlation(next(seed_iter)).page(0, 2000))
        figures.append(Figure("correlation query, whole-brain domain (26k voxels, uint8)", best, 0.15, "s",
                              note=_note(median, floor8, cov8.nbytes, f"{ranking.total_rows:,} rows ranked")))
        worst, worst_note = 0.0, []
        for domain in DOMAINS:
            b, m, _ = timed(lambda: search8.correlation(next(seed_iter), domain).page(0, 2000), repeat=3)
            plan = search8.plan_correlation(seeds[0], domain)
            worst_note.append(f"{domain if isinstance(domain, str) else '+'.join(domain)} {b:.3f}"
                              f"{'' if plan.plan.dense else ' (gather)'}")
            worst = max(worst, b)
        figures.append(Figure("correlation, structure domains (worst of 7, uint8)", worst, 0.3, "s",
                              note="; ".join(worst_note) + f"; floor {floor8:.3f} s"))
        best, median, _ = timed(lambda: search8.differential("TH", "Isocortex").page(0, 2000))
        figures.append(Figure("differential search TH vs Isocortex (uint8)", best, 0.15, "s",
                              note=_note(median, floor8, cov8.nbytes)))
        best, median, _ = timed(lambda: search8.differential(["HPF", "TH"], "grey", threshold1=(0, 50),
                                                              threshold2=(1, 50)).page(0, 2000), repeat=3)
        figures.append(Figure("differential HPF+TH vs grey, Allen's thresholds (uint8)", best, 0.15, "s",
                              note=_note(median, floor8, cov8.nbytes)))

        # ------------------------------------------------------------------ compact encoding vs float32
        search32 = ExpressionSearch(cov32, grid, engine=engine)
        floor32 = _floor(cov32.raw)
        search32.correlation(seeds[0])
        best, median, _ = timed(lambda: search32.correlation(next(seed_iter)).page(0, 2000), repeat=5)
        figures.append(Figure("correlation query, float32 store (for scale)", best, None, "s",
                              note=_note(median, floor32, cov32.nbytes)))
        refined = ExpressionSearch(cov8, grid, engine=engine, exact=cov32, exact_rows=100)
        same8, same_refined, diff8, diff_refined, gaps, rescored = 100, 100, 0.0, 0.0, [], []
        for seed in seeds[:5]:
            all32 = search32.correlation(seed).page(0, 10**6)
            top32, r32 = all32.rows[:100], {row.data_set_id: row.r for row in all32}
            top8 = search8.correlation(seed).top(100)
            topx = refined.correlation(seed).top(100)
            rescored.append(refined.last_rescored)
            same8 = min(same8, sum(a.data_set_id == b.data_set_id for a, b in zip(top32, top8)))
            same_refined = min(same_refined, sum(a.data_set_id == b.data_set_id for a, b in zip(top32, topx)))
            diff8 = max(diff8, max(abs(r32[row.data_set_id] - row.r) for row in top8))
            diff_refined = max(diff_refined, max(abs(r32[row.data_set_id] - row.r) for row in topx))
            gaps.append(min(top32[i].r - top32[i + 1].r for i in range(99)))
        figures.append(Figure("8-bit alone: top 100 in float32's order (worst of 5 seeds)", same8, None, "rows",
                              better="higher", note=f"max |r - r_float32| {diff8:.1e}; float32's closest neighbours in "
                                                    f"the top 100 are {min(gaps):.1e} apart (ties within 8-bit noise)"))
        figures.append(Figure("8-bit + exact head (proven bound): top 100 = float32's, in order", same_refined, 100,
                              "rows", better="higher",
                              note=f"worst of 5 seeds; {min(rescored)}-{max(rescored)} of {N_ROWS:,} rows re-scored "
                                   "from the float32 store"))
        figures.append(Figure("8-bit + exact head: max |r - r_float32|, top 100", diff_refined, 1e-3, "",
                              note="5 seeds (0: the head is float32's own values)"))
        refined.correlation(seeds[0])
        best, median, _ = timed(lambda: refined.correlation(next(seed_iter)).page(0, 2000))
        figures.append(Figure("correlation query with the exact head (uint8 + float32 rows)", best, 0.15, "s",
                              note=_note(median, floor8, cov8.nbytes, f"{refined.last_rescored} rows re-scored")))
        d32 = search32.differential("TH", "Isocortex").top(100)
        d8 = search8.differential("TH", "Isocortex").top(100)
        dx = refined.differential("TH", "Isocortex").top(100)
        rel8 = max(abs(a.fold_change / b.fold_change - 1) for a, b in zip(d8, d32) if a.data_set_id == b.data_set_id)
        figures.append(Figure("differential, 8-bit + exact head: top 100 = float32's", sum(
            a.data_set_id == b.data_set_id for a, b in zip(dx, d32)), 100, "rows", better="higher",
            note=f"8-bit alone {sum(a.data_set_id == b.data_set_id for a, b in zip(d8, d32))}/100, "
                 f"max relative fold-change difference {rel8:.1e}; {refined.last_rescored} rows re-scored"))
        best, median, _ = timed(lambda: refined.differential("TH", "Isocortex").page(0, 2000))
        figures.append(Figure("differential search with the exact head (uint8 + float32 rows)", best, 0.15, "s",
                              note=_note(median, floor8, cov8.nbytes)))

        # ------------------------------------------------------------------ numpy engine, AGEA
        if engine == "numba":
            numpy_search = ExpressionSearch(cov8, grid, engine="numpy")
            best, _, _ = timed(lambda: numpy_search.correlation(next(seed_iter)).page(0, 2000), repeat=2)
            figures.append(Figure("correlation query, numpy engine (no numba; for scale)", best, None, "s",
                                  note=f"floor {floor8:.3f} s"))
        point = [6800, 4200, 5600]
        best, median, _ = timed(lambda: search8.seed_point(point).page(0, 2000), repeat=3)
        figures.append(Figure("seed-point (AGEA) map, 26k voxels (for scale)", best, None, "s",
                              note=_note(median, floor8, cov8.nbytes)))

        # ------------------------------------------------------------------ the full grid
        search_full = ExpressionSearch(full, grid, engine=engine)
        floor_full = _floor(full.raw)
        figures.append(Figure(f"streaming pass, {N_ROWS:,} x 159,326 uint8 (memory-mapped)", floor_full, None, "s",
                              note=f"{full.nbytes / 1e9 / floor_full:.1f} GB/s"))
        search_full.correlation(seeds[0])  # warm
        best, median, ranking = timed(lambda: search_full.correlation(next(seed_iter)).page(0, 2000), repeat=5)
        figures.append(Figure("full grid: correlation query, whole brain (63k voxels)", best, 2.0, "s",
                              note=_note(median, floor_full, full.nbytes)))
        best, median, _ = timed(lambda: search_full.differential("TH", "Isocortex").page(0, 2000), repeat=5)
        figures.append(Figure("full grid: differential search TH vs Isocortex", best, 2.0, "s",
                              note=_note(median, floor_full, full.nbytes)))
        best, median, _ = timed(lambda: search_full.correlation(next(seed_iter), "HPF").page(0, 2000), repeat=3)
        figures.append(Figure("full grid: correlation over HPF", best, 2.0, "s",
                              note=_note(median, floor_full, full.nbytes)))
        best, median, _ = timed(lambda: search_full.seed_point(point).page(0, 2000), repeat=2)
        figures.append(Figure("full grid: seed-point (AGEA) map (for scale)", best, None, "s",
                              note=_note(median, floor_full, full.nbytes)))

        figures.append(Figure("machine load while timing (1-min load average, 2 cores)", os.getloadavg()[0], None, "",
                              note="other sessions' work: the streaming floors above show what was left to us"))

        # ------------------------------------------------------------------ dask.distributed
        figures += _distributed(cov8, grid, seeds, floor8)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def _distributed(store: MatrixStore, grid: SearchGrid, seeds: list[int], floor: float) -> list[Figure]:
    try:
        from dask.distributed import Client, LocalCluster

        from brainmap.search.distributed import DistributedExpressionSearch
    except ImportError:
        return [Figure("dask.distributed searches", float("nan"), None, "s", note="dask[distributed] not installed")]
    started = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        startup = time.perf_counter() - started
        search = DistributedExpressionSearch(store, client, grid, chunk_rows=1024)
        search.correlation(seeds[0])  # warm: workers load the kernels and map the file
        local = ExpressionSearch(store, grid).correlation(seeds[1]).top(100)
        seed_iter = iter(seeds[1:] * 10)
        best, median, _ = timed(lambda: search.correlation(next(seed_iter)).page(0, 2000), repeat=5)
        agree = [row.data_set_id for row in search.correlation(seeds[1]).top(100)] == [row.data_set_id for row in local]
        out = [Figure("dask LocalCluster (2x1): correlation query, 26k (for scale)", best, None, "s",
                      note=_note(median, floor, store.nbytes,
                                 f"{len(search.matrix.chunks[0])} chunks; cluster start {startup:.1f} s; "
                                 f"top 100 {'equal' if agree else 'DIFFER from'} local"))]
        best, median, _ = timed(lambda: search.differential("TH", "Isocortex").page(0, 2000), repeat=5)
        out.append(Figure("dask LocalCluster (2x1): differential search, 26k (for scale)", best, None, "s",
                          note=_note(median, floor, store.nbytes)))
        best, median, _ = timed(lambda: search.seed_point([6800, 4200, 5600]).page(0, 2000), repeat=3)
        out.append(Figure("dask LocalCluster (2x1): seed-point map, 26k (for scale)", best, None, "s",
                          note=_note(median, floor, store.nbytes)))
    return out
