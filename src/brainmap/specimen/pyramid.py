"""Deep Zoom tile pyramids of a data set folder's section images, made once and kept on disk.

A pyramid is a folder ``ROOT/{image id}/{key}/`` holding ``{level}/{col}_{row}.jpg`` for every level of the Deep
Zoom convention (level ``max_level`` is full resolution, each lower level half the size, rounded up, down to 1 x 1
px), tiles of ``TILE`` px with ``OVERLAP`` px of overlap, JPEG. ``ROOT`` is ``tiles/`` in the data directory. The
``key`` names what the tiles were made from: the channels' file names, sizes, modification times and inodes, the
product (the false colour) and ``RENDERING`` (bumped when the drawing changes); a changed image file gets a new key,
so a stale pyramid is never served. A pyramid is written into a hidden folder beside its place and renamed into it
when complete (atomic on one file system): a reader sees a whole pyramid or none, and of two processes making the
same pyramid at once, one rename wins and the other's copy is removed. Pyramids of an image under other keys are
removed after a new one is in place.

Colours: connectivity's two-photon channels as red (tissue) and green (signal), ISH's as a bright-field stain
(dark purple signal on a light tissue background), each channel over its 99.5th percentile.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from brainmap.specimen.folder import image_path, read_section_image
from brainmap.specimen.model import SectionDataSet, SectionImage

__all__ = ["OVERLAP", "RENDERING", "TILE", "TILES_DIR", "false_colour", "max_level", "pyramid_key",
           "ensure_pyramid", "make_folder_pyramids", "make_pyramids", "read_composite", "tile_path", "write_pyramid"]

TILE = 254
OVERLAP = 1
JPEG_QUALITY = 88
RENDERING = "1"  # bump when false_colour or the tiling changes: every pyramid is then made again
TILES_DIR = "tiles"


def max_level(width: int, height: int) -> int:
    """The Deep Zoom level of full resolution: ceil(log2(the long side in px))."""
    return int(math.ceil(math.log2(max(width, height, 1))))


def _stretch(channel: np.ndarray) -> np.ndarray:
    """The channel over its 99.5th percentile (of every 4th pixel of every 4th row: the same to a few grey
    levels, 16 times cheaper), clipped to [0, 1]."""
    values = channel.astype(np.float32)
    sample = values[::4, ::4]
    top = float(np.percentile(sample, 99.5)) if sample.size else 1.0
    return np.clip(values / (top or 1.0), 0, 1)


def false_colour(channels: dict[str, np.ndarray], connectivity: bool) -> np.ndarray:
    """(rows, cols, 3) uint8 picture of one section image's channels (``tissue``, ``signal``; see the module
    docstring)."""
    stretched = {name: _stretch(pixels) for name, pixels in channels.items()}
    tissue = stretched.get("tissue", next(iter(stretched.values())))
    signal = stretched.get("signal", np.zeros_like(tissue))
    if connectivity:
        rgb = np.stack([0.75 * tissue, signal, 0.25 * tissue], axis=-1)
    else:  # bright field: light tissue, dark purple-brown stain
        rgb = 1 - np.stack([0.25 * tissue + 0.55 * signal, 0.3 * tissue + 0.8 * signal,
                            0.2 * tissue + 0.45 * signal], axis=-1)
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def read_composite(folder: str | os.PathLike[str], image: SectionImage, connectivity: bool) -> np.ndarray:
    """The false-colour picture of one image of a data set folder, read from its TIFF files."""
    return false_colour({name: read_section_image(folder, image, name) for name in image.channels}, connectivity)


def pyramid_key(folder: str | os.PathLike[str], image: SectionImage, connectivity: bool) -> str:
    """What a pyramid is made from, hashed (16 hex digits): each channel's name, file name, size, modification
    time (ns) and inode, the product's colours and ``RENDERING``. Raises ``FileNotFoundError`` for a missing
    channel file."""
    parts = [RENDERING, "connectivity" if connectivity else "ish", f"{image.width}x{image.height}"]
    for name in sorted(image.channels):
        stat = image_path(folder, image, name).stat()
        parts.append(f"{name}={image.channels[name]}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def tile_path(pyramid: Path, level: int, col: int, row: int) -> Path:
    """One tile's file in a pyramid folder."""
    return pyramid / str(level) / f"{col}_{row}.jpg"


def write_pyramid(picture: np.ndarray, target: Path) -> Path:
    """Write the Deep Zoom tiles of a (rows, cols, 3) uint8 picture as the folder ``target`` (atomically: see
    the module docstring); returns ``target``. An existing ``target`` (made meanwhile by another process) is
    kept."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        height, width = picture.shape[:2]
        level_picture = Image.fromarray(picture)
        for level in range(max_level(width, height), -1, -1):
            if (level_picture.width, level_picture.height) != _level_size(width, height, level):
                level_picture = level_picture.resize(_level_size(width, height, level), Image.Resampling.BOX)
            folder = staging / str(level)
            folder.mkdir()
            for row in range(math.ceil(level_picture.height / TILE)):
                for col in range(math.ceil(level_picture.width / TILE)):
                    box = (col * TILE - (OVERLAP if col else 0), row * TILE - (OVERLAP if row else 0),
                           min(level_picture.width, (col + 1) * TILE + OVERLAP),
                           min(level_picture.height, (row + 1) * TILE + OVERLAP))
                    level_picture.crop(box).save(folder / f"{col}_{row}.jpg", format="JPEG", quality=JPEG_QUALITY)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for other in target.parent.iterdir():
        if other != target and not other.name.startswith("."):
            shutil.rmtree(other, ignore_errors=True)
    return target


def _level_size(width: int, height: int, level: int) -> tuple[int, int]:
    scale = 2 ** (max_level(width, height) - level)
    return max(1, math.ceil(width / scale)), max(1, math.ceil(height / scale))


def ensure_pyramid(root: Path, folder: str | os.PathLike[str], image: SectionImage, connectivity: bool) -> Path:
    """The pyramid folder of one image under ``root``, made now if it is absent or its image files changed."""
    target = root / str(image.id) / pyramid_key(folder, image, connectivity)
    if target.is_dir():
        return target
    return write_pyramid(read_composite(folder, image, connectivity), target)


def make_pyramids(root: Path, datasets: Iterable[tuple[str | os.PathLike[str], SectionDataSet]], *,
                  threads: int | None = None, progress: Callable[[int, int], None] | None = None) -> int:
    """Make (or keep, where current) the pyramid of every image of the given ``(folder, data set)`` pairs, on a
    few threads (reading TIFF, Pillow's resizing and JPEG encoding release the GIL); the number of images."""
    work = [(folder, dataset.product == "connectivity", image) for folder, dataset in datasets
            for image in dataset.images]
    done = 0

    def one(item: tuple[Any, bool, SectionImage]) -> None:
        ensure_pyramid(root, item[0], item[2], item[1])

    with ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 1)) as pool:
        for _ in pool.map(one, work):
            done += 1
            if progress is not None:
                progress(done, len(work))
    return done


def make_folder_pyramids(data_dir: str | os.PathLike[str], folders: Iterable[str | os.PathLike[str]], *,
                         progress: Callable[[int, int], None] | None = None) -> int:
    """Make the pyramids of every image of the given data set folders under ``data_dir``'s ``tiles/`` (what
    ``brainmap load`` does after loading); the number of images."""
    from brainmap.specimen.folder import read_dataset

    pairs = [(Path(folder), read_dataset(folder, check_files=False)) for folder in folders]
    return make_pyramids(Path(data_dir) / TILES_DIR, pairs, progress=progress)
