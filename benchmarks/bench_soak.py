"""Soak: 50 clients for 60 s on loopback mixing RMA queries, services, downloads and slow clients.

Targets (issue 17): 0 errors for the well-behaved clients; p99 latency reported per kind; the server's memory
flat (resident set of all its processes, last quarter's median within 10% of the first quarter's).

The server is started as ``brainmap serve`` runs it (uvicorn, 2 workers, request log on, SQLite) over the data
directory of ``bench_server`` (428 real connectivity experiments, an ISH data set with grids, a 38.5 MB NRRD).
The 50 clients (asyncio, one connection each, reconnecting when the server closes it):

* 26 RMA clients: repeated simple queries, queries never seen before, and model-form queries with include;
* 8 service clients: ``mouse_connectivity_injection_coordinate`` at random seed points;
* 6 download clients: the grid zip (3 ISH volumes) and, one request in four, the 38.5 MB NRRD;
* 5 slow readers: the NRRD, read at 2 MB/s (the server must keep serving the others meanwhile);
* 5 slow senders: a request's headers sent one byte every 0.5 s -- the server must cut them off (HTTP 408 or a
  closed connection within its header deadline); each is counted, never as an error.

``BRAINMAP_BENCH_SOAK_SECONDS`` sets the duration (default 60). Timings on a shared machine are noisy; the error
count and the memory trend are not.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_server import Server, _read_response, _rma, make_data
from benchmarks.report import Figure

SECONDS = float(os.environ.get("BRAINMAP_BENCH_SOAK_SECONDS", "60"))
RMA_CLIENTS, SERVICE_CLIENTS, DOWNLOAD_CLIENTS, SLOW_READERS, SLOW_SENDERS = 26, 8, 6, 5, 5
SLOW_READ_BYTES_PER_S = 2 * 2**20


def _rss_bytes(server: Server) -> int:
    total = 0
    for pid in server.pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class _Stats:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: collections.Counter = collections.Counter()
        self.cut_off = 0
        self.slow_read_bytes = 0


async def _request_loop(port: int, kind: str, paths: list[str], deadline: float, stats: _Stats,
                        rng: random.Random) -> None:
    """One well-behaved client: a request, its whole answer, the next request (reconnecting if closed)."""
    reader = writer = None
    while time.perf_counter() < deadline:
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        path = rng.choice(paths)
        started = time.perf_counter()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status, _size = await _read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            stats.errors[f"{kind}: {type(exc).__name__}"] += 1
            writer.close()
            reader = writer = None
            continue
        stats.latencies[kind].append(time.perf_counter() - started)
        if status != 200:
            stats.errors[f"{kind}: HTTP {status}"] += 1
    if writer is not None:
        writer.close()


async def _slow_reader(port: int, path: str, deadline: float, stats: _Stats) -> None:
    while time.perf_counter() < deadline:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        started = time.perf_counter()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if head[9:12] != b"200":
                stats.errors[f"slow reader: HTTP {head[9:12].decode()}"] += 1
            while chunk := await reader.read(1 << 16):
                stats.slow_read_bytes += len(chunk)
                await asyncio.sleep(len(chunk) / SLOW_READ_BYTES_PER_S)
                if time.perf_counter() >= deadline:
                    break
            else:
                stats.latencies["slow reader (whole file)"].append(time.perf_counter() - started)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            stats.errors[f"slow reader: {type(exc).__name__}"] += 1
        finally:
            writer.close()


async def _slow_sender(port: int, deadline: float, stats: _Stats) -> None:
    request = b"GET /api/v2/data/Structure/385.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: yes\r\n\r\n"
    while time.perf_counter() < deadline:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for k in range(len(request)):
                writer.write(request[k : k + 1])
                await asyncio.sleep(0.5)
                if reader.at_eof() or time.perf_counter() >= deadline:
                    break
            answer = await asyncio.wait_for(reader.read(256), timeout=max(0.1, deadline - time.perf_counter()))
            if not answer or answer[9:12] == b"408":
                stats.cut_off += 1
        except (ConnectionError, asyncio.TimeoutError):
            stats.cut_off += 1
        finally:
            writer.close()


def soak(server: Server, info: dict[str, Any], seconds: float) -> tuple[_Stats, list[tuple[float, int]]]:
    """Run the mix for ``seconds``; (statistics, [(time, server RSS bytes)] sampled every second)."""
    rng = random.Random(3)
    simple = [_rma(f"model::Structure,rma::criteria,[acronym$eq'{a}']") for a in info["acronyms"]]
    simple += [f"/api/v2/data/Structure/query.json?criteria=[id$eq{i}]&include=parent" for i in info["ids"]]
    distinct = [_rma(f"model::Structure,rma::criteria,[id$eq{rng.choice(info['all_ids'])}],"
                     f"rma::options[num_rows$eq{1 + k % 997}][start_row$eq{k // 997}]") for k in range(50_000)]
    services = [_rma("service::mouse_connectivity_injection_coordinate[seed_point$eq{},{},{}][num_rows$eq20]"
                     .format(*seed)) for seed in info["seeds"]]
    nrrd = f"/grid_data/download_file/{info['big_id']}?image=projection_density&resolution=50"
    zips = f"/grid_data/download/{info['ish_id']}?include=energy,density,intensity"
    stats = _Stats()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        began = time.perf_counter()
        while not stop.wait(1.0):
            samples.append((time.perf_counter() - began, _rss_bytes(server)))

    async def main() -> None:
        deadline = time.perf_counter() + seconds
        tasks = []
        for k in range(RMA_CLIENTS):
            paths = simple if k % 2 == 0 else distinct
            tasks.append(_request_loop(server.port, "RMA", paths, deadline, stats, random.Random(k)))
        for k in range(SERVICE_CLIENTS):
            tasks.append(_request_loop(server.port, "service", services, deadline, stats, random.Random(100 + k)))
        for k in range(DOWNLOAD_CLIENTS):
            tasks.append(_request_loop(server.port, "download", [zips, zips, zips, nrrd], deadline, stats,
                                       random.Random(200 + k)))
        tasks += [_slow_reader(server.port, nrrd, deadline, stats) for _ in range(SLOW_READERS)]
        tasks += [_slow_sender(server.port, deadline, stats) for _ in range(SLOW_SENDERS)]
        await asyncio.gather(*tasks)

    # A slow sender's writes after the server has cut it off make asyncio warn "socket.send() raised exception".
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        asyncio.run(main())
    finally:
        stop.set()
        thread.join()
    return stats, samples


def run() -> list[Figure]:
    parent = os.environ.get("BRAINMAP_BENCH_TMP")
    root = Path(tempfile.mkdtemp(prefix="brainmap-bench-soak-", dir=parent))
    try:
        data_dir = root / "data"
        data_dir.mkdir()
        info = make_data(data_dir)
        server = Server.start(data_dir, root / "requests.log")
        try:
            server.wait_warm()
            stats, samples = soak(server, info, SECONDS)
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures = [Figure("errors (well-behaved clients)", sum(stats.errors.values()), 0, "count",
                      note=", ".join(f"{n} x {what}" for what, n in sorted(stats.errors.items())) or "none")]
    for kind, values in sorted(stats.latencies.items()):
        latencies = np.asarray(values) * 1000
        figures.append(Figure(f"{kind}: p99 latency", float(np.percentile(latencies, 99)), None, "ms",
                              note=f"{latencies.size:,} requests, p50 {np.percentile(latencies, 50):.1f} ms"))
    figures.append(Figure("slow senders cut off by the header deadline", stats.cut_off, None, "count",
                          "higher", note=f"{SLOW_SENDERS} clients sending one byte every 0.5 s"))
    quarter = max(1, len(samples) // 4)
    first = statistics.median(r for _, r in samples[:quarter]) if samples else float("nan")
    last = statistics.median(r for _, r in samples[-quarter:]) if samples else float("nan")
    peak = max((r for _, r in samples), default=0)
    figures.append(Figure("server RSS growth, last quarter vs first (median)", (last / first - 1) * 100, 10.0, "%",
                          note=f"first {first / 2**20:.0f} MB, last {last / 2**20:.0f} MB, peak {peak / 2**20:.0f} "
                               f"MB over {len(samples)} samples; {SECONDS:.0f} s, 50 clients; load average "
                               "{:.1f}".format(os.getloadavg()[0])))
    return figures


if __name__ == "__main__":  # pragma: no cover
    for figure in run():
        print(figure.line())
