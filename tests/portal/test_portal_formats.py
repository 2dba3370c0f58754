"""The portal's data routes, byte for byte: Neuroglancer's precomputed chunks and meshes, Deep Zoom tiles.

Expected values are read here from the bundled annotation, the grid files registered for download and the DZI
layout (Microsoft's Deep Zoom: level L of an image W x H px is ceil(W / 2^(max - L)) px wide, max = ceil(log2
max(W, H)); tiles of 254 px plus a 1 px overlap on inner edges).
"""

from __future__ import annotations

import io
import json
import math
import struct

import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace

httpx = pytest.importorskip("httpx")


def _get(base: str, path: str, **params) -> httpx.Response:
    answer = httpx.get(base + path, params=params, timeout=60)
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return answer


def test_annotation_chunks_are_the_bundled_annotation(portal):
    info = _get(portal, "/portal/precomputed/annotation/info").json()
    assert info["type"] == "segmentation" and info["data_type"] == "uint32"
    space = ReferenceSpace.bundled(100)
    scale = next(s for s in info["scales"] if s["key"] == "100um")
    ap, dv, lr = space.shape
    assert scale["size"] == [lr, dv, ap] and scale["resolution"] == [100000.0] * 3
    name = f"64-{min(128, lr)}_0-64_64-128"
    raw = np.frombuffer(_get(portal, f"/portal/precomputed/annotation/100um/{name}").content, dtype="<u4")
    block = raw.reshape((64, 64, min(128, lr) - 64), order="C")  # z (AP), y (DV), x (LR): x fastest
    assert np.array_equal(block, space.annotation[64:128, 0:64, 64:min(128, lr)])
    properties = _get(portal, "/portal/precomputed/annotation/props/info").json()["inline"]
    labels = dict(zip(properties["ids"], properties["properties"][0]["values"]))
    assert labels["385"] == "VISp" if "385" in labels else labels["593"] == "VISp1"


def test_a_mesh_is_the_structures_surface(portal):
    space = ReferenceSpace.bundled(50)
    body = _get(portal, "/portal/precomputed/annotation/mesh/593.frag").content  # VISp1
    count = struct.unpack("<I", body[:4])[0]
    vertices = np.frombuffer(body[4:4 + 12 * count], dtype="<f4").reshape(-1, 3)
    faces = np.frombuffer(body[4 + 12 * count:], dtype="<u4").reshape(-1, 3)
    assert count > 100 and faces.max() < count
    where = np.argwhere(space.annotation == 593) * 50.0 + 25.0  # voxel centres, um (AP, DV, LR)
    lo, hi = where.min(axis=0) - 50, where.max(axis=0) + 50
    um = vertices[:, ::-1] / 1000.0  # (x = LR, y = DV, z = AP) nm -> (AP, DV, LR) um
    assert np.all(um >= lo) and np.all(um <= hi)
    assert _get(portal, "/portal/precomputed/annotation/mesh/593:0").json() == {"fragments": ["593.frag"]}


def test_an_expression_grid_is_served_where_its_voxels_are(portal):
    rows = _get(portal, "/api/v2/data/query.json", criteria="model::SectionDataSet,rma::include,genes,"
                                                           "rma::options[num_rows$eqall]").json()["msg"]
    ish = next(r["id"] for r in rows if r["genes"])
    info = _get(portal, f"/portal/precomputed/grid/{ish}/energy/info").json()
    scale = info["scales"][0]
    # The 200 um grid's voxel i is centred at 200 i um: corner -100 um, i.e. voxel -1 at 100 um.
    assert scale["resolution"] == [100000.0] * 3 and scale["voxel_offset"] == [-1, -1, -1]
    import zipfile

    from brainmap.io.metaimage import read_metaimage

    bundle = zipfile.ZipFile(io.BytesIO(_get(portal, f"/grid_data/download/{ish}", include="energy").content))
    folder = __import__("tempfile").mkdtemp()
    bundle.extractall(folder)
    energy, _ = read_metaimage(next(p for p in __import__("pathlib").Path(folder).glob("energy.mhd")))
    energy = np.where(energy > 0, energy, 0).astype("<f4")
    raw = np.frombuffer(_get(portal, f"/portal/precomputed/grid/{ish}/energy/g/-1-63_-1-63_-1-63").content,
                        dtype="<f4").reshape(64, 64, 64)
    # Grid voxel i spans [200 i - 100, 200 i + 100] um: served voxels 2i - 1 and 2i, the chunk's rows 2i, 2i + 1.
    assert np.array_equal(raw[::2, ::2, ::2], energy[:32, :32, :32])
    assert np.array_equal(raw[1::2, 1::2, 1::2], energy[:32, :32, :32])
    assert np.any(energy[:32, :32, :32] > 0)


def test_deep_zoom_levels_and_tiles(portal):
    from PIL import Image

    images = _get(portal, "/portal/sections/100141219/images.json").json()["msg"]
    image = images[len(images) // 2]
    w, h = image["width"], image["height"]
    top = math.ceil(math.log2(max(w, h)))
    dzi = _get(portal, image["tiles"]).text
    assert f'Width="{w}"' in dzi and f'Height="{h}"' in dzi and 'TileSize="254"' in dzi
    for level in (top, top - 1, 0):
        scale = 2 ** (top - level)
        lw, lh = math.ceil(w / scale), math.ceil(h / scale)
        tile = Image.open(io.BytesIO(_get(portal, f"/portal/dz/{image['id']}_files/{level}/0_0.jpg").content))
        assert tile.size == (min(lw, 255), min(lh, 255))
    full = Image.open(io.BytesIO(_get(portal, f"/portal/sections/image/{image['id']}.png").content))
    assert full.size == (w, h)
    assert httpx.get(portal + f"/portal/dz/{image['id']}_files/{top + 1}/0_0.jpg").status_code == 404
    assert httpx.get(portal + f"/portal/dz/{image['id']}_files/{top}/9_9.jpg").status_code == 404


def test_tiles_come_from_the_pyramids_made_at_load_and_follow_a_changed_image(portal, portal_dir):
    import tifffile

    data = portal_dir / "data"
    folder = next(p.parent for p in data.glob("*/*/dataset.json")
                  if json.loads(p.read_text())["id"] == 100141219)
    images = _get(portal, "/portal/sections/100141219/images.json").json()["msg"]
    # brainmap load made one pyramid per image.
    for image in images:
        assert len(list((data / "tiles" / str(image["id"])).iterdir())) == 1, image["id"]
    image = images[1]
    top = math.ceil(math.log2(max(image["width"], image["height"])))
    url = f"/portal/dz/{image['id']}_files/{top}/0_0.jpg"
    (pyramid,) = (data / "tiles" / str(image["id"])).iterdir()
    before = _get(portal, url).content
    assert before == (pyramid / str(top) / "0_0.jpg").read_bytes()

    # A changed image file: the next tile is made from the new pixels; then the old file back, the old tile back.
    entry = next(i for i in json.loads((folder / "dataset.json").read_text())["images"] if i["id"] == image["id"])
    path = folder / "images" / entry["channels"][sorted(entry["channels"])[0]]
    original = path.read_bytes()
    try:
        pixels = tifffile.imread(path)
        pixels[:, : pixels.shape[1] // 2] = 0
        tifffile.imwrite(path, pixels)
        changed = _get(portal, url).content
        assert changed != before
        (newer,) = (data / "tiles" / str(image["id"])).iterdir()
        assert newer != pyramid and changed == (newer / str(top) / "0_0.jpg").read_bytes()
    finally:
        path.write_bytes(original)
    assert _get(portal, url).content == before
    # A missing image file: a 404 naming it, not a stale tile or a 500.
    path.rename(path.with_suffix(".away"))
    try:
        answer = httpx.get(portal + url, timeout=60)
        assert answer.status_code == 404 and path.name in answer.text
    finally:
        path.with_suffix(".away").rename(path)
    assert _get(portal, url).content == before


def test_the_average_template_is_served_where_the_data_directory_has_it(tmp_path, serve_app):
    """Allen's template is not shipped: a volume put where the file routes look for it is what Neuroglancer gets,
    and the reference page shows the template layer only then."""
    import httpx

    from brainmap.io.nrrd import write_nrrd
    from brainmap.server.app import create_app

    with serve_app(create_app(tmp_path, warm_up=False)) as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.get("/portal/precomputed/template/info").status_code == 404
        assert "no average template in this data directory" in client.get("/reference").text
    shape = ReferenceSpace.bundled(100).shape
    volume = np.random.default_rng(0).random(shape, dtype=np.float32) * 500
    (tmp_path / "average_template").mkdir()
    write_nrrd(tmp_path / "average_template" / "average_template_100.nrrd", volume, spacing_um=100.0)
    with serve_app(create_app(tmp_path, warm_up=False)) as base, httpx.Client(base_url=base, timeout=60) as client:
        scale = client.get("/portal/precomputed/template/info").json()["scales"][0]
        assert scale["size"] == [shape[2], shape[1], shape[0]] and scale["resolution"] == [100000.0] * 3
        raw = np.frombuffer(client.get("/portal/precomputed/template/t/0-64_0-64_0-64").content, dtype="<f4")
        assert np.array_equal(raw.reshape(64, 64, 64), volume[:64, :64, :64])
        page = client.get("/reference").text
    assert "Allen&#39;s average template" in page or "Allen's average template" in page


def test_agea_sagittal_and_coronal_maps_agree_where_they_cross(portal):
    """The two slices through the seed share its DV line: the sagittal map's column at the seed's AP is the
    coronal map's column at the seed's LR (an axis mixed up or transposed would differ)."""
    from PIL import Image

    seed = (6650.0, 4050.0, 5050.0)
    maps = {plane: np.asarray(Image.open(io.BytesIO(_get(
        portal, "/portal/agea/map.png", set="mouse_coronal", plane=plane,
        seed_point=",".join(f"{v:g}" for v in seed)).content))) for plane in ("coronal", "sagittal")}
    coronal, sagittal = maps["coronal"], maps["sagittal"]
    assert coronal.shape == (80, 114, 4) and sagittal.shape == (80, 132, 4)
    line = coronal[:, int(seed[2] // 100)]
    assert np.array_equal(line, sagittal[:, int(seed[0] // 100)])
    assert (line[:, 3] > 0).sum() > 10  # the line crosses the brain: values drawn
    # The seed correlates with itself: red (r = 1) at the seed in both.
    for picture, col in ((coronal, seed[2]), (sagittal, seed[0])):
        assert tuple(picture[int(seed[1] // 100), int(col // 100), :3]) == (255, 0, 0)
    # The sagittal map is not a copy of the coronal one: it spans AP.
    assert (sagittal[..., 3] > 0).any(axis=0).sum() > (coronal[..., 3] > 0).any(axis=0).sum()
    assert httpx.get(portal + "/portal/agea/map.png", params={"seed_point": "1,2,3", "plane": "axial"}).status_code \
        == 400
