"""Files over HTTP: grid-data zips, NRRD grid volumes, registered files, the structure graph and the annotation
volumes -- byte for byte, with Content-Length, ETags and ranges."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

from brainmap.atlas import StructureTree
from brainmap.atlas.bundled import annotation_path


def test_grid_download_zip_of_metaimages(http, server_data):
    from brainmap.io.grid_bundle import read_grid_bundle

    response = http.get("/grid_data/download/200", params={"include": "energy,density,intensity"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert int(response.headers["content-length"]) == len(response.content)
    volumes = read_grid_bundle(io.BytesIO(response.content))
    assert sorted(volumes) == ["density", "energy", "intensity"]
    for name, expected in server_data.ish_grids.items():
        data = volumes[name][0] if isinstance(volumes[name], tuple) else volumes[name]
        np.testing.assert_array_equal(np.asarray(data), expected)
    energy_only = http.get("/grid_data/download/200")
    assert sorted(read_grid_bundle(io.BytesIO(energy_only.content))) == ["energy"]
    etag = response.headers["etag"]
    again = http.get("/grid_data/download/200", params={"include": "energy,density,intensity"},
                     headers={"If-None-Match": etag})
    assert again.status_code == 304


def test_grid_download_from_nrrd(http, server_data):
    from brainmap.io.grid_bundle import read_grid_bundle

    response = http.get("/grid_data/download/101", params={"include": "projection_density,injection_density"})
    volumes = read_grid_bundle(io.BytesIO(response.content))
    data = volumes["projection_density"]
    data = data[0] if isinstance(data, tuple) else data
    np.testing.assert_array_equal(np.asarray(data), server_data.projection_101["projection_density"])


def test_download_file_streams_the_nrrd(http, server_data):
    from brainmap.io.nrrd import read_nrrd

    path = server_data.store.folders[101] / "grids" / "projection_density_100.nrrd"
    response = http.get("/grid_data/download_file/101", params={"image": "projection_density", "resolution": 100})
    assert response.status_code == 200
    assert response.content == path.read_bytes()
    assert int(response.headers["content-length"]) == path.stat().st_size
    assert response.headers["etag"] == f'"{hashlib.sha256(path.read_bytes()).hexdigest()}"'
    assert "projection_density_100.nrrd" in response.headers["content-disposition"]
    with open(path.with_suffix(".check.nrrd"), "wb") as fh:
        fh.write(response.content)
    data, _ = read_nrrd(path.with_suffix(".check.nrrd"))
    path.with_suffix(".check.nrrd").unlink()
    np.testing.assert_array_equal(data, server_data.projection_101["projection_density"])
    partial = http.get("/grid_data/download_file/101", params={"image": "projection_density"},
                       headers={"Range": "bytes=0-99"})
    assert partial.status_code == 206 and partial.content == path.read_bytes()[:100]
    cached = http.get("/grid_data/download_file/101", params={"image": "projection_density"},
                      headers={"If-None-Match": response.headers["etag"]})
    assert cached.status_code == 304


@pytest.mark.parametrize("url, status, words", [
    ("/grid_data/download/999", 404, "no SectionDataSet 999"),
    ("/grid_data/download/200?include=nothing", 404, "energy"),
    ("/grid_data/download/200?include=energy;rm", 400, "volume name"),
    ("/grid_data/download_file/101?image=projection_density&resolution=10", 404, "projection_density_100"),
    ("/grid_data/download_file/101?image=projection_density&resolution=25", 404,
     "projection_density exists at 100 um"),
    ("/grid_data/download_file/101?image=../../etc/passwd", 400, "volume name"),
    ("/grid_data/download_file/abc", 400, "section_data_set_id"),
    ("/api/v2/well_known_file_download/999999", 404, "999999"),
])
def test_file_errors(http, url, status, words):
    response = http.get(url)
    assert response.status_code == status, response.text
    assert words in response.json()["msg"]


def test_well_known_file_download(http, server):
    from sqlalchemy import select

    from brainmap.store import models as m

    with server.database.engine.connect() as connection:
        row = connection.execute(select(m.WellKnownFile.id, m.WellKnownFile.path)
                                 .where(m.WellKnownFile.path.like("%grid_data.zip"))).first()
    response = http.get(f"/api/v2/well_known_file_download/{row.id}")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert response.content == (server.data.root / row.path).read_bytes()


def test_structure_graph(http):
    response = http.get("/api/v2/structure_graph_download/1.json")
    body = response.json()
    assert body["success"] is True and len(body["msg"]) == 1 and body["msg"][0]["acronym"] == "root"
    grey = body["msg"][0]["children"][0]
    assert grey["acronym"] == "grey" and grey["parent_structure_id"] == 997 and grey["children"]
    tree = StructureTree.from_structure_graph(body)
    bundled = StructureTree.bundled()
    assert len(tree) == len(bundled) == 1327
    assert tree.get_structures_by_acronym(["VISp"])[0]["structure_id_path"] == \
        bundled.get_structures_by_acronym(["VISp"])[0]["structure_id_path"]
    assert http.get("/api/v2/structure_graph_download/2.json").status_code == 404


@pytest.mark.parametrize("url", ["/api/v2/annotation/100",
                                 "/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/"
                                 "annotation_100.nrrd"])
def test_annotation_volumes(http, url):
    response = http.get(url)
    expected = annotation_path(100).read_bytes()
    assert response.status_code == 200 and response.content == expected
    assert response.headers["etag"] == f'"{hashlib.sha256(expected).hexdigest()}"'
    assert http.get(url.replace("100", "25")).headers["content-length"] == str(annotation_path(25).stat().st_size)


def test_annotation_errors(http):
    assert http.get("/api/v2/annotation/7").status_code == 404
    missing = http.get("/api/v2/annotation/10")
    assert missing.status_code == 404 and "not bundled" in missing.json()["msg"]
