"""The projection-matrix pivot and the unionize filters on small hand-made tables (no server)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainmap.sdk.tables import read_table, records_to_columns, table_bytes
from brainmap.sdk.unionizes import filter_unionizes, projection_matrix


def _table(experiment_id, rows):
    return records_to_columns([{"experiment_id": experiment_id, "structure_id": s, "hemisphere_id": h,
                                "is_injection": inj, "projection_volume": v} for s, h, inj, v in rows])


def test_pivot_by_hand():
    tables = [_table(7, [(385, 1, False, 0.5), (385, 2, False, 0.25), (409, 1, True, 9.0), (409, 1, False, 0.125)]),
              _table(3, [(409, 2, False, 2.0), (997, 1, False, 4.0)])]
    matrix, columns = projection_matrix(tables, [7, 3], [385, 409], [1, 2], "projection_volume",
                                        {385: "VISp", 409: "VISl"})
    assert [c["label"] for c in columns] == ["VISp-L", "VISl-L", "VISp-R", "VISl-R"]
    np.testing.assert_array_equal(matrix, [[0.5, 0.125, 0.25, np.nan], [np.nan, np.nan, np.nan, 2.0]])
    matrix, columns = projection_matrix(tables, [7, 3], None, None, "projection_volume", None,
                                        {997: 0, 409: 5, 385: 9})
    assert [(c["hemisphere_id"], c["structure_id"]) for c in columns] == \
        [(1, 997), (1, 409), (1, 385), (2, 997), (2, 409), (2, 385)]
    with pytest.raises(ValueError, match="read for experiment 3 holds rows of experiment 7"):
        projection_matrix([tables[0], tables[0]], [7, 3], None, None, "projection_volume")


def test_filters():
    frame = pd.DataFrame({"structure_id": [1, 2, 3, 1], "hemisphere_id": [1, 2, 3, 2],
                          "is_injection": [True, False, False, False]})
    assert filter_unionizes(frame, is_injection=False, hemisphere_ids=[2]).index.tolist() == [1, 3]
    assert filter_unionizes(frame, structure_ids=[1, 3]).index.tolist() == [0, 2, 3]


def test_column_table_round_trip(tmp_path):
    table = records_to_columns([{"id": 1, "name": "a", "x": 0.5, "flag": None}, {"id": 2, "name": None, "x": None}])
    path = tmp_path / "t.columns"
    path.write_bytes(table_bytes(table))
    back = read_table(path)
    assert list(back) == ["id", "name", "x", "flag"] and back["id"].dtype == np.int64
    assert back["name"].tolist() == ["a", ""] and np.isnan(back["x"][1]) and np.isnan(back["flag"]).all()
    assert list(read_table(path, ["x"])) == ["x"]
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(Exception, match="truncated"):
        read_table(path)
