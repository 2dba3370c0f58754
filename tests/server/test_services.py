"""The search services over HTTP: every service answers as the search function it dispatches to, with Allen's
parameter names; bad parameters are 400s naming what is wrong."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET

import pytest


def _ids(body: dict) -> list[int]:
    return [row.get("data_set_id", row.get("id")) for row in body["msg"]]


@pytest.fixture(scope="module")
def stores(server_data):
    from brainmap.search import MatrixStore

    root = server_data.root / "search"
    return {name: MatrixStore.open(root / name) for name in ("mouse", "mouse_coronal", "connectivity")}


@pytest.fixture(scope="module")
def connectivity(server, stores):
    """The connectivity search built the way the server builds it, from this backend's database."""
    from brainmap.search.connectivity import ConnectivitySearch
    from brainmap.server.searches import experiments_frame, unionizes_frame

    with server.database.engine.connect() as connection:
        experiments = experiments_frame(connection)
        unionizes = unionizes_frame(connection, experiments["id"].tolist())
    return ConnectivitySearch(experiments, unionizes, stores["connectivity"])


def test_mouse_differential(rma, http, stores):
    from brainmap.search import differential_search

    body = http.get(rma("service::mouse_differential[set$eqmouse][structures1$eqTH][structures2$eqIsocortex]"
                        "[threshold1$eq0,50][threshold2$eq1,50][num_rows$eq10]")).json()
    expected = differential_search(stores["mouse"], ["TH"], ["Isocortex"], threshold1=[0, 50], threshold2=[1, 50],
                                   num_rows=10).to_dict()
    assert body["success"] is True and body["total_rows"] == expected["total_rows"] > 0
    assert body["msg"] == expected["msg"]
    assert set(body["msg"][0]) >= {"data_set_id", "fold_change", "target_mean", "contrast_mean"}


def test_mouse_correlation_and_sets(rma, http, stores, server_data):
    from brainmap.search import correlation_search

    seed = server_data.expression_ids[0]
    body = http.get(rma(f"service::mouse_correlation[row$eq{seed}][structures$eqIsocortex,HPF]"
                        "[start_row$eq1][num_rows$eq5]")).json()
    expected = correlation_search(stores["mouse"], seed, ["Isocortex", "HPF"], start_row=1, num_rows=5).to_dict()
    assert body["msg"] == expected["msg"] and body["start_row"] == 1
    coronal = stores["mouse_coronal"]
    seed = int(coronal.data_set_ids[0])
    body = http.get(rma(f"service::mouse_correlation[set$eqmouse_coronal][row$eq{seed}]")).json()
    assert body["total_rows"] <= coronal.n_rows and _ids(body)[0] == seed


def test_mouse_agea(rma, http, stores):
    from brainmap.search import seed_point_search

    point = [7000.0, 3000.0, 3000.0]
    body = http.get(rma("service::mouse_agea[seed_point$eq7000,3000,3000][num_rows$eq3]")).json()
    expected = seed_point_search(stores["mouse"], point, num_rows=3).to_dict()
    assert body["msg"] == expected["msg"] and len(body["msg"]) == 3


def test_mouse_agea_ages_and_gene_finder(rma, http, stores):
    import numpy as np

    from brainmap.search import seed_point_search

    plain = http.get(rma("service::mouse_agea[seed_point$eq7000,3000,3000][num_rows$eq3]")).json()
    aged = http.get(rma("service::mouse_agea[set$eq'mouse'][seed_point$eq7000,3000,3000][seed_age$eqP56]"
                        "[map_age$eqP56][num_rows$eq3]")).json()
    assert aged["msg"] == plain["msg"]
    wrong = http.get(rma("service::mouse_agea[seed_point$eq7000,3000,3000][seed_age$eqE15.5]"))
    assert wrong.status_code == 400 and "P56" in wrong.json()["msg"]
    # The gene finder: fold change between the voxels correlated >= 0.5 and >= 0.2 with the seed, recomputed
    # here from the decoded matrix and the seed-point map.
    store = stores["mouse"]
    body = http.get(rma("service::mouse_agea[seed_point$eq7000,3000,3000][seed_age$eqP56][map_age$eqP56]"
                        "[correlation_threshold1$eq0.2][correlation_threshold2$eq0.5][num_rows$eq2000]")).json()
    ranking = seed_point_search(store, [7000.0, 3000.0, 3000.0], num_rows=100000)
    r = {row.voxel: row.r for row in ranking.rows}
    columns = {int(v): k for k, v in enumerate(store.columns)}
    values = store.decode()
    target = [columns[v] for v, x in r.items() if x is not None and x >= 0.5]
    contrast = [columns[v] for v, x in r.items() if x is not None and x >= 0.2]
    assert 0 < len(target) < len(contrast)
    with np.errstate(invalid="ignore"):
        fold = np.nanmean(values[:, target], axis=1) / np.nanmean(values[:, contrast], axis=1)
    expected = dict(zip(store.data_set_ids.tolist(), fold.tolist()))
    got = {row["data_set_id"]: row["fold_change"] for row in body["msg"]}
    assert body["total_rows"] == store.n_rows and got
    for data_set_id, value in got.items():
        if value is not None and np.isfinite(expected[data_set_id]):
            assert value == pytest.approx(expected[data_set_id], rel=0.02)
    half = http.get(rma("service::mouse_agea[seed_point$eq7000,3000,3000][correlation_threshold1$eq0.2]"))
    assert half.status_code == 400 and "correlation_threshold2" in half.json()["msg"]


def test_source_search_injection_domain_is_allens_name(rma, http):
    given = http.get(rma("service::mouse_connectivity_injection_structure[injection_domain$eqVISp]"
                         "[primary_structure_only$eqtrue]")).json()
    same = http.get(rma("service::mouse_connectivity_injection_structure[injection_structures$eqVISp]"
                        "[primary_structure_only$eqtrue]")).json()
    assert given["success"] is True and given["msg"] == same["msg"] and given["total_rows"] >= 12
    both = http.get(rma("service::mouse_connectivity_injection_structure[injection_domain$eqVISp]"
                        "[injection_structures$eqVISp]"))
    assert both.status_code == 400 and "give it once" in both.json()["msg"]


def _allen(rows: list[dict]) -> list[dict]:
    from brainmap.search.connectivity import ALLEN_FIELD_NAMES

    return [{ALLEN_FIELD_NAMES.get(k, k): v for k, v in row.items()} for row in rows]


def test_injection_structure_source_search(rma, http, connectivity):
    from brainmap.search.connectivity import run_service

    body = http.get(rma("service::mouse_connectivity_injection_structure[injection_structures$eqVISp]"
                        "[primary_structure_only$eqtrue]")).json()
    expected = run_service(connectivity, "mouse_connectivity_injection_structure", injection_structures=["VISp"],
                           primary_structure_only=True).to_dict()
    assert body["msg"] == _allen(expected["msg"]) and body["total_rows"] >= 12
    assert body["msg"][0]["structure-abbrev"] == "VISp"
    wild = http.get(rma("service::mouse_connectivity_injection_structure[injection_structures$eqVISp]"
                        "[primary_structure_only$eqtrue][transgenic_lines$eq0]")).json()
    assert 100 not in _ids(wild) and len(_ids(wild)) == body["total_rows"] - 1  # 100 is a Syt6-Cre line


def test_target_search_both_names(rma, http, connectivity):
    from brainmap.search.connectivity import run_service

    target = http.get(rma("service::mouse_connectivity_target[target_domain$eqLGd,LP][target_hemisphere$eqleft]"
                          "[num_rows$eq5]")).json()
    expected = run_service(connectivity, "mouse_connectivity_injection_structure", target_domain=["LGd", "LP"],
                           target_hemisphere="left", num_rows=5).to_dict()
    assert target["msg"] == _allen(expected["msg"])
    same = http.get(rma("service::mouse_connectivity_injection_structure[injection_structures$eqgrey]"
                        "[target_domain$eqLGd,LP][target_hemisphere$eqleft][num_rows$eq5]")).json()
    assert _ids(same) == _ids(target)


def test_spatial_search_has_paths(rma, http, connectivity, server_data):
    from brainmap.search.connectivity import run_service

    seed = server_data.store.data_sets[100].metadata["injection_coordinates_um"]
    text = ",".join(str(int(v)) for v in seed)
    body = http.get(rma(f"service::mouse_connectivity_target_spatial[seed_point$eq{text}][num_rows$eq4]")).json()
    expected = run_service(connectivity, "mouse_connectivity_target_spatial",
                           seed_point=[float(v) for v in text.split(",")], num_rows=4).to_dict()
    assert body["msg"] == _allen(expected["msg"]) and body["msg"]
    path = body["msg"][0]["path"]
    assert len(path) >= 1 and set(path[0]) == {"coord", "density"}
    one = http.get(rma(f"service::mouse_connectivity_target_spatial[seed_point$eq{text}][section_data_set$eq100]"))
    assert _ids(one.json()) == [100]


def test_injection_coordinate_search(rma, http, connectivity):
    body = http.get(rma("service::mouse_connectivity_injection_coordinate[seed_point$eq9230,1910,8430]"
                        "[primary_structure_only$eqtrue][num_rows$eq3]")).json()
    assert body["msg"][0]["id"] == 100 and body["msg"][0]["distance"] == pytest.approx(0.0, abs=1e-6)
    distances = [row["distance"] for row in body["msg"]]
    assert distances == sorted(distances)


def test_connectivity_correlation(rma, http, connectivity):
    from brainmap.search.connectivity import run_service

    body = http.get(rma("service::mouse_connectivity_correlation[row$eq100][structures$eqIsocortex]"
                        "[hemisphere$eqright][num_rows$eq5]")).json()
    expected = run_service(connectivity, "mouse_connectivity_correlation", row=100, structures=["Isocortex"],
                           hemisphere="right", num_rows=5).to_dict()
    assert body["msg"] == _allen(expected["msg"]) and body["msg"][0]["id"] == 100


def test_service_formats(rma, http):
    query = "service::mouse_connectivity_injection_coordinate[seed_point$eq9230,1910,8430][num_rows$eq3]"
    xml = http.get(rma(query, "xml"))
    assert xml.status_code == 200 and ET.fromstring(xml.content).get("num_rows") == "3"
    rows = list(csv.DictReader(io.StringIO(http.get(rma(query, "csv")).text)))
    assert rows[0]["id"] == "100" and "distance" in rows[0]


@pytest.mark.parametrize("query, status, words", [
    ("service::mouse_nothing[x$eq1]", 400, "valid services"),
    ("service::mouse_differential[structures1$eqTH]", 400, "structures2"),
    ("service::mouse_differential[structures1$eqTH][structures2$eqCTX][colour$eqred]", 400, "valid parameters"),
    ("service::mouse_differential[structures1$eqTH][structures2$eqNOPE]", 400, "NOPE"),
    ("service::mouse_differential[set$eqhuman][structures1$eqTH][structures2$eqCTX]", 400, "mouse_coronal"),
    ("service::mouse_correlation[row$eq1]", 404, "1"),
    ("service::mouse_correlation[row$eqabc]", 400, "integer"),
    ("service::mouse_agea[seed_point$eq1,2]", 400, "3 comma-separated"),
    ("service::mouse_agea[seed_point$eq-99999,1,1]", 400, "seed"),
    ("service::mouse_connectivity_injection_structure[injection_structures$eqVISp][num_rows$eq999999]", 400,
     "num_rows"),
    ("service::mouse_connectivity_injection_structure[injection_structures$eqVISp][transgenic_lines$eqNope-Cre]",
     400, "transgenic line"),
    ("service::mouse_connectivity_correlation[row$eq999]", 404, "999"),
    ("service::mouse_connectivity_injection_structure[injection_structures$gtVISp]", 400, "$eq"),
])
def test_service_errors(rma, http, query, status, words):
    response = http.get(rma(query))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and words in body["msg"]


def test_service_list(http):
    body = http.get("/api/v2/services.json").json()
    names = {s["name"] for s in body["msg"]}
    assert {"mouse_differential", "mouse_correlation", "mouse_connectivity_injection_structure",
            "mouse_connectivity_target", "mouse_connectivity_target_spatial",
            "mouse_connectivity_injection_coordinate", "mouse_connectivity_correlation"} <= names
