"""Server fixtures: a realistic data directory, loaded into SQLite and PostgreSQL, each served by a real uvicorn
server on a free loopback port in a subprocess (started and stopped here, bounded in time).

The data directory is the store tests' (``tests/store/conftest.py``: connectivity data sets 100 and 101, ISH data
sets 200-202, thirteen real experiments with Allen's metadata and real ProjectionStructureUnionize rows) plus:

* ISH grids of data set 200 (``energy``, ``density``, ``intensity`` MetaImages on the 200 um grid, -1 outside the
  left hemisphere) and a grid-data zip;
* projection volumes of data set 101 at 100 um (``projection_density_100``, ``injection_density_100``,
  ``data_mask_100`` NRRD, the real grid shape);
* search matrices: ``search/mouse`` (48 synthetic ISH data sets over the 200 um grid), ``search/mouse_coronal``
  (its coronal rows) and ``search/connectivity`` (a projection-density row per connectivity experiment of the
  database: a blob at the injection site and a weaker one at its mirror image);
* hostile rows: WellKnownFiles whose paths leave the data directory (``../outside.nrrd``, ``/etc/passwd``, a
  symbolic link to a file outside) -- the file routes must refuse them.

Every test that uses ``server`` runs once per backend (PostgreSQL skipped, with the reason, where no server can
be had).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

for _module_name in ("fastapi", "uvicorn", "httpx"):
    pytest.importorskip(_module_name, reason=f"the server tests need {_module_name} (the server's dependencies: "
                                             "fastapi, uvicorn[standard], httpx)")

HERE = Path(__file__).resolve().parent
STORE_TESTS = HERE.parent / "store"
STARTUP_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 60.0
BACKENDS = ["sqlite", "postgresql"]

# Ids of the data the tests look at.
CONNECTIVITY_ID = 100
VOLUME_ID = 101  # has 100 um projection volumes
ISH_ID = 200


def _module(name: str, path: Path) -> Any:
    """A test helper module by path (the tests run with --import-mode=importlib)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


def store_helpers() -> Any:
    return _module("brainmap_tests_store_conftest", STORE_TESTS / "conftest.py")


def postgres_helpers() -> Any:
    return _module("brainmap_tests_store_postgres", STORE_TESTS / "postgres.py")


# -- the data directory -------------------------------------------------------------------------------------------
@dataclass
class ServerData:
    """The data directory and what the tests compare against."""

    root: Path
    store: Any  # the store tests' StoreData
    ish_grids: dict[str, np.ndarray]
    projection_101: dict[str, np.ndarray]
    expression_ids: list[int]
    connectivity_ids: list[int]
    outside_file: Path
    hostile_paths: dict[str, str] = field(default_factory=dict)


def _ish_grids(rng: np.random.Generator) -> dict[str, np.ndarray]:
    from brainmap.search import SearchGrid

    grid = SearchGrid.ish()
    annotation = np.asarray(grid.space.annotation)
    left = np.zeros(annotation.shape, dtype=bool)
    left[:, :, : annotation.shape[2] // 2] = True
    has_data = (annotation > 0) & left
    density = np.where(has_data, rng.random(annotation.shape) * 0.5, -1).astype(np.float32)
    intensity = np.where(has_data, rng.random(annotation.shape) * 200, -1).astype(np.float32)
    energy = np.where(has_data, density * intensity, -1).astype(np.float32)
    return {"energy": energy, "density": density, "intensity": intensity}


def _blob_volume(space: Any, centre_um: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shape = space.shape
    res = float(np.asarray(space.resolution).ravel()[0])
    ap, dv, lr = (np.arange(n, dtype=np.float32) * res + res / 2 for n in shape)
    mirror = centre_um.copy()
    mirror[2] = 11400.0 - centre_um[2]
    volume = np.zeros(shape, dtype=np.float32)
    for centre, weight, sigma in ((centre_um, 0.9, 450.0), (mirror, 0.25, 700.0)):
        d2 = ((ap[:, None, None] - centre[0]) ** 2 + (dv[None, :, None] - centre[1]) ** 2
              + (lr[None, None, :] - centre[2]) ** 2)
        volume += weight * np.exp(-d2 / (2 * sigma**2)).astype(np.float32)
    volume += rng.random(shape, dtype=np.float32) * 0.002
    volume[np.asarray(space.annotation) == 0] = 0.0
    return volume


def _connectivity_centres(store: Any, tree: Any, space: Any) -> dict[int, np.ndarray]:
    """Injection centre (um) of every connectivity experiment: its coordinates, else its primary structure's
    centroid."""
    centres = {}
    for ds_id, ds in store.data_sets.items():
        if ds.product != "connectivity":
            continue
        meta = ds.metadata
        coords = meta.get("injection_coordinates_um")
        if coords is None and meta.get("injection_x") is not None:
            coords = [meta["injection_x"], meta["injection_y"], meta["injection_z"]]
        if coords is None:
            primary = meta.get("primary_injection_structure") or meta["injection_structures"][0]
            sid = primary if isinstance(primary, int) else tree.get_structures_by_acronym([primary])[0]["id"]
            coords = space.structure_centroid_um(sid)
        centres[ds_id] = np.asarray(coords, dtype=np.float64)
    return centres


def build_server_data(root: Path, space100: Any) -> ServerData:
    from brainmap.atlas import StructureTree
    from brainmap.io.grid_bundle import write_grid_bundle
    from brainmap.io.metaimage import write_metaimage
    from brainmap.io.nrrd import write_nrrd
    from brainmap.search import MatrixStore, SearchGrid
    from brainmap.search.connectivity import create_projection_store
    from brainmap.search.synthetic import SyntheticExpression

    store = store_helpers().build_store_data(root, space100)
    rng = np.random.default_rng(20250101)

    # ISH grids of data set 200.
    ish = _ish_grids(rng)
    grid_folder = store.folders[ISH_ID] / "grids"
    grid_folder.mkdir()
    for name, volume in ish.items():
        write_metaimage(grid_folder / f"{name}.mhd", volume, (200.0, 200.0, 200.0), element_type="MET_FLOAT")
    write_grid_bundle(grid_folder / "grid_data.zip", ish, (200.0, 200.0, 200.0))

    # Projection volumes of data set 101 and the connectivity search matrix.
    tree = StructureTree.bundled()
    centres = _connectivity_centres(store, tree, space100)
    volumes = {ds_id: _blob_volume(space100, centre, rng) for ds_id, centre in sorted(centres.items())}
    folder_101 = store.folders[VOLUME_ID] / "grids"
    folder_101.mkdir()
    projection_101 = {"projection_density": volumes[VOLUME_ID],
                      "injection_density": (volumes[VOLUME_ID] > 0.5).astype(np.float32) * volumes[VOLUME_ID],
                      "data_mask": (np.asarray(space100.annotation) > 0).astype(np.uint8)}
    for name, volume in projection_101.items():
        write_nrrd(folder_101 / f"{name}_100.nrrd", volume, spacing_um=100)

    # A stand-in for Allen's average template at 100 um (the Nissl-like template), where the server looks for it.
    from brainmap.specimen.synthetic import make_template

    (root / "average_template").mkdir()
    write_nrrd(root / "average_template" / "average_template_100.nrrd", make_template(space100), spacing_um=100)

    search = root / "search"
    search.mkdir()
    conn = create_projection_store(search / "connectivity", encoding="uint8",
                                   grid=SearchGrid.from_reference_space(space100))
    ids = sorted(volumes)
    conn.append(np.stack([volumes[i].ravel(order="F") for i in ids]), ids, no_data_value=None)

    synthetic = SyntheticExpression(seed=3)
    mouse = MatrixStore.create(search / "mouse", encoding="uint8")
    synthetic.fill([mouse], 48, block_rows=48)
    mouse = MatrixStore.open(search / "mouse")
    coronal_rows = [i for i, p in enumerate(mouse.rows["plane"]) if p == "coronal"]
    if len(coronal_rows) < 4:  # keep the coronal set meaningful whatever the seed gives
        coronal_rows = list(range(8))
    coronal = MatrixStore.create(search / "mouse_coronal", encoding="uint8")
    values = synthetic.values(0, 48)[coronal_rows]
    coronal.append(values, mouse.data_set_ids[coronal_rows], no_data_value=None,
                   gene=[mouse.rows["gene"][i] for i in coronal_rows], plane="coronal")

    outside = root.parent / f"{root.name}-outside.nrrd"
    write_nrrd(outside, np.zeros((2, 2, 2), dtype=np.float32), spacing_um=100)
    (root / "escape.nrrd").symlink_to(outside)
    return ServerData(root, store, ish, projection_101, [int(i) for i in mouse.data_set_ids], ids, outside,
                      {"parent": f"../{outside.name}", "absolute": "/etc/passwd", "symlink": "escape.nrrd"})


def add_hostile_files(database: Any, data: ServerData) -> dict[str, int]:
    """WellKnownFile rows whose paths leave the data directory, attached to data set 101."""
    from sqlalchemy import insert, select

    from brainmap.store import models as m

    ids = {}
    with database.engine.begin() as connection:
        type_id = connection.execute(insert(m.WellKnownFileType).values(name="hostile_100")
                                     .returning(m.WellKnownFileType.id)).scalar_one()
        for kind, path in data.hostile_paths.items():
            ids[kind] = connection.execute(insert(m.WellKnownFile).values(
                attachable_id=VOLUME_ID, attachable_type="SectionDataSet", well_known_file_type_id=type_id,
                path=path, file_size=0, sha256="0" * 64).returning(m.WellKnownFile.id)).scalar_one()
        assert connection.execute(select(m.WellKnownFile.id).where(m.WellKnownFile.path == "escape.nrrd")).all()
    return ids


@pytest.fixture(scope="session")
def server_data(tmp_path_factory: pytest.TempPathFactory, space100: Any) -> ServerData:
    root = tmp_path_factory.mktemp("server-data") / "data"
    root.mkdir()
    return build_server_data(root, space100)


# -- servers ------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    """A uvicorn server in a subprocess, serving one data directory and database."""

    backend: str
    base_url: str
    workers: int
    database_url: str
    data: ServerData
    log_path: Path
    process: subprocess.Popen
    file_ids: dict[str, int]
    database: Any = None  # a writable Database on the same database (for checks and the cache test)

    def url(self, path: str) -> str:
        return self.base_url + path

    def log_records(self) -> list[dict[str, Any]]:
        """The request log so far (the server flushes it every 0.25 s)."""
        time.sleep(0.6)
        lines = self.log_path.read_text(encoding="utf-8").splitlines() if self.log_path.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]


SERVER_SCRIPT = """
import sys
from brainmap.server.serve import run_server
run_server(sys.argv[1], sys.argv[2], "127.0.0.1", int(sys.argv[3]), workers=int(sys.argv[5]), log_file=sys.argv[4],
           sync_resolution_um=100, max_rows=2000)
"""

#: Worker processes per backend: SQLite runs ``brainmap serve``'s default of 2 (both must answer).
WORKERS = {"sqlite": 2, "postgresql": 1}


def start_server(data_dir: Path, database_url: str, log_path: Path, stderr_path: Path,
                 workers: int = 1) -> tuple[subprocess.Popen, str]:
    """Start ``run_server`` in a subprocess on a free port; wait (bounded) until /health answers."""
    import httpx

    last_error = ""
    for _attempt in range(3):
        port = free_port()
        stderr = open(stderr_path, "ab")
        process = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(data_dir), database_url, str(port),
                                    str(log_path), str(workers)], stdout=subprocess.DEVNULL, stderr=stderr,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        stderr.close()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    return process, base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        stop_server(process)
        last_error = stderr_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the server did not start:\n{last_error}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def processes() -> tuple[Any, Any]:
    """``(free_port, stop_server)`` for tests that start servers of their own."""
    return free_port, stop_server


@pytest.fixture(scope="session")
def server_postgres() -> Iterator[Any]:
    """A PostgreSQL server for the PostgreSQL variant, or a skip saying why there is none."""
    helper = postgres_helpers()
    try:
        pg = helper.postgres_server()
    except helper.PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL variant skipped: {exc}")
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest, server_data: ServerData,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A running server on ``request.param``'s database, loaded with :func:`server_data`."""
    from brainmap.store.database import open_database
    from brainmap.store.load import load_paths

    backend = request.param
    if backend == "sqlite":
        url = f"sqlite:///{server_data.root / 'brainmap.sqlite'}"
    else:
        url = request.getfixturevalue("server_postgres").new_database("brainmap_server")
    database = open_database(url)
    load_paths(database, [server_data.root], data_dir=server_data.root)
    file_ids = add_hostile_files(database, server_data)
    logs = tmp_path_factory.mktemp(f"server-{backend}")
    process, base = start_server(server_data.root, url, logs / "requests.log", logs / "stderr.log",
                                 WORKERS[backend])
    running = RunningServer(backend, base, WORKERS[backend], url, server_data, logs / "requests.log", process,
                            file_ids, database)
    try:
        yield running
    finally:
        stop_server(process)
        database.dispose()


@pytest.fixture(scope="session")
def client_factory() -> Any:
    import httpx

    clients: list[Any] = []

    def make(server: RunningServer) -> Any:
        client = httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture()
def http(server: RunningServer, client_factory: Any) -> Any:
    """An httpx client on the server of this backend."""
    return client_factory(server)


def rma_url(query: str, fmt: str = "json") -> str:
    """The URL of an RMA query (percent-encoded)."""
    from urllib.parse import quote

    return f"/api/v2/data/query.{fmt}?criteria=" + quote(query, safe="")


@pytest.fixture(scope="session")
def rma() -> Any:
    """``rma(query, fmt="json")``: the URL of an RMA query."""
    return rma_url


@pytest.fixture(scope="session")
def raw() -> Any:
    """``raw(server, target)``: a GET sent byte for byte (no normalization of ``..``); (status, body)."""
    return raw_get


def raw_get(server: RunningServer, target: str) -> tuple[int, bytes]:
    """A GET with the request target sent exactly as given (no client-side normalization of ``..``)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_S) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
