"""An annotation too large to hold whole (10 um: 1.2 G voxels), handed out as compact label slabs.

At 10 um Allen's annotation (``annotation_10.nrrd``, uint32) is 4.8 GB and its label index (uint16) 2.4 GB. A
unionizer that reads its grid volumes slab by slab (ranges of LR planes, :mod:`brainmap.io.nrrd_stream`) needs the
annotation's labels for the same planes only. :class:`StreamedAnnotation` gives them, from one of two sources:

* an annotation NRRD (Allen's ``annotation_10.nrrd`` from ``ReferenceSpaceCache``, or any on the grid): its raw
  slabs are decoded along with the grid volumes and relabelled slab by slab (:class:`Relabeller`, the label
  index's perfect hash);
* a coarser in-memory annotation, upsampled by nearest neighbour on the fly (25 um -> 10 um: each 10 um voxel
  takes the label of the 25 um voxel its centre lies in). brainmap does not bundle a 10 um annotation; this is
  what ``brainmap unionize`` uses at 10 um when it is given none, and says so.

Either way memory is a few slabs, whatever the grid.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numba
import numpy as np

from brainmap.atlas.label_index import OntologyOrder, Relabeller
from brainmap.atlas.ontology import StructureTree
from brainmap.errors import FormatError
from brainmap.io.nrrd_stream import NrrdSlabs

__all__ = ["StreamedAnnotation", "nearest_indices"]

PathLike = str | os.PathLike[str]


def nearest_indices(n_coarse: int, coarse_um: float, n_fine: int, fine_um: float) -> np.ndarray:
    """Index of the coarse voxel holding the centre of each fine voxel along one axis (clipped to the volume)."""
    centres = (np.arange(n_fine) + 0.5) * fine_um
    return np.minimum(np.floor(centres / coarse_um).astype(np.intp), n_coarse - 1)


@numba.njit(nogil=True, cache=True)
def _gather_plane(coarse, ia, ib, c, out):  # pragma: no cover - compiled
    """``out[a, b] = coarse[ia[a], ib[b], c]`` (out in Fortran order: a fastest); a column whose ``ib`` repeats
    the previous one's is copied, not gathered again (2-3 times in 5 when 25 um becomes 10 um)."""
    for b in range(ib.size):
        if b > 0 and ib[b] == ib[b - 1]:
            out[:, b] = out[:, b - 1]
            continue
        for a in range(ia.size):
            out[a, b] = coarse[ia[a], ib[b], c]


class StreamedAnnotation:
    """Compact labels (uint16, the label index's) of an annotation, slab by slab along LR.

    Use :meth:`from_file` or :meth:`upsampled`. Quacks like a :class:`~brainmap.atlas.ReferenceSpace` for the
    unionizers' roll-ups (``shape``, ``resolution``, ``structure_tree``, ``ontology_order``), but has no
    ``annotation`` or ``label_index``: nothing here holds the whole volume.

    Attributes
    ----------
    shape : (AP, DV, LR) voxels
    resolution : (3,) float, um per voxel
    path : Path or None
        The annotation NRRD whose raw slabs :meth:`compact_slab` relabels (None when upsampled).
    source : str
        Where the labels come from, for messages ("annotation_10.nrrd", "the 25 um annotation upsampled ...").
    """

    #: Flat indices (max voxels) count in file order, as the slabs come.
    memory_order = "F"

    def __init__(self, structure_tree: StructureTree, shape: Sequence[int], resolution: Sequence[float], *,
                 path: PathLike | None = None, coarse: np.ndarray | None = None,
                 coarse_resolution: Sequence[float] | None = None, source: str = ""):
        self.structure_tree = structure_tree
        self.shape = tuple(int(n) for n in shape)
        self.resolution = np.asarray(resolution, dtype=np.float64)
        self.ontology_order = OntologyOrder.from_tree(structure_tree)
        self.path = None if path is None else Path(path)
        self.source = source
        self._relabel = Relabeller(self.ontology_order)
        self._coarse = coarse
        self._last_plane: tuple[int, np.ndarray] | None = None  # (coarse plane, its fine plane): see compact_slab
        if coarse is not None:
            assert coarse_resolution is not None
            self._axes = [nearest_indices(n_c, float(r_c), n_f, float(r_f)) for n_c, r_c, n_f, r_f
                          in zip(coarse.shape, coarse_resolution, self.shape, self.resolution)]

    # ------------------------------------------------------------------ sources
    @classmethod
    def from_file(cls, path: PathLike, structure_tree: StructureTree | None = None) -> StreamedAnnotation:
        """An annotation NRRD (e.g. Allen's ``annotation_10.nrrd``), read slab by slab when used; only its header
        is read now. Raises FormatError naming the file if it is not a 3-D integer volume with spacing."""
        from brainmap.atlas.reference_space import _resolution_from_header

        volume = NrrdSlabs(path)
        if len(volume.shape) != 3 or volume.dtype.kind not in "ui":
            raise FormatError(f"{path}: an annotation must be a 3-D volume of integer structure ids, not "
                              f"{'x'.join(map(str, volume.shape))} {volume.dtype}")
        resolution = _resolution_from_header(volume.header, path)
        tree = structure_tree or StructureTree.bundled()
        return cls(tree, volume.shape, resolution, path=path, source=str(path))

    @classmethod
    def upsampled(cls, space, resolution: float, shape: Sequence[int]) -> StreamedAnnotation:
        """``space``'s annotation (a :class:`~brainmap.atlas.ReferenceSpace`) on a finer grid of ``shape`` voxels
        of ``resolution`` um, by nearest neighbour, computed slab by slab from its label index."""
        coarse = space.label_index.compact
        source = (f"the {space.resolution[0]:g} um annotation upsampled to {resolution:g} um by nearest neighbour "
                  f"(no {resolution:g} um annotation given)")
        return cls(space.structure_tree, shape, [resolution] * 3, coarse=coarse,
                   coarse_resolution=space.resolution, source=source)

    # ------------------------------------------------------------------ slabs
    @property
    def plane_voxels(self) -> int:
        return self.shape[0] * self.shape[1]

    def compact_slab(self, start: int, planes: int, raw: np.ndarray | None = None) -> np.ndarray:
        """Compact labels of LR planes ``start : start + planes`` as a flat uint16 array in file (Fortran) order.

        ``raw`` is the annotation file's slab of those planes (from :func:`~brainmap.io.nrrd_stream.
        iter_volume_slabs`) when the labels come from a file. Raises UnknownStructureError naming labels that are
        not structures of the ontology."""
        if self._coarse is None:
            if raw is None or raw.shape != self.shape[:2] + (planes,):
                raise ValueError(f"compact_slab: the annotation file's slab of planes {start}:{start + planes}")
            return self._relabel(raw.ravel(order="F"))
        out = np.empty(self.shape[:2] + (planes,), dtype=np.uint16, order="F")
        for j, c in enumerate(self._axes[2][start : start + planes]):
            # Consecutive fine planes in one coarse plane are the same: the last one made is copied.
            if self._last_plane is not None and self._last_plane[0] == c:
                out[:, :, j] = self._last_plane[1]
                continue
            _gather_plane(self._coarse, self._axes[0], self._axes[1], c, out[:, :, j])
            self._last_plane = (c, out[:, :, j].copy(order="F"))
        return out.ravel(order="F")

    def voxels(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"StreamedAnnotation({'x'.join(map(str, self.shape))} at {self.resolution[0]:g} um, {self.source})"
