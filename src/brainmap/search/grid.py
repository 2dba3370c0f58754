"""The voxel grids that search matrices are laid over: the 200 um ISH expression grid and its annotation,
the voxel sets of structures, and coverage (the voxels most data sets have data in).

The ISH grid
------------
Allen's expression grids are 67 x 41 x 58 voxels of 200 um, (AP, DV, LR) = PIR, 159,326 voxels, stored as
MetaImage with x (AP) fastest and -1 where a data set has no data. Its annotation (Allen's
``gridAnnotation``) is the 25 um annotation subsampled by 8 (``annotation_25[::8, ::8, ::8]``, 66 x 40 x 57)
placed in a box one voxel larger per axis (the last plane of each axis lies past the 25 um volume, 13,200 um,
and is unassigned). Voxel ``(i, j, k)`` is centred at ``200 (i, j, k)`` um and covers ``[200 i - 100, 200 i + 100)``
along each axis (:attr:`SearchGrid.origin_um` = -100 um, the same convention as the gridding stage's
``GridSpec.allen(200)``): ``annotation_25[8 i]`` samples the 25 um voxel at ``200 i`` um. This sampling is the one
that matches the real coverage masks of ``../shared/data/ish`` best (97.7 % of the coronal mask inside our brain;
any one-voxel shift does worse; see ``tests/search/test_grid.py``). Grids over a reference space's own voxels (the
connectivity grids, 10-100 um) have their corner at 0: voxel ``i`` covers ``[res i, res (i + 1))``.

Flat voxel indices
------------------
A voxel's *flat index* is its position in Allen's raw grid files: ``ap + n_ap * (dv + n_dv * lr)`` (Fortran
order over (AP, DV, LR)). So ``energy.raw`` read as one float32 vector is already a row of a search matrix
over all grid voxels, and a store's columns are flat indices.

Coverage
--------
Allen's search service kept only the ~26,000 voxels that over 80 % of all data sets cover (sagittal data sets
cover only the left hemisphere, so this set does too), and a "coronal only" set of the voxels covered by
over 80 % of the coronal data sets (both hemispheres, 58,387 voxels then). :func:`coverage_voxels` computes
both from a store; :func:`read_coverage_mask` reads the published MINC masks (Beauchamp et al.).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from brainmap.atlas import ReferenceSpace, StructureTree
from brainmap.atlas.reference_space import HEMISPHERE_BOTH, HEMISPHERE_LEFT, HEMISPHERE_RIGHT, midline_index
from brainmap.errors import FormatError, UnknownStructureError
from brainmap.search.results import SearchInputError
from brainmap.atlas.expression_grid import (  # noqa: F401 (expression_grid_annotation re-exported)
    EXPRESSION_GRID_ORIGIN_UM, EXPRESSION_GRID_RESOLUTION_UM, EXPRESSION_GRID_SHAPE, expression_grid_annotation,
    expression_grid_space, on_expression_grid)

if TYPE_CHECKING:  # pragma: no cover
    from brainmap.search.matrix import MatrixStore

#: The ISH expression grid: voxel size (um), shape (AP, DV, LR) and number of voxels.
GRID_RESOLUTION_UM = EXPRESSION_GRID_RESOLUTION_UM
GRID_SHAPE: tuple[int, int, int] = EXPRESSION_GRID_SHAPE
GRID_VOXELS = 159_326

#: Allen's coverage rule: a voxel is covered when more than this fraction of data sets have data there.
COVERAGE_FRACTION = 0.8


class SearchGrid:
    """A voxel grid with its annotation: structure voxel sets, points, volumes.

    Wraps a :class:`~brainmap.atlas.ReferenceSpace` (any resolution: the 200 um ISH grid, or e.g. the 100 um
    space for projection-density matrices) and speaks flat voxel indices in Allen's raw order (AP fastest).
    """

    def __init__(self, space: ReferenceSpace, origin_um: float = 0.0):
        """``origin_um``: the corner of voxel 0 along every axis (um): 0 for a reference space's own voxels,
        -100 for Allen's 200 um ISH grid (:meth:`ish`)."""
        self.space = space
        self.origin_um = float(origin_um)
        self.shape: tuple[int, int, int] = tuple(int(n) for n in space.shape)  # type: ignore[assignment]
        self.resolution_um = np.asarray(space.resolution, dtype=np.float64)
        self.n_voxels = int(np.prod(self.shape))
        self._flat_annotation = np.asarray(space.annotation).ravel(order="F")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def ish(cls, space25: ReferenceSpace | None = None) -> "SearchGrid":
        """The 200 um ISH grid made from a 25 um reference space (default: the bundled CCF 2017 one,
        :func:`~brainmap.atlas.expression_grid.expression_grid_space`, cached)."""
        if space25 is None:
            return _bundled_ish_grid()
        if not np.allclose(space25.resolution, 25):
            raise ValueError(f"SearchGrid.ish needs a 25 um reference space, got {space25.resolution.tolist()} um")
        return cls(on_expression_grid(space25), origin_um=EXPRESSION_GRID_ORIGIN_UM)

    @classmethod
    def from_reference_space(cls, space: ReferenceSpace) -> "SearchGrid":
        """A grid over ``space``'s own voxels (e.g. ``ReferenceSpace.bundled(100)`` for projection density)."""
        return cls(space)

    # ------------------------------------------------------------------ basics
    @property
    def annotation(self) -> np.ndarray:
        """The (AP, DV, LR) annotation volume (structure ids, 0 = unassigned)."""
        return self.space.annotation

    @property
    def structure_tree(self) -> StructureTree:
        return self.space.structure_tree

    def flat_index(self, ijk: np.ndarray | Sequence[int]) -> np.ndarray:
        """Flat indices (Allen's raw order) of (N, 3) or (3,) voxel indices (AP, DV, LR)."""
        ijk = np.asarray(ijk, dtype=np.int64)
        return np.ravel_multi_index(tuple(np.moveaxis(ijk, -1, 0)), self.shape, order="F")

    def voxel_ijk(self, flat: np.ndarray | int) -> np.ndarray:
        """(N, 3) (or (3,)) voxel indices (AP, DV, LR) of flat indices."""
        return np.stack(np.unravel_index(np.asarray(flat, dtype=np.int64), self.shape, order="F"), axis=-1)

    def voxel_center_um(self, flat: np.ndarray | int) -> np.ndarray:
        """Centres in microns (AP, DV, LR) of flat voxel indices (``200 (i, j, k)`` on the ISH grid)."""
        return self.origin_um + (self.voxel_ijk(flat) + 0.5) * self.resolution_um

    def structure_id_at(self, flat: np.ndarray | int) -> np.ndarray:
        """The annotation (structure id, 0 = unassigned) at flat voxel indices."""
        return self._flat_annotation[np.asarray(flat, dtype=np.int64)]

    def to_flat(self, volume: np.ndarray) -> np.ndarray:
        """An (AP, DV, LR) volume as a vector in flat-index order."""
        volume = np.asarray(volume)
        if volume.shape != self.shape:
            raise ValueError(f"volume shape {volume.shape} differs from the grid's {self.shape}")
        return volume.ravel(order="F")

    def to_volume(self, values: np.ndarray, voxels: np.ndarray | None = None, fill: float = np.nan) -> np.ndarray:
        """An (AP, DV, LR) volume from values at flat ``voxels`` (default: all voxels in flat order); ``fill``
        elsewhere."""
        values = np.asarray(values)
        if voxels is None:
            if values.shape[-1] != self.n_voxels:
                raise ValueError(f"{values.shape[-1]} values for a grid of {self.n_voxels} voxels")
            flat = values
        else:
            flat = np.full(self.n_voxels, fill, dtype=np.result_type(values.dtype, np.asarray(fill).dtype))
            flat[np.asarray(voxels, dtype=np.int64)] = values
        return flat.reshape(self.shape, order="F")

    # ------------------------------------------------------------------ structures
    def resolve_structures(self, structures: Any) -> list[int]:
        """Structure ids for ids, acronyms or names (one or a list); :class:`UnknownStructureError` naming any
        unknown one. Numeric strings are ids (as in Allen's ``structures$eq315``)."""
        from brainmap.atlas.describe import resolve_structure

        if structures is None:
            raise SearchInputError("no structures given")
        items = [structures] if isinstance(structures, (str, int, np.integer)) else list(structures)
        if not items:
            raise SearchInputError("the list of structures is empty")
        ids: list[int] = []
        for item in items:
            if isinstance(item, (bool, np.bool_)):
                raise UnknownStructureError(f"not a structure: {item!r}")
            if isinstance(item, (int, np.integer)):
                ids.append(int(self.structure_tree.get_structures_by_id([int(item)])[0]["id"]))
            elif isinstance(item, str):
                ids.append(int(resolve_structure(self.structure_tree, item)["id"]))
            else:
                raise UnknownStructureError(f"not a structure id, acronym or name: {item!r}")
        return list(dict.fromkeys(ids))

    def structure_mask(self, structures: Any, hemisphere: int = HEMISPHERE_BOTH) -> np.ndarray:
        """Boolean (AP, DV, LR) mask of ``structures`` with all their descendants (one pass), optionally one
        hemisphere (1 left, 2 right, 3 both)."""
        ids = self.resolve_structures(structures)
        mask = self.space.make_structure_mask(ids)
        if hemisphere != HEMISPHERE_BOTH:
            mask &= self.space.hemisphere_mask(hemisphere)
        return mask

    def structure_voxels(self, structures: Any, hemisphere: int = HEMISPHERE_BOTH) -> np.ndarray:
        """Sorted flat indices of the voxels of ``structures`` (ids, acronyms or names) with descendants."""
        return np.flatnonzero(self.to_flat(self.structure_mask(structures, hemisphere))).astype(np.int64)

    def brain_voxels(self, hemisphere: int = HEMISPHERE_BOTH) -> np.ndarray:
        """Sorted flat indices of every annotated voxel (the root and all its descendants)."""
        return self.structure_voxels(self.structure_tree.root_ids(), hemisphere)

    def hemisphere_voxels(self, hemisphere: int) -> np.ndarray:
        """Sorted flat indices of one hemisphere's voxels (1 left: LR below the midline index; 2 right; 3 all)."""
        mask = self.space.hemisphere_mask(hemisphere)
        return np.flatnonzero(self.to_flat(mask)).astype(np.int64)

    # ------------------------------------------------------------------ points
    def voxels_containing(self, points_um: np.ndarray) -> np.ndarray:
        """(..., 3) voxel indices (AP, DV, LR) of the voxels containing (..., 3) points in microns; not checked
        against the grid's bounds (see :meth:`voxel_at_point`)."""
        points = np.asarray(points_um, dtype=np.float64)
        return np.floor((points - self.origin_um) / self.resolution_um).astype(np.int64)

    def voxel_at_point(self, point_um: Sequence[float], require_brain: bool = True) -> int:
        """Flat index of the voxel containing ``point_um`` (AP, DV, LR microns, as Allen's ``seed_point``).

        Raises :class:`SearchInputError` if the point is not three finite numbers, lies outside the grid, or
        (with ``require_brain``) in an unassigned voxel.
        """
        try:
            point = np.asarray(point_um, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise SearchInputError(f"a seed point is three numbers (AP, DV, LR) in microns, got {point_um!r}") from None
        if point.size != 3 or not np.all(np.isfinite(point)):
            raise SearchInputError(f"a seed point is three finite numbers (AP, DV, LR) in microns, got {point_um!r}")
        ijk = self.voxels_containing(point)
        if np.any(ijk < 0) or np.any(ijk >= np.asarray(self.shape)):
            low = self.origin_um
            high = (low + np.asarray(self.shape) * self.resolution_um).tolist()
            raise SearchInputError(
                f"seed point {point.tolist()} um lies outside the grid [{low:g}, {high}) um (AP, DV, LR)"
            )
        flat = int(self.flat_index(ijk))
        if require_brain and int(self._flat_annotation[flat]) == 0:
            raise SearchInputError(
                f"seed point {point.tolist()} um (voxel {ijk.tolist()}) lies outside the brain (unassigned voxel)"
            )
        return flat

    def __repr__(self) -> str:
        res = "x".join(f"{r:g}" for r in self.resolution_um)
        return f"SearchGrid(shape={self.shape}, resolution={res} um, voxels={self.n_voxels:,})"


@lru_cache(maxsize=1)
def _bundled_ish_grid() -> SearchGrid:
    return SearchGrid(expression_grid_space(), origin_um=EXPRESSION_GRID_ORIGIN_UM)


# ------------------------------------------------------------------------------------------------ coverage
def coverage_voxels(
    store: "MatrixStore", fraction: float = COVERAGE_FRACTION, planes: Iterable[str] | str | None = None
) -> np.ndarray:
    """Flat indices of the store's voxels with data in at least ``fraction`` of its data sets (of ``planes`` only,
    if given: ``coverage_voxels(store, planes="coronal")`` is Allen's "coronal only" set).

    Allen's rule is "> 80 %"; with 0.8 this keeps ``>= 80 %``, which differs only where the count is exactly 80 %.
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise SearchInputError(f"fraction must lie in [0, 1], got {fraction!r}")
    counts, n_rows = store.column_data_counts(planes)
    if n_rows == 0:
        raise SearchInputError(f"the store has no data sets{'' if planes is None else f' of plane(s) {planes!r}'}")
    keep = counts >= np.ceil(float(fraction) * n_rows - 1e-9)
    return store.columns[keep]


def read_coverage_mask(path: str | Path) -> np.ndarray:
    """A MINC2 (HDF5) mask on the 200 um grid as a boolean (AP, DV, LR) volume, e.g.
    ``ish/coronal_200um_coverage_bin0.8.mnc``.

    MINC stores the image as (z, y, x) = (DV, AP, LR) in world (RAS-like) directions; each axis is flipped
    where its ``step`` runs against PIR (AP posterior, DV inferior, LR right). Needs ``h5py``.
    """
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("reading MINC2 masks needs h5py (pip install h5py)") from error
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            image = f["minc-2.0/image/0/image"]
            data = image[()].astype(np.float64)
            order = image.attrs.get("dimorder", b"zspace,yspace,xspace")
            order = order.decode() if isinstance(order, bytes) else str(order)
            dims = [d.strip() for d in order.split(",")]
            steps = {d: float(f[f"minc-2.0/dimensions/{d}"].attrs["step"]) for d in dims}
            group = f["minc-2.0/image/0"]
            if "image-min" in group and "image-max" in group:  # per-slice scaling of the stored integers
                lo = np.asarray(group["image-min"][()], dtype=np.float64)
                hi = np.asarray(group["image-max"][()], dtype=np.float64)
                vrange = image.attrs.get("valid_range", np.array([0.0, 65535.0]))
                vmin, vmax = float(vrange[0]), float(vrange[1])
                shape = lo.shape + (1,) * (data.ndim - lo.ndim)
                data = lo.reshape(shape) + (data - vmin) / (vmax - vmin) * (hi - lo).reshape(shape)
    except (OSError, KeyError) as error:
        raise FormatError(f"{path}: not a readable MINC2 mask ({error})") from error
    axis_of = {"yspace": 0, "zspace": 1, "xspace": 2}  # world y = AP, z = DV, x = LR
    if sorted(dims) != sorted(axis_of):
        raise FormatError(f"{path}: expected dimensions xspace, yspace, zspace, got {dims}")
    volume = np.transpose(data, [dims.index(name) for name in ("yspace", "zspace", "xspace")])
    # PIR: AP grows posterior (world y grows anterior), DV grows inferior (world z grows superior), LR grows right.
    if steps["yspace"] > 0:
        volume = volume[::-1]
    if steps["zspace"] > 0:
        volume = volume[:, ::-1]
    if steps["xspace"] < 0:
        volume = volume[:, :, ::-1]
    return np.asfortranarray(volume > 0.5)


__all__ = [
    "COVERAGE_FRACTION",
    "GRID_RESOLUTION_UM",
    "GRID_SHAPE",
    "GRID_VOXELS",
    "HEMISPHERE_BOTH",
    "HEMISPHERE_LEFT",
    "HEMISPHERE_RIGHT",
    "SearchGrid",
    "coverage_voxels",
    "expression_grid_annotation",
    "midline_index",
    "read_coverage_mask",
]
