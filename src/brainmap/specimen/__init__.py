"""Section data sets: their images, Alignment2d/Alignment3d transforms, on-disk folders and image sync.

- :mod:`brainmap.specimen.transforms` -- :class:`Affine2d`, :class:`Affine3d`, Allen's :class:`Alignment2d`
  (``tsv``/``tvs``) and :class:`Alignment3d` (``trv``/``tvr``).
- :mod:`brainmap.specimen.model` -- :class:`SectionDataSet`, :class:`SectionImage` and the geometry that maps
  pixels to the reference space and back (the definition of the specimen volume lives there).
- :mod:`brainmap.specimen.folder` -- a data set on disk (``dataset.json`` + 16-bit TIFFs).
- :mod:`brainmap.specimen.sync` -- Allen's image sync services: image <-> reference, image -> image,
  structure -> image.
"""

from brainmap.specimen.folder import (
    MissingFileError,
    read_dataset,
    read_section_image,
    update_alignment,
    write_dataset,
)
from brainmap.specimen.model import (
    InvalidDataSetError,
    NotAlignedError,
    NotInDataSetError,
    PixelLocations,
    SectionDataSet,
    SectionImage,
    image_to_specimen,
    nominal_tvr,
    pixels_to_reference,
    reference_to_pixels,
    reference_to_specimen,
    specimen_to_reference,
)
from brainmap.specimen.sync import (
    EmptyStructureError,
    ImageSyncResult,
    ReferencePoint,
    image_to_image,
    image_to_reference,
    reference_to_image,
    structure_to_image,
)
from brainmap.specimen.transforms import Affine2d, Affine3d, Alignment2d, Alignment3d, TransformError

__all__ = [
    "Affine2d",
    "Affine3d",
    "Alignment2d",
    "Alignment3d",
    "EmptyStructureError",
    "ImageSyncResult",
    "InvalidDataSetError",
    "MissingFileError",
    "NotAlignedError",
    "NotInDataSetError",
    "PixelLocations",
    "ReferencePoint",
    "SectionDataSet",
    "SectionImage",
    "TransformError",
    "image_to_image",
    "image_to_reference",
    "image_to_specimen",
    "nominal_tvr",
    "pixels_to_reference",
    "read_dataset",
    "read_section_image",
    "reference_to_image",
    "reference_to_pixels",
    "reference_to_specimen",
    "specimen_to_reference",
    "structure_to_image",
    "update_alignment",
    "write_dataset",
]
