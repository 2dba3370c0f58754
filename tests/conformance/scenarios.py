"""The conformance scenarios: AllenSDK calls against a brainmap server, each summarized as JSON.

Run by ``tests/conformance`` in a subprocess, with either interpreter:

* ``--sdk allensdk``: the real, unmodified AllenSDK 2.16.2 in its own Python 3.11 virtual environment;
* ``--sdk brainmap``: brainmap's own SDK (``brainmap.sdk``), which mirrors AllenSDK's class and method names.

``python scenarios.py --sdk allensdk --base-uri http://127.0.0.1:PORT --work DIR --ids IDS.json --out OUT.json``

Each scenario calls one public method and returns a summary of what it returned: shapes, dtypes and sha256 of
arrays, ids, names and selected values of records. The tests compare these with the data directory and the
database the server reads (``test_allensdk.py``). A scenario that raises is recorded with the exception's type,
message and the last lines of its traceback; a scenario that needs a class the SDK lacks is recorded as missing.
This file imports neither pytest nor brainmap's server or store: only the SDK under test, numpy and the
standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

SCENARIOS: dict[str, Callable[["Context"], Any]] = {}


def scenario(name: str) -> Callable[[Callable[["Context"], Any]], Callable[["Context"], Any]]:
    def register(fn: Callable[["Context"], Any]) -> Callable[["Context"], Any]:
        SCENARIOS[name] = fn
        return fn

    return register


class Missing(Exception):
    """The SDK under test has no such class or method."""


#: Bytes of an array summarized at a time by :func:`arr` (a 25 um float64 volume is 616 MB).
CHUNK_BYTES = 1 << 24


def c_order_sha256(a: np.ndarray) -> str:
    """sha256 of an array's C-ordered bytes (``np.ascontiguousarray(a).tobytes()``), hashed a few planes of its
    first axis at a time: the same digest without a whole-volume copy (a Fortran-ordered 25 um grid, as NRRD
    readers return it, would otherwise be copied twice)."""
    a = np.asarray(a)
    digest = hashlib.sha256()
    if a.ndim == 0 or a.flags.c_contiguous:
        digest.update(np.ascontiguousarray(a).data)  # zero-dimensional, or already in C order: no copy
        return digest.hexdigest()
    step = max(1, CHUNK_BYTES // max(1, a[0].nbytes))
    for i in range(0, a.shape[0], step):
        digest.update(np.ascontiguousarray(a[i:i + step]).data)
    return digest.hexdigest()


def arr(a: Any) -> dict[str, Any]:
    """Shape, dtype, sha256 of the C-ordered bytes, sum (NaNs left out) and count of non-zeros of an array."""
    a = np.asarray(a)
    flat = a.reshape(-1, order="A")  # memory order: a view of a C- or Fortran-ordered array
    step = max(1, CHUNK_BYTES // max(1, a.itemsize))
    total = sum(float(np.nansum(flat[i:i + step].astype(np.float64, copy=False))) for i in range(0, flat.size, step))
    return {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": c_order_sha256(a), "sum": total,
            "nonzero": int(np.count_nonzero(a))}


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return arr(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a DataFrame
        return {"columns": [str(c) for c in value.columns], "n_rows": int(len(value)),
                "records": jsonable(value.reset_index(drop=True).head(2000).to_dict("records"))}
    return value


def file_summary(path: str | Path) -> dict[str, Any]:
    data = Path(path).read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "head": data[:16].hex()}


class Context:
    """What a scenario needs: the SDK's classes, the server, a working folder and the data's ids."""

    def __init__(self, sdk: str, base_uri: str, work: Path, ids: dict[str, Any]) -> None:
        self.sdk = sdk
        self.base = base_uri
        self.work = work
        self.ids = ids
        self._classes: dict[str, Any] = {}

    def cls(self, name: str) -> Any:
        if name not in self._classes:
            self._classes[name] = load_class(self.sdk, name)
        return self._classes[name]

    def api(self, name: str) -> Any:
        return self.cls(name)(base_uri=self.base)

    def path(self, *parts: str) -> str:
        target = self.work.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return str(target)

    def cache(self, name: str, folder: str, **kwargs: Any) -> Any:
        cls = self.cls(name)
        manifest = self.path(folder, "manifest.json")
        if self.sdk == "allensdk":
            if name == "ReferenceSpaceCache":
                return cls(kwargs.pop("resolution", 25), "annotation/ccf_2017", manifest=manifest,
                           base_uri=self.base, **kwargs)
            return cls(manifest_file=manifest, base_uri=self.base, **kwargs)
        if name == "ReferenceSpaceCache":
            return cls(kwargs.pop("resolution", 25), "annotation/ccf_2017", manifest=manifest,
                       base_uri=self.base, **kwargs)
        return cls(manifest_file=manifest, base_uri=self.base, **kwargs)


_ALLENSDK = {
    "RmaApi": "allensdk.api.queries.rma_api",
    "OntologiesApi": "allensdk.api.queries.ontologies_api",
    "MouseConnectivityApi": "allensdk.api.queries.mouse_connectivity_api",
    "MouseConnectivityCache": "allensdk.core.mouse_connectivity_cache",
    "ReferenceSpaceApi": "allensdk.api.queries.reference_space_api",
    "ReferenceSpaceCache": "allensdk.core.reference_space_cache",
    "GridDataApi": "allensdk.api.queries.grid_data_api",
    "MouseAtlasApi": "allensdk.api.queries.mouse_atlas_api",
    "ImageDownloadApi": "allensdk.api.queries.image_download_api",
    "SynchronizationApi": "allensdk.api.queries.synchronization_api",
    "SvgApi": "allensdk.api.queries.svg_api",
}


def load_class(sdk: str, name: str) -> Any:
    import importlib

    if sdk == "allensdk":
        return getattr(importlib.import_module(_ALLENSDK[name]), name)
    module = importlib.import_module("brainmap.sdk")
    if not hasattr(module, name):
        raise Missing(f"brainmap.sdk has no {name}")
    return getattr(module, name)


def call(obj: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    fn = getattr(obj, method, None)
    if fn is None:
        raise Missing(f"{type(obj).__module__}.{type(obj).__name__} has no {method}")
    return fn(*args, **kwargs)


def rows(value: Any) -> list[dict[str, Any]]:
    """A list of records from a list, a generator (AllenSDK's pager) or a DataFrame."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):
        return value.to_dict("records")
    return list(value)


def structures(value: Any) -> dict[str, Any]:
    records = rows(value)
    return {"n": len(records), "ids": sorted(int(r["id"]) for r in records),
            "keys": sorted(records[0]) if records else [], "first": jsonable(records[0]) if records else None}


# ====================================================================================================== RmaApi
@scenario("RmaApi.model_query")
def _(c: Context) -> Any:
    found = call(c.api("RmaApi"), "model_query", "Structure", criteria="[acronym$in'VISp','MOp']",
                 include="structure_sets", order=["structures.graph_order"], num_rows="all")
    return [{"id": r["id"], "acronym": r["acronym"], "structure_set_ids": sorted(s["id"] for s in r["structure_sets"])}
            for r in found]


@scenario("RmaApi.model_query_data_sets")
def _(c: Context) -> Any:
    found = call(c.api("RmaApi"), "model_query", "SectionDataSet", criteria="products[id$in1,5]",
                 include="genes,products,plane_of_section", num_rows="all")
    return [{"id": r["id"], "genes": [g["acronym"] for g in r["genes"]], "products": [p["id"] for p in r["products"]],
             "plane": r["plane_of_section"]["name"]} for r in found]


@scenario("RmaApi.service_query")
def _(c: Context) -> Any:
    found = call(c.api("RmaApi"), "service_query", "mouse_connectivity_injection_structure",
                 parameters=[("injection_structures", ["grey"]), ("primary_structure_only", False)])
    return [{"id": r["id"], "structure-abbrev": r.get("structure-abbrev")} for r in found]


@scenario("RmaApi.get_schema")
def _(c: Context) -> Any:
    schema = call(c.api("RmaApi"), "get_schema", "ApiConnectivity")
    return jsonable(schema)


@scenario("RmaApi.load_api_schema")
def _(c: Context) -> Any:
    schema = call(c.api("RmaApi"), "load_api_schema")
    models = schema["msg"] if isinstance(schema, dict) else schema
    return sorted(m["name"] for m in models)


# ================================================================================================ OntologiesApi
@scenario("OntologiesApi.get_structures(graph_ids)")
def _(c: Context) -> Any:
    return structures(call(c.api("OntologiesApi"), "get_structures", [1]))


@scenario("OntologiesApi.get_structures(graph_names)")
def _(c: Context) -> Any:
    return structures(call(c.api("OntologiesApi"), "get_structures", structure_graph_names="'Mouse Brain Atlas'"))


@scenario("OntologiesApi.get_structures(set_ids)")
def _(c: Context) -> Any:
    return structures(call(c.api("OntologiesApi"), "get_structures", structure_set_ids=[167587189]))


@scenario("OntologiesApi.get_structures(set_names)")
def _(c: Context) -> Any:
    return structures(call(c.api("OntologiesApi"), "get_structures",
                           structure_set_names="'Brain - Major Divisions'"))


@scenario("OntologiesApi.get_structures_with_sets")
def _(c: Context) -> Any:
    found = rows(call(c.api("OntologiesApi"), "get_structures_with_sets", [1]))
    visp = next(r for r in found if r["acronym"] == "VISp")
    return {"n": len(found), "VISp_sets": sorted(int(s["id"]) for s in visp["structure_sets"])}


@scenario("OntologiesApi.unpack_structure_set_ancestors")
def _(c: Context) -> Any:
    import pandas as pd

    api = c.api("OntologiesApi")
    frame = pd.DataFrame(rows(call(api, "get_structures_with_sets", [1])))
    call(api, "unpack_structure_set_ancestors", frame)  # adds the column structure_set_ancestor in place
    visp = frame[frame["acronym"] == "VISp"].iloc[0]
    return {"n": len(frame), "VISp_ancestors": [int(i) for i in visp["structure_set_ancestor"]]}


@scenario("OntologiesApi.get_atlases_table")
def _(c: Context) -> Any:
    return jsonable(call(c.api("OntologiesApi"), "get_atlases_table"))


@scenario("OntologiesApi.get_atlases")
def _(c: Context) -> Any:
    return jsonable(call(c.api("OntologiesApi"), "get_atlases"))


@scenario("OntologiesApi.get_structure_graphs")
def _(c: Context) -> Any:
    return jsonable(call(c.api("OntologiesApi"), "get_structure_graphs"))


@scenario("OntologiesApi.get_structure_sets")
def _(c: Context) -> Any:
    found = rows(call(c.api("OntologiesApi"), "get_structure_sets"))
    return sorted([int(r["id"]), r["name"]] for r in found)


# ========================================================================================= MouseConnectivityApi
@scenario("MouseConnectivityApi.get_experiments")
def _(c: Context) -> Any:
    found = call(c.api("MouseConnectivityApi"), "get_experiments", None, num_rows="all")
    return sorted(int(r["id"]) for r in found)


@scenario("MouseConnectivityApi.get_experiments_api")
def _(c: Context) -> Any:
    return jsonable(sorted(call(c.api("MouseConnectivityApi"), "get_experiments_api"), key=lambda r: r["id"]))


@scenario("MouseConnectivityApi.get_manual_injection_summary")
def _(c: Context) -> Any:
    return jsonable(call(c.api("MouseConnectivityApi"), "get_manual_injection_summary", c.ids["connectivity"][0]))


@scenario("MouseConnectivityApi.get_experiment_detail")
def _(c: Context) -> Any:
    (detail,) = call(c.api("MouseConnectivityApi"), "get_experiment_detail", c.ids["connectivity"][0])
    return {"id": detail["id"], "sub_images": [i["section_number"] for i in detail["sub_images"]],
            "equalization": detail["equalization"], "specimen": jsonable(detail["specimen"])}


@scenario("MouseConnectivityApi.get_projection_image_info")
def _(c: Context) -> Any:
    experiment, number = c.ids["connectivity"][0], c.ids["section_number"]
    (info,) = call(c.api("MouseConnectivityApi"), "get_projection_image_info", experiment, number)
    return {"id": info["id"], "equalization": info["equalization"],
            "sub_images": [{"id": i["id"], "section_number": i["section_number"], "width": i["width"],
                            "height": i["height"]} for i in info["sub_images"]]}


@scenario("MouseConnectivityApi.experiment_source_search")
def _(c: Context) -> Any:
    found = call(c.api("MouseConnectivityApi"), "experiment_source_search", injection_structures=["Isocortex"])
    return [{"id": r["id"], "structure-abbrev": r["structure-abbrev"], "injection-volume": r.get("injection-volume")}
            for r in found]


@scenario("MouseConnectivityApi.experiment_source_search(injection_domain)")
def _(c: Context) -> Any:
    found = call(c.api("MouseConnectivityApi"), "experiment_source_search", injection_domain=["grey"],
                 transgenic_lines=[0])
    return sorted(r["id"] for r in found)


@scenario("MouseConnectivityApi.experiment_spatial_search")
def _(c: Context) -> Any:
    found = call(c.api("MouseConnectivityApi"), "experiment_spatial_search", seed_point=c.ids["spatial_seed"])
    return [{"id": r["id"], "density": r.get("density"), "path_length": len(r.get("path") or [])} for r in found]


@scenario("MouseConnectivityApi.experiment_injection_coordinate_search")
def _(c: Context) -> Any:
    found = call(c.api("MouseConnectivityApi"), "experiment_injection_coordinate_search",
                 seed_point=c.ids["injection_seed"])
    return [{"id": r["id"], "distance": r.get("distance")} for r in found]


@scenario("MouseConnectivityApi.experiment_correlation_search")
def _(c: Context) -> Any:
    found = call(c.api("MouseConnectivityApi"), "experiment_correlation_search", row=c.ids["connectivity"][0])
    return [{"id": r["id"], "r": r.get("r")} for r in found]


@scenario("MouseConnectivityApi.get_structure_unionizes")
def _(c: Context) -> Any:
    found = call(c.api("MouseConnectivityApi"), "get_structure_unionizes", c.ids["connectivity"],
                 is_injection=False, hemisphere_ids=[1, 2], include=None)
    return {"n": len(found), "rows": sorted([r["section_data_set_id"], r["structure_id"], r["hemisphere_id"],
                                              r["projection_volume"]] for r in found)}


def _grid(c: Context, method: str, name: str, resolution: int = 100) -> Any:
    api = c.api("MouseConnectivityApi")
    experiment = c.ids["connectivity"][0]
    path = c.path("grids", f"{name}_{experiment}_{resolution}.nrrd")
    call(api, method, path, experiment, resolution)
    import nrrd

    data, header = nrrd.read(path)
    return {"array": arr(data), "space directions": np.asarray(header["space directions"]).tolist()}


@scenario("MouseConnectivityApi.download_projection_density")
def _(c: Context) -> Any:
    return _grid(c, "download_projection_density", "projection_density")


@scenario("MouseConnectivityApi.download_injection_density")
def _(c: Context) -> Any:
    return _grid(c, "download_injection_density", "injection_density")


@scenario("MouseConnectivityApi.download_injection_fraction")
def _(c: Context) -> Any:
    return _grid(c, "download_injection_fraction", "injection_fraction")


@scenario("MouseConnectivityApi.download_data_mask")
def _(c: Context) -> Any:
    return _grid(c, "download_data_mask", "data_mask")


@scenario("MouseConnectivityApi.calculate_injection_centroid")
def _(c: Context) -> Any:
    mcc = c.cache("MouseConnectivityCache", "mcc_centroid", resolution=100)
    experiment = c.ids["connectivity"][0]
    density, _ = mcc.get_injection_density(experiment)
    fraction, _ = mcc.get_injection_fraction(experiment)
    centroid = call(c.api("MouseConnectivityApi"), "calculate_injection_centroid", density, fraction, 100)
    return [float(v) for v in centroid]


@scenario("MouseConnectivityApi.download_reference_aligned_image_channel_volumes")
def _(c: Context) -> Any:
    api = c.api("MouseConnectivityApi")
    url = call(api, "get_reference_aligned_image_channel_volumes_url", c.ids["connectivity"][0])
    path = c.path("aligned", "channels.zip")
    call(api, "download_reference_aligned_image_channel_volumes", c.ids["connectivity"][0], path)
    return {"url": url, **file_summary(path)}


# ======================================================================================= MouseConnectivityCache
def _mcc(c: Context, resolution: int = 100) -> Any:
    return c.cache("MouseConnectivityCache", f"mcc_{resolution}", resolution=resolution)


@scenario("MouseConnectivityCache.get_experiments")
def _(c: Context) -> Any:
    return jsonable(sorted(_mcc(c).get_experiments(), key=lambda e: e["id"]))


@scenario("MouseConnectivityCache.get_experiments(dataframe)")
def _(c: Context) -> Any:
    frame = _mcc(c).get_experiments(dataframe=True)
    return {"index": sorted(int(i) for i in frame.index), "columns": sorted(str(k) for k in frame.columns)}


@scenario("MouseConnectivityCache.get_experiments(cre=False, injection_structure_ids=[315])")
def _(c: Context) -> Any:
    return sorted(e["id"] for e in _mcc(c).get_experiments(cre=False, injection_structure_ids=[315]))


@scenario("MouseConnectivityCache.get_experiments(cre=True)")
def _(c: Context) -> Any:
    return sorted(e["id"] for e in _mcc(c).get_experiments(cre=True))


@scenario("MouseConnectivityCache.filter_experiments")
def _(c: Context) -> Any:
    mcc = _mcc(c)
    return sorted(e["id"] for e in mcc.filter_experiments(mcc.get_experiments(), cre=False,
                                                          injection_structure_ids=[1089]))  # HPF


def _volume(c: Context, method: str, resolution: int = 100) -> Any:
    data, header = getattr(_mcc(c, resolution), method)(c.ids["connectivity"][0])
    return {"array": arr(data), "space directions": np.asarray(header["space directions"]).tolist()}


@scenario("MouseConnectivityCache.get_projection_density")
def _(c: Context) -> Any:
    return _volume(c, "get_projection_density")


@scenario("MouseConnectivityCache.get_injection_density")
def _(c: Context) -> Any:
    return _volume(c, "get_injection_density")


@scenario("MouseConnectivityCache.get_injection_fraction")
def _(c: Context) -> Any:
    return _volume(c, "get_injection_fraction")


@scenario("MouseConnectivityCache.get_data_mask")
def _(c: Context) -> Any:
    return _volume(c, "get_data_mask")


@scenario("MouseConnectivityCache.get_projection_density(resolution=25)")
def _(c: Context) -> Any:
    return _volume(c, "get_projection_density", 25)


@scenario("MouseConnectivityCache.get_experiment_structure_unionizes")
def _(c: Context) -> Any:
    frame = _mcc(c).get_experiment_structure_unionizes(c.ids["connectivity"][0], is_injection=False,
                                                       hemisphere_ids=[3])
    return {"n": len(frame), "sum_projection_volume": float(frame["projection_volume"].sum()),
            "columns": sorted(frame.columns)}


@scenario("MouseConnectivityCache.get_structure_unionizes")
def _(c: Context) -> Any:
    frame = _mcc(c).get_structure_unionizes(c.ids["connectivity"], is_injection=False, structure_ids=[315, 1089],
                                            include_descendants=False, hemisphere_ids=[1, 2])
    return sorted([int(r["experiment_id"]), int(r["structure_id"]), int(r["hemisphere_id"]),
                   float(r["normalized_projection_volume"])] for r in frame.to_dict("records"))


@scenario("MouseConnectivityCache.rank_structures")
def _(c: Context) -> Any:
    mcc = _mcc(c)
    summary = [int(s["id"]) for s in mcc.get_structure_tree().get_structures_by_set_id([167587189])]
    ranked = mcc.rank_structures(c.ids["connectivity"], False, structure_ids=summary, hemisphere_ids=[1, 2],
                                 n=5)
    return [[[int(r["structure_id"]), int(r["hemisphere_id"]), float(r["normalized_projection_volume"])]
             for r in experiment] for experiment in ranked]


@scenario("MouseConnectivityCache.rank_structures(defaults)")
def _(c: Context) -> Any:
    ranked = _mcc(c).rank_structures(c.ids["connectivity"], False)
    return [[[int(r["structure_id"]), int(r["hemisphere_id"]), float(r["normalized_projection_volume"])]
             for r in experiment] for experiment in ranked]


@scenario("MouseConnectivityCache.filter_structure_unionizes")
def _(c: Context) -> Any:
    mcc = _mcc(c)
    frame = mcc.get_experiment_structure_unionizes(c.ids["connectivity"][0])
    kept = mcc.filter_structure_unionizes(frame, is_injection=True, structure_ids=[997], include_descendants=True,
                                          hemisphere_ids=[3])
    return {"n": len(kept), "structures": sorted(int(s) for s in kept["structure_id"].unique())[:5]}


@scenario("MouseConnectivityCache.get_projection_matrix")
def _(c: Context) -> Any:
    matrix = _mcc(c).get_projection_matrix(c.ids["connectivity"], projection_structure_ids=[315, 1089, 549],
                                           hemisphere_ids=[1, 2], parameter="projection_density")
    return {"rows": [int(r) for r in matrix["rows"]],
            "columns": [[int(col["structure_id"]), int(col["hemisphere_id"])] for col in matrix["columns"]],
            "matrix": np.asarray(matrix["matrix"], dtype=float).round(12).tolist()}


@scenario("MouseConnectivityCache.get_affine_parameters")
def _(c: Context) -> Any:
    return {d: np.asarray(_mcc(c).get_affine_parameters(c.ids["connectivity"][0], direction=d)).tolist()
            for d in ("trv", "tvr")}


@scenario("MouseConnectivityCache.get_structure_tree")
def _(c: Context) -> Any:
    tree = _mcc(c).get_structure_tree()
    isocortex = tree.get_structures_by_name(["Isocortex"])[0]
    return {"n": len(tree.nodes()), "Isocortex": int(isocortex["id"]),
            "descendants": len(tree.descendant_ids([isocortex["id"]])[0])}


@scenario("MouseConnectivityCache.get_annotation_volume")
def _(c: Context) -> Any:
    data, _ = _mcc(c, 100).get_annotation_volume()
    return arr(data)


@scenario("MouseConnectivityCache.get_reference_space")
def _(c: Context) -> Any:
    space = _mcc(c).get_reference_space()
    return {"shape": list(space.annotation.shape), "resolution": [float(r) for r in space.resolution]}


@scenario("MouseConnectivityCache.get_structure_mask")
def _(c: Context) -> Any:
    mask, _ = _mcc(c).get_structure_mask(385)
    return arr(mask)


@scenario("MouseConnectivityCache.get_template_volume")
def _(c: Context) -> Any:
    return arr(_mcc(c).get_template_volume()[0])


@scenario("MouseConnectivityCache.get_deformation_field")
def _(c: Context) -> Any:
    return arr(call(_mcc(c), "get_deformation_field", c.ids["connectivity"][0]))


@scenario("allensdk docs: Mouse Connectivity Cache example")
def _(c: Context) -> Any:
    """The AllenSDK documentation's example, unmodified but for base_uri (and Api.download_url, set at start)."""
    folder = Path(c.path("docs_example", "x")).parent
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        MouseConnectivityCache = c.cls("MouseConnectivityCache")
        # tell the cache class what resolution (in microns) of data you want to download
        mcc = MouseConnectivityCache(resolution=25, base_uri=c.base)
        # use the structure tree class to get information about the isocortex structure
        structure_tree = mcc.get_structure_tree()
        isocortex_id = structure_tree.get_structures_by_name(['Isocortex'])[0]['id']
        # a list of dictionaries containing metadata for non-Cre experiments
        experiments = mcc.get_experiments(file_name='non_cre.json',
                                          injection_structure_ids=[isocortex_id])
        # download the projection density volume for one of the experiments
        pd = mcc.get_projection_density(experiments[0]['id'])
    finally:
        os.chdir(cwd)
    return {"isocortex_id": int(isocortex_id), "experiments": sorted(e["id"] for e in experiments),
            "first": experiments[0]["id"], "projection_density": arr(pd[0]),
            "non_cre.json": (folder / "non_cre.json").exists()}


# ============================================================================ ReferenceSpaceApi / ReferenceSpaceCache
@scenario("ReferenceSpaceApi.download_annotation_volume")
def _(c: Context) -> Any:
    data, _ = call(c.api("ReferenceSpaceApi"), "download_annotation_volume", "annotation/ccf_2017", 50,
                   c.path("rsa", "annotation_50.nrrd"))
    return arr(data)


@scenario("ReferenceSpaceApi.download_structure_mask")
def _(c: Context) -> Any:
    path = c.path("rsa", "structure_385.nrrd")
    call(c.api("ReferenceSpaceApi"), "download_structure_mask", 385, None, 50, path)
    import nrrd

    return arr(nrrd.read(path)[0])


@scenario("ReferenceSpaceApi.download_structure_mesh")
def _(c: Context) -> Any:
    path = c.path("rsa", "385.obj")
    call(c.api("ReferenceSpaceApi"), "download_structure_mesh", 385, None, path)
    vertices = np.array([[float(v) for v in line.split()[1:4]] for line in Path(path).read_text().splitlines()
                         if line.startswith("v ")])
    return {"n_vertices": len(vertices), "min": vertices.min(0).tolist(), "max": vertices.max(0).tolist()}


@scenario("ReferenceSpaceApi.download_volumetric_data")
def _(c: Context) -> Any:
    path = c.path("rsa", "annotation_100.nrrd")
    call(c.api("ReferenceSpaceApi"), "download_volumetric_data", "annotation/ccf_2017", "annotation_100.nrrd",
         save_file_path=path)
    return file_summary(path)


@scenario("ReferenceSpaceApi.download_annotation_volume(ccf_2016)")
def _(c: Context) -> Any:
    call(c.api("ReferenceSpaceApi"), "download_annotation_volume", "annotation/ccf_2016", 25,
         c.path("rsa", "annotation_2016_25.nrrd"))
    return "downloaded"


def _rsc(c: Context, resolution: int = 50) -> Any:
    # 50 and 100 um keep the suite fast (AllenSDK's ReferenceSpace takes a minute at 25 um on two cores)
    return c.cache("ReferenceSpaceCache", f"rsc_{resolution}", resolution=resolution)


@scenario("ReferenceSpaceCache.get_annotation_volume")
def _(c: Context) -> Any:
    return arr(_rsc(c).get_annotation_volume()[0])


@scenario("ReferenceSpaceCache.get_structure_tree")
def _(c: Context) -> Any:
    tree = _rsc(c).get_structure_tree()
    visp = tree.get_structures_by_acronym(["VISp"])[0]
    return {"n": len(tree.nodes()), "VISp": jsonable(visp)}


@scenario("ReferenceSpaceCache.get_reference_space")
def _(c: Context) -> Any:
    space = _rsc(c, 100).get_reference_space()
    counts = space.total_voxel_map if hasattr(space, "total_voxel_map") else None
    mask = space.make_structure_mask([315])
    return {"shape": list(space.annotation.shape), "isocortex_voxels": int(mask.sum()), "has_counts": counts is not None}


@scenario("ReferenceSpaceCache.get_structure_mask")
def _(c: Context) -> Any:
    return arr(_rsc(c).get_structure_mask(385)[0])


@scenario("ReferenceSpaceCache.get_structure_mesh")
def _(c: Context) -> Any:
    vertices, normals, triangles, _ = _rsc(c).get_structure_mesh(385)
    return {"n_vertices": len(vertices), "n_triangles": len(triangles),
            "min": np.asarray(vertices).min(0).tolist(), "max": np.asarray(vertices).max(0).tolist()}


@scenario("ReferenceSpaceCache.validate_structure_ids")
def _(c: Context) -> Any:
    cls = c.cls("ReferenceSpaceCache")
    return [int(i) for i in cls.validate_structure_ids([385, np.int64(315)])]


# ================================================================================================== GridDataApi
def _mhd(path: Path) -> Any:
    import SimpleITK as sitk

    return arr(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


@scenario("GridDataApi.download_gene_expression_grid_data")
def _(c: Context) -> Any:
    folder = Path(c.path("grid_ish", "x")).parent
    call(c.api("GridDataApi"), "download_gene_expression_grid_data", c.ids["ish"][0], "energy",
         str(folder / "energy.zip"))
    return {"files": sorted(p.name for p in folder.iterdir()), "energy": _mhd(folder / "energy.mhd")}


@scenario("GridDataApi.download_expression_grid_data")
def _(c: Context) -> Any:
    path = c.path("grid_ish2", "grid.zip")
    call(c.api("GridDataApi"), "download_expression_grid_data", c.ids["ish"][0], include=["energy", "density"],
         path=path)
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return sorted(zf.namelist())


@scenario("GridDataApi.download_projection_grid_data")
def _(c: Context) -> Any:
    path = c.path("grid_conn", "projection_density_100.nrrd")
    call(c.api("GridDataApi"), "download_projection_grid_data", c.ids["connectivity"][0],
         image=["projection_density"], resolution=100, save_file_path=path)
    import nrrd

    return arr(nrrd.read(path)[0])


@scenario("GridDataApi.download_alignment3d")
def _(c: Context) -> Any:
    return jsonable(call(c.api("GridDataApi"), "download_alignment3d", c.ids["connectivity"][0]))


@scenario("GridDataApi.download_deformation_field")
def _(c: Context) -> Any:
    call(c.api("GridDataApi"), "download_deformation_field", c.ids["connectivity"][0],
         header_path=c.path("dfmfld", "dfmfld.mhd"), voxel_path=c.path("dfmfld", "dfmfld.raw"))
    return "downloaded"


# ================================================================================================ MouseAtlasApi
@scenario("MouseAtlasApi.get_section_data_sets")
def _(c: Context) -> Any:
    found = rows(call(c.api("MouseAtlasApi"), "get_section_data_sets"))
    return [{"id": r["id"], "genes": [g["acronym"] for g in r["genes"]]} for r in found]


@scenario("MouseAtlasApi.get_genes")
def _(c: Context) -> Any:
    found = rows(call(c.api("MouseAtlasApi"), "get_genes"))
    return jsonable(found)


def _expression(c: Context, method: str) -> Any:
    kind = method.rsplit("_", 1)[1]  # the zip holds {kind}.mhd/.raw; AllenSDK reads the file it is given
    path = c.path("atlas_api", method, f"{kind}.mhd")
    found = call(c.api("MouseAtlasApi"), method, path, c.ids["ish"][0])
    data = found[0] if isinstance(found, tuple) else found  # AllenSDK's reader gives (array, metadata)
    return arr(data)


@scenario("MouseAtlasApi.download_expression_density")
def _(c: Context) -> Any:
    return _expression(c, "download_expression_density")


@scenario("MouseAtlasApi.download_expression_energy")
def _(c: Context) -> Any:
    return _expression(c, "download_expression_energy")


@scenario("MouseAtlasApi.download_expression_intensity")
def _(c: Context) -> Any:
    return _expression(c, "download_expression_intensity")


# ============================================================================================= ImageDownloadApi
@scenario("ImageDownloadApi.get_section_image_ranges")
def _(c: Context) -> Any:
    return call(c.api("ImageDownloadApi"), "get_section_image_ranges", [c.ids["section_image"], c.ids["ish_image"]])


@scenario("ImageDownloadApi.get_section_data_sets_by_product")
def _(c: Context) -> Any:
    return sorted(r["id"] for r in call(c.api("ImageDownloadApi"), "get_section_data_sets_by_product", [1]))


@scenario("ImageDownloadApi.section_image_query")
def _(c: Context) -> Any:
    found = call(c.api("ImageDownloadApi"), "section_image_query", c.ids["connectivity"][0])
    return sorted([r["id"], r["section_number"], r["width"], r["height"]] for r in found)


def _jpeg(path: str) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return {"format": image.format, "size": list(image.size), "mean": np.asarray(image, float).mean(axis=(0, 1)).tolist()}


@scenario("ImageDownloadApi.download_section_image")
def _(c: Context) -> Any:
    path = c.path("images", "section.jpg")
    call(c.api("ImageDownloadApi"), "download_section_image", c.ids["section_image"], path, downsample=1,
         quality=90, range=[0, 4095, 0, 1000, 0, 4095])
    return _jpeg(path)


@scenario("ImageDownloadApi.download_section_image(view=projection)")
def _(c: Context) -> Any:
    path = c.path("images", "section_projection.jpg")
    call(c.api("ImageDownloadApi"), "download_section_image", c.ids["section_image"], path, view="projection")
    return _jpeg(path)


@scenario("ImageDownloadApi.download_image(roi)")
def _(c: Context) -> Any:
    path = c.path("images", "roi.jpg")
    call(c.api("ImageDownloadApi"), "download_image", c.ids["section_image"], path, left=20, top=10, width=40,
         height=30)
    return _jpeg(path)


@scenario("ImageDownloadApi.download_projection_image")
def _(c: Context) -> Any:
    path = c.path("images", "projection.jpg")
    call(c.api("ImageDownloadApi"), "download_projection_image", c.ids["section_image"], path, downsample=2)
    return _jpeg(path)


@scenario("ImageDownloadApi.download_atlas_image")
def _(c: Context) -> Any:
    path = c.path("images", "atlas.jpg")
    call(c.api("ImageDownloadApi"), "download_atlas_image", c.ids["atlas_image"], path, annotation=True)
    return _jpeg(path)


@scenario("ImageDownloadApi.atlas_image_query")
def _(c: Context) -> Any:
    found = call(c.api("ImageDownloadApi"), "atlas_image_query", 1)
    return [[r["id"], r["section_number"]] for r in found]


@scenario("ImageDownloadApi.atlas_image_query(image_type_name)")
def _(c: Context) -> Any:
    found = call(c.api("ImageDownloadApi"), "atlas_image_query", 2, image_type_name="Atlas - Adult Mouse")
    return [[r["id"], r["section_number"]] for r in found]


# ======================================================================================================= SvgApi
@scenario("SvgApi.download_svg")
def _(c: Context) -> Any:
    path = c.path("svg", "plate.svg")
    call(c.api("SvgApi"), "download_svg", c.ids["atlas_image"], groups=[28], file_path=path)
    return file_summary(path)


@scenario("SvgApi.get_svg")
def _(c: Context) -> Any:
    text = call(c.api("SvgApi"), "get_svg", c.ids["atlas_image"])
    data = text if isinstance(text, bytes) else str(text).encode()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# =========================================================================================== SynchronizationApi
@scenario("SynchronizationApi.get_image_to_reference")
def _(c: Context) -> Any:
    return call(c.api("SynchronizationApi"), "get_image_to_reference", c.ids["section_image"], 60, 40)


@scenario("SynchronizationApi.get_reference_to_image")
def _(c: Context) -> Any:
    return call(c.api("SynchronizationApi"), "get_reference_to_image", 9, 7000, 3000, 4000, c.ids["connectivity"])


@scenario("SynchronizationApi.get_image_to_image")
def _(c: Context) -> Any:
    return call(c.api("SynchronizationApi"), "get_image_to_image", c.ids["section_image"], 60, 40,
                c.ids["connectivity"][1:])


@scenario("SynchronizationApi.get_image_to_image_2d")
def _(c: Context) -> Any:
    return call(c.api("SynchronizationApi"), "get_image_to_image_2d", c.ids["section_image"], 60, 40,
                [c.ids["neighbour_image"]])


@scenario("SynchronizationApi.get_image_to_atlas")
def _(c: Context) -> Any:
    return call(c.api("SynchronizationApi"), "get_image_to_atlas", c.ids["section_image"], 60, 40, 1)


@scenario("SynchronizationApi.get_structure_to_image")
def _(c: Context) -> Any:
    return call(c.api("SynchronizationApi"), "get_structure_to_image", c.ids["connectivity"][0], [385, 502])


# ========================================================================================================= main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdk", choices=("allensdk", "brainmap"), required=True)
    parser.add_argument("--base-uri", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.sdk == "allensdk":
        from allensdk.api.api import Api

        Api.download_url = args.base_uri  # the one archive-host setting (README)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    context = Context(args.sdk, args.base_uri, work, json.loads(Path(args.ids).read_text()))
    results: dict[str, Any] = {}
    for name, fn in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        try:
            results[name] = {"ok": True, "result": jsonable(fn(context))}
        except Missing as exc:
            results[name] = {"ok": False, "missing": str(exc)}
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, the run goes on
            if isinstance(exc, KeyboardInterrupt):
                raise
            tail = traceback.format_exc().strip().splitlines()[-6:]
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": tail}
        results[name]["seconds"] = round(time.perf_counter() - started, 3)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
