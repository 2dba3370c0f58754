"""Affine transforms between section images, the specimen volume and the reference space.

Three coordinate spaces take part (see ``docs/dataset-format.md`` for the full geometry):

* **image pixels** ``(x, y)``: ``x`` is the column, ``y`` the row of a section image, continuous, in pixels; the
  pixel stored at array index ``[r, c]`` covers ``x in [c, c+1)``, ``y in [r, r+1)``.
* **specimen volume** ``(sx, sy, sz)`` in microns: the cut brain, reconstructed. ``(sx, sy)`` is the in-plane
  position of a section (what :attr:`Alignment2d.tsv` gives for a pixel) and ``sz`` the position along the cutting
  axis (``section_number * section_thickness_um``).
* **reference space** ``(AP, DV, LR)`` in microns (PIR, as the CCF arrays).

Allen's names and parameter layouts
-----------------------------------
Allen's ``Alignment2d`` (one per SectionImage) stores ``tsv_00 .. tsv_05`` and ``tvs_00 .. tvs_05``; its
``Alignment3d`` (one per SectionDataSet) stores ``trv_00 .. trv_11`` and ``tvr_00 .. tvr_11``. The names read
"transform from *a* to *b*": ``s`` = section image, ``v`` = specimen volume, ``r`` = reference:

* ``tsv``: section image pixel -> volume;   ``tvs``: volume -> section image pixel;
* ``trv``: reference -> volume;             ``tvr``: volume -> reference.

AllenSDK's ``MouseConnectivityCache.get_affine_parameters(section_data_set_id, direction='trv')`` documents the
3-D pair this way: *trv: "transform from reference to volume". Maps CCF points to image space points ... tvr:
"transform from volume to reference". Maps image space points to CCF points.* (``allensdk/core/
mouse_connectivity_cache.py``). The Blue Brain Project's ``atldld.sync`` (``xy_to_pir`` uses ``tsv`` + ``tvr``,
``pir_to_xy`` uses ``tvs`` + ``trv``) agrees, and its test suite checks its local result against Allen's
``reference_to_image`` service.

The layout is row-major with the translation last. For an ``n``-D transform (``n`` = 2 or 3) with parameters
``p[0] .. p[n*n + n - 1]``::

    out[i] = sum_j p[n*i + j] * in[j] + p[n*n + i]

i.e. 2-D: ``[[p0, p1], [p2, p3]]`` + ``(p4, p5)``; 3-D: ``[[p0, p1, p2], [p3, p4, p5], [p6, p7, p8]]`` +
``(p9, p10, p11)``. This is what atldld's ``AFFINE_TEMPLATES`` use and what AllenSDK's own recipe
``sitk.AffineTransform(3).SetParameters(alignment.flatten())`` means (ITK parameters are the row-major matrix,
then the translation). Note: the same AllenSDK docstring also suggests ``np.dot([X1, X2, X3, 1], alignment)``
with the 4x3 array filled in parameter order; that applies the *transpose* of the matrix and disagrees with
both of the above unless the matrix is symmetric -- do not use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from brainmap.errors import BrainmapError

__all__ = [
    "INVERSE_TOLERANCE",
    "Affine2d",
    "Affine3d",
    "Alignment2d",
    "Alignment3d",
    "TransformError",
]

#: Relative tolerance of the check that a stored forward/inverse pair are inverses of each other. Loose enough
#: for parameters stored as 32-bit floats (as Allen's database does), tight enough to catch a wrong pair.
INVERSE_TOLERANCE = 1e-5


class TransformError(BrainmapError, ValueError):
    """A transform is malformed: wrong shape, missing or non-finite parameters, singular, or a stored
    forward/inverse pair that are not inverses of each other."""


_A = TypeVar("_A", bound="_Affine")


@dataclass(frozen=True, eq=False)
class _Affine:
    """``p -> matrix @ p + translation`` in ``NDIM`` dimensions; both arrays float64 and read-only."""

    matrix: np.ndarray
    translation: np.ndarray

    NDIM: ClassVar[int] = 0

    def __post_init__(self) -> None:
        n = self.NDIM
        matrix = np.array(self.matrix, dtype=np.float64)  # a copy: the caller's array may change later
        translation = np.array(self.translation, dtype=np.float64)
        name = type(self).__name__
        if matrix.shape != (n, n):
            raise TransformError(f"{name}: matrix must have shape ({n}, {n}), got {matrix.shape}")
        if translation.shape != (n,):
            raise TransformError(f"{name}: translation must have shape ({n},), got {translation.shape}")
        if not (np.isfinite(matrix).all() and np.isfinite(translation).all()):
            raise TransformError(f"{name}: parameters must be finite, got matrix {matrix.tolist()} and "
                                 f"translation {translation.tolist()}")
        matrix.setflags(write=False)
        translation.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)
        object.__setattr__(self, "translation", translation)

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def identity(cls: type[_A]) -> _A:
        """The identity transform."""
        return cls(np.eye(cls.NDIM), np.zeros(cls.NDIM))

    @classmethod
    def from_matrix(cls: type[_A], matrix: Any) -> _A:
        """From a homogeneous ``(n+1, n+1)`` matrix (last row must be ``[0, ..., 0, 1]``) or an ``(n, n+1)``
        matrix ``[A | t]``."""
        n = cls.NDIM
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape == (n + 1, n + 1):
            expected_last = np.zeros(n + 1)
            expected_last[n] = 1.0
            if not np.array_equal(m[n], expected_last):
                raise TransformError(f"{cls.__name__}.from_matrix: the last row of a homogeneous matrix must be "
                                     f"{expected_last.tolist()}, got {m[n].tolist()}")
        elif m.shape != (n, n + 1):
            raise TransformError(f"{cls.__name__}.from_matrix: expected shape ({n + 1}, {n + 1}) or "
                                 f"({n}, {n + 1}), got {m.shape}")
        return cls(m[:n, :n], m[:n, n])

    @classmethod
    def from_allen(cls: type[_A], params: Mapping[str, Any] | Sequence[float] | np.ndarray, prefix: str = "") -> _A:
        """From Allen's parameters: a mapping with keys ``f"{prefix}_{k:02d}"`` (other keys are ignored, so a
        whole Alignment2d/Alignment3d record can be passed), or a flat sequence of the ``n*n + n`` values in
        Allen's order (row-major matrix, then translation; see the module docstring).
        """
        count = cls.NDIM * cls.NDIM + cls.NDIM
        if isinstance(params, Mapping):
            if not prefix:
                raise TransformError(f"{cls.__name__}.from_allen: a prefix such as 'tsv' or 'tvr' is needed "
                                     "to read a mapping")
            keys = allen_keys(prefix, count)
            missing = [k for k in keys if k not in params or params[k] is None]
            if missing:
                raise TransformError(f"{cls.__name__}.from_allen: missing parameter(s) {', '.join(missing)}")
            raw = [params[k] for k in keys]
            where = [f"{k}={params[k]!r}" for k in keys]
        else:
            if isinstance(params, (str, bytes)):
                raise TransformError(f"{cls.__name__}.from_allen: expected a mapping or a sequence of numbers, "
                                     f"got {type(params).__name__}")
            raw = list(np.asarray(params, dtype=object).ravel())
            if len(raw) != count:
                raise TransformError(f"{cls.__name__}.from_allen: expected {count} parameters, got {len(raw)}")
            where = [f"[{k}]={v!r}" for k, v in enumerate(raw)]
        values = np.empty(count)
        for k, value in enumerate(raw):
            try:
                if isinstance(value, (bool, np.bool_)):
                    raise TypeError("a boolean is not a number")
                values[k] = float(value)
            except (TypeError, ValueError):
                raise TransformError(f"{cls.__name__}.from_allen: parameter {where[k]} is not a number") from None
        bad = [where[k] for k in np.flatnonzero(~np.isfinite(values))]
        if bad:
            raise TransformError(f"{cls.__name__}.from_allen: non-finite parameter(s) {', '.join(bad)}")
        n = cls.NDIM
        return cls(values[: n * n].reshape(n, n), values[n * n:])

    def to_allen(self, prefix: str) -> dict[str, float]:
        """Allen's parameter dict, e.g. ``{"tsv_00": ..., ..., "tsv_05": ...}`` (plain Python floats)."""
        values = np.concatenate([self.matrix.ravel(), self.translation])
        return {k: float(v) for k, v in zip(allen_keys(prefix, values.size), values)}

    def to_allen_params(self) -> np.ndarray:
        """The ``n*n + n`` parameters in Allen's order, as a new float64 array."""
        return np.concatenate([self.matrix.ravel(), self.translation])

    # -- use -----------------------------------------------------------------------------------------------
    def apply(self, points: Any) -> np.ndarray:
        """Transform points: ``(n,)`` -> ``(n,)``, or ``(..., n)`` -> ``(..., n)``, vectorized (float64)."""
        p = np.asarray(points, dtype=np.float64)
        if p.ndim == 0 or p.shape[-1] != self.NDIM:
            raise TransformError(f"{type(self).__name__}.apply: points must have shape (..., {self.NDIM}), "
                                 f"got {p.shape}")
        # Column by column: several times faster than a (..., n) @ (n, n) matmul on many points.
        out = np.empty(np.broadcast_shapes(p.shape), dtype=np.float64)
        for i in range(self.NDIM):
            row = self.matrix[i]
            column = p[..., 0] * row[0] + self.translation[i]
            for j in range(1, self.NDIM):
                column += p[..., j] * row[j]
            out[..., i] = column
        return out

    __call__ = apply

    def inverse(self: _A) -> _A:
        """The inverse transform; raises :class:`TransformError` if the matrix is singular."""
        det = float(np.linalg.det(self.matrix))
        cond = float(np.linalg.cond(self.matrix)) if det != 0.0 else np.inf
        if not np.isfinite(cond) or cond > 1e12:
            raise TransformError(f"{type(self).__name__}: the matrix {self.matrix.tolist()} is singular "
                                 f"(determinant {det:g}) and has no inverse")
        inv = np.linalg.inv(self.matrix)
        return type(self)(inv, -inv @ self.translation)

    def compose(self: _A, other: _A) -> _A:
        """``self ∘ other``: the transform that applies ``other`` first, then ``self``.

        ``a.compose(b).apply(p) == a.apply(b.apply(p))``; ``a @ b`` is the same.
        """
        if type(other) is not type(self):
            raise TransformError(f"cannot compose {type(self).__name__} with {type(other).__name__}")
        return type(self)(self.matrix @ other.matrix, self.matrix @ other.translation + self.translation)

    def __matmul__(self: _A, other: _A) -> _A:
        if not isinstance(other, _Affine):
            return NotImplemented
        return self.compose(other)

    def to_matrix(self) -> np.ndarray:
        """The homogeneous ``(n+1, n+1)`` matrix ``[[A, t], [0, 1]]`` (a new float64 array)."""
        n = self.NDIM
        m = np.eye(n + 1)
        m[:n, :n] = self.matrix
        m[:n, n] = self.translation
        return m

    def is_close(self, other: _Affine, rtol: float = 1e-9, atol: float = 1e-9) -> bool:
        """Whether both matrices and both translations agree within ``np.allclose(rtol, atol)``."""
        return (type(other) is type(self) and np.allclose(self.matrix, other.matrix, rtol=rtol, atol=atol)
                and np.allclose(self.translation, other.translation, rtol=rtol, atol=atol))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Affine)
        return bool(np.array_equal(self.matrix, other.matrix) and np.array_equal(self.translation, other.translation))

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.matrix.tobytes(), self.translation.tobytes()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(matrix={self.matrix.tolist()}, translation={self.translation.tolist()})"


@dataclass(frozen=True, eq=False, repr=False)
class Affine2d(_Affine):
    """A 2-D affine transform ``p -> matrix @ p + translation`` (matrix ``(2, 2)``, translation ``(2,)``).

    Used by :class:`Alignment2d` between image pixels ``(x = column, y = row)`` and the in-plane specimen
    position ``(sx, sy)`` in microns.
    """

    NDIM: ClassVar[int] = 2


@dataclass(frozen=True, eq=False, repr=False)
class Affine3d(_Affine):
    """A 3-D affine transform ``p -> matrix @ p + translation`` (matrix ``(3, 3)``, translation ``(3,)``).

    Used by :class:`Alignment3d` between the specimen volume ``(sx, sy, sz)`` and the reference space
    ``(AP, DV, LR)``, both in microns.
    """

    NDIM: ClassVar[int] = 3


def allen_keys(prefix: str, count: int) -> list[str]:
    """Allen's parameter names ``[f"{prefix}_00", ..., f"{prefix}_{count-1:02d}"]``."""
    return [f"{prefix}_{k:02d}" for k in range(count)]


def _check_inverse(forward: _Affine, backward: _Affine, names: tuple[str, str], tolerance: float) -> None:
    """Raise :class:`TransformError` unless ``backward ∘ forward`` is the identity within ``tolerance``.

    The matrix of the composition must be within ``tolerance`` of the identity; its translation within
    ``tolerance`` times the size of the terms that cancel in it (so large translations, in pixels or microns,
    are judged relatively).
    """
    both = backward.compose(forward)
    n = forward.NDIM
    matrix_error = float(np.max(np.abs(both.matrix - np.eye(n))))
    scale = 1.0 + float(np.max(np.abs(backward.matrix)) * np.max(np.abs(forward.translation))
                        + np.max(np.abs(backward.translation)))
    translation_error = float(np.max(np.abs(both.translation))) / scale
    if matrix_error > tolerance or translation_error > tolerance:
        raise TransformError(
            f"{names[1]} is not the inverse of {names[0]}: {names[1]} ∘ {names[0]} = {both!r} differs from the "
            f"identity by {max(matrix_error, translation_error):.3g} (relative), more than {tolerance:g}")


@dataclass(frozen=True)
class Alignment2d:
    """Allen's Alignment2d of one section image: pixel ``(x = column, y = row)`` <-> in-plane specimen
    position ``(sx, sy)`` in microns.

    Both directions are stored, as Allen stores them; construction checks that they are inverses of each other
    (within :data:`INVERSE_TOLERANCE`). Use :meth:`from_tsv` to build one from the forward transform alone.

    Attributes:
        tsv: section image pixel -> volume (microns).
        tvs: volume (microns) -> section image pixel.
    """

    tsv: Affine2d
    tvs: Affine2d

    def __post_init__(self) -> None:
        for name in ("tsv", "tvs"):
            if not isinstance(getattr(self, name), Affine2d):
                raise TransformError(f"Alignment2d.{name} must be an Affine2d, "
                                     f"got {type(getattr(self, name)).__name__}")
        _check_inverse(self.tsv, self.tvs, ("tsv", "tvs"), INVERSE_TOLERANCE)

    @classmethod
    def from_tsv(cls, tsv: Affine2d) -> Alignment2d:
        """From the image -> volume transform; ``tvs`` is its exact inverse."""
        return cls(tsv, tsv.inverse())

    @classmethod
    def from_allen(cls, params: Mapping[str, Any]) -> Alignment2d:
        """From a mapping holding ``tsv_00 .. tsv_05`` and ``tvs_00 .. tvs_05`` (e.g. Allen's record)."""
        return cls(Affine2d.from_allen(params, "tsv"), Affine2d.from_allen(params, "tvs"))

    def to_allen(self) -> dict[str, float]:
        """``{"tsv_00": ..., "tsv_05": ..., "tvs_00": ..., "tvs_05": ...}``."""
        return {**self.tsv.to_allen("tsv"), **self.tvs.to_allen("tvs")}


@dataclass(frozen=True)
class Alignment3d:
    """Allen's Alignment3d of one section data set: specimen volume ``(sx, sy, sz)`` <-> reference
    ``(AP, DV, LR)``, both in microns.

    Both directions are stored, as Allen stores them; construction checks that they are inverses of each other
    (within :data:`INVERSE_TOLERANCE`). Use :meth:`from_tvr` to build one from the forward transform alone.

    Attributes:
        trv: reference -> volume.
        tvr: volume -> reference.
    """

    trv: Affine3d
    tvr: Affine3d

    def __post_init__(self) -> None:
        for name in ("trv", "tvr"):
            if not isinstance(getattr(self, name), Affine3d):
                raise TransformError(f"Alignment3d.{name} must be an Affine3d, "
                                     f"got {type(getattr(self, name)).__name__}")
        _check_inverse(self.tvr, self.trv, ("tvr", "trv"), INVERSE_TOLERANCE)

    @classmethod
    def from_tvr(cls, tvr: Affine3d) -> Alignment3d:
        """From the volume -> reference transform; ``trv`` is its exact inverse."""
        return cls(tvr.inverse(), tvr)

    @classmethod
    def from_allen(cls, params: Mapping[str, Any]) -> Alignment3d:
        """From a mapping holding ``trv_00 .. trv_11`` and ``tvr_00 .. tvr_11`` (e.g. Allen's record)."""
        return cls(Affine3d.from_allen(params, "trv"), Affine3d.from_allen(params, "tvr"))

    def to_allen(self) -> dict[str, float]:
        """``{"trv_00": ..., "trv_11": ..., "tvr_00": ..., "tvr_11": ...}``."""
        return {**self.trv.to_allen("trv"), **self.tvr.to_allen("tvr")}
