"""The web viewer: pick a data set, see its structure unionize table and an annotation slice with its projection
density (or expression energy) overlaid. Plain HTML and JavaScript in ``static/``, no build step.

The page lists data sets and unionize rows through the public RMA API (``/api/v2/data/query.json``), like any
client. It draws two stacked pictures of the same size, made here:

``GET /viewer/slice/annotation.png?plane=coronal&position=6600&resolution=100``
    The annotation slice, each structure in its ontology colour (black outside the brain).
``GET /viewer/slice/{section_data_set_id}.png?plane=coronal&position=6600&resolution=100[&volume=NAME]``
    The data set's grid volume on the same pixels: each annotation voxel centre takes the value of the volume
    voxel it falls in (volumes of any resolution line up; Allen grids start at 0 um). A heat map, transparent
    where there is no signal or no data, scaled to the volume's 99.5th percentile. The volume is
    ``projection_density`` (connectivity, the coarsest NRRD) or ``energy`` (ISH) unless ``volume`` names another.
``GET /viewer/volumes/{section_data_set_id}.json``
    The data set's grid volumes (names, resolutions) for the page's chooser.

Volumes read for pictures are kept per process (a few, by file hash).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse, Response

from brainmap.server.errors import ApiError, NotFound
from brainmap.server.routes_data import state_of
from brainmap.server.routes_files import FileRow, _files_of, _nrrd_resolutions, _read_volume
from brainmap.server.state import LruCache, ServerState

__all__ = ["STATIC", "mount_static", "router"]

router = APIRouter(tags=["viewer"])
STATIC = Path(__file__).resolve().parent / "static"

Plane = Literal["coronal", "horizontal", "sagittal"]
_AXIS = {"coronal": 0, "horizontal": 1, "sagittal": 2}
_RESOLUTIONS = (25, 50, 100)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_volumes: LruCache[tuple[str, str], tuple[np.ndarray, tuple[float, ...]]] = LruCache(6)


def mount_static(app: FastAPI) -> None:
    """Serve ``static/`` (Starlette's StaticFiles refuses paths that leave the folder)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


@router.get("/viewer", include_in_schema=False)
def viewer_page() -> FileResponse:
    """The viewer page."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


def _png(image: np.ndarray) -> Response:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=3)
    return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=300"})


def _slice_index(shape: tuple[int, ...], axis: int, position: float, resolution: float) -> int:
    index = int(np.floor(position / resolution))
    if not 0 <= index < shape[axis]:
        raise ApiError(f"position {position:g} um is outside the volume along the {axis}-axis "
                       f"(0 to {shape[axis] * resolution:g} um)")
    return index


def _plane_grid(shape: tuple[int, ...], axis: int, resolution: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Voxel-centre coordinates (um) of a slice's rows and columns, and which volume axes they are
    (coronal: rows DV, columns LR; horizontal: rows AP, columns LR; sagittal: rows DV, columns AP)."""
    rows_axis, cols_axis = {0: (1, 2), 1: (0, 2), 2: (1, 0)}[axis]
    rows = (np.arange(shape[rows_axis]) + 0.5) * resolution
    cols = (np.arange(shape[cols_axis]) + 0.5) * resolution
    return rows, cols, rows_axis, cols_axis


@router.get("/viewer/slice/annotation.png", summary="An annotation slice in ontology colours (PNG)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def annotation_slice(request: Request, plane: Plane = "coronal", position: float = Query(6600.0, ge=0),
                     resolution: int = Query(100)) -> Response:
    """The annotation at ``position`` um along the plane's axis."""
    if resolution not in _RESOLUTIONS:
        raise ApiError(f"resolution must be one of {_RESOLUTIONS}")
    space = state_of(request).reference_space(resolution)
    axis = _AXIS[plane]
    _slice_index(space.shape, axis, position, resolution)
    return _png(space.get_slice_image(axis, position))


def _volume(state: ServerState, row: FileRow) -> tuple[np.ndarray, tuple[float, ...]]:
    key = (row.path, row.sha256)
    found = _volumes.get(key)
    if found is None:
        data, spacing, _offset = _read_volume(state, row)
        found = (np.asarray(data, dtype=np.float32), spacing)
        _volumes.put(key, found)
    return found


def _choose(files: list[FileRow], data_set_id: int, volume: str | None) -> FileRow:
    names = [volume] if volume else ["projection_density", "energy", "density"]
    for name in names:
        for row in files:
            if row.type_name == name and row.suffix in (".mhd", ".mha"):
                return row
        found = _nrrd_resolutions(files, name)
        if found:
            return found[max(found)]
    raise NotFound(f"SectionDataSet {data_set_id} has no grid volume to show"
                   + (f" named {volume}" if volume else " (projection_density or energy)"))


def _heat(values: np.ndarray) -> np.ndarray:
    """RGBA heat map: transparent at 0 or no data, black-red-yellow-white with rising opacity."""
    valid = np.isfinite(values) & (values > 0)
    scale = float(np.percentile(values[valid], 99.5)) if valid.any() else 1.0
    t = np.clip(np.where(valid, values, 0) / (scale or 1.0), 0, 1)
    rgba = np.zeros(values.shape + (4,), dtype=np.uint8)
    rgba[..., 0] = np.clip(t * 3, 0, 1) * 255
    rgba[..., 1] = np.clip(t * 3 - 1, 0, 1) * 255
    rgba[..., 2] = np.clip(t * 3 - 2, 0, 1) * 255
    rgba[..., 3] = np.where(valid, 70 + 185 * np.sqrt(t), 0).astype(np.uint8)
    return rgba


@router.get("/viewer/slice/{section_data_set_id}.png", summary="A data set's grid volume on an annotation slice",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def data_slice(request: Request, section_data_set_id: int, plane: Plane = "coronal",
               position: float = Query(6600.0, ge=0), resolution: int = Query(100),
               volume: str | None = Query(None, description="a volume name (default projection_density or energy)")
               ) -> Response:
    """The volume sampled at the annotation slice's voxel centres, as a transparent heat map."""
    if resolution not in _RESOLUTIONS:
        raise ApiError(f"resolution must be one of {_RESOLUTIONS}")
    if volume is not None and not _NAME.fullmatch(volume):
        raise ApiError(f"volume: {volume!r} is not a volume name")
    state = state_of(request)
    space = state.reference_space(resolution)
    axis = _AXIS[plane]
    _slice_index(space.shape, axis, position, resolution)
    files = state.run(lambda c: _files_of(c, section_data_set_id))
    data, spacing = _volume(state, _choose(files, section_data_set_id, volume))
    if data.ndim != 3:
        raise ApiError(f"the volume of SectionDataSet {section_data_set_id} is not 3-D")
    rows, cols, rows_axis, cols_axis = _plane_grid(space.shape, axis, resolution)
    index = int(np.floor(position / spacing[axis]))
    r = np.floor(rows / spacing[rows_axis]).astype(np.int64)
    c = np.floor(cols / spacing[cols_axis]).astype(np.int64)
    inside = (0 <= index < data.shape[axis])
    r_ok = (r >= 0) & (r < data.shape[rows_axis])
    c_ok = (c >= 0) & (c < data.shape[cols_axis])
    values = np.full((rows.size, cols.size), np.nan, dtype=np.float32)
    if inside:
        plane_values = np.take(data, index, axis=axis)
        if rows_axis > cols_axis:
            plane_values = plane_values.T
        values[np.ix_(r_ok, c_ok)] = plane_values[np.ix_(r[r_ok], c[c_ok])]
    values[values < 0] = np.nan  # Allen's -1: no data
    return _png(_heat(values))


@router.get("/viewer/volumes/{section_data_set_id}.json", summary="A data set's grid volumes")
def data_set_volumes(request: Request, section_data_set_id: int) -> dict[str, Any]:
    """The grid volumes of a data set: ``[{name, resolution, file}]``."""
    state = state_of(request)
    files = state.run(lambda c: _files_of(c, section_data_set_id))
    volumes = []
    for row in files:
        if row.suffix in (".mhd", ".mha"):
            volumes.append({"name": row.type_name, "resolution": None, "file_id": row.id})
        elif row.suffix == ".nrrd":
            name, _, res = row.type_name.rpartition("_")
            if res.isdigit():
                volumes.append({"name": name, "resolution": int(res), "file_id": row.id})
    return {"success": True, "id": 0, "start_row": 0, "num_rows": len(volumes), "total_rows": len(volumes),
            "msg": volumes}
