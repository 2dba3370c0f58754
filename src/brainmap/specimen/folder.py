"""A SectionDataSet on disk: a folder with ``dataset.json`` and ``images/`` (one 16-bit TIFF per section and
channel). The format is documented in ``docs/dataset-format.md``.

Every file is written atomically (temporary file + rename), the images first (made durable together) and
``dataset.json`` last, so a folder holding a ``dataset.json`` is always complete; a folder without one is an
unfinished write.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from brainmap.errors import FormatError
from brainmap.io.atomic import atomic_write, fsync_paths
from brainmap.io.deflate import fast_zlib as _deflate, isal_zlib
from brainmap.specimen.model import (
    InvalidDataSetError,
    NotInDataSetError,
    SectionDataSet,
    SectionImage,
    iter_image_files,
)
from brainmap.specimen.transforms import Alignment2d, Alignment3d, TransformError

__all__ = [
    "DATASET_FILE",
    "IMAGES_DIR",
    "SCHEMA_VERSION",
    "MissingFileError",
    "dataset_from_dict",
    "dataset_to_dict",
    "image_path",
    "read_dataset",
    "read_section_image",
    "update_alignment",
    "write_dataset",
]

SCHEMA_VERSION = 1
DATASET_FILE = "dataset.json"
IMAGES_DIR = "images"

ImageArrays = Mapping[tuple[int, str], Any] | Iterable[Any]


class MissingFileError(FormatError, FileNotFoundError):
    """A file the data set folder must hold (``dataset.json`` or an image) is not there."""

    def __str__(self) -> str:  # OSError would format (errno, strerror); keep the message as given.
        return str(self.args[0]) if self.args else "missing file"


# -- dataset.json <-> SectionDataSet --------------------------------------------------------------------------
def dataset_to_dict(dataset: SectionDataSet) -> dict[str, Any]:
    """The ``dataset.json`` document of a data set (plain JSON types; transforms as Allen's parameter dicts)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "id": dataset.id,
        "plane": dataset.plane,
        "product": dataset.product,
        "section_thickness_um": dataset.section_thickness_um,
        "sampling_um": dataset.sampling_um,
        "pixel_size_um": dataset.pixel_size_um,
        "metadata": dataset.metadata,
        "alignment3d": dataset.alignment3d.to_allen() if dataset.alignment3d is not None else None,
        "images": [
            {
                "id": image.id,
                "section_number": image.section_number,
                "width": image.width,
                "height": image.height,
                "failed": image.failed,
                "channels": dict(image.channels),
                "alignment2d": image.alignment2d.to_allen() if image.alignment2d is not None else None,
            }
            for image in dataset.images
        ],
    }


def _json_default(value: Any) -> Any:
    """Let numpy scalars and arrays in ``metadata`` through as the plain JSON values they stand for."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"a {type(value).__name__} is not JSON-serializable")


def _dataset_json_text(dataset: SectionDataSet) -> str:
    try:
        return json.dumps(dataset_to_dict(dataset), indent=2, allow_nan=False, default=_json_default) + "\n"
    except (TypeError, ValueError) as exc:
        raise InvalidDataSetError(f"SectionDataSet {dataset.id}: metadata cannot be stored as JSON: {exc}") from exc


class _Fields:
    """Reads typed fields out of a JSON object, naming the file and the field path in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, problem: str) -> FormatError:
        return FormatError(f"{self.source}: {where}: {problem}")

    def get(self, obj: Mapping[str, Any], key: str, where: str, kind: str, optional: bool = False) -> Any:
        path = f"{where}.{key}" if where else key
        if key not in obj or (optional and obj[key] is None):
            if optional:
                return None
            raise self.error(path, "missing")
        value = obj[key]
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < (1 << 63),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value),
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "object": isinstance(value, dict),
            "array": isinstance(value, list),
        }[kind]
        if not ok:
            expected = {"int": "an integer (64-bit)", "number": "a finite number", "str": "a string", "bool": "true or false",
                        "object": "a JSON object", "array": "a JSON array"}[kind]
            raise self.error(path, f"expected {expected}, got {json.dumps(value)[:80]}")
        return value


def dataset_from_dict(doc: Any, source: str = DATASET_FILE) -> SectionDataSet:
    """A data set from a ``dataset.json`` document; errors are :class:`FormatError` naming ``source`` and the
    field (``images[3].alignment2d``), and what is wrong with it."""
    fields = _Fields(source)
    if not isinstance(doc, dict):
        raise FormatError(f"{source}: expected a JSON object at the top level, got {type(doc).__name__}")
    if "schema_version" not in doc:
        raise fields.error("schema_version", f"missing (this brainmap reads schema_version {SCHEMA_VERSION})")
    version = doc["schema_version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise fields.error("schema_version", f"unknown schema_version {version!r} (this brainmap reads "
                                             f"{SCHEMA_VERSION})")
    images = [_image_from_dict(fields, item, k) for k, item in enumerate(fields.get(doc, "images", "", "array"))]
    alignment3d = fields.get(doc, "alignment3d", "", "object", optional=True)
    try:
        return SectionDataSet(
            id=fields.get(doc, "id", "", "int"),
            plane=fields.get(doc, "plane", "", "str"),
            product=fields.get(doc, "product", "", "str"),
            section_thickness_um=fields.get(doc, "section_thickness_um", "", "number"),
            sampling_um=fields.get(doc, "sampling_um", "", "number"),
            pixel_size_um=fields.get(doc, "pixel_size_um", "", "number"),
            metadata=fields.get(doc, "metadata", "", "object", optional=True) or {},
            images=images,
            alignment3d=_transform(fields, "alignment3d", Alignment3d, alignment3d),
        )
    except InvalidDataSetError as exc:
        raise FormatError(f"{source}: {exc}") from exc


def _image_from_dict(fields: _Fields, item: Any, k: int) -> SectionImage:
    where = f"images[{k}]"
    if not isinstance(item, dict):
        raise fields.error(where, f"expected a JSON object, got {json.dumps(item)[:80]}")
    image_id = fields.get(item, "id", where, "int")
    where = f"images[{k}] (id {image_id})"
    channels = fields.get(item, "channels", where, "object")
    alignment2d = fields.get(item, "alignment2d", where, "object", optional=True)
    try:
        return SectionImage(
            id=image_id,
            section_number=fields.get(item, "section_number", where, "int"),
            channels=channels,
            width=fields.get(item, "width", where, "int"),
            height=fields.get(item, "height", where, "int"),
            failed=fields.get(item, "failed", where, "bool", optional=True) or False,
            alignment2d=_transform(fields, f"{where}.alignment2d", Alignment2d, alignment2d),
        )
    except InvalidDataSetError as exc:
        raise FormatError(f"{fields.source}: {where}: {exc}") from exc


def _transform(fields: _Fields, where: str, kind: type[Alignment2d] | type[Alignment3d],
               params: Mapping[str, Any] | None) -> Any:
    if params is None:
        return None
    try:
        return kind.from_allen(params)
    except TransformError as exc:
        raise fields.error(where, str(exc)) from exc


# -- files ----------------------------------------------------------------------------------------------------
#: The non-linear part of a data set's alignment, beside ``dataset.json``.
DEFORMATION_FILE = "deformation.nrrd"


def _tifffile() -> Any:
    """tifffile, imported when first needed (so that the data model imports without it)."""
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("reading and writing data set images needs the 'tifffile' package: "
                          "pip install tifffile") from exc
    return tifffile


def image_path(folder: str | os.PathLike[str], image: SectionImage, channel: str) -> Path:
    """The path of one channel's TIFF: ``folder/images/<file name>``."""
    try:
        file_name = image.channels[channel]
    except KeyError:
        raise NotInDataSetError(f"SectionImage {image.id} has no channel {channel!r}; it has "
                                f"{', '.join(map(repr, image.channels))}") from None
    return Path(folder) / IMAGES_DIR / file_name


def _checked_array(array: Any, image: SectionImage, channel: str) -> np.ndarray:
    """The array as ``uint16 (height, width)``; integer arrays within 0..65535 are converted, others refused."""
    a = np.asarray(array)
    where = f"SectionImage {image.id} (section {image.section_number}), channel {channel!r}"
    if a.shape != image.shape:
        raise InvalidDataSetError(f"{where}: the array has shape {a.shape}, expected (height, width) = "
                                  f"{image.shape}")
    if a.dtype == np.uint16:
        return a
    if a.dtype.kind not in "biu":
        raise InvalidDataSetError(f"{where}: expected an integer array with values in 0..65535 (uint16), got "
                                  f"{a.dtype}; round and cast it first")
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise InvalidDataSetError(f"{where}: values {a.min()}..{a.max()} do not fit in uint16 (0..65535)")
    return a.astype(np.uint16)


#: Measured on the demo's 374 images of two specimens (41 MB of pixels, 2026-12-06): zlib level 1 0.59-0.68 s
#: CPU and 24.9 MB; ISA-L level 2 0.14 s and 25.0 MB (level 1: 0.13 s, 25.4 MB). Without ISA-L, zlib's level 1
#: (~5x faster than its default level, ~1 % larger).
_DEFLATE_LEVEL = 2 if isal_zlib is not None else 1

#: Bytes of pixels per compressed strip: tifffile's own choice for a compressed image (~256 KB).
_STRIP_BYTES = 262144


def _write_tiff(path: Path, array: np.ndarray, durable: bool = True) -> None:
    """A one-page, deflate-compressed (lossless) little-endian uint16 grayscale TIFF, written atomically (fsync'ed
    unless ``durable=False``: see :func:`~brainmap.io.atomic.fsync_paths`).

    The strips (tifffile's layout: ~256 KB of pixels each) are deflated here with ISA-L and handed to tifffile
    already encoded; TIFF compression 8 (Adobe deflate: a zlib stream per strip), which every TIFF reader inflates.
    """
    pixels = np.ascontiguousarray(array, dtype="<u2")
    rows = min(max(1, _STRIP_BYTES // max(pixels.shape[1] * 2, 1)), max(pixels.shape[0], 1))
    strips = (_deflate.compress(pixels[k: k + rows], _DEFLATE_LEVEL) for k in range(0, pixels.shape[0], rows))
    encoded = io.BytesIO()  # tifffile wants a named file or a memory buffer; the temporary file has no name
    _tifffile().imwrite(encoded, strips, shape=pixels.shape, dtype=pixels.dtype, byteorder="<",
                        photometric="minisblack", compression="zlib", rowsperstrip=rows, metadata=None)
    with atomic_write(path, durable=durable) as fh:
        fh.write(encoded.getbuffer())


def _arrays_in_order(dataset: SectionDataSet, images: ImageArrays) -> Iterator[Any]:
    """The arrays in :func:`iter_image_files` order, from a ``{(image_id, channel): array}`` mapping (its keys
    are checked now, before anything is written) or an iterable in that order (its length is checked as it is
    consumed, by the returned iterator)."""
    wanted = [(image.id, channel) for image, channel, _ in iter_image_files(dataset)]
    if isinstance(images, Mapping):
        wanted_set = set(wanted)
        missing = [key for key in wanted if key not in images]
        extra = [key for key in images if key not in wanted_set]
        if missing or extra:
            raise InvalidDataSetError(
                f"SectionDataSet {dataset.id}: the image arrays do not match the data set's (image id, channel) "
                f"pairs: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                f"unknown {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        return (images[key] for key in wanted)
    if isinstance(images, (str, bytes, np.ndarray)):
        raise InvalidDataSetError(f"SectionDataSet {dataset.id}: images must be a mapping "
                                  "{(image_id, channel): array} or an iterable of arrays, "
                                  f"got {type(images).__name__}")
    return _counted(dataset, iter(images), len(wanted))


def _counted(dataset: SectionDataSet, iterator: Iterator[Any], expected: int) -> Iterator[Any]:
    """Yield exactly ``expected`` items of ``iterator``, then check that it is exhausted."""
    for count in range(expected):
        try:
            yield next(iterator)
        except StopIteration:
            raise InvalidDataSetError(f"SectionDataSet {dataset.id}: {count} image arrays were given, "
                                      f"{expected} expected (one per image and channel)") from None
    for _ in iterator:
        raise InvalidDataSetError(f"SectionDataSet {dataset.id}: more image arrays were given than the "
                                  f"{expected} expected (one per image and channel)")


def write_dataset(folder: str | os.PathLike[str], dataset: SectionDataSet, images: ImageArrays, *,
                  overwrite: bool = False, progress: bool = False) -> Path:
    """Write a data set folder: one 16-bit TIFF per image and channel under ``images/``, then ``dataset.json``.

    Args:
        folder: the data set folder (created if needed).
        dataset: the data set; its images' ``channels`` name the files.
        images: the pixel arrays, ``(rows, cols) = (height, width)``, uint16 or an integer type within
            0..65535: either a mapping ``{(image_id, channel): array}`` or an iterable yielding them in
            ``iter_image_files(dataset)`` order (images in ``dataset.images`` order, each image's channels in
            order), which lets a generator stream a large data set one image at a time.
        overwrite: replace a data set already in ``folder``. Its ``dataset.json`` is removed first, so an
            interrupted rewrite leaves an (evidently) unfinished folder, never a mix described as complete.
            Files of the old data set that the new one does not name are left in ``images/``.
        progress: show a progress bar.

    Returns:
        The path of ``dataset.json``.

    Each file is written atomically; ``dataset.json`` comes last, so its presence means the folder is complete.
    """
    folder = Path(folder)
    text = _dataset_json_text(dataset)  # refuse unstorable metadata before touching the disk
    arrays = _arrays_in_order(dataset, images)  # and a mapping that does not fit the data set
    json_path = folder / DATASET_FILE
    if json_path.exists():
        if not overwrite:
            raise FileExistsError(f"{folder}: already holds a data set ({DATASET_FILE}); pass overwrite=True to "
                                  "replace it")
        json_path.unlink()
    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    files = list(iter_image_files(dataset))
    written = []
    for (image, channel, _), array in tqdm(zip(files, arrays), total=len(files), disable=not progress,
                                           desc=f"writing data set {dataset.id}", unit="image"):
        written.append(image_path(folder, image, channel))
        _write_tiff(written[-1], _checked_array(array, image, channel), durable=False)
    for _ in arrays:  # the iterable must be exhausted too: too many arrays is an error
        pass
    # The images are made durable together, before dataset.json says the folder is complete (one fsync per file
    # as it was written cost ~1.7 s per 370 images; a few at a time at the end ~0.3 s: io/atomic.py).
    fsync_paths(written, [folder / IMAGES_DIR])
    with atomic_write(json_path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return json_path


#: The largest dataset.json read (bytes): thousands of sections take a few MB.
MAX_DATASET_JSON_BYTES = 64 << 20


def _read_json(folder: Path) -> Any:
    from brainmap.io.limits import open_regular, read_capped

    path = folder / DATASET_FILE
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: no such data set folder")
    try:
        with open_regular(path, str(path), DATASET_FILE) as fh:
            raw = read_capped(fh.read, MAX_DATASET_JSON_BYTES, str(path), DATASET_FILE)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: missing; {folder} is not a brainmap data set folder, or writing it did "
                               "not finish") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise FormatError(f"{path}: not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise FormatError(f"{path}: not valid JSON: {exc}") from None


#: Headers already found good in this process: ``path -> (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` of
#: the file as checked. ``read_dataset`` is called several times per data set by the pipeline's stages; each call
#: re-parsing every TIFF header cost ~0.5 ms per file (~3 % of the demo's alignment).
_GOOD_HEADERS: dict[str, tuple[int, int, int, int, int]] = {}
_GOOD_HEADERS_MAX = 1 << 16
#: A file changed less than this long ago (s) is checked again every time (its timestamps may not yet tell a
#: rewrite within the file system's timestamp granularity apart: git's "racily clean" rule).
_SETTLED_S = 2.0


def _file_identity(path: Path, what: str) -> tuple[int, int, int, int, int]:
    """The stat of a regular file at ``path`` as a key that changes when the file is replaced or rewritten."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise MissingFileError(f"{what}: the image file is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise MissingFileError(f"{what}: the image file is missing")
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _check_tiff(path: Path, image: SectionImage, channel: str, read_pixels: bool) -> np.ndarray | None:
    """Check that the first page of the TIFF at ``path`` is uint16 of the image's size; return its pixels if
    asked.

    A header check alone (``read_pixels=False``) of a file already found good in this process, and unchanged
    since (the same device, inode, size, modification and change times, last changed over ``_SETTLED_S`` ago),
    is not repeated.
    """
    what = f"{path} (SectionImage {image.id}, channel {channel!r})"
    identity = _file_identity(path, what)
    key = f"{os.fspath(path)}\0{image.height}\0{image.width}"
    if not read_pixels and _GOOD_HEADERS.get(key) == identity:
        return None
    tifffile = _tifffile()
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape, dtype = tuple(page.shape), page.dtype
            pixels = page.asarray() if read_pixels and shape == image.shape and dtype == np.uint16 else None
    except Exception as exc:  # tifffile raises many kinds for a damaged file
        raise FormatError(f"{what}: not a readable TIFF: {exc}") from exc
    if shape != image.shape:
        raise FormatError(f"{what}: the image is {shape} pixels (rows, cols), but {DATASET_FILE} says "
                          f"height {image.height}, width {image.width}")
    if dtype != np.uint16:
        raise FormatError(f"{what}: expected 16-bit unsigned pixels (uint16), got {dtype}")
    changed_ns = max(identity[3], identity[4])
    if time.time_ns() - changed_ns > _SETTLED_S * 1e9:
        if len(_GOOD_HEADERS) >= _GOOD_HEADERS_MAX:
            _GOOD_HEADERS.clear()
        _GOOD_HEADERS[key] = identity
    return pixels


def read_dataset(folder: str | os.PathLike[str], *, check_files: bool = True) -> SectionDataSet:
    """Read a data set folder's ``dataset.json``.

    A ``deformation.nrrd`` beside ``dataset.json`` (the non-linear part of the alignment) is read into
    ``dataset.deformation``. With ``check_files`` (the default) every image file must exist and its TIFF header
    must say uint16 and the
    size ``dataset.json`` gives (headers only, no pixels are read; a header found good earlier in this process is
    not parsed again while its file is unchanged: :func:`_check_tiff`). Errors name the folder or file and the
    problem: :class:`MissingFileError` (also a ``FileNotFoundError``) or :class:`FormatError`.
    """
    folder = Path(folder)
    dataset = dataset_from_dict(_read_json(folder), str(folder / DATASET_FILE))
    if (folder / DEFORMATION_FILE).exists():
        from brainmap.specimen.deformation import DeformationField

        dataset.deformation = DeformationField.read(folder / DEFORMATION_FILE)
    if check_files:
        for image, channel, _ in iter_image_files(dataset):
            _check_tiff(image_path(folder, image, channel), image, channel, read_pixels=False)
    return dataset


def read_section_image(folder: str | os.PathLike[str], image: SectionImage, channel: str) -> np.ndarray:
    """The pixels of one image's channel: ``uint16`` array of shape ``(rows, cols) = (height, width)``."""
    pixels = _check_tiff(image_path(folder, image, channel), image, channel, read_pixels=True)
    assert pixels is not None
    return pixels


def update_alignment(folder: str | os.PathLike[str],
                     alignment2d: Mapping[int, Alignment2d | None] | None = None,
                     alignment3d: Alignment3d | None = None, deformation: Any = None) -> SectionDataSet:
    """Store new alignments in a data set folder, rewriting ``dataset.json`` atomically (images untouched).

    Args:
        alignment2d: ``{image id: Alignment2d}`` for the images to change (``None`` as a value clears that
            image's alignment); images not named keep theirs.
        alignment3d: the data set's new Alignment3d; ``None`` keeps the current one.
        deformation: with a new ``alignment3d``, its non-linear part (a DeformationField written to
            ``deformation.nrrd``, and in Allen's download form to ``dfmfld.mhd/.raw``), or ``None``: stale
            deformation files are then removed.

    Returns:
        The updated data set, as now stored.
    """
    folder = Path(folder)
    dataset = read_dataset(folder, check_files=False)
    for image_id, alignment in (alignment2d or {}).items():
        image = dataset.image(image_id)  # NotInDataSetError for an unknown id, before anything is written
        if alignment is not None and not isinstance(alignment, Alignment2d):
            raise InvalidDataSetError(f"SectionImage {image_id}: alignment2d must be an Alignment2d or None, "
                                      f"got {type(alignment).__name__}")
        image.alignment2d = alignment
    if alignment3d is not None:
        if not isinstance(alignment3d, Alignment3d):
            raise InvalidDataSetError(f"alignment3d must be an Alignment3d, got {type(alignment3d).__name__}")
        dataset.alignment3d = alignment3d
    text = _dataset_json_text(dataset)
    if alignment3d is not None:
        # the deformation first (each file is written atomically): never a new affine beside a stale field
        from brainmap.specimen.deformation import ALLEN_HEADER_FILE, ALLEN_VOXEL_FILE

        if deformation is not None:
            deformation.write(folder / DEFORMATION_FILE)
            deformation.write_allen(folder)  # Allen's download form, dfmfld.mhd/.raw
        else:
            for name in (DEFORMATION_FILE, ALLEN_HEADER_FILE, ALLEN_VOXEL_FILE):
                (folder / name).unlink(missing_ok=True)
        dataset.deformation = deformation
    with atomic_write(folder / DATASET_FILE, "w", encoding="utf-8") as fh:
        fh.write(text)
    return dataset
