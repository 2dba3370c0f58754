"""The HTTP API under load: RMA queries and a service query from 50 concurrent clients, and grid downloads.

Targets (the data-service issue, this 2-core machine): simple RMA queries >= 500 requests/s, and their p99
latency <= 50 ms, with 50 concurrent clients on loopback. The server is started here, as ``brainmap serve``
runs it (uvicorn, 2 worker processes, request logging on, SQLite), on a free loopback port, over a data
directory made here: the 428 real wild-type experiments of Knox et al. 2019 as connectivity data sets (loaded
by ``brainmap load``), an ISH data set with its 200 um grids, and a 38.5 MB projection-density NRRD (50 um).

How it is measured: a small asyncio HTTP/1.1 client (keep-alive, one connection per client; it costs far less
CPU than the server, which shares the 2 cores with it) runs each phase for ``BRAINMAP_BENCH_SERVER_SECONDS``
(default 10 s):

* closed loop: 50 clients each sending its next request as soon as the previous answer arrives -- the
  throughput at saturation (its latency is then mostly queueing: 50 clients / throughput);
* open loop: 50 clients sending on a fixed schedule that adds up to the target rate (500/s); latency counts
  from the scheduled send time, so a server that falls behind pays for it (no coordinated omission). The p99
  target is judged here, at the target load.

Query mixes: *repeated simple queries* (a Structure by acronym or by id, 200 different queries cycled: after the
first round the server answers from its answer cache, checked against the database's change token each time);
*distinct simple queries* (every request a query text never seen before: parsed, compiled and run each time);
the *service* ``mouse_connectivity_injection_coordinate`` at 200 seed points (computed for every request).
Server CPU per request (all worker processes, from /proc) is printed beside the rates: unlike wall-clock rates,
it hardly depends on what else runs on the machine.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from benchmarks.report import Figure

SECONDS = float(os.environ.get("BRAINMAP_BENCH_SERVER_SECONDS", "10"))
CLIENTS = 50
TARGET_RATE = 500.0
SERVICE_RATE = 100.0


# -- the data directory -------------------------------------------------------------------------------------------
def _data_set(folder: Path, dataset_id: int, product: str, plane: str, metadata: dict[str, Any]) -> None:
    from brainmap.specimen.folder import write_dataset
    from brainmap.specimen.model import SectionDataSet, SectionImage, iter_image_files, nominal_tvr
    from brainmap.specimen.transforms import Affine2d, Alignment2d, Alignment3d

    pixel = 0.35 if product == "connectivity" else 1.0
    image = SectionImage(id=dataset_id * 10, section_number=50, channels=["red"] if product == "connectivity"
                         else ["ish"], width=8, height=6,
                         alignment2d=Alignment2d.from_tsv(Affine2d(np.diag([pixel, pixel]), np.zeros(2))))
    dataset = SectionDataSet(id=dataset_id, plane=plane, product=product,
                             section_thickness_um=100.0 if product == "connectivity" else 25.0,
                             sampling_um=100.0 if product == "connectivity" else 200.0, pixel_size_um=pixel,
                             images=[image], alignment3d=Alignment3d.from_tvr(nominal_tvr(plane)), metadata=metadata)
    arrays = {(i.id, channel): np.zeros(i.shape, dtype=np.uint16) for i, channel, _ in iter_image_files(dataset)}
    write_dataset(folder, dataset, arrays)


def make_data(root: Path) -> dict[str, Any]:
    """The benchmark's data directory, loaded into its SQLite database; what the phases query."""
    from brainmap.atlas import ReferenceSpace
    from brainmap.data.tables import knox_experiments
    from brainmap.io.metaimage import write_metaimage
    from brainmap.io.nrrd import write_nrrd
    from brainmap.store import load_paths, open_database

    experiments = knox_experiments()
    for e in experiments.itertuples():
        _data_set(root / "connectivity" / str(e.id), int(e.id), "connectivity", "coronal", {
            "injection_structures": list(e.injection_structures),
            "primary_injection_structure": int(e.primary_injection_structure),
            "injection_x": float(e.injection_x), "injection_y": float(e.injection_y),
            "injection_z": float(e.injection_z), "injection_volume": float(e.injection_volume),
            "specimen_name": e.specimen_name, "strain": e.strain, "sex": e.gender})
    ish = root / "ish" / "70000000"
    _data_set(ish, 70000000, "ish", "sagittal", {"gene": "Pdyn"})
    rng = np.random.default_rng(0)
    grids = ish / "grids"
    grids.mkdir()
    for name in ("energy", "density", "intensity"):
        write_metaimage(grids / f"{name}.mhd", rng.random((67, 41, 58), dtype=np.float32), (200.0, 200.0, 200.0))
    big_id = int(experiments.index[0])
    space50 = ReferenceSpace.bundled(50)
    volume = (rng.random(space50.shape, dtype=np.float32) ** 8) * (np.asarray(space50.annotation) > 0)
    big = root / "connectivity" / str(big_id) / "grids" / "projection_density_50.nrrd"
    big.parent.mkdir()
    write_nrrd(big, volume, spacing_um=50, encoding="raw")
    database = open_database(None, root)
    try:
        load_paths(database, [root], data_dir=root)
    finally:
        database.dispose()
    tree = space50.structure_tree
    brain = np.argwhere(np.asarray(ReferenceSpace.bundled(100).annotation) > 0)  # the connectivity grid's brain
    seeds = brain[rng.choice(len(brain), 200, replace=False)] * 100 + 50
    return {"acronyms": [n["acronym"] for n in tree.nodes()][:100], "ids": [int(i) for i in tree.node_ids()][:100],
            "all_ids": [int(i) for i in tree.node_ids()], "seeds": seeds.tolist(), "big_id": big_id,
            "big_bytes": big.stat().st_size, "ish_id": 70000000}


# -- the server ---------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: A minimal ASGI app answering every request with the same small JSON: the noise floor of the machine.
FLOOR_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b'{"success": true, "msg": []}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""

SERVE_SCRIPT = ("import sys\nfrom brainmap.server.serve import run_server\n"
                "run_server(sys.argv[1], None, '127.0.0.1', int(sys.argv[2]), workers=2, log_file=sys.argv[3])\n")
FLOOR_SCRIPT = ("import sys, uvicorn\nsys.path.insert(0, sys.argv[1])\nuvicorn.run('floor_app:app', "
                "host='127.0.0.1', port=int(sys.argv[2]), workers=2, access_log=False, log_level='warning')\n")


@dataclass
class Server:
    process: subprocess.Popen
    port: int

    @classmethod
    def start(cls, data_dir: Path, log: Path, script: str = SERVE_SCRIPT) -> "Server":
        port = _free_port()
        process = subprocess.Popen([sys.executable, "-c", script, str(data_dir), str(port), str(log)],
                                   stdout=subprocess.DEVNULL, stderr=open(log.with_suffix(".stderr"), "wb"))
        server = cls(process, port)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("the server exited: " + log.with_suffix(".stderr").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return server
            except OSError:
                time.sleep(0.3)
        server.stop()
        raise RuntimeError("the server did not start in 120 s")

    def wait_warm(self, workers: int = 2, timeout_s: float = 180.0) -> float:
        """Wait until every worker reports its start-up warm-up done (``/health``); the seconds waited."""
        started = time.monotonic()
        streak = 0  # /health names no process: wait for 5 x workers warm answers in a row on fresh connections
        while streak < 5 * workers and time.monotonic() - started < timeout_s:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            body = json.loads(data.partition(b"\r\n\r\n")[2])
            if body.get("warm"):
                streak += 1
            else:
                streak = 0
                time.sleep(0.5)
        return time.monotonic() - started

    def pids(self) -> list[int]:
        """The uvicorn process and its worker processes."""
        out = [self.process.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.process.pid:
                    out.append(int(entry))
        return out

    def cpu_seconds(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


# -- the load generator -------------------------------------------------------------------------------------------
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            total += size
            if size == 0:
                return status, total
    remaining = length
    while remaining:
        chunk = await reader.read(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        remaining -= len(chunk)
    return status, length


@dataclass
class Result:
    requests: int
    seconds: float
    latencies: np.ndarray  # seconds
    errors: collections.Counter
    body_bytes: int
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies.size else float("nan")

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_seconds / max(1, self.requests) * 1000


async def _client(port: int, targets: list[bytes], start: int, step: int, deadline: float, rate: float | None,
                  offset: float, out: dict[str, Any]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    i = start
    began = time.perf_counter()
    n = 0
    try:
        while True:
            scheduled = began + offset + n / rate if rate else time.perf_counter()
            if rate:
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if time.perf_counter() >= deadline:
                break
            writer.write(targets[i % len(targets)])
            status, size = await _read_response(reader)
            out["latencies"].append(time.perf_counter() - scheduled)
            out["bytes"] += size
            if status != 200:
                out["errors"][status] += 1
            i += step
            n += 1
    finally:
        writer.close()


def load(server: Server, paths: list[str], seconds: float, clients: int = CLIENTS,
         rate: float | None = None) -> Result:
    """Run ``clients`` clients over ``paths`` for ``seconds``: closed loop, or open loop at ``rate`` in all."""
    targets = [f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for p in paths]
    out: dict[str, Any] = {"latencies": [], "bytes": 0, "errors": collections.Counter()}

    async def main() -> float:
        started = time.perf_counter()
        deadline = started + seconds
        per_client = rate / clients if rate else None
        await asyncio.gather(*[_client(server.port, targets, k, clients, deadline, per_client,
                                       (k / clients) / per_client if per_client else 0.0, out)
                               for k in range(clients)])
        return time.perf_counter() - started

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    cpu0 = server.cpu_seconds()
    elapsed = runner(main())
    cpu = server.cpu_seconds() - cpu0
    latencies = np.asarray(out["latencies"], dtype=np.float64)
    return Result(latencies.size, elapsed, latencies, out["errors"], out["bytes"], cpu)


# -- the phases -----------------------------------------------------------------------------------------------------
def _rma(query: str) -> str:
    return "/api/v2/data/query.json?criteria=" + quote(query, safe="")


def run() -> list[Figure]:
    parent = os.environ.get("BRAINMAP_BENCH_TMP")
    root = Path(tempfile.mkdtemp(prefix="brainmap-bench-server-", dir=parent))
    try:
        started = time.perf_counter()
        data_dir = root / "data"
        data_dir.mkdir()
        info = make_data(data_dir)
        made = time.perf_counter() - started
        server = Server.start(data_dir, root / "requests.log")
        try:
            figures = _measure(server, info, made, root / "requests.log")
        finally:
            server.stop()
        (root / "floor_app.py").write_text(FLOOR_APP)
        floor = Server.start(root, root / "floor.log", FLOOR_SCRIPT)
        try:
            load(floor, ["/"], 2.0)
            result = load(floor, ["/"], SECONDS, rate=TARGET_RATE)
        finally:
            floor.stop()
        figures.append(Figure("noise floor: a constant-answer uvicorn app at 500 req/s: p99", result.percentile(99),
                              None, "ms", note=f"p50 {result.percentile(50):.1f} ms; the machine's share of the "
                                               "tail (2 workers, same client)"))
        return figures
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(server: Server, info: dict[str, Any], made_s: float, log: Path) -> list[Figure]:
    simple = [_rma(f"model::Structure,rma::criteria,[acronym$eq'{a}']") for a in info["acronyms"]]
    simple += [f"/api/v2/data/Structure/query.json?criteria=[id$eq{i}]" for i in info["ids"]]
    random.Random(1).shuffle(simple)
    rng = random.Random(2)
    distinct = [_rma(f"model::Structure,rma::criteria,[id$eq{rng.choice(info['all_ids'])}],"
                     f"rma::options[num_rows$eq{1 + k % 1000}][start_row$eq{k // 1000}]") for k in range(100_000)]
    services = [_rma("service::mouse_connectivity_injection_coordinate[seed_point$eq{},{},{}][num_rows$eq20]"
                     .format(*seed)) for seed in info["seeds"]]
    warm_s = server.wait_warm()  # the workers' start-up warm-up (grids, connectivity search) is done
    load(server, simple, 3.0)  # every worker compiles and caches the simple queries once

    saturated = load(server, simple, SECONDS)
    at_target = load(server, simple, SECONDS, rate=TARGET_RATE)
    cold = load(server, distinct, SECONDS)
    service = load(server, services, SECONDS)
    service_at = load(server, services, SECONDS, rate=SERVICE_RATE)

    nrrd = f"/grid_data/download_file/{info['big_id']}?image=projection_density&resolution=50"
    files = load(server, [nrrd], min(SECONDS, 5.0), clients=2)
    zips = load(server, [f"/grid_data/download/{info['ish_id']}?include=energy,density,intensity"],
                min(SECONDS, 5.0), clients=4)
    errors = sum((r.errors for r in (saturated, at_target, cold, service, service_at, files, zips)),
                 collections.Counter())
    lines = sum(1 for _ in open(log, encoding="utf-8"))

    def note(r: Result) -> str:
        return (f"{r.requests:,} requests, p50 {r.percentile(50):.1f} ms, server CPU "
                f"{r.cpu_ms_per_request:.2f} ms/request")

    load_average = "load average {:.1f} / {:.1f} / {:.1f} on {} cores".format(*os.getloadavg(), os.cpu_count())
    return [
        Figure("repeated simple RMA queries, 50 clients, saturated", saturated.rate, TARGET_RATE, "req/s",
               "higher", note(saturated)),
        Figure("repeated simple RMA queries at 500 req/s offered: p99", at_target.percentile(99), 50.0, "ms",
               note=f"achieved {at_target.rate:.0f} req/s; {note(at_target)}"),
        Figure("repeated simple RMA queries, saturated: p99", saturated.percentile(99), None, "ms",
               note="mostly queueing: 50 clients / throughput"),
        Figure("distinct simple RMA queries (nothing cached), saturated", cold.rate, None, "req/s", "higher",
               note(cold)),
        Figure("distinct simple RMA queries, saturated: p99", cold.percentile(99), None, "ms"),
        Figure("service mouse_connectivity_injection_coordinate, saturated", service.rate, None, "req/s",
               "higher", note(service) + " (428 experiments)"),
        Figure("service at 100 req/s offered: p99", service_at.percentile(99), None, "ms", note=note(service_at)),
        Figure("grid download_file (38.5 MB NRRD, streamed), 2 clients", files.body_bytes / files.seconds / 2**20,
               None, "MB/s", "higher", f"{files.requests} downloads, server CPU "
                                      f"{files.cpu_seconds / max(files.body_bytes, 1) * 2**30:.2f} s/GB"),
        Figure("grid download zip (3 ISH volumes, kept built), 4 clients", zips.body_bytes / zips.seconds / 2**20,
               None, "MB/s", "higher", f"{zips.requests} downloads of {zips.body_bytes // max(zips.requests, 1):,}"
                                      " bytes"),
        Figure("non-200 answers in all phases", sum(errors.values()), 0, "count",
               note=", ".join(f"{n} x HTTP {code}" for code, n in sorted(errors.items()))),
        Figure("request log lines written (one per request)", lines, None, "lines",
               note=f"data made and loaded in {made_s:.0f} s; server warm-up {warm_s:.0f} s; {load_average}"),
    ]


if __name__ == "__main__":  # pragma: no cover
    for figure in run():
        print(figure.line())
