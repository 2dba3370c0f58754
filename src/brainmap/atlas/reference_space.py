"""The reference space: an annotation volume, the structure ontology and the voxel size, with fast queries.

Volumes are indexed (AP, DV, LR) = PIR, as pynrrd reads Allen's files: axis 0 grows posterior, axis 1
inferior, axis 2 to the right. Voxel ``(i, j, k)`` covers microns ``[i*res, (i+1)*res)`` along each axis; its
centre is at ``(i + 0.5) * res``. Hemisphere 1 is left (LR index below the midline index), 2 is right and
3 both.

Every structure query goes through one :class:`~brainmap.atlas.label_index.LabelIndex`, built on first use:
a mask of any structure with all its descendants, or the voxel counts of all structures, is one pass over
a ``uint16`` volume, never one pass per structure.
"""

from __future__ import annotations

import os

from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from brainmap.atlas import bundled
from brainmap.atlas.label_index import LabelIndex, OntologyOrder
from brainmap.atlas.ontology import StructureTree
from brainmap.errors import FormatError

HEMISPHERE_LEFT, HEMISPHERE_RIGHT, HEMISPHERE_BOTH = 1, 2, 3

#: Names of the three section planes by the array axis they cut across.
PLANE_AXIS = {"coronal": 0, "horizontal": 1, "sagittal": 2}


def _resolution_triplet(resolution: float | Sequence[float]) -> np.ndarray:
    res = np.asarray(resolution, dtype=np.float64).reshape(-1)
    if res.size == 1:
        res = np.repeat(res, 3)
    if res.size != 3 or not np.all(res > 0):
        raise ValueError(f"resolution must be one positive number or three (AP, DV, LR) in um, got {resolution!r}")
    return res


def _resolution_from_header(header: dict, path: str | os.PathLike[str]) -> np.ndarray:
    """(3,) um per voxel from a NRRD header's ``space directions``; FormatError naming ``path`` without them."""
    directions = header.get("space directions")
    if directions is None:
        raise FormatError(f"{path}: no 'space directions' in the header; pass resolution=")
    return np.abs(np.diag(np.asarray(directions, dtype=np.float64)))


def midline_index(n_lr: int) -> int:
    """First LR index of the right hemisphere: ``round(n_lr / 2)``, halves rounded up.

    For Allen's volumes this is the voxel starting at LR = 5700 um (228 at 25 um, 57 at 100 um, 29 on
    the 58-voxel 200 um grid).
    """
    return (int(n_lr) + 1) // 2


class ReferenceSpace:
    """An annotated reference volume.

    Parameters
    ----------
    structure_tree : StructureTree
        The ontology whose ids label the annotation.
    annotation : (AP, DV, LR) integer ndarray
        Structure id per voxel; 0 = outside the brain / unassigned.
    resolution : float or (3,) floats
        Voxel size in um along (AP, DV, LR).
    """

    def __init__(self, structure_tree: StructureTree, annotation: np.ndarray, resolution: float | Sequence[float]):
        annotation = np.asarray(annotation)
        if annotation.ndim != 3:
            raise ValueError(f"annotation must be a 3-D (AP, DV, LR) volume, got shape {annotation.shape}")
        self.structure_tree = structure_tree
        self.annotation = annotation
        self.resolution = _resolution_triplet(resolution)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def bundled(cls, resolution: int = 25) -> "ReferenceSpace":
        """The CCF 2017 annotation shipped with the package at 25, 50 or 100 um, with the bundled ontology."""
        return cls.from_files(bundled.annotation_path(resolution))

    @classmethod
    def from_files(
        cls,
        annotation_path: str | Path,
        structures_path: str | Path | None = None,
        resolution: float | Sequence[float] | None = None,
    ) -> "ReferenceSpace":
        """Load an annotation NRRD (and optionally a ``structures.json``; default the bundled ontology).

        The resolution is read from the NRRD's ``space directions`` unless given.
        """
        from brainmap.io.nrrd import read_nrrd

        annotation, header = read_nrrd(annotation_path)
        if resolution is None:
            resolution = _resolution_from_header(header, annotation_path)
        tree = StructureTree.bundled() if structures_path is None else StructureTree.from_structures_json(structures_path)
        return cls(tree, annotation, resolution)

    # ----------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape in voxels (AP, DV, LR)."""
        return tuple(self.annotation.shape)  # type: ignore[return-value]

    @property
    def extent_um(self) -> np.ndarray:
        """Size of the volume in um along (AP, DV, LR)."""
        return np.asarray(self.shape) * self.resolution

    def voxel_to_um(self, voxels: np.ndarray, center: bool = True) -> np.ndarray:
        """(N, 3) voxel indices -> microns (AP, DV, LR); the voxel centre unless ``center=False`` (its corner)."""
        return (np.asarray(voxels, dtype=np.float64) + (0.5 if center else 0.0)) * self.resolution

    def um_to_voxel(self, points_um: np.ndarray, check_bounds: bool = False) -> np.ndarray:
        """(N, 3) microns (AP, DV, LR) -> the indices of the voxels containing them (floor)."""
        voxels = np.floor(np.asarray(points_um, dtype=np.float64) / self.resolution).astype(np.int64)
        if check_bounds:
            outside = np.any((voxels < 0) | (voxels >= np.asarray(self.shape)), axis=-1)
            if np.any(outside):
                first = np.asarray(points_um, dtype=np.float64).reshape(-1, 3)[np.flatnonzero(outside)[0]]
                raise ValueError(
                    f"point {first.tolist()} um lies outside the reference volume "
                    f"[0, {self.extent_um.tolist()}) um (AP, DV, LR)"
                )
        return voxels

    # ----------------------------------------------------------------- the label index
    @cached_property
    def ontology_order(self) -> OntologyOrder:
        """The ontology in preorder (compact index ``k + 1`` is ``ontology_order.ids[k]``)."""
        return OntologyOrder.from_tree(self.structure_tree)

    @cached_property
    def label_index(self) -> LabelIndex:
        """The annotation relabelled to compact preorder indices; built once, on first use (~2 s at 25 um)."""
        return LabelIndex(self.annotation, self.ontology_order)

    # ----------------------------------------------------------------- masks
    def make_structure_mask(self, structure_ids: Iterable[int], direct_only: bool = False) -> np.ndarray:
        """Boolean (AP, DV, LR) mask of the voxels in ``structure_ids`` and, unless ``direct_only``, all their
        descendants. One pass over the volume however many structures that covers."""
        return self.label_index.mask(list(np.atleast_1d(structure_ids)), direct_only=direct_only)

    def many_structure_masks(
        self,
        structure_ids: Iterable[int],
        output_cb: Callable[[int, np.ndarray], object] | None = None,
        direct_only: bool = False,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(structure_id, mask)`` for each structure; with ``output_cb``, yield what it returns instead."""
        for sid in structure_ids:
            mask = self.make_structure_mask([sid], direct_only=direct_only)
            yield (sid, mask) if output_cb is None else (sid, output_cb(sid, mask))

    def hemisphere_ids(self) -> np.ndarray:
        """(n_LR,) uint8: the hemisphere (1 left, 2 right) of each LR index."""
        ids = np.full(self.shape[2], HEMISPHERE_RIGHT, dtype=np.uint8)
        ids[: midline_index(self.shape[2])] = HEMISPHERE_LEFT
        return ids

    def hemisphere_region(self, hemisphere_id: int) -> tuple[slice, slice, slice]:
        """Index of one hemisphere (1 left, 2 right, 3 both) into an (AP, DV, LR) volume: ``volume[region]``."""
        if hemisphere_id not in (HEMISPHERE_LEFT, HEMISPHERE_RIGHT, HEMISPHERE_BOTH):
            raise ValueError(f"hemisphere_id must be 1 (left), 2 (right) or 3 (both), got {hemisphere_id!r}")
        mid = midline_index(self.shape[2])
        lr = {HEMISPHERE_LEFT: slice(0, mid), HEMISPHERE_RIGHT: slice(mid, None), HEMISPHERE_BOTH: slice(None)}
        return (slice(None), slice(None), lr[hemisphere_id])

    def hemisphere_mask(self, hemisphere_id: int) -> np.ndarray:
        """Boolean (AP, DV, LR) mask of one hemisphere (1 left, 2 right, 3 both), inside or outside the brain."""
        mask = np.zeros_like(self.annotation, dtype=bool)  # same memory order as the annotation
        mask[self.hemisphere_region(hemisphere_id)] = True
        return mask

    # ----------------------------------------------------------------- counts
    def _counts_by_hemisphere(self, hemisphere_id: int) -> np.ndarray:
        return self.label_index.direct_counts(region=self.hemisphere_region(hemisphere_id))

    def direct_voxel_counts(self, hemisphere_id: int = HEMISPHERE_BOTH) -> pd.Series:
        """Voxels labelled exactly with each structure (every structure of the ontology, 0 where absent).

        A :class:`pandas.Series` indexed by structure id, in preorder.
        """
        counts = self._counts_by_hemisphere(hemisphere_id).astype(np.int64)
        return pd.Series(counts, index=pd.Index(self.ontology_order.ids, name="structure_id"), name="voxels")

    def total_voxel_counts(self, hemisphere_id: int = HEMISPHERE_BOTH) -> pd.Series:
        """Voxels in each structure or any of its descendants, for every structure, indexed by structure id."""
        direct = self.direct_voxel_counts(hemisphere_id)
        return pd.Series(self.label_index.roll_up(direct.to_numpy()), index=direct.index, name="voxels")

    @property
    def direct_voxel_map(self) -> dict[int, int]:
        """AllenSDK-style ``{structure_id: direct voxel count}``."""
        return {int(k): int(v) for k, v in self.direct_voxel_counts().items()}

    @property
    def total_voxel_map(self) -> dict[int, int]:
        """AllenSDK-style ``{structure_id: total voxel count}``."""
        return {int(k): int(v) for k, v in self.total_voxel_counts().items()}

    def structure_volume_mm3(self, structure_id: int, hemisphere_id: int = HEMISPHERE_BOTH) -> float:
        """Volume of a structure with its descendants, in mm^3."""
        voxels = self.total_voxel_counts(hemisphere_id)
        self.ontology_order.positions([structure_id])  # raises, naming an unknown id
        return float(voxels.loc[structure_id]) * float(np.prod(self.resolution)) * 1e-9

    def structure_centroid_um(self, structure_id: int) -> np.ndarray:
        """Centroid (AP, DV, LR) in um of a structure with its descendants (mean of its voxel centres)."""
        mask = self.make_structure_mask([structure_id])
        counts = [mask.sum(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)]
        total = counts[0].sum()
        if total == 0:
            raise ValueError(f"structure {structure_id} has no voxels in this annotation")
        index_mean = np.array([(c * np.arange(c.size)).sum() / total for c in counts])
        return (index_mean + 0.5) * self.resolution

    # ----------------------------------------------------------------- derived spaces
    def remove_unassigned(self, update_self: bool = True) -> StructureTree:
        """A structure tree of only the structures with at least one voxel (themselves or descendants).

        With ``update_self`` (the default, as AllenSDK), this space's tree is replaced by it.
        """
        totals = self.total_voxel_counts()
        keep = set(int(s) for s in totals.index[totals.to_numpy() > 0])
        tree = StructureTree([node for node in self.structure_tree.nodes() if int(node["id"]) in keep])
        if update_self:
            self.structure_tree = tree
            self.__dict__.pop("ontology_order", None)
            self.__dict__.pop("label_index", None)
        return tree

    def downsample(self, target_resolution: float | Sequence[float]) -> "ReferenceSpace":
        """Nearest-neighbour resampling to a coarser (or finer) grid.

        Target voxel ``i`` takes the source voxel ``floor(i * target / source)``, so an integer factor is plain
        subsampling: ``annotation_25[::4, ::4, ::4]`` is exactly Allen's 100 um annotation. The output shape is
        ``ceil(shape * source / target)``.
        """
        target = _resolution_triplet(target_resolution)
        indices = []
        for axis in range(3):
            n_out = int(np.ceil(self.shape[axis] * self.resolution[axis] / target[axis] - 1e-9))
            idx = np.floor(np.arange(n_out) * target[axis] / self.resolution[axis] + 1e-9).astype(np.int64)
            indices.append(np.minimum(idx, self.shape[axis] - 1))
        annotation = self.annotation[np.ix_(*indices)]
        return ReferenceSpace(self.structure_tree, annotation, target)

    # ----------------------------------------------------------------- pictures
    def structure_colors(self) -> np.ndarray:
        """(n + 1, 3) uint8 colours by compact index: black for unassigned, then the ontology's rgb in preorder."""
        colormap = self.structure_tree.get_colormap()
        rgb = np.array([colormap[int(s)] for s in self.ontology_order.ids], dtype=np.uint8).reshape(-1, 3)
        return np.vstack([np.zeros((1, 3), dtype=np.uint8), rgb])

    def get_slice_image(self, axis: int | str, position: float, cmap: np.ndarray | None = None) -> np.ndarray:
        """An RGB picture (rows, cols, 3) uint8 of the annotation at ``position`` um along ``axis``.

        ``axis`` is 0 / "coronal" (AP), 1 / "horizontal" (DV) or 2 / "sagittal" (LR). Coronal images have rows
        along DV and columns along LR; sagittal ones rows along DV and columns along AP; horizontal ones rows
        along AP and columns along LR. Structures are coloured by the ontology (or by ``cmap``, a colour per
        compact index), unassigned voxels black.
        """
        axis = PLANE_AXIS[axis] if isinstance(axis, str) else int(axis)
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1, 2 or a plane name {sorted(PLANE_AXIS)}, got {axis!r}")
        index = int(np.floor(position / self.resolution[axis]))
        if not 0 <= index < self.shape[axis]:
            raise ValueError(
                f"position {position} um is outside the volume along axis {axis} "
                f"(0 to {self.extent_um[axis]:g} um)"
            )
        plane = self.label_index.compact[(slice(None),) * axis + (index,)]  # a view; np.take would copy the volume
        if axis == 2:
            plane = plane.T  # rows DV, columns AP
        colors = self.structure_colors() if cmap is None else np.asarray(cmap, dtype=np.uint8)
        return colors[plane]

    def __repr__(self) -> str:
        res = "x".join(f"{r:g}" for r in self.resolution)
        return f"ReferenceSpace(shape={self.shape}, resolution={res} um, structures={len(self.structure_tree)})"
