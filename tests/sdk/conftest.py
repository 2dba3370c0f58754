"""SDK fixtures: one real brainmap server (SQLite, uvicorn on loopback, in a subprocess) over the server tests'
data directory, built with ``tests/server/conftest.py``'s helpers (loaded by path, as that file loads the store
tests' helpers), and small stdlib HTTP servers that misbehave on purpose (drop connections, fail with 503, send a
wrong checksum) for the retry and resume tests."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

HERE = Path(__file__).resolve().parent
SERVER_TESTS = HERE.parent / "server"


def _module(name: str, path: Path) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


def server_helpers() -> Any:
    return _module("brainmap_tests_server_conftest", SERVER_TESTS / "conftest.py")


@dataclass
class SdkServer:
    """The running server, its data (``tests/server`` ServerData) and a writable handle on its database."""

    base_uri: str
    data: Any
    database: Any
    process: Any


@pytest.fixture(scope="session")
def sdk_server(tmp_path_factory: pytest.TempPathFactory, space100: Any) -> Iterator[SdkServer]:
    from brainmap.store.database import open_database
    from brainmap.store.load import load_paths

    helpers = server_helpers()
    root = tmp_path_factory.mktemp("sdk-server") / "data"
    root.mkdir()
    data = helpers.build_server_data(root, space100)
    url = f"sqlite:///{root / 'brainmap.sqlite'}"
    database = open_database(url)
    load_paths(database, [root], data_dir=root)
    logs = tmp_path_factory.mktemp("sdk-server-logs")
    process, base = helpers.start_server(root, url, logs / "requests.log", logs / "stderr.log", 1)
    try:
        yield SdkServer(base, data, database, process)
    finally:
        helpers.stop_server(process)
        database.dispose()


@pytest.fixture()
def mcc_factory(sdk_server: SdkServer, tmp_path: Path) -> Any:
    """``mcc_factory(**kwargs)``: a MouseConnectivityCache on the test server, in this test's folder."""
    from brainmap.sdk import MouseConnectivityCache

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("resolution", 100)
        kwargs.setdefault("manifest_file", tmp_path / "cache" / "manifest.json")
        kwargs.setdefault("base_uri", sdk_server.base_uri)
        kwargs.setdefault("progress", False)
        return MouseConnectivityCache(**kwargs)

    return make


# -- a misbehaving file server ------------------------------------------------------------------------------------
class FlakyFiles:
    """A stdlib HTTP server with one file, ``/file``, and modes for the next requests:

    ``fail``: answer that many requests (of any path) with 503 first; ``cut``: that many requests send only half the body
    then drop the connection; ``bad_checksum``: announce a wrong sha256. Ranges are honoured. ``requests``
    records each request's ``Range`` header (None for a whole-file request).
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.fail = 0
        self.cut = 0
        self.bad_checksum = False
        self.requests: list[str | None] = []
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                flaky.requests.append(self.headers.get("Range"))
                if flaky.fail > 0:
                    flaky.fail -= 1
                    self._send(503, b'{"success": false, "msg": "busy"}', {"Retry-After": "0"})
                    return
                if self.path != "/file":
                    self._send(404, b'{"success": false, "msg": "no such file"}', {})
                    return
                body, status, headers = flaky.payload, 200, {}
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(body):
                        self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                        return
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                    body = body[start:]
                digest = hashlib.sha256(flaky.payload).hexdigest()
                headers["X-Checksum-SHA256"] = ("0" * 64) if flaky.bad_checksum else digest
                headers["ETag"] = f'"{digest}"'
                if flaky.cut > 0:
                    flaky.cut -= 1
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(status, body, headers)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def flaky_files() -> Iterator[FlakyFiles]:
    import numpy as np

    payload = np.random.default_rng(7).integers(0, 255, 300_000, dtype=np.uint8).tobytes()
    server = FlakyFiles(payload)
    try:
        yield server
    finally:
        server.close()
