"""Rendering section images: the virtual microscope's camera.

For each section (one at a time; every step is vectorized over the section's pixels), every pixel centre is
mapped through the TRUE ``tsv`` and ``tvr`` to reference microns and the reference volumes are sampled there
(trilinear, :func:`scipy.ndimage.map_coordinates`):

* **tissue** channel -- the Nissl-like template (:func:`~brainmap.specimen.synthetic.template.make_template`)
  times a fine cellular grain. For connectivity it stands for the red (background) channel of the two-photon
  images; for ISH for the counterstain separated from the brightfield colour image (stain amount: higher =
  more stain, glass is dark).
* **signal** channel -- drawn from the truth signal density ``d`` (expected fraction of signal pixels):

  - connectivity (the green GFP channel): labelled axons as many short, thin bright fibres. A Gaussian random
    field ``F`` made of independent noises filtered by elongated Gaussians (sigma 6 um along, 1 um across, at
    least 1 and 0.5 pixel) at three orientations, blended by a smooth random local fibre direction (so ``F``
    stays exactly standard normal), turned into a uniform field ``U = Phi(F)``: pixels with ``U > 1 - d`` are
    signal, so the expected fraction of signal pixels is ``d`` exactly, and the fibre pieces are short enough
    that a 100 um voxel of one section holds hundreds of them at 5-10 um pixels (its fraction of signal pixels
    estimates ``d`` to a few percent where ``d`` is not tiny). The injection site (injection fraction > 0) is
    bright and saturates the 12-bit range.
  - ISH (the expression stain): expressing cells as Gaussian spots (FWHM = the gene's cell diameter, 10-15 um)
    at Poisson positions with rate ``-ln(1 - d) / cell area`` per um^2 (so the expected area covered by the
    cell discs is ``d``, overlaps included), each with the structure's expression intensity times a lognormal
    factor. A spot's integral is kept whatever the pixel size, and each pixel records its integral over the pixel's
    box (as a camera integrates light over its pixels), so coarse pixels average the stain.

Realism: a smooth multiplicative illumination field over each image and tile vignetting (seams every
``tile_um``), per-section and per-channel brightness variation, background (autofluorescence / unspecific
stain) in the tissue, shot noise (variance proportional to the counts) and readout noise, ``uint16`` output
within 12 bits (connectivity, 0..4095) or 14 bits (ISH, 0..16383). Damage drawn by
:mod:`~brainmap.specimen.synthetic.geometry` (tears, bubbles, lost tissue) applies to both channels.

Every random draw comes from ``numpy.random.default_rng([seed, section_number, ...])``: a section renders the
same whatever the order or subset of sections rendered.

:func:`render_section` returns the images; :func:`render_section_truth` the same images with the true signal of
every pixel (:class:`RenderedSection`: axon pixels and the injection site, or the pixels inside expressing cells'
discs), taken from the very draws that made the images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np
import scipy.fft
from scipy import ndimage
from scipy.special import ndtr

from brainmap.atlas.template import upsample_linear
from brainmap.pipeline.grid._trilinear import axis_corners, blend
from brainmap.specimen.deformation import DeformationField
from brainmap.specimen.synthetic.appearance import appearance_channels, check_appearance, form_image
from brainmap.specimen.synthetic.geometry import SectionPlan, SpecimenPlan

__all__ = [
    "CHANNELS",
    "OPTICS",
    "Optics",
    "RenderSources",
    "RenderedSection",
    "cell_signal",
    "damage_masks",
    "disc_mask",
    "fibre_signal",
    "pixel_reference_um",
    "render_section",
    "render_section_truth",
    "sample_volume",
    "stratify_uniform",
    "tissue_volume",
]

#: Channel names, in the order they are written.
CHANNELS = ("tissue", "signal")


@dataclass(frozen=True)
class Optics:
    """Camera and illumination of one product (counts are the uint16 pixel values).

    Attributes:
        bit_depth: the images use ``0 .. 2**bit_depth - 1``.
        tissue_offset, signal_offset: counts on bare glass.
        tissue_gain: counts of full template intensity (1.0) in the tissue channel.
        signal_gain: counts of a full signal pixel (fibre core / expressing cell of intensity 1).
        background: counts of unspecific signal-channel background per unit template (autofluorescence,
            unspecific stain).
        shot: variance of the shot noise per count (``var = shot * counts``).
        read_noise: standard deviation of the readout noise, counts.
        illumination: amplitude of the smooth illumination field (relative).
        tile_um, vignetting: tile size (um) and relative fall-off at tile edges (seams).
        brightness_jitter: standard deviation (log) of the per-section, per-channel brightness.
    """

    bit_depth: int
    tissue_offset: float
    signal_offset: float
    tissue_gain: float
    signal_gain: float
    background: float
    shot: float
    read_noise: float
    illumination: float
    tile_um: float
    vignetting: float
    brightness_jitter: float

    @property
    def max_count(self) -> int:
        return 2 ** self.bit_depth - 1


#: The optics of each product.
OPTICS: dict[str, Optics] = {
    "connectivity": Optics(bit_depth=12, tissue_offset=60.0, signal_offset=50.0, tissue_gain=1500.0,
                           signal_gain=2600.0, background=260.0, shot=1.5, read_noise=6.0, illumination=0.08,
                           tile_um=832.0, vignetting=0.07, brightness_jitter=0.06),
    "ish": Optics(bit_depth=14, tissue_offset=150.0, signal_offset=120.0, tissue_gain=7000.0, signal_gain=11000.0,
                  background=500.0, shot=1.0, read_noise=12.0, illumination=0.06, tile_um=1000.0,
                  vignetting=0.05, brightness_jitter=0.08),
}

#: Fibre shape (connectivity): Gaussian sigmas along and across a fibre, microns, and the least sigmas in pixels.
#: Short, thin fibres: a 100 um voxel of one section holds hundreds of nearly independent fibre pieces at 5-10 um
#: pixels, so its fraction of signal pixels estimates its density (longer fibres -- 30 um -- left only some tens
#: per voxel, and a perfect detector's 100 um grid correlated with the truth at only ~0.9).
FIBRE_SIGMA_LONG_UM = 6.0
FIBRE_SIGMA_SHORT_UM = 1.0
FIBRE_MIN_LONG_PX = 1.0
FIBRE_MIN_SHORT_PX = 0.5
#: Stratification of the fibre field (:func:`stratify_uniform`): block side in microns, and at least in pixels
#: (0 um: none).
FIBRE_STRATA_UM = 20.0
FIBRE_STRATA_MIN_PX = 4
#: Fibre orientations blended by the local direction field (degrees).
FIBRE_ORIENTATIONS_DEG = (0.0, 60.0, 120.0)


@dataclass
class RenderSources:
    """The reference volumes a section samples, all ``(AP, DV, LR)`` at ``resolution_um``.

    Attributes:
        resolution_um: voxel size, microns.
        tissue: float32 Nissl-like template (0..1) times the presence of tissue (0 outside the brain and in
            the ventricles: sections have holes there); see :func:`tissue_volume`.
        signal_density: float32 expected fraction of signal pixels.
        injection_fraction: float32 (connectivity) or ``None``.
        expression_intensity: float32 (ISH) or ``None``.
        cell_diameter_um: ISH cell diameter, microns.
        injection_box_um: ``(lo, hi)`` reference corners (um) of the voxels with injection fraction > 0; a section
            that misses this box does not sample the injection volume.
        appearance: the tissue channel's appearance model (:mod:`.appearance`): ``"nissl"`` (``tissue`` is the
            template's) or one that shares nothing with the template (``tissue`` is its stain amount).
        warp: a smooth non-linear deformation applied after the specimen's affine (None: none).
    """

    resolution_um: float
    tissue: np.ndarray
    signal_density: np.ndarray
    injection_fraction: np.ndarray | None = None
    expression_intensity: np.ndarray | None = None
    cell_diameter_um: float = 12.0
    injection_box_um: tuple[np.ndarray, np.ndarray] | None = None
    appearance: str = "nissl"
    warp: DeformationField | None = None

    def __post_init__(self) -> None:
        check_appearance(self.appearance)
        if self.injection_fraction is not None and self.injection_box_um is None:
            where = np.nonzero(self.injection_fraction > 0)
            if where[0].size:
                lo = np.array([w.min() for w in where], dtype=np.float64) * self.resolution_um
                hi = (np.array([w.max() for w in where], dtype=np.float64) + 1) * self.resolution_um
                self.injection_box_um = (lo, hi)


def tissue_volume(template: np.ndarray, space) -> np.ndarray:
    """``template`` times the presence of tissue: 0 outside the brain and in the ventricular systems (73), in
    place (float32, the template's memory order)."""
    order = space.ontology_order
    table = np.ones(len(order), dtype=np.float32)
    k = order.position.get(73)
    if k is not None:
        table[k: k + int(order.subtree_size[k])] = 0.0
    template *= space.label_index.lookup(table, fill=np.float32(0.0))
    return template


# -- geometry -------------------------------------------------------------------------------------------------
def pixel_reference_um(plan: SpecimenPlan, section: SectionPlan) -> np.ndarray:
    """Reference coordinates ``(3, height, width)`` float32, ``(AP, DV, LR)`` microns, of every pixel centre
    ``(x, y) = (col + 0.5, row + 0.5)`` of a section: ``tvr(tsv(x, y), section_number * thickness)``."""
    tsv = section.alignment2d.tsv
    tvr = plan.tvr
    sz = section.section_number * plan.section_thickness_um
    matrix = tvr.matrix[:, :2] @ tsv.matrix  # (3, 2): pixels -> reference
    offset = tvr.matrix[:, :2] @ tsv.translation + tvr.matrix[:, 2] * sz + tvr.translation
    x = (np.arange(plan.width, dtype=np.float64) + 0.5)[None, :]
    y = (np.arange(plan.height, dtype=np.float64) + 0.5)[:, None]
    out = np.empty((3, plan.height, plan.width), dtype=np.float32)
    for axis in range(3):
        out[axis] = matrix[axis, 0] * x + matrix[axis, 1] * y + offset[axis]
    return out


def sample_volume(volume: np.ndarray, resolution_um: float, reference_um: np.ndarray, order: int = 1,
                  cval: float = 0.0) -> np.ndarray:
    """Sample an ``(AP, DV, LR)`` volume at reference points ``(3, ...)`` (microns): voxel ``i`` is centred at
    ``(i + 0.5) * resolution_um``; trilinear (``order=1``) or nearest (``order=0``); ``cval`` outside. float32.

    The values are ``scipy.ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=cval,
    prefilter=False, output=np.float32)``'s to the bit (``_sample_3d`` does its arithmetic, in its order; the
    tests compare the two), 2.5-3x faster (2 M points of a 100 um volume: 13-21 against 37-53 ms).
    """
    coords = reference_um / np.float32(resolution_um) - np.float32(0.5)
    volume = np.asarray(volume)
    if volume.ndim != 3 or coords.shape[0] != 3 or order not in (0, 1):
        return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=cval, prefilter=False,
                                       output=np.float32)
    out = np.empty(coords.shape[1:], dtype=np.float32)
    _sample_3d(volume[np.newaxis], coords.reshape(3, -1), int(order), float(cval), out.reshape(-1))
    return out


@numba.njit(nogil=True, cache=True)
def _sample_3d(volume, coords, order, cval, out):  # pragma: no cover - compiled (its tests call it through Python)
    """``map_coordinates`` of a 3-D volume (given as ``(1, n0, n1, n2)``), order 0 or 1, mode "constant", no
    prefilter: a point outside ``[0, n - 1]`` on any axis (or NaN) gets ``cval``; order 1 is the pipeline's
    trilinear arithmetic (:mod:`brainmap.pipeline.grid._trilinear`); order 0 takes the voxel at ``floor(c + 0.5)``."""
    _, n0, n1, n2 = volume.shape
    for p in range(coords.shape[1]):
        c0 = np.float64(coords[0, p])
        c1 = np.float64(coords[1, p])
        c2 = np.float64(coords[2, p])
        if not (0.0 <= c0 <= n0 - 1 and 0.0 <= c1 <= n1 - 1 and 0.0 <= c2 <= n2 - 1):
            out[p] = cval
            continue
        if order == 0:
            out[p] = np.float64(volume[0, int(np.floor(c0 + 0.5)), int(np.floor(c1 + 0.5)), int(np.floor(c2 + 0.5))])
            continue
        i0, j0, a0, b0 = axis_corners(c0, n0)
        i1, j1, a1, b1 = axis_corners(c1, n1)
        i2, j2, a2, b2 = axis_corners(c2, n2)
        out[p] = blend(volume, 0, i0, j0, a0, b0, i1, j1, a1, b1, i2, j2, a2, b2)


# -- damage ---------------------------------------------------------------------------------------------------
def damage_masks(shape: tuple[int, int], damage: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, glare)`` float32 images for a section's damage records (pixel coordinates): ``keep`` (0..1) is
    the fraction of tissue left (0 in tears and lost tissue, 0.25 inside bubbles); ``glare`` (0..1) the bright
    haze and rim of bubbles."""
    height, width = shape
    keep = np.ones(shape, dtype=np.float32)
    glare = np.zeros(shape, dtype=np.float32)
    if not damage:
        return keep, glare
    x = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    y = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    for record in damage:
        kind = record["kind"]
        if kind == "loss":
            px, py = record["point"]
            nx, ny = record["normal"]
            keep *= ((x - px) * nx + (y - py) * ny < 0).astype(np.float32)
        elif kind == "tear":
            crack = np.zeros(shape, dtype=bool)
            points = np.asarray(record["points"], dtype=np.float64)
            # densify the polyline to <= 0.5 px steps, then mark and widen
            seg = np.diff(points, axis=0)
            steps = np.maximum(np.ceil(np.hypot(seg[:, 0], seg[:, 1]) / 0.5).astype(int), 1)
            dense = np.concatenate([p0 + np.outer(np.arange(k) / k, d) for p0, d, k in zip(points[:-1], seg, steps)]
                                   + [points[-1:]])
            cols, rows = np.floor(dense[:, 0]).astype(int), np.floor(dense[:, 1]).astype(int)
            ok = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
            crack[rows[ok], cols[ok]] = True
            if crack.any():
                half = record["width_px"] / 2.0
                distance = ndimage.distance_transform_edt(~crack)
                keep *= np.clip(distance - half + 0.5, 0.0, 1.0).astype(np.float32)
        elif kind == "fold":
            # the tissue in the band behind the fold line lies folded over the band in front of it
            px, py = record["point"]
            nx, ny = record["normal"]
            distance = (x - px) * nx + (y - py) * ny
            width = record["width_px"]
            keep *= np.where((distance >= 0) & (distance < width), 2.0,
                             np.where((distance < 0) & (distance >= -width), 0.0, 1.0)).astype(np.float32)
        elif kind == "bubble":
            cx, cy = record["center"]
            a, b = record["axes"]
            t = np.deg2rad(record["angle_deg"])
            u = ((x - cx) * np.cos(t) + (y - cy) * np.sin(t)) / a
            v = (-(x - cx) * np.sin(t) + (y - cy) * np.cos(t)) / b
            r = np.sqrt(u * u + v * v)
            inside = np.clip((1.0 - r) * min(a, b) / 2.0 + 0.5, 0.0, 1.0)  # ~2 px soft edge
            keep *= 1.0 - 0.75 * inside
            rim = np.exp(-0.5 * ((r - 1.0) * min(a, b) / max(1.5, 0.04 * min(a, b))) ** 2)
            glare = np.maximum(glare, 0.12 * inside + 0.45 * rim).astype(np.float32)
    return keep, glare


# -- signals --------------------------------------------------------------------------------------------------
def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], pixel_um: float, scale_um: float) -> np.ndarray:
    """A smooth random field of unit standard deviation, correlation length ~``scale_um``, float32."""
    step_px = max(scale_um / pixel_um, 1.0)
    coarse_shape = (int(np.ceil(shape[0] / step_px)) + 3, int(np.ceil(shape[1] / step_px)) + 3)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="wrap")
    coarse = (coarse - coarse.mean()) / (coarse.std() + 1e-12)
    return upsample_linear(coarse.astype(np.float32), step_px, shape, 1.0)


@lru_cache(maxsize=4)
def _fibre_filters(shape: tuple[int, int], pixel_um: float) -> tuple[tuple[np.ndarray, ...], tuple[float, ...]]:
    """The elongated Gaussian filters (rfft layout, float32) of :data:`FIBRE_ORIENTATIONS_DEG` for a padded
    image shape, and the standard deviation of white noise after each (the same for every section of a plan)."""
    long_px = max(FIBRE_SIGMA_LONG_UM / pixel_um, FIBRE_MIN_LONG_PX)
    short_px = max(FIBRE_SIGMA_SHORT_UM / pixel_um, FIBRE_MIN_SHORT_PX)
    fy = scipy.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = scipy.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    # each rfft column but the first (and the last, for an even width) stands for two of the full spectrum
    multiplicity = np.full(fx.shape, 2.0, dtype=np.float64)
    multiplicity[0, 0] = 1.0
    if shape[1] % 2 == 0:
        multiplicity[0, -1] = 1.0
    gains, stds = [], []
    for degrees in FIBRE_ORIENTATIONS_DEG:
        t = np.deg2rad(degrees)
        along = fx * np.float32(np.cos(t)) + fy * np.float32(np.sin(t))
        across = -fx * np.float32(np.sin(t)) + fy * np.float32(np.cos(t))
        gain = np.exp(np.float32(-2.0 * np.pi ** 2) * (np.float32(long_px ** 2) * along ** 2
                                                       + np.float32(short_px ** 2) * across ** 2))
        gains.append(gain)
        stds.append(float(np.sqrt(np.sum(multiplicity * gain.astype(np.float64) ** 2) / (shape[0] * shape[1]))))
    return tuple(gains), tuple(stds)


def _fibre_uniform(rng: np.random.Generator, shape: tuple[int, int], pixel_um: float) -> np.ndarray:
    """The uniform (0..1) field whose upper tail draws fibres (see the module docstring)."""
    padded = (scipy.fft.next_fast_len(shape[0], real=True), scipy.fft.next_fast_len(shape[1], real=True))
    gains, stds = _fibre_filters(padded, float(pixel_um))
    direction = (np.pi * ndtr(_smooth_field(rng, shape, pixel_um, 1500.0))).astype(np.float32)  # fibre angle
    total = np.zeros(shape, dtype=np.float32)
    norm = np.zeros(shape, dtype=np.float32)
    for degrees, gain, std in zip(FIBRE_ORIENTATIONS_DEG, gains, stds):
        noise = rng.standard_normal(padded, dtype=np.float32)
        spectrum = scipy.fft.rfft2(noise, workers=-1)
        spectrum *= gain
        field = scipy.fft.irfft2(spectrum, s=padded, workers=-1)[: shape[0], : shape[1]]
        weight = np.exp(np.float32(3.0) * np.cos(np.float32(2.0) * (direction - np.float32(np.deg2rad(degrees)))))
        total += weight * (field * np.float32(1.0 / std))
        norm += weight * weight
    total /= np.sqrt(norm)
    uniform = ndtr(total).astype(np.float32)
    if FIBRE_STRATA_UM > 0:
        uniform = stratify_uniform(uniform, rng, max(FIBRE_STRATA_MIN_PX, int(round(FIBRE_STRATA_UM / pixel_um))))
    return uniform


def stratify_uniform(uniform: np.ndarray, rng: np.random.Generator, block: int) -> np.ndarray:
    """Stratify a uniform field over ``block`` x ``block`` pixel blocks (a random block grid offset): within a
    block of ``m`` pixels, a pixel's value becomes ``(its rank + V) / m`` with one ``V ~ U(0, 1)`` per block.

    Each value stays uniform (the rank of a pixel is uniform over ``0 .. m - 1``; exactly so for exchangeable
    pixels, very nearly for the fibre field) and the order within a block is kept -- the fibres are the
    block's highest values -- but the values of a block are evenly spread: where the density ``d`` is even over
    a block, ``floor(m d)`` or ``ceil(m d)`` of its pixels pass ``U > 1 - d`` (variance <= 1/4 instead of the
    binomial ``m d (1 - d)``), so the fraction of signal pixels of a voxel estimates ``d`` closely.
    """
    if block <= 1:
        return uniform
    rows, cols = uniform.shape
    off_r, off_c = (int(v) for v in rng.integers(0, block, 2))
    nbr, nbc = -(-(rows + off_r) // block), -(-(cols + off_c) // block)
    padded = np.full((nbr * block, nbc * block), np.inf, dtype=np.float32)
    padded[off_r: off_r + rows, off_c: off_c + cols] = uniform
    blocks = padded.reshape(nbr, block, nbc, block).transpose(0, 2, 1, 3).reshape(nbr * nbc, block * block)
    order = np.argsort(blocks, axis=1, kind="stable")  # the padding (inf) sorts last
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(block * block, dtype=order.dtype)[None, :], axis=1)
    count = np.isfinite(blocks).sum(axis=1, keepdims=True)
    shift = rng.random((nbr * nbc, 1))
    values = ((ranks + shift) / np.maximum(count, 1)).astype(np.float32)
    values = values.reshape(nbr, nbc, block, block).transpose(0, 2, 1, 3).reshape(nbr * block, nbc * block)
    return np.ascontiguousarray(values[off_r: off_r + rows, off_c: off_c + cols])


def _fibre_signal(rng: np.random.Generator, density: np.ndarray, injection: np.ndarray | None,
                  pixel_um: float) -> tuple[np.ndarray, np.ndarray]:
    """``(signal amount, axon pixels)`` of a connectivity section: see :func:`fibre_signal`; the bool image
    of the pixels with ``U > 1 - d`` comes with it."""
    uniform = _fibre_uniform(rng, density.shape, pixel_um)
    threshold = 1.0 - density
    is_signal = uniform > threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        core = np.where(is_signal, (uniform - threshold) / np.maximum(density, 1e-6), 0.0)
    signal = np.where(is_signal, 0.55 + 0.45 * np.clip(core, 0, 1), 0.0).astype(np.float32)
    if injection is not None and injection.any():
        glow = ndimage.gaussian_filter(injection, max(60.0 / pixel_um, 0.5))  # light scattered around the site
        signal = np.maximum(signal, (np.float32(1.8) * injection + np.float32(0.35) * glow).astype(np.float32))
    return signal, is_signal


def fibre_signal(rng: np.random.Generator, density: np.ndarray, injection: np.ndarray | None,
                 pixel_um: float) -> np.ndarray:
    """Signal amount (0..~1.6) of a connectivity section: fibres where ``U > 1 - d``, brighter at their core,
    and the injection site (bright, saturating)."""
    return _fibre_signal(rng, density, injection, pixel_um)[0]


#: Up to this spot sigma (pixels) a cell's light is integrated over each pixel's box exactly (erf profiles); wider
#: spots are splatted and blurred (the box's 1/12 px^2 is then a few percent of the spot's variance).
EXACT_BOX_SIGMA_PX = 1.5
#: Cells integrated per pass of the exact path (bounds the gathered offsets' memory).
_CELLS_PER_PASS = 50_000


def _cell_signal(rng: np.random.Generator, density: np.ndarray, intensity: np.ndarray, pixel_um: float,
                 cell_diameter_um: float) -> tuple[np.ndarray, np.ndarray]:
    """``(stain, cell centres)``: see :func:`cell_signal`; the centres ``(n, 2)`` are continuous pixel
    coordinates ``(x, y)`` (pixel centres at ``col + 0.5, row + 0.5``).

    A camera pixel records the light falling on its area: each Gaussian cell (sigma ``s`` px) is integrated over
    the pixels' boxes, ``(Phi((e + 1 - x) / s) - Phi((e - x) / s))`` per axis for a pixel spanning ``[e, e + 1]``
    (exact, separable; cells up to :data:`EXACT_BOX_SIGMA_PX`). Wider cells are splatted bilinearly (a triangle
    kernel, variance 1/6 px^2 on average) and blurred by ``sqrt(s^2 - 1/12)``: the same variance as the box's
    ``s^2 + 1/12``."""
    height, width = density.shape
    cell_area_um2 = np.pi * (cell_diameter_um / 2.0) ** 2
    rate = -np.log1p(-np.clip(density, 0.0, 0.95)) / cell_area_um2 * pixel_um ** 2  # cells per pixel
    counts = rng.poisson(rate).ravel()
    pixel = np.repeat(np.arange(counts.size), counts)
    stain = np.zeros(height * width, dtype=np.float64)
    centres = np.zeros((0, 2))
    sigma_px = cell_diameter_um / 2.3548 / pixel_um
    exact = sigma_px <= EXACT_BOX_SIGMA_PX
    if pixel.size:
        x = pixel % width + rng.random(pixel.size) - 0.5  # position relative to pixel centres
        y = pixel // width + rng.random(pixel.size) - 0.5
        centres = np.stack([x + 0.5, y + 0.5], axis=1)
        sigma_um = cell_diameter_um / 2.3548
        amount = intensity.ravel()[pixel] * rng.lognormal(0.0, 0.25, pixel.size) * (
            2.0 * np.pi * sigma_um ** 2 / pixel_um ** 2)  # the spot's integral, in pixel units
        if exact:
            _integrate_cells(stain, (height, width), x, y, amount, sigma_px)
        else:
            x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
            wx, wy = x - x0, y - y0
            for dx, dy, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy),
                              (1, 1, wx * wy)):
                cx, cy = np.clip(x0 + dx, 0, width - 1), np.clip(y0 + dy, 0, height - 1)
                stain += np.bincount(cy * width + cx, weights=amount * w, minlength=height * width)
    image = stain.reshape(height, width).astype(np.float32)
    if not exact:
        image = ndimage.gaussian_filter(image, math.sqrt(sigma_px ** 2 - 1.0 / 12.0), truncate=3.0)
    return np.minimum(image, np.float32(1.3)), centres


def _integrate_cells(stain: np.ndarray, shape: tuple[int, int], x: np.ndarray, y: np.ndarray, amount: np.ndarray,
                     sigma_px: float) -> None:
    """Add to ``stain`` (flat, ``shape``) each Gaussian cell (centre ``(x, y)`` with pixel centres at integers,
    integral ``amount``, sigma ``sigma_px``) integrated over the boxes of the pixels within 3 sigma of its centre
    (``ceil(6 sigma) + 1`` a side; the light beyond, and beyond the image, is lost as in a camera)."""
    height, width = shape
    span = int(math.ceil(6.0 * sigma_px)) + 1
    steps = np.arange(span)
    scale = 1.0 / max(sigma_px, 1e-6)
    for start in range(0, x.size, _CELLS_PER_PASS):
        cut = slice(start, start + _CELLS_PER_PASS)
        profiles = []
        for centre, size in ((x[cut], width), (y[cut], height)):
            first = np.floor(centre - 3.0 * sigma_px + 0.5).astype(np.int64)  # the pixel 3 sigma before the centre
            edges = (first - 0.5 - centre)[:, None] + np.arange(span + 1)[None, :]
            weight = np.diff(ndtr(edges * scale), axis=1)
            index = first[:, None] + steps[None, :]
            weight[(index < 0) | (index >= size)] = 0.0
            profiles.append((np.clip(index, 0, size - 1), weight))
        (cols, wx), (rows, wy) = profiles
        flat = (rows[:, :, None] * width + cols[:, None, :]).ravel()
        weights = ((amount[cut, None] * wy)[:, :, None] * wx[:, None, :]).ravel()
        stain += np.bincount(flat, weights=weights, minlength=stain.size)


def cell_signal(rng: np.random.Generator, density: np.ndarray, intensity: np.ndarray, pixel_um: float,
                cell_diameter_um: float) -> np.ndarray:
    """Expression stain (0..~1.3) of an ISH section: Gaussian cells at Poisson positions (module docstring)."""
    return _cell_signal(rng, density, intensity, pixel_um, cell_diameter_um)[0]


def disc_mask(shape: tuple[int, int], centres_xy: np.ndarray, radius_px: float) -> np.ndarray:
    """bool image: pixels whose centre ``(col + 0.5, row + 0.5)`` lies within ``radius_px`` of a centre
    (``(n, 2)`` continuous pixel coordinates ``(x, y)``); vectorized over the centres."""
    height, width = shape
    mask = np.zeros(height * width, dtype=bool)
    if centres_xy.size == 0:
        return mask.reshape(shape)
    reach = int(np.ceil(radius_px)) + 1
    cx, cy = centres_xy[:, 0], centres_xy[:, 1]
    col0, row0 = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
    r2 = radius_px * radius_px
    for dy in range(-reach, reach + 1):  # the offsets of a disc's bounding square, not pixels
        for dx in range(-reach, reach + 1):
            col, row = col0 + dx, row0 + dy
            inside = (col + 0.5 - cx) ** 2 + (row + 0.5 - cy) ** 2 <= r2
            inside &= (col >= 0) & (col < width) & (row >= 0) & (row < height)
            mask[row[inside] * width + col[inside]] = True
    return mask.reshape(shape)


def _illumination(rng: np.random.Generator, shape: tuple[int, int], pixel_um: float, optics: Optics) -> np.ndarray:
    """Smooth illumination field times tile vignetting (seams every ``optics.tile_um``)."""
    field = 1.0 + optics.illumination * _smooth_field(rng, shape, pixel_um, 3000.0)
    tile_px = optics.tile_um / pixel_um
    offset = rng.uniform(0, tile_px, 2)
    profiles = []
    for n, off in zip(shape, offset):
        u = ((np.arange(n) + 0.5 + off) % tile_px) / tile_px
        profiles.append((1.0 - optics.vignetting * (2.0 * u - 1.0) ** 2).astype(np.float32))
    return (field * profiles[0][:, None] * profiles[1][None, :]).astype(np.float32)


def _to_counts(rng: np.random.Generator, expected: np.ndarray, optics: Optics) -> np.ndarray:
    """Expected counts -> noisy uint16 counts (shot + readout noise, clipped to the bit depth)."""
    noise = rng.standard_normal(expected.shape, dtype=np.float32)
    noisy = expected + noise * np.sqrt(np.float32(optics.shot) * np.maximum(expected, 0) + optics.read_noise ** 2)
    return np.clip(np.rint(noisy), 0, optics.max_count).astype(np.uint16)


def _hits_box(ref: np.ndarray, box: tuple[np.ndarray, np.ndarray] | None) -> bool:
    """Whether any pixel's reference point (``(3, h, w)`` um) lies in the box (the section is a plane, so its
    corners bound its points; the check is exact for the bounding box)."""
    if box is None:
        return False
    lo, hi = box
    corners = ref[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # (3, 4): a plane's extremes over a rectangle are corners
    if np.any(corners.max(axis=1) < lo) or np.any(corners.min(axis=1) > hi):
        return False
    inside = np.all((ref >= lo[:, None, None]) & (ref <= hi[:, None, None]), axis=0)
    return bool(inside.any())


@dataclass
class RenderedSection:
    """One rendered section with its true signal, pixel by pixel.

    Attributes:
        images: ``{"tissue": uint16 (height, width), "signal": uint16 (height, width)}``.
        signal: bool, the true signal pixels -- connectivity: axon pixels (the fibre field ``U > 1 - d``) and
            the injection site; ISH: pixels whose centre lies in an expressing cell's disc (diameter = the
            gene's cell diameter). Only where tissue is left (not torn away or lost); the scattered glow around
            an injection site is not signal.
        injection: bool, the injection site (injection fraction >= 0.5, tissue left) when the section crosses
            it (connectivity), else ``None``.
    """

    images: dict[str, np.ndarray]
    signal: np.ndarray
    injection: np.ndarray | None = None


def render_section(plan: SpecimenPlan, section: SectionPlan, sources: RenderSources, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """The images of one section: ``{"tissue": uint16 (height, width), "signal": uint16 (height, width)}``.

    Deterministic given ``(plan, section, sources, seed)``; :func:`render_section_truth` gives the same images
    with their true signal masks.
    """
    return _render(plan, section, sources, seed, with_truth=False).images


def render_section_truth(plan: SpecimenPlan, section: SectionPlan, sources: RenderSources, seed: int = 0
                         ) -> RenderedSection:
    """The images of one section (exactly those of :func:`render_section`) and their true signal masks."""
    return _render(plan, section, sources, seed, with_truth=True)


def _render(plan: SpecimenPlan, section: SectionPlan, sources: RenderSources, seed: int, with_truth: bool
            ) -> RenderedSection:
    """Render one section; the truth masks only when asked (the ISH discs cost a pass per disc offset)."""
    rng = np.random.default_rng([int(seed), int(section.section_number), 0x5EC7])
    optics = OPTICS[plan.product]
    shape = (plan.height, plan.width)
    pixel_um = plan.pixel_size_um
    ref = pixel_reference_um(plan, section)
    if sources.warp is not None:
        ref = sources.warp.apply(ref.reshape(3, -1).T).T.reshape(ref.shape).astype(np.float32)
    res = sources.resolution_um
    tissue_here = sample_volume(sources.tissue, res, ref)
    density = np.clip(sample_volume(sources.signal_density, res, ref), 0.0, 1.0)
    keep, glare = damage_masks(shape, section.damage)

    grain = 1.0 + 0.12 * ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32),
                                                 max(4.0 / pixel_um, 0.5))
    tissue = tissue_here * grain * keep
    site = None
    if plan.product == "connectivity":
        injection = None
        if sources.injection_fraction is not None and _hits_box(ref, sources.injection_box_um):
            injection = sample_volume(sources.injection_fraction, res, ref)
        signal, truth = _fibre_signal(rng, density, injection, pixel_um)
        if with_truth and injection is not None:
            site = (injection >= 0.5) & (keep > 0)
            truth |= site
            if not site.any():
                site = None
    else:
        intensity = (sample_volume(sources.expression_intensity, res, ref, order=0)
                     if sources.expression_intensity is not None else np.ones(shape, np.float32))
        signal, centres = _cell_signal(rng, density, intensity, pixel_um, sources.cell_diameter_um)
        truth = disc_mask(shape, centres, sources.cell_diameter_um / 2.0 / pixel_um) if with_truth else None
    if with_truth:
        truth &= keep > 0
    signal *= keep
    tissue_left = tissue_here * keep

    out = {}
    channels = [("tissue", optics.tissue_offset, optics.tissue_gain * (tissue + glare)),
                ("signal", optics.signal_offset,
                 optics.background * tissue_left + optics.signal_gain * signal + 0.5 * optics.background * glare)]
    if sources.appearance != "nissl":
        # an appearance the aligner's template knows nothing of, from its own random draws
        look = np.random.default_rng([int(seed), int(section.section_number), 0xA99E])
        presence = np.clip(tissue_here * 8.0, 0.0, 1.0) * keep
        images = form_image(look, tissue_here * keep + 0.3 * glare, presence, sources.appearance, pixel_um,
                            optics.max_count)
        out.update(zip(appearance_channels(sources.appearance), images))
        channels = channels[1:]
    for name, offset, value in channels:
        brightness = np.float32(np.exp(rng.normal(0.0, optics.brightness_jitter)))
        expected = offset + value * _illumination(rng, shape, pixel_um, optics) * brightness
        out[name] = _to_counts(rng, expected.astype(np.float32), optics)
    return RenderedSection(images=out, signal=truth if with_truth else np.zeros(0, bool), injection=site)
