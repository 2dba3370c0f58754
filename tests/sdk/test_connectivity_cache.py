"""MouseConnectivityCache and ReferenceSpaceCache round trips against a real brainmap server: every method's
answer is compared with the server's data (the files it serves, or its raw RMA answer) computed independently."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from brainmap.atlas import ReferenceSpace, StructureTree
from brainmap.atlas.bundled import annotation_path
from brainmap.io.nrrd import read_nrrd
from brainmap.sdk import ApiError, CacheError, MouseConnectivityCache, SdkError


def _raw_rows(sdk_server, query: str, page: int = 2000) -> list[dict]:
    """Every row of a model query, paged by hand with plain httpx (independent of the SDK's paging)."""
    import httpx

    rows: list[dict] = []
    while True:
        text = f"{query},rma::options[num_rows$eq{page}][start_row$eq{len(rows)}][order$eq'id']"
        body = httpx.get(sdk_server.base_uri + "/api/v2/data/query.json", params={"q": text}, timeout=60).json()
        assert body["success"], body.get("msg")
        rows += body["msg"]
        if not body["msg"] or len(rows) >= body["total_rows"]:
            return rows


def _raw_unionizes(sdk_server, ids) -> pd.DataFrame:
    ids = ",".join(str(i) for i in ids)
    return pd.DataFrame(_raw_rows(sdk_server, f"model::ProjectionStructureUnionize,rma::criteria,"
                                              f"[section_data_set_id$in{ids}]"))


@pytest.fixture()
def mcc(mcc_factory):
    return mcc_factory()


def test_experiments(mcc, sdk_server):
    experiments = mcc.get_experiments()
    ids = {e["id"] for e in experiments}
    assert ids == set(sdk_server.data.connectivity_ids) and len(experiments) == len(ids)
    by_id = {e["id"]: e for e in experiments}
    assert by_id[100]["transgenic_line"] == "Syt6-Cre_KI148" and by_id[100]["structure_abbrev"] == "VISp"
    assert by_id[100]["injection_structures"] == [385, 409]
    assert [by_id[101]["injection_x"], by_id[101]["injection_y"], by_id[101]["injection_z"]] == [3500, 1500, 7500]
    assert by_id[101]["injection_volume"] == pytest.approx(0.5) and by_id[101]["gender"] == "F"

    assert [e["id"] for e in mcc.get_experiments(cre=True)] == [100]
    assert [e["id"] for e in mcc.get_experiments(cre=["syt6-cre_ki148"])] == [100]
    assert ids - {e["id"] for e in mcc.get_experiments(cre=False)} == {100}
    tree = mcc.get_structure_tree()
    visual = tree.get_structures_by_acronym(["VIS"])[0]["id"]
    in_visual = {e["id"] for e in mcc.get_experiments(injection_structure_ids=[visual])}
    assert in_visual == {e["id"] for e in experiments if tree.structure_descends_from(e["structure_id"], visual)}
    assert 100 in in_visual and 101 not in in_visual and 112672974 not in in_visual  # ENTm

    frame = mcc.get_experiments(dataframe=True, cre=False)
    assert isinstance(frame, pd.DataFrame) and set(frame.index) == ids - {100}
    assert frame.loc[101, "structure_abbrev"] == "MOp"
    on_disk = json.loads((mcc.manifest_file.parent / "experiments.json").read_text())
    assert len(on_disk) == len(ids)


def test_unionizes_and_filters(mcc, sdk_server):
    raw = _raw_unionizes(sdk_server, [100])
    mine = mcc.get_experiment_structure_unionizes(100)
    assert len(mine) == len(raw) > 1000 and set(mine["experiment_id"]) == {100}
    merged = mine.merge(raw, on="id", suffixes=("", "_raw"))
    assert len(merged) == len(raw)
    for column in ("structure_id", "hemisphere_id", "is_injection", "projection_volume", "projection_density"):
        np.testing.assert_array_equal(merged[column].to_numpy(), merged[column + "_raw"].to_numpy())

    tree = mcc.get_structure_tree()
    isocortex = tree.get_structures_by_acronym(["Isocortex"])[0]["id"]
    below = {d for d in tree.descendant_ids([isocortex])[0]}
    filtered = mcc.get_experiment_structure_unionizes(100, is_injection=False, structure_ids=[isocortex],
                                                      include_descendants=True, hemisphere_ids=[2])
    expected = raw[(~raw.is_injection) & raw.structure_id.isin(below) & (raw.hemisphere_id == 2)]
    assert sorted(filtered["id"]) == sorted(expected["id"]) and len(expected) > 10
    only = mcc.filter_structure_unionizes(mine, structure_ids=[isocortex])
    assert set(only["structure_id"]) == {isocortex}

    ids = sorted(sdk_server.data.connectivity_ids)
    every = mcc.get_structure_unionizes(ids, is_injection=True)
    raw_all = _raw_unionizes(sdk_server, ids)
    assert sorted(every["id"]) == sorted(raw_all[raw_all.is_injection]["id"])


def test_projection_matrix_is_the_pivot_of_the_unionizes(mcc, sdk_server):
    ids = sorted(sdk_server.data.connectivity_ids)
    raw = _raw_unionizes(sdk_server, ids)
    raw = raw[~raw.is_injection]
    structures = [385, 409, 997, 315, 1009, 672]
    pivot = raw.pivot_table(index="section_data_set_id", columns=["hemisphere_id", "structure_id"],
                            values="normalized_projection_volume", aggfunc="first")
    wanted = pd.MultiIndex.from_product([[1, 2], structures])
    expected = pivot.reindex(index=ids, columns=wanted).to_numpy()

    result = mcc.get_projection_matrix(ids, structures, [1, 2], parameter="normalized_projection_volume")
    assert result["rows"] == ids and result["matrix"].shape == (len(ids), 12)
    np.testing.assert_array_equal(result["matrix"], expected)
    assert np.isfinite(expected).sum() > 20
    assert result["columns"][0] == {"hemisphere_id": 1, "structure_id": 385, "label": "VISp-L"}
    assert result["columns"][6] == {"hemisphere_id": 2, "structure_id": 385, "label": "VISp-R"}

    frame = mcc.get_projection_matrix(ids, structures, [1, 2], dataframe=True)["matrix"]
    assert list(frame.index) == ids and frame.columns[1] == "VISl-L"
    default = mcc.get_projection_matrix(ids[:3])
    assert {c["hemisphere_id"] for c in default["columns"]} <= {1, 2, 3} and default["matrix"].shape[1] > 100
    with pytest.raises(ValueError, match="no unionize column 'nope'"):
        mcc.get_projection_matrix(ids, structures, parameter="nope")


def test_rank_structures(mcc, sdk_server):
    """AllenSDK's defaults: the summary structures (set 167587189), hemispheres 1 and 2, values above 0.01."""
    ids = sorted(sdk_server.data.connectivity_ids)[:4]
    raw = _raw_unionizes(sdk_server, ids)
    summary = {int(s["id"]) for s in StructureTree.bundled().get_structures_by_set_id([167587189])}
    for ranked, structures in ((mcc.rank_structures(ids, is_injection=False, n=4), summary),
                               (mcc.rank_structures(ids, False, sorted(set(raw.structure_id)), [1, 2], n=4,
                                                    threshold=0.01), set(raw.structure_id))):
        assert len(ranked) == len(ids)
        for experiment_id, top in zip(ids, ranked):
            rows = raw[(raw.section_data_set_id == experiment_id) & ~raw.is_injection
                       & raw.hemisphere_id.isin([1, 2]) & raw.structure_id.isin(structures)
                       & (raw.normalized_projection_volume > 0.01)]
            expected = rows.sort_values(["normalized_projection_volume", "structure_id", "hemisphere_id"],
                                        ascending=[False, True, True]).head(4)
            assert [r["id"] for r in top] == list(expected["id"])
        assert sum(map(len, ranked)) > 0 or structures is summary  # (this server's rows hold few summary structures)
    assert summary == set(mcc.default_structure_ids) and len(summary) == 316


def test_volumes(mcc, sdk_server):
    expected = sdk_server.data.projection_101
    for name, method in (("projection_density", mcc.get_projection_density),
                         ("injection_density", mcc.get_injection_density), ("data_mask", mcc.get_data_mask)):
        volume, header = method(101)
        np.testing.assert_array_equal(volume, expected[name])
        np.testing.assert_array_equal(np.diag(np.asarray(header["space directions"], dtype=float)), [100] * 3)
        assert (mcc.manifest_file.parent / "experiment_101" / f"{name}_100.nrrd").exists()
    with pytest.raises(ApiError, match="no injection_fraction volume at 100 um") as error:
        mcc.get_injection_fraction(101)
    assert error.value.status == 404


def test_affine_parameters(mcc, sdk_server):
    row = _raw_rows(sdk_server, "model::Alignment3d,rma::criteria,[section_data_set_id$eq100]")[0]
    trv = mcc.get_affine_parameters(100)
    assert trv.shape == (4, 3)
    np.testing.assert_array_equal(trv.ravel(), [row[f"trv_{k:02d}"] for k in range(12)])
    np.testing.assert_array_equal(mcc.get_affine_parameters(100, direction="tvr").ravel(),
                                  [row[f"tvr_{k:02d}"] for k in range(12)])
    with pytest.raises(SdkError, match="direction"):
        mcc.get_affine_parameters(100, direction="sideways")


def test_reference_space_files(mcc, mcc_factory, sdk_server, tmp_path, space100):
    annotation, header = mcc.get_annotation_volume()
    assert (mcc.manifest_file.parent / "annotation" / "ccf_2017" / "annotation_100.nrrd").read_bytes() == \
        annotation_path(100).read_bytes()
    np.testing.assert_array_equal(annotation, space100.annotation)
    tree = mcc.get_structure_tree()
    bundled = StructureTree.bundled()
    assert isinstance(tree, StructureTree) and sorted(tree.node_ids()) == sorted(bundled.node_ids())
    visp = tree.get_structures_by_acronym(["VISp"])[0]
    assert sorted(visp["structure_set_ids"]) == sorted(bundled.get_structures_by_acronym(["VISp"])[0]
                                                       ["structure_set_ids"])
    assert tree.get_structure_path(385) == bundled.get_structure_path(385)
    space = mcc.get_reference_space()
    assert isinstance(space, ReferenceSpace) and space.shape == space100.shape
    mask, _ = mcc.get_structure_mask(315)
    np.testing.assert_array_equal(mask.astype(bool), space100.make_structure_mask([315]))
    template, header = mcc.get_template_volume()  # the server's data directory holds one at 100 um
    expected, _ = read_nrrd(sdk_server.data.root / "average_template" / "average_template_100.nrrd")
    np.testing.assert_array_equal(template, expected)
    assert template.shape == space100.shape and header["space directions"][0][0] == 100
    with pytest.raises(ApiError, match="no average template at 50 um") as error:
        mcc_factory(resolution=50, manifest_file=tmp_path / "cache50" / "manifest.json").get_template_volume()
    assert error.value.status == 404 and "average_template/" in str(error.value)


def test_manifest_paths_resolutions_and_misuse(mcc_factory, sdk_server, tmp_path):
    mcc = mcc_factory()
    manifest = json.loads(mcc.manifest_file.read_text())
    specs = {e["key"]: e["spec"] for e in manifest["manifest"]}
    for key in ("ANNOTATION", "TEMPLATE", "VOLUME", "STRUCTURE_MASK"):
        assert "{resolution}" in specs[key]
    assert manifest["brainmap"]["base_uri"] == sdk_server.base_uri
    coarse = mcc_factory(resolution=50)
    assert coarse.get_annotation_volume()[0].shape == (264, 160, 228)
    assert mcc.get_annotation_volume()[0].shape == (132, 80, 114)  # both resolutions side by side

    with pytest.raises(CacheError, match="caches files of"):
        mcc_factory(base_uri="http://127.0.0.1:9")
    with pytest.raises(SdkError, match="resolution must be one of"):
        mcc_factory(resolution=30)
    nocache = MouseConnectivityCache(resolution=100, cache=False, base_uri=sdk_server.base_uri,
                                     manifest_file=tmp_path / "none" / "manifest.json", progress=False)
    assert len(nocache.get_experiments()) == len(sdk_server.data.connectivity_ids)
    with pytest.raises(CacheError, match="file_name"):
        nocache.get_projection_density(101)
    volume, _ = nocache.get_projection_density(101, file_name=tmp_path / "pd.nrrd")
    np.testing.assert_array_equal(volume, sdk_server.data.projection_101["projection_density"])
    assert not (tmp_path / "none" / "experiments.json").exists()
