"""The section image viewer: every section image of a data set, zoomable from a Deep Zoom pyramid, with the CCF
annotation's boundaries drawn over it through the data set's alignment.

==========================================================  ======================================================
``/sections/{data_set_id}?image=&x=&y=``                    the viewer page (OpenSeadragon, served from
                                                            ``static/vendor``); ``x, y`` mark a pixel
``/portal/sections/{data_set_id}/images.json``              the data set's images, each with its tile source and
                                                            a download link
``/portal/dz/{image_id}.dzi``                               the image's Deep Zoom descriptor
``/portal/dz/{image_id}_files/{level}/{col}_{row}.jpg``     one 254 px tile (+1 px overlap), from the image's
                                                            pyramid on disk
``/portal/sections/image/{image_id}.png``                   the whole image at full resolution (download)
``/portal/sections/image/{image_id}/boundaries.png``        the annotation's boundaries on the image (RGBA)
``/portal/sections/image/{image_id}/labels.json``           the structure under each cell of a coarse grid of the
                                                            image (what the cursor names)
==========================================================  ======================================================

Pixels are read from the data set's folder in the data directory (:mod:`brainmap.specimen.folder`) and drawn in
false colour. Tiles come from a Deep Zoom pyramid kept on disk in ``tiles/`` of the data directory
(:mod:`brainmap.specimen.pyramid`): ``brainmap load`` makes them; an image whose files changed since (or whose
pyramid is missing) gets a new one on its first tile request, or when the viewer page opens on it. The annotation is
the bundled 25 um CCF sampled at each pixel's reference point (:func:`brainmap.specimen.model.pixels_to_reference`,
from the alignments in the database, the same ones the image sync services use).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.responses import HTMLResponse, JSONResponse, Response

from brainmap.errors import BrainmapError
from brainmap.server.errors import NotFound
from brainmap.server.portal.catalog import catalog_of, synthetic_note
from brainmap.server.portal.render import error_page, page
from brainmap.server.routes_data import state_of
from brainmap.server.state import LruCache
from brainmap.specimen.model import SectionImage
from brainmap.specimen.pyramid import (OVERLAP, TILE, TILES_DIR, ensure_pyramid, max_level, pyramid_key,
                                       read_composite, tile_path)
from brainmap.store import models as m

__all__ = ["TILE", "router"]

router = APIRouter(include_in_schema=False)

_LABEL_CELLS = 200  # the label grid's cells along the image's long side
_BOUNDARY_MAX = 2048  # the boundary picture's long side at most (px)
_composites: LruCache[tuple[int, str], np.ndarray] = LruCache(8, 128 * 2**20, lambda a: a.nbytes)
_datasets: LruCache[str, tuple[tuple[int, int], dict[int, SectionImage]]] = LruCache(256)
_making: dict[int, threading.Lock] = {}
_making_lock = threading.Lock()


@dataclass(frozen=True)
class ImageRow:
    id: int
    data_set_id: int
    section_number: int
    width: int
    height: int
    resolution: float | None


def _image_row(state: Any, image_id: int) -> ImageRow:
    si = m.SectionImage
    found = state.run(lambda c: c.execute(select(si.id, si.data_set_id, si.section_number, si.width, si.height,
                                                 si.resolution).where(si.id == image_id)).first())
    if found is None:
        raise NotFound(f"no SectionImage {image_id}")
    return ImageRow(*found)


def _images_of(state: Any, data_set_id: int) -> list[ImageRow]:
    si = m.SectionImage
    rows = state.run(lambda c: c.execute(select(si.id, si.data_set_id, si.section_number, si.width, si.height,
                                                si.resolution).where(si.data_set_id == data_set_id)
                                         .order_by(si.section_number)).all())
    return [ImageRow(*r) for r in rows]


def _tiles_root(state: Any) -> Path:
    """``tiles/`` in the data directory, or a folder in the system's temporary directory where the data directory
    cannot be written (a read-only mount)."""
    root = state.data_dir / TILES_DIR
    try:
        root.mkdir(exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"brainmap-tiles-{os.getuid()}" / hashlib.sha1(
        str(state.data_dir).encode()).hexdigest()[:12]
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _source(state: Any, image: ImageRow) -> tuple[Path, SectionImage, bool]:
    """The data set folder, the image as its ``dataset.json`` describes it and whether it is connectivity; each
    ``dataset.json`` is read once per process while unchanged (size and modification time)."""
    from brainmap.specimen.folder import read_dataset

    record = catalog_of(state).by_id(image.data_set_id)
    if record is None or not record.storage_directory:
        raise NotFound(f"SectionDataSet {image.data_set_id} has no folder in the data directory")
    path = state.resolve_data_path(f"{record.storage_directory.rstrip('/')}/dataset.json")
    stat = path.stat()
    stamp = (stat.st_size, stat.st_mtime_ns)
    found = _datasets.get(str(path))
    if found is None or found[0] != stamp:
        dataset = read_dataset(path.parent, check_files=False)
        found = (stamp, {i.id: i for i in dataset.images})
        _datasets.put(str(path), found)
    section = found[1].get(image.id)
    if section is None:
        raise NotFound(f"SectionImage {image.id} is not in {record.storage_directory}/dataset.json")
    return path.parent, section, record.is_connectivity


def _composite(state: Any, image: ImageRow) -> np.ndarray:
    """(rows, cols, 3) uint8 false-colour picture of one section image (:func:`brainmap.specimen.pyramid.
    false_colour`), kept per process."""
    folder, section, connectivity = _source(state, image)
    key = (image.id, pyramid_key(folder, section, connectivity))
    found = _composites.get(key)
    if found is None:
        found = read_composite(folder, section, connectivity)
        _composites.put(key, found)
    return found


def _pyramid(state: Any, image: ImageRow) -> Path:
    """The image's tile pyramid on disk, made once (:mod:`brainmap.specimen.pyramid`); concurrent requests of
    one process for a new image wait for one maker."""
    folder, section, connectivity = _source(state, image)
    root = _tiles_root(state)
    target = root / str(image.id) / pyramid_key(folder, section, connectivity)
    if target.is_dir():
        return target
    with _making_lock:
        lock = _making.setdefault(image.id, threading.Lock())
    with lock:
        made = ensure_pyramid(root, folder, section, connectivity)
    with _making_lock:
        _making.pop(image.id, None)
    return made


def _warm(state: Any, image: ImageRow) -> None:
    """Make an image's pyramid ahead of its tiles (a failure is left for the tile request to report)."""
    try:
        _pyramid(state, image)
    except (BrainmapError, OSError, ValueError):
        pass


def _max_level(image: ImageRow) -> int:
    return max_level(image.width, image.height)


@router.get("/portal/dz/{image_id}.dzi")
def dzi(request: Request, image_id: int) -> Response:
    image = _image_row(state_of(request), image_id)
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
           f'TileSize="{TILE}" Overlap="{OVERLAP}" Format="jpg"><Size Width="{image.width}" '
           f'Height="{image.height}"/></Image>')
    return Response(xml, media_type="application/xml", headers={"Cache-Control": "max-age=3600"})


@router.get("/portal/dz/{image_id}_files/{level}/{name}")
def tile(request: Request, image_id: int, level: int, name: str) -> Response:
    """One Deep Zoom tile (JPEG), from the image's pyramid on disk."""
    state = state_of(request)
    try:
        col_text, row_text = name.removesuffix(".jpg").split("_")
        col, row = int(col_text), int(row_text)
    except ValueError:
        raise NotFound(f"no tile {name!r}: tiles are named COL_ROW.jpg") from None
    image = _image_row(state, image_id)
    if not 0 <= level <= _max_level(image):
        raise NotFound(f"SectionImage {image_id} has levels 0 to {_max_level(image)}")
    try:
        pyramid = _pyramid(state, image)
    except FileNotFoundError as exc:
        raise NotFound(f"SectionImage {image_id}: an image file is missing ({exc.filename})") from None
    try:
        body = tile_path(pyramid, level, col, row).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no tile {col},{row} at level {level} of SectionImage {image_id}") from None
    return Response(body, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.get("/portal/sections/image/{image_id}.png")
def full_image(request: Request, image_id: int) -> Response:
    from PIL import Image

    state = state_of(request)
    image = _image_row(state, image_id)
    buffer = io.BytesIO()
    Image.fromarray(_composite(state, image)).save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png", headers={
        "Content-Disposition": f'attachment; filename="{image.data_set_id}_{image.section_number:04d}_{image.id}.png"'})


def _label_grid(state: Any, image: ImageRow, cells: int) -> tuple[np.ndarray, float]:
    """Structure ids (rows, cols) at the centres of a grid of cells over the image, and the cell size (px)."""
    from brainmap.server.routes_sync import load_data_set
    from brainmap.specimen.model import pixels_to_reference

    dataset = state.run(lambda c: load_data_set(c, image.data_set_id, state.data_dir))
    step = max(image.width, image.height) / cells
    cols = (np.arange(max(1, math.ceil(image.width / step))) + 0.5) * step
    rows = (np.arange(max(1, math.ceil(image.height / step))) + 0.5) * step
    xy = np.stack(np.meshgrid(cols, rows), axis=-1)
    reference = pixels_to_reference(dataset, image.id, xy)
    space = state.reference_space(25)
    index = np.floor(reference / 25.0).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.asarray(space.shape)), axis=-1)
    labels = np.zeros(xy.shape[:2], dtype=np.int64)
    k = index[inside]
    labels[inside] = space.annotation[k[:, 0], k[:, 1], k[:, 2]]
    return labels, step


@router.get("/portal/sections/image/{image_id}/labels.json")
def labels(request: Request, image_id: int) -> JSONResponse:
    state = state_of(request)
    image = _image_row(state, image_id)
    try:
        grid, step = _label_grid(state, image, _LABEL_CELLS)
    except BrainmapError as exc:
        return JSONResponse({"success": False, "msg": str(exc)}, status_code=400)
    tree = state.structure_tree
    ids = [int(i) for i in np.unique(grid) if i]
    nodes = tree.get_structures_by_id(ids)
    return JSONResponse({"success": True, "width": image.width, "height": image.height, "step": step,
                         "rows": int(grid.shape[0]), "cols": int(grid.shape[1]), "labels": grid.ravel().tolist(),
                         "structures": {str(n["id"]): [n["acronym"], n["name"]] for n in nodes}})


@router.get("/portal/sections/image/{image_id}/boundaries.png")
def boundaries(request: Request, image_id: int) -> Response:
    """Where the annotation changes between neighbouring pixels (white, opaque; transparent elsewhere)."""
    from PIL import Image

    state = state_of(request)
    image = _image_row(state, image_id)
    cells = min(_BOUNDARY_MAX, max(image.width, image.height))
    grid, _ = _label_grid(state, image, cells)
    edge = np.zeros(grid.shape, dtype=bool)
    edge[1:, :] |= grid[1:, :] != grid[:-1, :]
    edge[:, 1:] |= grid[:, 1:] != grid[:, :-1]
    rgba = np.zeros(grid.shape + (4,), dtype=np.uint8)
    rgba[edge] = (255, 255, 255, 230)
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@router.get("/portal/sections/{data_set_id}/images.json")
def images_json(request: Request, data_set_id: int) -> JSONResponse:
    state = state_of(request)
    images = _images_of(state, data_set_id)
    return JSONResponse({"success": True, "num_rows": len(images), "msg": [
        {"id": i.id, "section_number": i.section_number, "width": i.width, "height": i.height,
         "resolution": i.resolution, "tiles": f"/portal/dz/{i.id}.dzi",
         "download": f"/portal/sections/image/{i.id}.png"} for i in images]})


@router.get("/sections/{data_set_id}", response_class=HTMLResponse)
def viewer(request: Request, data_set_id: int, image: int | None = None, x: float | None = None,
           y: float | None = None) -> HTMLResponse:
    state = state_of(request)
    catalog = catalog_of(state)
    record = catalog.by_id(data_set_id)
    if record is None:
        return error_page(404, "No such data set", f"There is no data set {data_set_id} on this server.")
    images = _images_of(state, data_set_id)
    if not images:
        return error_page(404, "No section images", f"Data set {data_set_id} has no section images.")
    chosen = next((i for i in images if i.id == image), images[len(images) // 2])
    # Start compositing the image now: the browser asks for its tiles once the page and the viewer's script are in.
    threading.Thread(target=_warm, args=(state, chosen), name="brainmap-section-warm", daemon=True).start()
    others = [r.id for r in catalog.records if r.id != data_set_id and r.aligned and r.sections]
    return page("sections.html", nav="experiments", r=record, images=images, image=chosen,
                index=images.index(chosen), mark=(x, y) if x is not None and y is not None else None,
                others=others, synthetic=synthetic_note(state, record))
