"""Search pages: a form and a result table for every search service, ``/search/{page}?...``.

The form's fields are the service's Allen parameters (their names in the URL, so a result page is a link).
Structure fields take acronyms, names, words of a name or ids, comma-separated; they are resolved here
(:func:`brainmap.atlas.describe.resolve_structure`) and the service is called with ids, in process, through the
same :func:`~brainmap.server.routes_services.service_result` the API uses. Result rows link to experiment
pages; every table has a CSV link: the same ``service::`` call on ``/api/v2/data/query.csv``.

The spatial search draws each row's path from the seed to the injection site over a horizontal annotation slice
(SVG polylines in microns); AGEA (``/search/agea?plane=coronal|sagittal``) draws the seed voxel's correlation map
over a coronal or sagittal slice (``/portal/agea/map.png``) and a click on the slice sets a new seed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from brainmap.errors import BrainmapError
from brainmap.server.portal.catalog import catalog_of
from brainmap.server.portal.render import error_page, page
from brainmap.server.routes_data import state_of

__all__ = ["PAGES", "SearchPage", "criteria_of", "router"]

router = APIRouter(include_in_schema=False)

PAGE_ROWS = 50


@dataclass(frozen=True)
class Field:
    """A form field: Allen's parameter name, its label, kind (structures, point, pair, ints, int, float, select,
    bool, text, dataset) and choices; ``more``: under the form's "more options"."""

    name: str
    label: str
    kind: str = "text"
    required: bool = False
    choices: tuple[str, ...] = ()
    hint: str = ""
    more: bool = False


@dataclass(frozen=True)
class SearchPage:
    slug: str
    service: str
    title: str
    doc: str
    fields: tuple[Field, ...]
    product: str = "connectivity"  # whose data sets a ``dataset`` field lists
    draws: str = ""  # "paths" or "agea"


_SET = Field("set", "Data sets", "select", choices=("mouse", "mouse_coronal"),
             hint="mouse: sagittal genome-wide set; mouse_coronal: coronal set")
_HEMI = ("", "left", "right")
_FILTERS = (Field("transgenic_lines", "Transgenic lines", "text", hint="names or ids; 0 = wild type only"),
            Field("primary_structure_only", "Primary injection structure only", "bool"),
            Field("product_ids", "Product ids", "ints", hint="e.g. 5 (connectivity)", more=True))
_SORT = Field("sort_order", "Sort order", "select", choices=("", "desc", "asc"), hint="by r (default desc)",
              more=True)
_THRESHOLDS = (Field("threshold1", "Target mean clamp", "pair", hint="lo,hi", more=True),
               Field("threshold2", "Contrast mean clamp", "pair", hint="lo,hi", more=True))

PAGES: dict[str, SearchPage] = {p.slug: p for p in (
    SearchPage("source", "mouse_connectivity_injection_structure", "Source search",
               "Experiments whose injection is in the given structures (or their descendants).",
               (Field("injection_structures", "Injection structures", "structures", True),
                Field("injection_hemisphere", "Injection hemisphere", "select", choices=_HEMI), *_FILTERS,
                Field("target_domain", "Target structures", "structures", hint="ranks by projection volume there",
                      more=True),
                Field("target_hemisphere", "Target hemisphere", "select", choices=_HEMI, more=True))),
    SearchPage("target", "mouse_connectivity_target", "Target search",
               "Experiments ranked by the projection volume they send to the target structures.",
               (Field("target_domain", "Target structures", "structures", True),
                Field("injection_structures", "Injection structures", "structures"),
                Field("target_hemisphere", "Target hemisphere", "select", choices=_HEMI),
                Field("injection_hemisphere", "Injection hemisphere", "select", choices=_HEMI), *_FILTERS)),
    SearchPage("spatial", "mouse_connectivity_target_spatial", "Spatial search",
               "Experiments with projection density at a point, each with the path from the point back to its "
               "injection site (drawn).",
               (Field("seed_point", "Seed point (AP, DV, LR um)", "point", True),
                Field("injection_structures", "Injection structures", "structures"), *_FILTERS,
                Field("section_data_set", "Only data sets", "ints", hint="ids, comma-separated", more=True)),
               draws="paths"),
    SearchPage("injection_coordinate", "mouse_connectivity_injection_coordinate", "Injection coordinate search",
               "Experiments ranked by the distance of their injection site to a point.",
               (Field("seed_point", "Point (AP, DV, LR um)", "point", True),
                Field("injection_distance_threshold", "Largest distance (um)", "float"),
                Field("injection_structures", "Injection structures", "structures"), *_FILTERS)),
    SearchPage("connectivity_correlation", "mouse_connectivity_correlation", "Connectivity correlation search",
               "Experiments ranked by Pearson's r of their projection density with a seed experiment's.",
               (Field("row", "Seed experiment", "dataset", True),
                Field("structures", "Domain structures", "structures", hint="default: the whole brain"),
                Field("hemisphere", "Hemisphere", "select", choices=_HEMI),
                Field("injection_structures", "Injection structures", "structures"), *_FILTERS, _SORT)),
    SearchPage("differential", "mouse_differential", "Differential search",
               "Genes (ISH data sets) by fold change of mean expression energy in the target structures over "
               "the contrast structures.",
               (_SET, Field("structures1", "Target structures", "structures", True),
                Field("structures2", "Contrast structures", "structures", True), *_THRESHOLDS), product="ish"),
    SearchPage("correlation", "mouse_correlation", "Gene correlation search",
               "Genes (ISH data sets) ranked by Pearson's r of expression energy with a seed data set.",
               (_SET, Field("row", "Seed data set", "dataset", True),
                Field("structures", "Domain structures", "structures", hint="default: the whole brain"), _SORT),
               product="ish"),
    SearchPage("agea", "mouse_agea", "AGEA: anatomic gene expression atlas",
               "Voxels by the correlation of their expression, across data sets, with a seed voxel's. Click the "
               "slice to choose the seed.",
               (_SET, Field("seed_point", "Seed point (AP, DV, LR um)", "point", True),
                Field("structures", "Domain structures", "structures", hint="default: the whole brain"),
                Field("seed_age", "Seed age", "select", choices=("", "P56"), more=True),
                Field("map_age", "Map age", "select", choices=("", "P56"), more=True),
                Field("correlation_threshold1", "Gene finder: contrast voxels, r >=", "float", more=True),
                Field("correlation_threshold2", "Gene finder: target voxels, r >=", "float", more=True),
                *_THRESHOLDS),
               product="ish", draws="agea"),
)}


def _resolve_structures(tree: Any, text: str) -> str:
    """Comma-separated ids of what was typed (acronyms, names, words of a name, ids)."""
    from brainmap.atlas.describe import resolve_structure

    ids = [str(int(resolve_structure(tree, token)["id"])) for token in text.split(",") if token.strip()]
    return ",".join(ids)


def criteria_of(spec: SearchPage, values: dict[str, str], tree: Any) -> str:
    """The ``service::`` criteria of a filled form (raises a BrainmapError on a bad value)."""
    parts = [f"service::{spec.service}"]
    for f in spec.fields:
        value = values.get(f.name, "").strip()
        if not value:
            if f.required:
                raise _MissingField(f"{f.label} is required")
            continue
        if f.kind == "structures":
            value = _resolve_structures(tree, value)
        elif f.kind in ("point", "pair"):
            n, what = (3, "three numbers (AP, DV, LR in um)") if f.kind == "point" else (2, "two numbers (lo,hi)")
            numbers = [v for v in value.replace(";", ",").split(",") if v.strip()]
            try:
                value = ",".join(f"{float(v):g}" for v in numbers)
            except ValueError:
                raise _MissingField(f"{f.label}: {value!r} is not {what}") from None
            if len(numbers) != n:
                raise _MissingField(f"{f.label}: give {what}, got {len(numbers)}")
        elif f.kind == "ints":
            numbers = [v.strip() for v in value.split(",") if v.strip()]
            if not all(v.isdigit() for v in numbers):
                raise _MissingField(f"{f.label}: {value!r} is not comma-separated ids")
            value = ",".join(numbers)
        elif f.kind == "float":
            try:
                value = f"{float(value):g}"
            except ValueError:
                raise _MissingField(f"{f.label}: {value!r} is not a number") from None
        elif f.kind == "bool":
            value = "true" if value.lower() in ("1", "true", "on", "yes") else "false"
        elif f.kind in ("int", "dataset") and not value.lstrip("-").isdigit():
            raise _MissingField(f"{f.label}: {value!r} is not a data set id")
        parts.append(f"[{f.name}$eq{value}]")
    return "".join(parts)


class _MissingField(BrainmapError, ValueError):
    """A form field is missing or malformed."""


def _cell(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else ""
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], dict):
            return "; ".join(str(v.get("abbreviation") or v.get("acronym") or v.get("id", "")) for v in value)
        return ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value[:6]) + \
            (" …" if len(value) > 6 else "")
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in list(value.items())[:4])
    return "" if value is None else str(value)


_ID_KEYS = ("id", "data_set_id", "section_data_set_id")
_HIDDEN = ("path", "structure-color")


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    if not rows:
        return [], []
    keys = [k for k in rows[0] if k not in _HIDDEN]
    out = []
    for row in rows:
        link = next((row[k] for k in _ID_KEYS if k in row and isinstance(row[k], int)), None)
        out.append({"link": link, "cells": [(k, _cell(k, row.get(k))) for k in keys]})
    return keys, out


def _dataset_choices(catalog: Any, product: str) -> list[tuple[int, str]]:
    out = []
    for r in catalog.records:
        if product == "connectivity" and r.is_connectivity:
            out.append((r.id, f"{r.id} ({r.line or 'wild type'}, injection {r.primary_injection_id})"))
        elif product == "ish" and not r.is_connectivity:
            out.append((r.id, f"{r.id} ({r.gene}, {r.plane})"))
    return out


_PATH_COLORS = ("#00e5ff", "#ffea00", "#ff6d00", "#76ff03", "#d500f9", "#ffffff")


def _paths_svg(rows: list[dict[str, Any]], seed: list[float], space: Any) -> str:
    """Each row's path (AP, LR of its points, um) as a polyline over a horizontal slice (viewBox in um)."""
    ap_um, lr_um = space.shape[0] * float(space.resolution[0]), space.shape[2] * float(space.resolution[2])
    lines = []
    for k, row in enumerate(rows):
        coords = [p["coord"] if isinstance(p, dict) else p for p in (row.get("path") or [])]
        if len(coords) < 2:
            continue
        points = " ".join(f"{float(c[2]):.0f},{float(c[0]):.0f}" for c in coords)
        color = _PATH_COLORS[k % len(_PATH_COLORS)]
        lines.append(f'<polyline class="path" data-id="{row.get("id")}" points="{points}" fill="none" '
                     f'stroke="{color}" stroke-width="45" stroke-linejoin="round" stroke-opacity="0.9">'
                     f'<title>experiment {row.get("id")}</title></polyline>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" id="paths" viewBox="0 0 {lr_um:.0f} {ap_um:.0f}" '
            f'preserveAspectRatio="none">{"".join(lines)}'
            f'<circle cx="{seed[2]:.0f}" cy="{seed[0]:.0f}" r="110" fill="#ff2bd6" stroke="#fff" stroke-width="30">'
            f"<title>seed point</title></circle></svg>")


@router.get("/search", response_class=HTMLResponse)
def search_index(request: Request) -> HTMLResponse:
    return page("search_index.html", nav="search", pages=list(PAGES.values()))


@router.get("/search/{slug}", response_class=HTMLResponse)
def search_page(request: Request, slug: str) -> HTMLResponse:
    spec = PAGES.get(slug)
    if spec is None:
        return error_page(404, "No such search", f"There is no search named {slug!r}; the searches are "
                          + ", ".join(PAGES) + ".", nav="search")
    state = state_of(request)
    tree = state.structure_tree
    values = {f.name: request.query_params.get(f.name, "") for f in spec.fields}
    if spec.draws == "agea" and not values.get("set"):
        values["set"] = "mouse_coronal"
    start = request.query_params.get("start_row", "0")
    start_row = int(start) if start.isdigit() else 0
    submitted = any(request.query_params.get(f.name) for f in spec.fields if f.required)
    catalog = catalog_of(state)
    context: dict[str, Any] = {"nav": "search", "spec": spec, "values": values, "submitted": submitted,
                               "datasets": _dataset_choices(catalog, spec.product), "error": "", "keys": [],
                               "rows": [], "total": 0, "start_row": start_row, "page_rows": PAGE_ROWS,
                               "csv": "", "paths_svg": "", "seed": None,
                               "loaded": len(catalog.records), "data_dir": state.data_dir}
    status = 200
    if submitted:
        from brainmap.server.routes_services import service_result
        from brainmap.store.rma import parse_rma

        try:
            criteria = criteria_of(spec, values, tree)
            paged = criteria + f"[start_row$eq{start_row}][num_rows$eq{PAGE_ROWS}]"
            call = parse_rma(paged).stages[0]
            result = service_result(state, call, paged)
        except BrainmapError as exc:
            context["error"] = str(exc)
            status = 400
        else:
            keys, table = _table(result.rows)
            context.update(keys=keys, rows=table, total=result.total_rows,
                           csv="/api/v2/data/query.csv?" + urlencode({"criteria": criteria}))
            query = {k: v for k, v in values.items() if v}
            if spec.draws == "agea" and request.query_params.get("plane") in AGEA_PLANES:
                query["plane"] = request.query_params["plane"]
            context["page_url"] = lambda s: f"/search/{slug}?" + urlencode({**query, "start_row": s})
            if spec.draws in ("paths", "agea"):
                seed = [float(v) for v in criteria.split("seed_point$eq")[1].split("]")[0].split(",")]
                context["seed"] = seed
            if spec.draws == "paths":
                context["paths_svg"] = _paths_svg(result.rows, context["seed"], state.reference_space(100))
    if spec.draws == "agea":
        space = state.reference_space(100)
        plane = request.query_params.get("plane", "coronal")
        plane = plane if plane in AGEA_PLANES else "coronal"
        axis, across = AGEA_PLANES[plane]
        context["agea_plane"] = plane
        context["slice_at"] = context["seed"][axis] if context["seed"] else (6650.0 if axis == 0 else 4050.0)
        context["slice_max"] = space.shape[axis] * 100 - 50
        context["atlas_size"] = (space.shape[across], space.shape[1])  # columns (LR or AP), rows (DV)
    return page("search.html", status=status, **context)


def _agea_values(state: Any, set_name: str, seed: list[float]) -> np.ndarray:
    """(AP, DV, LR) float32 of r with the seed over the search grid (NaN where none), and the grid."""
    from brainmap.search import seed_point_search
    from brainmap.server.searches import search_backends

    store = search_backends(state).expression_store(set_name)
    rows = seed_point_search(store, seed, None, start_row=0, num_rows=10_000_000).rows
    ijk = np.array([row.ijk for row in rows], dtype=np.int64).reshape(-1, 3)
    r = np.array([row.r for row in rows], dtype=np.float32)
    from brainmap.atlas.expression_grid import EXPRESSION_GRID_SHAPE

    volume = np.full(tuple(EXPRESSION_GRID_SHAPE), np.nan, dtype=np.float32)
    volume[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = r
    return volume


def _diverging(r: np.ndarray) -> np.ndarray:
    """RGBA: blue (r = -1) through transparent (0) to red (r = 1); transparent where NaN."""
    valid = np.isfinite(r)
    t = np.clip(np.where(valid, r, 0.0), -1, 1)
    rgba = np.zeros(r.shape + (4,), dtype=np.uint8)
    rgba[..., 0] = np.where(t > 0, 255, np.rint(255 * (1 + t))).astype(np.uint8)
    rgba[..., 1] = np.rint(255 * (1 - np.abs(t))).astype(np.uint8)
    rgba[..., 2] = np.where(t < 0, 255, np.rint(255 * (1 - t))).astype(np.uint8)
    rgba[..., 3] = np.where(valid, np.rint(60 + 195 * np.abs(t)), 0).astype(np.uint8)
    return rgba


AGEA_PLANES = {"coronal": (0, 2), "sagittal": (2, 0)}  # plane -> (its axis, the picture's column axis)


def _agea_slice(volume: np.ndarray, seed: list[float], plane: str, shape: tuple[int, ...]) -> np.ndarray:
    """(rows, cols) r on the 100 um annotation slice of ``plane`` through the seed: rows DV; columns LR
    (coronal) or AP (sagittal); each slice pixel takes the expression grid voxel its centre falls in (NaN
    outside the grid)."""
    from brainmap.atlas.expression_grid import EXPRESSION_GRID_ORIGIN_UM, EXPRESSION_GRID_RESOLUTION_UM

    res, corner = float(EXPRESSION_GRID_RESOLUTION_UM), float(EXPRESSION_GRID_ORIGIN_UM)
    axis, across = AGEA_PLANES[plane]
    fixed = int(np.floor((seed[axis] - corner) / res))
    j = np.floor(((np.arange(shape[1]) + 0.5) * 100.0 - corner) / res).astype(np.int64)
    k = np.floor(((np.arange(shape[across]) + 0.5) * 100.0 - corner) / res).astype(np.int64)
    r = np.full((j.size, k.size), np.nan, dtype=np.float32)
    if not 0 <= fixed < volume.shape[axis]:
        return r
    plane_values = np.take(volume, fixed, axis=axis)  # coronal: (DV, LR); sagittal: (AP, DV)
    if plane == "sagittal":
        plane_values = plane_values.T  # (DV, AP)
    jj, kk = (j >= 0) & (j < plane_values.shape[0]), (k >= 0) & (k < plane_values.shape[1])
    r[np.ix_(jj, kk)] = plane_values[np.ix_(j[jj], k[kk])]
    return r


@router.get("/portal/agea/map.png")
def agea_map(request: Request, seed_point: str, set: str = "mouse_coronal", plane: str = "coronal") -> Response:
    """The seed voxel's correlation map on the coronal or sagittal annotation slice through the seed (100 um
    pixels)."""
    from PIL import Image

    state = state_of(request)
    try:
        seed = [float(v) for v in seed_point.split(",")]
        if len(seed) != 3 or set not in ("mouse", "mouse_coronal") or plane not in AGEA_PLANES:
            raise ValueError
    except ValueError:
        return Response("seed_point must be three numbers (AP,DV,LR um), set mouse or mouse_coronal and plane "
                        "coronal or sagittal", status_code=400, media_type="text/plain")
    try:
        volume = _agea_values(state, set, seed)
    except BrainmapError as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")
    r = _agea_slice(volume, seed, plane, state.reference_space(100).shape)
    buffer = io.BytesIO()
    Image.fromarray(_diverging(r)).save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=300"})
