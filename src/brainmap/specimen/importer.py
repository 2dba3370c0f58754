"""``brainmap specimen import``: a data set folder from a user's own images.

Two kinds of input:

* **2-D section images** (:func:`import_sections`): files, or folders of files, in TIFF (8/16-bit, grey or
  RGB/RGBA), PNG or JPEG. Grey images become the channel ``gray``; colour ones the channels ``red``,
  ``green``, ``blue`` (the aligner uses their sum; pixels an alpha channel marks transparent get the slide's
  background level). Section numbers come from the last number in each file name (``..._s104.png`` -> 104) when
  every name has one and they differ, else from the sorted order (1, 2, ...).
* **a 3-D stack** (:func:`import_stack`): a multi-page TIFF, a folder of plane images, or a NRRD / NIfTI /
  MetaImage volume, with voxel sizes and an orientation in brainglobe's three-letter convention: each letter
  names where that array axis *starts* (``a``/``p`` anterior/posterior, ``s``/``i`` superior/inferior,
  ``l``/``r`` left/right); e.g. ``psl``: the first axis runs from posterior, rows from superior, columns from
  left. The axes are those of the file as stored: (plane, row, column) for TIFF pages and plane folders, and
  the file's index order (i, j, k) for NRRD / NIfTI / MetaImage. The stack is reoriented so that each plane is a
  section of the chosen ``plane`` (coronal: columns left -> right, rows superior -> inferior, sections anterior
  -> posterior; sagittal: columns anterior -> posterior, rows superior -> inferior, sections left -> right) and
  written as one image per plane, section numbers 0, 1, ..., section thickness = the voxel size along the
  cutting axis.

The stain (``brightfield``: dark tissue on a bright slide; ``fluorescence``: bright on dark) is detected from
the border against the centre unless given; it is recorded in the metadata. Pixel values are kept (8-bit values
stay 0..255 in the 16-bit files); floating-point images are scaled to 0..65535.

Errors name the file: an unreadable file, an unsupported pixel type, images of different sizes (unless
``pad``), a missing pixel size. The folder is written as :func:`~brainmap.specimen.folder.write_dataset`
writes: each file atomically, ``dataset.json`` last.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainmap.errors import BrainmapError, FormatError
from brainmap.specimen.folder import write_dataset
from brainmap.specimen.model import PLANES, PRODUCTS, SectionDataSet, SectionImage

__all__ = ["ImportError_", "IMAGE_SUFFIXES", "STACK_SUFFIXES", "detect_stain", "import_sections", "import_stack",
           "read_image_file", "reorient_stack"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
STACK_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
STAINS = ("brightfield", "fluorescence")


class ImportError_(BrainmapError, ValueError):
    """The images cannot be imported as given (the message names the file or the option)."""


@dataclass
class _Image:
    path: Path
    channels: dict[str, np.ndarray]  # name -> uint16 (rows, cols)


# -- reading ------------------------------------------------------------------------------------------------------
def _to_uint16(array: np.ndarray, path: Path) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype == np.bool_:
        return a.astype(np.uint16) * 65535
    if a.dtype.kind in "ui":
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ImportError_(f"{path}: pixel values {a.min()}..{a.max()} do not fit 16 bits")
        return a.astype(np.uint16)
    if a.dtype.kind == "f":
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            raise ImportError_(f"{path}: no finite pixel value")
        lo, hi = float(finite.min()), float(finite.max())
        scaled = (np.nan_to_num(a, nan=lo) - lo) / max(hi - lo, 1e-12) * 65535.0
        return np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)
    raise ImportError_(f"{path}: unsupported pixel type {a.dtype}")


def read_image_file(path: str | os.PathLike[str]) -> np.ndarray:
    """The pixels of one 2-D image file: ``(rows, cols)`` grey or ``(rows, cols, 3|4)`` colour, as stored.

    Raises:
        ImportError_: the file is missing, unreadable, or not a 2-D image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImportError_(f"{path}: no such image file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                array = tif.pages[0].asarray()
        elif suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA", "LA", "1", "CMYK", "YCbCr"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                array = np.asarray(im)
        else:
            raise ImportError_(f"{path}: not an image file brainmap reads ({', '.join(IMAGE_SUFFIXES)})")
    except ImportError_:
        raise
    except Exception as exc:  # PIL and tifffile raise many kinds for a damaged file
        raise ImportError_(f"{path}: not a readable image: {exc}") from exc
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar RGB TIFF
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImportError_(f"{path}: expected a grey or RGB(A) 2-D image, got an array of shape {array.shape}")
    return array


def _border(a: np.ndarray) -> np.ndarray:
    rows, cols = a.shape[:2]
    br, bc = max(1, rows // 16), max(1, cols // 16)
    return np.concatenate([a[:br].reshape(-1), a[-br:].reshape(-1), a[:, :bc].reshape(-1), a[:, -bc:].reshape(-1)])


def detect_stain(grey: np.ndarray) -> str:
    """``"brightfield"`` if the image's border (the slide) is brighter than its centre (the tissue), else
    ``"fluorescence"``."""
    a = np.asarray(grey, dtype=np.float32)
    rows, cols = a.shape
    centre = a[rows // 4: rows - rows // 4 or None, cols // 4: cols - cols // 4 or None]
    return "brightfield" if float(np.median(_border(a))) > float(np.percentile(centre, 50)) else "fluorescence"


def _channels(array: np.ndarray, path: Path) -> dict[str, np.ndarray]:
    if array.ndim == 2:
        return {"gray": _to_uint16(array, path)}
    rgb = array[..., :3]
    if array.shape[2] == 4:  # transparent pixels get the slide's level, from the opaque border
        transparent = array[..., 3] == 0
        if transparent.any():
            if transparent.all():
                raise ImportError_(f"{path}: every pixel is transparent")
            rgb = rgb.copy()
            opaque_border = _border(np.where(transparent[..., None], np.nan, rgb.astype(np.float64)))
            opaque_border = opaque_border.reshape(-1, 3) if opaque_border.ndim == 1 else opaque_border
            level = np.nanmedian(opaque_border.reshape(-1, 3), axis=0)
            level = np.where(np.isfinite(level), level, np.nanmedian(rgb[~transparent].astype(np.float64), axis=0))
            rgb[transparent] = np.rint(level).astype(rgb.dtype)
    return {name: _to_uint16(rgb[..., c], path) for c, name in enumerate(("red", "green", "blue"))}


def _expand(sources: Sequence[str | os.PathLike[str]], suffixes: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(suffixes)
                           and not p.name.startswith("."))
            if not found:
                raise ImportError_(f"{path}: no image files ({', '.join(suffixes)}) in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ImportError_(f"{path}: no such file or folder")
    if not files:
        raise ImportError_("no image files given")
    return files


_NUMBER = re.compile(r"(\d+)")


def section_numbers_from_names(files: Sequence[Path]) -> list[int] | None:
    """The last number in each file name (without suffix), if every name has one and they are all
    different; else None."""
    numbers = []
    for path in files:
        found = _NUMBER.findall(path.name.split(".")[0])
        if not found:
            return None
        numbers.append(int(found[-1]))
    return numbers if len(set(numbers)) == len(numbers) else None


def _pad_to(channels: dict[str, np.ndarray], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    out = {}
    for name, a in channels.items():
        level = np.uint16(np.median(_border(a)))
        padded = np.full(shape, level, dtype=np.uint16)
        r0, c0 = (shape[0] - a.shape[0]) // 2, (shape[1] - a.shape[1]) // 2
        padded[r0:r0 + a.shape[0], c0:c0 + a.shape[1]] = a
        out[name] = padded
    return out


def _check_common(pixel_size_um: float | None, section_thickness_um: float | None, plane: str, product: str,
                  stain: str | None) -> None:
    for name, value in (("--pixel-size", pixel_size_um), ("--section-thickness", section_thickness_um)):
        if value is None:
            raise ImportError_(f"{name} is required (microns) for 2-D section images")
        if not (np.isfinite(value) and value > 0):
            raise ImportError_(f"{name} must be a positive number of microns, got {value!r}")
    if plane not in PLANES:
        raise ImportError_(f"--plane must be one of {PLANES}, got {plane!r}")
    if product not in PRODUCTS:
        raise ImportError_(f"--product must be one of {PRODUCTS}, got {product!r}")
    if stain is not None and stain not in STAINS:
        raise ImportError_(f"--stain must be one of {STAINS}, got {stain!r}")


def _write(out: Path, images: list[_Image], numbers: list[int], *, pixel_size_um: float,
           section_thickness_um: float, sampling_um: float | None, plane: str, product: str, stain: str | None,
           dataset_id: int | None, metadata: dict[str, Any], overwrite: bool) -> SectionDataSet:
    if dataset_id is None:
        dataset_id = zlib.crc32("|".join(str(i.path) for i in images).encode()) % 100_000_000
    order = np.argsort(numbers, kind="stable")
    steps = np.diff(np.sort(numbers))
    if sampling_um is None:
        sampling_um = float(np.median(steps)) * section_thickness_um if steps.size else section_thickness_um
    first = next(iter(images[0].channels.values()))
    grey = sum(c.astype(np.float32) for c in images[len(images) // 2].channels.values())
    detected = detect_stain(grey)
    records = []
    for k in order:
        image = images[k]
        names = list(image.channels)
        records.append(SectionImage(
            id=int(dataset_id) * 1000 + int(numbers[k]) if int(numbers[k]) < 1000 else int(numbers[k]) + 1,
            section_number=int(numbers[k]),
            channels={name: f"{int(numbers[k]):04d}_{name}.tif" for name in names},
            width=first.shape[1], height=first.shape[0]))
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        for k, r in enumerate(records):
            r.id = k + 1
    dataset = SectionDataSet(
        id=int(dataset_id), plane=plane, product=product, section_thickness_um=float(section_thickness_um),
        sampling_um=max(float(sampling_um), float(section_thickness_um)), pixel_size_um=float(pixel_size_um),
        images=records,
        metadata={**metadata, "stain": stain or detected, "stain_source": "given" if stain else "detected",
                  "imported_from": [str(images[k].path) for k in order]})
    arrays = {(r.id, name): images[k].channels[name] for r, k in zip(records, order) for name in r.channels}
    write_dataset(out, dataset, arrays, overwrite=overwrite)
    return dataset


def import_sections(sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                    pixel_size_um: float | None, section_thickness_um: float | None, plane: str = "coronal",
                    product: str = "ish", stain: str | None = None, sampling_um: float | None = None,
                    numbers: str = "auto", dataset_id: int | None = None, pad: bool = False,
                    overwrite: bool = False) -> SectionDataSet:
    """Import 2-D section images (files or folders of them) as a data set folder ``out``.

    Args:
        sources: image files and/or folders of image files (TIFF, PNG, JPEG).
        out: the data set folder to write.
        pixel_size_um: the images' pixel size, microns (required).
        section_thickness_um: the thickness of one physical section, microns (required): section ``n`` lies
            at ``n * section_thickness_um``.
        plane, product: as :class:`~brainmap.specimen.model.SectionDataSet`.
        stain: ``"brightfield"`` or ``"fluorescence"`` (default: detected), recorded in the metadata.
        sampling_um: distance between consecutive imaged sections (default: the median step of the section
            numbers times the thickness).
        numbers: ``"auto"`` (file names if they all carry distinct numbers, else order), ``"name"`` or
            ``"order"``.
        dataset_id: the data set id (default: a hash of the file names).
        pad: put images of different sizes on the largest canvas (centred, the border's level around them)
            instead of refusing them.
        overwrite: replace a data set already in ``out``.

    Raises:
        ImportError_: a file is unreadable or of another size (naming it), an option is missing or invalid.
    """
    _check_common(pixel_size_um, section_thickness_um, plane, product, stain)
    files = _expand(sources, IMAGE_SUFFIXES)
    images = [_Image(path, _channels(read_image_file(path), path)) for path in files]
    kinds = {tuple(i.channels) for i in images}
    if len(kinds) > 1:
        odd = next(i for i in images if tuple(i.channels) != tuple(images[0].channels))
        raise ImportError_(f"{odd.path}: is {'colour' if 'red' in odd.channels else 'grey'}, but {images[0].path} "
                           f"is {'colour' if 'red' in images[0].channels else 'grey'}; import them separately")
    shapes = [next(iter(i.channels.values())).shape for i in images]
    if len(set(shapes)) > 1:
        if not pad:
            odd = next(i for i, s in zip(images, shapes) if s != shapes[0])
            raise ImportError_(f"{odd.path}: is {shapes[images.index(odd)][1]} x {shapes[images.index(odd)][0]} "
                               f"pixels, but {images[0].path} is {shapes[0][1]} x {shapes[0][0]}; all section "
                               "images must have one size (or pass --pad)")
        canvas = (max(s[0] for s in shapes), max(s[1] for s in shapes))
        for image in images:
            image.channels = _pad_to(image.channels, canvas)
    if numbers not in ("auto", "name", "order"):
        raise ImportError_(f"numbers must be 'auto', 'name' or 'order', got {numbers!r}")
    from_names = section_numbers_from_names(files) if numbers != "order" else None
    if numbers == "name" and from_names is None:
        bad = next((p for p in files if not _NUMBER.findall(p.name.split(".")[0])), files[0])
        raise ImportError_(f"{bad}: section numbers from file names need a distinct number in every name")
    section = from_names if from_names is not None else list(range(1, len(files) + 1))
    return _write(Path(out), images, section, pixel_size_um=float(pixel_size_um), section_thickness_um=float(
        section_thickness_um), sampling_um=sampling_um, plane=plane, product=product, stain=stain,
        dataset_id=dataset_id, metadata={"import": "sections", "section_numbers_from":
                                         "names" if from_names is not None else "order"}, overwrite=overwrite)


# -- 3-D stacks -----------------------------------------------------------------------------------------------------
_AXIS_OF = {"a": (0, +1), "p": (0, -1), "s": (1, +1), "i": (1, -1), "l": (2, +1), "r": (2, -1)}


def reorient_stack(stack: np.ndarray, orientation: str, voxel_um: Sequence[float], plane: str
                   ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorder a 3-D stack given in ``orientation`` (brainglobe letters: where each axis starts) into
    ``(section, row, column)`` for ``plane`` (coronal: sections a -> p, rows s -> i, columns l -> r; sagittal:
    sections l -> r, rows s -> i, columns a -> p). Returns the stack and its ``(section, row, column)``
    voxel sizes, microns."""
    letters = orientation.lower()
    if len(letters) != 3 or any(c not in _AXIS_OF for c in letters) or len({_AXIS_OF[c][0] for c in letters}) != 3:
        raise ImportError_(f"orientation must be three letters, one of a/p, s/i, l/r each (e.g. 'psl'), got "
                           f"{orientation!r}")
    # anatomical axis (0 AP, 1 DV, 2 LR) of each array axis, and whether it runs a->p / s->i / l->r
    anatomical = [_AXIS_OF[c] for c in letters]
    wanted = (0, 1, 2) if plane == "coronal" else (2, 1, 0)  # (section, row, column) anatomical axes
    perm = [next(k for k, (axis, _) in enumerate(anatomical) if axis == w) for w in wanted]
    out = np.transpose(stack, perm)
    flips = tuple(k for k, p in enumerate(perm) if anatomical[p][1] < 0)
    if flips:
        out = np.flip(out, axis=flips)
    sizes = tuple(float(voxel_um[p]) for p in perm)
    return np.ascontiguousarray(out), sizes  # type: ignore[return-value]


def _read_stack(source: Path) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """A stack's array in its file's axis order and the voxel sizes its header gives (None if none)."""
    name = source.name.lower()
    if source.is_dir():
        files = _expand([source], IMAGE_SUFFIXES)
        planes = [read_image_file(p) for p in files]
        shapes = {p.shape for p in planes}
        if len(shapes) > 1:
            odd = next(f for f, p in zip(files, planes) if p.shape != planes[0].shape)
            raise ImportError_(f"{odd}: a plane of another size than {files[0]} ({planes[0].shape})")
        if planes[0].ndim != 2:
            raise ImportError_(f"{files[0]}: a stack's planes must be grey images")
        return np.stack(planes), None
    if not source.is_file():
        raise ImportError_(f"{source}: no such file or folder")
    if name.endswith((".tif", ".tiff")):
        import tifffile

        try:
            array = tifffile.imread(source)
        except Exception as exc:
            raise ImportError_(f"{source}: not a readable TIFF: {exc}") from exc
        if array.ndim != 3:
            raise ImportError_(f"{source}: a 3-D stack needs several grey pages; got an array of shape "
                               f"{array.shape}")
        return array, None
    if name.endswith(STACK_SUFFIXES):
        import SimpleITK as sitk

        try:
            image = sitk.ReadImage(str(source))
        except RuntimeError as exc:
            raise ImportError_(f"{source}: not a readable volume: {str(exc).strip().splitlines()[-1]}") from exc
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ImportError_(f"{source}: expected a 3-D scalar volume, got {image.GetDimension()}-D with "
                               f"{image.GetNumberOfComponentsPerPixel()} components")
        array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))  # the file's (i, j, k) order
        spacing = tuple(float(s) for s in image.GetSpacing())
        # NIfTI and most NRRDs give millimetres; a spacing under 1 is taken as millimetres
        spacing = tuple(s * 1000.0 if s < 1.0 else s for s in spacing)
        return array, spacing  # type: ignore[return-value]
    raise ImportError_(f"{source}: not a stack brainmap reads (multi-page TIFF, folder of planes, "
                       f"{', '.join(STACK_SUFFIXES)})")


def import_stack(source: str | os.PathLike[str], out: str | os.PathLike[str], *, orientation: str,
                 voxel_um: Sequence[float] | float | None = None, plane: str = "coronal",
                 product: str = "connectivity", stain: str | None = None, dataset_id: int | None = None,
                 overwrite: bool = False) -> SectionDataSet:
    """Import a 3-D stack as a data set folder: one section image per plane along the cutting axis of
    ``plane`` (see the module docstring for the orientation letters).

    Args:
        source: a multi-page TIFF, a folder of plane images, or a NRRD / NIfTI / MetaImage file.
        out: the data set folder to write.
        orientation: brainglobe's three letters for the stack's axes as stored (e.g. ``"psl"``).
        voxel_um: voxel sizes per stored axis, microns (one number: isotropic); default: the file header's
            (NRRD, NIfTI), required for TIFF and plane folders.
        plane, product, stain, dataset_id, overwrite: as :func:`import_sections`.

    Raises:
        ImportError_: unreadable stack, bad orientation, missing or anisotropic in-plane voxel sizes.
    """
    source = Path(source)
    if plane not in PLANES:
        raise ImportError_(f"--plane must be one of {PLANES}, got {plane!r}")
    array, header_um = _read_stack(source)
    if voxel_um is None:
        if header_um is None:
            raise ImportError_(f"{source}: the voxel size is not in the file; give --voxel-size (microns)")
        voxel = header_um
    else:
        voxel = tuple(np.broadcast_to(np.asarray(voxel_um, dtype=np.float64), (3,)).tolist())
    if not all(np.isfinite(v) and v > 0 for v in voxel):
        raise ImportError_(f"{source}: voxel sizes must be positive microns, got {voxel}")
    stack, (thickness, row_um, col_um) = reorient_stack(array, orientation, voxel, plane)
    if abs(row_um - col_um) > 1e-3 * max(row_um, col_um):
        raise ImportError_(f"{source}: the in-plane voxel sizes differ ({row_um:g} x {col_um:g} um); brainmap's "
                           "section images have square pixels")
    images = [_Image(source, {"gray": _to_uint16(plane_, source)}) for plane_ in stack]
    numbers = list(range(len(images)))
    # a stack's planes all come from one source: name the images by plane, ids by plane index
    dataset = _write(Path(out), images, numbers, pixel_size_um=row_um, section_thickness_um=thickness,
                     sampling_um=thickness, plane=plane, product=product, stain=stain, dataset_id=dataset_id,
                     metadata={"import": "stack", "orientation": orientation, "voxel_um": list(voxel)},
                     overwrite=overwrite)
    return dataset
