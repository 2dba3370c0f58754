"""Server limits (issue 17): the hostile requests that blocked the event loop, kept connections open or answered
500, each against the real server (uvicorn on loopback, both backends) -- and the access rules.

Hang guards (socket timeouts) are generous bounds, not timings.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pytest

from brainmap.server.limits import HEADER_TIMEOUT_S, MAX_PARAMS

BIG = "9223372036854775808"  # 2^63
HUGE = "9999999999999999999"


def _address(server: Any) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").split(":")
    return host, int(port)


def _read_all(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return b"".join(chunks)


def one_backend(server: Any) -> None:
    """Protocol-level checks (before any database work) run on the SQLite server only: the same code answers
    both backends, and each check costs seconds."""
    if server.backend != "sqlite":
        pytest.skip("protocol-level: checked on the SQLite server (the same middleware and protocol answer both)")


def _envelope(response: Any) -> dict[str, Any]:
    body = response.json()
    assert body["success"] is False and isinstance(body["msg"], str) and body["msg"], body
    return body


# -- 500s that become 400s ------------------------------------------------------------------------------------------
ID_ROUTES = [
    f"/api/v2/data/Structure/{BIG}.json",
    f"/api/v2/data/SectionDataSet/{BIG}.xml",
    f"/grid_data/download/{BIG}",
    f"/grid_data/download_file/{BIG}?image=projection_density&resolution=100",
    f"/api/v2/well_known_file_download/{BIG}",
    f"/api/v2/structure_graph_download/{BIG}.json",
    f"/api/v2/image_to_reference/{BIG}.json?x=1&y=2",
    f"/api/v2/reference_to_image/9.json?x=5000&y=3000&z=5000&section_data_set_ids={HUGE}",
    f"/api/v2/reference_to_image/{BIG}.json?x=5000&y=3000&z=5000&section_data_set_ids=100",
    f"/api/v2/image_to_image/{BIG}.json?x=1&y=2&section_data_set_ids=101",
    f"/api/v2/image_to_image/100000.json?x=1&y=2&section_data_set_ids={HUGE}",
    f"/api/v2/structure_to_image/{BIG}.json?structure_ids=385",
    f"/api/v2/structure_to_image/101.json?structure_ids={HUGE}",
    f"/viewer/slice/{BIG}.png?plane=coronal&position=9200",
    f"/viewer/volumes/{BIG}.json",
    f"/api/v2/annotation/{BIG}",
]


@pytest.mark.parametrize("url", ID_ROUTES)
def test_ids_beyond_64_bits_are_400(http, url):
    response = http.get(url)
    assert response.status_code == 400, (url, response.text[:300])
    if not url.endswith(".xml"):
        message = _envelope(response)["msg"]
        assert "out of range" in message or "no structure with id 9999999999999999999" in message, message


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", "1e999"])
def test_non_finite_numbers_are_400(http, value, server):
    one_backend(server)
    for url in (f"/viewer/slice/annotation.png?plane=coronal&position={value}",
                f"/viewer/slice/101.png?plane=coronal&position={value}",
                f"/api/v2/image_to_reference/100000.json?x={value}&y=2",
                f"/api/v2/reference_to_image/9.json?x={value}&y=3000&z=5000&section_data_set_ids=100"):
        response = http.get(url)
        assert response.status_code == 400, (url, response.text[:300])
        _envelope(response)


@pytest.mark.parametrize("depth", [8, 9, 10, 11, 12, 13])
def test_deep_association_nesting_is_never_a_500(http, rma, depth):
    """Criteria nested 10-12 levels made SQLite's parser overflow its stack (500); includes are checked too."""
    include = "parent(" * (depth - 1) + "parent" + ")" * (depth - 1)
    criteria = "parent(" * (depth - 1) + "parent[id$eq8]" + ")" * (depth - 1)
    for query in (f"model::Structure,rma::criteria,[id$eq385],rma::include,{include}",
                  f"model::Structure,rma::criteria,{criteria}"):
        response = http.get(rma(query))
        assert response.status_code in (200, 400), response.text[:300]
        if response.status_code == 400:
            _envelope(response)


@pytest.mark.parametrize("count", [500, 1000, 1500])
def test_thousands_of_filters_are_never_a_500(http, rma, count):
    criteria = "".join(f"[id$ne{k}]" for k in range(count))
    response = http.get(rma(f"model::Structure,rma::criteria,{criteria}"))
    assert response.status_code in (200, 400), response.text[:300]
    if response.status_code == 400:
        _envelope(response)


# -- parameters, URL, bodies ---------------------------------------------------------------------------------------
def test_too_many_parameters_is_400(http):
    params = "&".join(f"p{k}=1" for k in range(MAX_PARAMS + 1))
    response = http.get(f"/api/v2/data/Structure/query.json?criteria=[id$eq385]&{params}")
    assert response.status_code == 400
    assert "query parameters" in _envelope(response)["msg"]


def test_many_parameter_names_do_not_block_the_server(server, http):
    """Four requests with 14,000-16,000 parameter names blocked /health for 12-30 s (quadratic checks on the
    event loop); now each is refused from its length and /health answers meanwhile."""
    one_backend(server)
    host, port = _address(server)

    def hostile(n: int) -> bytes:
        with socket.create_connection((host, port), timeout=60) as sock:
            names = "&".join(f"n{k}=" for k in range(n))
            sock.sendall(f"GET /api/v2/data/Structure/query.json?{names} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            return _read_all(sock, 60)

    with ThreadPoolExecutor(4) as pool:
        answers = pool.map(hostile, (14_000, 15_000, 15_500, 16_000))
        health = http.get("/health", timeout=10)
        assert health.status_code == 200
        for answer in answers:
            assert answer.split(b" ", 2)[1] in (b"400", b"414"), answer[:200]


def test_the_model_form_checks_parameters_in_linear_time():
    """``_model_params`` over 16,000 distinct names: one pass (``getlist`` per name was quadratic)."""
    from starlette.requests import Request

    from brainmap.server.routes_data import _model_params

    query = "&".join(f"n{k}=1" for k in range(16_000)) + "&criteria=[id$eq1]"
    request = Request({"type": "http", "query_string": query.encode(), "headers": []})
    assert _model_params(request) == {"criteria": "[id$eq1]"}
    repeated = Request({"type": "http", "query_string": b"criteria=a&criteria=b", "headers": []})
    with pytest.raises(Exception, match="given 2 times"):
        _model_params(repeated)


def test_url_too_long_closes_the_connection(server):
    one_backend(server)
    host, port = _address(server)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"GET /api/v2/data/query.json?criteria=" + b"x" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(sock, 30)
    assert answer.split(b" ", 2)[1] in (b"400", b"414"), answer[:200]


def test_a_body_is_refused_without_being_read(server):
    """An endless chunked POST to a 405 route was read for 10 s; now it is answered 413 and the connection
    closed at once."""
    one_backend(server)
    host, port = _address(server)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        closed = False
        try:
            for _ in range(2000):  # up to 2,000 x 64 KiB = 128 MB, far more than is ever read
                sock.sendall(b"10000\r\n" + b"a" * 0x10000 + b"\r\n")
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        answer = _read_all(sock, 30)
    assert closed or answer, "the server kept reading the body"
    if answer:
        assert answer.split(b" ", 2)[1] == b"413", answer[:200]


@pytest.mark.parametrize("path", ["/api/v2/data/query.json?criteria=model::Structure", "/health"])
def test_a_get_with_a_body_is_413(server, path):
    one_backend(server)
    host, port = _address(server)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n".encode() + b"a" * 100)
        answer = _read_all(sock, 30)
    assert answer.split(b" ", 2)[1] == b"413", answer[:200]
    assert b"connection: close" in answer.lower()


def test_slow_clients_are_timed_out(server, http):
    """1,500 half-sent requests stayed open; now every one is closed once the header deadline passes, and the
    server answers meanwhile."""
    one_backend(server)
    host, port = _address(server)
    sockets = []
    try:
        for k in range(300):
            sock = socket.create_connection((host, port), timeout=30)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + str(k).encode())  # never finished
            sockets.append(sock)
        assert http.get("/health", timeout=10).status_code == 200
        started = time.monotonic()
        closed = 0
        for sock in sockets:
            left = max(1.0, HEADER_TIMEOUT_S + 20 - (time.monotonic() - started))
            answer = _read_all(sock, left)  # returns when the server closes the connection
            assert not answer or answer.split(b" ", 2)[1] == b"408", answer[:200]
            closed += 1
        assert closed == len(sockets)
    finally:
        for sock in sockets:
            sock.close()


# -- HEAD, conditional requests --------------------------------------------------------------------------------------
def _examples() -> dict[str, tuple[str, str]]:
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path

    spec = spec_from_file_location("brainmap_tests_server_routes", Path(__file__).with_name("test_routes.py"))
    module = module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.ROUTE_EXAMPLES


@pytest.mark.parametrize("template", sorted(_examples()))
def test_head_on_every_get_route(http, template, server):
    one_backend(server)
    url = _examples()[template][0]
    if "GRID_ZIP" in url:
        url = url.replace("GRID_ZIP", str(_grid_zip_id(server)))
    get = http.get(url)
    head = http.head(url)
    assert head.status_code == get.status_code == 200, (url, head.status_code, get.status_code)
    assert head.content == b""
    assert head.headers.get("content-type") == get.headers.get("content-type")
    if "content-length" in get.headers:
        assert head.headers["content-length"] == get.headers["content-length"]


def _grid_zip_id(server: Any) -> int:
    from sqlalchemy import select

    from brainmap.store import models as m

    with server.database.engine.connect() as connection:
        return connection.execute(select(m.WellKnownFile.id).where(m.WellKnownFile.path.like("%grid_data.zip"))
                                  ).scalar_one()


@pytest.mark.parametrize("url", ["/api/v2/annotation/100", "/grid_data/download/200?include=energy",
                                 "/grid_data/download_file/101?image=projection_density&resolution=100"])
def test_conditional_requests(http, url):
    first = http.get(url)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert http.get(url, headers={"If-None-Match": "*"}).status_code == 304  # answered 200
    assert http.get(url, headers={"If-None-Match": f'"other", {etag}'}).status_code == 304
    assert http.get(url, headers={"If-None-Match": "W/" + etag.removeprefix("W/")}).status_code == 304
    assert http.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


# -- answers ---------------------------------------------------------------------------------------------------------
def test_health_says_only_that_it_is_up(http, server):
    body = http.get("/health").json()
    assert set(body) <= {"success", "warm"} and body["success"] is True
    text = json.dumps(body)
    assert str(server.data.root) not in text and "pid" not in text


def test_unexpected_errors_are_500_with_a_request_id_and_no_path(server_data, caplog, serve_app):
    """A route that fails unexpectedly: 500, Allen's envelope with a request id, no path; the traceback logged
    under that id; the connection stays usable (the next request on it is answered, not reset). (The app is
    served in this process, uvicorn in a thread: a real server has no route that fails on purpose.)"""
    import httpx

    from brainmap.errors import FormatError
    from brainmap.server.app import create_app

    app = create_app(server_data.root, f"sqlite:///{server_data.root / 'brainmap.sqlite'}", warm_up=False)
    secret = str(server_data.root / "volumes" / "secret.nrrd")

    def boom() -> None:
        raise RuntimeError(f"cannot open {secret}")

    def bad_file() -> None:
        raise FormatError(f"{secret}: bad NRRD header")

    app.add_api_route("/boom", boom)
    app.add_api_route("/bad_file", bad_file)
    with serve_app(app) as base, httpx.Client(base_url=base, timeout=30) as client, \
            caplog.at_level("ERROR", "brainmap.server"):
        response = client.get("/boom")
        assert response.status_code == 500
        body = _envelope(response)
        request_id = response.headers["x-request-id"]
        assert request_id in body["msg"] and secret not in response.text and str(server_data.root) not in response.text
        assert any(request_id in record.getMessage() for record in caplog.records)
        response = client.get("/bad_file")
        assert response.status_code == 400
        assert str(server_data.root) not in response.text and "secret.nrrd" in _envelope(response)["msg"]


def test_400_messages_never_show_absolute_paths(http, server):
    """The hostile WellKnownFile rows name paths outside the data directory, and a missing volume names the data
    directory: the answers show neither."""
    for kind, file_id in server.file_ids.items():
        response = http.get(f"/api/v2/well_known_file_download/{file_id}")
        assert response.status_code == 403, kind
        assert str(server.data.root) not in response.text and "/etc/passwd" not in response.text, response.text
    for url in ("/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/annotation_10.nrrd",
                "/informatics-archive/current-release/mouse_ccf/average_template/average_template_10.nrrd"):
        response = http.get(url)
        assert response.status_code == 404
        assert str(server.data.root) not in response.text, response.text


def test_scrub_paths():
    from brainmap.server.errors import scrub_paths

    assert scrub_paths("/tmp/a/b/c.nrrd: bad") == "<...>/c.nrrd: bad"
    assert scrub_paths("data file '/usr/lib/x.raw' is missing") == "data file '<...>/x.raw' is missing"
    assert scrub_paths("no route /api/v2/foo; see /docs") == "no route /api/v2/foo; see /docs"


# -- access ----------------------------------------------------------------------------------------------------------
def test_token_is_required_by_every_route_but_health(server_data, processes, tmp_path):
    import os
    import subprocess
    import sys

    import httpx

    free_port, stop_server = processes
    port = free_port()
    script = ("import sys\nfrom brainmap.server.serve import run_server\n"
              "run_server(sys.argv[1], sys.argv[2], '127.0.0.1', int(sys.argv[3]), workers=1, token='s3cret', "
              "warm_up=False)\n")
    from brainmap.store.database import open_database
    from brainmap.store.load import load_paths

    url = f"sqlite:///{tmp_path / 'token.sqlite'}"
    database = open_database(url)
    load_paths(database, [server_data.root], data_dir=server_data.root)
    database.dispose()
    process = subprocess.Popen([sys.executable, "-c", script, str(server_data.root), url, str(port)],
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr", "wb"), env=os.environ)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "stderr").read_text()
            time.sleep(0.3)
        query = "/api/v2/data/Structure/385.json"
        denied = httpx.get(base + query, timeout=10)
        assert denied.status_code == 401 and denied.json()["success"] is False
        assert httpx.get(base + query, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        allowed = httpx.get(base + query, headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert allowed.status_code == 200 and allowed.json()["msg"][0]["id"] == 385
        for path in ("/viewer", "/api/v2/annotation/100", "/docs", "/openapi.json"):
            assert httpx.get(base + path, timeout=10).status_code == 401, path
        from brainmap.sdk.errors import ApiError
        from brainmap.sdk.http import HttpClient

        assert HttpClient(base, token="s3cret").get_json(query)["msg"][0]["id"] == 385  # the SDK sends it
        with pytest.raises(ApiError) as error:
            HttpClient(base, token="", retries=0).get_json(query)
        assert error.value.status == 401
    finally:
        stop_server(process)


def test_serve_warns_off_loopback(monkeypatch, capsys, tmp_path):
    from brainmap.server import serve

    calls = []
    monkeypatch.setattr(serve, "run_server", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.delenv(serve.ENV_TOKEN, raising=False)
    parser = argparse.ArgumentParser()
    serve.add_serve_arguments(parser)
    for host, warned in (("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True),
                         ("192.168.1.5", True), ("::", True)):
        serve.run_serve_command(parser.parse_args(["--host", host, "--data-dir", str(tmp_path)]))
        assert ("WARNING" in capsys.readouterr().err) is warned, host
    serve.run_serve_command(parser.parse_args(["--token", "abc", "--data-dir", str(tmp_path)]))
    assert calls[-1][1]["token"] == "abc"
    monkeypatch.setenv(serve.ENV_TOKEN, "from-env")
    serve.run_serve_command(parser.parse_args(["--data-dir", str(tmp_path)]))
    assert calls[-1][1]["token"] == "from-env"

