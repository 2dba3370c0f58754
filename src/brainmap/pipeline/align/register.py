"""Image registration primitives of the alignment module.

Two engines:

* **SimpleITK** (``ImageRegistrationMethod``, normalized correlation, regular-step gradient descent on random
  samples): :func:`register_volume` -- the coarse 3-D similarity search that picks the aligner's start -- and
  :func:`register_section` -- rigid 2-D registration of a section to a neighbour.
* **Levenberg-Marquardt on normalized correlation** (:func:`_lm_correlation`, vectorized numpy):
  :func:`register_affine_3d` (specimen volume -> template, 12 parameters) and :func:`register_affine_2d`
  (section -> template slice, 6 parameters). Gauss-Newton steps on ``sum (a m(T p) + b - f)^2`` with the
  intensity relation ``a, b`` refitted at every step, using every (or a large fixed subset of the) tissue
  voxels, coarse to fine. On the virtual microscope's specimens this found the 3-D transform several times
  more precisely than SimpleITK's sampled gradient descent (whose optimum wandered between rounds by tens of
  microns out of plane), and runs faster: the moving image and its gradient are interpolated together
  (:class:`Sampler`).

Conventions
-----------
* **Reference template**: a numpy array indexed (AP, DV, LR), voxel ``i`` covering microns
  ``[i*res, (i+1)*res)``. As a SimpleITK image (:func:`reference_image`) its physical axes are ``(x, y, z) =
  (AP, DV, LR)`` in microns, so a SimpleITK point *is* a reference point; :class:`Sampler` uses the same.
* **Specimen volume**: a numpy array indexed ``(sz, sy, sx)``; physical axes ``(sx, sy, sz)`` in specimen
  microns.
* **Section images** (2-D): numpy ``(rows, cols)``; physical axes ``(x, y)`` = (column, row) in whatever micron
  frame the caller gives through ``origin`` and ``spacing``.

The specimen (or section) is always the *fixed* image, so that its tissue mask chooses where the metric is
evaluated (a half brain, a torn section), and the template the *moving* one: the transform found maps fixed
points to moving points -- directly specimen -> reference (``tvr``), or image -> specimen (``tsv``).

Performance notes (2-core machine shared with other work): ``w @ a`` on long 1-D vectors went through
OpenBLAS's threaded dot product and was measured ~200x slower than ``einsum`` under load, and ``array[idx]`` on
``(n, c)`` tables ~10x slower than ``np.take(array, idx, axis=0)``; the hot loops avoid both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from brainmap.pipeline.align import _sampler
from brainmap.specimen.transforms import Affine2d, Affine3d

__all__ = [
    "Grid2d",
    "RegistrationResult2d",
    "Sampler",
    "TemplatePyramid",
    "RegistrationResult3d",
    "affine_from_sitk",
    "affine_to_sitk",
    "block_mean",
    "image_2d",
    "reference_image",
    "register_affine_2d",
    "register_affine_3d",
    "register_section",
    "register_volume",
    "sample_reference",
    "specimen_image",
]


# -- numpy <-> SimpleITK -------------------------------------------------------------------------------------
def reference_image(volume: np.ndarray, resolution_um: float | Sequence[float]) -> sitk.Image:
    """A reference-space volume indexed (AP, DV, LR) as a float32 SimpleITK image whose physical axes are
    ``(x, y, z) = (AP, DV, LR)`` microns (voxel centres at ``(i + 0.5) * res``)."""
    res = np.broadcast_to(np.asarray(resolution_um, dtype=np.float64), (3,))
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(r) for r in res))
    image.SetOrigin(tuple(float(r) / 2 for r in res))
    return image


def specimen_image(volume: np.ndarray, origin_um: Sequence[float], spacing_um: Sequence[float]) -> sitk.Image:
    """A specimen volume indexed ``(sz, sy, sx)`` as a SimpleITK image with physical axes ``(sx, sy, sz)``
    microns. ``origin_um`` and ``spacing_um`` are ``(sx, sy, sz)``; the origin is the centre of voxel 0."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume))
    image.SetOrigin(tuple(float(v) for v in origin_um))
    image.SetSpacing(tuple(float(v) for v in spacing_um))
    return image


def image_2d(array: np.ndarray, origin: Sequence[float], spacing: float | Sequence[float]) -> sitk.Image:
    """A 2-D ``(rows, cols)`` array as a SimpleITK image with physical ``(x, y)`` = (column, row) axes;
    ``origin`` is the physical position of the centre of pixel ``[0, 0]``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in np.broadcast_to(np.asarray(spacing, dtype=np.float64), (2,))))
    return image


def affine_to_sitk(affine: Affine2d | Affine3d, center: Sequence[float] | None = None) -> sitk.AffineTransform:
    """An Affine2d/Affine3d as a SimpleITK AffineTransform (same mapping), optionally with a rotation centre
    (a better-conditioned parameterization for optimization; the mapping is unchanged)."""
    n = affine.NDIM
    transform = sitk.AffineTransform(n)
    transform.SetMatrix(tuple(float(v) for v in affine.matrix.ravel()))
    c = np.zeros(n) if center is None else np.asarray(center, dtype=np.float64)
    # p -> A (p - c) + c + t'  equals  A p + b  when  t' = b - c + A c
    transform.SetCenter(tuple(float(v) for v in c))
    transform.SetTranslation(tuple(float(v) for v in affine.translation - c + affine.matrix @ c))
    return transform


def affine_from_sitk(transform: sitk.Transform, ndim: int) -> Affine2d | Affine3d:
    """The affine mapping of a SimpleITK matrix-offset transform (Affine, Euler, Similarity, ...)."""
    kind = Affine2d if ndim == 2 else Affine3d
    matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(ndim, ndim)  # type: ignore[attr-defined]
    center = np.asarray(transform.GetCenter(), dtype=np.float64)  # type: ignore[attr-defined]
    translation = np.asarray(transform.GetTranslation(), dtype=np.float64)  # type: ignore[attr-defined]
    return kind(matrix, translation + center - matrix @ center)


# -- small image helpers -------------------------------------------------------------------------------------
def block_mean(array: np.ndarray, factor: int | Sequence[int]) -> np.ndarray:
    """Mean over ``factor``-sized blocks along every axis (float32); the incomplete blocks at the high end of an
    axis are dropped, so output element ``i`` covers input elements ``[i*f, (i+1)*f)`` exactly."""
    a = np.asarray(array, dtype=np.float32)
    f = np.broadcast_to(np.asarray(factor, dtype=np.int64), (a.ndim,))
    if np.all(f == 1):
        return a
    n = [s // k for s, k in zip(a.shape, f)]
    a = a[tuple(slice(0, m * k) for m, k in zip(n, f))]
    shape: list[int] = []
    for m, k in zip(n, f):
        shape += [m, int(k)]
    return a.reshape(shape).mean(axis=tuple(range(1, 2 * a.ndim, 2)), dtype=np.float32)


def sample_reference(volume: np.ndarray, resolution_um: float, points_um: np.ndarray,
                     order: int = 1) -> np.ndarray:
    """Values of a reference volume (AP, DV, LR) at reference points ``(..., 3)`` microns (AP, DV, LR);
    ``order`` 1 = trilinear; 0 outside the volume."""
    p = np.asarray(points_um, dtype=np.float64)
    coords = (p.reshape(-1, 3) / float(resolution_um) - 0.5).T
    values = ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0, prefilter=False)
    return values.reshape(p.shape[:-1]).astype(np.float32)


# -- registration --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistrationResult3d:
    """A 3-D registration's outcome: ``transform`` maps specimen ``(sx, sy, sz)`` um to reference
    ``(AP, DV, LR)`` um; ``metric`` is the final metric value (negative normalized correlation: -1 is perfect)."""

    transform: Affine3d
    metric: float
    iterations: int
    stop: str


@dataclass(frozen=True)
class RegistrationResult2d:
    """A 2-D registration's outcome: ``transform`` maps fixed-image physical points to moving-image physical
    points; ``metric`` as in :class:`RegistrationResult3d`."""

    transform: Affine2d
    metric: float
    iterations: int
    start_metric: float = float("nan")


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK's warnings (e.g. a thread that drew no sample) go to stderr; silence them during a registration."""
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def _method(samples: int, seed: int, mask: sitk.Image | None, fixed: sitk.Image) -> sitk.ImageRegistrationMethod:
    """A correlation registration method sampling about ``samples`` random fixed points (within the mask).

    The metric's whole-image gradient filters are off (the gradient is computed at the sample points only):
    with a few thousand samples, filtering the whole template at every call would cost more than the
    registration itself."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    available = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) if mask is not None \
        else int(np.prod(fixed.GetSize()))
    fraction = samples / max(1, available)
    if fraction < 1.0:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(fraction, seed)
    else:
        method.SetMetricSamplingStrategy(method.NONE)
    if mask is not None:
        method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _observe_start(method: sitk.ImageRegistrationMethod) -> list[float]:
    """Record the metric value of the first iteration (the value at the initial transform)."""
    values: list[float] = []

    def record() -> None:
        if not values:
            values.append(float(method.GetMetricValue()))

    method.AddCommand(sitk.sitkIterationEvent, record)
    return values


def _regular_step(method: sitk.ImageRegistrationMethod, learning_rate: float, min_step: float,
                  iterations: int) -> None:
    """Regular-step gradient descent with ITK's physical-shift scales: a step of ``learning_rate`` moves points
    by about that many physical units, whatever the parameter."""
    method.SetOptimizerAsRegularStepGradientDescent(learning_rate, min_step, iterations, relaxationFactor=0.5,
                                                    gradientMagnitudeTolerance=1e-10)
    method.SetOptimizerScalesFromPhysicalShift()


def register_volume(fixed: sitk.Image, fixed_mask: sitk.Image | None, moving: sitk.Image, initial: Affine3d, *,
                    center: Sequence[float], samples: int = 20000, iterations: int = 100,
                    learning_rate_um: float = 200.0, min_step_um: float = 2.0,
                    similarity_only: bool = False, seed: int = 7) -> RegistrationResult3d:
    """A 3-D registration with SimpleITK: the affine (or, with ``similarity_only``, a rotation + uniform scale +
    translation applied before the initial affine) that maximizes the normalized correlation between the
    specimen volume (fixed) and the template (moving) over the fixed mask. Never worse than ``initial``: if the
    optimizer ends with a lower correlation than it started with, ``initial`` is returned.

    Args:
        fixed: specimen volume, physical axes (sx, sy, sz) um.
        fixed_mask: where the metric is evaluated (uint8), or None for everywhere.
        moving: template, physical axes (AP, DV, LR) um.
        initial: starting specimen -> reference transform.
        center: rotation centre (specimen um), e.g. the tissue centroid.
        samples: number of fixed voxels sampled (at random, once) for the metric.
        iterations: maximum optimizer iterations.
        learning_rate_um / min_step_um: first and last step of the regular-step gradient descent, in microns
            of point displacement.
        similarity_only: optimize a 7-parameter similarity instead of a full affine.
        seed: sampling seed (a fixed seed makes the result reproducible).
    """
    method = _method(samples, seed, fixed_mask, fixed)
    _regular_step(method, learning_rate_um, min_step_um, iterations)
    start = _observe_start(method)
    if similarity_only:
        similarity = sitk.Similarity3DTransform()
        similarity.SetCenter(tuple(float(v) for v in center))
        method.SetMovingInitialTransform(affine_to_sitk(initial))  # applied after the optimized one
        method.SetInitialTransform(similarity, inPlace=True)
        with _quiet_itk():
            method.Execute(fixed, moving)
        result = initial.compose(affine_from_sitk(similarity, 3))  # type: ignore[arg-type]
    else:
        transform = affine_to_sitk(initial, center)
        method.SetInitialTransform(transform, inPlace=True)
        with _quiet_itk():
            method.Execute(fixed, moving)
        result = affine_from_sitk(transform, 3)
    final = float(method.GetMetricValue())
    if start and final > start[0]:
        result, final = initial, start[0]
    return RegistrationResult3d(result, final, int(method.GetOptimizerIteration()),  # type: ignore[arg-type]
                                method.GetOptimizerStopConditionDescription())


def register_section(fixed: sitk.Image, fixed_mask: sitk.Image | None, moving: sitk.Image, initial: Affine2d, *,
                     center: Sequence[float], kind: str = "affine", samples: int = 4000, iterations: int = 100,
                     learning_rate: float = 100.0, min_step: float = 0.5, seed: int = 7) -> RegistrationResult2d:
    """A 2-D registration with SimpleITK of one section image (fixed) to a 2-D target (moving), e.g. a
    neighbour section: maximizes the normalized correlation over the fixed mask. Never worse than ``initial``
    (see :func:`register_volume`).

    Args:
        fixed, moving: 2-D images, physical axes in microns.
        initial: starting fixed -> moving transform.
        center: rotation centre (fixed physical um).
        kind: ``"rigid"`` (rotation + translation, applied before ``initial``), ``"similarity"`` (+ uniform
            scale) or ``"affine"``.
        samples: number of fixed pixels sampled (at random, once) for the metric.
        learning_rate / min_step: first and last optimizer step, in microns of displacement.

    The result's ``start_metric`` is the metric at ``initial`` (from the first iteration).
    """
    method = _method(samples, seed, fixed_mask, fixed)
    _regular_step(method, learning_rate, min_step, iterations)
    start = _observe_start(method)
    if kind == "affine":
        transform = affine_to_sitk(initial, center)
        method.SetInitialTransform(transform, inPlace=True)
        with _quiet_itk():
            method.Execute(fixed, moving)
        result = affine_from_sitk(transform, 2)
    elif kind in ("rigid", "similarity"):
        inner = sitk.Euler2DTransform() if kind == "rigid" else sitk.Similarity2DTransform()
        inner.SetCenter(tuple(float(v) for v in center))
        method.SetMovingInitialTransform(affine_to_sitk(initial))  # applied after the optimized one
        method.SetInitialTransform(inner, inPlace=True)
        with _quiet_itk():
            method.Execute(fixed, moving)
        result = initial.compose(affine_from_sitk(inner, 2))  # type: ignore[arg-type]
    else:
        raise ValueError(f"kind must be 'rigid', 'similarity' or 'affine', got {kind!r}")
    final = float(method.GetMetricValue())
    start_metric = start[0] if start else final
    if final > start_metric:
        result, final = initial, start_metric
    return RegistrationResult2d(result, final, int(method.GetOptimizerIteration()),  # type: ignore[arg-type]
                                start_metric)


# -- Levenberg-Marquardt on normalized correlation (2-D sections, 3-D volume) --------------------------------------
@dataclass(frozen=True)
class Grid2d:
    """A 2-D image on a regular grid: ``values[r, c]`` sits at physical ``origin + (c, r) * spacing`` (x, y)."""

    values: np.ndarray
    origin: tuple[float, float]
    spacing: float


def _wsum(w: np.ndarray, a: np.ndarray) -> float:
    """``sum(w * a)``. (Not ``w @ a``: OpenBLAS's threaded dot product of long vectors was measured ~200x
    slower than this on a loaded 2-core machine.)"""
    return float(np.einsum("i,i->", w, a))


def _weighted_correlation(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    """Weighted Pearson correlation of ``a`` and ``b`` (0 if either is constant)."""
    sw = float(w.sum())
    if sw <= 0:
        return 0.0
    da, db = a - _wsum(w, a) / sw, b - _wsum(w, b) / sw
    den = float(np.sqrt(_wsum(w, da * da) * _wsum(w, db * db)))
    return _wsum(w, da * db) / den if den > 0 else 0.0


def _pack_with_gradient(values: np.ndarray, array_spacing: np.ndarray, reverse: bool) -> np.ndarray:
    """``(n, k + 1)`` float32 rows: each element of a ``k``-D float32 array and its gradient along the physical
    axes (array axes reversed when ``reverse``), per unit of ``array_spacing``.

    The same values as ``np.stack([values, *np.gradient(values, *array_spacing)], -1)`` (central differences
    inside, one-sided at the ends: numpy's expressions, float64 division by the float64 spacing, one rounding to
    float32), written straight into the packed rows: no per-axis gradient arrays, no stacking copy (a fifth of
    the time on a 50 um template: 0.42 -> 0.09 s)."""
    k = values.ndim
    packed = np.empty(values.shape + (k + 1,), dtype=np.float32)
    packed[..., 0] = values
    difference = np.empty(values.shape, dtype=np.float32)
    for axis in range(k):
        if values.shape[axis] < 2:
            raise ValueError("every axis of a Sampler's image needs at least 2 elements")
        dx = array_spacing[axis]
        f = np.moveaxis(values, axis, 0)  # views with the axis first
        out = np.moveaxis(packed[..., 1 + (k - 1 - axis if reverse else axis)], axis, 0)
        inner = np.moveaxis(difference, axis, 0)[1:-1]
        np.subtract(f[2:], f[:-2], out=inner)
        np.divide(inner, 2.0 * dx, out=out[1:-1])
        np.divide(f[1] - f[0], dx, out=out[0])
        np.divide(f[-1] - f[-2], dx, out=out[-1])
    return packed.reshape(-1, k + 1)


class Sampler:
    """Linear interpolation of a 2-D or 3-D image, and of its gradient, at physical points.

    Points are ``(k, n)`` arrays (one row per physical axis). Physical point ``p`` is at array index
    ``(p - origin) / spacing``, read in reversed order when ``reverse`` (a ``(rows, cols)`` image with physical
    ``(x, y)``), in the same order otherwise (a reference volume (AP, DV, LR) with physical (AP, DV, LR)).
    A point outside the array's cells is "outside": value 0, gradient 0, weight 0.

    The value and its gradient (central differences, physical units) are packed as the channels of one
    array and interpolated together: 2**k gathers of contiguous channel vectors per call, several times
    faster than one ``scipy.ndimage.map_coordinates`` per channel.
    """

    def __init__(self, values: np.ndarray, origin: Sequence[float], spacing: float | Sequence[float],
                 reverse: bool, with_gradient: bool = True) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        k = values.ndim
        self.origin = np.asarray(origin, dtype=np.float64)[:, None]
        self.spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (k,)).copy()[:, None]
        self.reverse = reverse
        self.shape = np.asarray(values.shape)
        self.values = values.ravel()
        self.strides = np.array([int(np.prod(values.shape[a + 1:])) for a in range(k)], dtype=np.int64)
        self.packed: np.ndarray | None = None
        if with_gradient:
            self.packed = _pack_with_gradient(values, self.spacing[::-1, 0] if reverse else self.spacing[:, 0],
                                              reverse)
        # the packed rows as single 16-byte items (3-D: value + 3 gradients, float32) for the corner gathers:
        # np.take of 1-D complex128 items moves the same bytes ~25 % faster than of (n, 4) float32 rows
        self._rows = self.packed.view(np.complex128).ravel() if k == 3 and self.packed is not None else None
        self._compiled: tuple[np.ndarray, ...] | None = None

    def __call__(self, points: np.ndarray, gradient: bool = True):
        """``(values, inside)`` or ``(values, inside, gradient (k, n))`` at ``(k, n)`` physical points.

        Compiled (:func:`._sampler.sample`): the same bits as :meth:`_sample_numpy`, the numpy expressions, which
        still interpolate a 3-D image with its gradient: there numpy's one gather of 16-byte rows per corner over
        all the points was measured faster than the compiled loop on the 50 um template (random points of the
        brain: 14 against 17-21 ms per 100 000), the other cases 1.2-3x slower (docs/performance-demo.md,
        round 8)."""
        if gradient and self.packed is None:
            raise ValueError("this Sampler was made without gradients")
        if gradient and self._rows is not None:
            return self._sample_numpy(points, gradient)
        if self._compiled is None:
            self._compiled = (self.origin[:, 0].copy(), self.spacing[:, 0].copy(), self.shape.astype(np.int64),
                              self.values.reshape(-1, 1))
        origin, spacing, shape, values = self._compiled
        out, valid = _sampler.sample(points, origin, spacing, self.reverse, shape, self.strides,
                                     self.packed if gradient else values)
        if not gradient:
            return out[0], valid
        return out[0], valid, out[1:]

    def _sample_numpy(self, points: np.ndarray, gradient: bool = True):
        """:meth:`__call__` in numpy (the expressions the compiled sampler reproduces; kept for its tests)."""
        if gradient and self.packed is None:
            raise ValueError("this Sampler was made without gradients")
        coords = (points - self.origin) / self.spacing
        if self.reverse:
            coords = coords[::-1]
        lower = np.floor(coords)
        frac = (coords - lower).astype(np.float32)
        lower = lower.astype(np.int64)
        k, n = frac.shape
        inside = np.ones(n, dtype=bool)
        for a in range(k):
            inside &= (lower[a] >= 0) & (lower[a] < self.shape[a] - 1)
            np.clip(lower[a], 0, self.shape[a] - 2, out=lower[a])
        base = np.einsum("a,an->n", self.strides, lower)
        # Each corner's weight is the product of its per-axis factors, multiplied left to right; the products of
        # the leading axes are shared between corners (the same float32 operations in the same order).
        one = np.float32(1.0)
        factors = [(one - frac[a], frac[a]) for a in range(k)]
        weights: list[tuple[np.ndarray, int]] = [(factors[0][0], 0), (factors[0][1], int(self.strides[0]))]
        for a in range(1, k):
            stride = int(self.strides[a])
            weights = [(w * factors[a][bit], offset + bit * stride) for w, offset in weights for bit in (0, 1)]
        out = None
        index = np.empty(n, dtype=np.int64)
        for weight, offset in weights:
            np.add(base, offset, out=index)
            # np.take: ~10x faster than fancy indexing here
            if not gradient:
                sample = np.take(self.values, index)
                sample *= weight
            elif self._rows is not None:
                sample = np.take(self._rows, index).view(np.float32).reshape(n, k + 1)
                # the weight repeated per channel: a contiguous product, 2x faster than broadcasting (n, 1)
                # against (n, 4) rows (whose inner loop is 4 long); the same float32 products
                sample.ravel()[...] *= np.repeat(weight, k + 1)
            else:
                sample = np.take(self.packed, index, axis=0)
                sample *= weight[:, None]
            if out is None:
                out = sample
            else:
                out += sample
        assert out is not None
        valid = inside.astype(np.float64)
        if not gradient:
            result = out.astype(np.float64)
            result *= valid
            return result, valid
        result = out.astype(np.float64)
        result *= valid[:, None]
        return result[:, 0], valid, np.ascontiguousarray(result[:, 1:].T)


def _affine_points(q: np.ndarray, matrix: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``matrix @ q + shift`` for ``(k, n)`` points, row by row (no BLAS call)."""
    out = np.empty_like(q)
    for i in range(q.shape[0]):
        out[i] = shift[i]
        for j in range(q.shape[0]):
            out[i] += matrix[i, j] * q[j]
    return out


@dataclass
class _Fit:
    matrix: np.ndarray
    shift: np.ndarray  # the image of the centre
    metric: float = 0.0
    iterations: int = 0


def _lm_correlation(q: np.ndarray, f: np.ndarray, sampler: Sampler, fit: _Fit, *, iterations: int,
                    tolerance: float) -> _Fit:
    """Levenberg-Marquardt: the affine ``p -> matrix q + shift`` (``q`` = ``(k, n)`` fixed points minus their
    centre) maximizing the correlation of ``f`` (fixed values) with ``sampler`` at the mapped points.

    Gauss-Newton on ``sum (a m(T q) + b - f)^2`` with ``a, b`` refitted at every iteration (minimizing it over
    ``a, b`` is maximizing the correlation); a step is kept only if the correlation rises. The parameters are
    scaled to microns of displacement (matrix entries times the points' RMS extent per axis). Stops after
    ``iterations`` steps or when a step moves points by less than ``tolerance`` microns.
    """
    k = q.shape[0]
    radius = np.sqrt(np.einsum("ij,ij->i", q, q) / q.shape[1])
    radius[radius == 0] = 1.0
    qn = q / radius[:, None]

    def cost(matrix: np.ndarray, shift: np.ndarray) -> float:
        v, inside = sampler(_affine_points(q, matrix, shift), gradient=False)
        return -_weighted_correlation(f, v, inside)

    matrix, shift = fit.matrix.copy(), fit.shift.copy()
    current = cost(matrix, shift)
    lam = 1e-3
    done = 0
    for _ in range(iterations):
        v, w, g = sampler(_affine_points(q, matrix, shift))
        sw = float(w.sum())
        if sw < 10:
            break
        vm, fm = _wsum(w, v) / sw, _wsum(w, f) / sw
        var_v = _wsum(w, (v - vm) ** 2)
        if var_v <= 0:
            break
        alpha = _wsum(w, (v - vm) * (f - fm)) / var_v
        r = (alpha * (v - vm) + fm - f) * w
        g *= alpha
        jac = np.concatenate([(g[:, None, :] * qn[None, :, :]).reshape(k * k, -1), g])  # (k*k + k, n)
        hessian = np.einsum("in,jn->ij", jac * w, jac)
        grad = np.einsum("in,n->i", jac, r)
        accepted = False
        step = np.zeros(k * k + k)
        for _ in range(6):
            step = np.linalg.solve(hessian + lam * np.diag(np.diag(hessian) + 1e-12), -grad)
            trial_matrix = matrix + step[: k * k].reshape(k, k) / radius[None, :]
            trial_shift = shift + step[k * k:]
            trial = cost(trial_matrix, trial_shift)
            if trial < current:
                matrix, shift, current = trial_matrix, trial_shift, trial
                lam = max(lam / 4, 1e-7)
                accepted = True
                break
            lam *= 8
        done += 1
        if not accepted or float(np.abs(step).max()) < tolerance:
            break
    return _Fit(matrix, shift, current, fit.iterations + done)


def _level_points(n_total: int, spacing: float, sigma: float, minimum: int) -> int:
    """How many points a level uses: all at sigma 0; fewer when smoothing makes neighbours redundant."""
    if sigma <= 0:
        return n_total
    return int(np.clip(n_total * (2 * spacing / sigma) ** 2, min(minimum, n_total), n_total))


def _tolerance(spacing: float, sigma: float) -> float:
    """Convergence tolerance (microns of displacement) of a level: 1/20 pixel at coarse levels, 1/50 at the
    finest."""
    return (0.05 if sigma > 0 else 0.02) * spacing


def register_affine_2d(fixed: Grid2d, fixed_mask: np.ndarray, moving: Grid2d, initial: Affine2d, *,
                       sigmas_um: Sequence[float] = (100.0, 50.0, 0.0), max_points: int = 20000,
                       iterations: int = 20, seed: int = 0) -> RegistrationResult2d:
    """The 2-D affine ``T`` (fixed physical -> moving physical) maximizing the normalized correlation between
    the fixed image over its mask and the moving image (:func:`_lm_correlation`), coarse to fine.

    Args:
        fixed: the section image (physical = image-um); fixed_mask: bool, same shape: the pixels that count.
        moving: the target image (e.g. the template in the section's plane, physical = specimen um).
        initial: starting ``T``.
        sigmas_um: Gaussian smoothing of both images at each level (coarse to fine), physical units; it sets
            the capture range (a few sigmas).
        max_points: at most this many mask pixels are used (a fixed random subset; fewer at coarse levels).
        iterations: at most this many steps per level.

    Returns:
        The registration result; ``metric`` and ``start_metric`` are ``-correlation`` at the end and at
        ``initial``, on the finest level (same points: comparable).
    """
    rows, cols = np.nonzero(fixed_mask)
    if rows.size < 10:
        return RegistrationResult2d(initial, 0.0, 0, 0.0)
    # work on the mask's bounding box (plus room for the widest smoothing): filtering costs less
    pad = int(np.ceil(3 * max(sigmas_um, default=0.0) / fixed.spacing)) + 1
    r0, c0 = max(0, rows.min() - pad), max(0, cols.min() - pad)
    values = fixed.values[r0: rows.max() + pad + 1, c0: cols.max() + pad + 1]
    fixed = Grid2d(values, (fixed.origin[0] + c0 * fixed.spacing, fixed.origin[1] + r0 * fixed.spacing),
                   fixed.spacing)
    rows, cols = rows - r0, cols - c0
    order = np.random.default_rng(seed).permutation(rows.size)[:max_points]  # nested subsets, coarse to fine
    rows, cols = rows[order], cols[order]
    points = np.asarray(fixed.origin)[:, None] + np.stack([cols, rows]) * fixed.spacing  # (2, n)
    center = points.mean(axis=1)
    fit = _Fit(initial.matrix.copy(), initial.apply(center))
    start_metric = 0.0
    for level, sigma in enumerate(sigmas_um):
        n = _level_points(points.shape[1], fixed.spacing, sigma, 2000)
        image = fixed.values.astype(np.float32)
        target = moving.values
        if sigma > 0:
            image = ndimage.gaussian_filter(image, sigma / fixed.spacing)
            target = ndimage.gaussian_filter(np.asarray(target, dtype=np.float32), sigma / moving.spacing)
        sampler = Sampler(target, moving.origin, moving.spacing, reverse=True)
        q, f = points[:, :n] - center[:, None], image[rows[:n], cols[:n]].astype(np.float64)
        if level == len(sigmas_um) - 1:
            v, inside = sampler(_affine_points(q, initial.matrix, initial.apply(center)), gradient=False)
            start_metric = -_weighted_correlation(f, v, inside)
        fit = _lm_correlation(q, f, sampler, fit, iterations=iterations,
                              tolerance=_tolerance(fixed.spacing, sigma))
    result = Affine2d(fit.matrix, fit.shift - fit.matrix @ center)
    return RegistrationResult2d(result, fit.metric, fit.iterations, start_metric)


class TemplatePyramid:
    """A reference volume (AP, DV, LR) at coarser voxels and smoothings, with gradients, made on demand and
    kept: the moving images of :func:`register_affine_3d`."""

    def __init__(self, volume: np.ndarray, resolution_um: float) -> None:
        self.volume = volume
        self.resolution_um = float(resolution_um)
        self._levels: dict[tuple[int, float], Sampler] = {}
        self._means: dict[int, np.ndarray] = {1: volume}

    def block_mean(self, factor: int) -> np.ndarray:
        """The volume block-averaged by ``factor`` (a power of two: each level is made from the one below)."""
        if factor not in self._means:
            self._means[factor] = block_mean(self.block_mean(factor // 2), 2)
        return self._means[factor]

    def sampler(self, voxel_um: float, sigma_um: float) -> Sampler:
        """The volume block-averaged to about ``voxel_um`` (a power-of-two factor, at least 1) and smoothed by
        ``sigma_um`` (Gaussian, microns), as a :class:`Sampler` with physical (AP, DV, LR) microns."""
        factor = 2 ** max(0, int(round(np.log2(max(voxel_um / self.resolution_um, 1.0)))))
        key = (factor, float(sigma_um))
        if key not in self._levels:
            res = self.resolution_um * factor
            values = self.block_mean(factor)
            if sigma_um > 0:
                values = ndimage.gaussian_filter(values, sigma_um / res)
            self._levels[key] = Sampler(values, (res / 2,) * 3, res, reverse=False)
        return self._levels[key]


def register_affine_3d(volume: np.ndarray, mask: np.ndarray, origin_um: Sequence[float],
                       spacing_um: Sequence[float], template: TemplatePyramid, initial: Affine3d, *,
                       sigmas_um: Sequence[float] = (200.0, 100.0, 0.0), template_um: float = 50.0,
                       max_points: int = 80000, iterations: int = 20, seed: int = 0) -> RegistrationResult3d:
    """The 3-D affine specimen -> reference maximizing the normalized correlation between the specimen volume
    over its mask and the template (:func:`_lm_correlation`), coarse to fine.

    Args:
        volume: the specimen volume ``(slots, rows, cols)`` = ``(sz, sy, sx)``; mask: bool/uint8, same shape.
        origin_um, spacing_um: ``(sx, sy, sz)`` of voxel ``[0, 0, 0]``'s centre, and the voxel spacing.
        template: the moving image.
        initial: starting specimen -> reference transform.
        sigmas_um: smoothing per level (coarse to fine): the specimen volume in-plane (sections are
            independent images), the template isotropically (on voxels of about half the sigma, at least
            ``template_um``).
        max_points: at most this many mask voxels (a fixed random subset; fewer at coarse levels).
        iterations: at most this many steps per level.
    """
    slots, rows, cols = np.nonzero(mask)
    if slots.size < 100:
        raise ValueError("the specimen volume's mask holds fewer than 100 voxels")
    order = np.random.default_rng(seed).permutation(slots.size)[:max_points]
    slots, rows, cols = slots[order], rows[order], cols[order]
    spacing = np.asarray(spacing_um, dtype=np.float64)
    points = np.asarray(origin_um, dtype=np.float64)[:, None] + np.stack([cols, rows, slots]) * spacing[:, None]
    center = points.mean(axis=1)
    fit = _Fit(initial.matrix.copy(), initial.apply(center))
    for sigma in sigmas_um:
        n = _level_points(points.shape[1], float(spacing[0]), sigma, 20000)
        image = volume if sigma <= 0 else ndimage.gaussian_filter(volume, (0.0, sigma / spacing[1],
                                                                           sigma / spacing[0]))
        sampler = template.sampler(max(template_um, sigma / 2), sigma)
        fit = _lm_correlation(points[:, :n] - center[:, None],
                              image[slots[:n], rows[:n], cols[:n]].astype(np.float64), sampler, fit,
                              iterations=iterations, tolerance=_tolerance(float(spacing[0]), sigma))
    result = Affine3d(fit.matrix, fit.shift - fit.matrix @ center)
    return RegistrationResult3d(result, fit.metric, fit.iterations, "Levenberg-Marquardt")
