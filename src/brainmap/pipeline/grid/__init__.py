"""Gridding: detected signal of every section image -> Allen's 3-D grid volumes in the reference space.

- :mod:`~brainmap.pipeline.grid.resample` -- the grid (:class:`GridSpec`), the pixel -> reference affine, block
  sums, slab splatting, partial grids and their accumulation.
- :mod:`~brainmap.pipeline.grid.projection` -- connectivity: ``projection_density``, ``injection_fraction``, ...
  at 10, 25, 50 or 100 um (NRRD, double).
- :mod:`~brainmap.pipeline.grid.expression` -- ISH: Allen's 200 um ``energy`` / ``density`` / ``intensity``
  grids (MetaImage float32, -1 = no data).

A data set is gridded as a map over its usable sections (not failed, with an Alignment2d) and a reduction:
:meth:`Gridder.process` (detection + :func:`grid_section`; a few sections to a Dask task) returns a small partial grid,
:meth:`Gridder.accumulator` sums them (``add`` / ``merge``), :meth:`Gridder.volumes` makes the volumes
and :meth:`Gridder.write` writes them with Allen's names. :func:`grid_dataset` and :func:`grid_folder` do all of
it in one process.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainmap.pipeline.detect.core import DetectionParams, DetectionResult, detect_section
from brainmap.pipeline.grid.expression import (
    ExpressionAccumulator,
    ExpressionLattice,
    SectionGrid,
    expression_lattice,
    expression_volumes,
    grid_expression_section,
    write_expression_grids,
)
from brainmap.pipeline.grid.projection import (
    grid_projection_section,
    projection_volumes,
    write_projection_grids,
    write_projection_grids_streamed,
)
from brainmap.pipeline.grid.resample import GridAccumulator, GridSpec, PartialGrid
from brainmap.pipeline.grid.spill import (
    SPILL_VOXELS,
    SpillAccumulator,
    SpilledSection,
    block_planes_for,
    spill_section,
)
from brainmap.specimen.model import SectionDataSet, SectionImage

__all__ = [
    "GridAccumulator",
    "GridResult",
    "GridSpec",
    "Gridder",
    "PartialGrid",
    "SectionGrid",
    "SpillAccumulator",
    "SpilledSection",
    "grid_dataset",
    "grid_folder",
    "grid_section",
]

#: Default grid resolution (um) per product: Allen's ISH grid, and the coarsest connectivity grid.
DEFAULT_RESOLUTION_UM = {"ish": 200, "connectivity": 100}


def grid_section(dataset: SectionDataSet, image: SectionImage, detection: DetectionResult,
                 grid: GridSpec | ExpressionLattice, **options: Any) -> PartialGrid | SectionGrid:
    """One section's partial grid: connectivity -> :class:`PartialGrid` on a :class:`GridSpec`; ISH ->
    :class:`SectionGrid` on an :class:`ExpressionLattice` (keyword options go to the product's function)."""
    if dataset.product == "connectivity":
        if not isinstance(grid, GridSpec):
            raise TypeError("a connectivity section is gridded on a GridSpec")
        return grid_projection_section(dataset, image, detection, grid, **options)
    if not isinstance(grid, ExpressionLattice):
        raise TypeError("an ISH section is gridded on an ExpressionLattice (expression_lattice(dataset, spec))")
    return grid_expression_section(dataset, image, detection, grid, **options)


@dataclass
class Gridder:
    """Detection and gridding of one data set, one section at a time (picklable: send it to Dask workers).

    Attributes:
        dataset: the data set, with its Alignment3d and its images' Alignment2d.
        spec: the reference grid.
        params: detection parameters (default :meth:`DetectionParams.for_dataset`).
        block_px: gridding block side (pixels; default half a voxel or ISH lattice cell).
        lattice: ISH only: the specimen lattice of the per-image grids.
        extra_specs: connectivity only: further grids the same detections are gridded on (e.g. 25 um beside
            100 um, as Allen serves every experiment at several resolutions); each section is detected once.
        smoothing: ISH only: Allen's smoothing of the expression grids (on by default; ``False`` turns it off,
            ``brainmap run --no-ish-smoothing``); an explicit ``smoothing=`` to :meth:`volumes` wins.
        spill_dir: connectivity grids of more than :data:`~brainmap.pipeline.grid.spill.SPILL_VOXELS` voxels
            (10 um) are summed by a :class:`~brainmap.pipeline.grid.spill.SpillAccumulator` whose files go here
            (default: the system's temporary folder).
        spill_planes: the grids summed so and their blocks (LR planes), decided when the gridder is made (in the
            process that sums the sections): :meth:`process` sends those grids' sections spilled
            (:class:`~brainmap.pipeline.grid.spill.SpilledSection`), summed per voxel and compressed in the worker.
        without_tissue: image ids the aligner found no tissue in (:attr:`.AlignResult.without_tissue`): not
            gridded, as a failed section is not. Detection alone cannot tell an empty slide from a window inside
            the brain (both one class of pixels), and takes the whole of either for tissue.
    """

    dataset: SectionDataSet
    spec: GridSpec
    params: DetectionParams
    block_px: int | None = None
    lattice: ExpressionLattice | None = None
    extra_specs: tuple[GridSpec, ...] = ()
    smoothing: bool = True
    spill_dir: str | None = None
    spill_planes: dict[GridSpec, int] | None = None
    without_tissue: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.spill_planes is None:
            specs = (self.spec, *self.extra_specs) if self.lattice is None else ()
            self.spill_planes = {s: block_planes_for(s) for s in specs if s.n_voxels > SPILL_VOXELS}

    @classmethod
    def for_dataset(cls, dataset: SectionDataSet, resolution_um: float | None = None, *,
                    spec: GridSpec | None = None, params: DetectionParams | None = None,
                    block_px: int | None = None, also_um: tuple[float, ...] = (), smoothing: bool = True,
                    spill_dir: str | os.PathLike[str] | None = None, without_tissue: Iterable[int] = ()
                    ) -> Gridder:
        """A gridder on Allen's grid at ``resolution_um`` (default 200 um ISH, 100 um connectivity) or ``spec``;
        connectivity data sets are gridded at the resolutions ``also_um`` too (from the same detections)."""
        if dataset.alignment3d is None:
            raise ValueError(f"SectionDataSet {dataset.id} has no Alignment3d: align it first")
        if spec is None:
            spec = GridSpec.allen(resolution_um or DEFAULT_RESOLUTION_UM[dataset.product])
        params = params or DetectionParams.for_dataset(dataset)
        lattice = expression_lattice(dataset, spec) if dataset.product == "ish" else None
        extra = tuple(GridSpec.allen(r) for r in dict.fromkeys(also_um) if GridSpec.allen(r) != spec) \
            if dataset.product == "connectivity" else ()
        return cls(dataset, spec, params, block_px, lattice, extra, smoothing,
                   None if spill_dir is None else str(spill_dir), without_tissue=frozenset(map(int, without_tissue)))

    def usable_images(self) -> list[SectionImage]:
        """The sections that are gridded: not failed, with an Alignment2d, not found without tissue."""
        return [i for i in self.dataset.usable_images() if i.id not in self.without_tissue]

    def detect(self, arrays: Mapping[str, np.ndarray]) -> DetectionResult:
        return detect_section(arrays, self.params)

    def grid_section(self, image: SectionImage, detection: DetectionResult) -> PartialGrid | SectionGrid:
        grid = self.lattice if self.lattice is not None else self.spec
        return grid_section(self.dataset, image, detection, grid, block_px=self.block_px)

    def process(self, image: SectionImage, arrays: Mapping[str, np.ndarray]
                ) -> PartialGrid | SpilledSection | SectionGrid | list[PartialGrid | SpilledSection]:
        """Detection then gridding of one section: the map step (one partial per grid with ``extra_specs``; a
        grid in :attr:`spill_planes` gives a :class:`~brainmap.pipeline.grid.spill.SpilledSection`)."""
        detection = self.detect(arrays)
        first = self._spilled(self.grid_section(image, detection))
        if not self.extra_specs:
            return first
        return [first, *(self._spilled(grid_section(self.dataset, image, detection, spec, block_px=self.block_px))
                         for spec in self.extra_specs)]

    def _spilled(self, partial: Any) -> Any:
        planes = (self.spill_planes or {}).get(getattr(partial, "spec", None))
        return partial if planes is None or not isinstance(partial, PartialGrid) else spill_section(partial, planes)

    def write_all(self, folder: str | os.PathLike[str], accumulator: Any) -> list[Path]:
        """The volumes of every grid of the reduced ``accumulator``, written into ``folder``; the paths."""
        if isinstance(accumulator, GridAccumulator | SpillAccumulator | GridAccumulators):  # connectivity: slab by slab
            parts = accumulator.parts if isinstance(accumulator, GridAccumulators) else [accumulator]
            return [path for part in parts
                    for path in write_projection_grids_streamed(folder, part, self.dataset.pixel_size_um)]
        return self.write(folder, self.volumes(accumulator))

    def accumulator(self) -> GridAccumulator | SpillAccumulator | ExpressionAccumulator | GridAccumulators:
        """An empty accumulator for the reduction (``add`` partials in section order; ``merge`` accumulators of
        grids up to 25 um): a :class:`SpillAccumulator` for grids too large to hold (10 um)."""
        if self.lattice is not None:
            return ExpressionAccumulator(self.lattice)
        if self.extra_specs:
            return GridAccumulators([self._grid_accumulator(s) for s in (self.spec, *self.extra_specs)])
        return self._grid_accumulator(self.spec)

    def _grid_accumulator(self, spec: GridSpec) -> GridAccumulator | SpillAccumulator:
        planes = (self.spill_planes or {}).get(spec)
        if planes is None:
            return GridAccumulator(spec)
        return SpillAccumulator(spec, self.spill_dir or tempfile.gettempdir(), block_planes=planes)

    def volumes(self, accumulator: GridAccumulator | ExpressionAccumulator, **options: Any) -> dict[str, np.ndarray]:
        """The product's volumes from the reduced accumulator (options: see ``expression_volumes`` /
        ``projection_volumes``)."""
        if isinstance(accumulator, ExpressionAccumulator):
            return expression_volumes(accumulator, self.dataset, self.spec, **{"smoothing": self.smoothing, **options})
        return projection_volumes(accumulator, self.dataset.pixel_size_um, **options)

    def write(self, folder: str | os.PathLike[str], volumes: dict[str, np.ndarray]) -> list[Path]:
        """Write the volumes with Allen's names into ``folder``."""
        if self.dataset.product == "ish":
            return write_expression_grids(folder, volumes, self.spec)
        return write_projection_grids(folder, volumes, self.spec)


@dataclass
class GridAccumulators:
    """One :class:`GridAccumulator` per grid of a gridder with ``extra_specs``: ``add`` takes the list of a
    section's partials (one per grid, in order)."""

    parts: list[GridAccumulator | SpillAccumulator]

    @property
    def sections(self) -> int:
        return self.parts[0].sections

    def add(self, partials: list[PartialGrid]) -> GridAccumulators:
        for part, partial in zip(self.parts, partials, strict=True):
            part.add(partial)
        return self

    def merge(self, other: GridAccumulators) -> GridAccumulators:
        for part, theirs in zip(self.parts, other.parts, strict=True):
            part.merge(theirs)
        return self


@dataclass
class GridResult:
    """The grids of one data set.

    Attributes:
        spec: the grid.
        volumes: name -> ``(AP, DV, LR)`` volume.
        sections: number of sections gridded.
        megapixels: pixels processed (millions).
        seconds: wall time of detection + gridding (reading images and writing files excluded).
        paths: files written (when ``out`` was given).
    """

    spec: GridSpec
    volumes: dict[str, np.ndarray]
    sections: int
    megapixels: float
    seconds: float
    paths: list[Path] = field(default_factory=list)


def grid_dataset(dataset: SectionDataSet, read_images: Callable[[SectionImage], Mapping[str, np.ndarray]], *,
                 resolution_um: float | None = None, spec: GridSpec | None = None,
                 params: DetectionParams | None = None, out: str | os.PathLike[str] | None = None,
                 block_px: int | None = None, progress: bool = False, **volume_options: Any) -> GridResult:
    """Detect and grid every usable section of ``dataset`` (``read_images(image)`` gives its channels), then
    make the volumes and, with ``out``, write them there."""
    gridder = Gridder.for_dataset(dataset, resolution_um, spec=spec, params=params, block_px=block_px)
    accumulator = gridder.accumulator()
    images = gridder.usable_images()
    if progress:
        from tqdm import tqdm

        images = tqdm(images, unit="section", desc=f"grid {dataset.product} {dataset.id}")
    seconds, pixels = 0.0, 0
    for image in images:
        arrays = read_images(image)
        started = time.perf_counter()
        accumulator.add(gridder.process(image, arrays))
        seconds += time.perf_counter() - started
        pixels += image.width * image.height
    started = time.perf_counter()
    volumes = gridder.volumes(accumulator, **volume_options)
    seconds += time.perf_counter() - started
    paths = gridder.write(out, volumes) if out is not None else []
    return GridResult(gridder.spec, volumes, accumulator.sections, pixels / 1e6, seconds, paths)


def grid_folder(folder: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                dataset: SectionDataSet | None = None, **options: Any) -> GridResult:
    """:func:`grid_dataset` on a data set folder (``dataset.json`` + images). Pass ``dataset`` to use other
    transforms than the folder's (e.g. the true ones of a synthetic specimen)."""
    from brainmap.specimen.folder import read_dataset, read_section_image

    dataset = dataset or read_dataset(folder)

    def read(image: SectionImage) -> dict[str, np.ndarray]:
        return {channel: read_section_image(folder, image, channel) for channel in image.channels}

    return grid_dataset(dataset, read, out=out, **options)
