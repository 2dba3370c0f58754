"""Image sync over HTTP: each route answers what :mod:`brainmap.specimen.sync` computes from the data set folder,
in Allen's response shapes."""

from __future__ import annotations

import pytest

from brainmap.specimen import sync
from brainmap.specimen.folder import read_dataset


@pytest.fixture(scope="module")
def folders(server_data):
    return {ds_id: read_dataset(folder, check_files=False) for ds_id, folder in server_data.store.folders.items()}


def test_image_to_reference(http, folders):
    ds = folders[100]
    image = ds.usable_images()[0]
    body = http.get(f"/api/v2/image_to_reference/{image.id}.json", params={"x": 3.5, "y": 2.25}).json()
    expected = sync.image_to_reference(ds, image, 3.5, 2.25).to_dict()
    assert body["success"] is True
    assert body["msg"]["image_to_reference"] == pytest.approx(expected, abs=1e-6)


def test_reference_to_image(http, folders):
    point = sync.image_to_reference(folders[100], folders[100].usable_images()[1], 4.0, 3.0).to_array()
    body = http.get("/api/v2/reference_to_image/9.json", params={
        "x": point[0], "y": point[1], "z": point[2], "section_data_set_ids": "100,101"}).json()
    records = [r["image_sync"] for r in body["msg"]]
    assert [r["section_data_set_id"] for r in records] == [100, 101]
    for record, ds_id in zip(records, (100, 101)):
        expected = sync.reference_to_image(folders[ds_id], point).to_dict()
        assert record == pytest.approx(expected, abs=1e-6)
    assert records[0]["x"] == pytest.approx(4.0, abs=1e-6) and records[0]["y"] == pytest.approx(3.0, abs=1e-6)


def test_image_to_image(http, folders):
    source = folders[200]
    image = source.usable_images()[0]
    body = http.get(f"/api/v2/image_to_image/{image.id}.json",
                    params={"x": 2.0, "y": 1.5, "section_data_set_ids": "202,100"}).json()
    expected = sync.image_to_image(source, image, 2.0, 1.5, [folders[202], folders[100]])
    assert len(body["msg"]) == 2
    for record, want in zip(body["msg"], expected):
        assert record["image_sync"] == pytest.approx(want.to_dict(), abs=1e-6)


def test_structure_to_image(http, folders, space100):
    body = http.get("/api/v2/structure_to_image/100.json", params={"structure_ids": "385,MOp"}).json()
    assert len(body["msg"]) == 2
    mop = space100.structure_tree.get_structures_by_acronym(["MOp"])[0]["id"]
    for record, sid in zip(body["msg"], (385, mop)):
        expected = sync.structure_to_image(folders[100], sid, space100).to_dict()
        assert record["image_sync"] == pytest.approx(expected, abs=1e-6)
    left = http.get("/api/v2/structure_to_image/100.json", params={"structure_ids": "385", "hemisphere_id": 1})
    expected = sync.structure_to_image(folders[100], 385, space100, hemisphere_id=1).to_dict()
    assert left.json()["msg"][0]["image_sync"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("url, status, words", [
    ("/api/v2/image_to_reference/999999.json?x=1&y=1", 404, "SectionImage 999999"),
    ("/api/v2/image_to_reference/100000.json?x=abc&y=1", 400, "x"),
    ("/api/v2/image_to_reference/100000.json?x=nan&y=1", 400, "x"),
    ("/api/v2/image_to_reference/100000.json?y=1", 400, "x"),
    ("/api/v2/reference_to_image/10.json?x=1&y=1&z=1&section_data_set_ids=100", 404, "reference space 9"),
    ("/api/v2/reference_to_image/9.json?x=1&y=1&z=1&section_data_set_ids=100;drop", 400, "ids"),
    ("/api/v2/reference_to_image/9.json?x=1&y=1&z=1&section_data_set_ids=4242", 404, "4242"),
    ("/api/v2/image_to_image/100000.json?x=1&y=1&section_data_set_ids=", 400, "ids"),
    ("/api/v2/structure_to_image/100.json?structure_ids=NOPE", 400, "NOPE"),
    ("/api/v2/structure_to_image/100.json?structure_ids=385&hemisphere_id=7", 400, "hemisphere_id"),
    ("/api/v2/structure_to_image/4242.json?structure_ids=385", 404, "4242"),
])
def test_sync_errors(http, url, status, words):
    response = http.get(url)
    assert response.status_code == status, response.text
    assert words in response.json()["msg"]
