"""File formats: NRRD (CCF volumes, projection grids), MetaImage (gridded data) and Allen grid-data zip bundles.

Every reader returns arrays indexed in file axis order, first axis fastest -- for Allen volumes
``array[ap, dv, lr]`` -- and raises :class:`brainmap.errors.FormatError` naming the file for malformed input.
Every writer replaces its target atomically (:func:`atomic_write`).
"""

from brainmap.io.atomic import atomic_write, write_atomically
from brainmap.io.grid_bundle import grid_bundle_bytes, read_grid_bundle, write_grid_bundle
from brainmap.io.metaimage import (
    ELEMENT_TYPES,
    MetaImageHeader,
    decode_metaimage_data,
    encode_metaimage,
    format_metaimage_header,
    parse_metaimage_header,
    read_metaimage,
    write_metaimage,
)
from brainmap.io.nrrd import NRRD_TYPES, read_nrrd, read_nrrd_header, write_nrrd

__all__ = [
    "ELEMENT_TYPES",
    "NRRD_TYPES",
    "MetaImageHeader",
    "atomic_write",
    "decode_metaimage_data",
    "encode_metaimage",
    "format_metaimage_header",
    "grid_bundle_bytes",
    "parse_metaimage_header",
    "read_grid_bundle",
    "read_metaimage",
    "read_nrrd",
    "read_nrrd_header",
    "write_atomically",
    "write_grid_bundle",
    "write_metaimage",
    "write_nrrd",
]
