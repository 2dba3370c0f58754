"""Allen's computed models (brainmap.store.allen_views) on SQLite and PostgreSQL, checked against the store
fixture's metadata (tests/store/conftest.py) and Allen's real ontology values."""

from __future__ import annotations

import warnings

import pytest
from sqlalchemy import select
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import aliased

from brainmap.store.models import Base
from brainmap.store.rma import execute_rma

from .test_rma_compile import VISP_WT


def rows(database, text):
    return execute_rma(database, text).rows


def test_api_connectivity_one_row_per_connectivity_experiment(loaded_database, store_data):
    found = {r["data_set_id"]: r for r in rows(loaded_database, "model::ApiConnectivity,rma::options[num_rows$eq'all']")}
    assert sorted(found) == sorted([100, 101, 112672974, *VISP_WT])  # ISH data sets are not experiments
    e100 = found[100]
    assert (e100["id"], e100["structure_id"], e100["structure_abbrev"], e100["product_id"]) == (100, 385, "VISp", 5)
    assert sorted(int(i) for i in e100["injection_structures"].split("/")) == [385, 409]
    assert (e100["injection_x"], e100["injection_y"], e100["injection_z"]) == (9230.0, 1910.0, 8430.0)
    assert e100["injection_volume"] == 0.25 and e100["gender"] == "M" and e100["strain"] == "C57BL/6J"
    assert e100["transgenic_line"] == {"name": "Syt6-Cre_KI148"} and e100["transgenic_line_id"] is not None
    assert found[101]["transgenic_line"] is None and found[101]["structure_abbrev"] == "MOp"
    # the real Knox experiments keep their primary structure and injection structures
    real = found[VISP_WT[0]]
    assert real["structure_id"] == store_data.data_sets[VISP_WT[0]].metadata["primary_injection_structure"]
    assert sorted(int(i) for i in real["injection_structures"].split("/")) == sorted(
        store_data.data_sets[VISP_WT[0]].metadata["injection_structures"])
    # filters on the computed attributes
    cre = rows(loaded_database, "model::ApiConnectivity,rma::criteria,[transgenic_line$eq'Syt6-Cre_KI148']")
    assert [r["id"] for r in cre] == [100]


def test_stereotaxic_injections_and_transgenic_mouse(loaded_database):
    (row,) = rows(loaded_database, "model::SectionDataSet,rma::criteria,[id$eq100],rma::include,specimen("
                                   "stereotaxic_injections(primary_injection_structure,structures,"
                                   "stereotaxic_injection_coordinates),donor(transgenic_mouse(transgenic_lines))),"
                                   "equalization")
    (injection,) = row["specimen"]["stereotaxic_injections"]
    assert injection["primary_injection_structure"]["acronym"] == "VISp"
    assert [s["acronym"] for s in injection["structures"]] == ["VISl", "VISp"]  # graph order
    assert [(c["coordinates_ap"], c["coordinates_dv"], c["coordinates_ml"])
            for c in injection["stereotaxic_injection_coordinates"]] == [(9230.0, 1910.0, 8430.0)]
    mouse = row["specimen"]["donor"]["transgenic_mouse"]
    assert mouse["name"] == "Syt6-Cre_KI148" and [t["name"] for t in mouse["transgenic_lines"]] == ["Syt6-Cre_KI148"]
    assert row["equalization"]["section_data_set_id"] == 100 and row["equalization"]["green_upper"] == 4095
    # ImageDownloadApi.get_section_image_ranges: the window of an image's data set (ISH images are 14-bit)
    (ish,) = rows(loaded_database, "model::Equalization,rma::criteria,section_data_set(section_images[id$in200000])")
    assert (ish["section_data_set_id"], ish["red_lower"], ish["red_upper"]) == (200, 0, 16383)


def test_structure_gene_and_ontology_attributes(loaded_database):
    (visp,) = rows(loaded_database, "model::Structure,rma::criteria,[acronym$eq'VISp'],rma::include,graph(ontology)")
    # Allen's values for VISp in structure graph 1 (structure_graph_download/1.json)
    assert (visp["atlas_id"], visp["st_level"], visp["ontology_id"], visp["hemisphere_id"]) == (755, 8, 1, 3)
    assert visp["graph"]["name"] == "Mouse Brain Atlas" and visp["graph"]["ontology"]["name"] == "Mouse"
    (fpole,) = rows(loaded_database, "model::Structure,rma::criteria,[id$eq184]")
    assert fpole["name"] == "Frontal pole, cerebral cortex" and fpole["safe_name"] == "Frontal pole cerebral cortex"
    genes = rows(loaded_database, "model::Gene,rma::criteria,[organism_id$in2],rma::include,chromosome,"
                                  "rma::options[order$eq'acronym']")
    assert [g["acronym"] for g in genes] == ["Adora2a", "Pdyn"]
    assert all(g["organism_id"] == 2 and g["chromosome"] is None for g in genes)
    assert rows(loaded_database, "model::Gene,rma::criteria,[organism_id$in1]") == []


def test_atlases_and_plates(loaded_database):
    table = rows(loaded_database, "model::Atlas,rma::criteria,structure_graph(ontology),graphic_group_labels,"
                                  "rma::include,structure_graph(ontology),graphic_group_labels,"
                                  "rma::options[num_rows$eq'all']")
    assert [(a["id"], a["name"]) for a in table] == [(1, "Mouse, P56, Coronal"), (2, "Mouse, P56, Sagittal")]
    assert table[0]["graphic_group_labels"] == [{"id": 28, "name": "Adult Mouse Structures"}]
    plates = rows(loaded_database, "model::AtlasImage,rma::criteria,[annotated$eqtrue],atlas_data_set(atlases"
                                   "[id$eq1]),alternate_images[image_type$eq'Atlas - Adult Mouse'],"
                                   "rma::options[num_rows$eq'all'][order$eqsub_images.section_number]")
    assert len(plates) == 132 and [p["section_number"] for p in plates] == list(range(1, 133))
    assert (plates[0]["width"], plates[0]["height"], plates[0]["resolution"]) == (456, 320, 25.0)
    sagittal = rows(loaded_database, "model::AtlasImage,rma::criteria,atlas_data_set(atlases[id$eq2]),"
                                     "rma::options[num_rows$eq'all']")
    assert len(sagittal) == 57 and sagittal[0]["width"] == 528


def test_well_known_file_download_link(loaded_database):
    files = rows(loaded_database, "model::WellKnownFile,rma::criteria,[attachable_id$eq100],"
                                  "rma::options[num_rows$eq'all']")
    assert files and all(f["download_link"] == f"/api/v2/well_known_file_download/{f['id']}" for f in files)


def test_every_attribute_of_every_model_selects_through_an_alias_without_a_warning(loaded_database):
    """An RMA include selects its model through an alias: every mapped attribute (constants such as
    ``Structure.ontology_id`` too) must adapt to it; SQLAlchemy's warning that it cannot is an error here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SAWarning)
        for mapper in Base.registry.mappers:
            alias = aliased(mapper.class_)
            stmt = select(*[getattr(alias, attr.key).label(attr.key) for attr in mapper.column_attrs]).limit(1)
            with loaded_database.engine.connect() as connection:
                connection.execute(stmt).all()
    structure = rows(loaded_database, "model::Structure,rma::criteria,[id$eq385],rma::include,parent,"
                                      "rma::options[only$eq'structures.ontology_id,parent.ontology_id,parent.acronym']")
    assert structure == [{"ontology_id": 1, "parent": {"ontology_id": 1, "acronym": "VIS"}}]
