"""ISH expression gridding: Allen's 200 um expression grids (energy, density, intensity; -1 = no data).

Allen's method ("Expression Gridding"), step by step:

1. **Per image** (:func:`grid_expression_section`, a Dask task can call it): the image is divided into square
   cells of the specimen's in-plane coordinates ``(sx, sy)`` -- one lattice shared by all sections, so the
   per-image grids stack; cells are half a grid voxel (100 um for Allen's 200 um grid), so resampling (step 4)
   can average every cell under a voxel. Per cell: the tissue pixels, the expressing pixels and their intensity
   (the mask's values, background-subtracted counts), all imaged pixels (coverage) and the raw intensity of
   the tissue pixels (Allen's ``sum_pixel_intensity``). Pixels are summed over
   blocks first (half a cell), and each block goes to the cell of its centroid, shared by area with
   the neighbouring cell when it straddles their boundary.
2. **Stack** (:class:`ExpressionAccumulator`): each image's grid is the plane of its section in a 3-D specimen
   lattice ``(sz, sy, sx)`` with planes every ``dataset.sampling_um`` (missing or failed sections leave empty
   planes).
3. **Smoothing** (Allen's, on by default; ``smoothing=False`` turns it off): each per-image grid in-plane
   (Gaussian, ``smooth_xy_um``) and then between sections (``smooth_z_sections``), applied to the sums, so
   ratios become pixel-weighted local averages.
4. **Into the reference**: points spread regularly over every voxel (``supersample`` per axis) go through
   ``trv`` to the specimen, where the sums are interpolated (trilinear: linear between sections) and averaged
   over the voxel. A voxel has data where the coverage found is at least ``min_coverage`` of a fully imaged
   voxel's pixels: outside the sectioned range (e.g. the right hemisphere of a sagittal series), beyond the
   first and last sections by more than half a spacing, or in a gap of missing or failed sections, it has none.
5. **Volumes**: ``density = expressing / pixels``, ``intensity = expressing intensity / expressing pixels``
   (0 without expressing pixels), ``energy = density x intensity = expressing intensity / pixels``, and the four
   sums ``sum_pixels``, ``sum_expressing_pixels``, ``sum_expressing_pixel_intensity``, ``sum_pixel_intensity``; -1 in the three ratios
   where there is no data (sums 0), 0 where there is data but no tissue (glass, ventricles).

The grid is Allen's 67 x 41 x 58 at 200 um (:meth:`GridSpec.allen(200) <GridSpec.allen>`). Its voxels are
**centred** on multiples of 200 um: voxel ``(i, j, k)`` is centred at ``(200 i, 200 j, 200 k)`` um (AP, DV, LR)
and covers ``[200 i - 100, 200 i + 100)`` along each axis (``GridSpec.origin_um = -100``). This is the sampling of
the grid annotation (``annotation_25[::8, ::8, ::8]``: voxel ``i`` takes the label at ``200 i`` um) that the ISH
unionizer and the searches use, and the one Allen's real coverage masks (``../shared/data/ish``) match: against
the brain outline they fit best with every axis's voxels shifted by -100 um from ``[200 i, 200 (i + 1))`` (Dice
0.965 vs 0.942 coronal, 0.892 vs 0.866 sagittal; ``tests/pipeline/test_grid.py``). Any other :class:`GridSpec`
works too (e.g. 100 um for tests).

Files (:func:`write_expression_grids`): ``energy.mhd``, ``density.mhd``, ``intensity.mhd`` (MetaImage float32, as
Allen's grid service) and the sums likewise, a grid-data zip of them, and every volume as ``{name}_{res}.nrrd``
(``energy_200.nrrd``, ``sum_pixels_200.nrrd``, ...) for :class:`brainmap.pipeline.unionize.GridFolder`. Their
``Offset`` / ``space origin`` is the centre of voxel 0 (:attr:`GridSpec.first_centre_um`: 0 for Allen's grid, as
in Allen's files).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainmap.io.grid_bundle import write_grid_bundle
from brainmap.io.metaimage import write_metaimage
from brainmap.io.nrrd import write_nrrd
from brainmap.pipeline.detect.core import DetectionResult
from brainmap.pipeline.grid._trilinear import add_trilinear
from brainmap.pipeline.grid.resample import GridSpec, _footprint_pairs, block_centres, block_sums
from brainmap.specimen.model import SectionDataSet, SectionImage, reference_to_specimen

__all__ = [
    "EXPRESSION_QUANTITIES",
    "EXPRESSION_VOLUMES",
    "ExpressionAccumulator",
    "ExpressionLattice",
    "SectionGrid",
    "expression_lattice",
    "expression_volumes",
    "grid_expression_section",
    "write_expression_grids",
]

#: Per-cell sums of one image, in this order along the first axis of :attr:`SectionGrid.sums`.
EXPRESSION_QUANTITIES = ("sum_pixels", "sum_expressing_pixels", "sum_expressing_pixel_intensity", "covered",
                         "sum_pixel_intensity")
#: Allen's smoothing (step 3), on by default. The ISH pipeline document says the per-image grids are smoothed
#: in-plane and across sections but gives no kernel; these are a Gaussian of a quarter of the 200 um grid voxel
#: in-plane and of half a section spacing between sections (their effect is in ``benchmarks detect_grid``).
SMOOTH_XY_UM = 50.0
SMOOTH_Z_SECTIONS = 0.5
#: The volumes made, in Allen's names.
EXPRESSION_VOLUMES = ("energy", "density", "intensity", "sum_pixels", "sum_expressing_pixels",
                      "sum_expressing_pixel_intensity", "sum_pixel_intensity")


@dataclass(frozen=True)
class ExpressionLattice:
    """The specimen-space lattice the per-image grids live on.

    Attributes:
        origin_um: ``(sx0, sy0)``, the corner of cell ``(0, 0)`` (specimen um).
        cell_um: the cell side (um).
        shape: ``(ny, nx)`` cells in a plane.
        z0_um: ``sz`` of plane 0 (specimen um).
        dz_um: distance between planes (the sampling interval).
        nz: number of planes.
    """

    origin_um: tuple[float, float]
    cell_um: float
    shape: tuple[int, int]
    z0_um: float
    dz_um: float
    nz: int

    def plane(self, sz_um: float) -> int:
        """The plane of a section at ``sz`` (nearest)."""
        return int(round((sz_um - self.z0_um) / self.dz_um))


def expression_lattice(dataset: SectionDataSet, spec: GridSpec, cell_um: float | None = None) -> ExpressionLattice:
    """The lattice of a data set: cells of ``cell_um`` (default half the grid's resolution) covering the grid's
    box mapped into the specimen by ``trv``; planes every ``sampling_um`` from the first usable section."""
    if dataset.alignment3d is None:
        raise ValueError(f"SectionDataSet {dataset.id} has no Alignment3d")
    cell = float(cell_um or spec.resolution_um / 2.0)
    lo = np.asarray(spec.origin_um)
    hi = lo + np.asarray(spec.shape) * spec.resolution_um
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    specimen = reference_to_specimen(dataset, corners)  # through the deformation, if any
    sx0 = math.floor(specimen[:, 0].min() / cell) * cell - cell
    sy0 = math.floor(specimen[:, 1].min() / cell) * cell - cell
    nx = int(math.ceil((specimen[:, 0].max() - sx0) / cell)) + 1
    ny = int(math.ceil((specimen[:, 1].max() - sy0) / cell)) + 1
    usable = [im for im in dataset.sorted_images() if not im.failed] or dataset.sorted_images()
    positions = [dataset.section_position_um(im.section_number) for im in usable]
    dz = float(dataset.sampling_um)
    z0 = float(min(positions)) if positions else 0.0
    nz = int(round((max(positions) - z0) / dz)) + 1 if positions else 1
    return ExpressionLattice((float(sx0), float(sy0)), cell, (ny, nx), z0, dz, nz)


@dataclass
class SectionGrid:
    """One image's per-cell sums: ``sums`` float64 ``(4, ny, nx)`` in :data:`EXPRESSION_QUANTITIES` order, for
    lattice plane ``plane``."""

    plane: int
    sums: np.ndarray


def grid_expression_section(dataset: SectionDataSet, image: SectionImage, detection: DetectionResult,
                            lattice: ExpressionLattice, *, block_px: int | None = None) -> SectionGrid:
    """One ISH image divided into the lattice's cells (module docstring, step 1)."""
    if image.alignment2d is None:
        raise ValueError(f"SectionImage {image.id} (section {image.section_number}) has no Alignment2d")
    block = block_px or max(1, int(0.5 * lattice.cell_um / dataset.pixel_size_um))
    tissue = detection.tissue
    mask = detection.mask
    x, y, count = block_centres(tissue.shape, block)
    sums = [block_sums(tissue, block), block_sums(mask > 0, block),
            block_sums(mask, block), count, block_sums(detection.signal_counts * tissue, block)]
    sxy = image.alignment2d.tsv.apply(np.stack([x.ravel(), y.ravel()], axis=1))
    # each block is a square of block x pixel um, shared by area with the neighbouring cell it spills into
    half = 0.5 * block * dataset.pixel_size_um / lattice.cell_um
    ix, iy, share, copies = _footprint_pairs((sxy[:, 0] - lattice.origin_um[0]) / lattice.cell_um,
                                             (sxy[:, 1] - lattice.origin_um[1]) / lattice.cell_um, half)
    ny, nx = lattice.shape
    ok = (share > 0) & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    cells = iy[ok] * nx + ix[ok]
    share = share[ok]
    out = np.empty((len(EXPRESSION_QUANTITIES), ny, nx))
    for q, values in enumerate(sums):
        weights = np.tile(np.asarray(values, np.float64).ravel(), copies)[ok] * share
        out[q] = np.bincount(cells, weights=weights, minlength=ny * nx).reshape(ny, nx)
    return SectionGrid(lattice.plane(dataset.section_position_um(image.section_number)), out)


class ExpressionAccumulator:
    """The 3-D specimen lattice ``(4, nz, ny, nx)`` of stacked per-image grids (module docstring, step 2)."""

    def __init__(self, lattice: ExpressionLattice):
        self.lattice = lattice
        self.sums = np.zeros((len(EXPRESSION_QUANTITIES), lattice.nz) + tuple(lattice.shape))
        self.sections = 0

    def add(self, grid: SectionGrid) -> ExpressionAccumulator:
        if 0 <= grid.plane < self.lattice.nz:
            self.sums[:, grid.plane] += grid.sums
        self.sections += 1
        return self

    def merge(self, other: ExpressionAccumulator) -> ExpressionAccumulator:
        self.sums += other.sums
        self.sections += other.sections
        return self

    def add_all(self, grids: Iterable[SectionGrid]) -> ExpressionAccumulator:
        for grid in grids:
            self.add(grid)
        return self


def expression_volumes(accumulator: ExpressionAccumulator, dataset: SectionDataSet, spec: GridSpec, *,
                       smoothing: bool = True, smooth_xy_um: float = SMOOTH_XY_UM,
                       smooth_z_sections: float = SMOOTH_Z_SECTIONS, min_coverage: float = 0.5,
                       supersample: int = 2) -> dict[str, np.ndarray]:
    """Allen's expression volumes (module docstring, steps 3-5) on ``spec``: float32 ``(AP, DV, LR)`` arrays in
    Fortran order.

    Parameters
    ----------
    smoothing : Allen's smoothing of the per-image grids, in-plane and between sections (the ISH pipeline
        document: "Each per-image 2-D expression grid is smoothed ... Z-direction smoothing is applied to the 3-D
        grid"); on by default, ``smoothing=False`` turns it off.
    smooth_xy_um : Gaussian sigma (um) of the in-plane smoothing of each image's grid.
    smooth_z_sections : Gaussian sigma (in sections) of the smoothing between sections. Interpolating between the
        planes already smooths linearly over one section spacing.
    min_coverage : fraction of a voxel's pixels (as if fully imaged) it needs to have data.
    supersample : each voxel averages ``supersample**3`` trilinear samples of the lattice (a box filter over
        the voxel, so every cell under it counts).

    The benchmark (``benchmarks detect_grid``) reports the grids against the truth with and without smoothing.
    """
    lattice = accumulator.lattice
    sums = accumulator.sums
    if not smoothing:
        smooth_xy_um = smooth_z_sections = 0.0
    sigma_xy = smooth_xy_um / lattice.cell_um
    if sigma_xy > 0 or smooth_z_sections > 0:
        # The sums are smoothed (mirrored at the lattice's ends, so nothing leaks past the first and last
        # sections); the coverage is not: where there are data stays where sections were imaged.
        covered = EXPRESSION_QUANTITIES.index("covered")
        sums = np.stack([v if q == covered else
                         ndimage.gaussian_filter(v, (smooth_z_sections, sigma_xy, sigma_xy), mode="reflect",
                                                 truncate=3.0) for q, v in enumerate(sums)])
    centres = spec.voxel_centres_um()
    samples = np.zeros((len(EXPRESSION_QUANTITIES), centres.shape[0]))
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    for dz in offsets:
        for dy in offsets:
            for dx in offsets:
                points = centres + spec.resolution_um * np.array([dz, dy, dx])
                specimen = reference_to_specimen(dataset, points)  # through the deformation, if any
                coords = np.stack([
                    (specimen[:, 2] - lattice.z0_um) / lattice.dz_um,
                    (specimen[:, 1] - lattice.origin_um[1]) / lattice.cell_um - 0.5,
                    (specimen[:, 0] - lattice.origin_um[0]) / lattice.cell_um - 0.5,
                ])
                # map_coordinates(order=1, mode="constant", prefilter=False) of every quantity, the same bits
                add_trilinear(samples, sums, coords)
    samples *= (spec.resolution_um / lattice.cell_um) ** 2 / supersample**3  # per voxel column: cells -> voxel
    sampled = dict(zip(EXPRESSION_QUANTITIES, samples))
    full = (spec.resolution_um / dataset.pixel_size_um) ** 2
    data = sampled["covered"] >= min_coverage * full
    pixels = sampled["sum_pixels"]
    expressing = sampled["sum_expressing_pixels"]
    intensity_sum = sampled["sum_expressing_pixel_intensity"]
    tissue = data & (pixels > 1e-6 * full)
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(tissue, expressing / pixels, 0.0)
        energy = np.where(tissue, intensity_sum / pixels, 0.0)
        intensity = np.where(tissue & (expressing > 1e-9), intensity_sum / expressing, 0.0)
    flat = {
        "energy": np.where(data, energy, -1.0),
        "density": np.where(data, density, -1.0),
        "intensity": np.where(data, intensity, -1.0),
        "sum_pixels": np.where(data, pixels, 0.0),
        "sum_expressing_pixels": np.where(data, expressing, 0.0),
        "sum_expressing_pixel_intensity": np.where(data, intensity_sum, 0.0),
        "sum_pixel_intensity": np.where(data, sampled["sum_pixel_intensity"], 0.0),
    }
    return {name: spec.volume(values, np.float32) for name, values in flat.items()}


def write_expression_grids(folder: str | os.PathLike[str], volumes: dict[str, np.ndarray], spec: GridSpec, *,
                           bundle_name: str = "grid_data.zip") -> list[Path]:
    """Write the expression volumes: ``{name}.mhd/.raw`` (MetaImage float32), ``{name}_{res}.nrrd`` and a
    grid-data zip (``bundle_name``) of the MetaImages; all atomically. Returns the paths of every file written
    (each header and its ``.raw`` data file).

    The headers' origin (MetaImage ``Offset``, NRRD ``space origin``) is the centre of voxel 0
    (:attr:`GridSpec.first_centre_um`, (0, 0, 0) um for Allen's 200 um grid, whose voxel ``i`` is centred at
    ``200 i`` um)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    spacing = (spec.resolution_um,) * 3
    offset = spec.first_centre_um
    for name, volume in volumes.items():
        path = folder / f"{name}.mhd"
        write_metaimage(path, np.asarray(volume, dtype=np.float32), spacing, element_type="MET_FLOAT", offset=offset)
        paths += [path, path.with_suffix(".raw")]
        nrrd_path = folder / f"{name}_{spec.resolution_label}.nrrd"
        write_nrrd(nrrd_path, np.asarray(volume, dtype=np.float32), spacing_um=spec.resolution_um,
                   origin_um=offset)
        paths.append(nrrd_path)
    bundle = folder / bundle_name
    write_grid_bundle(bundle, {name: np.asarray(v, dtype=np.float32) for name, v in volumes.items()}, spacing,
                      offset=offset)
    paths.append(bundle)
    return paths
