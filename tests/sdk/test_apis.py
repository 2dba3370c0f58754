"""The APIs (RmaApi, OntologiesApi, SynchronizationApi, GridDataApi, the connectivity and expression search
services), the ISH cache and the spatial search lines, against a real brainmap server; each answer is compared
with the same request sent with plain httpx, or with the files the server serves."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace, StructureTree
from brainmap.sdk import (
    ApiError,
    GridDataApi,
    MouseConnectivityApi,
    MouseIshApi,
    MouseIshCache,
    OfflineError,
    OntologiesApi,
    RmaApi,
    SdkError,
    SynchronizationApi,
)


def _get(sdk_server, path: str, **params):
    response = httpx.get(sdk_server.base_uri + path, params=params, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _service(sdk_server, text: str):
    return _get(sdk_server, "/api/v2/data/query.json", q=text)


def test_rma_model_query_pages_and_errors(sdk_server):
    rma = RmaApi(sdk_server.base_uri)
    one = rma.model_query("Structure", criteria="[acronym$eq'VISp']", only=["id", "acronym"])
    assert one == [{"id": 385, "acronym": "VISp"}]
    first_page = _service(sdk_server, "model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$eq100]")
    total = first_page["total_rows"]
    rma.page_size = 700
    rows = rma.model_query("ProjectionStructureUnionize", criteria="[section_data_set_id$eq100]", num_rows="all")
    ids = [r["id"] for r in rows]
    assert len(ids) == total > 2000 and len(set(ids)) == total and ids == sorted(ids)
    page = rma.model_query("ProjectionStructureUnionize", criteria="[section_data_set_id$eq100]", num_rows=10,
                           start_row=700, order="id")
    assert [r["id"] for r in page] == ids[700:710]
    assert rma.build_query_url("model::Gene") == sdk_server.base_uri + "/api/v2/data/query.json?q=model::Gene"
    with pytest.raises(ApiError, match="unknown model 'Nope'") as error:
        rma.model_query("Nope")
    assert error.value.status == 400
    with pytest.raises(SdkError, match="unknown arguments colour"):
        rma.model_query("Structure", colour="red")


def test_rma_service_query_pages(sdk_server):
    rma = RmaApi(sdk_server.base_uri)
    raw = _service(sdk_server, "service::mouse_connectivity_injection_structure[injection_structures$eqroot]")
    rma.page_size = 4
    every = rma.service_query("mouse_connectivity_injection_structure", parameters=[("injection_structures", "root")],
                              num_rows="all")
    assert every == raw["msg"] and len(every) == raw["total_rows"] > 4
    two = rma.service_query("mouse_connectivity_injection_structure", injection_structures="root", num_rows=2,
                            start_row=3)
    assert two == raw["msg"][3:5]


def test_ontologies(sdk_server):
    api = OntologiesApi(sdk_server.base_uri)
    bundled = StructureTree.bundled()
    structures = api.get_structures(structure_graph_ids=1)
    assert len(structures) == len(bundled) and [s["graph_order"] for s in structures] == \
        sorted(s["graph_order"] for s in structures)
    summary = api.get_structures(structure_set_ids=[167587189])
    assert sorted(s["id"] for s in summary) == sorted(bundled.structure_set_member_ids(167587189))
    sets = api.get_structure_sets([167587189])
    assert sets[0]["id"] == 167587189 and "ummary" in sets[0]["name"]
    graph = api.get_structure_graph(1)
    assert graph[0]["id"] == 997 and graph[0]["children"]
    with_sets = {s["id"]: s for s in api.get_structures_with_sets()}
    assert sorted(with_sets[385]["structure_set_ids"]) == \
        sorted(bundled.get_structures_by_id([385])[0]["structure_set_ids"])


def test_synchronization(sdk_server):
    api = SynchronizationApi(sdk_server.base_uri)
    assert api.get_image_to_reference(100000, 4, 3) == \
        _get(sdk_server, "/api/v2/image_to_reference/100000.json", x=4, y=3)["msg"]
    assert api.get_reference_to_image(9, 8000, 3000, 6000, [100, 101]) == \
        _get(sdk_server, "/api/v2/reference_to_image/9.json", x=8000, y=3000, z=6000,
             section_data_set_ids="100,101")["msg"]
    assert api.get_image_to_image(100000, 4, 3, [101]) == \
        _get(sdk_server, "/api/v2/image_to_image/100000.json", x=4, y=3, section_data_set_ids="101")["msg"]
    assert api.get_structure_to_image(100, [385, 315]) == \
        _get(sdk_server, "/api/v2/structure_to_image/100.json", structure_ids="385,315")["msg"]
    with pytest.raises(ApiError) as error:
        api.get_image_to_reference(999999, 1, 1)
    assert error.value.status == 404 and "999999" in str(error.value)


@pytest.mark.parametrize("method, service, params", [
    ("experiment_source_search", "mouse_connectivity_injection_structure", {"injection_structures": "VIS"}),
    ("experiment_target_search", "mouse_connectivity_injection_structure",
     {"injection_structures": "root", "target_domain": ["VISp", "LGd"], "target_hemisphere": "right"}),
    ("experiment_spatial_search", "mouse_connectivity_target_spatial", {"seed_point": [9230, 1910, 8430]}),
    ("experiment_injection_coordinate_search", "mouse_connectivity_injection_coordinate",
     {"seed_point": [9000, 2000, 8500]}),
    ("experiment_correlation_search", "mouse_connectivity_correlation", {"row": 101, "structures": "Isocortex"}),
])
def test_connectivity_searches(sdk_server, method, service, params):
    api = MouseConnectivityApi(sdk_server.base_uri)
    rows = getattr(api, method)(**params)
    text = f"service::{service}" + "".join(
        f"[{k}$eq{','.join(map(str, v)) if isinstance(v, list) else v}]" for k, v in params.items())
    raw = _service(sdk_server, text)
    assert rows == raw["msg"] and len(rows) == raw["total_rows"] >= 1


def test_expression_searches(sdk_server):
    api = MouseIshApi(sdk_server.base_uri)
    cases = [(api.differential_search("TH", "Isocortex"), "service::mouse_differential[set$eqmouse]"
              "[structures1$eqTH][structures2$eqIsocortex]"),
             (api.correlation_search(sdk_server.data.expression_ids[0], "Isocortex"),
              f"service::mouse_correlation[set$eqmouse][row$eq{sdk_server.data.expression_ids[0]}]"
              "[structures$eqIsocortex]"),
             (api.agea_search([6000, 3000, 3000], set="mouse_coronal"),  # tens of thousands of voxels
              "service::mouse_agea[set$eqmouse_coronal][seed_point$eq6000,3000,3000]")]
    for rows, text in cases:
        raw = _service(sdk_server, text + "[num_rows$eq2000]")  # the first page; the SDK pages through all
        assert rows[:2000] == raw["msg"] and len(rows) == raw["total_rows"] > 1


def test_grid_data_api_downloads(sdk_server, tmp_path):
    from brainmap.io.grid_bundle import read_grid_bundle

    api = GridDataApi(sdk_server.base_uri, progress=False)
    source = sdk_server.data.store.folders[101] / "grids" / "injection_density_100.nrrd"
    result = api.download_projection_grid_data(101, ["injection_density"], 100, tmp_path / "inj.nrrd")
    assert (tmp_path / "inj.nrrd").read_bytes() == source.read_bytes()
    assert result.sha256 == hashlib.sha256(source.read_bytes()).hexdigest() and not result.cached
    assert api.download_projection_grid_data(101, "injection_density", 100, tmp_path / "inj.nrrd").cached
    api.download_expression_grid_data(200, ["energy", "density", "intensity"], tmp_path / "200.zip")
    volumes = read_grid_bundle(tmp_path / "200.zip")
    for name, expected in sdk_server.data.ish_grids.items():
        np.testing.assert_array_equal(volumes[name][0], expected)
    alignment = api.download_alignment3d(100)
    assert alignment["section_data_set_id"] == 100 and "trv_11" in alignment
    with pytest.raises(SdkError, match="resolution must be one of"):
        api.download_projection_grid_data(101, "projection_density", 33, tmp_path / "x.nrrd")


def test_ish_cache(sdk_server, tmp_path):
    ish = MouseIshCache(manifest_file=tmp_path / "ish" / "manifest.json", base_uri=sdk_server.base_uri,
                        progress=False)
    assert sorted(e["id"] for e in ish.get_experiments(genes=["pdyn"])) == [200, 202]
    assert [e["id"] for e in ish.get_experiments(include_failed=True, plane_of_section="coronal")] == [201]
    assert ish.get_experiments(genes="Adora2a") == []  # failed
    frame = ish.get_experiments(dataframe=True)
    assert frame.loc[200, "gene"] == "Pdyn" and frame.loc[200, "plane_of_section"] == "sagittal"
    for name, expected in sdk_server.data.ish_grids.items():
        volume, meta = ish.get_expression_volume(200, name)
        np.testing.assert_array_equal(volume, expected)
        assert meta["ElementSpacing"] == [200.0, 200.0, 200.0]
    raw = _service(sdk_server, "model::StructureUnionize,rma::criteria,[section_data_set_id$eq200],"
                               "rma::options[num_rows$eq2000]")
    unionizes = ish.get_structure_unionizes([200])
    assert len(unionizes) == raw["total_rows"] > 100
    row = raw["msg"][0]
    mine = unionizes[unionizes["id"] == row["id"]].iloc[0]
    assert mine["expression_energy"] == row["expression_energy"] and mine["structure_id"] == row["structure_id"]
    offline = MouseIshCache(manifest_file=tmp_path / "ish" / "manifest.json", base_uri=sdk_server.base_uri,
                            offline=True)
    np.testing.assert_array_equal(offline.get_expression_volume(200)[0], sdk_server.data.ish_grids["energy"])
    with pytest.raises(OfflineError, match="ish_experiment_202"):
        offline.get_expression_volume(202)


def test_spatial_search_lines(sdk_server, mcc_factory, tmp_path):
    from brainmap.sdk.spatial_lines import FIBER_TRACTS_ID, spatial_search_lines

    mcc = mcc_factory()
    density = sdk_server.data.projection_101["projection_density"]
    injection = sdk_server.data.projection_101["injection_density"]
    space = ReferenceSpace.bundled(100)
    tracts = space.make_structure_mask([FIBER_TRACTS_ID])
    seeds = np.argwhere((density >= 0.2) & (density <= 0.3) & ~tracts)
    assert 0 < len(seeds)
    data = spatial_search_lines(mcc, 101, density_range=(0.2, 0.3), injection_threshold=0.3,
                                fiber_tract_resolution=100, max_seeds=6, out=tmp_path / "data.json")
    site = next(e for e in mcc.get_experiments() if e["id"] == 101)
    assert len(data["lines"]) == min(6, len(seeds))
    for seed, line in zip(seeds[:6], data["lines"]):
        np.testing.assert_allclose(line[0]["coord"], seed * 100 + 50)  # the seed voxel's centre
        assert line[-1]["coord"] == [site["injection_x"], site["injection_y"], site["injection_z"]]
    expected = (np.argwhere(injection > 0.3) * 100).tolist()
    assert data["injectionCoordinates"] == expected and len(expected) > 0
    assert (tmp_path / "data.json").exists()


def test_allen_base_uri_uses_allens_paths():
    from brainmap.sdk import ALLEN_API_URL, MouseConnectivityApi

    api = MouseConnectivityApi(ALLEN_API_URL)
    assert api.annotation_url(None, 25) == ("http://download.alleninstitute.org/informatics-archive/current-release/"
                                           "mouse_ccf/annotation/ccf_2017/annotation_25.nrrd")
    assert api.template_url(10).endswith("/mouse_ccf/average_template/average_template_10.nrrd")
    assert api.projection_grid_url(156394513, "projection_density", 25) == \
        "http://api.brain-map.org/grid_data/download_file/156394513?image=projection_density&resolution=25"
    assert api.build_query_url("model::Gene") == "http://api.brain-map.org/api/v2/data/query.json?q=model::Gene"
    local = MouseConnectivityApi("http://127.0.0.1:8000")
    assert local.annotation_url(None, 25).startswith("http://127.0.0.1:8000/informatics-archive/")
    with pytest.raises(SdkError, match="base_uri must be an http"):
        MouseConnectivityApi("ftp://example.org")
