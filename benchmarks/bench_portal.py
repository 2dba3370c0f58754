"""The portal's page loads: experiment browser and experiment page <= 300 ms, a section tile <= 50 ms (server time).

The server is ``brainmap serve`` (one worker, request logging on) over a data directory loaded here with
``brainmap load`` from the demo's specimens (``./brainmap-demo/specimens`` when the demo has run in this folder,
else ``brainmap demo`` runs first in a temporary folder). Server time is the ``duration_ms`` the server's own
request log gives each request (from the request's arrival to the answer's last byte); the client's wall time
over loopback is printed beside it. Each page is requested once to warm the process (first use of the ontology,
the annotation), then ``REPEAT`` times; the figure is the median.

Tiles: "first request" is each image's first tile, made from the section's TIFF files (read, composited, reduced
to the level, cut, JPEG-encoded); "cached" is the same tile again.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.report import Figure

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REPEAT = int(os.environ.get("BRAINMAP_BENCH_PORTAL_REPEAT", "15"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _brainmap(*args: str, cwd: Path) -> None:
    done = subprocess.run([str(BIN / "brainmap"), *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"brainmap {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def _server_times(log: Path) -> dict[str, list[float]]:
    """Every request's server time (ms) by its path and query, in the order the server answered them."""
    times: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"duration_ms"' in line:
            entry = json.loads(line)
            key = entry["path"] + (f"?{entry['query']}" if entry.get("query") else "")
            times.setdefault(key, []).append(float(entry["duration_ms"]))
    return times


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="brainmap-portal-bench-") as tmp:
        here = Path(tmp)
        specimens = ROOT / "brainmap-demo" / "specimens"
        if len([f for f in specimens.glob("*/dataset.json")]) < 6:
            _brainmap("demo", cwd=here)
            specimens = here / "brainmap-demo" / "specimens"
        _brainmap("load", str(specimens), "--data-dir", str(here / "data"), cwd=here)
        port = _free_port()
        log_path = here / "serve.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen([str(BIN / "brainmap"), "serve", "--data-dir", str(here / "data"), "--port",
                                       str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                return _measure(f"http://127.0.0.1:{port}", log_path)
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)


def _measure(base: str, log: Path) -> list[Figure]:
    client = httpx.Client(base_url=base, timeout=120)
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.get("/health").json().get("warm"):
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not warm up in 120 s")
        time.sleep(0.5)
    data_sets = client.get("/api/v2/data/query.json", params={
        "criteria": "model::SectionDataSet,rma::include,genes,rma::options[num_rows$eqall]"}).json()["msg"]
    connectivity = next(d["id"] for d in data_sets if not d["genes"])
    ish = next(d["id"] for d in data_sets if d["genes"])
    pages = [("experiment browser /experiments", "/experiments"),
             ("experiment browser, injection filter (Isocortex)", "/experiments?injection=Isocortex"),
             (f"experiment page, connectivity ({connectivity})", f"/experiment/{connectivity}"),
             (f"experiment page, ISH ({ish})", f"/experiment/{ish}")]
    wall: dict[str, list[float]] = {}
    for _, url in pages:
        for _ in range(REPEAT + 1):  # the first warms the process
            started = time.perf_counter()
            assert client.get(url).status_code == 200
            wall.setdefault(url, []).append((time.perf_counter() - started) * 1000)
    images = client.get(f"/portal/sections/{connectivity}/images.json").json()["msg"]
    tiles = []
    for image in images[10:10 + REPEAT]:
        level = math.ceil(math.log2(max(image["width"], image["height"])))  # full resolution
        path = f"/portal/dz/{image['id']}_files/{level}/0_0.jpg"
        for _ in range(2):  # made, then cached
            assert client.get(path).status_code == 200
        tiles.append(path)
    time.sleep(1.0)  # the last log lines
    server = _server_times(log)
    figures = []
    for name, url in pages:
        times = server[url][1:]
        figures.append(Figure(f"{name}: server time (median of {len(times)})", statistics.median(times), 300.0,
                              "ms", note=f"client wall {statistics.median(wall[url][1:]):.0f} ms"))
    first = [server[p][0] for p in tiles]
    cached = [server[p][1] for p in tiles]
    figures.append(Figure(f"section tile, first request (median of {len(first)} images)", statistics.median(first),
                          50.0, "ms", note=f"{images[0]['width']} x {images[0]['height']} px images, from TIFF"))
    figures.append(Figure(f"section tile, cached (median of {len(cached)})", statistics.median(cached), 50.0, "ms"))
    return figures
