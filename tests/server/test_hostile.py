"""Hostile requests get a 4xx and change nothing: quotes, semicolons, comments, unknown names, absurd paging,
oversized input, and paths that try to leave the data directory (in the URL or in the database)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Well-formed queries whose quoted values carry SQL: they are values, so they match nothing (HTTP 200).
QUOTED_PAYLOADS = [
    "model::Structure,rma::criteria,[acronym$eq'VISp''];DROP TABLE structures;--']",
    "model::Structure,rma::criteria,[name$li'%'';--']",
    "model::Structure,rma::criteria,[acronym$in'x''); DELETE FROM structures; --','zzz']",
]

HOSTILE_QUERIES = [
    "model::Structure,rma::criteria,[acronym$eq'VISp'];DROP TABLE structures",
    "model::Structure,rma::criteria,[acronym$eq'VISp' OR 1=1]",
    "model::Structure,rma::criteria,[acronym$eqVISp]/* comment */",
    "model::Structure,rma::criteria,[acronym$eqVISp] -- comment",
    "model::Structure;DELETE FROM structures",
    "model::Structure,rma::criteria,[id$eq1 UNION SELECT * FROM well_known_files]",
    "model::Structure,rma::criteria,[\"acronym\"$eq'x']",
    "model::Structure,rma::criteria,[acronym$eq'x')]",
    "model::Structure,rma::criteria,[sqlite_master.name$eq'x']",
    "model::Structure,rma::criteria,[password$eq'x']",
    "model::schema_info",
    "model::Structure,rma::include,parent(parent(parent(parent(parent(parent(parent(parent(parent(parent(parent("
    "parent(parent)))))))))))))",
    "model::Structure,rma::options[num_rows$eq99999999999999]",
    "model::Structure,rma::options[start_row$eq-1]",
    "model::Structure,rma::options[num_rows$eq'all'][order$eq'name;DROP']",
    "model::Structure,rma::options[order$eq'(SELECT 1)']",
    "model::Structure,rma::options[only$eq'id,sqlite_version()']",
    "model::Structure,rma::criteria,[id$in" + ",".join(["1"] * 6000) + "]",
    "service::mouse_differential[structures1$eq'TH'';DROP'][structures2$eqCTX]",
    "service::mouse_connectivity_injection_structure[injection_structures$eq'VISp;--']",
    "model::Structure,rma::criteria,[acronym$eq'\x00']",
]

HOSTILE_PATHS = [
    "/grid_data/download_file/101?image=..%2F..%2F..%2Fetc%2Fpasswd&resolution=100",
    "/grid_data/download/101?include=..%2Fescape",
    "/api/v2/well_known_file_download/..%2F..%2Fetc%2Fpasswd",
    "/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/annotation_../../../etc/passwd.nrrd",
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/%2e%2e/server/state.py",
    "/api/v2/annotation/..%2F..%2Fetc%2Fpasswd",
    "/viewer/../../etc/passwd",
]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith("brainmap.sqlite"):
                continue  # the database itself (WAL files) is compared row by row
            path = Path(folder) / name
            stat = path.lstat()
            out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture()
def unchanged(server, snapshot_of):
    """Asserts, after the test, that no table row and no file of the data directory changed."""
    rows = snapshot_of(server.database)
    files = _files(server.data.root)
    outside = server.data.outside_file.read_bytes()
    yield
    assert snapshot_of(server.database) == rows
    assert _files(server.data.root) == files
    assert server.data.outside_file.read_bytes() == outside


@pytest.fixture(scope="session")
def snapshot_of():
    from sqlalchemy import select

    from brainmap.store.models import Base

    def snapshot(database):
        out = {}
        with database.engine.connect() as connection:
            for name, table in sorted(Base.metadata.tables.items()):
                out[name] = sorted((tuple(r) for r in connection.execute(select(table))), key=repr)
        return out

    return snapshot


def test_hostile_queries_are_4xx_and_change_nothing(rma, http, unchanged):
    for query in HOSTILE_QUERIES:
        for fmt in ("json", "xml", "csv"):
            response = http.get(rma(query, fmt))
            assert 400 <= response.status_code < 500, (query, fmt, response.status_code, response.text[:300])
            assert "Traceback" not in response.text
    for query in QUOTED_PAYLOADS:
        body = http.get(rma(query)).json()
        assert body["success"] is True and body["total_rows"] == 0, query
    assert http.get(rma("model::Structure,rma::options[num_rows$eq'all']")).json()["total_rows"] == 1327


def test_hostile_model_forms(http, unchanged):
    for params in ({"criteria": "[acronym$eq'VISp'];--"}, {"include": "parent;DROP"}, {"num_rows": "1e9"},
                   {"num_rows": "-5"}, {"order": "acronym;DROP TABLE"}, {"tabular": "sqlite_version()"},
                   {"criteria": "x" * 25_000}):
        response = http.get("/api/v2/data/Structure/query.json", params=params)
        assert 400 <= response.status_code < 500, (params, response.text[:300])
    assert http.get("/api/v2/data/structures/query.json").status_code == 400  # a table, not a model
    assert http.get("/api/v2/data/Structure/1;DROP.json").status_code in (400, 404)


def test_path_traversal_in_urls(server, raw, unchanged):
    for target in HOSTILE_PATHS:
        status, body = raw(server, target)
        assert 400 <= status < 500, (target, status, body[:200])
        assert b"root:" not in body and b"ServerState" not in body


def test_paths_in_the_database_never_leave_the_data_directory(http, server, unchanged):
    for kind, file_id in server.file_ids.items():
        response = http.get(f"/api/v2/well_known_file_download/{file_id}")
        assert response.status_code == 403, (kind, response.text)
        assert "outside the data directory" in response.json()["msg"]
    response = http.get("/grid_data/download_file/101", params={"image": "hostile", "resolution": 100})
    assert response.status_code == 403


def test_oversized_and_malformed_requests(http, rma, unchanged):
    assert http.get(rma("model::Structure," + "[id$eq1]," * 3000)).status_code == 400
    assert http.get("/api/v2/data/query.json", params={"criteria": "model::Structure", "q": "x" * 30_000}
                    ).status_code == 400
    assert http.get("/grid_data/download/200", params={"include": ",".join(["energy"] * 40)}).status_code == 400
    assert http.get("/api/v2/structure_to_image/100.json",
                    params={"structure_ids": ",".join(["385"] * 500)}).status_code in (200, 400)
    assert http.post(rma("model::Structure")).status_code == 405
    assert http.delete("/api/v2/data/Structure/385.json").status_code == 405
