"""The portal's page loads: experiment browser and experiment page <= 300 ms, a section tile <= 50 ms (server time).

The server is ``brainmap serve`` (one worker, request logging on) over a data directory loaded here with
``brainmap load`` from the demo's specimens (``./brainmap-demo/specimens`` when the demo has run in this folder,
else ``brainmap demo`` runs first in a temporary folder). Server time is the ``duration_ms`` the server's own
request log gives each request (from the request's arrival to the answer's last byte); the client's wall time
over loopback is printed beside it. Each page is requested once to warm the process (first use of the ontology,
the annotation), then ``REPEAT`` times; the figure is the median.

Tiles come from the Deep Zoom pyramids ``brainmap load`` writes under the data directory
(:mod:`brainmap.specimen.pyramid`): "first request" is each image's first tile asked of the server, "again" the
same tile a second time. The demo's images are small (244 x 189 px); the Allen-sized figure is an 8 um ISH
specimen (1523 x 1180 px, ``brainmap specimen make --product ish --gene Calb1 --alignment all``, 64 sections)
loaded into its own data directory and served alone; the time ``brainmap load`` took to make its pyramids is
printed beside it (``BRAINMAP_BENCH_PORTAL_ISH=0`` leaves that part out).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx

from benchmarks.report import Figure

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REPEAT = int(os.environ.get("BRAINMAP_BENCH_PORTAL_REPEAT", "15"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _brainmap(*args: str, cwd: Path) -> str:
    done = subprocess.run([str(BIN / "brainmap"), *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"brainmap {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


@contextlib.contextmanager
def _served(data_dir: Path, log_path: Path) -> Iterator[httpx.Client]:
    """A ``brainmap serve`` of ``data_dir`` (one worker, its log to ``log_path``), warm."""
    port = _free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(BIN / "brainmap"), "serve", "--data-dir", str(data_dir), "--port",
                                   str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
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
            yield client
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


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
        with _served(here / "data", here / "serve.log") as client:
            figures = _measure(client, here / "serve.log")
        if os.environ.get("BRAINMAP_BENCH_PORTAL_ISH", "1") != "0":
            figures += _ish_tiles(here)
        return figures


def _first_tiles(client: httpx.Client, images: list[dict], log: Path) -> tuple[list[float], list[float]]:
    """Server times (ms) of the full-resolution level's first tile of each image, asked twice."""
    tiles = []
    for image in images:
        level = math.ceil(math.log2(max(image["width"], image["height"])))  # full resolution
        path = f"/portal/dz/{image['id']}_files/{level}/0_0.jpg"
        for _ in range(2):  # first, again
            assert client.get(path).status_code == 200
        tiles.append(path)
    time.sleep(1.0)  # the last log lines
    server = _server_times(log)
    return [server[p][0] for p in tiles], [server[p][1] for p in tiles]


def _ish_tiles(here: Path) -> list[Figure]:
    folder = here / "ish-8um"
    _brainmap("specimen", "make", "--product", "ish", "--gene", "Calb1", "--alignment", "all", "--out",
              str(folder), cwd=here)
    started = time.perf_counter()
    out = _brainmap("load", str(folder), "--data-dir", str(here / "data-ish"), cwd=here)
    load_s = time.perf_counter() - started
    made = re.search(r"made the tile pyramids of (\d+) section image\(s\) in ([\d.]+) s", out)
    data_set_id = json.loads((folder / "dataset.json").read_text())["id"]
    with _served(here / "data-ish", here / "serve-ish.log") as client:
        images = client.get(f"/portal/sections/{data_set_id}/images.json").json()["msg"]
        first, again = _first_tiles(client, images[:REPEAT], here / "serve-ish.log")
    size = f"{images[0]['width']} x {images[0]['height']} px"
    pyramids = (f"pyramids of {made.group(1)} images made by brainmap load in {made.group(2)} s"
                if made else "no pyramid line in brainmap load's output")
    return [Figure(f"section tile, first request, 8 um ISH (median of {len(first)} images)", statistics.median(first),
                   50.0, "ms", note=f"{size}; max {max(first):.1f} ms; {pyramids} (whole load {load_s:.0f} s)"),
            Figure(f"section tile, again, 8 um ISH (median of {len(again)})", statistics.median(again), 50.0, "ms")]


def _measure(client: httpx.Client, log: Path) -> list[Figure]:
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
    first, cached = _first_tiles(client, images[10:10 + REPEAT], log)
    server = _server_times(log)
    figures = []
    for name, url in pages:
        times = server[url][1:]
        figures.append(Figure(f"{name}: server time (median of {len(times)})", statistics.median(times), 300.0,
                              "ms", note=f"client wall {statistics.median(wall[url][1:]):.0f} ms"))
    figures.append(Figure(f"section tile, first request (median of {len(first)} images)", statistics.median(first),
                          50.0, "ms", note=f"{images[0]['width']} x {images[0]['height']} px images (demo)"))
    figures.append(Figure(f"section tile, again (median of {len(cached)})", statistics.median(cached), 50.0, "ms"))
    return figures
