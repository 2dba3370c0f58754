"""The reference and volume viewer: ``/reference?structure=&data_set=&ap=&dv=&lr=&zoom=&pzoom=&orient=&layout=``.

Neuroglancer's client (shipped in the ``neuroglancer`` wheel, served at ``/portal/neuroglancer/``) shows the CCF
annotation as a segmentation in ontology colours (its segment properties name the structure under the cursor),
the average template where the data directory holds one, and a data set's grid volume (projection density or
expression energy) as an image layer, in three planes and in 3-D, where the picked structure's surfaces are
drawn. The page builds Neuroglancer's state from its own URL, and ``static/reference.js`` writes the viewer's
position, zoom, 3-D orientation and layout back to that URL as they change, so every view is a link and a reload
keeps it; volumes come from :mod:`~brainmap.server.portal.precomputed`.

Why Neuroglancer: a well-kept WebGL viewer of exactly these volumes (segmentations with meshes, images, three
planes and 3-D) that the Allen Institute's own tools use; it costs one wheel and no build step.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse

from brainmap.errors import BrainmapError
from brainmap.server.portal.catalog import catalog_of
from brainmap.server.errors import NotFound
from brainmap.server.portal.precomputed import _labelled_ids, neuroglancer_client, template_available
from brainmap.server.portal.render import page
from brainmap.server.routes_data import state_of

__all__ = ["neuroglancer_state", "router"]

router = APIRouter(include_in_schema=False)

_MAX_SEGMENTS = 400
_HEAT_SHADER = ("#uicontrol invlerp normalized\n"
                "void main() {\n  float v = normalized();\n"
                "  emitRGBA(vec4(clamp(3.0 * v, 0.0, 1.0), clamp(3.0 * v - 1.0, 0.0, 1.0),"
                " clamp(3.0 * v - 2.0, 0.0, 1.0), v > 0.0 ? 0.85 : 0.0));\n}\n")


def neuroglancer_state(origin: str, state: Any, *, point_um: tuple[float, float, float],
                       segments: list[int], data_set: int | None, grid_range: float | None,
                       camera: dict[str, Any] | None = None) -> dict[str, Any]:
    """Neuroglancer's viewer state: layers, position (um, x = LR, y = DV, z = AP), selected segments;
    ``camera`` replaces the default zoom, 3-D orientation and layout (keys of Neuroglancer's state)."""
    tree = state.structure_tree
    colours = tree.get_hex_colormap("#")
    labelled = _labelled_ids(state)
    source = f"precomputed://{origin}/portal/precomputed"
    layers: list[dict[str, Any]] = []
    if template_available(state):
        layers.append({"type": "image", "source": f"{source}/template", "name": "template"})
    layers.append({"type": "segmentation", "source": f"{source}/annotation", "name": "annotation",
                   "segments": [str(s) for s in segments], "selectedAlpha": 0.6, "notSelectedAlpha": 0.3,
                   "objectAlpha": 0.8,
                   "segmentColors": {str(i): colours.get(i, "#888888") for i in labelled}})
    if data_set is not None:
        layer: dict[str, Any] = {"type": "image", "source": f"{source}/grid/{data_set}/default",
                                 "name": f"data set {data_set}", "shader": _HEAT_SHADER, "opacity": 0.9,
                                 "volumeRendering": "max"}
        if grid_range:
            layer["shaderControls"] = {"normalized": {"range": [0, grid_range]}}
        layers.append(layer)
    ap, dv, lr = point_um
    return {"dimensions": {"x": [1e-6, "m"], "y": [1e-6, "m"], "z": [1e-6, "m"]},
            "position": [lr, dv, ap], "crossSectionScale": 30, "projectionScale": 24000,
            "projectionOrientation": [-0.25, 0.35, 0.1, 0.9],
            "layers": layers, "selectedLayer": {"layer": "annotation", "visible": False}, "layout": "4panel",
            "showSlices": False, **(camera or {})}


#: Neuroglancer's layouts a ``layout=`` may name.
LAYOUTS = ("4panel", "4panel-alt", "xy", "xz", "yz", "3d", "xy-3d", "xz-3d", "yz-3d")


def camera_of(query: dict[str, str]) -> tuple[dict[str, Any], str]:
    """The view written back to the page's URL by Neuroglancer's changes (``zoom``: crossSectionScale, ``pzoom``:
    projectionScale, ``orient``: projectionOrientation's four numbers, ``layout``), as state keys; and what was
    wrong with any of them."""
    camera: dict[str, Any] = {}
    errors = []
    for key, state_key in (("zoom", "crossSectionScale"), ("pzoom", "projectionScale")):
        if query.get(key):
            try:
                value = float(query[key])
                if not (np.isfinite(value) and value > 0):
                    raise ValueError
                camera[state_key] = value
            except ValueError:
                errors.append(f"{key} must be a positive number")
    if query.get("orient"):
        try:
            quaternion = [float(v) for v in query["orient"].split(",")]
            if len(quaternion) != 4 or not np.all(np.isfinite(quaternion)) or not any(quaternion):
                raise ValueError
            camera["projectionOrientation"] = quaternion
        except ValueError:
            errors.append("orient must be four numbers (a quaternion)")
    if query.get("layout"):
        if query["layout"] in LAYOUTS:
            camera["layout"] = query["layout"]
        else:
            errors.append("layout must be one of " + ", ".join(LAYOUTS))
    return camera, "; ".join(errors)


@dataclass
class View:
    """What ``/reference``'s URL asks for, resolved: the Neuroglancer state and what the page says about it."""

    state: dict[str, Any]
    error: str
    node: Any
    segments: int
    data_set: int | None
    point: tuple[float, float, float]


def build_view(state: Any, origin: str, query: dict[str, str]) -> View:
    """The view of a ``/reference`` query (``structure``, ``data_set``, ``ap``, ``dv``, ``lr``)."""
    from brainmap.atlas.describe import resolve_structure

    tree = state.structure_tree
    catalog = catalog_of(state)
    structure, data_set = query.get("structure", "").strip(), query.get("data_set", "")
    error = ""
    node = None
    segments: list[int] = []
    point: tuple[float, ...] = (6600.0, 4000.0, 5700.0)
    if structure:
        try:
            node = resolve_structure(tree, structure)
        except BrainmapError as exc:
            error = f"Structure: {exc}"
    if node is not None:
        wanted = {int(node["id"]), *(int(i) for i in tree.descendant_ids([int(node["id"])])[0])}
        segments = [i for i in _labelled_ids(state) if i in wanted][:_MAX_SEGMENTS]
        try:
            point = tuple(float(v) for v in state.structure_centroid(int(node["id"])))
        except BrainmapError:
            pass
    if all(query.get(k) for k in ("ap", "dv", "lr")):
        try:
            point = tuple(float(query[k]) for k in ("ap", "dv", "lr"))
        except ValueError:
            error = "ap, dv and lr must be numbers (um)"
    chosen = int(data_set) if data_set.isdigit() and catalog.by_id(int(data_set)) else None
    grid_range = None
    if chosen is not None:
        from brainmap.server.portal.precomputed import _grid

        try:
            values, _, _ = _grid(state, chosen, "default")
            positive = values[values > 0]
            grid_range = float(np.quantile(positive, 0.995)) if positive.size else None
        except BrainmapError as exc:
            error = f"Data set {chosen}: {exc}"
            chosen = None
    camera, wrong = camera_of(query)
    error = "; ".join(e for e in (error, wrong) if e)
    ng = neuroglancer_state(origin, state, point_um=point, segments=segments, data_set=chosen,
                            grid_range=grid_range, camera=camera)
    return View(ng, error, node, len(segments), chosen, point)  # type: ignore[arg-type]


def token_of(query: dict[str, str]) -> str:
    """The viewer token: the reference query itself, base64url (any worker process can rebuild the state)."""
    text = urlencode({k: v for k, v in sorted(query.items()) if k in _KEYS and v})
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=") or "_"


def query_of(token: str) -> dict[str, str]:
    if token == "_":
        return {}
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise NotFound(f"no viewer {token!r}") from None
    return {k: v for k, v in parse_qsl(text) if k in _KEYS}


_KEYS = ("structure", "data_set", "ap", "dv", "lr", "zoom", "pzoom", "orient", "layout")


@router.get("/reference", response_class=HTMLResponse)
def reference(request: Request) -> HTMLResponse:
    state = state_of(request)
    query = {k: request.query_params.get(k, "") for k in _KEYS}
    view = build_view(state, str(request.base_url).rstrip("/"), query)
    catalog = catalog_of(state)
    choices = [(r.id, f"{r.id}: {r.gene or 'connectivity'} {r.plane}") for r in catalog.records]
    return page("reference.html", status=400 if view.error else 200, nav="reference",
                frame=f"/portal/ng/v/{token_of(query)}/", error=view.error, node=view.node,
                segments=view.segments, structure=query["structure"], data_set=view.data_set, choices=choices,
                point=view.point, has_template=template_available(state), data_dir=state.data_dir)


# -- the bridge Neuroglancer's Python-integration client talks to ---------------------------------------------------
@router.get("/portal/ng/v/{token}/")
def ng_index(token: str) -> FileResponse:
    return FileResponse(neuroglancer_client() / "index.html", media_type="text/html")


@router.get("/portal/ng/v/{token}/{name}")
def ng_file(token: str, name: str) -> FileResponse:
    path = (neuroglancer_client() / name).resolve()
    if path.parent != neuroglancer_client() or not path.is_file():
        raise NotFound(f"no file {name!r} in Neuroglancer's client")
    return FileResponse(path, headers={"Cache-Control": "max-age=86400"})


@router.get("/portal/ng/events/{token}")
async def ng_events(request: Request, token: str) -> StreamingResponse:
    """The client's state as server-sent events: one per key it has not seen, then a comment every 15 s until
    the client goes (an ended stream would make it reconnect at once)."""
    import asyncio

    from starlette.concurrency import run_in_threadpool

    query = query_of(token)
    messages = []
    if request.query_params.get("gc") != "1":
        messages.append("data: " + json.dumps({"k": "c", "s": {}, "g": "1"}) + "\n\n")
    if request.query_params.get("gs") != "1":
        view = await run_in_threadpool(build_view, state_of(request), str(request.base_url).rstrip("/"), query)
        messages.append("data: " + json.dumps({"k": "s", "s": view.state, "g": "1"}) + "\n\n")

    async def stream():  # type: ignore[no-untyped-def]
        yield "".join(messages) or ": nothing new\n\n"
        while not await request.is_disconnected():
            await asyncio.sleep(_KEEPALIVE_S)
            yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


_KEEPALIVE_S = 15.0


@router.post("/portal/ng/state/{token}")
async def ng_state(request: Request, token: str) -> JSONResponse:
    """The client's own changes (position, selection): acknowledged; the page's URL keeps the view."""
    try:
        body = json.loads(await request.body())
        generation = str(body["g"])
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"msg": "expected {g, pg, s, c}"}, status_code=400)
    return JSONResponse({"g": generation})


@router.post("/portal/ng/action/{token}")
def ng_action(token: str) -> Response:
    return Response(status_code=200)
