"""Images: section images, atlas plates and their SVG drawings, at Allen's paths and with Allen's parameters.

==========================================================================  ==========================================
``GET /api/v2/section_image_download/{section_image_id}``                  a section image as JPEG (also at
(also ``/api/v2/image_download/{id}`` and                                   Allen's general image and projection
``/api/v2/projection_image_download/{id}``)                                 image paths)
``GET /api/v2/atlas_image_download/{atlas_image_id}?annotation=true``       an atlas plate as JPEG
``GET /api/v2/svg_download/{atlas_image_id}?groups=28``                     a plate's structure boundaries as SVG
(also ``/api/v2/svg/{id}``)                                                 (an attachment / inline)
==========================================================================  ==========================================

Section images: brainmap's section images are two 16-bit channels (``tissue`` and ``signal``, 12 bits for
connectivity, 14 for ISH); the JPEG shows ``tissue`` (or a channel named ``red``) in red and ``signal`` (or
``green``) in green, each channel windowed by
``range=rl,ru,gl,gu,bl,bu`` (default the data set's Equalization: the channel's whole bit depth). ``view=projection``
or ``view=expression`` is the detection mask instead (:func:`brainmap.pipeline.detect.core.detect_section`, run
on the image as the pipeline runs it): the signal's background-subtracted intensity in green (projection) or in a
heat scale (expression), black elsewhere. ``downsample=k`` halves the image ``k`` times (block means);
``left``/``top`` (full-resolution pixels) and ``width``/``height`` (pixels of the downsampled image) crop it;
``quality`` is the JPEG quality (default 100). Allen's filters ``colormap``, ``rgb``, ``contrast`` and the tumor
views do not apply to these images and are refused, naming what is served.

Atlas plates (:mod:`brainmap.atlas.plates`, :mod:`brainmap.atlas.drawings`): cut from the 25 um CCF annotation;
``annotation=true`` colours structures as Allen's annotated plates, otherwise the plate is the structure
boundaries alone (brainmap has no Nissl plates). SVG ``groups`` are graphic group labels; 28 (the structure
boundaries) is the one there is.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from sqlalchemy import Connection, select
from starlette.responses import Response

from brainmap.server.errors import ApiError, NotFound
from brainmap.server.routes_data import state_of
from brainmap.server.state import ServerState
from brainmap.store import models as m
from brainmap.store.allen_views import EQUALIZATION_UPPER

__all__ = ["router"]

router = APIRouter(tags=["images"])

_MAX_DOWNSAMPLE = 8
_VIEWS = ("projection", "expression")
_REFUSED = ("colormap", "rgb", "contrast", "tumor_feature_annotation", "tumor_feature_boundary", "projection",
            "expression")
_INTS = re.compile(r"\s*-?\d{1,7}\s*(,\s*-?\d{1,7}\s*)*")


def _jpeg(rgb: np.ndarray, quality: int) -> Response:
    from PIL import Image

    buffer = io.BytesIO()
    # 4:4:4 chroma: channels are data (tissue, signal), not a photograph
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="JPEG", quality=int(quality), subsampling=0)
    return Response(buffer.getvalue(), media_type="image/jpeg")


def _downsample(image: np.ndarray, times: int) -> np.ndarray:
    """Block means over ``2**times`` pixels (the last partial block kept)."""
    step = 2 ** times
    if step == 1:
        return image
    rows, cols = image.shape[:2]
    pad = ((0, (-rows) % step), (0, (-cols) % step)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image.astype(np.float64), pad, mode="edge")
    shape = (padded.shape[0] // step, step, padded.shape[1] // step, step) + padded.shape[2:]
    return padded.reshape(shape).mean(axis=(1, 3))


def _check_common(request: Request, allowed: set[str]) -> None:
    for name in request.query_params:
        if name in _REFUSED and name not in allowed:
            raise ApiError(f"{name} does not apply to brainmap's images; this server serves "
                           f"{', '.join(sorted(allowed))}")


# -- section images -------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _data_set_folder(path: str, mtime_ns: int) -> Any:
    """A data set folder's ``dataset.json``, read once per version of the file (``mtime_ns``)."""
    from brainmap.specimen.folder import read_dataset

    return read_dataset(Path(path), check_files=False)


def _image_row(connection: Connection, image_id: int) -> Any:
    row = connection.execute(
        select(m.SectionImage.id, m.SectionImage.data_set_id, m.SectionDataSet.storage_directory,
               m.section_data_sets_products.c.product_id)
        .join(m.SectionDataSet, m.SectionDataSet.id == m.SectionImage.data_set_id)
        .outerjoin(m.section_data_sets_products,
                   m.section_data_sets_products.c.section_data_set_id == m.SectionDataSet.id)
        .where(m.SectionImage.id == image_id)).first()
    if row is None:
        raise NotFound(f"no SectionImage {image_id} (atlas plates download from /api/v2/atlas_image_download)")
    return row


def _channels(state: ServerState, image_id: int) -> tuple[dict[str, np.ndarray], Any]:
    import tifffile

    from brainmap.specimen.folder import image_path

    row = state.run(lambda c: _image_row(c, image_id))
    if not row.storage_directory:
        raise NotFound(f"SectionImage {image_id}: its data set has no storage directory")
    document = state.resolve_data_path(Path(row.storage_directory) / "dataset.json")
    folder = document.parent
    dataset = _data_set_folder(str(folder), document.stat().st_mtime_ns)
    image = next((i for i in dataset.images if i.id == image_id), None)
    if image is None:
        raise NotFound(f"SectionImage {image_id} is not in {folder / 'dataset.json'}")
    arrays = {}
    for channel in image.channels:
        arrays[channel] = tifffile.imread(state.resolve_data_path(image_path(folder, image, channel)))
    return arrays, dataset


def _range(text: str | None, product: str) -> list[float]:
    top = float(EQUALIZATION_UPPER.get(product, EQUALIZATION_UPPER["connectivity"]))
    if text is None:
        return [0.0, top] * 3
    if not _INTS.fullmatch(text) or len(text.split(",")) != 6:
        raise ApiError(f"range must be six integers lower,upper for red, green and blue (e.g. 0,{int(top)},0,"
                       f"{int(top)},0,{int(top)}), got {text!r}")
    values = [float(v) for v in text.split(",")]
    for lo, hi in zip(values[::2], values[1::2]):
        if hi <= lo:
            raise ApiError(f"range: each upper bound must exceed its lower bound, got {text!r}")
    return values


def _window(channel: np.ndarray | None, lo: float, hi: float, shape: tuple[int, int]) -> np.ndarray:
    if channel is None:
        return np.zeros(shape, dtype=np.float64)
    return np.clip((channel.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255.0


def _channel(arrays: dict[str, np.ndarray], *names: str) -> np.ndarray | None:
    return next((arrays[n] for n in names if n in arrays), None)


def _section_picture(arrays: dict[str, np.ndarray], dataset: Any, view: str | None, window: list[float]
                     ) -> np.ndarray:
    shape = next(iter(arrays.values())).shape
    if view is None:
        red = _window(_channel(arrays, "tissue", "red"), window[0], window[1], shape)
        green = _window(_channel(arrays, "signal", "green"), window[2], window[3], shape)
        blue = _window(arrays.get("blue"), window[4], window[5], shape)
        return np.stack([red, green, blue], axis=-1)
    from brainmap.pipeline.detect.core import DetectionParams, detect_section

    result = detect_section(arrays, DetectionParams.for_dataset(dataset))
    level = _window(result.mask, 0.0, max(float(result.mask.max()), 1.0), shape)
    picture = np.zeros(shape + (3,), dtype=np.float64)
    if view == "projection":
        picture[..., 1] = level
    else:  # expression: a heat scale
        t = level / 255.0
        picture[..., 0] = np.clip(3 * t, 0, 1) * 255
        picture[..., 1] = np.clip(3 * t - 1, 0, 1) * 255
        picture[..., 2] = np.clip(3 * t - 2, 0, 1) * 255
    return picture


def _crop(picture: np.ndarray, times: int, left: int | None, top: int | None, width: int | None,
          height: int | None) -> np.ndarray:
    step = 2 ** times
    r0 = (top or 0) // step
    c0 = (left or 0) // step
    rows = picture.shape[0] - r0 if height is None else height
    cols = picture.shape[1] - c0 if width is None else width
    if r0 >= picture.shape[0] or c0 >= picture.shape[1] or rows <= 0 or cols <= 0:
        raise ApiError(f"the region (left {left}, top {top}, width {width}, height {height}) lies outside the "
                       f"image ({picture.shape[1]} x {picture.shape[0]} pixels at downsample {times})")
    return picture[r0:r0 + rows, c0:c0 + cols]


def _section_image(request: Request, section_image_id: int, downsample: int, quality: int, range_: str | None,
                   view: str | None, left: int | None, top: int | None, width: int | None,
                   height: int | None) -> Response:
    _check_common(request, {"downsample", "quality", "range", "view", "left", "top", "width", "height",
                            "downsample_dimensions"})
    if view is not None and view not in _VIEWS:
        raise ApiError(f"view {view!r} is not served; views: {', '.join(_VIEWS)}")
    state = state_of(request)
    arrays, dataset = _channels(state, section_image_id)
    picture = _section_picture(arrays, dataset, view, _range(range_, dataset.product))
    picture = _downsample(picture, downsample)
    picture = _crop(picture, downsample, left, top, width, height)
    return _jpeg(np.clip(np.rint(picture), 0, 255).astype(np.uint8), quality)


def _image_route(path: str, summary: str) -> None:
    @router.get(path, summary=summary, response_class=Response,
                responses={200: {"content": {"image/jpeg": {}}}})
    def download(request: Request, section_image_id: int,
                 downsample: int = Query(0, ge=0, le=_MAX_DOWNSAMPLE, description="halve the image k times"),
                 quality: int = Query(100, ge=0, le=100, description="JPEG quality"),
                 range_: str | None = Query(None, alias="range", description="rl,ru,gl,gu,bl,bu channel windows"),
                 view: str | None = Query(None, description="projection or expression: the detection mask"),
                 left: int | None = Query(None, ge=0, description="full-resolution pixels"),
                 top: int | None = Query(None, ge=0, description="full-resolution pixels"),
                 width: int | None = Query(None, gt=0, description="pixels of the downsampled image"),
                 height: int | None = Query(None, gt=0, description="pixels of the downsampled image"),
                 ) -> Response:
        return _section_image(request, section_image_id, downsample, quality, range_, view, left, top, width,
                              height)


_image_route("/api/v2/section_image_download/{section_image_id}", "A section image (JPEG)")
_image_route("/api/v2/image_download/{section_image_id}", "A section image (JPEG), Allen's general path")
_image_route("/api/v2/projection_image_download/{section_image_id}",
             "A section image (JPEG), Allen's projection image path")


# -- atlas plates --------------------------------------------------------------------------------------------------
def _plate(atlas_image_id: int) -> Any:
    from brainmap.atlas.plates import ATLASES, atlas_plates, plate_by_id

    plate = plate_by_id(atlas_image_id)
    if plate is None:
        ranges = ", ".join(f"atlas {a} ({ATLASES[a]['name']}): {min(p.id for p in atlas_plates() if p.atlas_id == a)}"
                           f"-{max(p.id for p in atlas_plates() if p.atlas_id == a)}" for a in ATLASES)
        raise NotFound(f"no AtlasImage {atlas_image_id}; the plates are {ranges}")
    return plate


@router.get("/api/v2/atlas_image_download/{atlas_image_id}", summary="An atlas plate (JPEG)",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def atlas_image_download(request: Request, atlas_image_id: int,
                         annotation: bool = Query(False, description="colour the structures"),
                         downsample: int = Query(0, ge=0, le=_MAX_DOWNSAMPLE),
                         quality: int = Query(100, ge=0, le=100),
                         atlas: int | None = Query(None, description="the atlas whose annotation to draw"),
                         ) -> Response:
    """A plate cut from the CCF annotation; with ``annotation=true`` in the ontology's colours."""
    _check_common(request, {"annotation", "downsample", "quality", "atlas", "downsample_dimensions"})
    from brainmap.atlas.drawings import plate_picture

    plate = _plate(atlas_image_id)
    if atlas is not None and atlas != plate.atlas_id:
        raise ApiError(f"AtlasImage {atlas_image_id} is a plate of atlas {plate.atlas_id}, not of atlas {atlas}")
    return _jpeg(plate_picture(plate, annotation=annotation, downsample=downsample), quality)


def _groups(text: str | None) -> None:
    from brainmap.atlas.plates import ATLAS_STRUCTURES_GROUP

    if text is None:
        return
    if not _INTS.fullmatch(text):
        raise ApiError(f"groups must be comma-separated graphic group label ids, got {text!r}")
    unknown = sorted({int(g) for g in text.split(",")} - {ATLAS_STRUCTURES_GROUP})
    if unknown:
        raise NotFound(f"no graphic group label {', '.join(map(str, unknown))} on these plates; the group is "
                       f"{ATLAS_STRUCTURES_GROUP} (structure boundaries)")


@lru_cache(maxsize=32)
def _svg_text(atlas_image_id: int, downsample: int) -> bytes:
    from brainmap.atlas.drawings import plate_svg

    return plate_svg(_plate(atlas_image_id), downsample=downsample).encode("utf-8")


def _svg(atlas_image_id: int, groups: str | None, downsample: int, attachment: bool) -> Response:
    _groups(groups)
    _plate(atlas_image_id)
    headers = {"Content-Disposition": f'attachment; filename="{atlas_image_id}.svg"'} if attachment else {}
    return Response(_svg_text(atlas_image_id, downsample), media_type="image/svg+xml", headers=headers)


@router.get("/api/v2/svg_download/{atlas_image_id}", summary="A plate's structure boundaries (SVG, attachment)",
            response_class=Response, responses={200: {"content": {"image/svg+xml": {}}}})
def svg_download(atlas_image_id: int, groups: str | None = Query(None, description="graphic groups: 28"),
                 downsample: int = Query(0, ge=0, le=_MAX_DOWNSAMPLE)) -> Response:
    """Allen's ``svg_download``: one ``<path>`` per structure region with ``structure_id`` and its colour."""
    return _svg(atlas_image_id, groups, downsample, attachment=True)


@router.get("/api/v2/svg/{atlas_image_id}", summary="A plate's structure boundaries (SVG)",
            response_class=Response, responses={200: {"content": {"image/svg+xml": {}}}})
def svg(atlas_image_id: int, groups: str | None = Query(None, description="graphic groups: 28"),
        downsample: int = Query(0, ge=0, le=_MAX_DOWNSAMPLE)) -> Response:
    """Allen's ``svg``: the same drawing, inline."""
    return _svg(atlas_image_id, groups, downsample, attachment=False)
