"""The database and the loader, on SQLite and PostgreSQL: what is loaded, idempotence, atomic failure."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from brainmap.atlas import StructureTree
from brainmap.store import models as m
from brainmap.store.database import DATABASE_FILE, database_url, open_database
from brainmap.store.load import LoadError, load_paths, main


def _rows(database, stmt):
    with database.session() as session:
        return session.execute(stmt).all()


# -- configuration ---------------------------------------------------------------------------------------------
def test_database_url_order(monkeypatch, tmp_path):
    monkeypatch.delenv("BRAINMAP_DATABASE_URL", raising=False)
    monkeypatch.delenv("BRAINMAP_DATA_DIR", raising=False)
    assert database_url(data_dir=tmp_path) == f"sqlite:///{tmp_path.resolve() / DATABASE_FILE}"
    monkeypatch.setenv("BRAINMAP_DATA_DIR", str(tmp_path / "d"))
    assert database_url() == f"sqlite:///{(tmp_path / 'd').resolve() / DATABASE_FILE}"
    monkeypatch.setenv("BRAINMAP_DATABASE_URL", "postgresql://u@localhost/brainmap")
    assert database_url() == "postgresql+psycopg://u@localhost/brainmap"
    assert database_url("sqlite:///x.sqlite") == "sqlite:///x.sqlite"


def test_default_sqlite_file_in_data_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("BRAINMAP_DATABASE_URL", raising=False)
    database = open_database(data_dir=tmp_path / "data")
    try:
        assert (tmp_path / "data" / DATABASE_FILE).is_file()
        assert database.backend == "sqlite"
        assert database.schema_version() == m.SCHEMA_VERSION
        database.create_schema()  # idempotent
    finally:
        database.dispose()


def test_every_model_has_an_id_and_a_table():
    for name, cls in m.MODELS.items():
        assert cls.__rma_name__ == name
        assert "id" in cls.__table__.columns


# -- what is loaded --------------------------------------------------------------------------------------------
def test_ontology_loaded(loaded_database):
    tree = StructureTree.bundled()
    structures = {r.id: r for r in _rows(loaded_database, select(m.Structure.__table__))}
    assert len(structures) == len(tree) == 1327
    visp = structures[385]
    assert (visp.acronym, visp.name, visp.parent_structure_id) == ("VISp", "Primary visual area", 669)
    assert visp.structure_id_path == "/997/8/567/688/695/315/669/385/"
    assert visp.color_hex_triplet == "08858C" and visp.depth == 7 and visp.graph_id == 1
    assert structures[997].parent_structure_id is None
    assert sorted(structures, key=lambda i: structures[i].graph_order)[:3] == [997, 8, 567]
    sets = _rows(loaded_database, select(m.StructureSet.id, m.StructureSet.name))
    assert len(sets) == 33
    members = _rows(loaded_database, select(m.structure_sets_structures.c.structure_id)
                    .where(m.structure_sets_structures.c.structure_set_id == 167587189))
    assert sorted(r[0] for r in members) == sorted(tree.structure_set_member_ids(167587189))


def test_data_sets_loaded(loaded_database, store_data):
    with loaded_database.session() as session:
        ds = session.get(m.SectionDataSet, 100)
        assert ds.plane_of_section.name == "coronal" and not ds.failed
        assert [p.abbreviation for p in ds.products] == ["MouseConn"]
        assert ds.section_thickness == 100.0 and ds.reference_space_id == 9
        assert ds.storage_directory == "connectivity/100"
        assert [i.section_number for i in ds.section_images] == [3, 4, 5, 6, 7]
        assert [i.failed for i in ds.section_images] == [False, False, True, False, False]
        assert ds.section_images[4].alignment2d is None
        source = store_data.data_sets[100]
        assert ds.alignment3d is not None
        for key, value in source.alignment3d.to_allen().items():
            assert getattr(ds.alignment3d, key) == value
        image = source.images[1]
        for key, value in image.alignment2d.to_allen().items():
            assert getattr(ds.section_images[1].alignment2d, key) == value
        specimen = ds.specimen
        assert specimen.name == "Syt6-Cre_KI148-100"
        assert [line.name for line in specimen.donor.transgenic_lines] == ["Syt6-Cre_KI148"]
        assert (specimen.donor.sex, specimen.donor.strain) == ("M", "C57BL/6J")
        injections = {i.structure_id: i for i in specimen.injections}
        assert set(injections) == {385, 409}
        assert all(i.primary_injection_structure_id == 385 for i in injections.values())
        assert injections[409].coordinates_ap == 9230.0 and injections[409].injection_volume == 0.25

        ish = session.get(m.SectionDataSet, 200)
        assert ish.plane_of_section.name == "sagittal" and [p.id for p in ish.products] == [1]
        assert [(g.acronym, g.name, g.entrez_id) for g in ish.genes] == [("Pdyn", "prodynorphin", 18610)]
        assert [p.name for p in ish.probes] == ["RP_Pdyn_1"] and ish.probes[0].gene.acronym == "Pdyn"
        assert session.get(m.SectionDataSet, 201).failed is True
        pdyn = session.scalars(select(m.Gene).where(m.Gene.acronym == "Pdyn")).one()
        assert sorted(d.id for d in pdyn.section_data_sets) == [200, 202]
        assert session.get(m.SectionDataSet, 200).specimen_id == session.get(m.SectionDataSet, 202).specimen_id

        real = session.get(m.SectionDataSet, 112672974)
        primary = {i.primary_injection_structure.acronym for i in real.specimen.injections}
        assert primary == {"ENTm"} and len(real.specimen.injections) == 6


def test_unionize_rows_round_trip(loaded_database, store_data):
    table = m.ProjectionStructureUnionize.__table__
    rows = _rows(loaded_database, select(table).where(table.c.section_data_set_id == 100))
    expected = store_data.projection_100
    assert len(rows) == len(expected) > 2000
    by_key = {(r.structure_id, r.hemisphere_id, r.is_injection): r for r in rows}
    for record in expected.sample(200, random_state=1).to_dict("records"):
        row = by_key[(record["structure_id"], record["hemisphere_id"], record["is_injection"])]
        for column in ("projection_density", "normalized_projection_volume", "sum_pixels", "max_voxel_x",
                       "volume"):
            assert row._mapping[column] == pytest.approx(record[column], rel=1e-12, abs=0)

    real = store_data.real_projection
    rows = {r.id: r for r in _rows(loaded_database, select(table).where(table.c.id.in_(real["id"].tolist())))}
    assert len(rows) == len(real)
    for record in real.to_dict("records"):
        row = rows[record["id"]]
        assert row.section_data_set_id == record["experiment_id"]
        assert row.is_injection == record["is_injection"]
        assert row.projection_density == pytest.approx(record["projection_density"], rel=1e-12)

    ish = m.StructureUnionize.__table__
    rows = _rows(loaded_database, select(ish).where(ish.c.section_data_set_id == 200))
    assert len(rows) == len(store_data.ish_200)
    for row in rows:
        assert row.expression_energy is None or math.isfinite(row.expression_energy)


def test_volumes_registered_with_checksums(loaded_database, store_data):
    with loaded_database.session() as session:
        files = session.scalars(select(m.WellKnownFile).order_by(m.WellKnownFile.path)).all()
        assert [f.path for f in files] == [p.relative_to(store_data.root).as_posix() for p in store_data.volumes]
        for record, path in zip(files, store_data.volumes):
            assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
            assert record.file_size == path.stat().st_size
            assert record.attachable_type == "SectionDataSet" and record.attachable_id == 100
            assert record.section_data_set.id == 100
        assert {f.well_known_file_type.name for f in files} == {"projection_density_100", "energy"}
        assert len(session.get(m.SectionDataSet, 100).well_known_files) == len(files)


# -- idempotence and atomicity ---------------------------------------------------------------------------------
def test_loading_twice_changes_nothing(loaded_database, store_data, snapshot):
    assert loaded_database.first_report.total_written > 9_000  # ontology, data sets, unionize rows (ISH: one per structure)
    before = snapshot(loaded_database)
    report = load_paths(loaded_database, [store_data.root], data_dir=store_data.root)
    assert report.total_written == 0, report.summary()
    assert snapshot(loaded_database) == before


def _copy(store_data, tmp_path, *ids):
    root = tmp_path / "data"
    for i in ids:
        shutil.copytree(store_data.folders[i], root / str(i))
    return root


def test_reload_follows_changes(empty_database, store_data, tmp_path):
    root = _copy(store_data, tmp_path, 100, 200)
    load_paths(empty_database, [root], data_dir=root)
    doc = json.loads((root / "100" / "dataset.json").read_text())
    doc["images"] = doc["images"][:-1]
    doc["metadata"]["injection_structures"] = [385]
    (root / "100" / "dataset.json").write_text(json.dumps(doc))
    (root / "100" / "grids" / "energy.mhd").unlink()
    (root / "100" / "grids" / "energy.raw").unlink()
    table = pd.read_csv(root / "100" / "structure_unionizes.csv")
    table[table.hemisphere_id != 3].to_csv(root / "100" / "structure_unionizes.csv", index=False)
    doc = json.loads((root / "200" / "dataset.json").read_text())
    doc["metadata"]["gene"] = "Penk"
    (root / "200" / "dataset.json").write_text(json.dumps(doc))
    report = load_paths(empty_database, [root], data_dir=root)
    assert report.total_written > 0
    with empty_database.session() as session:
        ds = session.get(m.SectionDataSet, 100)
        assert len(ds.section_images) == 4
        assert [i.structure_id for i in ds.specimen.injections] == [385]
        assert [f.path for f in ds.well_known_files] == ["100/grids/projection_density_100.nrrd"]
        assert {u.hemisphere_id for u in ds.projection_structure_unionizes} == {1, 2}
        assert [g.acronym for g in session.get(m.SectionDataSet, 200).genes] == ["Penk"]
    assert load_paths(empty_database, [root], data_dir=root).total_written == 0


@pytest.mark.parametrize("breakage", ["bad_json", "unknown_structure", "missing_image", "orphan_unionize"])
def test_malformed_input_changes_nothing(empty_database, store_data, tmp_path, snapshot, breakage):
    root = _copy(store_data, tmp_path, 101)
    load_paths(empty_database, [root], data_dir=root)
    before = snapshot(empty_database)
    good = _copy(store_data, tmp_path / "more", 200)
    broken = _copy(store_data, tmp_path / "broken", 100)
    if breakage == "bad_json":
        (broken / "100" / "dataset.json").write_text('{"schema_version": 1, "id": ')
    elif breakage == "unknown_structure":
        table = pd.read_csv(broken / "100" / "structure_unionizes.csv")
        table.loc[5, "structure_id"] = 123456789
        table.to_csv(broken / "100" / "structure_unionizes.csv", index=False)
    elif breakage == "missing_image":
        next((broken / "100" / "images").iterdir()).unlink()
    else:
        shutil.rmtree(broken / "100")
        (broken / "x_unionize.csv").write_text("experiment_id,structure_id,hemisphere_id,is_injection,"
                                               "projection_density\n555,385,1,False,0.5\n")
    with pytest.raises(LoadError) as info:
        load_paths(empty_database, [good, broken], data_dir=tmp_path)
    assert str(broken) in str(info.value) or "555" in str(info.value)
    assert snapshot(empty_database) == before


def test_command_line(tmp_path, store_data, capsys):
    root = _copy(store_data, tmp_path, 101)
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    assert main([str(root), "--database-url", url, "--data-dir", str(root)]) == 0
    first = capsys.readouterr().out
    assert "1 data set(s)" in first and "section_data_sets: 0 -> 1" in first
    assert main([str(root), "--database-url", url, "--data-dir", str(root)]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert main([str(tmp_path / "absent"), "--database-url", url]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_nan_values_are_null(empty_database, tmp_path):
    table = pd.DataFrame({"section_data_set_id": [7], "structure_id": [385], "hemisphere_id": [3],
                          "expression_density": [np.nan], "expression_energy": [np.inf]})
    path = tmp_path / "structure_unionizes.csv"
    table.to_csv(path, index=False)
    with pytest.raises(LoadError, match="SectionDataSet"):
        load_paths(empty_database, [path], data_dir=tmp_path)
