"""Grid volumes for unionization: in-memory arrays or a folder of files named as Allen names them.

Allen's connectivity grid files are ``{name}_{resolution}.nrrd`` (``projection_density_100.nrrd``,
``injection_fraction_100.nrrd``, ``sum_pixels_100.nrrd``, ``data_mask_100.nrrd``, ...). A :class:`GridFolder`
loads each volume only when asked, so a unionizer that uses one volume at a time never holds them all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from brainmap.errors import FormatError
from brainmap.io.nrrd import read_nrrd

if TYPE_CHECKING:
    from brainmap.atlas import ReferenceSpace
    from brainmap.atlas.annotation_stream import StreamedAnnotation
    from brainmap.io.nrrd_stream import VolumeSlabs

_GRID_FILE = re.compile(r"^(?P<name>[a-z_]+)_(?P<resolution>\d+)\.nrrd$")

#: Grid volumes the projection unionizer reads, in its compiled pass's argument order (``aav_exclusion_fraction``,
#: read too when present, is optional).
PROJECTION_GRID_NAMES = [
    "data_mask", "sum_pixels", "injection_fraction", "injection_density", "injection_energy",
    "injection_sum_pixel_intensities", "projection_density", "projection_energy", "sum_pixel_intensities",
]

#: The key of an annotation file among the volumes a streamed unionize decodes with the grids.
ANNOTATION_KEY = "\0annotation"


class GridFolder(Mapping):
    """Read-only mapping ``name -> volume`` over the ``{name}_{resolution}.nrrd`` files of a folder.

    Parameters
    ----------
    folder : path
        The folder holding the grid files.
    resolution : int, optional
        Which resolution (um) to use when the folder holds several; required then.
    """

    def __init__(self, folder: str | Path, resolution: int | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"grid folder {self.folder} does not exist")
        found: dict[int, dict[str, Path]] = {}
        for path in sorted(self.folder.iterdir()):
            match = _GRID_FILE.match(path.name)
            if match:
                found.setdefault(int(match["resolution"]), {})[match["name"]] = path
        if not found:
            raise FormatError(f"{self.folder}: no grid files named like 'projection_density_100.nrrd'")
        if resolution is None:
            if len(found) > 1:
                raise FormatError(
                    f"{self.folder}: grids at several resolutions ({', '.join(map(str, sorted(found)))} um); "
                    "choose one with resolution="
                )
            resolution = next(iter(found))
        if resolution not in found:
            raise FormatError(f"{self.folder}: no grid files at {resolution} um (found {sorted(found)})")
        self.resolution = int(resolution)
        self.paths = found[self.resolution]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.paths:
            raise KeyError(name)
        volume, _ = read_nrrd(self.paths[name])
        return volume

    def __contains__(self, name: object) -> bool:
        # Mapping's default would read the volume (``__getitem__``) just to answer whether it exists.
        return name in self.paths

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"GridFolder({str(self.folder)!r}, resolution={self.resolution}, volumes={sorted(self.paths)})"


def require(grids: Mapping[str, np.ndarray], names: list[str], where: str) -> None:
    """Raise a clear error naming every missing volume."""
    missing = [n for n in names if n not in grids]
    if missing:
        raise FormatError(f"{where}: missing grid volume(s) {', '.join(missing)} (have {', '.join(sorted(grids))})")


def annotation_file(grids: GridFolder, annotation: str | Path | None = None) -> Path | None:
    """The annotation file :func:`unionize_annotation` reads with ``grids``, or None when its labels do not come
    from a file (the 200 um ISH expression grid's, or at 10 um the bundled 25 um annotation upsampled)."""
    from brainmap.atlas import bundled

    path = annotation if annotation is not None else grids.paths.get("annotation")
    if path is None and grids.resolution in bundled.BUNDLED_RESOLUTIONS:
        path = bundled.annotation_path(grids.resolution)
    return None if path is None else Path(path)


def projection_volume_slabs(grids: GridFolder, annotation: str | Path | None = None) -> VolumeSlabs:
    """Start decoding, now, what :func:`~brainmap.pipeline.unionize.unionize_projection` of ``grids`` reads slab
    by slab: the projection volumes (:data:`PROJECTION_GRID_NAMES`, ``aav_exclusion_fraction`` if present) and
    the annotation file of :func:`annotation_file`; pass the result as its ``slabs``.

    This module imports neither numba nor pandas, so a command can start the decoding before it loads them (they
    take about 1.4 s, the inflate of ten 25 um volumes about 6 s of CPU on two threads).
    """
    from brainmap.io.nrrd_stream import VolumeSlabs

    require(grids, PROJECTION_GRID_NAMES, "projection unionize")
    return VolumeSlabs(projection_files(grids.paths, annotation_file(grids, annotation)))


def projection_files(paths: Mapping[str, str | Path], annotation: str | Path | None) -> dict[str, str | Path]:
    """The files a projection unionize decodes slab by slab, in its pass's order: :data:`PROJECTION_GRID_NAMES`,
    ``aav_exclusion_fraction`` if ``paths`` holds it, then the annotation file (if any) under
    :data:`ANNOTATION_KEY`."""
    names = PROJECTION_GRID_NAMES + (["aav_exclusion_fraction"] if "aav_exclusion_fraction" in paths else [])
    return {**{name: paths[name] for name in names}, **({} if annotation is None else {ANNOTATION_KEY: annotation})}


def unionize_annotation(grids: GridFolder, annotation: str | Path | None = None
                        ) -> ReferenceSpace | StreamedAnnotation:
    """The annotation to unionize ``grids`` with, read slab by slab along with the grid files.

    In order: ``annotation`` (a NRRD on the grid, e.g. Allen's ``annotation_10.nrrd`` from ReferenceSpaceCache);
    an ``annotation_{res}.nrrd`` in the grid folder; the bundled annotation at the grid's resolution (25, 50,
    100 um); at 200 um, Allen's ISH expression grid (a ReferenceSpace: 159,326 voxels, held whole); else (10 um)
    the bundled 25 um annotation upsampled by nearest neighbour, slab by slab.

    An annotation file is decoded in the same threads as the grids and relabelled slab by slab, whatever its
    size: at 25 um that is both faster and smaller than loading it whole first (``brainmap unionize`` on ten
    25 um files, paired: 5.6-6.4 s and 0.50 GB against 7.1-7.3 s and 0.95-1.0 GB, the CSV the same;
    benchmarks/bench_unionize_files.py), since the annotation's inflate and relabelling no longer come before the
    grids' first slab.
    """
    from brainmap.atlas import ReferenceSpace, bundled
    from brainmap.atlas.annotation_stream import StreamedAnnotation
    from brainmap.atlas.expression_grid import EXPRESSION_GRID_RESOLUTION_UM, expression_grid_space
    from brainmap.io.nrrd_stream import NrrdSlabs

    path = annotation_file(grids, annotation)
    if path is not None:
        return StreamedAnnotation.from_file(path)
    if grids.resolution == EXPRESSION_GRID_RESOLUTION_UM:
        return expression_grid_space()
    shape = NrrdSlabs(next(iter(grids.paths.values()))).shape
    finest = ReferenceSpace.bundled(min(bundled.BUNDLED_RESOLUTIONS))
    if len(shape) != 3 or any(round(n * grids.resolution) != round(m * finest.resolution[0])
                              for n, m in zip(shape, finest.shape)):
        raise FormatError(f"{grids.folder}: no annotation at {grids.resolution} um and the grid's "
                          f"{'x'.join(map(str, shape))} voxels do not cover the CCF; pass --annotation FILE")
    return StreamedAnnotation.upsampled(finest, grids.resolution, shape)
