"""The RMA parser: Allen's example queries, the AST with positions, and errors saying where and what."""

from __future__ import annotations

import pytest

from brainmap.store.rma.parser import (
    MAX_DEPTH,
    MAX_QUERY_LENGTH,
    ModelStage,
    PipeCall,
    RmaError,
    RmaLimitError,
    RmaSyntaxError,
    RmaUnknownNameError,
    RmaValueError,
    ServiceCall,
    parse_criteria,
    parse_include,
    parse_options,
    parse_rma,
    parse_rma_params,
)

#: Queries as Allen's documentation and AllenSDK write them.
ALLEN_QUERIES = [
    "model::SectionDataSet,rma::criteria,[failed$eqfalse],products[id$in5,31],rma::include,"
    "specimen(donor(transgenic_lines),injections(structure,primary_injection_structure)),equalization,products,"
    "rma::options[only$eq'id,failed,products.id,transgenic_lines.name'][num_rows$eq'all']",
    "model::SectionDataSet, rma::criteria,[failed$eq'false'],products[abbreviation$eq'Mouse'],"
    "plane_of_section[name$eq'coronal'],genes[acronym$eq'Adora2a']",
    "model::SectionDataSet,rma::criteria,[id$eq126862385],rma::include,equalization,sub_images,"
    "rma::options[order$eq'sub_images.section_number$asc']",
    "model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$in126862385,100]"
    "[is_injection$eqfalse][normalized_projection_volume$gt0.010000][hemisphere_id$in1,2],"
    "structure[name$eq'Primary visual area'],rma::options[num_rows$eq'all'][count$eqfalse]",
    "model::Structure,rma::criteria,[graph_id$in1],rma::options[order$eqstructures.graph_order]"
    "[num_rows$eq'all'][count$eqfalse]",
    "model::Structure,rma::criteria,structure_sets[name$in'Brain - Major Divisions','Mouse - Coarse']",
    "model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'ImagesResampledTo25MicronARA']"
    "[attachable_id$eq100]",
    "model::Gene[id$eq15]",
    "service::mouse_connectivity_injection_structure[injection_domain$eqIsocortex][transgenic_lines$eq0]",
    "service::mouse_differential[set$eq'mouse'][structures1$eq8][structures2$eq315]",
    "service::mouse_agea[set$eqmouse_coronal][seed_age$eqP56][map_age$eqP56][seed_point$eq6800,4200,5600]",
    "model::Gene,rma::criteria,[acronym$il'abat'],rma::include,organism",
    "model::Organism,rma::criteria,[name$il'*human*'][id$ne15]",
]


@pytest.mark.parametrize("text", ALLEN_QUERIES)
def test_allen_queries_parse(text):
    query = parse_rma(text)
    assert query.stages and query.text == text


def test_model_stage_ast():
    query = parse_rma(ALLEN_QUERIES[0])
    (stage,) = query.stages
    assert isinstance(stage, ModelStage) and stage.model == "SectionDataSet"
    root, products = stage.criteria
    assert root.name is None and root.filters[0].name == "failed" and root.filters[0].op == "eq"
    assert root.filters[0].value.atoms == ("false",) and root.filters[0].value.quoted == (False,)
    assert products.name == "products" and products.filters[0].value.atoms == ("5", "31")
    specimen = stage.include[0]
    assert specimen.name == "specimen" and [c.name for c in specimen.children] == ["donor", "injections"]
    assert [c.name for c in specimen.children[1].children] == ["structure", "primary_injection_structure"]
    assert [i.name for i in stage.include] == ["specimen", "equalization", "products"]
    assert stage.options.num_rows == "all"
    assert [name for name, _ in stage.options.only] == ["id", "failed", "products.id", "transgenic_lines.name"]
    # Positions point into the text.
    assert ALLEN_QUERIES[0][products.position:].startswith("products[")
    assert ALLEN_QUERIES[0][root.filters[0].position:].startswith("failed$eq")


def test_service_and_pipe_stages():
    (service,) = parse_rma(ALLEN_QUERIES[10]).stages
    assert isinstance(service, ServiceCall) and service.name == "mouse_agea"
    assert service.param("seed_point").atoms == ("6800", "4200", "5600")
    assert service.as_dict()["seed_age"] == ["P56"]
    query = parse_rma("model::Gene,rma::criteria,[acronym$eq'Pdyn'],pipe::list[ids$eq'id'],"
                      "service::mouse_correlation[set$eqmouse][row$eq$.ids],rma::options[num_rows$eq10]")
    model, pipe, correlation = query.stages
    assert isinstance(model, ModelStage) and isinstance(pipe, PipeCall) and isinstance(correlation, ServiceCall)
    assert pipe.params[0].value.atoms == ("id",)
    assert correlation.param("row").atoms == ("$.ids",) and correlation.options.num_rows == 10


def test_quoted_strings():
    (stage,) = parse_rma("model::Structure,rma::criteria,[name$eq'O''Brien, (x) [y]; --'],"
                         "[acronym$in\"a\",'b''c', d ]").stages
    assert stage.criteria[0].filters[0].value.atoms == ("O'Brien, (x) [y]; --",)
    assert stage.criteria[1].filters[0].value.atoms == ("a", "b'c", "d")
    assert stage.criteria[1].filters[0].value.quoted == (True, True, False)


def test_existence_filter_and_qualified_names():
    (stage,) = parse_rma("model::Gene,rma::criteria,probes[orientation_id],genes[chromosome.name$eq'X']").stages
    probes, genes = stage.criteria
    assert probes.filters[0].op is None and probes.filters[0].value is None
    assert genes.filters[0].qualifier == "chromosome" and genes.filters[0].attribute == "name"


def test_options():
    options = parse_options("[num_rows$eq25][start_row$eq50][order$eq'acronym$desc',structures.graph_order]"
                            "[tabular$eq'structure.acronym as acronym','hemisphere_id'][count$eqfalse]"
                            "[except$eqname][debug$eqtrue]")
    assert (options.num_rows, options.start_row, options.count, options.debug) == (25, 50, False, "true")
    assert [(o.name, o.descending) for o in options.order] == [("acronym", True), ("structures.graph_order", False)]
    assert [(t.name, t.title) for t in options.tabular] == [("structure.acronym", "acronym"),
                                                             ("hemisphere_id", "hemisphere_id")]
    assert [n for n, _ in options.except_] == ["name"]
    assert [o.descending for o in parse_options("[order$eqname+desc,id asc]").order] == [True, False]
    with pytest.raises(RmaSyntaxError, match="column title"):
        parse_options("[tabular$eq'acronym as <x>']")


def test_url_parameter_forms():
    query = parse_rma_params({"criteria": "[acronym$il'abat']", "include": "organism", "num_rows": "5",
                              "order": "acronym$desc"}, model="Gene")
    (stage,) = query.stages
    assert stage.model == "Gene" and stage.include[0].name == "organism" and stage.options.num_rows == 5
    assert stage.options.order[0].descending
    assert parse_rma_params({"q": "model::Gene[id$eq15]"}).stages[0].criteria[0].filters[0].value.atoms == ("15",)
    assert parse_criteria("[failed$eqfalse],products[id$in5,31]")[1].name == "products"
    assert [n.name for n in parse_include("genes,specimen(donor)")] == ["genes", "specimen"]


@pytest.mark.parametrize("text, position, expected", [
    ("model::Structure,rma::criteria,[acronym$eq'VISp'", 48, "',' or ']' after a value"),
    ("model::Structure,rma::criteria,[acronym$eq'VISp]", 48, "a closing ' for the string opened at position 42"),
    ("model::Structure,rma::criteria,[acronym$eq]", 42, "a value"),
    ("model::Structure,rma::criteria,[$eq1]", 32, "an attribute name"),
    ("model::Structure,rma::criteria,[acronym=1]", 39, "an operator"),
    ("model::Structure,rma::criteria,parent(children", 46, "',' or ')'"),
    ("model::Structure,rma::criteria,[id$eq1]]", 39, "',' between items"),
    ("model::Structure,rma::criteria,[id$eq1];DROP TABLE structures", 39, "',' between items"),
    ("model::Structure,rma::criteria,[id$eq1]--", 39, "',' between items"),
    ("[id$eq1]", 0, "model::NAME"),
    ("", 0, "a query"),
    ("model::Structure,rma::include,[id$eq1]", 30, "an association name"),
])
def test_syntax_errors_say_where_and_what(text, position, expected):
    with pytest.raises(RmaSyntaxError) as info:
        parse_rma(text)
    assert info.value.position == position
    assert expected in info.value.expected
    assert f"at position {position}" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RmaError)


@pytest.mark.parametrize("text, kind, name", [
    ("model::Structure,rma::criteria,[id$xx1]", "operator", "$xx"),
    ("model::Structure,rma::crit", "section", "rma::crit"),
    ("mdl::Structure", "axis", "mdl::"),
    ("model::Structure,rma::options[rows$eq1]", "option", "rows"),
])
def test_unknown_names(text, kind, name):
    with pytest.raises(RmaUnknownNameError) as info:
        parse_rma(text)
    assert info.value.kind == kind and info.value.name == name and info.value.valid


@pytest.mark.parametrize("options", ["[num_rows$eq-5]", "[num_rows$eqlots]", "[start_row$eq1.5]",
                                     "[count$eqmaybe]", "[order$eq'name$sideways']"])
def test_bad_option_values(options):
    with pytest.raises(RmaValueError):
        parse_rma("model::Structure,rma::options" + options)


def test_limits():
    with pytest.raises(RmaLimitError):
        parse_rma("model::Structure,rma::criteria,[name$eq'" + "x" * MAX_QUERY_LENGTH + "']")
    deep = "model::Structure,rma::include," + "parent(" * (MAX_DEPTH + 1) + "parent" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(RmaLimitError):
        parse_rma(deep)
    with pytest.raises(RmaLimitError):
        parse_rma("model::Structure,rma::options[num_rows$eq99999999999999]")
    with pytest.raises(RmaSyntaxError, match="control character"):
        parse_rma("model::Structure,rma::criteria,[name$eq'a\x00b']")
