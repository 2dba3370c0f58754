"""Shared fixtures: the bundled reference spaces (loaded once per session) and the optional shared data."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from brainmap.atlas import ReferenceSpace, StructureTree

#: Real Allen data beside the project (../shared/data); tests that need files not bundled skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEST_DATA = Path(__file__).resolve().parent / "data"


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test (with the reason) where it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"needs {relative} from ../shared/data, which is not present in this checkout")
    return path


#: Test folders whose tests share costly session-scoped set-ups (a served data directory, a database cluster, a
#: browser): each runs in one test process. Elsewhere a module is the unit handed to a process.
_SHARED_SETUP_FOLDERS = {"conformance", "portal", "server", "store", "sdk", "search"}


def pytest_configure(config: pytest.Config) -> None:
    """The tests' made reference templates go to a folder of this test process, removed at its end (not the
    user's ``~/.cache/brainmap``, whose Allen average template, if any, would change what the aligner sees)."""
    from brainmap.atlas.template_cache import TEMPLATE_DIR_ENV

    config._brainmap_template_dir = tempfile.mkdtemp(prefix="brainmap-test-templates-")
    os.environ[TEMPLATE_DIR_ENV] = config._brainmap_template_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(getattr(config, "_brainmap_template_dir", ""), ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests for pytest-xdist's ``--dist loadgroup`` (pyproject's addopts): one group per folder of
    :data:`_SHARED_SETUP_FOLDERS`, else one per module, so no set-up is made twice (before xdist's own
    hook reads the marks)."""
    root = Path(__file__).resolve().parent
    for item in items:
        relative = Path(str(item.path)).resolve().relative_to(root)
        folder = relative.parts[0] if len(relative.parts) > 1 else ""
        group = folder if folder in _SHARED_SETUP_FOLDERS else relative.as_posix()
        item.add_marker(pytest.mark.xdist_group(group))


def _same_bits(a, b) -> bool:
    """Whether two arrays hold the same dtype, shape and bits (``a.tobytes() == b.tobytes()`` with no copies of
    the volumes: the dense 25 um grids are ~0.6 GB each), compared 16 MB at a time."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    b = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    step = 1 << 24
    return all(np.array_equal(a[i : i + step], b[i : i + step]) for i in range(0, a.size, step))


@pytest.fixture(scope="session")
def same_bits():
    """``same_bits(a, b)``: the same dtype, shape and bits (see :func:`_same_bits`)."""
    return _same_bits


@pytest.fixture(scope="session")
def shared_data():
    """``shared_data("ish/x.mnc")``: the path of an optional ../shared/data file, or skip saying why."""
    return shared_file


@pytest.fixture(scope="session")
def tree() -> StructureTree:
    return StructureTree.bundled()


@pytest.fixture(scope="session")
def space25() -> ReferenceSpace:
    return ReferenceSpace.bundled(25)


@pytest.fixture(scope="session")
def space50() -> ReferenceSpace:
    return ReferenceSpace.bundled(50)


@pytest.fixture(scope="session")
def space100() -> ReferenceSpace:
    return ReferenceSpace.bundled(100)


#: The ``brainmap`` command installed beside this interpreter (as the README's ``.venv/bin/brainmap``).
BRAINMAP = Path(sys.executable).parent / "brainmap"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_process(serve_args: Sequence[str], cwd: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """``brainmap serve_args... --port P --workers 1`` started in ``cwd`` on a free loopback port; yields its base
    URL once ``/health`` answers (bounded), stops it (and its workers) at the end."""
    import httpx

    port = _free_port()
    log_path = cwd / f"serve_{port}.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(BRAINMAP), *serve_args, "--port", str(port), "--workers", "1"], cwd=cwd,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    if httpx.get(base + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the server did not answer /health within {timeout_s:.0f} s:\n"
                                         + log_path.read_text()[-3000:])
                time.sleep(0.3)
            yield base
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)


@contextmanager
def _serve_app(app, timeout_s: float = 30.0) -> Iterator[str]:
    """An ASGI ``app`` object served by uvicorn on a free loopback port, in a thread of this process (for a test
    that adds routes to the app it serves); yields its base URL once it listens, stops it at the end."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-in-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise AssertionError(f"uvicorn did not start listening within {timeout_s:.0f} s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


@pytest.fixture(scope="session")
def serve_app():
    """``with serve_app(app) as base:`` an ASGI app object served by uvicorn on loopback (see :func:`_serve_app`)."""
    return _serve_app


@pytest.fixture(scope="session")
def brainmap_serve():
    """``with brainmap_serve(["serve", "--data-dir", D], cwd) as base:`` a real server of the installed command."""
    if not BRAINMAP.exists():
        pytest.skip(f"no brainmap command beside {sys.executable} (pip install -e . makes it)")
    return serve_process


@contextmanager
def _reaping_semaphores() -> Iterator[None]:
    """Around a process group killed by SIGKILL: afterwards, unlink the POSIX named semaphores of Python's
    multiprocessing (``/dev/shm/sem.mp-*``) that appeared meanwhile and that no living process has mapped. The
    group's resource tracker died with it, so nothing else would (each killed run left 6-12 of them); a semaphore
    of a process still alive (another test's) is mapped by it, by inode (``/proc/PID/maps`` names the file glibc
    made it under, since renamed), and is kept."""
    shm = Path("/dev/shm")
    before = set(shm.glob("sem.mp-*"))
    try:
        yield
    finally:
        new = set(shm.glob("sem.mp-*")) - before
        if new:
            mapped: set[int] = set()
            for maps in Path("/proc").glob("[0-9]*/maps"):
                try:
                    lines = maps.read_text().splitlines()
                except OSError:  # the process ended, or is not ours to read
                    continue
                mapped.update(int(line.split()[4]) for line in lines if "/dev/shm/" in line)
            for path in new:
                try:
                    if path.stat().st_ino not in mapped:
                        path.unlink()
                except FileNotFoundError:
                    pass


@pytest.fixture(scope="session")
def reaping_semaphores():
    """``with reaping_semaphores():`` around a process group killed by SIGKILL (see :func:`_reaping_semaphores`)."""
    return _reaping_semaphores
