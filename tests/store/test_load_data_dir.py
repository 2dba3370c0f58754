"""``brainmap load`` and the data directory it owns: copies in, never truth/, nothing created on bad input,
search stores built and updated incrementally, relative paths."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace
from brainmap.io.metaimage import write_metaimage
from brainmap.io.nrrd import write_nrrd
from brainmap.search import MatrixStore
from brainmap.search.grid import SearchGrid
from brainmap.store.database import open_database
from brainmap.store.load import LoadError, load_paths, run_load_command


def _conftest():
    path = Path(__file__).with_name("conftest.py")
    spec = importlib.util.spec_from_file_location("store_conftest_for_data_dir", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture
def outside(tmp_path):
    """Two data set folders outside any data directory, with pipeline grids and a virtual microscope truth/."""
    helpers = _conftest()
    rng = np.random.default_rng(5)
    spec = tmp_path / "spec"
    conn, ish = spec / "conn", spec / "ish"
    helpers.make_data_set(conn, 100141219, plane="coronal", product="connectivity", rng=rng,
                          metadata={"injection_structures": ["VISp"], "injection_volume_mm3": 0.2,
                                    "injection_coordinates_um": [8800, 910, 8070]})
    helpers.make_data_set(ish, 71717640, plane="coronal", product="ish", rng=rng, metadata={"gene": "Calb1"})
    space = SearchGrid.from_reference_space(ReferenceSpace.bundled(100))
    grids = conn / "pipeline" / "grids"
    grids.mkdir(parents=True)
    density = np.zeros(space.shape, np.float32)
    density[60:70, 10:20, 80:90] = 0.5
    write_nrrd(grids / "projection_density_100.nrrd", density, spacing_um=100)
    ish_grids = ish / "pipeline" / "grids"
    ish_grids.mkdir(parents=True)
    energy = np.full((67, 41, 58), -1.0, np.float32)
    energy[20:40, 5:30, 5:50] = rng.random((20, 25, 45))
    write_metaimage(ish_grids / "energy.mhd", energy, spacing=200.0)
    for folder in (conn, ish):
        (folder / "truth").mkdir()
        write_nrrd(folder / "truth" / "signal_density_100.nrrd", density, spacing_um=100)
    return tmp_path, spec


def test_a_load_from_outside_copies_into_the_data_directory_and_serves_only_the_copy(outside, monkeypatch):
    tmp_path, spec = outside
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    assert run_load_command([Path("spec")], data_dir=Path("data"), out=lambda _: None) == 0
    data = tmp_path / "data"
    assert (data / "connectivity" / "100141219" / "pipeline" / "grids" / "projection_density_100.nrrd").is_file()
    assert (data / "ish" / "71717640" / "pipeline" / "grids" / "energy.raw").is_file()
    assert not list(data.rglob("truth"))
    database = open_database(None, data, create=False)
    try:
        with database.engine.connect() as conn:
            paths = [p for (p,) in conn.exec_driver_sql("SELECT path FROM well_known_files")]
            volume = conn.exec_driver_sql("SELECT injection_volume FROM injections").scalar()
            storage = sorted(s for (s,) in conn.exec_driver_sql("SELECT storage_directory FROM section_data_sets"))
    finally:
        database.dispose()
    assert paths and all(not os.path.isabs(p) and (data / p).is_file() for p in paths)
    assert not any("truth" in p for p in paths)
    assert volume == pytest.approx(0.2)  # injection_volume_mm3, the older name, is read too
    assert storage == ["connectivity/100141219", "ish/71717640"]
    # The search stores: one row each, made from the copies.
    projection = MatrixStore.open(data / "search" / "connectivity")
    assert projection.data_set_ids.tolist() == [100141219]
    assert MatrixStore.open(data / "search" / "mouse_coronal").data_set_ids.tolist() == [71717640]
    assert not (data / "search" / "mouse").exists()


def test_a_second_load_replaces_changed_rows_and_leaves_the_rest(outside):
    tmp_path, spec = outside
    data = tmp_path / "data"
    database = open_database(None, data)
    try:
        first = load_paths(database, [spec], data_dir=data)
        again = load_paths(database, [spec], data_dir=data)
        assert first.search and all("1 row(s) added" in line for line in first.search)
        assert all("0 row(s) added, 0 replaced, 1 unchanged" in line for line in again.search)
        before = MatrixStore.open(data / "search" / "connectivity").decode([0]).copy()
        path = spec / "conn" / "pipeline" / "grids" / "projection_density_100.nrrd"
        from brainmap.io.nrrd import read_nrrd

        volume, _ = read_nrrd(path)
        write_nrrd(path, (volume * 2).astype(np.float32), spacing_um=100)
        changed = load_paths(database, [spec], data_dir=data)
    finally:
        database.dispose()
    assert any("search/connectivity: 0 row(s) added, 1 replaced" in line for line in changed.search)
    after = MatrixStore.open(data / "search" / "connectivity").decode([0])
    np.testing.assert_allclose(after[before > 0], 2 * before[before > 0], rtol=1e-6)
    assert json.loads((data / "search" / "connectivity" / "sources.json").read_text()).keys() == {"100141219"}


def test_bad_input_creates_nothing(tmp_path):
    data = tmp_path / "data"
    with pytest.raises(LoadError, match="no such file or folder"):
        run_load_command([tmp_path / "missing"], data_dir=data, out=lambda _: None)
    assert not data.exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text("{not json")
    with pytest.raises(LoadError, match="dataset.json"):
        run_load_command([broken], data_dir=data, out=lambda _: None)
    assert not data.exists()


def test_a_loose_volume_outside_the_data_directory_is_refused(tmp_path):
    loose = tmp_path / "loose.nrrd"
    write_nrrd(loose, np.zeros((2, 2, 2), np.float32), spacing_um=100)
    with pytest.raises(LoadError, match="outside the data directory"):
        run_load_command([loose], data_dir=tmp_path / "data", out=lambda _: None)
    assert not (tmp_path / "data").exists()
