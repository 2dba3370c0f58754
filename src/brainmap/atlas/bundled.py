"""The CCF v3 (2017) files that ship inside the package, and where to find them.

Bundled (see DATA_NOTICE.md): the structure ontology (``structures.json``, ``structure_sets.csv``) and the
2017 annotation at 25, 50 and 100 um. The 10 um annotation (1320 x 800 x 1140, about 1.2 G voxels) is not
bundled: pass its path to :meth:`brainmap.atlas.ReferenceSpace.from_files` (4.8 GB in memory, its label index
2.4 GB more) or, to read it slab by slab, to :meth:`brainmap.atlas.annotation_stream.StreamedAnnotation.from_file`
(what ``brainmap unionize --annotation`` does).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: Resolutions (um) whose annotation volumes ship with the package.
BUNDLED_RESOLUTIONS: tuple[int, ...] = (25, 50, 100)

#: The annotation's shape at each resolution, (AP, DV, LR) voxels.
ANNOTATION_SHAPES: dict[int, tuple[int, int, int]] = {
    10: (1320, 800, 1140),
    25: (528, 320, 456),
    50: (264, 160, 228),
    100: (132, 80, 114),
}

#: Left-right midline of the CCF in microns: left hemisphere LR < 5700, right LR >= 5700.
MIDLINE_LR_UM = 5700.0


def data_dir() -> Path:
    """Folder holding the bundled CCF 2017 files."""
    return Path(str(resources.files("brainmap") / "data" / "ccf2017"))


def annotation_path(resolution: int) -> Path:
    """Path of the bundled annotation at ``resolution`` um (25, 50 or 100)."""
    if int(resolution) not in BUNDLED_RESOLUTIONS:
        raise ValueError(
            f"no bundled annotation at {resolution} um; bundled resolutions are "
            f"{', '.join(map(str, BUNDLED_RESOLUTIONS))} um (load others with ReferenceSpace.from_files)"
        )
    return data_dir() / f"annotation_{int(resolution)}.nrrd"


def structures_path() -> Path:
    """Path of the bundled flat ontology (structure graph 1, 1327 structures)."""
    return data_dir() / "structures.json"


def structure_sets_path() -> Path:
    """Path of the bundled table of the 33 structure sets."""
    return data_dir() / "structure_sets.csv"


def structure_levels_path() -> Path:
    """Path of the bundled ``atlas_id`` and ``st_level`` of every structure (Allen's structure graph 1)."""
    return data_dir() / "structure_levels.csv"
