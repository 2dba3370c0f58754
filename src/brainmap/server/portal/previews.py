"""Maximum-intensity previews of a data set's grid volume, from above and from the side, as figures (PNG).

``GET /portal/preview/{section_data_set_id}/{view}.png`` (view ``top`` or ``side``): the maximum over depth
(top: over DV, rows AP and columns LR; side: over LR, rows DV and columns AP) of ``projection_density``
(connectivity) or ``energy`` (ISH), in a heat scale (``t ** 0.5`` of the value over the volume's 99.5th
percentile of positive maxima), with the brain's outline in grey (the bundled 100 um annotation sampled at the
grid's voxel centres), orientation words, a scale bar and a colour bar in the volume's units, drawn with
:func:`brainmap.figures.figure`. Figures are kept per process by (file hash, view).
"""

from __future__ import annotations

import io
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from brainmap.figures import Colorbar, figure, heat_colormap
from brainmap.server.routes_data import state_of
from brainmap.server.routes_files import _files_of
from brainmap.server.state import LruCache
from brainmap.server.viewer import _choose, _volume

__all__ = ["UNITS", "preview_png", "router"]

router = APIRouter(include_in_schema=False)

#: Each volume's quantity and units, for the colour bar.
UNITS = {
    "projection_density": "projection density (fraction of voxel)",
    "projection_energy": "projection energy (intensity x fraction)",
    "injection_density": "injection density (fraction of voxel)",
    "energy": "expression energy (intensity x fraction)",
    "density": "expression density (fraction of voxel)",
    "intensity": "expression intensity (grey level)",
}
GAMMA = 0.5
_ZOOM_TARGET_UM = 25.0  # each voxel drawn as (resolution / 25) pixels square
_figures: LruCache[tuple[str, str], bytes] = LruCache(64)


def grid_corner_um(spacing: float) -> float:
    """Where a grid's voxel 0 starts (um): the 200 um expression grid's voxels are centred on multiples of 200 um
    (corner -100, :mod:`brainmap.atlas.expression_grid`); projection grids start at 0, as the annotation."""
    from brainmap.atlas.expression_grid import EXPRESSION_GRID_ORIGIN_UM, EXPRESSION_GRID_RESOLUTION_UM

    return float(EXPRESSION_GRID_ORIGIN_UM) if spacing == EXPRESSION_GRID_RESOLUTION_UM else 0.0


def _outline(shape: tuple[int, ...], spacing: tuple[float, ...], axis: int, space100: Any) -> np.ndarray:
    """The brain's silhouette edge seen along ``axis``, on the grid's voxels (bundled 100 um annotation sampled at
    the voxel centres)."""
    index = [np.clip(np.floor(((np.arange(n) + 0.5) * s + grid_corner_um(s)) / 100.0).astype(np.int64), 0, m - 1)
             for n, s, m in zip(shape, spacing, space100.shape)]
    inside = (space100.annotation[np.ix_(*index)] != 0).any(axis=axis)
    edge = np.zeros(inside.shape, dtype=bool)
    edge[1:, :] |= inside[1:, :] != inside[:-1, :]
    edge[:, 1:] |= inside[:, 1:] != inside[:, :-1]
    return edge


def preview_png(state: Any, data_set_id: int, view: str) -> bytes:
    """The preview figure of one data set (see the module docstring)."""
    files = state.run(lambda c: _files_of(c, data_set_id))
    row = _choose(files, data_set_id, None)
    key = (row.sha256, view)
    found = _figures.get(key)
    if found is not None:
        return found
    data, spacing = _volume(state, row)
    values = np.where(np.isfinite(data) & (data > 0), data, 0.0)
    axis = 1 if view == "top" else 2
    mip = values.max(axis=axis)
    if view == "side":
        mip = mip.T  # rows DV, columns AP
    positive = mip[mip > 0]
    scale = float(np.quantile(positive, 0.995)) if positive.size else 1.0
    picture = heat_colormap(np.clip(mip / (scale or 1.0), 0, 1) ** GAMMA)
    edge = _outline(data.shape, spacing, axis, state.reference_space(100))
    picture[edge.T if view == "side" else edge] = 160
    zoom = max(1, int(round(float(spacing[0]) / _ZOOM_TARGET_UM)))
    picture = np.repeat(np.repeat(picture, zoom, axis=0), zoom, axis=1)
    name = row.type_name.rsplit("_", 1)[0] if row.type_name.rsplit("_", 1)[-1].isdigit() else row.type_name
    orientation = ({"top": "anterior", "bottom": "posterior", "left": "L", "right": "R"} if view == "top" else
                   {"top": "dorsal", "bottom": "ventral", "left": "anterior", "right": "posterior"})
    image = figure(picture, title=f"Data set {data_set_id}: {name.replace('_', ' ')}, "
                                  f"{'from above' if view == 'top' else 'from the side'}",
                   subtitle=f"maximum over {'depth' if view == 'top' else 'left-right'}; {spacing[0]:g} um grid",
                   pixel_size_um=float(spacing[0]) / zoom,
                   colorbar=Colorbar(0.0, scale, UNITS.get(name, name.replace("_", " ")), gamma=GAMMA),
                   orientation=orientation)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=3)
    body = buffer.getvalue()
    _figures.put(key, body)
    return body


@router.get("/portal/preview/{section_data_set_id}/{view}.png")
def preview(request: Request, section_data_set_id: int, view: Literal["top", "side"]) -> Response:
    state = state_of(request)
    return Response(preview_png(state, section_data_set_id, view), media_type="image/png",
                    headers={"Cache-Control": "max-age=300"})
