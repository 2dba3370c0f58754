"""Every route of the API answers (one example per route, checked against the OpenAPI document, so a new route
without an example fails here); the docs, the viewer, the request log and ``brainmap serve`` with 2 workers."""

from __future__ import annotations

import argparse
import io
import time
from urllib.parse import quote

import pytest

from brainmap.errors import BrainmapError

Q = "/api/v2/data/query.json?criteria="

#: One request per route of the OpenAPI document: path template -> (example URL, content type).
ROUTE_EXAMPLES = {
    "/api/v2/data/query.{fmt}": (Q + quote("model::Structure,rma::criteria,[acronym$eq'VISp']"), "application/json"),
    "/api/v2/data/{model}/query.{fmt}": ("/api/v2/data/Gene/query.xml?criteria=[acronym$eq'Pdyn']",
                                         "application/xml"),
    "/api/v2/data/{model}/{row_id}.{fmt}": ("/api/v2/data/SectionDataSet/100.csv", "text/csv"),
    "/api/v2/services.json": ("/api/v2/services.json", "application/json"),
    "/grid_data/download/{section_data_set_id}": ("/grid_data/download/200?include=energy", "application/zip"),
    "/grid_data/download_file/{section_data_set_id}": (
        "/grid_data/download_file/101?image=data_mask&resolution=100", "application/octet-stream"),
    "/api/v2/well_known_file_download/{file_id}": ("/api/v2/well_known_file_download/GRID_ZIP", "application/zip"),
    "/api/v2/structure_graph_download/{graph_id}.json": ("/api/v2/structure_graph_download/1.json",
                                                          "application/json"),
    "/api/v2/annotation/{resolution}": ("/api/v2/annotation/50", "application/octet-stream"),
    "/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/annotation_{resolution}.nrrd": (
        "/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/annotation_50.nrrd",
        "application/octet-stream"),
    "/informatics-archive/current-release/mouse_ccf/average_template/average_template_{resolution}.nrrd": (
        "/informatics-archive/current-release/mouse_ccf/average_template/average_template_100.nrrd",
        "application/octet-stream"),
    "/api/v2/image_to_reference/{section_image_id}.json": ("/api/v2/image_to_reference/100000.json?x=1&y=2",
                                                             "application/json"),
    "/api/v2/reference_to_image/{reference_space_id}.json": (
        "/api/v2/reference_to_image/9.json?x=5000&y=3000&z=5000&section_data_set_ids=100,200", "application/json"),
    "/api/v2/image_to_image/{section_image_id}.json": (
        "/api/v2/image_to_image/100000.json?x=1&y=2&section_data_set_ids=101", "application/json"),
    "/api/v2/structure_to_image/{section_data_set_id}.json": (
        "/api/v2/structure_to_image/101.json?structure_ids=385", "application/json"),
    "/viewer/slice/annotation.png": ("/viewer/slice/annotation.png?plane=sagittal&position=4000", "image/png"),
    "/viewer/slice/{section_data_set_id}.png": ("/viewer/slice/101.png?plane=coronal&position=9200", "image/png"),
    "/viewer/volumes/{section_data_set_id}.json": ("/viewer/volumes/101.json", "application/json"),
    "/health": ("/health", "application/json"),
    "/api/v2/data.json": ("/api/v2/data.json", "application/json"),
    "/api/v2/data/{model}.json": ("/api/v2/data/ApiConnectivity.json", "application/json"),
    "/api/v2/section_image_download/{section_image_id}": ("/api/v2/section_image_download/100000?downsample=1",
                                                          "image/jpeg"),
    "/api/v2/image_download/{section_image_id}": ("/api/v2/image_download/100000?quality=50", "image/jpeg"),
    "/api/v2/projection_image_download/{section_image_id}": ("/api/v2/projection_image_download/100000",
                                                             "image/jpeg"),
    "/api/v2/atlas_image_download/{atlas_image_id}": ("/api/v2/atlas_image_download/90000050?annotation=true",
                                                      "image/jpeg"),
    "/api/v2/svg_download/{atlas_image_id}": ("/api/v2/svg_download/90100020?groups=28", "image/svg+xml"),
    "/api/v2/svg/{atlas_image_id}": ("/api/v2/svg/90100020?downsample=1", "image/svg+xml"),
    "/api/v2/image_to_image_2d/{section_image_id}.json": (
        "/api/v2/image_to_image_2d/100000.json?x=1&y=2&section_image_ids=100003", "application/json"),
    "/api/v2/image_to_atlas/{section_image_id}.json": ("/api/v2/image_to_atlas/100000.json?x=1&y=2&atlas_id=2",
                                                       "application/json"),
    "/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/structure_masks/structure_masks_{resolution}"
    "/structure_{structure_id}.nrrd": (
        "/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/structure_masks/structure_masks_100/"
        "structure_315.nrrd", "application/octet-stream"),
    "/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/structure_meshes/{structure_id}.obj": (
        "/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/structure_meshes/1089.obj", "text/plain"),
}


def test_every_route_has_an_example(http):
    paths = set(http.get("/openapi.json").json()["paths"])
    assert paths == set(ROUTE_EXAMPLES), f"routes without an example: {paths - set(ROUTE_EXAMPLES)}; " \
                                         f"examples without a route: {set(ROUTE_EXAMPLES) - paths}"


@pytest.fixture(scope="module")
def grid_zip_id(server):
    from sqlalchemy import select

    from brainmap.store import models as m

    with server.database.engine.connect() as connection:
        return connection.execute(select(m.WellKnownFile.id).where(m.WellKnownFile.path.like("%grid_data.zip"))
                                  ).scalar_one()


@pytest.mark.parametrize("template", sorted(ROUTE_EXAMPLES))
def test_route_answers(http, template, grid_zip_id):
    url, content_type = ROUTE_EXAMPLES[template]
    url = url.replace("GRID_ZIP", str(grid_zip_id))
    response = http.get(url)
    assert response.status_code == 200, (url, response.text[:300])
    if content_type:
        assert response.headers["content-type"].startswith(content_type)
    assert int(response.headers.get("content-length", len(response.content))) == len(response.content)


def test_docs_and_openapi(http):
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = http.get("/openapi.json").json()
    assert spec["info"]["title"] == "brainmap"
    query = spec["paths"]["/api/v2/data/query.{fmt}"]["get"]
    assert {p["name"] for p in query["parameters"]} >= {"criteria", "q", "fmt"}


def test_viewer_page_and_pictures(http, server_data):
    from PIL import Image

    page = http.get("/viewer")
    assert page.status_code == 200 and "<title>brainmap viewer</title>" in page.text
    home = http.get("/", follow_redirects=True)  # the portal's experiment browser (tests/portal)
    assert home.status_code == 200 and str(home.url).endswith("/experiments")
    assert http.get("/static/viewer.js").status_code == 200
    assert http.get("/static/viewer.css").status_code == 200
    annotation = Image.open(io.BytesIO(http.get("/viewer/slice/annotation.png?position=9200").content))
    overlay = Image.open(io.BytesIO(http.get("/viewer/slice/101.png?position=9200").content))
    assert annotation.size == overlay.size == (114, 80) and overlay.mode == "RGBA"
    alpha = overlay.getchannel("A")
    assert alpha.getextrema()[1] > 0 and alpha.getextrema()[0] == 0  # signal somewhere, transparency elsewhere
    ish = Image.open(io.BytesIO(http.get("/viewer/slice/200.png?plane=sagittal&position=3000").content))
    assert ish.size == (132, 80)
    assert http.get("/viewer/slice/201.png").status_code == 404
    assert http.get("/viewer/slice/101.png?position=99999").status_code == 400


def test_request_log_is_json_lines(http, server):
    http.get("/api/v2/data/query.json?criteria=model::Nope")
    http.get("/health?probe=log")
    records = server.log_records()
    assert records, "no request log lines"
    for record in records[-20:]:
        assert {"ts", "method", "path", "status", "duration_ms", "bytes"} <= set(record)
        assert record["duration_ms"] >= 0
    assert any(r["path"] == "/api/v2/data/query.json" and r["status"] == 400 for r in records)
    assert any(r["path"] == "/health" and r["query"] == "probe=log" and r["status"] == 200 for r in records)


def test_workers_all_answer(server):
    """The SQLite server runs ``brainmap serve``'s default of 2 worker processes; each answers."""
    import httpx

    pids: set[int] = set()
    deadline = time.monotonic() + 30
    while len(pids) < server.workers and time.monotonic() < deadline:
        httpx.get(server.url("/health?probe=workers"), timeout=10)  # a new connection each time
        time.sleep(0.3)  # the request log is flushed every 0.25 s
        pids = {r["pid"] for r in server.log_records() if r.get("query") == "probe=workers"}
    assert len(pids) == server.workers


def test_serve_arguments(monkeypatch, tmp_path):
    """``add_serve_arguments`` / ``run_serve_command``: the options reach :func:`run_server`."""
    from brainmap.server import serve

    calls = []
    monkeypatch.setattr(serve, "run_server", lambda *args, **kwargs: calls.append((args, kwargs)))
    parser = argparse.ArgumentParser()
    serve.add_serve_arguments(parser)
    defaults = parser.parse_args(["--data-dir", str(tmp_path)])
    assert (defaults.host, defaults.port, defaults.workers, defaults.database_url) == ("127.0.0.1", 8000, 2, None)
    assert parser.parse_args(["--data", str(tmp_path)]).data_dir == tmp_path  # the old name still works
    args = parser.parse_args(["--data-dir", str(tmp_path), "--database-url", "sqlite:///x.db", "--host", "0.0.0.0",
                              "--port", "9001", "--workers", "3", "--max-rows", "500", "--query-timeout", "5",
                              "--log-file", str(tmp_path / "log")])
    assert serve.run_serve_command(args) == 0
    (positional, keywords), = calls
    assert positional == (tmp_path.resolve(), "sqlite:///x.db", "0.0.0.0", 9001)
    assert keywords == {"workers": 3, "log_file": tmp_path / "log", "max_rows": 500, "query_timeout_s": 5.0}
    missing = parser.parse_args(["--data-dir", str(tmp_path / "missing")])
    with pytest.raises(BrainmapError, match="does not exist.*brainmap load"):
        serve.run_serve_command(missing)
    assert len(calls) == 1
