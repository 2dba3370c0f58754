"""Files: grid data, registered files, the ontology and the annotation volumes.

``GET /grid_data/download/{section_data_set_id}?include=energy,density,intensity``
    Allen's grid-data zip: one MetaImage ``{name}.mhd`` + ``{name}.raw`` per volume (default ``energy``),
    built from the data set's registered volumes (a ``{name}.mhd``/``.mha``, else a ``{name}_{res}.nrrd`` at
    ``resolution`` or the coarsest there is). Built zips are kept per process (bounded by bytes), keyed by the
    volumes' sha256, so a repeated download is a memory copy; the ETag names that key.
``GET /grid_data/download_file/{section_data_set_id}?image=projection_density&resolution=25``
    One grid volume as NRRD, streamed from the data directory (``{image}_{resolution}.nrrd``).
``GET /api/v2/well_known_file_download/{id}``
    Any registered file (WellKnownFile) by id, streamed.
``GET /api/v2/structure_graph_download/1.json``
    The ontology as Allen's nested structure graph ``{success, msg: [{..., children: [...]}]}``.
``GET /api/v2/annotation/{resolution}`` and
``GET /informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/annotation_{resolution}.nrrd``
    The CCF 2017 annotation at 10, 25, 50 or 100 um: the data directory's ``annotation/ccf_2017/`` copy if it
    has one, else the bundled file (25, 50, 100).
``GET /informatics-archive/current-release/mouse_ccf/average_template/average_template_{resolution}.nrrd``
    Allen's average (two-photon) template, where AllenSDK's ``get_template_volume`` looks for it, if the data
    directory holds a copy at ``average_template/``; brainmap does not ship it (404 saying where to put it).

Every file path (from the database or derived from a request) is resolved, symbolic links included, and must
lie inside the data directory (HTTP 403 otherwise; 404 when there is no such file). Streamed files carry
Content-Length, an ETag from their stored sha256 (``If-None-Match`` gets 304) and accept byte ranges. Every file
answer (zips too) carries ``X-Checksum-SHA256``, the sha256 of the whole body, for clients to verify.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import Connection, and_, select
from starlette.responses import FileResponse, Response

from brainmap.server.errors import ApiError, NotFound
from brainmap.server.routes_data import state_of
from brainmap.server.state import ServerState
from brainmap.store import models as m

__all__ = ["router"]

log = logging.getLogger("brainmap.server")

router = APIRouter(tags=["files"])

_VOLUME_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_METAIMAGE = (".mhd", ".mha")
_MAX_BUNDLE_BYTES = 1 << 30
_ANNOTATION_RESOLUTIONS = (10, 25, 50, 100)
#: The sha256 (hex) of a whole response body, on every file download (also on partial, 206, answers): clients
#: verify what they saved (the ETag of a grid-data zip names its inputs, not its bytes).
CHECKSUM_HEADER = "X-Checksum-SHA256"


class _Streamed(FileResponse):
    chunk_size = 1 << 20  # fewer thread hops per megabyte than Starlette's 64 KiB


@dataclass(frozen=True)
class FileRow:
    """A registered file: its id, type name, path (relative to the data directory), size and sha256."""

    id: int
    type_name: str
    path: str
    file_size: int
    sha256: str

    @property
    def suffix(self) -> str:
        name = self.path.lower()
        for suffix in (".nii.gz", ".nrrd", ".mhd", ".mha", ".raw", ".zip"):
            if name.endswith(suffix):
                return suffix
        return Path(name).suffix


_FILE_COLUMNS = (m.WellKnownFile.id, m.WellKnownFileType.name, m.WellKnownFile.path, m.WellKnownFile.file_size,
                 m.WellKnownFile.sha256)


def _files_of(connection: Connection, data_set_id: int) -> list[FileRow]:
    exists = connection.execute(select(m.SectionDataSet.id).where(m.SectionDataSet.id == data_set_id)).first()
    if exists is None:
        raise NotFound(f"no SectionDataSet {data_set_id}")
    rows = connection.execute(
        select(*_FILE_COLUMNS).join(m.WellKnownFileType, m.WellKnownFile.well_known_file_type_id
                                    == m.WellKnownFileType.id)
        .where(and_(m.WellKnownFile.attachable_type == "SectionDataSet",
                    m.WellKnownFile.attachable_id == data_set_id))
        .order_by(m.WellKnownFile.id))
    return [FileRow(*r) for r in rows]


def not_modified(request: Request, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` (RFC 9110 13.1.2: ``*`` matches any current answer; a list is
    compared weakly, ``W/"x"`` matching ``"x"``)."""
    given = request.headers.get("if-none-match")
    if given is None:
        return False
    if given.strip() == "*":
        return True
    mine = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == mine for tag in given.split(","))


def file_response(state: ServerState, request: Request, row: FileRow, media_type: str, filename: str) -> Response:
    """Stream a registered file: resolved inside the data directory, Content-Length, ETag (sha256), ranges."""
    path = state.resolve_data_path(row.path)
    etag, checksum = f'"{row.sha256}"', row.sha256
    if path.stat().st_size != row.file_size:
        log.warning("file %s changed on disk since it was loaded (size %d, stored %d); reload it",
                    row.path, path.stat().st_size, row.file_size)
        checksum = state.file_sha256(path)
        etag = f'W/"{checksum}"'
    if not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return _Streamed(path, media_type=media_type, filename=filename,
                     headers={"ETag": etag, CHECKSUM_HEADER: checksum})


def _names(include: str | None) -> list[str]:
    names = [n.strip() for n in (include or "energy").split(",") if n.strip()]
    if not names or len(names) > 16:
        raise ApiError(f"include names 1 to 16 volumes (comma-separated), got {include!r}")
    for name in names:
        if not _VOLUME_NAME.fullmatch(name):
            raise ApiError(f"include: {name!r} is not a volume name (letters, digits and '_')")
    return list(dict.fromkeys(names))


def _nrrd_resolutions(files: list[FileRow], name: str) -> dict[int, FileRow]:
    found = {}
    for row in files:
        if row.suffix == ".nrrd" and row.type_name.startswith(name + "_"):
            tail = row.type_name[len(name) + 1:]
            if tail.isdigit():
                found[int(tail)] = row
    return found


def _available(files: list[FileRow]) -> str:
    names = sorted({row.type_name for row in files if row.suffix in (*_METAIMAGE, ".nrrd")})
    return ", ".join(names) if names else "(none)"


def _pick_volume(files: list[FileRow], name: str, resolution: int | None, data_set_id: int) -> FileRow:
    if resolution is None:
        for row in files:
            if row.type_name == name and row.suffix in _METAIMAGE:
                return row
    by_resolution = _nrrd_resolutions(files, name)
    if resolution is not None and resolution in by_resolution:
        return by_resolution[resolution]
    if resolution is None and by_resolution:
        return by_resolution[max(by_resolution)]
    at = f" at {resolution} um" if resolution is not None else ""
    raise NotFound(f"SectionDataSet {data_set_id} has no {name} volume{at}; it has: {_available(files)}")


def _read_volume(state: ServerState, row: FileRow) -> tuple[Any, tuple[float, ...], tuple[float, ...]]:
    """(array, spacing, offset) of a MetaImage or NRRD volume."""
    import numpy as np

    path = state.resolve_data_path(row.path)
    if row.suffix in _METAIMAGE:
        from brainmap.io.metaimage import read_metaimage

        data, header = read_metaimage(path)
        return data, tuple(header.element_spacing), tuple(header.offset) or (0.0,) * data.ndim
    from brainmap.io.nrrd import read_nrrd

    data, header = read_nrrd(path)
    directions = header.get("space directions")
    spacing = tuple(float(v) for v in np.abs(np.diag(np.asarray(directions, dtype=float)))) \
        if directions is not None else (1.0,) * data.ndim
    origin = header.get("space origin")
    offset = tuple(float(v) for v in origin) if origin is not None else (0.0,) * data.ndim
    return data, spacing, offset


def _bundle(state: ServerState, chosen: dict[str, FileRow]) -> bytes:
    from brainmap.io.grid_bundle import grid_bundle_bytes

    total = sum(row.file_size for row in chosen.values())
    if total > _MAX_BUNDLE_BYTES:
        raise ApiError(f"these volumes hold {total / 2**20:.0f} MiB; download them one by one with "
                       "/grid_data/download_file", 413)
    volumes, spacing, offset = {}, None, None
    for name, row in chosen.items():
        data, row_spacing, row_offset = _read_volume(state, row)
        if spacing is not None and (row_spacing != spacing or data.shape != next(iter(volumes.values())).shape):
            raise ApiError(f"volumes {', '.join(chosen)} are not on one grid; download them one by one", 400)
        volumes[name], spacing, offset = data, row_spacing, row_offset
    assert spacing is not None and offset is not None
    return grid_bundle_bytes(volumes, spacing, offset=offset)


@router.get("/grid_data/download/{section_data_set_id}", summary="Grid volumes of a data set as a zip of MetaImages",
            response_class=Response, responses={200: {"content": {"application/zip": {}}}})
def grid_download(request: Request, section_data_set_id: int,
                  include: str | None = Query(None, description="Volumes, e.g. energy,density,intensity "
                                                                "(default energy)"),
                  resolution: int | None = Query(None, description="For NRRD-only volumes: their resolution in um "
                                                                   "(default the coarsest)")) -> Response:
    """Allen's 3-D grid data service: ``energy.mhd/.raw``, ``density.mhd/.raw``, ... in one zip."""
    state = state_of(request)
    names = _names(include)
    files = state.run(lambda c: _files_of(c, section_data_set_id))
    chosen = {name: _pick_volume(files, name, resolution, section_data_set_id) for name in names}
    key = (section_data_set_id, tuple((name, row.sha256) for name, row in chosen.items()))
    etag = '"' + hashlib.sha256(json.dumps(key).encode()).hexdigest() + '"'
    if not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    bundle = state.grid_bundles.get(key)
    if bundle is None:
        bundle = _bundle(state, chosen)
        state.grid_bundles.put(key, bundle)
    return Response(bundle, media_type="application/zip", headers={
        "ETag": etag, CHECKSUM_HEADER: hashlib.sha256(bundle).hexdigest(),
        "Content-Disposition": f'attachment; filename="{section_data_set_id}.zip"'})


@router.get("/grid_data/download_file/{section_data_set_id}", summary="One grid volume of a data set as NRRD",
            response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
def grid_download_file(request: Request, section_data_set_id: int,
                       image: str = Query("projection_density", description="projection_density, "
                                          "projection_energy, injection_fraction, injection_density, "
                                          "injection_energy, data_mask, ..."),
                       resolution: int = Query(100, description="Resolution in um: 10, 25, 50 or 100")) -> Response:
    """Allen's ``download_file``: the data set's ``{image}_{resolution}.nrrd``."""
    state = state_of(request)
    if not _VOLUME_NAME.fullmatch(image):
        raise ApiError(f"image: {image!r} is not a volume name (letters, digits and '_')")
    files = state.run(lambda c: _files_of(c, section_data_set_id))
    at = _nrrd_resolutions(files, image)
    found = at.get(resolution)
    if found is None:
        where = (f"{image} exists at {', '.join(f'{r} um' for r in sorted(at))}" if at
                 else f"it has no {image} volume at any resolution")
        raise NotFound(f"SectionDataSet {section_data_set_id} has no {image} volume at {resolution} um: {where} "
                       f"(its volumes: {_available(files)})")
    return file_response(state, request, found, "application/octet-stream",
                         f"{image}_{resolution}.nrrd")


def _file_by_id(connection: Connection, file_id: int) -> FileRow:
    row = connection.execute(
        select(*_FILE_COLUMNS).join(m.WellKnownFileType, m.WellKnownFile.well_known_file_type_id
                                    == m.WellKnownFileType.id)
        .where(m.WellKnownFile.id == file_id)).first()
    if row is None:
        raise NotFound(f"no WellKnownFile {file_id}")
    return FileRow(*row)


@router.get("/api/v2/well_known_file_download/{file_id}", summary="A registered file by id",
            response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
def well_known_file_download(request: Request, file_id: int) -> Response:
    """Allen's ``well_known_file_download``: the file of a WellKnownFile row, streamed."""
    state = state_of(request)
    row = state.run(lambda c: _file_by_id(c, file_id))
    media_type = "application/zip" if row.suffix == ".zip" else "application/octet-stream"
    return file_response(state, request, row, media_type, Path(row.path).name)


# -- the ontology ---------------------------------------------------------------------------------------------
def structure_graph(connection: Connection) -> list[dict[str, Any]]:
    """The structures as Allen's nested graph: roots with ``children`` lists in graph order."""
    s = m.Structure
    rows = connection.execute(select(s.id, s.acronym, s.name, s.parent_structure_id, s.depth, s.graph_id,
                                     s.graph_order, s.structure_id_path, s.color_hex_triplet, s.atlas_id,
                                     s.st_level)
                              .order_by(s.graph_order, s.id))
    nodes: dict[int, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for r in rows:
        node = {"id": r.id, "atlas_id": r.atlas_id, "ontology_id": 1, "acronym": r.acronym, "name": r.name,
                "color_hex_triplet": r.color_hex_triplet, "graph_order": r.graph_order, "st_level": r.st_level,
                "hemisphere_id": 3, "parent_structure_id": r.parent_structure_id, "graph_id": r.graph_id,
                "depth": r.depth, "structure_id_path": r.structure_id_path, "children": []}
        nodes[r.id] = node
        pending.append(node)
    for node in pending:
        parent = nodes.get(node["parent_structure_id"]) if node["parent_structure_id"] is not None else None
        (parent["children"] if parent is not None else roots).append(node)
    return roots


@router.get("/api/v2/structure_graph_download/{graph_id}.json", summary="The structure ontology, nested")
def structure_graph_download(request: Request, graph_id: int) -> Response:
    """Allen's ``structure_graph_download``: ``{success, id, start_row, num_rows, total_rows, msg: [root]}``,
    each structure with its ``children`` in graph order. Graph 1 is the adult mouse ontology."""
    state = state_of(request)
    if graph_id != 1:
        raise NotFound(f"no structure graph {graph_id}; this server has graph 1 (adult mouse)")
    roots = state.run(structure_graph)
    body = {"success": True, "id": 0, "start_row": 0, "num_rows": len(roots), "total_rows": len(roots),
            "msg": roots}
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


# -- annotation volumes ------------------------------------------------------------------------------------------
def _check_resolution(what: str, resolution: int) -> None:
    """404 naming the CCF resolutions when ``resolution`` is not one of them."""
    if resolution not in _ANNOTATION_RESOLUTIONS:
        raise NotFound(f"no {what} at {resolution} um; resolutions are "
                       f"{', '.join(map(str, _ANNOTATION_RESOLUTIONS))}")


def _annotation_file(state: ServerState, resolution: int) -> Path:
    _check_resolution("annotation", resolution)
    local = state.data_dir / "annotation" / "ccf_2017" / f"annotation_{resolution}.nrrd"
    if local.exists():
        return state.resolve_data_path(local)
    from brainmap.atlas.bundled import BUNDLED_RESOLUTIONS, annotation_path

    if resolution not in BUNDLED_RESOLUTIONS:
        raise NotFound(f"the {resolution} um annotation is not bundled; put it at {local} to serve it")
    return annotation_path(resolution)


def _volume_response(request: Request, path: Path, filename: str) -> Response:
    """A reference volume file streamed with its sha256 as ETag and checksum header (304 on a matching ETag)."""
    state = state_of(request)
    checksum = state.file_sha256(path)
    etag = f'"{checksum}"'
    if not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return _Streamed(path, media_type="application/octet-stream", filename=filename,
                     headers={"ETag": etag, CHECKSUM_HEADER: checksum})


def _annotation_response(request: Request, resolution: int) -> Response:
    path = _annotation_file(state_of(request), resolution)
    return _volume_response(request, path, f"annotation_{resolution}.nrrd")


@router.get("/api/v2/annotation/{resolution}", summary="The CCF 2017 annotation volume (NRRD)",
            response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
def annotation(request: Request, resolution: int) -> Response:
    """The annotation at ``resolution`` um (uint32 structure ids, PIR, NRRD as Allen's)."""
    return _annotation_response(request, resolution)


@router.get("/informatics-archive/current-release/mouse_ccf/annotation/ccf_2017/annotation_{resolution}.nrrd",
            summary="The annotation at Allen's download path", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def annotation_archive(request: Request, resolution: int) -> Response:
    """The same file at the path AllenSDK's ReferenceSpaceApi downloads it from."""
    return _annotation_response(request, resolution)


@router.get("/informatics-archive/current-release/mouse_ccf/average_template/average_template_{resolution}.nrrd",
            summary="Allen's average template, if the data directory holds it", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def average_template(request: Request, resolution: int) -> Response:
    """Allen's average template at ``resolution`` um (PIR, NRRD) from ``average_template/`` in the data
    directory. brainmap does not ship it: without a copy the answer is 404 naming the file to put there."""
    _check_resolution("average template", resolution)
    state = state_of(request)
    name = f"average_template_{resolution}.nrrd"
    local = state.data_dir / "average_template" / name
    if not local.exists():
        raise NotFound(f"no average template at {resolution} um on this server (brainmap does not ship Allen's "
                       f"average template; put {name} at {local} to serve it)")
    return _volume_response(request, state.resolve_data_path(local), name)


# -- Allen's archive: other annotation versions, structure masks and meshes ------------------------------------
_ARCHIVE = "/informatics-archive/current-release/mouse_ccf"
_SERVED_VERSION = "ccf_2017"


def _structure(state: ServerState, structure_id: int) -> int:
    if structure_id not in state.structure_tree:
        raise NotFound(f"no structure {structure_id} in structure graph 1 (the adult mouse ontology)")
    return structure_id


def _mask_space(state: ServerState, resolution: int) -> Any:
    from brainmap.atlas.bundled import BUNDLED_RESOLUTIONS

    _check_resolution("structure mask", resolution)
    local = state.data_dir / "annotation" / "ccf_2017" / f"annotation_{resolution}.nrrd"
    if resolution not in BUNDLED_RESOLUTIONS:
        if not local.exists():
            raise NotFound(f"no structure masks at {resolution} um: the {resolution} um annotation is not bundled; "
                           f"put it at {local} to serve them (resolutions served: "
                           f"{', '.join(map(str, BUNDLED_RESOLUTIONS))})")
        return _local_space(str(state.resolve_data_path(local)))
    return state.reference_space(resolution)


@lru_cache(maxsize=1)
def _local_space(path: str) -> Any:
    from brainmap.atlas import ReferenceSpace

    return ReferenceSpace.from_files(path)


def _nrrd_bytes(data: Any, header: dict[str, Any]) -> bytes:
    import tempfile

    from brainmap.io.nrrd import write_nrrd

    with tempfile.TemporaryDirectory(prefix="brainmap-mask-") as folder:
        path = Path(folder) / "mask.nrrd"
        write_nrrd(path, data, header)
        return path.read_bytes()


def _bytes_response(request: Request, body: bytes, media_type: str, filename: str) -> Response:
    checksum = hashlib.sha256(body).hexdigest()
    etag = f'"{checksum}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type=media_type, headers={
        "ETag": etag, CHECKSUM_HEADER: checksum, "Content-Disposition": f'attachment; filename="{filename}"'})


@router.get(_ARCHIVE + "/annotation/ccf_2017/structure_masks/structure_masks_{resolution}/structure_{structure_id}.nrrd",
            summary="A structure's mask (with its descendants) at Allen's download path", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def structure_mask(request: Request, resolution: int, structure_id: int) -> Response:
    """Allen's structure mask: uint8, 1 in the structure and its descendants, on the annotation's grid and
    header (what AllenSDK's ``ReferenceSpaceCache.get_structure_mask`` downloads)."""
    import numpy as np

    from brainmap.io.nrrd import read_nrrd_header

    state = state_of(request)
    _structure(state, structure_id)
    key = ("mask", resolution, structure_id)
    body = state.grid_bundles.get(key)
    if body is None:
        space = _mask_space(state, resolution)
        mask = space.make_structure_mask([structure_id]).astype(np.uint8)
        header = read_nrrd_header(_annotation_file(state, resolution))
        body = _nrrd_bytes(mask, {k: v for k, v in header.items()
                                  if k in ("space", "space directions", "space origin", "kinds")})
        state.grid_bundles.put(key, body)
    return _bytes_response(request, body, "application/octet-stream", f"structure_{structure_id}.nrrd")


def _mesh_obj(space: Any, structure_id: int) -> bytes:
    """A Wavefront OBJ of the structure's surface (marching cubes on its mask; vertices in microns, PIR)."""
    import numpy as np
    from skimage.measure import marching_cubes

    mask = space.make_structure_mask([structure_id])
    if not mask.any():
        raise NotFound(f"structure {structure_id} has no voxels in the annotation (no mesh)")
    spacing = tuple(float(r) for r in np.asarray(space.resolution).ravel()[:3])
    padded = np.pad(mask, 1).astype(np.float32)
    verts, faces, normals, _ = marching_cubes(padded, 0.5, spacing=spacing, step_size=2)
    verts -= np.asarray(spacing)  # undo the padding
    lines = [f"# brainmap: structure {structure_id}, marching cubes (step 2) on the {spacing[0]:g} um CCF 2017 "
             "annotation"]
    lines += [f"v {x:.1f} {y:.1f} {z:.1f}" for x, y, z in verts]
    lines += [f"vn {x:.4f} {y:.4f} {z:.4f}" for x, y, z in normals]
    lines += [f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in (faces + 1)]
    return ("\n".join(lines) + "\n").encode("ascii")


@router.get(_ARCHIVE + "/annotation/ccf_2017/structure_meshes/{structure_id}.obj",
            summary="A structure's surface mesh (OBJ) at Allen's download path", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def structure_mesh(request: Request, structure_id: int) -> Response:
    """A triangulated surface of the structure and its descendants, from the 25 um annotation (Allen's are made
    from the 10 um one), vertices in microns (AP, DV, LR)."""
    state = state_of(request)
    _structure(state, structure_id)
    key = ("mesh", structure_id)
    body = state.grid_bundles.get(key)
    if body is None:
        body = _mesh_obj(state.reference_space(25), structure_id)
        state.grid_bundles.put(key, body)
    return _bytes_response(request, body, "text/plain", f"{structure_id}.obj")


@router.get(_ARCHIVE + "/annotation/{version}/{file_path:path}", include_in_schema=False, response_class=Response)
def other_annotation(version: str, file_path: str) -> Response:
    """brainmap serves the CCF 2017 annotation only; other versions answer 404 naming the one there is."""
    if version == _SERVED_VERSION:
        raise NotFound(f"no file {_ARCHIVE}/annotation/{version}/{file_path} on this server; it serves "
                       f"annotation_{{10,25,50,100}}.nrrd (10 um where the data directory holds it), "
                       "structure_masks/structure_masks_{resolution}/structure_{id}.nrrd and "
                       "structure_meshes/{id}.obj")
    raise NotFound(f"the {version} annotation is not served here: brainmap serves the CCF 2017 annotation "
                   f"({_ARCHIVE}/annotation/ccf_2017/annotation_{{resolution}}.nrrd); use "
                   "ccf_version='annotation/ccf_2017' (AllenSDK's ReferenceSpaceApi.CCF_2017, its default)")
