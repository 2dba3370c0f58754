"""Deep Zoom pyramids on disk (brainmap.specimen.pyramid): the tiling against OpenSlide's DeepZoomGenerator (a peer
implementation of the same convention), on a real bright-field section (tests/data/glta, see DATA_NOTICE.md);
remade when an image file changes; written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainmap.specimen import pyramid as pyramid_module
from brainmap.specimen.folder import image_path, write_dataset
from brainmap.specimen.model import SectionDataSet, SectionImage
from brainmap.specimen.pyramid import (ensure_pyramid, make_pyramids, max_level, pyramid_key, tile_path,
                                       write_pyramid)

SECTION = Path(__file__).resolve().parents[1] / "data" / "glta" / "641_2002_2568_NM01_s094.png"
SIZE = (1523, 1180)  # an 8 um ISH image's size (width, height)


def _real_picture(size: tuple[int, int] = SIZE) -> np.ndarray:
    """The real section, resized to ``size`` (RGB uint8)."""
    return np.asarray(Image.open(SECTION).convert("RGB").resize(size, Image.Resampling.BICUBIC))


def _folder(tmp_path: Path, size: tuple[int, int] = (600, 420)) -> tuple[Path, SectionDataSet]:
    """A one-image ISH data set folder whose channels are the real section (tissue: its darkness; signal: its
    blue-over-red excess, where the stain is)."""
    rgb = _real_picture(size).astype(np.float64)
    tissue = (255 - rgb.mean(axis=-1)) * 256
    signal = np.clip(rgb[..., 2] - rgb[..., 0], 0, 255) * 256
    image = SectionImage(id=7001, section_number=3, channels=["tissue", "signal"], width=size[0], height=size[1])
    dataset = SectionDataSet(id=70, plane="sagittal", product="ish", section_thickness_um=25.0, sampling_um=200.0,
                             pixel_size_um=8.0, images=[image])
    folder = tmp_path / "ds"
    write_dataset(folder, dataset, {(image.id, "tissue"): tissue.astype(np.uint16),
                                    (image.id, "signal"): signal.astype(np.uint16)})
    return folder, dataset


def test_tiles_match_openslide_deep_zoom(tmp_path):
    deepzoom = pytest.importorskip("openslide.deepzoom", reason="the peer check needs openslide-python "
                                                                "(test extras)")
    import openslide

    picture = _real_picture()
    made = write_pyramid(picture, tmp_path / "p" / "key")
    peer = deepzoom.DeepZoomGenerator(openslide.ImageSlide(Image.fromarray(picture)), tile_size=254, overlap=1,
                                      limit_bounds=False)
    assert max_level(*SIZE) + 1 == peer.level_count
    for level in range(peer.level_count):
        cols, rows = peer.level_tiles[level]
        files = sorted(p.name for p in (made / str(level)).iterdir())
        assert files == sorted(f"{c}_{r}.jpg" for c in range(cols) for r in range(rows)), level
        for c in range(cols):
            for r in range(rows):
                ours = np.asarray(Image.open(tile_path(made, level, c, r)).convert("RGB"), dtype=np.int16)
                assert (ours.shape[1], ours.shape[0]) == peer.get_tile_dimensions(level, (c, r)), (level, c, r)
                theirs = np.asarray(peer.get_tile(level, (c, r)).convert("RGB"), dtype=np.int16)
                # (OpenSlide's tiles of the few-pixel levels keep the region's aspect ratio: a pixel less.)
                h, w = min(ours.shape[0], theirs.shape[0]), min(ours.shape[1], theirs.shape[1])
                ours, theirs = ours[:h, :w], theirs[:h, :w]
                # Full resolution: the same pixels but for JPEG; lower levels: box against OpenSlide's filter.
                if min(h, w) >= 16:
                    limit = 4.0 if level == peer.level_count - 1 else 12.0
                    assert np.abs(ours - theirs).mean() < limit, (level, c, r)
    assert not [p for p in made.parent.iterdir() if p.name.startswith(".")], "a staging folder was left"


def test_pyramid_is_made_once_and_remade_when_an_image_file_changes(tmp_path):
    folder, dataset = _folder(tmp_path)
    image = dataset.images[0]
    root = tmp_path / "tiles"
    first = ensure_pyramid(root, folder, image, connectivity=False)
    tile = tile_path(first, max_level(image.width, image.height), 0, 0)
    before = tile.stat().st_mtime_ns, tile.read_bytes()
    assert ensure_pyramid(root, folder, image, connectivity=False) == first
    assert tile.stat().st_mtime_ns == before[0], "a current pyramid was written again"
    # The product's colours are part of the key.
    assert pyramid_key(folder, image, True) != pyramid_key(folder, image, False)

    # A changed signal file (no stain in the left half): a new pyramid, the old one gone.
    path = image_path(folder, image, "signal")
    import tifffile

    changed = tifffile.imread(path)
    changed[:, : image.width // 2] = 0
    tifffile.imwrite(path, changed)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = ensure_pyramid(root, folder, image, connectivity=False)
    assert second != first and not first.exists()
    assert tile_path(second, max_level(image.width, image.height), 0, 0).read_bytes() != before[1]
    assert [p.name for p in (root / str(image.id)).iterdir()] == [second.name]


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    folder, dataset = _folder(tmp_path)
    image = dataset.images[0]
    root = tmp_path / "tiles"
    saved = []
    real_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        if len(saved) == 5:
            raise OSError(28, "No space left on device")
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        ensure_pyramid(root, folder, image, connectivity=False)
    assert list((root / str(image.id)).iterdir()) == []  # neither the pyramid nor its staging folder
    monkeypatch.setattr(Image.Image, "save", real_save)
    made = ensure_pyramid(root, folder, image, connectivity=False)
    assert tile_path(made, 0, 0, 0).is_file()


def test_a_pyramid_made_meanwhile_by_another_process_is_kept(tmp_path):
    picture = _real_picture((300, 200))
    target = tmp_path / "p" / "key"
    write_pyramid(picture, target)
    marker = target / "made-first"
    marker.touch()
    assert write_pyramid(picture, target) == target
    assert marker.exists(), "the first pyramid was replaced"
    assert [p.name for p in target.parent.iterdir()] == ["key"]


def test_make_pyramids_counts_every_image(tmp_path):
    folder, dataset = _folder(tmp_path, (200, 150))
    seen = []
    assert make_pyramids(tmp_path / "tiles", [(folder, dataset)], progress=lambda d, n: seen.append((d, n))) == 1
    assert seen == [(1, 1)]
    assert pyramid_module.TILES_DIR == "tiles"
