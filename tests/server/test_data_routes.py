"""RMA queries over HTTP: the envelope, the three formats, both URL forms, paging, includes, the row cap and
the answer cache (on SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from urllib.parse import quote

import pytest


def test_model_query_envelope(rma, http):
    response = http.get(rma("model::Structure,rma::criteria,[acronym$eq'VISp']"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is True and body["num_rows"] == 1 and body["total_rows"] == 1
    row = body["msg"][0]
    assert row["id"] == 385 and row["name"] == "Primary visual area"
    assert row["structure_id_path"] == "/997/8/567/688/695/315/669/385/"


def test_q_and_criteria_are_the_same(rma, http):
    query = "model::Structure,rma::criteria,[acronym$in'VISp','MOp'],rma::options[order$eq'acronym']"
    by_criteria = http.get(rma(query)).json()
    by_q = http.get("/api/v2/data/query.json?q=" + quote(query, safe="")).json()
    assert by_criteria == by_q
    assert [r["acronym"] for r in by_q["msg"]] == ["MOp", "VISp"]


def test_model_form_and_by_id(rma, http):
    form = http.get("/api/v2/data/Structure/query.json", params={
        "criteria": "[acronym$eq'VISp']", "include": "parent", "only": "id,acronym,parent.acronym"}).json()
    assert form["msg"] == [{"id": 385, "acronym": "VISp", "parent": {"id": 669, "acronym": "VIS"}}]
    one = http.get("/api/v2/data/Structure/385.json").json()
    assert one["msg"][0]["acronym"] == "VISp"
    none = http.get("/api/v2/data/Structure/123456789.json").json()
    assert none["success"] is True and none["msg"] == []
    xml = http.get("/api/v2/data/Structure/385.xml")
    assert ET.fromstring(xml.content).find("./structures/structure/acronym").text == "VISp"


def test_xml_and_csv(rma, http):
    query = "model::Structure,rma::criteria,[acronym$in'VISp','VISl'],rma::options[order$eq'acronym']"
    xml = http.get(rma(query, "xml"))
    assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(xml.content)
    assert root.get("success") == "true" and root.get("total_rows") == "2"
    assert [e.text for e in root.iter("acronym")] == ["VISl", "VISp"]
    assert root.find("./structures/structure/id").get("type") == "integer"
    text = http.get(rma(query, "csv"))
    assert text.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text.text)))
    assert [r["acronym"] for r in rows] == ["VISl", "VISp"]


def test_includes_and_associations(rma, http, server):
    query = ("model::SectionDataSet,rma::criteria,[id$eq100],rma::include,specimen(donor(transgenic_lines),"
             "injections(structure)),products")
    row = http.get(rma(query)).json()["msg"][0]
    assert row["id"] == 100
    assert row["specimen"]["donor"]["transgenic_lines"][0]["name"] == "Syt6-Cre_KI148"
    assert {i["structure"]["acronym"] for i in row["specimen"]["injections"]} == {"VISp", "VISl"}
    assert [p["id"] for p in row["products"]] == [5]


def test_unionize_rows_match_the_store(rma, http, server):
    real = server.data.store.real_projection
    expected = real[(real.experiment_id == 112672974) & (real.structure_id == 385) & (~real.is_injection)]
    query = ("model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$eq112672974]"
             "[is_injection$eqfalse],structure[acronym$eq'VISp'],rma::options[order$eq'hemisphere_id']")
    rows = http.get(rma(query)).json()["msg"]
    assert [r["hemisphere_id"] for r in rows] == sorted(expected.hemisphere_id.tolist())
    for row in rows:
        want = expected[expected.hemisphere_id == row["hemisphere_id"]].iloc[0]
        assert row["projection_density"] == pytest.approx(want.projection_density, rel=1e-12)


def test_paging_never_skips_or_repeats(rma, http):
    base = "model::Structure,rma::criteria,[structure_id_path$li'/997/8/567/688/*'],rma::options"
    whole = http.get(rma(base + "[num_rows$eq'all'][order$eq'graph_order']")).json()
    ids = [r["id"] for r in whole["msg"]]
    assert whole["total_rows"] == len(ids) > 100
    paged = []
    for start in range(0, len(ids), 37):
        page = http.get(rma(base + f"[start_row$eq{start}][num_rows$eq37][order$eq'graph_order']")).json()
        assert page["start_row"] == start and page["total_rows"] == len(ids)
        paged += [r["id"] for r in page["msg"]]
    assert paged == ids


def test_tabular_and_count(rma, http):
    query = ("model::StructureUnionize,rma::criteria,section_data_set[id$eq200],structure[acronym$in'VISp','MOp'],"
             "rma::include,structure,rma::options[tabular$eq'structure.acronym as acronym','sum_pixel_intensity',"
             "'expression_energy'][order$eq'structure.acronym'][count$eqfalse]")
    body = http.get(rma(query)).json()
    assert body["success"] is True and body["num_rows"] == 2  # one row per structure (no hemisphere)
    assert set(body["msg"][0]) == {"acronym", "sum_pixel_intensity", "expression_energy"}


def test_row_cap(rma, http, server):
    # The test servers cap a query at 2,000 rows; the ontology has 1,327 structures and the structure set
    # membership table far more.
    over = http.get(rma("model::Structure,rma::options[num_rows$eq2001]"))
    assert over.status_code == 400 and "2,000" in over.json()["msg"]
    body = http.get(rma("model::ProjectionStructureUnionize,rma::options[num_rows$eq'all']")).json()
    assert body["success"] is False and body["error"]["type"] == "RmaLimitError"
    assert http.get(rma("model::Structure,rma::options[num_rows$eq'all']")).json()["total_rows"] == 1327


def test_errors_carry_position_and_expected(rma, http):
    response = http.get(rma("model::Structure,rma::criteria,[acronym$eq'VISp]"))
    assert response.status_code == 400
    error = response.json()
    assert error["success"] is False and error["error"]["type"] == "RmaSyntaxError"
    assert error["error"]["position"] == len("model::Structure,rma::criteria,[acronym$eq'VISp]")
    assert "closing '" in error["error"]["expected"]
    unknown = http.get(rma("model::Structure,rma::criteria,[acronymm$eq'VISp']")).json()
    assert unknown["error"]["type"] == "RmaUnknownNameError" and "acronym" in unknown["error"]["valid"]
    assert http.get(rma("model::Nope")).json()["error"]["name"] == "Nope"
    xml = http.get(rma("model::Nope", "xml"))
    assert xml.status_code == 400 and ET.fromstring(xml.content).get("success") == "false"
    missing = http.get("/api/v2/data/query.json")
    assert missing.status_code == 400 and "criteria=" in missing.json()["msg"]
    assert http.get("/api/v2/data/query.txt?criteria=model::Structure").status_code == 400


def test_pipes_are_refused_clearly(rma, http):
    response = http.get(rma("model::Gene,rma::criteria,[acronym$eq'Pdyn'],pipe::list[xid$eq'id']"))
    assert response.status_code == 400 and "pipe::" in response.json()["msg"]


def test_answer_cache_follows_the_database(rma, http, server):
    """A repeated query is answered from the cache until the database changes; then the new answer."""
    from sqlalchemy import update

    from brainmap.store import models as m

    query = rma("model::Structure,rma::criteria,[id$eq385],rma::options[only$eq'id,name']")
    first = http.get(query).json()["msg"][0]["name"]
    assert http.get(query).json()["msg"][0]["name"] == first == "Primary visual area"
    try:
        with server.database.engine.begin() as connection:
            connection.execute(update(m.Structure).where(m.Structure.id == 385).values(name="Renamed area"))
        assert http.get(query).json()["msg"][0]["name"] == "Renamed area"
    finally:
        with server.database.engine.begin() as connection:
            connection.execute(update(m.Structure).where(m.Structure.id == 385).values(name=first))
    assert http.get(query).json()["msg"][0]["name"] == first
