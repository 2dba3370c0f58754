"""The SectionDataSet data model and the geometry that ties its images to the reference space.

Geometry (the single definition; ``docs/dataset-format.md`` repeats it with pictures in words)
---------------------------------------------------------------------------------------------
**Image pixels** ``(x, y)``: ``x`` is the column, ``y`` the row, continuous, in pixels. The pixel stored at
array index ``[r, c]`` (images are ``(rows, cols)`` arrays) covers ``x in [c, c+1)`` and ``y in [r, r+1)``;
its centre is ``(c + 0.5, r + 0.5)`` -- the same convention as reference voxels (voxel ``i`` covers
``[i*res, (i+1)*res)``).

**Specimen volume** ``(sx, sy, sz)``, microns: the cut brain, as Allen's "volume" (``v`` in ``tsv``/``tvr``).
``(sx, sy) = alignment2d.tsv(x, y)`` is the in-plane position of a pixel, and
``sz = section_number * section_thickness_um`` the position of its section along the cutting axis (as Allen:
``section_number`` counts physical sections of the specimen, so an ISH data set with 25 um sections and 200 um
sampling has section numbers 8 apart). The axes run nominally along:

============  ===============  ===============  ==================
plane         sx (columns)     sy (rows)        sz (cutting axis)
============  ===============  ===============  ==================
coronal       LR (+ = right)   DV (+ = ventral) AP (+ = posterior)
sagittal      AP (+ = post.)   DV (+ = ventral) LR (+ = right)
============  ===============  ===============  ==================

so a coronal image has its columns along LR (the left of the image is the left hemisphere) and its rows
along DV, a sagittal image its columns along AP and rows along DV. "Nominally": the real orientation of the
cut is whatever :attr:`Alignment3d.tvr` says; :func:`nominal_tvr` is the axis permutation alone.

**Reference space** ``(AP, DV, LR)``, microns (PIR, as the CCF arrays); ``alignment3d.tvr`` maps the specimen
volume into it and ``alignment3d.trv`` back.

Composition: ``reference = tvr(sx, sy, sz)`` with ``(sx, sy) = tsv(x, y)`` and ``sz`` from the section number
(:func:`pixels_to_reference`). Backwards (:func:`reference_to_pixels`): ``(sx, sy, sz) = trv(reference)``;
``sz`` picks the nearest usable section (not failed, with an Alignment2d; a tie goes to the lower section
number), and that section's ``tvs(sx, sy)`` gives the pixel. The off-plane remainder is reported as
``offset_um``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainmap.errors import BrainmapError
from brainmap.specimen.transforms import Affine3d, Alignment2d, Alignment3d

__all__ = [
    "PLANES",
    "PRODUCTS",
    "SPECIMEN_AXES",
    "InvalidDataSetError",
    "NotAlignedError",
    "NotInDataSetError",
    "PixelLocations",
    "SectionDataSet",
    "SectionImage",
    "default_image_file_name",
    "image_to_specimen",
    "iter_image_files",
    "nearest_section_images",
    "nominal_tvr",
    "pixels_to_reference",
    "reference_to_pixels",
    "reference_to_specimen",
    "specimen_to_reference",
]

PLANES = ("coronal", "sagittal")
PRODUCTS = ("ish", "connectivity")

#: For each plane, the reference axis (0 = AP, 1 = DV, 2 = LR) along which the specimen axes ``(sx, sy, sz)``
#: nominally run (see the module docstring).
SPECIMEN_AXES: dict[str, tuple[int, int, int]] = {"coronal": (2, 1, 0), "sagittal": (0, 1, 2)}

_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.tiff?$", re.IGNORECASE)


class InvalidDataSetError(BrainmapError, ValueError):
    """A SectionDataSet or SectionImage was given a value it cannot hold (unknown plane, negative size, ...)."""


class NotAlignedError(BrainmapError, ValueError):
    """A mapping needs an Alignment2d or Alignment3d that the data set does not have (yet)."""


class NotInDataSetError(BrainmapError, LookupError):
    """An image id, section number or channel is not in the data set."""

    def __str__(self) -> str:  # LookupError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else "not in the data set"


def default_image_file_name(section_number: int, image_id: int, channel: str) -> str:
    """The file name brainmap gives an image when none is chosen: ``"{section_number:04d}_{id}_{channel}.tif"``."""
    return f"{section_number:04d}_{image_id}_{channel}.tif"


def nominal_tvr(plane: str) -> Affine3d:
    """The axis permutation from the specimen volume ``(sx, sy, sz)`` to the reference ``(AP, DV, LR)`` for an
    ideal cut of ``plane`` (no rotation, scale or offset): a starting point for the aligner and a ground truth
    for synthetic specimens."""
    _check_choice("plane", plane, PLANES)
    matrix = np.zeros((3, 3))
    for specimen_axis, reference_axis in enumerate(SPECIMEN_AXES[plane]):
        matrix[reference_axis, specimen_axis] = 1.0
    return Affine3d(matrix, np.zeros(3))


# -- validation helpers ---------------------------------------------------------------------------------------
def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InvalidDataSetError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_int(name: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidDataSetError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise InvalidDataSetError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidDataSetError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise InvalidDataSetError(f"{name} must be a positive finite number (microns), got {value!r}")
    return number


@dataclass
class SectionImage:
    """One section of a data set: its images (one per channel), size and Alignment2d.

    Attributes:
        id: the SectionImage id (unique in the data set).
        section_number: the physical section index in the specimen; the section lies at
            ``sz = section_number * section_thickness_um`` on the cutting axis.
        channels: channel name -> file name of its 16-bit TIFF, relative to the data set's ``images/`` folder
            (a plain name such as ``"0012_1001_red.tif"``). A list of channel names is accepted and given
            :func:`default_image_file_name` names.
        width: image width in pixels (columns, the ``x`` extent).
        height: image height in pixels (rows, the ``y`` extent).
        alignment2d: pixel ``(x, y)`` <-> in-plane specimen ``(sx, sy)`` microns; ``None`` before alignment.
        failed: the section is damaged or failed QC; it is never chosen as the nearest section.
    """

    id: int
    section_number: int
    channels: dict[str, str]
    width: int
    height: int
    alignment2d: Alignment2d | None = None
    failed: bool = False

    def __post_init__(self) -> None:
        self.id = _check_int("SectionImage.id", self.id, 0)
        where = f"SectionImage {self.id}"
        self.section_number = _check_int(f"{where}: section_number", self.section_number, 0)
        self.width = _check_int(f"{where}: width", self.width, 1)
        self.height = _check_int(f"{where}: height", self.height, 1)
        if not isinstance(self.failed, (bool, np.bool_)):
            raise InvalidDataSetError(f"{where}: failed must be True or False, got {self.failed!r}")
        self.failed = bool(self.failed)
        if self.alignment2d is not None and not isinstance(self.alignment2d, Alignment2d):
            raise InvalidDataSetError(f"{where}: alignment2d must be an Alignment2d or None, "
                                      f"got {type(self.alignment2d).__name__}")
        self.channels = self._checked_channels(where)

    def _checked_channels(self, where: str) -> dict[str, str]:
        channels = self.channels
        if isinstance(channels, (list, tuple)):
            channels = {name: default_image_file_name(self.section_number, self.id, name) for name in channels}
        if not isinstance(channels, Mapping) or not channels:
            raise InvalidDataSetError(f"{where}: channels must be a non-empty mapping of channel name -> "
                                      f"file name, got {self.channels!r}")
        for name, file_name in channels.items():
            if not isinstance(name, str) or not _CHANNEL_NAME.match(name):
                raise InvalidDataSetError(f"{where}: channel name {name!r} must be letters, digits, '_', '-' "
                                          "or '.', starting with a letter or digit")
            if not isinstance(file_name, str) or not _FILE_NAME.match(file_name):
                raise InvalidDataSetError(
                    f"{where}: channel {name!r}: file name {file_name!r} must be a plain .tif/.tiff name inside "
                    "images/ (letters, digits, '_', '-', '.'; no folders)")
        if len(set(channels.values())) != len(channels):
            raise InvalidDataSetError(f"{where}: two channels share a file name: {dict(channels)!r}")
        return dict(channels)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols) = (height, width)``: the shape of each channel's array."""
        return (self.height, self.width)


@dataclass
class SectionDataSet:
    """A series of section images of one specimen, as Allen's SectionDataSet.

    Attributes:
        id: the SectionDataSet id (Allen's ``section_data_set_id``).
        plane: ``"coronal"`` or ``"sagittal"`` (sets the nominal specimen axes, see the module docstring).
        product: ``"ish"`` or ``"connectivity"``.
        section_thickness_um: thickness of one physical section, microns; ``sz = section_number * this``.
        sampling_um: distance between consecutive sections of this data set, microns (e.g. 100 for
            connectivity, 200 for ISH); at least ``section_thickness_um``.
        pixel_size_um: image pixel size, microns (e.g. 0.35 for connectivity, ~1 for ISH).
        images: the sections, any order; ids and section numbers unique, file names unique.
        alignment3d: specimen volume <-> reference; ``None`` before alignment (the affine part).
        deformation: the non-linear part after ``alignment3d``
            (:class:`~brainmap.specimen.deformation.DeformationField`, stored as ``deformation.nrrd`` beside
            ``dataset.json``), or ``None``: specimen -> reference is ``W o tvr``.
        metadata: free JSON-serializable information: gene, probe, experiment id, injection structures and
            coordinates, ...
    """

    id: int
    plane: str
    product: str
    section_thickness_um: float
    sampling_um: float
    pixel_size_um: float
    images: list[SectionImage] = field(default_factory=list)
    alignment3d: Alignment3d | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    deformation: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.id = _check_int("SectionDataSet.id", self.id, 0)
        where = f"SectionDataSet {self.id}"
        _check_choice(f"{where}: plane", self.plane, PLANES)
        _check_choice(f"{where}: product", self.product, PRODUCTS)
        self.section_thickness_um = _check_positive(f"{where}: section_thickness_um", self.section_thickness_um)
        self.sampling_um = _check_positive(f"{where}: sampling_um", self.sampling_um)
        self.pixel_size_um = _check_positive(f"{where}: pixel_size_um", self.pixel_size_um)
        if self.sampling_um < self.section_thickness_um:
            raise InvalidDataSetError(f"{where}: sampling_um ({self.sampling_um}) is smaller than "
                                      f"section_thickness_um ({self.section_thickness_um})")
        if self.alignment3d is not None and not isinstance(self.alignment3d, Alignment3d):
            raise InvalidDataSetError(f"{where}: alignment3d must be an Alignment3d or None, "
                                      f"got {type(self.alignment3d).__name__}")
        if not isinstance(self.metadata, Mapping) or not all(isinstance(k, str) for k in self.metadata):
            raise InvalidDataSetError(f"{where}: metadata must be a mapping with string keys")
        self.metadata = dict(self.metadata)
        self.images = list(self.images)
        self._check_images(where)

    def _check_images(self, where: str) -> None:
        seen_ids: set[int] = set()
        seen_numbers: set[int] = set()
        seen_files: dict[str, int] = {}
        for image in self.images:
            if not isinstance(image, SectionImage):
                raise InvalidDataSetError(f"{where}: images must be SectionImage objects, got "
                                          f"{type(image).__name__}")
            if image.id in seen_ids:
                raise InvalidDataSetError(f"{where}: two images have id {image.id}")
            if image.section_number in seen_numbers:
                raise InvalidDataSetError(f"{where}: two images have section_number {image.section_number}")
            seen_ids.add(image.id)
            seen_numbers.add(image.section_number)
            for file_name in image.channels.values():
                key = file_name.lower()  # case-insensitive file systems would merge them
                if key in seen_files:
                    raise InvalidDataSetError(f"{where}: images {seen_files[key]} and {image.id} share the file "
                                              f"name {file_name!r}")
                seen_files[key] = image.id

    # -- look-ups ------------------------------------------------------------------------------------------
    def section_position_um(self, section_number: Any) -> Any:
        """``sz``, the cutting-axis position (specimen microns) of a section number: a float for a scalar,
        a float64 array for an array: ``section_number * section_thickness_um``."""
        if np.ndim(section_number) == 0:
            return float(section_number) * self.section_thickness_um
        return np.asarray(section_number, dtype=np.float64) * self.section_thickness_um

    def image(self, image_id: int) -> SectionImage:
        """The image with this id; raises :class:`NotInDataSetError`."""
        for image in self.images:
            if image.id == image_id:
                return image
        raise NotInDataSetError(f"SectionDataSet {self.id} has no SectionImage with id {image_id!r}")

    def image_at_section(self, section_number: int) -> SectionImage:
        """The image with this section number; raises :class:`NotInDataSetError`."""
        for image in self.images:
            if image.section_number == section_number:
                return image
        raise NotInDataSetError(f"SectionDataSet {self.id} has no SectionImage at section_number "
                                f"{section_number!r}")

    def sorted_images(self) -> list[SectionImage]:
        """The images by increasing section number."""
        return sorted(self.images, key=lambda image: image.section_number)

    def usable_images(self) -> list[SectionImage]:
        """The images that :func:`reference_to_pixels` may choose (not failed, with an Alignment2d), by
        increasing section number."""
        return [image for image in self.sorted_images() if not image.failed and image.alignment2d is not None]


# -- geometry -------------------------------------------------------------------------------------------------
def _points(points: Any, ndim: int, name: str) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] != ndim:
        raise ValueError(f"{name} must have shape (..., {ndim}), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} must be finite")
    return p


def _own_image(dataset: SectionDataSet, image: SectionImage | int) -> SectionImage:
    """``image`` itself, or the data set's image with that id. An image is accepted if the data set has an image
    with its id and section number (a copy with another Alignment2d, e.g. the aligner's candidate, is fine)."""
    if not isinstance(image, SectionImage):
        return dataset.image(image)
    own = dataset.image(image.id)
    if own.section_number != image.section_number:
        raise NotInDataSetError(f"SectionImage {image.id} is at section {image.section_number}, but "
                                f"SectionDataSet {dataset.id}'s image {image.id} is at section {own.section_number}")
    return image


def _alignment3d(dataset: SectionDataSet) -> Alignment3d:
    if dataset.alignment3d is None:
        raise NotAlignedError(f"SectionDataSet {dataset.id} has no Alignment3d (it has not been aligned to the "
                              "reference yet)")
    return dataset.alignment3d


def _alignment2d(image: SectionImage) -> Alignment2d:
    if image.alignment2d is None:
        raise NotAlignedError(f"SectionImage {image.id} (section {image.section_number}) has no Alignment2d")
    return image.alignment2d


def image_to_specimen(dataset: SectionDataSet, image: SectionImage | int, xy_pixels: Any) -> np.ndarray:
    """Pixels ``(..., 2)`` as ``(x = column, y = row)`` of one image -> specimen volume ``(..., 3)``
    ``(sx, sy, sz)`` microns: ``(sx, sy) = tsv(x, y)``, ``sz = section_number * section_thickness_um``."""
    image = _own_image(dataset, image)
    xy = _points(xy_pixels, 2, "xy_pixels")
    sxy = _alignment2d(image).tsv.apply(xy)
    sz = np.full(sxy.shape[:-1] + (1,), dataset.section_position_um(image.section_number))
    return np.concatenate([sxy, sz], axis=-1)


def specimen_to_reference(dataset: SectionDataSet, specimen_um: Any) -> np.ndarray:
    """Specimen volume ``(..., 3)`` ``(sx, sy, sz)`` microns -> reference ``(..., 3)`` ``(AP, DV, LR)`` microns
    (``alignment3d.tvr``, then the data set's deformation if it has one)."""
    points = _alignment3d(dataset).tvr.apply(_points(specimen_um, 3, "specimen_um"))
    if dataset.deformation is not None:
        points = dataset.deformation.apply(points.reshape(-1, 3)).reshape(points.shape)
    return points


def reference_to_specimen(dataset: SectionDataSet, reference_um: Any) -> np.ndarray:
    """Reference ``(..., 3)`` ``(AP, DV, LR)`` microns -> specimen volume ``(..., 3)`` ``(sx, sy, sz)`` microns
    (the inverse of the data set's deformation if it has one, then ``alignment3d.trv``)."""
    points = _points(reference_um, 3, "reference_um")
    alignment = _alignment3d(dataset)
    if dataset.deformation is not None:
        points = dataset.deformation.inverse_apply(points.reshape(-1, 3)).reshape(points.shape)
    return alignment.trv.apply(points)


def pixels_to_reference(dataset: SectionDataSet, image: SectionImage | int, xy_pixels: Any) -> np.ndarray:
    """Pixels ``(..., 2)`` ``(x = column, y = row)`` of one image -> reference ``(..., 3)`` ``(AP, DV, LR)``
    microns: ``tvr(tsv(x, y), section_number * section_thickness_um)``. Vectorized."""
    return specimen_to_reference(dataset, image_to_specimen(dataset, image, xy_pixels))


def nearest_section_images(dataset: SectionDataSet, sz_um: Any) -> np.ndarray:
    """For cutting-axis positions ``sz`` (specimen microns, any shape), the index into ``dataset.images`` of
    the nearest usable section (not failed, with an Alignment2d); a tie goes to the lower section number.

    Raises :class:`NotAlignedError` when no section is usable.
    """
    sz = np.asarray(sz_um, dtype=np.float64)
    if not np.isfinite(sz).all():
        raise ValueError("sz_um must be finite")
    index_of = {id(image): k for k, image in enumerate(dataset.images)}
    usable = dataset.usable_images()
    if not usable:
        raise NotAlignedError(f"SectionDataSet {dataset.id} has no usable section (every image is failed or has "
                              "no Alignment2d)")
    positions = np.array([dataset.section_position_um(image.section_number) for image in usable])
    indices = np.array([index_of[id(image)] for image in usable])
    above = np.clip(np.searchsorted(positions, sz, side="left"), 0, len(usable) - 1)
    below = np.clip(above - 1, 0, len(usable) - 1)
    take_above = np.abs(positions[above] - sz) < np.abs(sz - positions[below])
    return indices[np.where(take_above, above, below)]


@dataclass(frozen=True)
class PixelLocations:
    """Where reference points land on a data set's images (arrays, one entry per point).

    Attributes:
        image_index: index into ``dataset.images`` of the nearest usable section, shape ``(...)``.
        section_image_id: that image's id, shape ``(...)``.
        section_number: that image's section number, shape ``(...)``.
        xy: pixel ``(x = column, y = row)`` on that image, shape ``(..., 2)``; may lie outside the image.
        offset_um: signed distance from the section's plane along the cutting axis, specimen microns
            (``sz - section_number * section_thickness_um``), shape ``(...)``.
    """

    image_index: np.ndarray
    section_image_id: np.ndarray
    section_number: np.ndarray
    xy: np.ndarray
    offset_um: np.ndarray


def reference_to_pixels(dataset: SectionDataSet, reference_um: Any) -> PixelLocations:
    """Reference points ``(..., 3)`` ``(AP, DV, LR)`` microns -> the nearest usable section image and the pixel
    on it: ``(sx, sy, sz) = trv(point)``; ``sz`` picks the section (:func:`nearest_section_images`), its
    ``tvs(sx, sy)`` gives ``(x, y)``. Vectorized; the exact inverse of :func:`pixels_to_reference` for points
    that lie on a usable section."""
    specimen = reference_to_specimen(dataset, reference_um)  # through the deformation, if any
    image_index = nearest_section_images(dataset, specimen[..., 2])
    images = dataset.images
    matrices = np.stack([_tvs_matrix(image) for image in images])
    translations = np.stack([_tvs_translation(image) for image in images])
    xy = np.einsum("...ij,...j->...i", matrices[image_index], specimen[..., :2]) + translations[image_index]
    section_number = np.array([image.section_number for image in images])[image_index]
    return PixelLocations(
        image_index=image_index,
        section_image_id=np.array([image.id for image in images])[image_index],
        section_number=section_number,
        xy=xy,
        offset_um=specimen[..., 2] - section_number * dataset.section_thickness_um,
    )


def _tvs_matrix(image: SectionImage) -> np.ndarray:
    return image.alignment2d.tvs.matrix if image.alignment2d is not None else np.full((2, 2), np.nan)


def _tvs_translation(image: SectionImage) -> np.ndarray:
    return image.alignment2d.tvs.translation if image.alignment2d is not None else np.full(2, np.nan)


def iter_image_files(dataset: SectionDataSet) -> Iterable[tuple[SectionImage, str, str]]:
    """``(image, channel, file name)`` for every file of the data set, in ``dataset.images`` order and each
    image's channel order -- the order in which :func:`brainmap.specimen.folder.write_dataset` consumes an
    iterator of arrays."""
    for image in dataset.images:
        for channel, file_name in image.channels.items():
            yield image, channel, file_name
