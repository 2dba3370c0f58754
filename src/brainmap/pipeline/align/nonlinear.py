"""The non-linear stage: a smooth deformation of the reference space after the 3-D affine.

The specimen volume's tissue voxels ``s`` are mapped into the reference by the affine (``p = tvr(s)``) and a
displacement field ``d`` is sought so that the target template (the specimen's own per-structure intensity
model, or a template with the specimen's contrast) sampled at ``p + d(p)`` correlates best with the specimen's
values. ``d`` is a free-form deformation: displacements at the nodes of a regular control grid every
:data:`CONTROL_UM` over the specimen's extent, trilinear between them, estimated by Gauss-Newton with one 3 x 3
block per node (the coupling between nodes is left out of the normal equations), the intensity relation
``a m + b`` refitted at every step (correlation), and regularized by smoothing the node displacements with a
Gaussian of :data:`SMOOTH_NODES` nodes after every step (a step is kept only if the correlation rises).
Coarse to fine: the template smoothed by 200, 100 and 50 um. The node grid *is* the stored
:class:`~brainmap.specimen.deformation.DeformationField` (trilinear between nodes; edge values held outside).

Why not SimpleITK's B-spline registration (the issue's suggestion): on this 2-core machine shared with other
work, one metric evaluation of a ~1 M voxel resampled specimen with a 1 mm B-spline mesh took 6 s and one
L-BFGS-B iteration 25 s (measured): minutes per data set against the 60 s budget of the whole alignment. This
vectorized numpy estimator, sharing the affine stages' interpolator, takes seconds. ANTsPy (``antspyx``) was not
tried: a heavy dependency for a diffeomorphic field whose extra freedom the smooth 100-300 um deformations of a
sectioned brain do not need.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from brainmap.specimen.deformation import DeformationField
from brainmap.specimen.transforms import Affine3d

from brainmap.pipeline.align.reconstruct import SpecimenVolume
from brainmap.pipeline.align.register import TemplatePyramid, _weighted_correlation, _wsum

__all__ = ["CONTROL_UM", "MAX_DISPLACEMENT_UM", "SMOOTH_NODES", "register_deformation"]

log = logging.getLogger(__name__)

#: Control grid spacing (um).
CONTROL_UM = 700.0
#: Gaussian smoothing (in nodes) of the node displacements after each step: the regularization.
SMOOTH_NODES = 1.0
#: Largest displacement (um) a node may take.
MAX_DISPLACEMENT_UM = 500.0
#: Template smoothing per level (um) and Gauss-Newton steps per level.
LEVELS_UM = (200.0, 100.0, 50.0)
#: The template is sampled on voxels of at least this size (um): at 25 um the finest level's sampler (values and
#: gradients, 4 x float32 per voxel) alone took 1.2 GB, and with its temporaries it set the alignment's peak
#: memory (4.4 GB measured on 134 sections); a 50 um smoothing is sampled well enough on 50 um voxels.
MIN_VOXEL_UM = 50.0
STEPS = 8


class _Grid:
    """Trilinear weights of fixed points on the node grid (computed once)."""

    def __init__(self, points: np.ndarray, origin: np.ndarray, spacing: float, shape: tuple[int, int, int]):
        coords = (points - origin[:, None]) / spacing
        lower = np.clip(np.floor(coords).astype(np.int64), 0, np.array(shape)[:, None] - 2)
        frac = np.clip(coords - lower, 0.0, 1.0)
        self.shape = shape
        self.index = []
        self.weight = []
        strides = np.array([shape[1] * shape[2], shape[2], 1])
        for corner in np.ndindex(2, 2, 2):
            w = np.ones(points.shape[1])
            for a, bit in enumerate(corner):
                w = w * (frac[a] if bit else 1.0 - frac[a])
            self.index.append(np.einsum("a,an->n", strides, lower + np.array(corner)[:, None]))
            self.weight.append(w)
        self.n_nodes = int(np.prod(shape))

    def interpolate(self, nodes: np.ndarray) -> np.ndarray:
        """``(3, n)`` displacements at the points from ``(3, n_nodes)`` node values."""
        out = np.zeros((3, self.weight[0].size))
        for idx, w in zip(self.index, self.weight):
            out += np.take(nodes, idx, axis=1) * w
        return out

    def scatter(self, values: np.ndarray) -> np.ndarray:
        """``(c, n_nodes)`` sums over the points of ``values (c, n)`` times each point's node weight."""
        out = np.zeros((values.shape[0], self.n_nodes))
        for idx, w in zip(self.index, self.weight):
            for c in range(values.shape[0]):
                out[c] += np.bincount(idx, weights=values[c] * w, minlength=self.n_nodes)
        return out


def register_deformation(volume: SpecimenVolume, tvr: Affine3d, pyramid: TemplatePyramid, *,
                         control_um: float = CONTROL_UM, max_points: int = 150000, seed: int = 0,
                         in_plane: bool = False) -> tuple[DeformationField | None, float, float]:
    """The free-form deformation after ``tvr`` (module docstring) registering the specimen volume to the
    template ``pyramid``.

    ``in_plane``: displacements only within the sectioning plane (the component along the section normal,
    ``tvr``'s third column, is removed at every step): for sparse sections, whose spacing leaves the
    through-plane displacement unconstrained.

    Returns:
        ``(field, correlation before, correlation after)``; field None if nothing improved the correlation.
    """
    slots, rows, cols = np.nonzero(volume.mask)
    if slots.size < 1000:
        return None, float("nan"), float("nan")
    order = np.random.default_rng(seed).permutation(slots.size)[:max_points]
    slots, rows, cols = slots[order], rows[order], cols[order]
    spacing = np.asarray(volume.spacing_um, dtype=np.float64)
    specimen = np.asarray(volume.origin_um)[:, None] + np.stack([cols, rows, slots]) * spacing[:, None]
    points = tvr.matrix @ specimen + tvr.translation[:, None]
    f_full = volume.volume[slots, rows, cols].astype(np.float64)
    lo = np.floor(points.min(axis=1) / control_um - 2) * control_um
    hi = np.ceil(points.max(axis=1) / control_um + 2) * control_um
    shape = tuple(int(v) for v in np.round((hi - lo) / control_um) + 1)
    grid = _Grid(points, lo, control_um, shape)  # type: ignore[arg-type]
    nodes = np.zeros((3, grid.n_nodes))
    normal = tvr.matrix[:, 2] / np.linalg.norm(tvr.matrix[:, 2]) if in_plane else None

    def correlation(sampler, nodes_: np.ndarray) -> float:
        v, w = sampler(points + grid.interpolate(nodes_), gradient=False)
        return _weighted_correlation(f_full, v, w)

    first_sampler = pyramid.sampler(max(pyramid.resolution_um, LEVELS_UM[-1] / 2, MIN_VOXEL_UM), LEVELS_UM[-1])
    before = correlation(first_sampler, nodes)
    for sigma in LEVELS_UM:
        sampler = pyramid.sampler(max(pyramid.resolution_um, sigma / 2, MIN_VOXEL_UM), sigma)
        current = correlation(sampler, nodes)
        lam = 0.1
        for _ in range(STEPS):
            v, w, g = sampler(points + grid.interpolate(nodes))
            sw = float(w.sum())
            if sw < 100:
                break
            vm, fm = _wsum(w, v) / sw, _wsum(w, f_full) / sw
            var_v = _wsum(w, (v - vm) ** 2)
            if var_v <= 0:
                break
            alpha = _wsum(w, (v - vm) * (f_full - fm)) / var_v
            r = (alpha * (v - vm) + fm - f_full) * w
            g = g * alpha
            b = grid.scatter(g * r)  # (3, nodes)
            hh = grid.scatter(np.stack([g[0] * g[0], g[0] * g[1], g[0] * g[2], g[1] * g[1], g[1] * g[2],
                                        g[2] * g[2]]) * w)
            hessian = np.empty((grid.n_nodes, 3, 3))
            for (i, j), k in zip(((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)), range(6)):
                hessian[:, i, j] = hessian[:, j, i] = hh[k]
            trace = np.trace(hessian, axis1=1, axis2=2) / 3.0
            floor = 1e-3 * float(trace.max()) + 1e-12
            accepted = False
            for _ in range(4):
                damped = hessian + ((lam * trace + floor)[:, None, None] * np.eye(3)[None])
                step = -np.linalg.solve(damped, b.T[:, :, None])[:, :, 0].T
                trial = nodes + step
                trial = np.stack([ndimage.gaussian_filter(trial[c].reshape(shape), SMOOTH_NODES, mode="nearest")
                                  .ravel() for c in range(3)])
                if normal is not None:
                    trial -= normal[:, None] * (normal @ trial)[None, :]
                size = np.sqrt((trial ** 2).sum(axis=0))
                trial *= np.minimum(1.0, MAX_DISPLACEMENT_UM / np.maximum(size, 1e-9))[None, :]
                value = correlation(sampler, trial)
                if value > current:
                    nodes, current = trial, value
                    lam = max(lam / 3, 1e-3)
                    accepted = True
                    break
                lam *= 4
            if not accepted:
                break
        log.debug("deformation at %g um: correlation %.4f", sigma, current)
    after = correlation(first_sampler, nodes)
    if not after > before:
        return None, before, after
    field = DeformationField(nodes.reshape((3,) + shape).astype(np.float32), lo, control_um)
    log.info("deformation: correlation %.3f -> %.3f, largest %.0f um", before, after,
             float(field.magnitude_um().max()))
    return field, before, after
