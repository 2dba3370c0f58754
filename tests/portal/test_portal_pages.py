"""The portal in a real browser: every page loads clean, every filter, form and link does what it says.

Expected rows come from another path than the page's own: the Allen API (RMA model queries and ``service::``
calls through httpx), the bundled ontology, and the demo's own files; drawn content is read back from the page
(pixel colours of previews, bars and overlays; SVG paths; table rows).
"""

from __future__ import annotations

import csv
import io
import re
from urllib.parse import parse_qs, urlparse

import pytest

from brainmap.atlas import StructureTree

httpx = pytest.importorskip("httpx")


def _api(base: str, criteria: str) -> list[dict]:
    answer = httpx.get(f"{base}/api/v2/data/query.json", params={"criteria": criteria}, timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    body = answer.json()
    assert body["success"], body
    return body["msg"]


@pytest.fixture(scope="module")
def data_sets(portal) -> dict[int, dict]:
    rows = _api(portal, "model::SectionDataSet,rma::include,products,genes,plane_of_section,"
                        "rma::options[num_rows$eqall]")
    return {int(r["id"]): r for r in rows}


def _ids(web) -> list[int]:
    return [int(v) for v in web.page.eval_on_selector_all("#experiments tbody tr", "rs => rs.map(r => r.dataset.id)")]


def _count_hot_pixels(web, selector: str) -> dict:
    """Counts of an image's pixels by kind, read back through a canvas: hot (heat-map colours: red well above
    blue), grey (outline), total."""
    return web.page.evaluate("""(sel) => {
        const img = document.querySelector(sel);
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data;
        let hot = 0, grey = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (d[i] > 150 && d[i] - d[i + 2] > 100) hot++;
            if (d[i] === 160 && d[i + 1] === 160 && d[i + 2] === 160) grey++;
        }
        return {hot, grey, total: d.length / 4, width: c.width};
    }""", selector)


# -- every page --------------------------------------------------------------------------------------------------
def test_every_page_loads_clean_and_is_screenshotted(web, data_sets):
    ish = next(i for i, r in data_sets.items() if r["genes"])
    pages = {"experiments": "/experiments", "search": "/search", "docs": "/docs", "redoc": "/redoc",
             "source": "/search/source?injection_structures=VISp",
             "target": "/search/target?target_domain=TH",
             "spatial": "/search/spatial?seed_point=11550,4050,2650",
             "injection_coordinate": "/search/injection_coordinate?seed_point=8800,910,8070",
             "connectivity_correlation": "/search/connectivity_correlation?row=100141219",
             "differential": "/search/differential?set=mouse_coronal&structures1=HPF&structures2=Isocortex",
             "correlation": f"/search/correlation?set=mouse_coronal&row={ish}",
             "agea": "/search/agea?set=mouse_coronal&seed_point=6600,4000,5000"}
    pages.update({f"experiment_{i}": f"/experiment/{i}" for i in data_sets})
    shots = {"experiments", "search", "docs", "redoc", "source", "spatial", "differential", "agea",
             "experiment_100141219", f"experiment_{ish}"}  # the rest are screenshotted by the tests of their forms
    for name, path in pages.items():
        web.goto(path)
        if name == "docs":
            web.page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        if name == "redoc":
            web.page.wait_for_selector("[role=navigation], .menu-content", timeout=30_000)
        if name in shots:
            web.shot(name)
        web.clean()
    icon = web.page.request.get(web.base + "/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/x-icon"


def test_pages_fit_a_laptop_and_a_wide_screen(browser, portal, artefacts):
    for width, height in ((1280, 800), (1920, 1080)):
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        for path in ("/experiments", "/experiment/100141219", "/search/source?injection_structures=VISp"):
            page.goto(portal + path)  # the load event: every image and style sheet in
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} is {overflow} px wider than a {width} px window"
            if path.startswith("/experiment/"):
                page.screenshot(path=str(artefacts / f"experiment_{width}.png"), full_page=True)
        context.close()


# -- the experiment browser ---------------------------------------------------------------------------------------
def test_the_browser_lists_every_data_set_and_links_to_its_page(web, data_sets):
    web.goto("/experiments")
    assert sorted(_ids(web)) == sorted(data_sets)
    web.click("#experiments a[href='/experiment/100141219']")
    assert web.page.url.endswith("/experiment/100141219")
    assert "VISp" in web.page.inner_text("#metadata")
    web.clean()


def test_each_filter_keeps_the_rows_it_names(web, data_sets, portal):
    ish = {i for i, r in data_sets.items() if r["genes"]}
    # Product, chosen in the form: the URL carries it, the rows are that product's (from the API's products).
    web.goto("/experiments")
    product = next(r for r in data_sets.values() if r["genes"])["products"][0]["name"]
    web.page.select_option("select[name=product]", product)
    web.click("#filters button[type=submit]")
    assert parse_qs(urlparse(web.page.url).query)["product"] == [product]
    assert set(_ids(web)) == ish
    # Injection structure with descendants, typed as an acronym and as a name: the source service's answer.
    expected = {int(r["id"]) for r in _api(portal, "service::mouse_connectivity_injection_structure"
                                                   "[injection_structures$eqIsocortex]")}
    assert expected == {100141219}
    for typed in ("Isocortex", "Isocortex".lower(), "Primary visual area"):
        web.goto(f"/experiments?injection={typed}")
        assert set(_ids(web)) == expected, typed
    web.goto("/experiments?injection=HPF")
    assert set(_ids(web)) == {112672974}  # SUB, PAR, ENTl... all under the hippocampal formation
    # Gene, plane, strain, line.
    gene_of = {i: data_sets[i]["genes"][0]["acronym"] for i in ish}
    for i, gene in gene_of.items():
        web.goto(f"/experiments?gene={gene}")
        assert _ids(web) == [i]
    sagittal = {i for i, r in data_sets.items() if r["plane_of_section"]["name"] == "sagittal"}
    web.goto("/experiments?plane=sagittal")
    assert set(_ids(web)) == sagittal and sagittal
    web.goto("/experiments?line=wild+type")
    assert set(_ids(web)) == {100141219, 112672974}
    # An unknown structure says so; a filter matching nothing says so.
    web.allowed_errors.add(400)
    web.goto("/experiments?injection=NoSuchArea")
    assert "NoSuchArea" in web.page.inner_text("#filter-error")
    web.goto("/experiments?gene=Pvalb&plane=coronal")
    assert web.page.is_visible("#no-match")
    web.clean()


def test_sorting_and_paging(web, data_sets):
    web.goto("/experiments")
    web.click("th a:text('Id')")  # ascending -> descending
    assert _ids(web) == sorted(data_sets, reverse=True)
    web.goto("/experiments?sort=sections&order=asc")
    sections = [int(t) for t in web.page.eval_on_selector_all("#experiments tbody td.num", "c => c.map(x => x.innerText)")]
    assert sections == sorted(sections)
    web.goto("/experiments?per_page=4")
    first = _ids(web)
    assert len(first) == 4
    web.click("a[rel=next]")
    second = _ids(web)
    assert "page=2" in web.page.url and sorted(first + second) == sorted(data_sets)
    web.clean()


# -- the experiment page ------------------------------------------------------------------------------------------
def test_the_experiment_page_draws_previews_bars_and_links(web, portal):
    tree = StructureTree.bundled()
    colours = tree.get_hex_colormap("#")
    web.goto("/experiment/100141219")
    for view in ("top", "side"):
        counts = _count_hot_pixels(web, f"#preview-{view}")
        assert counts["hot"] > 500, (view, counts)  # the projection drawn in heat colours
        assert counts["grey"] > 100, (view, counts)  # the brain's outline
    bars = web.page.eval_on_selector_all(
        "#bargraph rect.bar", "rs => rs.map(r => [r.dataset.structure, r.getAttribute('fill'), +r.dataset.value])")
    unionizes = _api(portal, "model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$eq100141219]"
                             "[hemisphere_id$eq3][is_injection$eqfalse],rma::options[num_rows$eqall]")
    summary = set(tree.summary_structure_ids())
    by_id = {int(u["structure_id"]): float(u["projection_volume"]) for u in unionizes}
    expected = {tree.get_structures_by_id([s])[0]["acronym"]: v for s, v in by_id.items() if s in summary}
    drawn = {b[0]: b[2] for b in bars}  # data-value: 6 significant digits
    assert drawn.keys() == expected.keys()
    assert drawn == {k: pytest.approx(v, rel=1e-5, abs=1e-12) for k, v in expected.items()}
    acronym_to_id = tree.get_id_acronym_map()
    for acronym, fill, _ in bars:
        assert fill.lower() == colours[acronym_to_id[acronym]].lower()
    # The hemisphere choice: the left hemisphere's values.
    web.page.check("input[name=hemisphere][value='1']")
    web.page.wait_for_url(re.compile(r"hemisphere=1"))
    left = {u["structure_id"]: u["projection_volume"] for u in _api(
        portal, "model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$eq100141219]"
                "[hemisphere_id$eq1][is_injection$eqfalse],rma::options[num_rows$eqall]")}
    visp = web.page.get_attribute("#bargraph rect.bar[data-structure=VISp]", "data-value")
    assert float(visp) == pytest.approx(left[385], rel=1e-4)
    # Every download link answers with content.
    links = web.page.eval_on_selector_all("#downloads a", "as => as.map(a => a.href)")
    assert len(links) >= 5
    for href in links:
        answer = web.page.request.get(href)
        assert answer.status == 200 and len(answer.body()) > 0, href
    table = list(csv.DictReader(io.StringIO(web.page.request.get(
        web.base + web.page.get_attribute("#unionize-csv", "href")).text())))
    assert len(table) == len(_api(portal, "model::ProjectionStructureUnionize,rma::criteria,"
                                          "[section_data_set_id$eq100141219],rma::options[num_rows$eqall]"))
    # The searches are one click away.
    web.click("#searches a:has-text('source search')")
    assert int(web.page.inner_text("#results tbody tr td a")) == 100141219
    web.allowed_errors.add(404)
    web.goto("/experiment/1")
    assert "no data set 1" in web.page.inner_text("#error").lower()
    web.clean()


# -- search pages -------------------------------------------------------------------------------------------------
def _rows(web) -> list[list[str]]:
    return web.page.eval_on_selector_all("#results tbody tr",
                                         "rs => rs.map(r => [...r.cells].map(c => c.innerText))")


def _service_ids(portal: str, criteria: str) -> list[int]:
    return [int(r.get("id", r.get("data_set_id", 0))) for r in _api(portal, criteria)]


@pytest.mark.parametrize("slug, fill, criteria", [
    ("source", {"injection_structures": "Primary visual area"},
     "service::mouse_connectivity_injection_structure[injection_structures$eqVISp]"),
    ("target", {"target_domain": "Thalamus"}, "service::mouse_connectivity_target[target_domain$eqTH]"),
    ("injection_coordinate", {"seed_point": "8800,910,8070"},
     "service::mouse_connectivity_injection_coordinate[seed_point$eq8800,910,8070]"),
    ("connectivity_correlation", {"row": "100141219"}, "service::mouse_connectivity_correlation[row$eq100141219]"),
    # Optional parameters, under "more options".
    ("source", {"injection_structures": "Isocortex", "target_domain": "Thalamus", "product_ids": "5"},
     "service::mouse_connectivity_injection_structure[injection_structures$eqIsocortex][target_domain$eqTH]"
     "[product_ids$eq5]"),
    ("connectivity_correlation", {"row": "100141219", "sort_order": "asc"},
     "service::mouse_connectivity_correlation[row$eq100141219][sort_order$eqasc]"),
    ("differential", {"set": "mouse_coronal", "structures1": "Hippocampal formation", "structures2": "Isocortex"},
     "service::mouse_differential[set$eqmouse_coronal][structures1$eqHPF][structures2$eqIsocortex]"),
])
def test_each_search_form_answers_like_the_service(web, portal, slug, fill, criteria):
    web.goto(f"/search/{slug}")
    for name, value in fill.items():
        field = web.page.locator(f"#search-form [name={name}]")
        if not field.is_visible():
            web.page.click("#more-options summary")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    web.click("#search-form button[type=submit]")
    expected = _service_ids(portal, criteria)
    assert expected, f"the service found nothing for {criteria}"
    rows = _rows(web)
    assert [int(r[0]) for r in rows] == expected[:50]
    first = web.page.get_attribute("#results tbody tr td a", "href")
    assert first == f"/experiment/{expected[0]}"
    table = list(csv.reader(io.StringIO(web.page.request.get(web.base + web.page.get_attribute("#csv", "href")).text())))
    assert len(table) == len(expected) + 1
    web.shot(f"form_{slug}")
    web.clean()


def test_gene_correlation_from_an_experiment_page(web, portal, data_sets):
    coronal = [i for i, r in data_sets.items() if r["genes"] and r["plane_of_section"]["name"] == "coronal"]
    web.goto(f"/experiment/{coronal[0]}")
    web.click("#searches a:has-text('gene correlation')")
    expected = _service_ids(portal, f"service::mouse_correlation[set$eqmouse_coronal][row$eq{coronal[0]}]")
    assert [int(r[0]) for r in _rows(web)] == expected and len(expected) == len(coronal)
    web.clean()


def test_spatial_search_draws_each_path_from_the_seed(web, portal):
    web.goto("/search/spatial?seed_point=11550,4050,2650")
    answer = _api(portal, "service::mouse_connectivity_target_spatial[seed_point$eq11550,4050,2650]")
    lines = web.page.eval_on_selector_all("#paths polyline", "ls => ls.map(l => [l.dataset.id, "
                                                            "l.getAttribute('points')])")
    assert len(lines) == len(answer) == 2
    for (data_set_id, points), row in zip(lines, answer):
        assert int(data_set_id) == row["id"]
        drawn = [tuple(float(v) for v in p.split(",")) for p in points.split()]
        assert drawn == [(p["coord"][2], p["coord"][0]) for p in row["path"]]
        assert drawn[0] == (2650.0, 11550.0)  # starts at the seed (LR, AP)
    # The lines are drawn: pixels of their colours on the screen where the first path runs.
    web.shot("spatial_paths")
    web.clean()


def test_agea_click_sets_the_seed_and_draws_its_correlation_map(web):
    web.goto("/search/agea?set=mouse_coronal")
    web.page.wait_for_function("document.getElementById('agea-atlas').dataset.drawn")
    box = web.page.locator("#agea-atlas").bounding_box()
    # A voxel in the left thalamus of the coronal slice at 6650 um: pixel (LR 50, DV 40) of the 100 um slice.
    web.page.mouse.click(box["x"] + (50 + 0.5) * box["width"] / 114, box["y"] + (40 + 0.5) * box["height"] / 80)
    web.page.wait_for_url(re.compile(r"seed_point="))
    web.page.wait_for_function("document.getElementById('agea-atlas').dataset.drawn")
    web.settle()
    seed = parse_qs(urlparse(web.page.url).query)["seed_point"][0]
    assert seed == "6650,4050,5050"
    assert len(_rows(web)) == 50 and "r" in web.page.inner_text("#results thead")
    colours = web.page.evaluate("""() => {
        const c = document.getElementById('agea-atlas'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let red = 0, blue = 0;
        for (let i = 0; i < d.length; i += 4) { if (d[i] > 200 && d[i + 2] < 80) red++; if (d[i + 2] > 200 && d[i] < 80) blue++; }
        const seed = c.getContext('2d').getImageData(50, 40, 1, 1).data;
        return {red, blue, seed: [seed[0], seed[1], seed[2]]};
    }""")
    assert colours["seed"] == [255, 255, 255]  # the seed marked
    assert colours["red"] > 20  # voxels correlated with the seed drawn red over the atlas
    web.shot("agea_clicked")
    web.clean()


def _agea_seed(base: str, candidates: list[tuple[int, int]]) -> tuple[int, int]:
    """The first (AP, DV) voxel of the 100 um sagittal slice at LR 4050 um that AGEA answers rows for."""
    import httpx

    for ap, dv in candidates:
        criteria = f"service::mouse_agea[set$eqmouse_coronal][seed_point$eq{ap * 100 + 50},{dv * 100 + 50},4050]"
        if httpx.get(base + "/api/v2/data/query.json", params={"criteria": criteria}, timeout=60).json()["success"]:
            return ap, dv
    raise AssertionError(f"AGEA answers no rows at any of {candidates}")


def test_agea_on_a_sagittal_slice(web):
    web.goto("/search/agea?set=mouse_coronal")
    web.page.wait_for_function("document.getElementById('agea-atlas').dataset.drawn")
    web.page.select_option("#agea-plane", "sagittal")
    web.page.wait_for_url(re.compile(r"plane=sagittal"))
    web.page.wait_for_function("document.getElementById('agea-atlas').dataset.drawn")
    canvas = web.page.locator("#agea-atlas")
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("132", "80")  # AP x DV
    web.page.fill("#slice-position", "4050")
    web.page.dispatch_event("#slice-position", "change")
    box = canvas.bounding_box()
    # A voxel of the left hemisphere's sagittal slice at LR 4050 um where the demo's three coronal genes differ
    # (with three data sets many voxels hold one value in all, and AGEA answers that no correlation is defined).
    ap, dv = _agea_seed(web.base, [(66, 40), (50, 40), (80, 40), (30, 40), (50, 10), (66, 10), (30, 50)])
    web.page.mouse.click(box["x"] + (ap + 0.5) * box["width"] / 132, box["y"] + (dv + 0.5) * box["height"] / 80)
    web.page.wait_for_url(re.compile(r"seed_point="))
    web.page.wait_for_function("document.getElementById('agea-atlas').dataset.drawn")
    web.settle()
    query = parse_qs(urlparse(web.page.url).query)
    assert query["seed_point"][0] == f"{ap * 100 + 50},{dv * 100 + 50},4050" and query["plane"][0] == "sagittal"
    assert len(_rows(web)) == 50
    colours = web.page.evaluate("""() => {
        const c = document.getElementById('agea-atlas'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let red = 0;
        for (let i = 0; i < d.length; i += 4) { if (d[i] > 200 && d[i + 2] < 80) red++; }
        const seed = c.getContext('2d').getImageData(%d, %d, 1, 1).data;
        return {red, seed: [seed[0], seed[1], seed[2]]};
    }""" % (ap, dv))
    assert colours["seed"] == [255, 255, 255] and colours["red"] > 20
    web.shot("agea_sagittal")
    web.clean()
