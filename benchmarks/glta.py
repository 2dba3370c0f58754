"""Measures of an alignment of the real GLTa sections (DeepSlice's example brain) that need no truth.

* **Outline Dice**, per section: the tissue (the aligner's own mask of the image) against the CCF brain
  (annotation > 0, 25 um) at the places a registration puts the section's pixels.
* **Distance to DeepSlice's placement**, per section: the median over tissue pixels of the distance between
  where our alignment and where DeepSlice's anchoring put the pixel (up to a left-right mirror: a symmetric
  section cannot tell), beside the same distance between DeepSlice's two versions (``GLTa.json`` and
  ``MyResults.json``). A peer's answer, not truth.

DeepSlice's anchoring (QuickNII JSON): pixel ``(x, y)`` of a ``w x h`` image maps to ``o + (x/w) u + (y/h) v``
in voxels of the 25 um CCF with axes x left -> right, y posterior -> anterior, z inferior -> superior; in
brainmap's (AP, DV, LR) um: ``AP = (528 - y) 25``, ``DV = (320 - z) 25``, ``LR = x 25``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from brainmap.atlas import ReferenceSpace
from brainmap.pipeline.align.reconstruct import normalize_section, read_alignment_image
from brainmap.pipeline.align.register import block_mean
from brainmap.specimen import read_dataset

GLTA = Path(os.environ.get("BRAINMAP_GLTA", "/work/shared/data/real_sections/GLTa"))
LR_EXTENT_UM = 456 * 25.0


def deepslice_anchorings(path: Path) -> dict[int, tuple[np.ndarray, int, int]]:
    """Section number -> (anchoring (9,), width, height) of a QuickNII/DeepSlice JSON."""
    doc = json.loads(Path(path).read_text())
    out = {}
    for s in doc["slices"]:
        out[int(s["nr"])] = (np.asarray(s["anchoring"], dtype=np.float64), int(s["width"]), int(s["height"]))
    return out


def deepslice_points(anchoring: np.ndarray, width: int, height: int, xy: np.ndarray) -> np.ndarray:
    """Pixels ``(n, 2)`` -> reference ``(n, 3)`` (AP, DV, LR) um through a DeepSlice anchoring."""
    o, u, v = anchoring[:3], anchoring[3:6], anchoring[6:9]
    q = o + np.outer(xy[:, 0] / width, u) + np.outer(xy[:, 1] / height, v)
    return np.stack([(528.0 - q[:, 1]) * 25.0, (320.0 - q[:, 2]) * 25.0, q[:, 0] * 25.0], axis=1)


def _brain(space: ReferenceSpace, points: np.ndarray) -> np.ndarray:
    res = float(space.resolution[0])
    idx = np.floor(points / res).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.array(space.shape)), axis=1)
    out = np.zeros(points.shape[0], dtype=bool)
    i = idx[inside]
    out[inside] = space.annotation[i[:, 0], i[:, 1], i[:, 2]] > 0
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float("nan")


def evaluate(folder: str | os.PathLike[str], mapper, *, block_um: float = 25.0,
             space: ReferenceSpace | None = None) -> dict[str, object]:
    """Per-section outline Dice and distances to DeepSlice of an aligned GLTa data set folder.

    Args:
        folder: the imported GLTa data set (its ``dataset.json`` names the images).
        mapper: ``(image, xy pixels (n, 2)) -> reference (n, 3) um``: the alignment under test.
    """
    space = space or ReferenceSpace.bundled(25)
    dataset = read_dataset(folder)
    versions = {name: deepslice_anchorings(GLTA / name) for name in ("MyResults.json", "GLTa.json")}
    rows = []
    for image in dataset.sorted_images():
        pixels = read_alignment_image(folder, image, "rgb")
        factor = max(1, int(round(block_um / dataset.pixel_size_um)))
        _, mask = normalize_section(block_mean(pixels, factor))
        r, c = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
        xy = np.stack([(c.ravel() + 0.5) * factor, (r.ravel() + 0.5) * factor], axis=1).astype(np.float64)
        tissue = mask.ravel()
        ours = mapper(image, xy)
        row = {"section": image.section_number, "dice": _dice(tissue, _brain(space, ours))}
        for name, anchors in versions.items():
            if image.section_number not in anchors:
                continue
            anchoring, w, h = anchors[image.section_number]
            theirs = deepslice_points(anchoring, w, h, xy * np.array([w / image.width, h / image.height]))
            row[f"dice {name}"] = _dice(tissue, _brain(space, theirs))
            t = tissue
            mirrored = ours[t].copy()
            mirrored[:, 2] = LR_EXTENT_UM - mirrored[:, 2]
            row[f"distance {name}"] = float(min(np.median(np.linalg.norm(ours[t] - theirs[t], axis=1)),
                                                np.median(np.linalg.norm(mirrored - theirs[t], axis=1))))
            row[f"_points {name}"] = theirs[t]
        if "_points MyResults.json" in row and "_points GLTa.json" in row:
            row["deepslice spread"] = float(np.median(np.linalg.norm(row["_points MyResults.json"]
                                                                     - row["_points GLTa.json"], axis=1)))
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return {"rows": rows, **{f"median {key}": float(np.nanmedian([r[key] for r in rows if key in r]))
                             for key in ("dice", "dice MyResults.json", "dice GLTa.json", "distance MyResults.json",
                                         "distance GLTa.json", "deepslice spread")}}


def brainmap_mapper(folder: str | os.PathLike[str]):
    """The mapper of the alignment stored in a data set folder (affine, and its deformation if any)."""
    from brainmap.specimen.model import pixels_to_reference

    dataset = read_dataset(folder)

    def mapper(image, xy):
        return pixels_to_reference(dataset, image.id, xy)

    return mapper
