"""Section images, atlas plates, SVG drawings, structure masks and meshes, the 2-D and atlas image sync and the
list pipe, over HTTP, checked against the data set's own files and the bundled annotation."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import tifffile

from brainmap.specimen import sync
from brainmap.specimen.folder import image_path, read_dataset

ARCHIVE = "/informatics-archive/current-release/mouse_ccf/annotation"


def _jpeg(response):
    from PIL import Image

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(float)


@pytest.fixture(scope="module")
def ds100(server_data):
    folder = server_data.store.folders[100]
    return folder, read_dataset(folder, check_files=False)


def test_section_image_windowed_downsampled_and_cropped(http, ds100):
    folder, ds = ds100
    image = ds.usable_images()[0]
    red = tifffile.imread(image_path(folder, image, "red")).astype(float)
    green = tifffile.imread(image_path(folder, image, "green")).astype(float)
    full = _jpeg(http.get(f"/api/v2/section_image_download/{image.id}", params={"range": "0,4000,1000,3000,0,4095"}))
    assert full.shape == (image.height, image.width, 3)
    expected_red = np.clip(red / 4000, 0, 1) * 255
    expected_green = np.clip((green - 1000) / 2000, 0, 1) * 255
    assert np.abs(full[..., 0] - expected_red).mean() < 6 and np.abs(full[..., 1] - expected_green).mean() < 6
    half = _jpeg(http.get(f"/api/v2/image_download/{image.id}", params={"downsample": 1, "range": "0,4000,1000,3000,0,4095"}))
    assert half.shape == ((image.height + 1) // 2, (image.width + 1) // 2, 3)
    assert abs(half[0, 0, 0] - expected_red[:2, :2].mean()) < 8  # a block mean
    crop = _jpeg(http.get(f"/api/v2/section_image_download/{image.id}",
                          params={"left": 2, "top": 2, "width": 3, "height": 2}))
    assert crop.shape == (2, 3, 3)
    refused = http.get(f"/api/v2/section_image_download/{image.id}", params={"colormap": "0.5,1"})
    assert refused.status_code == 400 and "colormap" in refused.json()["msg"]
    missing = http.get("/api/v2/section_image_download/5")
    assert missing.status_code == 404 and "SectionImage 5" in missing.json()["msg"]


def test_atlas_plate_and_svg_follow_the_annotation(http, space25, tree):
    from brainmap.atlas.plates import atlas_plates

    plate = next(p for p in atlas_plates() if p.atlas_id == 1 and p.section_number == 70)
    labels = np.asarray(space25.annotation)[plate.index]  # rows DV, columns LR
    picture = _jpeg(http.get(f"/api/v2/atlas_image_download/{plate.id}", params={"annotation": "true"}))
    assert picture.shape == labels.shape + (3,)
    colors = tree.get_colormap()
    # inside large uniform regions the JPEG shows the structure's ontology colour
    interior = np.zeros(labels.shape, bool)
    interior[2:-2, 2:-2] = np.all([labels[2:-2, 2:-2] == np.roll(labels, s, a)[2:-2, 2:-2]
                                   for a in (0, 1) for s in (-2, 2)], axis=0)
    r, c = np.argwhere(interior & (labels > 0))[::97].T
    expected = np.array([colors[int(v)] for v in labels[r, c]], float)
    assert np.abs(picture[r, c] - expected).mean() < 6
    svg = http.get(f"/api/v2/svg_download/{plate.id}", params={"groups": 28})
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    text = svg.text
    ids = {int(v) for v in re.findall(r'structure_id="(\d+)"', text)}
    assert ids == set(np.unique(labels).tolist()) - {0}
    hexes = tree.get_hex_colormap("#")
    for sid, color in re.findall(r'structure_id="(\d+)" acronym="[^"]*" style="stroke:black;fill:(#[0-9A-F]{6})"', text):
        assert hexes[int(sid)] == color
    # a path's points lie on boundaries of its structure: half a pixel from a pixel of it
    first = re.search(r'structure_id="(\d+)"[^>]* d="M ([^"]+) Z"', text)
    sid = int(first.group(1))
    points = np.array([[float(v) for v in p.split(",")] for p in first.group(2).split()])
    near = labels[np.clip(np.floor(points[:, 1]).astype(int), 0, labels.shape[0] - 1),
                  np.clip(np.floor(points[:, 0]).astype(int), 0, labels.shape[1] - 1)]
    near2 = labels[np.clip(np.ceil(points[:, 1]).astype(int), 0, labels.shape[0] - 1),
                   np.clip(np.ceil(points[:, 0]).astype(int), 0, labels.shape[1] - 1)]
    assert np.all((near == sid) | (near2 == sid))
    assert http.get(f"/api/v2/svg/{plate.id}").text == text
    assert http.get(f"/api/v2/svg_download/{plate.id}", params={"groups": 5}).status_code == 404
    assert http.get("/api/v2/atlas_image_download/12").status_code == 404


def test_structure_mask_mesh_and_other_versions(http, space25):
    from brainmap.io.nrrd import read_nrrd

    body = http.get(f"{ARCHIVE}/ccf_2017/structure_masks/structure_masks_25/structure_385.nrrd")
    assert body.status_code == 200
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.nrrd"
        path.write_bytes(body.content)
        mask, header = read_nrrd(path)
    assert mask.dtype == np.uint8 and mask.shape == space25.shape
    assert np.array_equal(mask.astype(bool), space25.make_structure_mask([385]))
    assert np.allclose(np.asarray(header["space directions"], float), np.diag([25.0] * 3))
    ten = http.get(f"{ARCHIVE}/ccf_2017/structure_masks/structure_masks_10/structure_385.nrrd")
    assert ten.status_code == 404 and "25, 50, 100" in ten.json()["msg"]
    mesh = http.get(f"{ARCHIVE}/ccf_2017/structure_meshes/385.obj")
    vertices = np.array([[float(v) for v in line.split()[1:]] for line in mesh.text.splitlines()
                         if line.startswith("v ")])
    voxels = np.argwhere(space25.make_structure_mask([385])) * 25.0
    assert len(vertices) > 1000
    assert np.all(vertices.min(0) >= voxels.min(0) - 25) and np.all(vertices.max(0) <= voxels.max(0) + 50)
    old = http.get(f"{ARCHIVE}/ccf_2016/annotation_25.nrrd")
    assert old.status_code == 404 and "ccf_2017" in old.json()["msg"]


def test_image_to_image_2d_and_to_atlas(http, ds100):
    from brainmap.atlas.plates import atlas_plates

    _, ds = ds100
    a, b = ds.usable_images()[:2]
    body = http.get(f"/api/v2/image_to_image_2d/{a.id}.json",
                    params={"x": 3.0, "y": 2.0, "section_image_ids": f"{b.id}"}).json()
    (record,) = [r["image_sync"] for r in body["msg"]]
    expected = b.alignment2d.tvs.apply(a.alignment2d.tsv.apply(np.array([3.0, 2.0])))
    assert record["section_image_id"] == b.id and record["section_number"] == b.section_number
    assert (record["x"], record["y"]) == pytest.approx(tuple(expected), abs=1e-9)
    other = http.get(f"/api/v2/image_to_image_2d/{a.id}.json", params={"x": 3, "y": 2,
                                                                       "section_image_ids": "101000"})
    assert other.status_code in (400, 404)
    point = sync.image_to_reference(ds, a, 3.0, 2.0)
    atlas = http.get(f"/api/v2/image_to_atlas/{a.id}.json", params={"x": 3.0, "y": 2.0, "atlas_id": 1}).json()
    found = atlas["msg"]["image_sync"]
    plate = next(p for p in atlas_plates() if p.id == found["section_image_id"])
    assert plate.atlas_id == 1 and abs(plate.position_um - point.x) <= 50.0
    assert (found["x"], found["y"]) == pytest.approx((point.z / 25.0, point.y / 25.0))


def test_list_pipe_feeds_the_next_stage(http, rma):
    body = http.get(rma("model::Atlas,rma::criteria,[id$eq1],rma::options[only$eqimage_type],"
                        "pipe::list[type_name$is'image_type'],model::AtlasImage,rma::criteria,[annotated$eqtrue],"
                        "atlas_data_set(atlases[id$eq1]),alternate_images[image_type$eq$type_name],"
                        "rma::options[num_rows$eq'all'][order$eqsub_images.section_number]")).json()
    assert body["success"] is True and body["total_rows"] == 132
    assert [r["section_number"] for r in body["msg"][:3]] == [1, 2, 3]
    other = http.get(rma("model::Atlas,pipe::flatten[x$is'id'],model::Structure"))
    assert other.status_code == 400 and "pipe::list" in other.json()["msg"]
