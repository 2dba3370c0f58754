"""RMA queries run on SQLite and PostgreSQL: Allen's examples, operators, includes, options, paging, limits,
unknown names, and hostile queries that must change nothing."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET

import pytest

from brainmap.store.rma import (
    RmaError,
    RmaLimitError,
    RmaSyntaxError,
    RmaUnknownNameError,
    RmaValueError,
    compile_stage,
    error_envelope,
    execute_rma,
    json_envelope,
    parse_rma,
    registry,
    render,
    render_error,
)

VISP_WT = [307297141, 113887162, 180296424, 307321674, 307558646, 307320960, 307743253, 307137980, 309004492,
           307296433, 307593747, 309372716]


def run(database, text, **kwargs):
    return execute_rma(database, text, **kwargs)


def ids(result):
    return [row["id"] for row in result.rows]


# -- Allen's example queries ------------------------------------------------------------------------------------
def test_ish_data_sets_of_a_gene(loaded_database):
    result = run(loaded_database, "model::SectionDataSet, rma::criteria,[failed$eq'false'],"
                                  "products[abbreviation$eq'Mouse'],plane_of_section[name$eq'sagittal'],"
                                  "genes[acronym$eq'Pdyn']")
    assert ids(result) == [200, 202] and result.total_rows == 2
    coronal = run(loaded_database, "model::SectionDataSet,rma::criteria,[failed$eq'false'],"
                                   "products[abbreviation$eq'Mouse'],plane_of_section[name$eq'coronal'],"
                                   "genes[acronym$eq'Adora2a']")
    assert coronal.rows == []  # 201 failed
    gene = run(loaded_database, "model::Gene,rma::criteria,[acronym$eq'Pdyn'],rma::include,data_sets(plane_of_section)")
    (pdyn,) = gene.rows
    assert (pdyn["name"], pdyn["entrez_id"]) == ("prodynorphin", 18610)
    assert [(d["id"], d["plane_of_section"]["name"]) for d in pdyn["data_sets"]] == [(200, "sagittal"),
                                                                                     (202, "sagittal")]


def test_connectivity_experiments_with_injection_summary(loaded_database):
    # MouseConnectivityApi.get_experiments / get_manual_injection_summary
    result = run(loaded_database, "model::SectionDataSet,rma::criteria,[failed$eqfalse],products[id$in5,31],"
                                  "rma::include,specimen(donor(transgenic_lines),injections(structure,"
                                  "primary_injection_structure)),products,rma::options[num_rows$eq'all']"
                                  "[only$eq'id,failed,products.id,acronym,sex,strain,transgenic_lines.name,"
                                  "structure_id,specimen_id']")
    assert ids(result) == sorted([100, 101, 112672974, *VISP_WT])
    first = result.rows[0]
    assert set(first) == {"id", "failed", "specimen_id", "specimen", "products"}
    assert first["products"] == [{"id": 5}]
    specimen = first["specimen"]
    donor = specimen["donor"]  # unqualified names (id, sex, strain) apply at every level that has them
    assert (donor["sex"], donor["strain"]) == ("M", "C57BL/6J") and set(donor) == {"id", "sex", "strain",
                                                                                    "transgenic_lines"}
    assert [line["name"] for line in donor["transgenic_lines"]] == ["Syt6-Cre_KI148"]
    assert [(i["structure_id"], i["structure"]["acronym"], i["primary_injection_structure"]["acronym"])
            for i in specimen["injections"]] == [(385, "VISp", "VISp"), (409, "VISl", "VISp")]


def test_experiment_detail_with_sub_images_in_order(loaded_database):
    result = run(loaded_database, "model::SectionDataSet,rma::criteria,[id$eq100],rma::include,sub_images,"
                                  "alignment3d,rma::options[order$eq'sub_images.section_number$desc']")
    (row,) = result.rows
    assert [i["section_number"] for i in row["sub_images"]] == [7, 6, 5, 4, 3]
    assert row["alignment3d"]["section_data_set_id"] == 100 and "tvr_11" in row["alignment3d"]
    images = run(loaded_database, "model::SectionImage,rma::criteria,[data_set_id$eq100],rma::include,alignment2d,"
                                  "rma::options[order$eq'section_number']")
    assert [i["section_number"] for i in images.rows] == [3, 4, 5, 6, 7]
    assert images.rows[-1]["alignment2d"] is None and images.rows[0]["alignment2d"]["tsv_00"] == 0.35


def test_structure_unionizes_as_allensdk_asks(loaded_database, store_data):
    # MouseConnectivityApi.get_structure_unionizes
    query = ("model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$in100,307297141]"
             "[is_injection$eqfalse][normalized_projection_volume$gt0.000100][hemisphere_id$in1,2],"
             "structure[name$eq'Primary visual area'],rma::options[num_rows$eq'all'][count$eqfalse]")
    result = run(loaded_database, query)
    frame = store_data.projection_100
    expected = frame[(frame.structure_id == 385) & (~frame.is_injection) & (frame.hemisphere_id.isin([1, 2]))
                     & (frame.normalized_projection_volume > 1e-4)]
    real = store_data.real_projection
    real = real[(real.experiment_id == 307297141) & (real.structure_id == 385) & (~real.is_injection)
                & (real.hemisphere_id.isin([1, 2])) & (real.normalized_projection_volume > 1e-4)]
    assert len(result.rows) == len(expected) + len(real) > 0
    assert {r["section_data_set_id"] for r in result.rows} <= {100, 307297141}
    assert all(r["structure_id"] == 385 and r["is_injection"] is False for r in result.rows)
    real_rows = [r for r in result.rows if r["section_data_set_id"] == 307297141]
    assert sorted(r["id"] for r in real_rows) == sorted(real["id"].tolist())


def test_ontology_queries(loaded_database, tree):
    # OntologiesApi.get_structures(structure_graph_ids=1) and (structure_set_ids=...)
    result = run(loaded_database, "model::Structure,rma::criteria,[graph_id$in1],rma::options"
                                  "[order$eq'structures.graph_order'][num_rows$eq'all'][count$eqfalse]")
    assert ids(result) == [int(i) for i in tree.ids_array()]
    assert result.rows[0]["structure_id_path"] == "/997/" and result.rows[0]["color_hex_triplet"] == "FFFFFF"
    summary = run(loaded_database, "model::Structure,rma::criteria,[structure_set_id$in167587189],"
                                   "rma::options[num_rows$eq'all']")
    assert sorted(ids(summary)) == sorted(tree.structure_set_member_ids(167587189))
    by_name = run(loaded_database, "model::Structure,rma::criteria,structure_sets[name$in'Brain - Major Divisions',"
                                   "'Mouse - Coarse'],rma::options[num_rows$eq'all']")
    members = set(tree.structure_set_member_ids(687527670)) | set(tree.structure_set_member_ids(2))
    assert set(ids(by_name)) == members


def test_well_known_file_of_a_data_set(loaded_database):
    # MouseConnectivityApi.build_reference_aligned_image_channel_volumes_url's shape
    result = run(loaded_database, "model::WellKnownFile,rma::criteria,well_known_file_type"
                                  "[name$eq'projection_density_100'][attachable_id$eq100]")
    (row,) = result.rows
    assert row["path"] == "connectivity/100/grids/projection_density_100.nrrd" and len(row["sha256"]) == 64


def test_unionize_tabular_with_structure(loaded_database):
    result = run(loaded_database, "model::StructureUnionize,rma::criteria,section_data_set[id$eq200],"
                                  "structure[acronym$in'VISp','MOp'],rma::include,structure,rma::options"
                                  "[order$eq'structures.graph_order'][tabular$eq'structure.acronym as "
                                  "acronym','sum_pixel_intensity','expression_energy']")
    assert result.columns == ["acronym", "sum_pixel_intensity", "expression_energy"]
    # Allen's StructureUnionize: one row per structure and data set, no hemisphere.
    assert [r["acronym"] for r in result.rows] == ["MOp", "VISp"]
    assert all(r["sum_pixel_intensity"] > 0 for r in result.rows)
    text, content_type = render(result, "csv")
    assert content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["acronym"] == "MOp" and float(rows[0]["expression_energy"]) == result.rows[0]["expression_energy"]


# -- operators --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("criteria, expected", [
    ("[id$eq385]", 1), ("[id$ne385]", 1326), ("[graph_order$lt3]", 3), ("[graph_order$le3]", 4),
    ("[graph_order$gt1323]", 3), ("[graph_order$ge1323]", 4), ("[id$in385,409,'993']", 3),
    ("[acronym$li'VISp*']", 28), ("[acronym$li'visp*']", 0), ("[acronym$il'visp*']", 28),
    ("[acronym$li'VISp_']", 0), ("[name$li'*layer 6_*']", 0), ("[acronym$il'*%*']", 0),
    ("[parent_structure_id]", 1326), ("[parent_structure_id$isnull]", 1), ("[acronym$eq'VISp'][depth$eq7]", 1),
    ("parent[acronym$eq'VISp']", 6), ("children[acronym$eq'VISp1']", 1), ("children", 500),
    ("parent(parent[acronym$eq'VIS'])", 55), ("[structures.depth$eq0]", 1),
])
def test_operators(loaded_database, tree, criteria, expected):
    result = run(loaded_database, f"model::Structure,rma::criteria,{criteria},rma::options[num_rows$eq1]")
    if criteria == "children":
        expected = sum(1 for i in tree.ids_array() if tree.child_ids([int(i)])[0])
    if criteria.startswith("parent(parent"):
        expected = sum(1 for n in tree.nodes() if len(n["structure_id_path"]) > 2
                       and n["structure_id_path"][-3] == 669)
    assert result.total_rows == expected


def test_booleans_and_floats(loaded_database):
    base = "model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$eq100]"
    everything = run(loaded_database, base).total_rows
    injections = [run(loaded_database, base + f"[is_injection$eq{v}]").total_rows
                  for v in ("true", "'true'", "t", "1")]
    projections = run(loaded_database, base + "[is_injection$eqfalse]").total_rows
    assert len(set(injections)) == 1 and injections[0] + projections == everything
    dense = run(loaded_database, base + "[projection_density$gt0.2][projection_density$le1e0]")
    assert all(0.2 < r["projection_density"] <= 1 for r in dense.rows)


# -- includes and options --------------------------------------------------------------------------------------
def test_filtered_include_restricts_rows_and_nested_lists(loaded_database):
    result = run(loaded_database, "model::SectionDataSet,rma::include,specimen(injections[structure_id$eq409]),"
                                  "rma::options[num_rows$eq'all']")
    assert 100 in ids(result) and 101 not in ids(result) and 200 not in ids(result)
    for row in result.rows:
        assert [i["structure_id"] for i in row["specimen"]["injections"]] == [409]
    plain = run(loaded_database, "model::SectionDataSet,rma::include,genes,rma::options[num_rows$eq'all']")
    assert len(plain.rows) == 18 and [g["acronym"] for g in plain.rows[ids(plain).index(200)]["genes"]] == ["Pdyn"]
    assert plain.rows[ids(plain).index(100)]["genes"] == []


def test_only_and_except(loaded_database):
    only = run(loaded_database, "model::Structure,rma::criteria,[id$eq385],rma::include,parent,"
                                "rma::options[only$eq'structures.acronym,parent.name']")
    # A table name qualifies every level of that table: the parent is a structure too.
    assert only.rows == [{"acronym": "VISp", "parent": {"acronym": "VIS", "name": "Visual areas"}}]
    only = run(loaded_database, "model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$eq100],"
                                "rma::include,structure,rma::options[num_rows$eq1][only$eq"
                                "'projection_structure_unionizes.hemisphere_id,structure.acronym']")
    assert set(only.rows[0]) == {"hemisphere_id", "structure"} and set(only.rows[0]["structure"]) == {"acronym"}
    unqualified = run(loaded_database, "model::Structure,rma::criteria,[id$eq385],rma::include,parent,"
                                       "rma::options[only$eq'id,acronym']")
    assert unqualified.rows == [{"id": 385, "acronym": "VISp", "parent": {"id": 669, "acronym": "VIS"}}]
    excepted = run(loaded_database, "model::Structure,rma::criteria,[id$eq385],rma::options[except$eq"
                                    "'name,structure_id_path']")
    assert "name" not in excepted.rows[0] and "structure_id_path" not in excepted.rows[0]
    assert excepted.rows[0]["acronym"] == "VISp"


def test_order_by_to_one_association(loaded_database, tree):
    result = run(loaded_database, "model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$eq100]"
                                  "[is_injection$eqfalse][hemisphere_id$eq3],rma::options[order$eq"
                                  "'structure.graph_order$desc'][num_rows$eq5][only$eq'structure_id']")
    orders = [tree.get_structures_by_id([r["structure_id"]])[0]["graph_order"] for r in result.rows]
    assert orders == sorted(orders, reverse=True)


@pytest.mark.parametrize("order", ["acronym", "depth$desc", "graph_id", "color_hex_triplet$desc"])
def test_paging_never_skips_or_repeats(loaded_database, order):
    base = f"model::Structure,rma::options[order$eq'{order}'][only$eq'id']"
    everything = ids(run(loaded_database, base + "[num_rows$eq'all']"))
    pages, start = [], 0
    while True:
        page = run(loaded_database, base + f"[num_rows$eq250][start_row$eq{start}]")
        assert page.start_row == start and page.total_rows == 1327
        if not page.rows:
            break
        pages.extend(ids(page))
        start += 250
    assert pages == everything and len(set(pages)) == 1327


def test_count_false_and_default_page(loaded_database):
    default = run(loaded_database, "model::Structure")
    assert default.num_rows == 50 and default.total_rows == 1327
    uncounted = run(loaded_database, "model::Structure,rma::options[count$eqfalse][start_row$eq10][num_rows$eq5]")
    assert uncounted.num_rows == 5 and uncounted.start_row == 10 and uncounted.total_rows == 15


# -- limits, unknown names, bad values --------------------------------------------------------------------------
def test_row_cap(loaded_database):
    with pytest.raises(RmaLimitError, match="at most 1,000"):
        run(loaded_database, "model::ProjectionStructureUnionize,rma::options[num_rows$eq'all']", max_rows=1000)
    with pytest.raises(RmaLimitError, match="at most 1,000") as info:
        run(loaded_database, "model::ProjectionStructureUnionize,rma::options[num_rows$eq'all'][count$eqfalse]",
            max_rows=1000)
    assert info.value.position is not None
    with pytest.raises(RmaLimitError, match="num_rows 100,000,000"):
        run(loaded_database, "model::Structure,rma::options[num_rows$eq100000000]")
    with pytest.raises(RmaLimitError, match="included projection_structure_unionizes"):
        run(loaded_database, "model::SectionDataSet,rma::include,projection_structure_unionizes", max_rows=1000)
    assert len(run(loaded_database, "model::Structure,rma::options[num_rows$eq'all']", max_rows=1327).rows) == 1327


@pytest.mark.parametrize("text, kind, name, position", [
    ("model::Structures", "model", "Structures", 7),
    ("model::Structure,rma::criteria,[acronymm$eq'VISp']", "attribute", "acronymm", 32),
    ("model::Structure,rma::criteria,parents[acronym$eq'VISp']", "association", "parents", 31),
    ("model::Structure,rma::criteria,parent[acronymm$eq'VISp']", "attribute", "acronymm", 38),
    ("model::Structure,rma::include,parent(kids)", "association", "kids", 37),
    ("model::Structure,rma::options[only$eq'idd']", "attribute", "idd", 37),
    ("model::Structure,rma::options[order$eq'graph_orders']", "attribute", "graph_orders", 38),
    ("model::Structure,rma::options[order$eq'parents.acronym']", "association", "parents", 38),
    ("model::Structure,rma::include,parent,rma::options[tabular$eq'parent.acronymm']", "attribute", "acronymm", 60),
])
def test_unknown_names(loaded_database, text, kind, name, position):
    with pytest.raises(RmaUnknownNameError) as info:
        run(loaded_database, text)
    error = info.value
    assert (error.kind, error.name, error.position) == (kind, name, position)
    assert error.valid and isinstance(error, ValueError)
    if kind == "model":
        assert "SectionDataSet" in error.valid and "ProjectionStructureUnionize" in error.valid
    if kind == "attribute" and "parent[" not in text:
        assert "acronym" in error.valid


def test_tabular_needs_the_include(loaded_database):
    with pytest.raises(RmaValueError, match="include parent"):
        run(loaded_database, "model::Structure,rma::options[tabular$eq'parent.acronym']")


@pytest.mark.parametrize("criteria", ["[id$eqabc]", "[id$eq1.5]", "[id$eq99999999999999999999]",
                                      "[depth$gt'1; DROP TABLE structures']", "[id$li'38*']", "[id$eq1,2]",
                                      "[parent_structure_id$is'nothing']"])
def test_bad_values(loaded_database, criteria):
    with pytest.raises(RmaValueError) as info:
        run(loaded_database, f"model::Structure,rma::criteria,{criteria}")
    assert info.value.position is not None and info.value.expected


def test_services_are_left_to_the_server(loaded_database):
    with pytest.raises(RmaSyntaxError, match="service"):
        run(loaded_database, "service::mouse_differential[set$eqmouse][structures1$eq8][structures2$eq315]")


# -- hostile queries --------------------------------------------------------------------------------------------
HOSTILE = [
    "model::Structure,rma::criteria,[acronym$eq'; DROP TABLE structures; --']",
    "model::Structure,rma::criteria,[acronym$eq''; DROP TABLE structures; --']",
    "model::Structure,rma::criteria,[acronym$eq'VISp'' OR ''1''=''1']",
    "model::Structure,rma::criteria,[acronym$eqVISp' OR '1'='1]",
    "model::Structure,rma::criteria,[acronym$eqVISp; DELETE FROM structures]",
    "model::Structure,rma::criteria,[acronym$eq VISp -- comment]",
    "model::Structure,rma::criteria,[acronym$eq'/* comment */VISp']",
    "model::Structure,rma::criteria,[id$eq385 OR 1=1]",
    "model::Structure,rma::criteria,[id$eq385;DROP TABLE structures]",
    "model::Structure,rma::criteria,[id$in385,1) OR (1=1]",
    "model::Structure;DROP TABLE structures",
    "model::Structure,rma::criteria,[acronym);DROP TABLE structures;--$eq1]",
    "model::Structure,rma::options[order$eq'acronym; DROP TABLE structures']",
    "model::Structure,rma::options[order$eq'(SELECT 1)']",
    "model::Structure,rma::options[only$eq'id,(SELECT password FROM users)']",
    "model::Structure,rma::options[num_rows$eq1;DELETE FROM structures]",
    "model::Structure,rma::options[num_rows$eq999999999999]",
    "model::Structure,rma::options[start_row$eq-1]",
    "model::Structure,rma::criteria,[name$li'%']",
    "model::Structure,rma::criteria,[name$il'\\'; DROP TABLE structures; --']",
    "model::SchemaInfo",
    "model::Structure,rma::criteria,[acronym$eq'\u00e9\u4e2d\U0001f9e0']",
    "model::Structure,rma::criteria,[acronym$eq'x\x00y']",
    "model::Structure,rma::include," + ",".join(["parent"] * 300),
]


def test_hostile_queries_change_nothing(loaded_database, counts):
    before = counts(loaded_database)
    outcomes = []
    for text in HOSTILE:
        try:
            result = run(loaded_database, text)
            outcomes.append(("rows", len(result.rows)))
        except RmaError as exc:
            assert exc.position is None or 0 <= exc.position <= len(text)
            outcomes.append(("error", type(exc).__name__))
    assert counts(loaded_database) == before
    answered = [o for o in outcomes if o[0] == "rows"]
    assert all(n == 0 for _, n in answered)  # literals that match nothing
    assert outcomes[0] == ("rows", 0) and outcomes[2] == ("rows", 0)
    assert outcomes[20][0] == "error" and outcomes[-1][0] == "error"


def test_literals_are_bound_parameters():
    literal = "x'; DROP TABLE structures; --"
    stage = parse_rma("model::Structure,rma::criteria,[acronym$eq'x''; DROP TABLE structures; --'],"
                      "parent[name$il'*DROP*']").stages[0]
    compiled = compile_stage(stage)
    sql = str(compiled.where[0].compile())
    assert "DROP" not in sql and ":acronym_1" in sql
    params = compiled.where[0].compile().params
    assert literal in params.values()


def test_quotes_inside_strings_match_literally(loaded_database):
    result = run(loaded_database, "model::Structure,rma::criteria,[name$eq'Field CA1'],rma::options[only$eq'name']")
    assert result.rows == [{"name": "Field CA1"}]
    result = run(loaded_database, "model::Structure,rma::criteria,[name$il'*ammon''s horn*']")
    assert [r["acronym"] for r in result.rows] == ["CA"]


# -- envelopes --------------------------------------------------------------------------------------------------
def test_envelopes(loaded_database):
    result = run(loaded_database, "model::Structure,rma::criteria,[id$in385,997],rma::include,parent,"
                                  "rma::options[order$eq'id']")
    envelope = json_envelope(result)
    assert {k: envelope[k] for k in ("success", "id", "start_row", "num_rows", "total_rows")} == {
        "success": True, "id": 0, "start_row": 0, "num_rows": 2, "total_rows": 2}
    body, content_type = render(result, "json")
    assert content_type == "application/json" and json.loads(body)["msg"][0]["acronym"] == "VISp"
    body, content_type = render(result, "xml")
    root = ET.fromstring(body.split("\n", 1)[1])
    assert root.tag == "Response" and root.get("success") == "true" and root.get("total_rows") == "2"
    first = root.find("structures/structure")
    assert first.find("id").text == "385" and first.find("id").get("type") == "integer"
    assert first.find("structure-id-path").text == "/997/8/567/688/695/315/669/385/"
    assert first.find("parent/acronym").text == "VIS"
    assert root.findall("structures/structure")[1].find("parent").get("nil") == "true"
    text, _ = render(result, "csv")
    header = next(csv.reader(io.StringIO(text)))
    assert "acronym" in header and "parent.acronym" in header

    try:
        run(loaded_database, "model::Structure,rma::criteria,[acronymm$eq1]")
    except RmaError as exc:
        envelope = error_envelope(exc)
        assert envelope["success"] is False and envelope["error"]["position"] == 32
        assert "acronym" in envelope["error"]["valid"]
        assert ET.fromstring(render_error(exc, "xml")[0].split("\n", 1)[1]).get("success") == "false"


def test_registry_describes_models():
    described = registry().describe()
    assert described["SectionDataSet"]["associations"]["genes"] == "Gene[]"
    assert described["SectionDataSet"]["aliases"] == {"sub_images": "section_images"}
    assert described["ProjectionStructureUnionize"]["attributes"]["is_injection"] == "boolean"
    assert described["Structure"]["virtual_attributes"] == {"structure_set_id": "structure_sets.id"}


def test_time_limit(loaded_database):
    heavy = ("model::ProjectionStructureUnionize,rma::criteria,structure(structure_sets(structures("
             "projection_structure_unionizes[projection_density$gt0.5]))),rma::options[num_rows$eq'all']")
    with pytest.raises(RmaLimitError, match="longer than"):
        run(loaded_database, heavy, timeout_s=0.001)


def test_runs_on_a_session_or_connection_too(loaded_database):
    from brainmap.store.rma import parse_rma_params

    query = parse_rma_params({"criteria": "[acronym$eq'VISp']", "include": "parent", "only": "id,acronym"},
                             model="Structure")
    with loaded_database.session() as session:
        assert execute_rma(session, query).rows == [{"id": 385, "acronym": "VISp",
                                                     "parent": {"id": 669, "acronym": "VIS"}}]
    with loaded_database.engine.connect() as connection:
        assert execute_rma(connection, "model::Structure,rma::criteria,[id$eq8]").rows[0]["acronym"] == "grey"
