"""``brainmap specimen import`` then ``brainmap align`` on real sections: ten DeepSlice example sections (GLTa,
brightfield DAB, downsampled to 50 um pixels; see DATA_NOTICE.md), as 2-D PNGs and as a 3-D TIFF stack.

No truth exists for them; the checks are the outline Dice of the tissue with the CCF brain at the places the
alignment puts the pixels (the same measure for DeepSlice's own registration of these sections, a peer) and,
for the stack, that the import reorients the planes exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from brainmap.atlas import ReferenceSpace
from brainmap.cli import main
from brainmap.pipeline.align.reconstruct import normalize_section, read_alignment_image
from brainmap.specimen import read_dataset
from brainmap.specimen.importer import ImportError_, import_sections
from brainmap.specimen.model import pixels_to_reference

DATA = Path(__file__).resolve().parents[1] / "data" / "glta"
PIXEL_UM = 50.0  # 1024 px at ~12.5 um, downsampled 4x
RESOLUTION = 50


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _brain(space: ReferenceSpace, points: np.ndarray) -> np.ndarray:
    idx = np.floor(points / float(space.resolution[0])).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(space.shape)), axis=1)
    out = np.zeros(points.shape[0], dtype=bool)
    out[inside] = space.annotation[tuple(idx[inside].T)] > 0
    return out


def _outline_dice(folder: Path, channel: str, mapper) -> list[float]:
    space = ReferenceSpace.bundled(RESOLUTION)
    dataset = read_dataset(folder)
    out = []
    for image in dataset.sorted_images():
        _, mask = normalize_section(read_alignment_image(folder, image, channel).astype(np.float32))
        r, c = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
        xy = np.stack([c.ravel() + 0.5, r.ravel() + 0.5], axis=1).astype(float)
        out.append(_dice(mask.ravel(), _brain(space, mapper(dataset, image, xy))))
    return out


def _deepslice(dataset, image, xy):
    anchors = {s["nr"]: s for s in json.loads((DATA / "MyResults.json").read_text())["slices"]}
    s = anchors[image.section_number]
    a = np.asarray(s["anchoring"])
    q = a[:3] + np.outer(xy[:, 0] / image.width, a[3:6]) + np.outer(xy[:, 1] / image.height, a[6:9])
    return np.stack([(528 - q[:, 1]) * 25.0, (320 - q[:, 2]) * 25.0, q[:, 0] * 25.0], axis=1)


def _ours(dataset, image, xy):
    return pixels_to_reference(dataset, image, xy)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("import") / "glta"
    assert main(["specimen", "import", str(DATA), "--out", str(out), "--pixel-size", str(PIXEL_UM),
                 "--section-thickness", "50", "--plane", "coronal"]) == 0
    assert main(["align", str(out), "--reference-resolution", str(RESOLUTION)]) == 0
    return out


def test_imported_png_sections_are_read_as_brightfield_rgb(imported):
    dataset = read_dataset(imported)
    assert [i.section_number for i in dataset.sorted_images()] == [14, 34, 54, 74, 94, 114, 134, 154, 174, 189]
    assert dataset.metadata["stain"] == "brightfield" and dataset.metadata["stain_source"] == "detected"
    assert list(dataset.images[0].channels) == ["red", "green", "blue"]
    assert dataset.sampling_um == 1000.0  # steps of 20 (two of 15 and 20) x 50 um: the median
    image = dataset.sorted_images()[3]
    original = np.asarray(Image.open(DATA / "641_2002_2568_NM01_s074.png"))
    assert np.array_equal(read_alignment_image(imported, image, "red"), original[..., 0].astype(np.uint16))


def test_aligned_real_sections_overlap_the_brain_as_well_as_deepslice(imported):
    dataset = read_dataset(imported)
    assert dataset.alignment3d is not None and all(i.alignment2d is not None for i in dataset.images)
    ours = _outline_dice(imported, "rgb", _ours)
    peer = _outline_dice(imported, "rgb", _deepslice)
    assert np.median(ours) >= 0.9, np.round(ours, 3)
    assert np.median(ours) >= np.median(peer) - 0.02, (np.round(ours, 3), np.round(peer, 3))
    # anterior sections land anterior: the cutting order was found, not reversed
    first, last = dataset.sorted_images()[0], dataset.sorted_images()[-1]
    centre = np.array([[128.0, 84.0]])
    assert pixels_to_reference(dataset, first, centre)[0, 0] < pixels_to_reference(dataset, last, centre)[0, 0]


def test_3d_tiff_stack_is_reoriented_and_aligned(tmp_path):
    files = sorted(DATA.glob("*.png"))
    grey = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])  # (a->p, s->i, l->r): "asl"
    stored = np.transpose(grey[::-1], (1, 2, 0))  # (s->i, l->r, p->a): "slp"
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stored)  # three axes: one page per row of planes; read back as a 3-D array
    out = tmp_path / "stack"
    assert main(["specimen", "import", str(path), "--stack", "--orientation", "slp", "--voxel-size", "50", "50",
                 "1000", "--out", str(out), "--product", "ish"]) == 0
    dataset = read_dataset(out)
    assert dataset.section_thickness_um == 1000.0 and dataset.pixel_size_um == 50.0  # the sections ~1 mm apart
    planes = [read_alignment_image(out, image, "gray") for image in dataset.sorted_images()]
    assert np.array_equal(np.stack(planes), grey.astype(np.uint16))
    assert main(["align", str(out), "--reference-resolution", str(RESOLUTION)]) == 0
    dice = _outline_dice(out, "gray", _ours)
    assert np.median(dice) >= 0.9, np.round(dice, 3)


def test_import_errors_name_the_file(tmp_path):
    bad = tmp_path / "s001.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImportError_, match="s001.png"):
        import_sections([bad], tmp_path / "out", pixel_size_um=10, section_thickness_um=50)
    small = tmp_path / "sizes"
    small.mkdir()
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(small / "a_s001.png")
    Image.fromarray(np.zeros((11, 12), np.uint8)).save(small / "a_s002.png")
    with pytest.raises(ImportError_, match="a_s002.png"):
        import_sections([small], tmp_path / "out", pixel_size_um=10, section_thickness_um=50)
    with pytest.raises(ImportError_, match="--pixel-size"):
        import_sections([small], tmp_path / "out", pixel_size_um=None, section_thickness_um=50)
    assert not (tmp_path / "out" / "dataset.json").exists()
    # 16-bit TIFFs keep their values
    tif = tmp_path / "t16"
    tif.mkdir()
    for k in (3, 5):
        tifffile.imwrite(tif / f"x_{k}.tif", (np.arange(120, dtype=np.uint16).reshape(10, 12) * 500))
    dataset = import_sections([tif], tmp_path / "t16out", pixel_size_um=10, section_thickness_um=25)
    assert [i.section_number for i in dataset.sorted_images()] == [3, 5]
    assert read_alignment_image(tmp_path / "t16out", dataset.sorted_images()[1], "gray").max() == 119 * 500
