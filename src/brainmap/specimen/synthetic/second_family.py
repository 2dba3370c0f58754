"""A second family of renderings that shares nothing with the detector's model (testing only).

The virtual microscope (:mod:`~brainmap.specimen.synthetic.render`) draws expressing cells as Gaussians whose
FWHM is the gene's cell diameter, with camera noise of variance ``a + b * counts`` -- the very model
:func:`~brainmap.pipeline.detect.detect_section` assumes (half-maximum cut, ``a + b * background`` noise fit). A
detector measured only on those images measures its own assumptions. This family keeps the virtual specimen's
geometry and truth (its sections, transforms and signal density: so its 200 um grids are compared with the same
truth), and draws everything else another way:

* **cells**: ellipses (axis ratio 1 to 2.2, any orientation) of their own size (equivalent diameter lognormal
  about :data:`CELL_DIAMETER_UM`, not the gene's), a flat soma with granular texture and a dimmer nucleus, a
  third of them with a touching partner; at a rate that makes the density the expected covered fraction
  (:func:`cluster_area_um2`); rendered on a sub-pixel lattice and averaged into pixels;
* **optics**: an out-of-focus pillbox PSF (radius 1-3 um per section) plus a long exponential halo, not a
  Gaussian;
* **stain and background**: unspecific stain following the tissue with a strong smooth modulation (+-40 %)
  and a gradient across the section; per-section stain strength;
* **structured noise**: row and column stripes, tiles with their own gain and bright or dark seams, dust (dark
  blobs of 20-80 um) and soft bright debris (40-100 um), hot pixels, and camera noise that is Gamma (shot)
  times a multiplicative gain noise plus spatially correlated readout noise.

The truth is the same definition as the virtual microscope's: a pixel is signal when its centre lies inside a
cell's ellipse (and tissue). Connectivity (:func:`render_connectivity_second_family`): curved fibre segments with
varicosities instead of a thresholded random field, an injection site that does not saturate, the same noise.
Nothing in ``brainmap.pipeline`` imports this module.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
from scipy import ndimage, signal

from brainmap.specimen.synthetic.render import pixel_reference_um, sample_volume

__all__ = ["CELL_DIAMETER_UM", "cluster_area_um2", "crop_second_family", "render_connectivity_second_family",
           "render_ish_second_family"]

#: Median equivalent diameter of this family's cells (um); each cell's is lognormal (sigma 0.2) about it.
CELL_DIAMETER_UM = 16.0
_DIAMETER_SIGMA = 0.2
#: Share of cells drawn with a touching partner.
PARTNER_SHARE = 0.33
#: Sub-pixel lattice: at least this many sub-pixels per pixel side, and sub-pixels no larger than this (um).
_SUB_MAX = 6
_SUB_UM = 1.0


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """A smooth random field of unit standard deviation (Gaussian-filtered white noise on a coarse lattice)."""
    step = max(1, int(sigma_px // 4))
    coarse = rng.standard_normal((shape[0] // step + 2, shape[1] // step + 2))
    coarse = ndimage.gaussian_filter(coarse, max(sigma_px / step, 0.5), mode="wrap")
    coarse /= coarse.std() + 1e-12
    field = ndimage.zoom(coarse, step, order=1)[: shape[0], : shape[1]] if step > 1 else coarse[: shape[0], : shape[1]]
    out = np.zeros(shape)
    out[: field.shape[0], : field.shape[1]] = field
    return out


def _shapes(rng: np.random.Generator, n: int, pixel_um: float) -> tuple[np.ndarray, ...]:
    """Semi-axes a, b (pixels), angle (rad) and brightness of ``n`` cells: equivalent diameter lognormal
    (sigma :data:`_DIAMETER_SIGMA`) about :data:`CELL_DIAMETER_UM`, axis ratio uniform 1-2.2, any orientation."""
    d = CELL_DIAMETER_UM * rng.lognormal(0.0, _DIAMETER_SIGMA, n) / pixel_um
    ratio = rng.uniform(1.0, 2.2, n)
    a, b = d / 2 * np.sqrt(ratio), d / 2 / np.sqrt(ratio)
    return a, b, rng.uniform(0, np.pi, n), rng.lognormal(0.0, 0.35, n)


def _partners(rng: np.random.Generator, cells: np.ndarray) -> np.ndarray:
    """A touching partner of each of ``cells`` (rows as :func:`_cells`'): the same size, about one cell away
    (``(a + b) x U(0.8, 1.05)`` in any direction), its own orientation and brightness."""
    p = cells.copy()
    direction = rng.uniform(0, 2 * np.pi, len(p))
    reach = (p[:, 2] + p[:, 3]) * rng.uniform(0.8, 1.05, len(p))
    p[:, 0] += reach * np.cos(direction)
    p[:, 1] += reach * np.sin(direction)
    p[:, 4] = rng.uniform(0, np.pi, len(p))
    p[:, 5] = rng.lognormal(0.0, 0.35, len(p))
    return p


@lru_cache(maxsize=1)
def cluster_area_um2(samples: int = 50_000, points: int = 32) -> float:
    """The mean area (um^2) one of :func:`_cells`' clusters covers: a cell (``pi / 4 E[d^2]``), and with
    probability :data:`PARTNER_SHARE` its partner, less the two's overlap (a fixed Monte Carlo sample of the
    overlap: points uniform in the cell, the share inside its partner). Clusters at a Poisson rate
    ``-ln(1 - d) / area`` cover a fraction ``d`` of the plane on average (overlaps of independent clusters included)."""
    rng = np.random.default_rng(0xCE11)
    a, b, angle, bright = _shapes(rng, samples, 1.0)
    cells = np.stack([np.zeros(samples), np.zeros(samples), a, b, angle, bright], axis=1)
    partner = _partners(rng, cells)
    r, t = np.sqrt(rng.random((samples, points))), rng.uniform(0, 2 * np.pi, (samples, points))
    u, v = a[:, None] * r * np.cos(t), b[:, None] * r * np.sin(t)  # in the cell's own axes
    x = u * np.cos(angle)[:, None] - v * np.sin(angle)[:, None] - partner[:, :1]
    y = u * np.sin(angle)[:, None] + v * np.cos(angle)[:, None] - partner[:, 1:2]
    cos, sin = np.cos(partner[:, 4:5]), np.sin(partner[:, 4:5])
    inside = ((x * cos + y * sin) / partner[:, 2:3]) ** 2 + ((-x * sin + y * cos) / partner[:, 3:4]) ** 2 <= 1.0
    area = np.pi * a * b
    overlap = np.mean(area * inside.mean(axis=1)) / np.mean(area)  # the share of a cell its partner covers: 0.044
    mean_area = np.pi / 4.0 * CELL_DIAMETER_UM ** 2 * np.exp(2.0 * _DIAMETER_SIGMA ** 2)  # lognormal: E[d^2]
    return float(mean_area * (1.0 + PARTNER_SHARE * (1.0 - overlap)))


def _cells(rng: np.random.Generator, density: np.ndarray, pixel_um: float) -> np.ndarray:
    """Cells ``(n, 6)``: centre x, y (pixels), semi-axes a, b (pixels), angle (rad), brightness. Clusters (a cell
    and perhaps its partner) at a Poisson rate that makes ``density`` the expected covered fraction
    (:func:`cluster_area_um2`)."""
    height, width = density.shape
    rate = -np.log1p(-np.clip(density, 0.0, 0.9)) / cluster_area_um2() * pixel_um ** 2
    counts = rng.poisson(rate).ravel()
    pixel = np.repeat(np.arange(counts.size), counts)
    n = pixel.size
    x = pixel % width + rng.random(n)
    y = pixel // width + rng.random(n)
    cells = np.stack([x, y, *_shapes(rng, n, pixel_um)], axis=1)
    partner = rng.random(n) < PARTNER_SHARE
    if partner.any():
        cells = np.concatenate([cells, _partners(rng, cells[partner])])
    return cells


def _ellipses(shape: tuple[int, int], cells: np.ndarray, scale: float, with_nucleus: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    """On a lattice ``scale`` times finer than the pixels: (index of the cell covering each point or -1,
    whether the point is in that cell's nucleus). Points are lattice centres; vectorized over cells."""
    height, width = shape
    owner = np.full(height * width, -1, dtype=np.int64)
    nucleus = np.zeros(height * width, dtype=bool)
    if len(cells) == 0:
        return owner.reshape(shape), nucleus.reshape(shape)
    cx, cy = cells[:, 0] * scale, cells[:, 1] * scale
    a, b = cells[:, 2] * scale, cells[:, 3] * scale
    cos, sin = np.cos(cells[:, 4]), np.sin(cells[:, 4])
    reach = int(np.ceil(max(a.max(), 1.0))) + 1
    col0, row0 = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
    for dy in range(-reach, reach + 1):  # offsets of the cells' bounding squares, not pixels
        for dx in range(-reach, reach + 1):
            col, row = col0 + dx, row0 + dy
            u = (col + 0.5 - cx) * cos + (row + 0.5 - cy) * sin
            v = -(col + 0.5 - cx) * sin + (row + 0.5 - cy) * cos
            r2 = (u / a) ** 2 + (v / b) ** 2
            inside = (r2 <= 1.0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
            flat = row[inside] * width + col[inside]
            owner[flat] = np.nonzero(inside)[0]
            if with_nucleus:
                nucleus[flat] = r2[inside] <= 0.4 ** 2
    return owner.reshape(shape), nucleus.reshape(shape)


def _psf(rng: np.random.Generator, sub_um: float) -> np.ndarray:
    """Out-of-focus pillbox (radius 1-3 um) plus a 10 % exponential halo (scale 6 um), on the sub-pixel lattice."""
    radius = rng.uniform(1.0, 3.0) / sub_um
    reach = int(np.ceil(max(radius, 18.0 / sub_um)))
    y, x = np.mgrid[-reach: reach + 1, -reach: reach + 1]
    r = np.hypot(x, y)
    disc = np.clip(radius + 0.5 - r, 0.0, 1.0)
    halo = np.exp(-r * sub_um / 6.0)
    kernel = 0.9 * disc / disc.sum() + 0.1 * halo / halo.sum()
    return kernel / kernel.sum()


def _structured_camera(rng: np.random.Generator, expected: np.ndarray, pixel_um: float, max_count: int
                       ) -> np.ndarray:
    """Expected counts -> uint16 counts with dust, debris, tiles and seams, stripes and this family's camera
    noise (module docstring)."""
    shape = expected.shape
    expected = expected.copy()
    # Dust (dark) and debris (soft, bright, larger than cells), per mm^2.
    area_mm2 = shape[0] * shape[1] * (pixel_um / 1000.0) ** 2
    yy, xx = np.mgrid[0: shape[0], 0: shape[1]]
    for kind, per_mm2, size_um, factor in (("dust", 3.0, (20.0, 80.0), (0.35, 0.8)),
                                           ("debris", 1.0, (40.0, 100.0), (1.15, 1.4))):
        for _ in range(rng.poisson(per_mm2 * area_mm2)):
            cx, cy = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
            radius = rng.uniform(*size_um) / 2.0 / pixel_um
            r = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) / max(radius, 0.5)
            profile = np.exp(-r ** 4) if kind == "debris" else (r <= 1.0) * 1.0
            expected *= 1.0 + (rng.uniform(*factor) - 1.0) * profile

    # Tiles with their own gain and seams; row and column stripes.
    tile_px = rng.uniform(600.0, 900.0) / pixel_um
    offset = rng.uniform(0, tile_px, 2)
    tile_row = np.floor((np.arange(shape[0]) + offset[0]) / tile_px).astype(int)
    tile_col = np.floor((np.arange(shape[1]) + offset[1]) / tile_px).astype(int)
    gains = rng.normal(1.0, 0.06, (tile_row.max() + 1, tile_col.max() + 1))
    expected *= gains[tile_row[:, None], tile_col[None, :]]
    seam_rows = np.flatnonzero(np.diff(tile_row)) + 1
    seam_cols = np.flatnonzero(np.diff(tile_col)) + 1
    seam = rng.choice([0.8, 1.15])
    expected[seam_rows, :] *= seam
    expected[:, seam_cols] *= seam
    expected *= (1.0 + 0.03 * _smooth(rng, (shape[0], 1), 2.0))
    expected *= (1.0 + 0.02 * _smooth(rng, (1, shape[1]), 2.0))

    # Camera: Gamma shot noise (variance 2.5 x counts), a multiplicative gain noise, correlated readout noise.
    shot = rng.gamma(np.maximum(expected, 1e-3) / 2.5, 2.5)
    shot *= 1.0 + 0.02 * rng.standard_normal(shape)
    shot += 15.0 * ndimage.gaussian_filter(rng.standard_normal(shape), 0.7) / 0.4
    hot = rng.random(shape) < 2e-5
    shot[hot] = max_count
    return np.clip(np.rint(shot), 0, max_count).astype(np.uint16)


def render_ish_second_family(plan, section, sources, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``(images {"tissue", "signal"} uint16, true signal pixels bool)`` of one ISH section (module docstring);
    ``plan`` / ``section`` / ``sources`` as the virtual microscope's (:mod:`~brainmap.specimen.synthetic.render`)."""
    rng = np.random.default_rng([int(seed), int(section.section_number), 0xB2])
    shape = (plan.height, plan.width)
    pixel_um = float(plan.pixel_size_um)
    ref = pixel_reference_um(plan, section)
    res = sources.resolution_um
    tissue = np.clip(sample_volume(sources.tissue, res, ref), 0.0, None).astype(np.float64)
    density = np.clip(sample_volume(sources.signal_density, res, ref), 0.0, 1.0)
    intensity = (sample_volume(sources.expression_intensity, res, ref, order=0)
                 if sources.expression_intensity is not None else np.ones(shape, np.float32))
    present = tissue > 0.02

    cells = _cells(rng, density, pixel_um)
    inside = np.clip(np.floor(cells[:, 0]).astype(int), 0, shape[1] - 1), np.clip(np.floor(cells[:, 1]).astype(int),
                                                                                     0, shape[0] - 1)
    cells[:, 5] *= 0.4 + 0.6 * intensity[inside[1], inside[0]]
    owner, _ = _ellipses(shape, cells, 1.0, with_nucleus=False)
    truth = (owner >= 0) & present

    # The cells on the sub-pixel lattice: flat soma with granules, a dimmer nucleus.
    scale = int(min(_SUB_MAX, max(1, np.ceil(pixel_um / _SUB_UM))))
    sub_shape = (shape[0] * scale, shape[1] * scale)
    sub_owner, sub_nucleus = _ellipses(sub_shape, cells, float(scale), with_nucleus=True)
    sub_um = pixel_um / scale
    granules = 1.0 + 0.25 * _smooth(rng, sub_shape, 0.8 / sub_um)
    brightness = np.append(cells[:, 5], 0.0)  # index -1 (no cell): 0
    stain = brightness[sub_owner] * granules
    stain *= np.where(sub_nucleus, 0.55, 1.0)
    stain = signal.fftconvolve(stain, _psf(rng, sub_um), mode="same")
    stain = stain.reshape(shape[0], scale, shape[1], scale).mean(axis=(1, 3))

    # Stain and background: unspecific stain following the tissue, modulated, with a gradient.
    modulation = 1.0 + 0.4 * np.tanh(_smooth(rng, shape, 500.0 / pixel_um))
    gy, gx = np.mgrid[0: shape[0], 0: shape[1]] / max(shape)
    gradient = 1.0 + rng.uniform(-0.3, 0.3) * gx + rng.uniform(-0.3, 0.3) * gy
    strength = rng.uniform(0.7, 1.4)
    background = 800.0 * tissue * modulation * gradient
    expected = 150.0 + background + 9000.0 * strength * stain * present

    signal_counts = _structured_camera(rng, expected, pixel_um, 16383)

    tissue_expected = 140.0 + 6500.0 * tissue * (1.0 + 0.15 * _smooth(rng, shape, 6.0 / pixel_um))
    tissue_counts = rng.gamma(np.maximum(tissue_expected, 1e-3) / 2.0, 2.0)
    tissue_counts = np.clip(np.rint(tissue_counts), 0, 16383).astype(np.uint16)
    return {"tissue": tissue_counts, "signal": signal_counts}, truth


#: Connectivity: fibre segments' length (um, uniform) and width (um), and the least fraction of a pixel's area an
#: axon must cover to make it a true axon pixel (a tenth: a fibre crossing a 10 um pixel over 8 um or more).
FIBRE_LENGTH_UM = (15.0, 50.0)
FIBRE_WIDTH_UM = 1.2
FIBRE_MIN_COVER = 0.1


def _fibres(rng: np.random.Generator, x0: np.ndarray, y0: np.ndarray, angle: np.ndarray, shape: tuple[int, int],
            pixel_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Curved fibre segments centred at ``(x0, y0)`` (pixels) along ``angle`` (rad): ``(length of fibre in each
    pixel (pixels), light in each pixel)`` -- each segment's brightness lognormal, 3 % of its points 3x brighter
    (varicosities)."""
    n = x0.size
    bend = rng.normal(0, 0.8, n)  # radians over the segment
    seg_px = rng.uniform(*FIBRE_LENGTH_UM, n) / pixel_um
    steps = int(np.ceil(seg_px.max() / 0.2)) + 1
    t = np.linspace(0.0, 1.0, steps)[None, :]
    theta = angle[:, None] + bend[:, None] * (t - 0.5)
    ds = (seg_px / (steps - 1))[:, None]
    xs = x0[:, None] + np.cumsum(np.cos(theta) * ds, axis=1) - seg_px[:, None] / 2 * np.cos(angle[:, None])
    ys = y0[:, None] + np.cumsum(np.sin(theta) * ds, axis=1) - seg_px[:, None] / 2 * np.sin(angle[:, None])
    col, row = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    ok = (col >= 0) & (col < shape[1]) & (row >= 0) & (row < shape[0])
    step_len = np.broadcast_to(ds, xs.shape)
    flat = row[ok] * shape[1] + col[ok]
    length = np.bincount(flat, weights=step_len[ok], minlength=shape[0] * shape[1]).reshape(shape)
    brightness = np.broadcast_to(rng.lognormal(0.0, 0.4, n)[:, None], xs.shape)
    bouton = rng.random(xs.shape) < 0.03  # varicosities: 3x brighter points
    weight = step_len * brightness * np.where(bouton, 3.0, 1.0)
    light = np.bincount(flat, weights=weight[ok], minlength=shape[0] * shape[1]).reshape(shape)
    return length, light


@lru_cache(maxsize=16)
def axon_pixels_per_segment(pixel_um: float, samples: int = 3000) -> float:
    """The mean number of axon pixels (fibre length >= ``FIBRE_MIN_COVER * pixel / FIBRE_WIDTH_UM``) one
    segment makes at ``pixel_um``, segments drawn apart from one another (a fixed Monte Carlo sample: 0.42 x
    the pixels a segment touches at 10 um, where many are only clipped)."""
    rng = np.random.default_rng(0xF1B3)
    side = int(np.ceil(2 * FIBRE_LENGTH_UM[1] / pixel_um)) + 4
    grid = max(4, min(int(np.ceil(np.sqrt(samples))), 2048 // side))  # at most ~4 M pixels
    shape = (grid * side, grid * side)
    k = np.arange(grid * grid)
    x0 = (k % grid) * side + side / 2 + rng.random(k.size)
    y0 = (k // grid) * side + side / 2 + rng.random(k.size)
    length, _ = _fibres(rng, x0, y0, rng.uniform(0, 2 * np.pi, k.size), shape, pixel_um)
    axon = np.count_nonzero(length * FIBRE_WIDTH_UM / pixel_um >= FIBRE_MIN_COVER)
    return max(float(axon) / k.size, 1e-3)


def render_connectivity_second_family(plan, section, sources, seed: int = 0, fibre_rate: str = "axon"
                                      ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``(images {"tissue", "signal"} uint16, true signal pixels bool)`` of one connectivity section drawn by this
    family: axons as curved fibre segments with varicosities, rasterized by their length in each pixel (a pixel
    is an axon pixel when fibre covers at least :data:`FIBRE_MIN_COVER` of it) at Poisson positions whose
    rate gives the density's fraction of axon pixels (``fibre_rate="axon"``, the default: the truth's own
    definition) or, as first drawn, of the pixels a fibre touches (``"touched"``: only ~0.42 of those are axon
    pixels at 10 um, so its truth masks hold ~0.42 d along axons; kept for scale); the injection site (fraction >= 0.5) a bright textured
    cloud at 55-75 % of full scale -- not saturated -- with a wide glow that is not signal; the structured
    noise and camera of the ISH family."""
    rng = np.random.default_rng([int(seed), int(section.section_number), 0xC3])
    shape = (plan.height, plan.width)
    pixel_um = float(plan.pixel_size_um)
    ref = pixel_reference_um(plan, section)
    res = sources.resolution_um
    tissue = np.clip(sample_volume(sources.tissue, res, ref), 0.0, None).astype(np.float64)
    density = np.clip(sample_volume(sources.signal_density, res, ref), 0.0, 0.95).astype(np.float64)
    injection = (sample_volume(sources.injection_fraction, res, ref)
                 if sources.injection_fraction is not None else np.zeros(shape, np.float32))
    present = tissue > 0.02
    site = (injection >= 0.5) & present
    density = np.where(injection > 0, density * (1.0 - injection), density)  # the site's own signal is the cloud

    # Segments at Poisson starts, rate -ln(1 - d) / (pixels per segment). "touched": the pixels a segment
    # touches, ~1 + 1.27 L / pixel, so d is the fraction of pixels a fibre touches -- and only ~0.4 d are axon
    # pixels at 10 um (the site's pixels are all signal: the truth then holds ~0.4 d along axons, d at the site).
    # "axon": the axon pixels a segment makes (:func:`axon_pixels_per_segment`), so d is the expected fraction of
    # axon pixels, as the truth volume says.
    if fibre_rate == "axon":
        per_segment = axon_pixels_per_segment(pixel_um)
    elif fibre_rate == "touched":
        per_segment = 1.0 + 1.27 * np.mean(FIBRE_LENGTH_UM) / pixel_um
    else:
        raise ValueError(f"fibre_rate must be 'touched' or 'axon', got {fibre_rate!r}")
    rate = -np.log1p(-density) / per_segment
    counts = rng.poisson(rate).ravel()
    start = np.repeat(np.arange(counts.size), counts)
    n = start.size
    if n:
        x0 = start % shape[1] + rng.random(n)
        y0 = start // shape[1] + rng.random(n)
        field = _smooth(rng, shape, 1500.0 / pixel_um)
        angle = np.pi * (0.5 + 0.5 * np.tanh(field.ravel()[start])) + rng.normal(0, 0.4, n)
        length, light = _fibres(rng, x0, y0, angle, shape, pixel_um)
    else:
        length = light = np.zeros(shape)
    truth = ((length * FIBRE_WIDTH_UM / pixel_um >= FIBRE_MIN_COVER) | site) & present
    # Light of a fibre in a pixel: its covered area (length x width / pixel area), then a pillbox blur.
    fibres = light * (FIBRE_WIDTH_UM / pixel_um)
    radius = rng.uniform(1.0, 3.0) / pixel_um
    if radius > 0.5:
        fibres = ndimage.uniform_filter(fibres, int(2 * radius) | 1)
    cloud = np.where(site, rng.uniform(0.55, 0.75) * (1.0 + 0.1 * _smooth(rng, shape, 20.0 / pixel_um)), 0.0)
    glow = ndimage.gaussian_filter(site.astype(np.float64), max(80.0 / pixel_um, 0.5)) * 0.15
    background = 250.0 * tissue * (1.0 + 0.4 * np.tanh(_smooth(rng, shape, 500.0 / pixel_um)))
    max_count = 4095
    expected = 50.0 + background + 2600.0 * fibres * present + max_count * np.maximum(cloud, glow) * present
    signal_counts = _structured_camera(rng, expected, pixel_um, max_count)
    tissue_expected = 60.0 + 1500.0 * tissue * (1.0 + 0.15 * _smooth(rng, shape, 6.0 / pixel_um))
    tissue_counts = np.clip(np.rint(rng.gamma(np.maximum(tissue_expected, 1e-3) / 2.0, 2.0)), 0, max_count)
    return {"tissue": tissue_counts.astype(np.uint16), "signal": signal_counts}, truth


def crop_second_family(specimen, image, size_px: tuple[int, int], *, centre_reference_um,
                       fibre_rate: str = "axon"):
    """As :meth:`VirtualSpecimen.crop <brainmap.specimen.synthetic.replay.VirtualSpecimen.crop>`, drawn by this
    family: ``(images, truth, the window's SectionImage with its true Alignment2d)``; ``fibre_rate`` as
    :func:`render_connectivity_second_family`'s (connectivity only)."""
    from brainmap.specimen.model import SectionImage
    from brainmap.specimen.transforms import Affine2d, Alignment2d

    image_id = image.id if isinstance(image, SectionImage) else int(image)
    section = specimen.sections[image_id]
    pixel = float(specimen.plan.pixel_size_um)
    rows, cols = int(size_px[0]), int(size_px[1])
    tsv = section.alignment2d.tsv
    rotation = tsv.matrix / np.sqrt(abs(np.linalg.det(tsv.matrix)))
    centre_um = tuple(specimen.dataset.alignment3d.trv.apply(np.asarray(centre_reference_um, float))[:2])
    matrix = pixel * rotation
    translation = np.asarray(centre_um, dtype=np.float64) - matrix @ np.array([cols / 2.0, rows / 2.0])
    alignment = Alignment2d.from_tsv(Affine2d(matrix, translation))
    plan = replace(specimen.plan, pixel_size_um=pixel, width=cols, height=rows)
    window = replace(section, alignment2d=alignment, damage=[])
    if specimen.dataset.product == "ish":
        images, truth = render_ish_second_family(plan, window, specimen.sources, specimen.seed)
    else:
        images, truth = render_connectivity_second_family(plan, window, specimen.sources, specimen.seed, fibre_rate)
    own = SectionImage(id=section.image_id, section_number=section.section_number, channels=["tissue", "signal"],
                       width=cols, height=rows, alignment2d=alignment)
    return images, truth, own
