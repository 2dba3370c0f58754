"""Loads that cannot lose data (issue 17): a unionize table cut mid-row is refused whole, before anything is
written (it used to load with exit 0, its last row truncated, and a re-load deleted the rows the cut removed);
two loads into one new database at once both finish (the loser used to die with a raw IntegrityError /
OperationalError)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brainmap.errors import FormatError
from brainmap.store.validate import check_csv_table


def _unionize_rows(database) -> int:
    from sqlalchemy import func, select

    from brainmap.store import models as m

    with database.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(m.ProjectionStructureUnionize.__table__)).scalar_one()


def _cut_copy(store_data, tmp_path: Path, cut) -> Path:
    """A copy of connectivity data set 100's folder whose unionize table is ``cut(bytes)``."""
    source = store_data.folders[100]
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    table = copy / "structure_unionizes.csv"
    table.write_bytes(cut(table.read_bytes()))
    return copy


def _mid_row(data: bytes) -> bytes:
    """Cut the last row before its last two fields (value columns: they would load as NULLs)."""
    body = data.rstrip(b"\n")
    last_start = body.rindex(b"\n") + 1
    line = body[last_start:]
    return data[: last_start + line[: line.rindex(b",")].rindex(b",")] + b"\n"


def _mid_number(data: bytes) -> bytes:
    """Cut inside the last field of the last row (the right width, a truncated number, no final newline)."""
    return data.rstrip(b"\n")[:-2]


@pytest.mark.parametrize("cut", [_mid_row, _mid_number], ids=["mid-row", "mid-number"])
def test_a_cut_unionize_table_changes_nothing(empty_database, store_data, tmp_path, snapshot, cut):
    from brainmap.store.load import LoadError, load_paths

    load_paths(empty_database, [store_data.root], data_dir=store_data.root)
    before = snapshot(empty_database)
    rows = _unionize_rows(empty_database)
    assert rows > 1000
    folder = _cut_copy(store_data, tmp_path, cut)
    with pytest.raises(LoadError) as error:
        load_paths(empty_database, [folder], data_dir=store_data.root)
    assert "structure_unionizes.csv" in str(error.value)
    assert snapshot(empty_database) == before  # the data set's other rows are all there


def test_the_command_exits_2_naming_the_file(store_data, tmp_path, capsys):
    from brainmap.store.load import main

    folder = _cut_copy(store_data, tmp_path, _mid_row)
    url = f"sqlite:///{tmp_path / 'new.sqlite'}"
    assert main([str(folder), "--database-url", url, "--data-dir", str(store_data.root)]) == 2
    err = capsys.readouterr().err
    assert "structure_unionizes.csv" in err and "line" in err and "Traceback" not in err


def test_check_csv_table(tmp_path):
    good = tmp_path / "good_unionize.csv"
    good.write_text("structure_id,hemisphere_id,projection_density\n385,1,0.5\n385,2,0.25\n")
    check_csv_table(good)
    for name, text, words in [
        ("short.csv", "structure_id,hemisphere_id,projection_density\n385,1,0.5\n385,2\n", "line 3 has 2 fields"),
        ("long.csv", "structure_id,hemisphere_id,projection_density\n385,1,0.5,9\n", "line 2 has 4 fields"),
        ("cut.csv", "structure_id,hemisphere_id,projection_density\n385,1,0.5\n385,2,0.2", "without a newline"),
        ("empty_id.csv", "structure_id,hemisphere_id,projection_density\n,1,0.5\n", "structure_id is empty"),
        ("empty.csv", "", "empty"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(FormatError, match=words):
            check_csv_table(path)
    gz = tmp_path / "cut_unionize.csv.gz"
    gz.write_bytes(gzip.compress(good.read_bytes())[:-12])
    with pytest.raises(FormatError, match="cut_unionize.csv.gz"):
        check_csv_table(gz)


LOAD_SCRIPT = "import sys\nfrom brainmap.store.load import main\nsys.exit(main(sys.argv[1:]))\n"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_first_loads_at_once(backend, store_data, tmp_path, request, tmp_path_factory, counts):
    """Both loads into one new database finish with exit 0 (the second waits for the first); the database holds
    what one load gives."""
    from brainmap.store.database import open_database

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    command = [sys.executable, "-c", LOAD_SCRIPT, str(store_data.root), "--database-url", url, "--data-dir",
               str(store_data.root)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err.decode()[-2000:]
        assert b"Error" not in err, err.decode()[-2000:]
    database = open_database(url)
    try:
        reference = open_database(f"sqlite:///{tmp_path / 'once.sqlite'}")
        try:
            from brainmap.store.load import load_paths

            load_paths(reference, [store_data.root], data_dir=store_data.root)
            assert counts(database) == counts(reference)
        finally:
            reference.dispose()
    finally:
        database.dispose()
