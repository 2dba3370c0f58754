"""The portal's viewers in a real browser: section images (tiles, annotation over them, the structure under the
cursor, image sync by a click), the reference viewer (Neuroglancer: structures named on hover, surfaces), and the
empty data directory's pages.

The structure expected under a pixel comes from the image sync service (``/api/v2/image_to_reference``) and the
bundled 25 um annotation read here; the data set and image a click should open, from ``image_to_image``.
"""

from __future__ import annotations

import io
import re
import time
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace

httpx = pytest.importorskip("httpx")

CONNECTIVITY = 100141219


def _json(base: str, path: str, **params) -> dict:
    answer = httpx.get(base + path, params=params, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    return answer.json()


def _structure_at(space: ReferenceSpace, point: dict) -> int:
    index = np.floor(np.array([point["x"], point["y"], point["z"]]) / 25.0).astype(int)
    if np.any(index < 0) or np.any(index >= np.array(space.shape)):
        return 0
    return int(space.annotation[tuple(index)])


def _open_sections(web, path: str) -> None:
    web.goto(path)
    web.page.wait_for_function("document.getElementById('osd').dataset.ready === '1'", timeout=30_000)
    web.page.wait_for_function("document.getElementById('osd').dataset.boundaries === 'drawn'", timeout=30_000)
    web.settle()


def _screen_point(web, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y) in the section viewer."""
    inner = web.page.evaluate("""([x, y]) => {
        const v = window.brainmapViewer; const p = v.world.getItemAt(0).imageToViewerElementCoordinates(
            new OpenSeadragon.Point(x, y));
        return [p.x, p.y];
    }""", [x, y])
    box = web.page.locator("#osd").bounding_box()
    return box["x"] + inner[0], box["y"] + inner[1]


def test_section_viewer_draws_tiles_and_the_annotation_over_them(web, portal):
    images = _json(portal, f"/portal/sections/{CONNECTIVITY}/images.json")["msg"]
    image = images[len(images) // 2]
    tiles: list[str] = []
    web.page.on("response", lambda r: "_files/" in r.url and r.status == 200 and tiles.append(r.url))
    _open_sections(web, f"/sections/{CONNECTIVITY}?image={image['id']}")
    assert tiles, "no Deep Zoom tile was loaded"
    # The boundaries picture: opaque white where the annotation changes, transparent elsewhere.
    counts = web.page.evaluate("""async (id) => {
        const img = new Image(); img.src = '/portal/sections/image/' + id + '/boundaries.png'; await img.decode();
        const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data;
        let edge = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 200) edge++;
        return {edge, total: d.length / 4};
    }""", image["id"])
    assert 0.01 < counts["edge"] / counts["total"] < 0.5, counts
    # Zoomed all the way in, the full-resolution level's tiles come.
    max_level = int(np.ceil(np.log2(max(image["width"], image["height"]))))
    web.page.evaluate("window.brainmapViewer.viewport.zoomTo(window.brainmapViewer.viewport.getMaxZoom(), null, true)")
    web.page.wait_for_load_state("networkidle")
    time.sleep(0.5)
    assert any(f"_files/{max_level}/" in url for url in tiles), sorted(set(u.split('_files/')[1] for u in tiles))
    web.shot("sections_zoomed")
    web.page.evaluate("window.brainmapViewer.viewport.goHome(true)")
    web.shot("sections")
    web.clean()


def test_the_section_view_is_in_the_url_and_a_reload_restores_it(web, portal):
    web.may_abort = ("/portal/static/favicon",)  # the reopening cancels the first load's icon request
    images = _json(portal, f"/portal/sections/{CONNECTIVITY}/images.json")["msg"]
    image = images[len(images) // 3]
    _open_sections(web, f"/sections/{CONNECTIVITY}?image={image['id']}")
    # The user zooms in with the wheel over a point off the centre (the view pans towards it).
    x, y = _screen_point(web, image["width"] * 0.3, image["height"] * 0.4)
    home = web.page.evaluate("window.brainmapViewer.viewport.getHomeZoom()")
    web.page.mouse.move(x, y)
    for _ in range(3):
        web.page.mouse.wheel(0, -120)
        web.page.wait_for_timeout(50)
    # The zoom animation over, its view written.
    web.page.wait_for_function("""() => { const q = new URLSearchParams(location.search);
        const v = window.brainmapViewer.viewport; const z = v.getZoom(true);
        return q.has('zoom') && Math.abs(z - v.getZoom(false)) < 1e-6 * z
            && Math.abs(Number(q.get('zoom')) - z) < 1e-3 * z; }""", timeout=15_000)
    query = parse_qs(urlparse(web.page.url).query)
    zoom, cx, cy = float(query["zoom"][0]), float(query["cx"][0]), float(query["cy"][0])
    assert query["image"] == [str(image["id"])] and zoom > 1.3 * home
    assert cx < image["width"] / 2 and cy < image["height"] / 2  # towards the point zoomed on
    # The same link opened again: the same zoom and centre.
    _open_sections(web, urlparse(web.page.url).path + "?" + urlparse(web.page.url).query)
    view = web.page.evaluate("""() => { const v = window.brainmapViewer;
        const c = v.world.getItemAt(0).viewportToImageCoordinates(v.viewport.getCenter(true));
        return [v.viewport.getZoom(true), c.x, c.y]; }""")
    assert view[0] == pytest.approx(zoom, rel=1e-3)
    assert view[1] == pytest.approx(cx, abs=1.0) and view[2] == pytest.approx(cy, abs=1.0)
    web.clean()


def test_the_structure_under_the_cursor_is_named(web, portal):
    space = ReferenceSpace.bundled(25)
    tree = space.structure_tree
    images = _json(portal, f"/portal/sections/{CONNECTIVITY}/images.json")["msg"]
    image = images[len(images) // 2]
    _open_sections(web, f"/sections/{CONNECTIVITY}?image={image['id']}")
    named = 0
    for fx, fy in ((0.5, 0.3), (0.3, 0.5), (0.7, 0.6), (0.5, 0.75)):
        x, y = fx * image["width"], fy * image["height"]
        # The expected structure: the sync service's reference point, looked up in the bundled annotation here.
        point = _json(portal, f"/api/v2/image_to_reference/{image['id']}.json", x=x, y=y)["msg"]["image_to_reference"]
        expected = _structure_at(space, point)
        px, py = _screen_point(web, x, y)
        web.page.mouse.move(px, py)
        web.page.wait_for_function("document.getElementById('hover').dataset.structure !== undefined")
        shown = web.page.get_attribute("#hover", "data-structure")
        if expected:
            named += 1
            acronym = tree.get_structures_by_id([expected])[0]["acronym"]
            # The page's label grid samples each cell's centre; a pixel near a boundary may be its neighbour's.
            neighbours = {tree.get_structures_by_id([s])[0]["acronym"] for s in _around(space, point) if s}
            assert shown == acronym or shown in neighbours, (x, y, shown, acronym)
    assert named >= 3
    web.clean()


def _around(space: ReferenceSpace, point: dict) -> set[int]:
    out = set()
    for d in np.array(np.meshgrid([-60, 0, 60], [-60, 0, 60], [-60, 0, 60])).reshape(3, -1).T:
        out.add(_structure_at(space, {"x": point["x"] + d[0], "y": point["y"] + d[1], "z": point["z"] + d[2]}))
    return out


def test_a_click_opens_the_same_point_in_other_data_sets_and_the_reference(web, portal):
    images = _json(portal, f"/portal/sections/{CONNECTIVITY}/images.json")["msg"]
    image = images[len(images) // 2]
    _open_sections(web, f"/sections/{CONNECTIVITY}?image={image['id']}")
    x, y = 0.4 * image["width"], 0.4 * image["height"]
    px, py = _screen_point(web, x, y)
    web.page.mouse.click(px, py)
    web.page.wait_for_function("document.getElementById('sync-links').dataset.count")
    links = web.page.eval_on_selector_all("#sync-links a", "as => as.map(a => a.getAttribute('href'))")
    others = [int(v) for v in web.page.get_attribute("#osd", "data-others").split(",")]
    assert len(others) == 5 and len(links) == 1 + len(others)
    # The expected targets: the image sync service for the pixel the click landed on (read back from the page).
    clicked = re.search(r"pixel (\d+), (\d+)", web.page.inner_text("#clicked"))
    cx, cy = int(clicked.group(1)), int(clicked.group(2))
    assert abs(cx - x) <= 1.5 and abs(cy - y) <= 1.5
    sync = _json(portal, f"/api/v2/image_to_image/{image['id']}.json", x=cx, y=cy,
                 section_data_set_ids=",".join(map(str, others)))["msg"]
    for row, href in zip(sync, links[1:]):
        r = row["image_sync"]
        assert href.startswith(f"/sections/{r['section_data_set_id']}?image={r['section_image_id']}&x=")
    reference = _json(portal, f"/api/v2/image_to_reference/{image['id']}.json", x=cx, y=cy)["msg"]["image_to_reference"]
    assert links[0] == f"/reference?ap={reference['x']:.0f}&dv={reference['y']:.0f}&lr={reference['z']:.0f}"
    # Follow the link to another data set: that image opens with the point marked.
    web.page.click(f"#sync-links a[href='{links[1]}']")
    web.page.wait_for_function("document.getElementById('osd') && document.getElementById('osd').dataset.ready === '1'")
    target = sync[0]["image_sync"]
    assert web.page.get_attribute("#osd", "data-image") == str(target["section_image_id"])
    assert web.page.locator("#mark").count() == 1
    web.settle()
    web.shot("sections_synced")
    web.clean()


def test_reference_viewer_names_structures_on_hover_and_draws_surfaces(web, portal):
    space = ReferenceSpace.bundled(25)
    tree = space.structure_tree
    web.may_abort = ("/portal/precomputed/", "/portal/ng/events/")
    meshes: dict[str, int] = {}
    web.page.on("response", lambda r: r.url.endswith(".frag") and meshes.__setitem__(r.url, r.status))
    # Not web.goto: Neuroglancer's event stream stays open, so the network is never idle.
    web.page.goto(web.base + "/reference?structure=VISp&data_set=100141219")
    frame = web.page.frame_locator("#neuroglancer")
    frame.locator(".neuroglancer-layer-item-label").first.wait_for(timeout=60_000)
    labels = frame.locator(".neuroglancer-layer-item-label").all_inner_texts()
    assert labels == ["annotation", "data set 100141219"]
    ng = web.page.frames[1]
    panels = ng.evaluate("[...document.querySelectorAll('.neuroglancer-rendered-data-panel')].map(e => {"
                         "const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height];})")
    box = web.page.locator("#neuroglancer").bounding_box()
    x, y, w, h = panels[0]  # the coronal (xy) panel
    named = []
    value = ""
    for k, (fx, fy) in enumerate(((0.3, 0.6), (0.6, 0.45), (0.45, 0.7), (0.55, 0.55), (0.4, 0.5), (0.65, 0.6),
                                  (0.35, 0.4))):
        web.page.mouse.move(box["x"] + x + w * fx, box["y"] + y + h * fy)
        # The name shows once the chunks under the cursor are in (the first point waits for them): poll for a
        # new value rather than sleeping.
        previous, until = value, time.monotonic() + (6.0 if k == 0 else 1.5)
        while True:
            value = frame.locator(".neuroglancer-layer-item-value").first.inner_text().strip()
            if (re.fullmatch(r"\d+ \S+", value) and value != previous) or time.monotonic() > until:
                break
            time.sleep(0.1)
        found = re.fullmatch(r"(\d+) (\S+)", value)
        if found:
            sid, acronym = int(found.group(1)), found.group(2)
            assert tree.get_structures_by_id([sid])[0]["acronym"] == acronym  # the ontology's name for the id
            named.append(acronym)
    assert len(set(named)) >= 3, named
    # The picked structure's surfaces: one per structure labelling VISp's voxels, each fetched whole.
    deadline = time.monotonic() + 30
    visp = {385, *tree.descendant_ids([385])[0]}
    expected = {int(i) for i in np.unique(space.annotation) if int(i) in visp}
    while len(meshes) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert {int(u.rsplit("/", 1)[1][:-5]) for u in meshes} == expected
    assert set(meshes.values()) == {200}
    # The 3-D panel draws the data set's projection (maximum-intensity volume rendering, heat colours).
    from PIL import Image

    x3, y3, w3, h3 = panels[2]
    hot = 0
    while time.monotonic() < deadline + 20:
        shot = Image.open(io.BytesIO(web.page.screenshot(clip={"x": box["x"] + x3, "y": box["y"] + y3,
                                                              "width": w3, "height": h3}))).convert("RGB")
        rgb = np.asarray(shot).astype(int)
        hot = int(((rgb[..., 0] > 150) & (rgb[..., 2] < 90) & (rgb[..., 0] - rgb[..., 1] > 60)).sum())
        if hot > 200:
            break
        time.sleep(1)
    assert hot > 200, hot
    web.shot("reference")
    web.clean()


def test_the_reference_view_is_written_to_the_url_and_a_reload_restores_it(web):
    # (The reload cancels what the first load still has in flight: chunks, the icon, and the Neuroglancer client's
    # own traffic under /portal/ng/ -- its event stream, a script it loads only when first needed, the state it
    # posts after each change. Only cancellations are forgiven: an answer of 4xx / 5xx is still a problem.)
    web.may_abort = ("/portal/precomputed/", "/portal/ng/", "/portal/static/favicon")
    web.page.goto(web.base + "/reference?structure=VISp")
    frame = web.page.frame_locator("#neuroglancer")
    frame.locator(".neuroglancer-layer-item-label").first.wait_for(timeout=60_000)
    web.page.wait_for_function("Number(document.getElementById('neuroglancer').dataset.written || 0) > 0")
    start = parse_qs(urlparse(web.page.url).query)
    assert start["structure"] == ["VISp"] and {"ap", "dv", "lr", "zoom", "orient", "layout"} <= set(start)
    ng = web.page.frames[1]
    panel = ng.evaluate("(() => { const r = document.querySelector('.neuroglancer-rendered-data-panel')"
                        ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()")
    box = web.page.locator("#neuroglancer").bounding_box()
    # The user scrolls through coronal slices and zooms in (ctrl+scroll) on the coronal panel.
    web.page.mouse.move(box["x"] + panel[0] + panel[2] / 2, box["y"] + panel[1] + panel[3] / 2)
    for _ in range(5):
        web.page.mouse.wheel(0, 100)
        time.sleep(0.1)
    web.page.keyboard.down("Control")
    web.page.mouse.wheel(0, -300)
    web.page.keyboard.up("Control")
    web.page.wait_for_function(f"(() => {{ const q = new URLSearchParams(location.search); "
                               f"return q.get('ap') !== '{start['ap'][0]}' && q.get('zoom') !== "
                               f"'{start['zoom'][0]}'; }})()", timeout=15_000)
    time.sleep(0.6)  # the last change written
    moved = parse_qs(urlparse(web.page.url).query)
    assert float(moved["zoom"][0]) < float(start["zoom"][0])  # zoomed in: fewer um per pixel
    # A reload (the same link opened again) shows that view.
    web.page.goto(web.page.url)
    web.page.frame_locator("#neuroglancer").locator(".neuroglancer-layer-item-label").first.wait_for(
        timeout=60_000)
    web.page.wait_for_function("(() => { const f = document.getElementById('neuroglancer').contentWindow; "
                               "return f.viewer && f.viewer.state.toJSON().layers.length; })()")
    state = web.page.frames[1].evaluate("viewer.state.toJSON()")
    lr, dv, ap = state["position"]
    assert abs(ap - float(moved["ap"][0])) < 0.1 and abs(dv - float(moved["dv"][0])) < 0.1 \
        and abs(lr - float(moved["lr"][0])) < 0.1
    assert abs(state["crossSectionScale"] - float(moved["zoom"][0])) < 1e-3 * float(moved["zoom"][0])
    assert state["layout"] == moved["layout"][0]
    assert state["projectionOrientation"] == pytest.approx([float(v) for v in moved["orient"][0].split(",")],
                                                           abs=1e-4)
    web.clean()


def test_an_empty_data_directory_says_what_to_do(browser, empty_portal, artefacts):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(empty_portal + "/")
    page.wait_for_load_state("networkidle")
    assert page.url.endswith("/experiments")
    text = page.inner_text("#empty-state")
    assert "No data sets loaded" in text and "brainmap load" in text
    page.screenshot(path=str(artefacts / "empty.png"), full_page=True)
    page.goto(empty_portal + "/search/source?injection_structures=VISp")
    page.wait_for_load_state("networkidle")
    assert "brainmap load" in page.inner_text("main")
    # The old viewer: the atlas slice drawn, the empty state said (it was "TypeError: (body.msg || []).map ...").
    failures: list[str] = []
    page.on("pageerror", lambda e: failures.append(str(e)))
    page.goto(empty_portal + "/viewer")
    page.wait_for_load_state("networkidle")
    page.wait_for_function("document.getElementById('annotation').naturalWidth > 0")
    assert "No data sets loaded" in page.inner_text("#summary") and "brainmap load" in page.inner_text("#summary")
    assert page.inner_text("#status") == ""
    assert page.is_disabled("#dataset") and page.is_hidden("#signal")
    assert not failures, failures
    page.screenshot(path=str(artefacts / "viewer-empty.png"), full_page=True)
    assert not errors or all("status of 4" in e for e in errors), errors
    context.close()
