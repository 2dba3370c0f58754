"""The SDK: the projection matrix from a warm cache, and grid-file download throughput from a local server.

Targets (the SDK issue): ``get_projection_matrix`` of 200 experiments x 300 structures x 2 hemispheres from a
warm cache <= 0.2 s. The cache is a MouseConnectivityCache folder holding, for each of 200 experiments, a
synthetic ProjectionStructureUnionize table of realistic size (the 839 structures with voxels in the CCF x
hemispheres 1, 2, 3 as projection rows, plus 60 injection rows: 2,577 rows x 19 of Allen's columns, as many as
the server tests' experiment 100 has), written exactly as
the cache writes what it downloads (column table + verification record), and the ontology as the cache
saves it; the cache is opened offline (no request can leave it). Three figures: a fresh cache object (reads
the ontology and the 200 tables from disk -- the page cache, as after a first run), the same object again
after dropping its in-memory tables (the tables from disk, the ontology already loaded), and a repeat with
everything in memory.

Download throughput: a real ``brainmap serve`` (started as bench_server.py starts it, 2 workers, SQLite) over
a data directory with three 38.5 MB projection-density NRRDs (50 um, raw encoding); the SDK downloads them
into an empty cache (stream to ``.part``, sha256 while receiving, size and ``X-Checksum-SHA256`` check, fsync,
rename, record), one after another. A bare httpx stream of the same files (no hashing, no disk) is printed for
scale.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import Figure, best_of

N_EXPERIMENTS = 200
N_STRUCTURES = 300
N_INJECTION_ROWS = 60
N_FILES = 3


# -- the projection matrix --------------------------------------------------------------------------------------
def _synthetic_table(experiment_id: int, structure_ids: np.ndarray, rng: np.random.Generator
                     ) -> dict[str, np.ndarray]:
    """A unionize table with the cache's columns and dtypes (see brainmap.sdk.tables)."""
    from brainmap.sdk.connectivity_cache import UNIONIZE_COLUMNS

    n_projection = structure_ids.size * 3
    n = n_projection + N_INJECTION_ROWS
    table = {"id": experiment_id * 10_000 + np.arange(n, dtype=np.int64),
             "experiment_id": np.full(n, experiment_id, dtype=np.int64),
             "structure_id": np.concatenate([np.tile(structure_ids, 3), rng.choice(structure_ids, N_INJECTION_ROWS)]),
             "hemisphere_id": np.concatenate([np.repeat(np.arange(1, 4, dtype=np.int64), structure_ids.size),
                                              rng.integers(1, 4, N_INJECTION_ROWS)]),
             "is_injection": np.arange(n) >= n_projection}
    for name in UNIONIZE_COLUMNS:
        if name not in table:
            table[name] = rng.random(n) ** 4
    return {name: table[name] for name in UNIONIZE_COLUMNS}


def _warm_cache(folder: Path) -> tuple[list[int], list[int]]:
    from brainmap.atlas import ReferenceSpace, StructureTree
    from brainmap.sdk import MouseConnectivityCache
    from brainmap.sdk.download import write_verified
    from brainmap.sdk.tables import table_bytes

    tree = StructureTree.bundled()
    rows = []
    for node in tree.nodes():
        path = node["structure_id_path"]
        rows.append({"id": node["id"], "acronym": node["acronym"], "name": node["name"],
                     "structure_id_path": "/" + "/".join(map(str, path)) + "/", "graph_id": 1,
                     "graph_order": node["graph_order"], "parent_structure_id": path[-2] if len(path) > 1 else None,
                     "depth": len(path) - 1,
                     "color_hex_triplet": "".join(f"{c:02X}" for c in node["rgb_triplet"]),
                     "structure_set_ids": list(node["structure_set_ids"])})
    online = MouseConnectivityCache(resolution=100, manifest_file=folder / "manifest.json", progress=False)
    write_verified(online.store.path("STRUCTURE_TREE", structure_graph_id=1), json.dumps(rows).encode(), "bench")
    rng = np.random.default_rng(0)
    counts = ReferenceSpace.bundled(25).total_voxel_counts()
    all_ids = np.asarray(counts.index[counts.to_numpy() > 0], dtype=np.int64)  # the 839 with voxels
    experiment_ids = [100_000_000 + 1000 * k for k in range(N_EXPERIMENTS)]
    for experiment_id in experiment_ids:
        path = online.store.path("STRUCTURE_UNIONIZES", experiment_id=experiment_id)
        write_verified(path, table_bytes(_synthetic_table(experiment_id, all_ids, rng)), "bench")
    present = set(all_ids.tolist())
    chosen = [s for s in tree.structure_set_member_ids(167587189) if s in present]  # summary structures first
    chosen += [s for s in all_ids.tolist() if s not in set(chosen)]
    return experiment_ids, [int(s) for s in chosen[:N_STRUCTURES]]


def _matrix_figures(root: Path) -> list[Figure]:
    from brainmap.sdk import MouseConnectivityCache

    folder = root / "warm"
    experiment_ids, structures = _warm_cache(folder)
    assert len(structures) == N_STRUCTURES

    def fresh() -> dict:
        mcc = MouseConnectivityCache(resolution=100, manifest_file=folder / "manifest.json", offline=True)
        return mcc.get_projection_matrix(experiment_ids, structures, [1, 2])

    fresh_best, fresh_median = best_of(fresh, 5)
    mcc = MouseConnectivityCache(resolution=100, manifest_file=folder / "manifest.json", offline=True)
    result = mcc.get_projection_matrix(experiment_ids, structures, [1, 2])
    assert result["matrix"].shape == (N_EXPERIMENTS, 2 * N_STRUCTURES)
    assert np.isfinite(result["matrix"]).all()

    def from_disk() -> dict:
        mcc.store._tables.clear()
        return mcc.get_projection_matrix(experiment_ids, structures, [1, 2])

    disk_best, disk_median = best_of(from_disk, 5)
    memory_best, memory_median = best_of(lambda: mcc.get_projection_matrix(experiment_ids, structures, [1, 2]), 5)
    rows = N_EXPERIMENTS * (839 * 3 + N_INJECTION_ROWS)
    return [
        Figure("get_projection_matrix 200 x 300 x 2, fresh cache object", fresh_best, 0.2, "s",
               note=f"median {fresh_median:.3f} s; ontology + {rows:,} unionize rows from disk"),
        Figure("get_projection_matrix, tables re-read from disk", disk_best, 0.2, "s",
               note=f"median {disk_median:.3f} s"),
        Figure("get_projection_matrix, tables in memory", memory_best, None, "s",
               note=f"median {memory_median:.3f} s"),
    ]


# -- downloads ---------------------------------------------------------------------------------------------------
def _download_figures(root: Path) -> list[Figure]:
    import httpx

    from benchmarks.bench_server import Server, _data_set
    from brainmap.atlas import ReferenceSpace
    from brainmap.io.nrrd import write_nrrd
    from brainmap.sdk import MouseConnectivityCache
    from brainmap.store import load_paths, open_database

    data = root / "data"
    space = ReferenceSpace.bundled(50)
    rng = np.random.default_rng(1)
    ids = [500_000 + k for k in range(N_FILES)]
    for experiment_id in ids:
        folder = data / "connectivity" / str(experiment_id)
        _data_set(folder, experiment_id, "connectivity", "coronal", {
            "injection_structures": [385], "primary_injection_structure": 385, "injection_x": 9000.0,
            "injection_y": 2000.0, "injection_z": 8500.0, "injection_volume": 0.5, "specimen_name": str(experiment_id),
            "strain": "C57BL/6J", "sex": "M"})
        volume = (rng.random(space.shape, dtype=np.float32) ** 8) * (np.asarray(space.annotation) > 0)
        (folder / "grids").mkdir()
        write_nrrd(folder / "grids" / "projection_density_50.nrrd", volume, spacing_um=50, encoding="raw")
    database = open_database(None, data)
    try:
        load_paths(database, [data], data_dir=data)
    finally:
        database.dispose()
    total = sum((data / "connectivity" / str(i) / "grids" / "projection_density_50.nrrd").stat().st_size for i in ids)
    server = Server.start(data, root / "requests.log")
    try:
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(timeout=120) as client:  # warm the server's file path once
            client.get(f"{base}/grid_data/download_file/{ids[0]}", params={"image": "projection_density",
                                                                              "resolution": 50})
        mcc = MouseConnectivityCache(resolution=50, manifest_file=root / "cache" / "manifest.json", base_uri=base,
                                     progress=False)
        started = time.perf_counter()
        for experiment_id in ids:
            url = mcc.api.projection_grid_url(experiment_id, "projection_density", 50)
            path = mcc.store.path("VOLUME", experiment_id=experiment_id, volume="projection_density", resolution=50)
            mcc.store.file("bench", url, path)
        sdk_s = time.perf_counter() - started
        started = time.perf_counter()
        with httpx.Client(timeout=120) as client:
            received = 0
            for experiment_id in ids:
                with client.stream("GET", f"{base}/grid_data/download_file/{experiment_id}",
                                   params={"image": "projection_density", "resolution": 50}) as response:
                    for chunk in response.iter_bytes():
                        received += len(chunk)
        bare_s = time.perf_counter() - started
        assert received == total
    finally:
        server.stop()
    mb = total / 2**20
    return [Figure(f"SDK download of grid files ({N_FILES} x {mb / N_FILES:.1f} MB NRRD), verified into the cache",
                   mb / sdk_s, None, "MB/s", better="higher",
                   note=f"{sdk_s:.2f} s; sha256 + size check, fsync, atomic rename"),
            Figure("bare httpx stream of the same files (no hashing, no disk)", mb / bare_s, None, "MB/s",
                   better="higher", note=f"{bare_s:.2f} s; for scale")]


def run() -> list[Figure]:
    parent = os.environ.get("BRAINMAP_BENCH_TMP")
    root = Path(tempfile.mkdtemp(prefix="brainmap-bench-sdk-", dir=parent))
    try:
        return _matrix_figures(root) + _download_figures(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
