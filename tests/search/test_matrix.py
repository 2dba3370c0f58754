"""The search matrix store: create, append, encodings, metadata, crash safety, subsets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainmap.errors import FormatError
from brainmap.search import GRID_VOXELS, MatrixStore, SearchInputError, UnknownDataSetError
from brainmap.search.matrix import GridSpec, decode_uint8, encode_uint8


def _rows(rng, n, width, missing=0.1):
    x = rng.lognormal(0.0, 1.0, (n, width)) * (rng.random((n, width)) < 0.7)
    x[rng.random((n, width)) < missing] = np.nan
    return x


def test_float32_store_round_trips_values_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    columns = np.arange(0, 3000, 3)
    store = MatrixStore.create(tmp_path / "m", columns, encoding="float32")
    assert store.n_rows == 0 and store.raw.shape == (0, 1000)
    x = _rows(rng, 5, 1000)
    x[0, :4] = -1.0  # Allen's no-data value
    positions = store.append(x, [11, 12, 13, 14, 15], gene=["A", "B", None, "D", "E"], plane="coronal")
    assert list(positions) == [0, 1, 2, 3, 4]
    reopened = MatrixStore.open(tmp_path / "m")
    expected = x.astype(np.float32).astype(np.float64)
    expected[0, :4] = np.nan
    np.testing.assert_array_equal(reopened.decode(), expected)
    np.testing.assert_array_equal(reopened.values_of(13), expected[2])
    assert reopened.row_index(14) == 3 and reopened.row_index("15") == 4
    assert reopened.metadata(1, "gene") == "B" and reopened.metadata(2, "gene") is None
    assert reopened.metadata(0, "plane") == "coronal" and reopened.metadata(0, "nothing") is None
    np.testing.assert_array_equal(reopened.columns, columns)
    assert reopened.grid == GridSpec.ish() and reopened.encoding == "float32"
    assert not reopened.raw.flags.writeable
    with pytest.raises(UnknownDataSetError, match="99"):
        reopened.row_index(99)
    with pytest.raises(UnknownDataSetError):
        reopened.row_index("Pdyn")


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_uint8_codes_are_square_root_companded_nearest_codes():
    rng = np.random.default_rng(1)
    x = _rows(rng, 40, 2000)
    x[3] = 2.5  # constant row
    x[4] = np.nan  # a row without data
    codes, offset, scale = encode_uint8(x)
    data = ~np.isnan(x)
    assert (codes[~data] == 0).all() and (codes[data] >= 1).all()
    assert codes[data].max() == 255
    decoded = decode_uint8(codes, offset, scale)
    np.testing.assert_array_equal(np.isnan(decoded), ~data)
    np.testing.assert_allclose(decoded[3], 2.5)
    # Each value got the code whose reconstruction is nearest (compare all 255 codes).
    q = np.arange(1, 256.0)
    recon = offset[:, None, None] + scale[:, None, None] * q ** 2
    best = np.abs(recon - x.astype(np.float32)[:, :, None]).min(axis=2)
    err = np.abs(decoded - x.astype(np.float32))
    assert np.nanmax(err - best) < 1e-6 * np.nanmax(np.abs(x))
    # The step is finest at low values: the error of small values is far below the linear 8-bit step.
    low = data & (x < np.nanpercentile(x, 50, axis=1, keepdims=True))
    linear_step = (np.nanmax(x, axis=1) - np.nanmin(x, axis=1)) / 254
    assert (err[low] < 0.1 * np.broadcast_to(linear_step[:, None], x.shape)[low]).mean() > 0.9


def test_uint8_encoding_keeps_pearson_within_1e3_on_heavy_tailed_rows(reference_pearson):
    rng = np.random.default_rng(2)
    base = rng.lognormal(0.0, 1.2, 26_000) * (rng.random(26_000) < 0.6)
    x = np.stack([base * rng.lognormal(0.0, 0.3, base.size) for _ in range(6)])
    x[:, ::37] = np.nan
    codes, offset, scale = encode_uint8(x)
    d = decode_uint8(codes, offset, scale)
    for i in range(1, 6):
        r_true, _ = reference_pearson(x[0], x[i], 3)
        r_coded, _ = reference_pearson(d[0], d[i], 3)
        assert abs(r_true - r_coded) < 1e-3


def test_appending_in_batches_equals_one_append_and_counts_planes(tmp_path):
    rng = np.random.default_rng(3)
    x = _rows(rng, 9, 500)
    ids = np.arange(100, 109)
    planes = ["sagittal"] * 6 + ["coronal"] * 3
    one = MatrixStore.create(tmp_path / "one", np.arange(500), encoding="uint8")
    one.append(x, ids, gene=[f"G{i}" for i in range(9)], plane=planes)
    many = MatrixStore.create(tmp_path / "many", np.arange(500), encoding="uint8")
    for a, b in ((0, 2), (2, 3), (3, 9)):
        many.append(x[a:b], ids[a:b], gene=[f"G{i}" for i in range(a, b)], plane=planes[a:b])
    many = MatrixStore.open(many.path)
    np.testing.assert_array_equal(many.raw, one.raw)
    np.testing.assert_array_equal(many.row_scale, one.row_scale)
    assert many.rows.equals(one.rows)
    counts, n = many.column_data_counts()
    np.testing.assert_array_equal(counts, (~np.isnan(x)).sum(axis=0))
    assert n == 9
    coronal, n_coronal = many.column_data_counts("coronal")
    np.testing.assert_array_equal(coronal, (~np.isnan(x[6:])).sum(axis=0))
    assert n_coronal == 3 and sorted(many.planes) == ["coronal", "sagittal"]


def test_append_validates_its_input(tmp_path):
    store = MatrixStore.create(tmp_path / "m", np.arange(10, 20), encoding="uint8")
    store.append(np.ones((1, 10)), [1])
    with pytest.raises(SearchInputError, match="already"):
        store.append(np.ones((1, 10)), [1])
    with pytest.raises(SearchInputError, match="repeat"):
        store.append(np.ones((2, 10)), [2, 2])
    with pytest.raises(SearchInputError, match="columns"):
        store.append(np.ones((1, 11)), [3])
    with pytest.raises(SearchInputError, match=r"\(2, 10\)"):
        store.append(np.ones((1, 10)), [3, 4])
    with pytest.raises(SearchInputError, match="infinite"):
        store.append(np.full((1, 10), np.inf), [3])
    with pytest.raises(SearchInputError, match="metadata"):
        store.append(np.ones((1, 10)), [3], species="mouse")
    with pytest.raises(SearchInputError, match="2 values"):
        store.append(np.ones((1, 10)), [3], gene=["a", "b"])
    assert MatrixStore.open(store.path).n_rows == 1  # nothing of the failed appends was committed
    # A full-grid row (Allen's energy.raw) is accepted: the store takes its own columns.
    grid_row = np.arange(GRID_VOXELS, dtype=np.float64)[None, :]
    store.append(grid_row, [3])
    np.testing.assert_allclose(store.values_of(3), np.arange(10, 20), rtol=2e-2)
    with pytest.raises(ValueError, match="increasing"):
        MatrixStore.create(tmp_path / "bad", [3, 2, 1])
    with pytest.raises(FileExistsError):
        MatrixStore.create(tmp_path / "m", [1, 2])
    with pytest.raises(FormatError, match="matrix.json"):
        MatrixStore.open(tmp_path)


def test_an_interrupted_append_leaves_the_previous_state_and_is_overwritten(tmp_path):
    rng = np.random.default_rng(4)
    store = MatrixStore.create(tmp_path / "m", np.arange(50), encoding="uint8")
    x = _rows(rng, 4, 50)
    store.append(x[:2], [1, 2], gene=["a", "b"])
    before = store.raw.copy()
    # Simulate a crash after the values and the row table were written but before matrix.json:
    with open(store.path / "values.bin", "ab") as fh:
        fh.write(b"\x07" * 75)
    with open(store.path / "rows.csv", "a", encoding="utf-8") as fh:
        fh.write("999,zzz,\n")
    reopened = MatrixStore.open(store.path)
    assert reopened.n_rows == 2 and list(reopened.data_set_ids) == [1, 2]
    np.testing.assert_array_equal(reopened.raw, before)
    reopened.append(x[2:], [3, 4], gene=["c", "d"])
    again = MatrixStore.open(store.path)
    assert list(again.data_set_ids) == [1, 2, 3, 4]
    assert (store.path / "values.bin").stat().st_size == 4 * 50
    np.testing.assert_allclose(again.decode()[2:], decode_uint8(*encode_uint8(x[2:])))
    meta = json.loads((store.path / "matrix.json").read_text())
    assert meta["n_rows"] == 4 and meta["encoding"] == "uint8"


def test_subset_copies_codes_without_reencoding(tmp_path, stores, ish_grid):
    full = stores["uint8"]
    hpf = ish_grid.structure_voxels("HPF")
    ids = full.data_set_ids[[5, 1, 7]]
    sub = full.subset(tmp_path / "hpf", hpf, data_set_ids=ids)
    cols = full.column_positions(hpf)
    np.testing.assert_array_equal(sub.columns, full.columns[cols])
    np.testing.assert_array_equal(sub.raw, full.raw[[5, 1, 7]][:, cols])
    np.testing.assert_array_equal(sub.decode(), full.decode([5, 1, 7])[:, cols])
    assert list(sub.data_set_ids) == list(ids)
    counts, _ = sub.column_data_counts()
    np.testing.assert_array_equal(counts, (sub.raw != 0).sum(axis=0))
    with pytest.raises(SearchInputError, match="none of the given voxels"):
        full.subset(tmp_path / "none", [GRID_VOXELS + 5])
    assert "uint8" in repr(sub) and "3 expression rows" in repr(sub)
