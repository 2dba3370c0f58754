"""Image synchronization: Allen's four image sync services, from the alignments in the database.

=====================================================================================  ===============================
``GET /api/v2/image_to_reference/{section_image_id}.json?x=&y=``                       ``msg: {image_to_reference:
                                                                                       {x, y, z}}`` (um, AP/DV/LR)
``GET /api/v2/reference_to_image/{reference_space_id}.json?x=&y=&z=&section_data_set_ids=``  ``msg: [{image_sync:
                                                                                       {section_data_set_id,
                                                                                       section_image_id,
                                                                                       section_number, x, y}}]``
``GET /api/v2/image_to_image/{section_image_id}.json?x=&y=&section_data_set_ids=``      the same, per target data set
``GET /api/v2/structure_to_image/{section_data_set_id}.json?structure_ids=``            the same, per structure
``GET /api/v2/image_to_image_2d/{section_image_id}.json?x=&y=&section_image_ids=``      2-D only (in-plane), per target
                                                                                       image of the same specimen
``GET /api/v2/image_to_atlas/{section_image_id}.json?x=&y=&atlas_id=``                  ``msg: {image_sync: {atlas_id,
                                                                                       section_image_id (the plate),
                                                                                       section_number, x, y}}``
=====================================================================================  ===============================

Pixels are ``(x = column, y = row)`` of the full-resolution image; reference points are microns in the CCF's
PIR order (AP, DV, LR). The geometry is :mod:`brainmap.specimen.sync`; a data set is rebuilt from its
SectionImage, Alignment2d and Alignment3d rows for each request, and its non-linear part from the
``deformation`` WellKnownFile (the ``deformation.nrrd`` that ``brainmap load`` copied into the data directory;
read once per process and file content), so the server's answers are folder-level sync's exactly. ``structure_to_image`` uses the structure's
centroid on the bundled annotation (``sync_resolution_um``, 25 um by default), kept per process.

An unknown image, data set or structure is a 404 (400 for a structure); an unaligned data set a 400. Only
reference space 9 (CCF v3, PIR) exists here: sagittal data are registered straight into it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import Connection, select

from brainmap.errors import UnknownStructureError
from brainmap.server.errors import ApiError, NotFound, scrub_paths
from brainmap.server.routes_data import state_of
from brainmap.server.state import ServerState
from brainmap.store import models as m

__all__ = ["load_data_set", "router"]

router = APIRouter(tags=["image sync"])

REFERENCE_SPACE_ID = 9
_MAX_TARGETS = 200
_IDS = re.compile(r"\s*\d{1,19}\s*(,\s*\d{1,19}\s*)*")
_PRODUCT_OF = {1: "ish", 5: "connectivity"}
_PLANE_OF = {1: "coronal", 2: "sagittal"}


def _ids(text: str, name: str) -> list[int]:
    if not _IDS.fullmatch(text or ""):
        raise ApiError(f"{name} must be comma-separated ids, got {text!r}")
    ids = list(dict.fromkeys(int(t) for t in text.split(",")))
    if len(ids) > _MAX_TARGETS:
        raise ApiError(f"{name}: at most {_MAX_TARGETS} ids per request, got {len(ids)}")
    return ids


def _affine(row: Any, prefixes: tuple[str, ...], count: int) -> dict[str, float]:
    return {f"{p}_{k:02d}": getattr(row, f"{p}_{k:02d}") for p in prefixes for k in range(count)}


#: The WellKnownFileType of a data set's non-linear deformation (``deformation.nrrd``, registered by ``brainmap
#: load`` under its name without extension).
DEFORMATION_FILE_TYPE = "deformation"


@lru_cache(maxsize=32)
def _read_deformation(path: Path, sha256: str) -> Any:
    """A deformation field file, read once per process and content (``sha256`` is the cache key's second half)."""
    from brainmap.specimen.deformation import DeformationField

    return DeformationField.read(path)


def _deformation(connection: Connection, data_set_id: int, data_dir: Path) -> Any:
    """The data set's registered deformation field, or None if it has none."""
    row = connection.execute(
        select(m.WellKnownFile.path, m.WellKnownFile.sha256)
        .join(m.WellKnownFileType, m.WellKnownFileType.id == m.WellKnownFile.well_known_file_type_id)
        .where(m.WellKnownFile.attachable_type == "SectionDataSet", m.WellKnownFile.attachable_id == data_set_id,
               m.WellKnownFileType.name == DEFORMATION_FILE_TYPE)).first()
    if row is None:
        return None
    root = Path(data_dir).resolve()
    path = (root / row.path).resolve()
    if not path.is_relative_to(root):
        raise ApiError(f"SectionDataSet {data_set_id}: its deformation field {row.path!r} is outside the data "
                       "directory", status=503)
    try:
        return _read_deformation(path, row.sha256)
    except (OSError, ValueError) as exc:  # FileNotFoundError, DeformationFormatError
        # The data set's transform is affine + this field: answering with the affine part alone would be wrong.
        raise ApiError(f"SectionDataSet {data_set_id}: its deformation field {row.path} cannot be read "
                       f"({scrub_paths(str(exc))}); load the data set again with brainmap load", status=503) from exc


def load_data_set(connection: Connection, data_set_id: int, data_dir: Path | None = None) -> Any:
    """The :class:`~brainmap.specimen.model.SectionDataSet` (geometry only: no image files) from the database.

    With ``data_dir`` (the server's data directory) the data set's non-linear deformation, if it has one, is
    attached too, so that every sync goes through the same composed transform as folder-level sync; without it
    the geometry is the affine part only.
    """
    from brainmap.specimen.model import SectionDataSet, SectionImage
    from brainmap.specimen.transforms import Alignment2d, Alignment3d

    ds = connection.execute(select(m.SectionDataSet.__table__).where(m.SectionDataSet.id == data_set_id)).first()
    if ds is None:
        raise NotFound(f"no SectionDataSet {data_set_id}")
    products = {p for (p,) in connection.execute(
        select(m.section_data_sets_products.c.product_id)
        .where(m.section_data_sets_products.c.section_data_set_id == data_set_id))}
    a3 = connection.execute(select(m.Alignment3d.__table__).where(
        m.Alignment3d.section_data_set_id == data_set_id)).first()
    images = connection.execute(
        select(m.SectionImage.__table__, *[getattr(m.Alignment2d, f"{p}_{k:02d}") for p in ("tsv", "tvs")
                                           for k in range(6)],
               m.Alignment2d.id.label("alignment2d_id"))
        .outerjoin(m.Alignment2d, m.Alignment2d.section_image_id == m.SectionImage.id)
        .where(m.SectionImage.data_set_id == data_set_id)).all()
    pixel = next((float(i.resolution) for i in images if i.resolution), 1.0)
    section_images = [SectionImage(
        id=i.id, section_number=i.section_number, channels={"image": f"{i.id}.tif"}, width=i.width,
        height=i.height, failed=bool(i.failed),
        alignment2d=Alignment2d.from_allen(_affine(i, ("tsv", "tvs"), 6)) if i.alignment2d_id is not None
        else None) for i in images]
    thickness = float(ds.section_thickness)
    return SectionDataSet(
        id=ds.id, plane=_PLANE_OF.get(ds.plane_of_section_id, "coronal"),
        product=next((_PRODUCT_OF[p] for p in sorted(products) if p in _PRODUCT_OF), "connectivity"),
        section_thickness_um=thickness, sampling_um=max(float(ds.sampling_um or thickness), thickness),
        pixel_size_um=pixel, images=section_images,
        alignment3d=Alignment3d.from_allen(_affine(a3, ("trv", "tvr"), 12)) if a3 is not None else None,
        deformation=_deformation(connection, data_set_id, data_dir) if data_dir is not None and a3 is not None
        else None)


def _data_set_of_image(connection: Connection, section_image_id: int, data_dir: Path | None) -> Any:
    found = connection.execute(select(m.SectionImage.data_set_id).where(m.SectionImage.id == section_image_id)).first()
    if found is None:
        raise NotFound(f"no SectionImage {section_image_id}")
    return load_data_set(connection, found[0], data_dir)


def _envelope(msg: Any, count: int) -> dict[str, Any]:
    return {"success": True, "id": 0, "start_row": 0, "num_rows": count, "total_rows": count, "msg": msg}


def _sync_record(result: Any) -> dict[str, Any]:
    return {"image_sync": result.to_dict()}


def _targets(state: ServerState, ids: list[int]) -> list[Any]:
    def load(connection: Connection) -> list[Any]:
        return [load_data_set(connection, i, state.data_dir) for i in ids]

    return state.run(load)


@router.get("/api/v2/image_to_reference/{section_image_id}.json", summary="A pixel of an image -> the reference")
def image_to_reference(request: Request, section_image_id: int,
                       x: float = Query(..., description="column, pixels", allow_inf_nan=False),
                       y: float = Query(..., description="row, pixels", allow_inf_nan=False)) -> dict[str, Any]:
    """The reference point (um, AP/DV/LR) under pixel ``(x, y)`` of a section image."""
    from brainmap.specimen import sync

    state = state_of(request)
    data_set = state.run(lambda c: _data_set_of_image(c, section_image_id, state.data_dir))
    point = sync.image_to_reference(data_set, section_image_id, x, y)
    return _envelope({"image_to_reference": point.to_dict()}, 1)


@router.get("/api/v2/reference_to_image/{reference_space_id}.json",
            summary="A reference point -> the nearest image and pixel of each data set")
def reference_to_image(request: Request, reference_space_id: int,
                       x: float = Query(..., description="AP, um", allow_inf_nan=False),
                       y: float = Query(..., description="DV, um", allow_inf_nan=False),
                       z: float = Query(..., description="LR, um", allow_inf_nan=False),
                       section_data_set_ids: str = Query(..., description="comma-separated SectionDataSet ids")
                       ) -> dict[str, Any]:
    """For each data set, the nearest usable section image to the point and the pixel on it."""
    from brainmap.specimen import sync

    if reference_space_id != REFERENCE_SPACE_ID:
        raise NotFound(f"no reference space {reference_space_id}; this server has reference space "
                       f"{REFERENCE_SPACE_ID} (CCF v3, PIR; sagittal data are registered straight into it)")
    targets = _targets(state_of(request), _ids(section_data_set_ids, "section_data_set_ids"))
    records = [_sync_record(sync.reference_to_image(t, [x, y, z])) for t in targets]
    return _envelope(records, len(records))


@router.get("/api/v2/image_to_image/{section_image_id}.json",
            summary="A pixel of an image -> the corresponding image and pixel of other data sets")
def image_to_image(request: Request, section_image_id: int,
                   x: float = Query(..., description="column, pixels", allow_inf_nan=False),
                   y: float = Query(..., description="row, pixels", allow_inf_nan=False),
                   section_data_set_ids: str = Query(..., description="comma-separated target SectionDataSet ids")
                   ) -> dict[str, Any]:
    """Through the reference space: the source pixel's point, then the nearest image of each target."""
    from brainmap.specimen import sync

    state = state_of(request)
    ids = _ids(section_data_set_ids, "section_data_set_ids")
    source = state.run(lambda c: _data_set_of_image(c, section_image_id, state.data_dir))
    results = sync.image_to_image(source, section_image_id, x, y, _targets(state, ids))
    records = [_sync_record(r) for r in results]
    return _envelope(records, len(records))


def _structure_ids(state: ServerState, text: str) -> list[int]:
    tree = state.structure_tree
    out = []
    for token in [t.strip() for t in (text or "").split(",") if t.strip()]:
        if token.isdigit():
            sid = int(token)
            if sid not in tree:
                raise UnknownStructureError(f"no structure with id {sid}")
            out.append(sid)
        else:
            out.append(int(tree.get_structures_by_acronym([token])[0]["id"]))
    if not out:
        raise ApiError("structure_ids must name at least one structure (ids or acronyms)")
    if len(out) > _MAX_TARGETS:
        raise ApiError(f"structure_ids: at most {_MAX_TARGETS} per request")
    return list(dict.fromkeys(out))


@router.get("/api/v2/structure_to_image/{section_data_set_id}.json",
            summary="Structures -> the image and pixel of a data set at their centroids")
def structure_to_image(request: Request, section_data_set_id: int,
                       structure_ids: str = Query(..., description="comma-separated structure ids (or acronyms)"),
                       hemisphere_id: int | None = Query(None, ge=1, le=3,
                                                         description="1 left, 2 right, 3 or absent both")
                       ) -> dict[str, Any]:
    """For each structure, the data set's image and pixel at the structure's centroid."""
    from brainmap.specimen import sync

    state = state_of(request)
    ids = _structure_ids(state, structure_ids)
    data_set = state.run(lambda c: load_data_set(c, section_data_set_id, state.data_dir))
    records = []
    for sid in ids:
        centroid = state.structure_centroid(sid, None if hemisphere_id == 3 else hemisphere_id)
        records.append(_sync_record(sync.reference_to_image(data_set, centroid)))
    return _envelope(records, len(records))



@router.get("/api/v2/image_to_image_2d/{section_image_id}.json",
            summary="A pixel of an image -> the same in-plane point on other images of its specimen (2-D)")
def image_to_image_2d(request: Request, section_image_id: int,
                      x: float = Query(..., description="column, pixels", allow_inf_nan=False),
                      y: float = Query(..., description="row, pixels", allow_inf_nan=False),
                      section_image_ids: str = Query(..., description="comma-separated target SectionImage ids")
                      ) -> dict[str, Any]:
    """Allen's 2-D synchronization: the source pixel's in-plane specimen position (its ``tsv``), then each target
    image's ``tvs`` -- no 3-D registration, so only images of the same specimen (the same data set, or data sets
    of one specimen) are synchronized."""
    import numpy as np

    state = state_of(request)
    targets = _ids(section_image_ids, "section_image_ids")

    def load(connection: Connection) -> tuple[Any, dict[int, Any], dict[int, int]]:
        source = _data_set_of_image(connection, section_image_id, None)  # 2-D: the affine Alignment2d only
        specimen_of = dict(connection.execute(
            select(m.SectionImage.id, m.SectionDataSet.specimen_id)
            .join(m.SectionDataSet, m.SectionDataSet.id == m.SectionImage.data_set_id)
            .where(m.SectionImage.id.in_([section_image_id, *targets]))).all())
        data_sets = {}
        for target in targets:
            if target not in specimen_of:
                raise NotFound(f"no SectionImage {target}")
            data_sets[target] = _data_set_of_image(connection, target, None)
        return source, data_sets, specimen_of

    source, data_sets, specimen_of = state.run(load)
    image = next(i for i in source.images if i.id == section_image_id)
    if image.alignment2d is None:
        raise ApiError(f"SectionImage {section_image_id} has no Alignment2d (it was not aligned)")
    sxy = image.alignment2d.tsv.apply(np.array([float(x), float(y)]))
    records = []
    for target in targets:
        if specimen_of[target] != specimen_of[section_image_id]:
            raise ApiError(f"SectionImage {target} is of another specimen than {section_image_id}: 2-D "
                           "synchronization maps between images of one specimen (use image_to_image for others)")
        data_set = data_sets[target]
        other = next(i for i in data_set.images if i.id == target)
        if other.alignment2d is None:
            raise ApiError(f"SectionImage {target} has no Alignment2d (it was not aligned)")
        px, py = other.alignment2d.tvs.apply(sxy)
        records.append({"image_sync": {"section_data_set_id": data_set.id, "section_image_id": target,
                                       "section_number": other.section_number, "x": float(px), "y": float(py)}})
    return _envelope(records, len(records))


@router.get("/api/v2/image_to_atlas/{section_image_id}.json",
            summary="A pixel of an image -> the nearest plate of an atlas and the pixel on it")
def image_to_atlas(request: Request, section_image_id: int,
                   x: float = Query(..., description="column, pixels", allow_inf_nan=False),
                   y: float = Query(..., description="row, pixels", allow_inf_nan=False),
                   atlas_id: int = Query(..., description="1 (coronal) or 2 (sagittal)")) -> dict[str, Any]:
    """The reference point under the pixel, then the atlas plate nearest along the atlas's cutting axis and the
    pixel on it (:mod:`brainmap.atlas.plates`: plate pixels are 25 um annotation voxels). The sagittal atlas
    covers the left hemisphere, so a right-hemisphere point maps to its mirror image (as Allen's sagittal plates
    serve both hemispheres)."""
    from brainmap.atlas.plates import ATLASES, PLATE_RESOLUTION_UM, atlas_plates
    from brainmap.specimen import sync

    if atlas_id not in ATLASES:
        raise NotFound(f"no atlas {atlas_id}; atlases: " + ", ".join(f"{a} ({v['name']})" for a, v in ATLASES.items()))
    state = state_of(request)
    data_set = state.run(lambda c: _data_set_of_image(c, section_image_id, state.data_dir))
    point = sync.image_to_reference(data_set, section_image_id, x, y)
    ap, dv, lr = point.x, point.y, point.z
    plates = [p for p in atlas_plates() if p.atlas_id == atlas_id]
    if ATLASES[atlas_id]["plane"] == "coronal":
        along, px = ap, lr / PLATE_RESOLUTION_UM
    else:
        lr = lr if lr < 5700.0 else 11400.0 - lr
        along, px = lr, ap / PLATE_RESOLUTION_UM
    plate = min(plates, key=lambda p: (abs(p.position_um - along), p.section_number))
    record = {"atlas_id": atlas_id, "section_image_id": plate.id, "section_number": plate.section_number,
              "x": float(px), "y": float(dv / PLATE_RESOLUTION_UM)}
    return _envelope({"image_sync": record}, 1)
