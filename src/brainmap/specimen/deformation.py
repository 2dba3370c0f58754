"""A smooth non-linear deformation of the reference space, stored beside a data set's Alignment3d.

Allen ships per-data-set deformation fields as displacement volumes; Alignment3d stays the affine part. Here a
:class:`DeformationField` holds a displacement ``d`` (microns, 3 components ``(AP, DV, LR)``) sampled on a
regular grid of reference points; it maps an *affine* reference point ``p = tvr(s)`` to the *deformed*
reference point ``W(p) = p + d(p)`` (trilinear between grid points, the edge value held outside). The full
specimen -> reference map is therefore ``W o tvr`` and the reference -> specimen one ``trv o W^-1``;
:meth:`DeformationField.inverse_apply` inverts ``W`` by fixed-point iteration (exact to well under a micron
for the smooth fields used here, whose Jacobian stays far from singular).

On disk (:meth:`DeformationField.write`): one NRRD, ``float32`` of shape ``(3, nAP, nDV, nLR)`` with the grid
origin and spacing in its header (``space origin``, ``space directions``; the first axis is the vector
component).

Allen's download (:meth:`DeformationField.write_allen`): ``dfmfld.mhd`` + ``dfmfld.raw``, the WellKnownFileTypes
``DeformationFieldHeader`` / ``DeformationFieldVoxels`` that AllenSDK's ``download_deformation_field`` fetches
and ``MouseConnectivityCache.get_deformation_field`` reads (with SimpleITK, from ``experiment_{id}/dfmfld.mhd``
and ``dfmfld.raw``: the header names ``dfmfld.raw``). Allen: "a 3D vector image (3 components) describing a
deformable local mapping from CCF voxels to this section data set's affine-aligned image stack"; AllenSDK's
gridder composes it as ``CompositeTransform([affine trv, DisplacementFieldTransform(field)])``, i.e. a CCF point
``q`` goes to ``trv(q + D(q))``. Here ``D(q) = W^-1(q) - q`` at reference points every :data:`ALLEN_GRID_UM`:
MetaImage float32, axes ``(AP, DV, LR)`` with AP fastest (SimpleITK's x, y, z, as in Allen's CCF volumes),
three interleaved components ``(AP, DV, LR)`` in microns, ``Offset`` and ``ElementSpacing`` in microns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainmap.errors import BrainmapError

__all__ = ["ALLEN_FILE_TYPES", "ALLEN_GRID_UM", "ALLEN_HEADER_FILE", "ALLEN_VOXEL_FILE", "DEFORMATION_FILE",
           "DeformationField", "DeformationFormatError"]

#: The file name of a data set's deformation field, beside ``dataset.json``.
DEFORMATION_FILE = "deformation.nrrd"
#: Grid spacing of Allen's download form (microns): the inverse field is sampled this finely.
ALLEN_GRID_UM = 200.0
#: The header and voxel files of Allen's download form, beside ``dataset.json`` (AllenSDK's cache names).
ALLEN_HEADER_FILE, ALLEN_VOXEL_FILE = "dfmfld.mhd", "dfmfld.raw"
#: Allen's WellKnownFileType names of the download form, by file name.
ALLEN_FILE_TYPES = {ALLEN_HEADER_FILE: "DeformationFieldHeader", ALLEN_VOXEL_FILE: "DeformationFieldVoxels"}


class DeformationFormatError(BrainmapError, ValueError):
    """A deformation field file is unreadable or malformed."""


@dataclass(frozen=True)
class DeformationField:
    """Displacement ``d`` on a regular reference grid: ``W(p) = p + d(p)``.

    Attributes:
        displacement: float32 ``(3, nAP, nDV, nLR)``, microns; component ``c`` at grid index ``(i, j, k)`` is
            the displacement of the reference point ``origin_um + (i, j, k) * spacing_um``.
        origin_um: reference ``(AP, DV, LR)`` of grid index ``(0, 0, 0)``, microns.
        spacing_um: grid spacing, microns (the same along the three axes).
    """

    displacement: np.ndarray
    origin_um: np.ndarray
    spacing_um: float

    def __post_init__(self) -> None:
        d = np.asarray(self.displacement, dtype=np.float32)
        if d.ndim != 4 or d.shape[0] != 3:
            raise DeformationFormatError(f"a deformation field is (3, nAP, nDV, nLR); got shape {d.shape}")
        if not np.all(np.isfinite(d)):
            raise DeformationFormatError("a deformation field must hold finite displacements")
        if not (np.isfinite(self.spacing_um) and self.spacing_um > 0):
            raise DeformationFormatError(f"grid spacing must be a positive number of microns, got {self.spacing_um}")
        object.__setattr__(self, "displacement", np.ascontiguousarray(d))
        object.__setattr__(self, "origin_um", np.asarray(self.origin_um, dtype=np.float64).reshape(3))

    def displacement_at(self, points_um: np.ndarray) -> np.ndarray:
        """``d`` at reference points ``(n, 3)`` (microns), trilinear, edge values held outside: ``(n, 3)``."""
        p = np.asarray(points_um, dtype=np.float64).reshape(-1, 3)
        coords = ((p - self.origin_um) / self.spacing_um).T
        return np.stack([ndimage.map_coordinates(self.displacement[c], coords, order=1, mode="nearest",
                                                 prefilter=False) for c in range(3)], axis=1)

    def apply(self, points_um: np.ndarray) -> np.ndarray:
        """``W(p) = p + d(p)`` for affine reference points ``(n, 3)`` (microns)."""
        p = np.asarray(points_um, dtype=np.float64).reshape(-1, 3)
        return p + self.displacement_at(p)

    def inverse_apply(self, points_um: np.ndarray, iterations: int = 30, tolerance_um: float = 0.01) -> np.ndarray:
        """``W^-1(q)``: the affine reference points whose deformed images are ``q`` ``(n, 3)`` (fixed-point
        iteration ``p <- q - d(p)``)."""
        q = np.asarray(points_um, dtype=np.float64).reshape(-1, 3)
        p = q.copy()
        for _ in range(iterations):
            new = q - self.displacement_at(p)
            step = float(np.max(np.abs(new - p))) if p.size else 0.0
            p = new
            if step < tolerance_um:
                break
        return p

    def magnitude_um(self) -> np.ndarray:
        """``|d|`` at every grid point, microns."""
        return np.sqrt((self.displacement.astype(np.float64) ** 2).sum(axis=0))

    # -- files ----------------------------------------------------------------------------------------------
    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write as NRRD (atomically): float32 ``(3, nAP, nDV, nLR)``, origin and spacing in the header."""
        import nrrd

        header = {"kinds": ["vector", "domain", "domain", "domain"], "space dimension": 3,
                  "space directions": np.vstack([np.full(3, np.nan), np.eye(3) * self.spacing_um]),
                  "space origin": [float(v) for v in self.origin_um], "encoding": "gzip",
                  "content": "brainmap deformation: reference (AP, DV, LR) um displacement, W(p) = p + d(p)"}
        path = Path(path)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            nrrd.write(str(partial), self.displacement, header, index_order="C")
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def inverse_displacement_grid(self, spacing_um: float = ALLEN_GRID_UM) -> tuple[np.ndarray, np.ndarray]:
        """``D(q) = W^-1(q) - q`` on a grid of reference points every ``spacing_um`` over this field's extent.

        Returns:
            ``(D, origin_um)``: float32 ``(nAP, nDV, nLR, 3)`` microns, and the reference point of index 0.
        """
        extent = (np.asarray(self.displacement.shape[1:]) - 1) * self.spacing_um
        shape = np.floor(extent / spacing_um).astype(int) + 1
        axes = [self.origin_um[a] + np.arange(shape[a]) * spacing_um for a in range(3)]
        q = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        inverse = (self.inverse_apply(q) - q).astype(np.float32).reshape(*shape, 3)
        return inverse, self.origin_um.copy()

    def write_allen(self, folder: str | os.PathLike[str], spacing_um: float = ALLEN_GRID_UM) -> tuple[Path, Path]:
        """Write Allen's download form (module docstring) into ``folder``: ``dfmfld.mhd`` and ``dfmfld.raw``,
        each atomically, voxels first. Returns the two paths."""
        from brainmap.io.atomic import atomic_write
        from brainmap.io.metaimage import MetaImageHeader, format_metaimage_header

        inverse, origin = self.inverse_displacement_grid(spacing_um)
        header_name, voxels_name = ALLEN_HEADER_FILE, ALLEN_VOXEL_FILE
        header = MetaImageHeader(dim_size=tuple(int(n) for n in inverse.shape[:3]),
                                 element_spacing=(float(spacing_um),) * 3, element_type="MET_FLOAT",
                                 offset=tuple(float(v) for v in origin), element_data_file=voxels_name, channels=3)
        # components fastest, then AP, DV, LR: the C order of (LR, DV, AP, component)
        payload = np.ascontiguousarray(inverse.transpose(2, 1, 0, 3), dtype="<f4").tobytes()
        folder = Path(folder)
        with atomic_write(folder / voxels_name) as fh:
            fh.write(payload)
        with atomic_write(folder / header_name) as fh:
            fh.write(format_metaimage_header(header))
        return folder / header_name, folder / voxels_name

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> DeformationField:
        """Read a field written by :meth:`write`.

        Raises:
            FileNotFoundError: no such file.
            DeformationFormatError: not a readable NRRD of the expected shape and header.
        """
        import nrrd

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such deformation field file")
        try:
            data, header = nrrd.read(str(path), index_order="C")
        except Exception as exc:  # pynrrd raises several kinds for a damaged file
            raise DeformationFormatError(f"{path}: not a readable NRRD: {exc}") from exc
        data = np.asarray(data)
        try:
            directions = np.asarray(header["space directions"], dtype=np.float64)
            directions = directions[np.all(np.isfinite(directions), axis=1)]
            spacing = float(np.abs(directions).max(axis=1).mean())
            origin = np.asarray(header["space origin"], dtype=np.float64)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise DeformationFormatError(f"{path}: header lacks the grid's space directions/origin: {exc}") from exc
        try:
            return cls(data, origin, spacing)
        except DeformationFormatError as exc:
            raise DeformationFormatError(f"{path}: {exc}") from exc
