"""Synthetic ISH expression-energy grids with the real grid, ontology and no-data patterns, for tests, benchmarks
and demos (no real expression grids are available here).

Each row is one data set, deterministic in ``(seed, row)`` whatever the block it is made in:

* plane: coronal with probability ``coronal_fraction`` (Allen: ~4,000 of ~25,000), else sagittal;
* data: brain voxels only; sagittal data sets cover the left hemisphere from a lateral start (LR index 9-13) to
  just past the midline (LR < 30), coronal ones both hemispheres over the brain's AP extent less 0-2 end planes;
  each section plane (LR planes for sagittal, AP planes for coronal) is missing with probability
  ``missing_plane_rate`` (damaged or discarded sections);
* values: a gene mixes one to three "programs" (non-negative loadings over the summary structures, each centred
  on one major division) with log-normal weights, plus a baseline, a smooth spatial gradient and log-normal
  voxel noise; about 30 % of genes are not expressed (baseline and noise only); about one row in seven is a
  replicate of the previous row's gene (same pattern, new noise and plane). Values are energies of ~0-50 with
  heavy tails, like Allen's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from brainmap.atlas.ontology import StructureSetId
from brainmap.atlas.reference_space import midline_index
from brainmap.search.grid import SearchGrid

#: Data set ids of synthetic rows: ``FIRST_ID + ID_STEP * row``.
FIRST_ID = 100_000_000
ID_STEP = 7


@dataclass(frozen=True)
class RowLayout:
    """Where one synthetic data set has data."""

    plane: str
    lo: int  # first plane index with data (LR for sagittal, AP for coronal)
    hi: int  # one past the last
    missing: np.ndarray  # missing plane indices


class SyntheticExpression:
    """A deterministic generator of ISH-like energy grids on ``grid`` (default: the 200 um grid)."""

    def __init__(self, grid: SearchGrid | None = None, seed: int = 0, coronal_fraction: float = 0.16,
                 missing_plane_rate: float = 0.04, n_programs: int = 32, replicate_rate: float = 0.15):
        self.grid = grid if grid is not None else SearchGrid.ish()
        self.seed = int(seed)
        self.coronal_fraction = float(coronal_fraction)
        self.missing_plane_rate = float(missing_plane_rate)
        self.replicate_rate = float(replicate_rate)
        g = self.grid
        self.brain = g.brain_voxels()
        ijk = g.voxel_ijk(self.brain)
        self._ap, self._lr = ijk[:, 0], ijk[:, 2]
        self._coords = ((ijk + 0.5) / np.asarray(g.shape) - 0.5).astype(np.float32)  # in [-0.5, 0.5]
        self._midline = midline_index(g.shape[2])
        self._ap_range = (int(self._ap.min()), int(self._ap.max()) + 1)

        # Regions: the summary structure containing each brain voxel (or its major division, or "other").
        tree = g.structure_tree
        summary = set(tree.structure_set_member_ids(StructureSetId.SUMMARY))
        majors = tree.structure_set_member_ids(StructureSetId.MAJOR_DIVISIONS)
        labels = g.structure_id_at(self.brain)
        unique_labels, inverse = np.unique(labels, return_inverse=True)
        region_ids: list[int] = []
        major_of_region: list[int] = []
        label_region = np.empty(unique_labels.size, dtype=np.int64)
        for k, (label, path) in enumerate(zip(unique_labels, tree.ancestor_ids(unique_labels.tolist()))):
            # path: the label itself first, the root last
            region = next((a for a in path if a in summary), path[-1])
            major = next((a for a in path if a in majors), -1)
            if region not in region_ids:
                region_ids.append(region)
                major_of_region.append(majors.index(major) if major in majors else len(majors))
            label_region[k] = region_ids.index(region)
        self.region_ids = np.asarray(region_ids)
        self._region = label_region[inverse]
        n_regions = len(region_ids)
        major_of_region_arr = np.asarray(major_of_region)

        rng = np.random.default_rng([self.seed, 0])
        loadings = np.zeros((n_programs, n_regions), dtype=np.float64)
        for k in range(n_programs):
            division = rng.integers(0, major_of_region_arr.max() + 1)
            members = np.flatnonzero(major_of_region_arr == division)
            if members.size == 0:
                members = np.arange(n_regions)
            chosen = members[rng.random(members.size) < rng.uniform(0.25, 1.0)]
            if chosen.size == 0:
                chosen = members[:1]
            loadings[k, chosen] = rng.lognormal(0.0, 0.6, chosen.size)
            extra = rng.choice(n_regions, size=rng.integers(0, 6), replace=False)
            loadings[k, extra] += rng.lognormal(-0.5, 0.5, extra.size)
        self.loadings = loadings

    # ------------------------------------------------------------------ rows
    def data_set_id(self, row: int | np.ndarray) -> np.ndarray:
        return FIRST_ID + ID_STEP * np.asarray(row, dtype=np.int64)

    def gene_index(self, row: int) -> int:
        """Rows of one gene are consecutive; a row repeats the previous row's gene with ``replicate_rate``."""
        rng = np.random.default_rng([self.seed, 1, row])
        if row > 0 and rng.random() < self.replicate_rate:
            return self.gene_index(row - 1)
        return row

    def layout(self, row: int) -> RowLayout:
        rng = np.random.default_rng([self.seed, 2, row])
        if rng.random() < self.coronal_fraction:
            lo = self._ap_range[0] + int(rng.integers(0, 3))
            hi = self._ap_range[1] - int(rng.integers(0, 3))
            plane = "coronal"
        else:
            lo = int(rng.integers(9, 14))
            hi = self._midline + 1
            plane = "sagittal"
        planes = np.arange(lo, hi)
        missing = planes[rng.random(planes.size) < self.missing_plane_rate]
        return RowLayout(plane, lo, hi, missing)

    def data_mask(self, row: int) -> np.ndarray:
        """Which brain voxels (``self.brain`` order) row ``row`` has data in."""
        lay = self.layout(row)
        coronal = lay.plane == "coronal"
        planes = np.zeros(self.grid.shape[0 if coronal else 2], dtype=bool)
        planes[lay.lo : lay.hi] = True
        planes[lay.missing] = False
        return planes[self._ap if coronal else self._lr]

    def coverage_counts(self, n_rows: int, planes: Iterable[str] | None = None) -> np.ndarray:
        """Per grid voxel (flat), how many of rows ``0 .. n_rows - 1`` (of ``planes``) have data there; cheap
        (no values are made)."""
        wanted = None if planes is None else set([planes] if isinstance(planes, str) else planes)
        per_plane = {"coronal": np.zeros(self.grid.shape[0], np.int64), "sagittal": np.zeros(self.grid.shape[2], np.int64)}
        for row in range(n_rows):
            lay = self.layout(row)
            if wanted is not None and lay.plane not in wanted:
                continue
            counts = per_plane[lay.plane]
            counts[lay.lo : lay.hi] += 1
            counts[lay.missing] -= 1
        flat = np.zeros(self.grid.n_voxels, np.int64)
        flat[self.brain] = per_plane["coronal"][self._ap] + per_plane["sagittal"][self._lr]
        return flat

    def metadata(self, start: int, stop: int) -> tuple[np.ndarray, list[str], list[str]]:
        """``(data_set_ids, genes, planes)`` of rows ``start .. stop - 1``."""
        rows = range(start, stop)
        return (self.data_set_id(np.arange(start, stop)), [f"Gene{self.gene_index(r):05d}" for r in rows],
                [self.layout(r).plane for r in rows])

    def is_expressed(self, row: int) -> bool:
        """Whether row ``row``'s gene follows programs (else it is baseline and noise only)."""
        rng = np.random.default_rng([self.seed, 3, self.gene_index(row)])
        rng.lognormal(-2.0, 0.7)
        return bool(rng.random() > 0.3)

    def _gene_levels(self, gene: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-region expression level and the spatial gradient of one gene."""
        rng = np.random.default_rng([self.seed, 3, gene])
        n_programs = self.loadings.shape[0]
        baseline = rng.lognormal(-2.0, 0.7)
        level = np.full(self.loadings.shape[1], baseline)
        if rng.random() > 0.3:  # expressed (is_expressed repeats these two draws)
            k = rng.choice(n_programs, size=rng.integers(1, 4), replace=False)
            weights = rng.lognormal(0.5, 0.8, k.size)
            level = level + weights @ self.loadings[k]
        gradient = rng.normal(0.0, 0.6, 3)
        return level, gradient

    def values(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop - 1`` over every grid voxel (flat order), float32, NaN where no data."""
        n = stop - start
        block = np.empty((n, self.brain.size), dtype=np.float32)
        for j, row in enumerate(range(start, stop)):
            level, gradient = self._gene_levels(self.gene_index(row))
            rng = np.random.default_rng([self.seed, 4, row])
            b = block[j]
            rng.standard_normal(self.brain.size, dtype=np.float32, out=b)
            b *= np.float32(0.45)
            b += self._coords @ gradient.astype(np.float32)
            np.exp(b, out=b)
            b *= level.astype(np.float32)[self._region]
            b[~self.data_mask(row)] = np.nan
        out = np.full((n, self.grid.n_voxels), np.nan, dtype=np.float32)
        out[:, self.brain] = block
        return out

    def fill(self, stores: Sequence, n_rows: int, block_rows: int = 256, start: int = 0) -> float:
        """Append rows ``start .. start + n_rows - 1`` to every store of ``stores`` (each takes its own columns);
        returns the seconds taken."""
        began = time.perf_counter()
        for first in range(start, start + n_rows, block_rows):
            last = min(first + block_rows, start + n_rows)
            ids, genes, planes = self.metadata(first, last)
            values = self.values(first, last)
            for store in stores:
                store.append(values, ids, gene=genes, plane=planes, no_data_value=None)
        return time.perf_counter() - began


__all__ = ["FIRST_ID", "ID_STEP", "RowLayout", "SyntheticExpression"]
