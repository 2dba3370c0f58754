"""Volumes in Neuroglancer's precomputed format, for the reference viewer (``/reference``).

=========================================================================  ======================================
``/portal/precomputed/annotation/info``                                    the CCF annotation as a segmentation
                                                                           (scales 100, 50 and 25 um)
``/portal/precomputed/annotation/{scale}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}``   one raw chunk (uint32)
``/portal/precomputed/annotation/props/info``                              the ontology as segment properties
                                                                           (acronym as label, name as description)
``/portal/precomputed/annotation/mesh/{id}:0``, ``mesh/{id}.frag``         a structure's surface (legacy mesh,
                                                                           marching cubes on the 50 um annotation)
``/portal/precomputed/template/...``                                       Allen's average template, where the data
                                                                           directory holds it
``/portal/precomputed/grid/{data_set_id}/{volume}/...``                    a grid volume (float32 image)
=========================================================================  ======================================

Axes: Neuroglancer's x, y, z are the CCF's LR, DV and AP (so its xy view is coronal); voxel corners at 0 um, as
the annotation's and Allen's grids; coordinates in nanometres. A chunk's bytes are the volume's (AP, DV, LR)
C-order block, which is the (x, y, z) Fortran order the format wants. Surfaces are made on request and kept.
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from brainmap.server.errors import NotFound
from brainmap.server.portal.previews import grid_corner_um
from brainmap.server.routes_data import state_of
from brainmap.server.state import LruCache

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

CHUNK = 64
_ANNOTATION_SCALES = (100, 50, 25)
_MESH_RESOLUTION = 50
_CHUNK_NAME = re.compile(r"(-?\d+)-(-?\d+)_(-?\d+)-(-?\d+)_(-?\d+)-(-?\d+)")
_meshes: LruCache[int, bytes] = LruCache(2048)
_grids: LruCache[tuple[int, str], tuple[np.ndarray, tuple[float, ...], tuple[int, int, int]]] = LruCache(8)
_HEADERS = {"Cache-Control": "max-age=3600"}


def _scale(key: str, shape: tuple[int, ...], resolution_um: float, offset: tuple[int, int, int] = (0, 0, 0)
           ) -> dict[str, Any]:
    ap, dv, lr = shape
    return {"key": key, "size": [lr, dv, ap], "resolution": [resolution_um * 1000.0] * 3,
            "voxel_offset": list(offset), "chunk_sizes": [[CHUNK, CHUNK, CHUNK]], "encoding": "raw"}


def _chunk(volume: np.ndarray, name: str, offset: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    found = _CHUNK_NAME.fullmatch(name)
    if found is None:
        raise NotFound(f"no chunk {name!r}: chunks are named x0-x1_y0-y1_z0-z1")
    x0, x1, y0, y1, z0, z1 = (int(v) for v in found.groups())
    x0, x1, y0, y1, z0, z1 = (x0 - offset[0], x1 - offset[0], y0 - offset[1], y1 - offset[1], z0 - offset[2],
                              z1 - offset[2])
    ap, dv, lr = volume.shape
    if not (0 <= x0 < x1 <= lr and 0 <= y0 < y1 <= dv and 0 <= z0 < z1 <= ap):
        raise NotFound(f"chunk {name} is outside the volume ({lr} x {dv} x {ap} voxels)")
    return np.ascontiguousarray(volume[z0:z1, y0:y1, x0:x1]).tobytes()


# -- the annotation ----------------------------------------------------------------------------------------------
@router.get("/portal/precomputed/annotation/info")
def annotation_info(request: Request) -> JSONResponse:
    state = state_of(request)
    scales = [_scale(f"{r}um", state.reference_space(r).shape, float(r)) for r in _ANNOTATION_SCALES]
    return JSONResponse({"@type": "neuroglancer_multiscale_volume", "type": "segmentation", "data_type": "uint32",
                         "num_channels": 1, "scales": scales, "segment_properties": "props", "mesh": "mesh"},
                        headers=_HEADERS)


@router.get("/portal/precomputed/annotation/props/info")
def annotation_properties(request: Request) -> JSONResponse:
    state = state_of(request)
    ids = _labelled_ids(state)
    nodes = state.structure_tree.get_structures_by_id(ids)
    return JSONResponse({"@type": "neuroglancer_segment_properties", "inline": {
        "ids": [str(i) for i in ids],
        "properties": [{"id": "label", "type": "label", "values": [str(n["acronym"]) for n in nodes]},
                       {"id": "description", "type": "description", "values": [str(n["name"]) for n in nodes]}]}},
        headers=_HEADERS)


def _labelled_ids(state: Any) -> list[int]:
    """The structure ids that label the 25 um annotation directly (the segments), read once per process."""
    found = getattr(state, "_portal_labels", None)
    if found is None:
        # One histogram over the label index (which the server's other routes share) rather than np.unique's
        # sort of 77 M voxels (~5 s on a busy 2-core machine).
        space = state.reference_space(25)
        counts = space.label_index.direct_counts()
        found = sorted(int(i) for i in space.label_index.order.ids[np.nonzero(counts)[0]])
        state._portal_labels = found
    return found


@router.get("/portal/precomputed/annotation/mesh/info")
def mesh_info() -> JSONResponse:
    return JSONResponse({"@type": "neuroglancer_legacy_mesh"}, headers=_HEADERS)


@router.get("/portal/precomputed/annotation/mesh/{name}")
def mesh(request: Request, name: str) -> Response:
    """``{id}:0``: the manifest (one fragment); ``{id}.frag``: the surface of that label."""
    if name.endswith(":0") and name[:-2].isdigit():
        return JSONResponse({"fragments": [f"{name[:-2]}.frag"]}, headers=_HEADERS)
    if not (name.endswith(".frag") and name[:-5].isdigit()):
        raise NotFound(f"no mesh {name!r}")
    label = int(name[:-5])
    body = _meshes.get(label)
    if body is None:
        body = _surface(state_of(request), label)
        _meshes.put(label, body)
    return Response(body, media_type="application/octet-stream", headers=_HEADERS)


def _surface(state: Any, label: int) -> bytes:
    """The legacy mesh of one label: marching cubes on its padded bounding box of the 50 um annotation."""
    from skimage.measure import marching_cubes

    annotation = state.reference_space(_MESH_RESOLUTION).annotation
    mask = annotation == label
    if not mask.any():
        raise NotFound(f"structure {label} labels no voxel of the annotation")
    where = np.nonzero(mask)
    lo = [max(int(w.min()) - 1, 0) for w in where]
    hi = [min(int(w.max()) + 2, n) for w, n in zip(where, mask.shape)]
    box = np.pad(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], 1).astype(np.float32)
    vertices, faces, _, _ = marching_cubes(box, 0.5)
    vertices = (vertices - 1 + np.asarray(lo) + 0.5) * (_MESH_RESOLUTION * 1000.0)  # voxel centres, nm
    xyz = vertices[:, ::-1].astype("<f4")  # (AP, DV, LR) -> (x = LR, y = DV, z = AP)
    return struct.pack("<I", len(xyz)) + xyz.tobytes() + faces.astype("<u4").tobytes()


@router.get("/portal/precomputed/annotation/{scale}/{name}")
def annotation_chunk(request: Request, scale: str, name: str) -> Response:
    resolution = int(scale[:-2]) if scale.endswith("um") and scale[:-2].isdigit() else 0
    if resolution not in _ANNOTATION_SCALES:
        raise NotFound(f"no annotation scale {scale!r}; scales: {', '.join(f'{r}um' for r in _ANNOTATION_SCALES)}")
    volume = state_of(request).reference_space(resolution).annotation
    return Response(_chunk(volume.astype("<u4", copy=False), name), media_type="application/octet-stream",
                    headers=_HEADERS)


# -- the average template (where the data directory has it) ----------------------------------------------------------
def _template(state: Any) -> tuple[np.ndarray, float] | None:
    found = getattr(state, "_portal_template", None)
    if found is None:
        for resolution in (25, 50, 100):
            path = state.data_dir / "average_template" / f"average_template_{resolution}.nrrd"
            if path.exists():
                from brainmap.io.nrrd import read_nrrd

                data, _ = read_nrrd(state.resolve_data_path(path))
                found = (np.asarray(data, dtype="<f4"), float(resolution))
                break
        else:
            return None
        state._portal_template = found
    return found


def template_available(state: Any) -> bool:
    return any((state.data_dir / "average_template" / f"average_template_{r}.nrrd").exists() for r in (25, 50, 100))


@router.get("/portal/precomputed/template/info")
def template_info(request: Request) -> JSONResponse:
    found = _template(state_of(request))
    if found is None:
        raise NotFound("no average template in this data directory (put average_template_25.nrrd in "
                       "average_template/)")
    data, resolution = found
    return JSONResponse({"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "float32",
                         "num_channels": 1, "scales": [_scale("t", data.shape, resolution)]}, headers=_HEADERS)


@router.get("/portal/precomputed/template/t/{name}")
def template_chunk(request: Request, name: str) -> Response:
    found = _template(state_of(request))
    if found is None:
        raise NotFound("no average template in this data directory")
    return Response(_chunk(found[0], name), media_type="application/octet-stream", headers=_HEADERS)


# -- grid volumes --------------------------------------------------------------------------------------------------
def _grid(state: Any, data_set_id: int, volume: str) -> tuple[np.ndarray, tuple[float, ...], tuple[int, int, int]]:
    """(float32 (AP, DV, LR) data, spacing um, voxel offset) of a data set's grid volume as Neuroglancer draws it."""
    from brainmap.server.routes_files import _files_of
    from brainmap.server.viewer import _NAME, _choose, _volume

    if not _NAME.fullmatch(volume):
        raise NotFound(f"{volume!r} is not a volume name")
    key = (data_set_id, volume)
    found = _grids.get(key)
    if found is None:
        files = state.run(lambda c: _files_of(c, data_set_id))
        data, spacing = _volume(state, _choose(files, data_set_id, None if volume == "default" else volume))
        data = np.where(np.isfinite(data) & (data >= 0), data, 0).astype("<f4")
        corner = grid_corner_um(float(spacing[0]))
        offset = (0, 0, 0)
        if corner:  # drawn at twice the resolution, so that the corner is a whole number of voxels
            data = np.repeat(np.repeat(np.repeat(data, 2, axis=0), 2, axis=1), 2, axis=2)
            spacing = tuple(float(v) / 2 for v in spacing)
            offset = (int(round(corner / spacing[0])),) * 3
        found = (data, spacing, offset)
        _grids.put(key, found)
    return found


@router.get("/portal/precomputed/grid/{data_set_id}/{volume}/info")
def grid_info(request: Request, data_set_id: int, volume: str) -> JSONResponse:
    data, spacing, offset = _grid(state_of(request), data_set_id, volume)
    return JSONResponse({"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "float32",
                         "num_channels": 1, "scales": [_scale("g", data.shape, float(spacing[0]), offset)]},
                        headers=_HEADERS)


@router.get("/portal/precomputed/grid/{data_set_id}/{volume}/g/{name}")
def grid_chunk(request: Request, data_set_id: int, volume: str, name: str) -> Response:
    data, _, offset = _grid(state_of(request), data_set_id, volume)
    return Response(_chunk(data, name, offset), media_type="application/octet-stream", headers=_HEADERS)


@lru_cache(maxsize=1)
def neuroglancer_client() -> Any:
    """The folder of Neuroglancer's built client, shipped in the ``neuroglancer`` wheel."""
    from pathlib import Path

    import neuroglancer.static

    return Path(neuroglancer.static.__file__).resolve().parent / "client"
