"""Signal detection: tissue, background by grey opening, adaptive threshold, cell morphology, injection site.

Every image here is a ``(rows, cols)`` array indexed ``[row, col]`` = ``[y, x]`` (pixels); counts are the raw
uint16 values of a channel. The method, per section image (vectorized, a few dozen passes over the pixels):

1. **Tissue** (tissue channel): glass (the camera offset) and tissue are two modes of the counts. Otsu on the
   logarithm of a subsample separates them and the threshold sits at ``glass + tissue_level_fraction * (tissue -
   glass)`` (the two class medians), for ISH lowered to the glass's noise floor where that is lower (its mode plus
   ``tissue_noise_sigmas`` sigmas: dim tissue at the edges). Tears, lost tissue and ventricles are not tissue.
2. **Background** (signal channel): the grey *opening* (erosion then dilation) by a flat square of
   ``background_window_um``. Objects narrower than the window -- axons, cells -- are removed, and what is wider
   -- tissue, structures, their edges and ramps, the illumination, the glow around an injection -- is kept:
   the contrast ``F = counts - opening`` (the white top-hat transform) is the signal over its local background.
   Where signal is so dense that it forms plateaus wider than the window (dense ISH expression), the opening
   would sit on the signal: so (ISH) it is capped at ``1 + background_excess`` times a
   large-scale background -- a low quantile of the tissue pixels of blocks of ``background_block_um``, blocks
   full of signal (outliers) taking their neighbours' values.
3. **Noise**: the camera's noise grows with the counts, ``sigma^2 = a + b * background`` (readout plus shot
   noise). Per block of ``noise_block_um``, the median background and a robust variance (from the lower quartile
   of the absolute difference of horizontally adjacent tissue pixels) are measured on a subsample; signal only
   ever inflates a block's variance, so ``a, b`` are fitted to the lower envelope of the blocks (a low quantile
   per background level). Connectivity (``noise_low_pairs``): the pairs are :data:`NOISE_PAIR_LAG_PX` apart
   (beyond the camera noise's correlation), only the lower half of each block's pairs by their sum enter (the
   sum and the difference of two values of one noise are independent, and fibres only add light: a mesh of
   axons over every block does not reach the fit) and their spread is the half-width of their central quarter
   (the background's slope cancels); the injection site, found first, is left out (docs/detection-bounds.md,
   round 10).
   The top-hat of pure noise is not centred on 0 (the opening sits below the mean): its offset in sigmas for
   the window used is computed once by simulation (:func:`tophat_noise_offset`).
4. **Adaptive threshold**: a tissue pixel is a candidate where ``F > (offset + threshold_sigmas) * sigma`` of its
   own background (one lookup table from background counts to threshold counts).
5. **Cells (ISH)**: the cell diameter is measured from the image (the autocorrelation of the contrast,
   :mod:`~brainmap.pipeline.detect.cell_size`; never from metadata). A candidate is kept where ``F >=
   peak_fraction * max(F')`` within a square of one cell diameter, rounded up to whole pixels (a grey dilation;
   :attr:`DetectionParams.cell_window_px`), ``F'`` being ``F`` averaged over ``peak_smooth_um`` (3 um: a cell's
   level rather than its brightest granule), so each cell is cut at its half maximum whatever its brightness
   (the fraction is corrected for pixel integration, sampling and that averaging when pixels are not small
   against a cell: :attr:`DetectionParams.effective_peak_fraction`); a cell's pixels are kept only where that cut
   lies above the noise threshold (:func:`_cut_above_noise`, a hysteresis: a peak just over the threshold is not
   a cell; both cell rules). Holes smaller than 0.6 of a cell (a dimmer nucleus) are filled. A binary opening by
   a square of ``speck_um`` (3 um, in whole
   pixels, rounded down: 2 x 2 at 1.5 um, 3 x 3 at 1 um) then removes specks narrower than that; at coarser
   pixels (a side under 2 pixels, e.g. the virtual microscope's 8 um, where a cell is 1-2 pixels) there is no
   opening, so single-pixel cells stay. Where a cell spans only 1-3 pixels (the virtual microscope's 8 um) its
   outline is not in the image and the brightest pixel is not its peak: each local maximum gets its sub-pixel
   peak from a parabola through its neighbours, and the cut follows the cells' profile, told apart by the spread of
   the peaks' log-curvature (:func:`_subpixel_cell_rule`): Gaussian-like spots (a uniform log-curvature) are cut
   at ``exp(-R^2 / (2 w))`` of a log-parabola's peak, ``w`` (px^2) the median spot width of those parabolas and
   ``R`` the measured radius; flat cells (a plateau, a steep edge: a widely spread log-curvature) at half the
   vertex of a parabola through the contrast itself (the pixel half covered). **Axons (connectivity)**: at coarse
   pixels (>= 2.5 um) an axon is narrower than a pixel. A pixel an axon crosses holds light in proportion to the
   length of fibre in it times the fibre's brightness; one the fibre only clips, or where a segment ends, holds a
   fraction of a full crossing. A candidate is kept where ``F >= axon_cover * (its fibre's full crossing)``
   (0.65): the brightest pixel of its connected group when the group is one segment (2-6 pixels), else the image's
   typical full crossing, the median contrast of its isolated peaks (:func:`_axon_cover_rule`; brightness drops
   out, varicosities and overlapping fibres do not inflate it as a 3 x 3 maximum does). At finer pixels a
   candidate is kept where ``F >= axon_fraction * max(F)`` over its 3 x 3 neighbourhood (0.4).
6. **Injection site (connectivity)**: a bright plateau, near saturation. The pixels at least ``injection_level``
   of the way from the typical tissue background to the saturation level, opened by a square of
   ``injection_window_um`` (axons, however bright, are far narrower and vanish), holes filled
   (:func:`detect_injection`). Inside it every pixel above that level is signal (the top-hat alone misses a
   plateau wider than its window).

Output: Allen's grayscale mask -- same size as the image, uint16, the top-hat contrast ``F`` (counts, >= 1)
where signal, 0 elsewhere -- with the tissue mask and the injection site.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from brainmap.pipeline.detect._holes import fill_small_holes

__all__ = [
    "DetectionParams",
    "DetectionResult",
    "NoiseModel",
    "detect_injection",
    "detect_section",
    "detect_tissue",
    "background_opening",
    "fit_noise_model",
    "grey_opening",
    "large_scale_background",
    "running_max",
    "running_min",
    "tissue_threshold",
]

PRODUCTS = ("ish", "connectivity")
#: The noise fit uses at most this many blocks (larger blocks on larger images keep its cost fixed).
NOISE_MAX_BLOCKS = 1600
#: The noise model is fitted again without the candidates (``noise_refits``) only where they cover more than this
#: fraction of the tissue (sparse signal leaves the first fit's lower envelope clear).
REFIT_DENSITY = 0.02
#: ``noise_low_pairs``: the two pixels of a pair of the noise fit are this many pixels apart along a row. Adjacent
#: pixels share correlated noise (readout, demosaicing, resampling kernels of about a pixel), so their difference
#: reads the noise short (0.75-0.9 of it on the second family, whose readout is smoothed by a 0.7 px Gaussian:
#: correlation 0.6 at 1 pixel, 0.13 at 2, 0.01 at 3); 3 pixels apart the two noises are independent.
NOISE_PAIR_LAG_PX = 3
#: ``noise_low_pairs``: the fraction of each block's pairs, the lowest by their sum, whose differences measure the
#: noise (the lower half: a block whose pixels are at least half fibre-free is read as noise alone).
NOISE_PAIR_FRACTION = 0.5
#: Connectivity: the coverage rule (``axon_cover``) is the default at pixels at least this coarse (um), where an axon
#: (about a micron wide) crosses well under half a pixel's width; finer pixels keep the 3 x 3 rule (``axon_fraction``).
AXON_COVER_MIN_PIXEL_UM = 2.5
#: Connectivity at pixels at least :data:`AXON_COVER_MIN_PIXEL_UM` coarse: the opening's window (um; 9 pixels at
#: 10 um). A coarse pixel is bright wherever any fibre touches it, so in a mesh of axons (around an injection site)
#: fibre-free pixels grow rare and a 50 um window (5 pixels at 10 um) sat on the mesh, eating a third of its
#: contrast (docs/detection-bounds.md, round 8). Finer pixels resolve the gaps between axons: 50 um.
AXON_BACKGROUND_WINDOW_UM = 90.0
#: The coverage rule: a connected group of at most this many candidates is one fibre segment, judged against its own
#: brightest pixel; larger groups (crossing fibres, a mesh) against the image's typical full crossing.
AXON_SEGMENT_PX = 6
#: The typical full crossing is the median contrast of the isolated peaks: 3 x 3 maxima of the candidates with at
#: most :data:`AXON_SEGMENT_PX` candidates within 2 pixels (one fibre, not a mesh of overlapping ones); at least
#: this many of them, else all the peaks.
AXON_MIN_PEAKS = 20
#: Bit depths whose full scale (2**k - 1) is taken for the saturation level when it is not given.
_BIT_DEPTHS = (8, 10, 12, 14, 16)


@dataclass(frozen=True)
class DetectionParams:
    """Parameters of :func:`detect_section`; lengths in microns, intensities in counts (raw pixel values).

    :meth:`for_product` / :meth:`for_dataset` give the defaults of a product at a pixel size.

    Attributes:
        product: ``"ish"`` (expressing cells) or ``"connectivity"`` (axons and the injection site).
        pixel_size_um: image pixel size (um).
        signal_channel, tissue_channel: channel names in the image mapping.
        tissue_threshold: tissue-channel counts above which a pixel is tissue; ``None``: automatic.
        tissue_level_fraction: where the automatic threshold sits between the glass and tissue medians (0..1).
        tissue_noise_sigmas: the automatic threshold is lowered to the glass's noise floor, its mode plus this
            many glass noise sigmas, where that is lower (dim tissue at the brain's edge, pale fibre tracts);
            ``None``: off. ISH default 6, connectivity off (measured on ISH only).
        background_window_um: side of the square of the grey opening (um); wider than the signal objects
            (axons, cells and their clusters), narrower than the background's features. ``None``: 50 um for
            connectivity (:data:`AXON_BACKGROUND_WINDOW_UM`, 90 um, at pixels of at least
            :data:`AXON_COVER_MIN_PIXEL_UM`), 3 cell diameters for ISH.
        background_block_um: side of the blocks of the large-scale background (um).
        background_quantile: the large-scale background of a block is this quantile of its tissue pixels.
        background_excess: the local background (the opening) is capped at ``(1 + background_excess)`` times the
            large-scale background: a plateau of dense signal wider than the opening's window is not background.
            ``None``: no cap (connectivity, where the only plateau is the injection site, found on its own: the
            faint fringe of a site is not counted as axons). ISH default 2.
        noise_block_um: smallest side of the blocks of the noise fit (um); larger images get larger blocks (at
            most :data:`NOISE_MAX_BLOCKS` blocks).
        noise_samples: pixels per block side that enter the noise fit (a regular subsample).
        threshold_sigmas: a candidate's contrast exceeds the top-hat's noise offset by this many standard
            deviations of the noise.
        cell_diameter_um: diameter of an expressing cell (um), the window of the local maximum (ISH); ``None``
            (the default): measured from each image (:func:`~brainmap.pipeline.detect.cell_size.
            estimate_cell_diameter_um`), never taken from metadata.
        peak_fraction: keep pixels at least this fraction of a cell's peak contrast (0.5 = half maximum: the
            cell's disc); 0 disables the rule (connectivity).
        pixel_correction: correct ``peak_fraction`` for pixels that are not small against a cell
            (:attr:`effective_peak_fraction`).
        speck_um: ISH: side (um) of the square of the binary opening that removes specks narrower than it
            (``floor(speck_um / pixel_size_um)`` pixels; none under 2 pixels: cells of 1-2 pixels are kept).
        peak_smooth_um: ISH: the local maximum of the cell rule is taken on the contrast averaged over a square of
            this side (um; in whole odd pixels, none under 2): a cell's level rather than its brightest granule.
        subpixel_cells: ISH: where a cell spans 1-3 pixels (:attr:`cell_window_px` 3), cut each cell at the
            fraction of its sub-pixel peak that its edge holds, from the profile measured at the image's peaks
            (Gaussian spots or flat cells; :func:`_subpixel_cell_rule`); ``False``: the half-maximum rule of finer
            pixels.
        cut_above_noise: ISH: keep a cell's pixels only where its cut (the fraction of its peak the cell rule keeps)
            lies above the noise threshold (:func:`_cut_above_noise`): a cell whose outline would sit under the
            noise has its extent drawn by the noise threshold, not by the cut, and is not told apart from the
            noise's excursions and the background's small structures (debris, ridges narrower than the opening),
            whose peaks sit just over the threshold. ``False``: any candidate may be a cell's peak.
        axon_fraction: connectivity: keep a candidate whose contrast is at least this fraction of the largest in
            its 3 x 3 neighbourhood (a pixel an axon only clips is dimmer than those it crosses); 0 disables the
            rule. Connectivity default 0.4 at pixels finer than :data:`AXON_COVER_MIN_PIXEL_UM`, else 0.
        axon_cover: connectivity: keep a candidate whose contrast is at least this fraction of its fibre's full
            crossing -- the brightest pixel of its connected group when the group is one segment (at most
            :data:`AXON_SEGMENT_PX` pixels), else the image's typical full crossing (:func:`_axon_cover_rule`); 0
            disables the rule. Connectivity default 0.65 at pixels of at least :data:`AXON_COVER_MIN_PIXEL_UM`, else 0.
        detect_injection: find the injection site (connectivity only).
        saturation_counts: the saturation level (counts); ``None``: the full scale of the smallest bit depth
            (8, 10, 12, 14, 16) holding the image's maximum.
        injection_level: the site is where the counts are at least this fraction of the way from the typical
            tissue background to saturation (0..1).
        injection_window_um: the site is at least this wide (um): the bright pixels are opened by a square of
            this side, which removes axons (however bright) and keeps the site's plateau.
        noise_refits: fit the noise model again this many times on the tissue left once the candidates (and
            their neighbours) are taken out, when the candidates cover more than :data:`REFIT_DENSITY` of the
            tissue: where signal is dense over whole blocks (a mesh of axons around an injection) the first fit
            takes it for noise. Connectivity default 1, ISH 0.
        noise_low_pairs: the noise fit's pairs are :data:`NOISE_PAIR_LAG_PX` pixels apart and only the lowest
            :data:`NOISE_PAIR_FRACTION` of each block's pairs by their sum enter (:func:`fit_noise_model`): a mesh
            of axons over every block is not read as noise. ``False``: horizontally adjacent pixels, all pairs.
            Connectivity default ``True``, ISH ``False``.
    """

    product: str = "connectivity"
    pixel_size_um: float = 10.0
    signal_channel: str = "signal"
    tissue_channel: str = "tissue"
    tissue_threshold: float | None = None
    tissue_level_fraction: float = 0.1
    tissue_noise_sigmas: float | None = None
    background_window_um: float | None = None
    background_block_um: float = 200.0
    background_quantile: float = 0.1
    background_excess: float | None = None
    noise_block_um: float = 200.0
    noise_samples: int = 12
    threshold_sigmas: float = 5.0
    cell_diameter_um: float | None = None
    peak_fraction: float = 0.0
    pixel_correction: bool = True
    speck_um: float = 3.0
    peak_smooth_um: float = 0.0
    axon_fraction: float = 0.0
    axon_cover: float = 0.0
    subpixel_cells: bool = True
    cut_above_noise: bool = True
    detect_injection: bool = True
    saturation_counts: float | None = None
    injection_level: float = 0.5
    injection_window_um: float = 50.0
    noise_refits: int = 0
    noise_low_pairs: bool = False

    def __post_init__(self) -> None:
        if self.product not in PRODUCTS:
            raise ValueError(f"DetectionParams.product must be one of {PRODUCTS}, got {self.product!r}")
        for name in ("pixel_size_um", "noise_block_um", "cell_diameter_um", "injection_window_um",
                     "threshold_sigmas", "speck_um"):
            value = getattr(self, name)
            if name == "cell_diameter_um" and value is None:
                continue
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"DetectionParams.{name} must be a positive number, got {value!r}")
        if self.background_window_um is not None and not self.background_window_um > 0:
            raise ValueError(f"DetectionParams.background_window_um must be positive, got {self.background_window_um!r}")
        for name in ("tissue_level_fraction", "peak_fraction", "injection_level", "axon_fraction", "axon_cover"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"DetectionParams.{name} must be in [0, 1), got {value!r}")
        if not 0 < self.background_quantile < 0.5:
            raise ValueError(f"DetectionParams.background_quantile must be in (0, 0.5), got {self.background_quantile!r}")
        if not (self.background_block_um > 0 and (self.background_excess is None or self.background_excess >= 0)):
            raise ValueError("DetectionParams: background_block_um must be positive and background_excess >= 0")
        if self.tissue_noise_sigmas is not None and not self.tissue_noise_sigmas > 0:
            raise ValueError(f"DetectionParams.tissue_noise_sigmas must be positive or None, got "
                             f"{self.tissue_noise_sigmas!r}")
        if self.noise_samples < 4:
            raise ValueError(f"DetectionParams.noise_samples must be >= 4, got {self.noise_samples}")

    @classmethod
    def for_product(cls, product: str, pixel_size_um: float, **overrides: Any) -> DetectionParams:
        """The defaults of ``product`` at ``pixel_size_um`` -- ISH: cells cut at half maximum, no injection;
        connectivity: axons and the injection site. Keyword arguments override any field."""
        if product == "ish":
            base: dict[str, Any] = dict(peak_fraction=0.5, detect_injection=False, background_excess=2.0,
                                        peak_smooth_um=3.0, tissue_noise_sigmas=TISSUE_NOISE_SIGMAS)
        elif product == "connectivity":
            coarse = float(pixel_size_um) >= AXON_COVER_MIN_PIXEL_UM  # an axon crosses under half a pixel
            base = dict(peak_fraction=0.0, detect_injection=True, noise_refits=1, noise_low_pairs=True,
                        axon_fraction=0.0 if coarse else 0.4, axon_cover=0.65 if coarse else 0.0)
        else:
            raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")
        return cls(product=product, pixel_size_um=float(pixel_size_um), **{**base, **overrides})

    @classmethod
    def for_dataset(cls, dataset: Any, **overrides: Any) -> DetectionParams:
        """:meth:`for_product` for a :class:`~brainmap.specimen.SectionDataSet`: its product and pixel size.
        Nothing is read from its metadata (an ISH cell size is measured from each image)."""
        merged: dict[str, Any] = {"pixel_size_um": dataset.pixel_size_um}
        merged.update(overrides)
        return cls.for_product(dataset.product, **merged)

    def with_(self, **changes: Any) -> DetectionParams:
        """A copy with some fields changed."""
        return replace(self, **changes)

    # -- derived sizes (pixels) --------------------------------------------------------------------------
    def _px(self, um: float, minimum: int = 1) -> int:
        return max(minimum, int(round(um / self.pixel_size_um)))

    @property
    def diameter_um(self) -> float:
        """:attr:`cell_diameter_um`, or the fallback size while it is still to be measured."""
        from brainmap.pipeline.detect.cell_size import FALLBACK_DIAMETER_UM

        return float(self.cell_diameter_um) if self.cell_diameter_um is not None else FALLBACK_DIAMETER_UM

    @property
    def background_window_px(self) -> int:
        """Side of the opening's square (pixels, odd, >= 3)."""
        um = self.background_window_um
        if um is None:
            if self.product == "ish":
                um = 3.0 * self.diameter_um
            else:  # axons: coarse pixels need a wider window in a mesh (AXON_BACKGROUND_WINDOW_UM)
                um = AXON_BACKGROUND_WINDOW_UM if self.pixel_size_um >= AXON_COVER_MIN_PIXEL_UM else 50.0
        size = self._px(um, 3)
        return size + (size + 1) % 2

    @property
    def effective_peak_fraction(self) -> float:
        """The fraction of the local maximum that outlines a cell in the image.

        A cell is a Gaussian spot of ``sigma = cell_diameter / 2.3548`` (``s`` in pixels). The camera integrates
        it over a pixel (variance ``1/12`` px^2 per axis: ``s_e^2 = s^2 + 1/12``) and the brightest pixel sits a
        random sub-pixel distance from the true peak (mean square ``1/6`` px^2), which lowers the local maximum
        by ``exp(-1/(12 s_e^2))`` on average. Cutting at ``peak_fraction`` of the true peak of the true spot is
        then cutting at ``peak_fraction ** (s^2 / s_e^2) * exp(1 / (12 s_e^2))`` of the local maximum: 0.5 at
        fine pixels, ~0.54 at cells of 3 pixels, ~0.67 at 1.5 pixels. Without :attr:`pixel_correction`:
        :attr:`peak_fraction`.
        """
        alpha = self.peak_fraction
        if alpha <= 0 or not self.pixel_correction:
            return alpha
        s2 = (self.diameter_um / 2.3548 / self.pixel_size_um) ** 2
        se2 = s2 + 1.0 / 12.0
        fraction = alpha ** (s2 / se2) * math.exp(1.0 / (12.0 * se2))
        w = self.peak_smooth_px
        if w >= 2:
            # the local maximum is of the contrast averaged over w x w pixels: a Gaussian's peak drops by g
            g = (math.sqrt(2.0 * math.pi * se2) / w * math.erf(w / (2.0 * math.sqrt(2.0 * se2)))) ** 2
            fraction /= g
        return float(min(fraction, 0.95))

    @property
    def peak_smooth_px(self) -> int:
        """Side (pixels, odd) of the averaging before the cell rule's local maximum; < 2: none."""
        size = int(round(self.peak_smooth_um / self.pixel_size_um))
        return size | 1 if size >= 2 else 0

    @property
    def cell_window_px(self) -> int:
        """Side of the local-maximum window (pixels, odd, >= 3): one cell diameter rounded up to whole pixels
        (rounded down, a cell of 3.3 pixels would be judged against a 3-pixel window that can miss its peak)."""
        size = max(3, int(math.ceil(self.diameter_um / self.pixel_size_um - 1e-9)))
        return size + (size + 1) % 2

    @property
    def speck_px(self) -> int:
        """Side of the binary opening's square (pixels): ``floor(speck_um / pixel_size_um)``; < 2: no opening."""
        return int(math.floor(self.speck_um / self.pixel_size_um + 1e-9))


@dataclass(frozen=True)
class NoiseModel:
    """The camera noise of one image: ``sigma(B) = sqrt(a + b * B)`` counts at background ``B`` counts, and the
    top-hat's noise offset ``offset`` (in sigmas)."""

    a: float
    b: float
    offset: float

    def sigma(self, background: np.ndarray | float) -> np.ndarray | float:
        """Noise standard deviation (counts) at a background level (counts)."""
        return np.sqrt(self.a + self.b * np.maximum(background, 0))

    def threshold_table(self, sigmas: float, size: int = 65536) -> np.ndarray:
        """uint16 lookup table: background counts -> the counts a pixel must exceed to be a candidate,
        ``B + (offset + sigmas) * sigma(B)`` (rounded up, clipped to 65535)."""
        levels = np.arange(size, dtype=np.float64)
        table = np.ceil(levels + (self.offset + sigmas) * self.sigma(levels))
        return np.minimum(table, 65535).astype(np.uint16)


@dataclass
class DetectionResult:
    """What :func:`detect_section` finds in one section image (all images ``(rows, cols)``).

    Attributes:
        mask: uint16 grayscale signal mask: the background-subtracted intensity (counts, >= 1) where signal, 0
            elsewhere (Allen's expression / projection mask).
        tissue: bool, tissue pixels (the denominator of densities).
        injection: bool, the injection site (connectivity), or ``None`` when the image holds none.
        signal_counts: the raw signal channel (the input array, not copied): gridding sums it over tissue
            (Allen's ``sum_pixel_intensity``).
        noise: the fitted :class:`NoiseModel`.
        tissue_threshold: the tissue-channel threshold used (counts).
        saturation_counts: the saturation level looked for (connectivity) or ``None``.
    """

    mask: np.ndarray
    tissue: np.ndarray
    injection: np.ndarray | None
    signal_counts: np.ndarray
    noise: NoiseModel
    tissue_threshold: float
    saturation_counts: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def signal(self) -> np.ndarray:
        """bool: the detected signal pixels (``mask > 0``)."""
        return self.mask > 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]


# -- running min / max (flat squares) -------------------------------------------------------------------------
def _running_1d(image: np.ndarray, size: int, axis: int, op: Callable) -> np.ndarray:
    """``op`` (np.minimum / np.maximum) over a centred window of ``size`` pixels along ``axis``; the border is
    replicated. Doubling: windows of 1, 2, 4, ... then two overlapping ones: ``log2(size) + 2`` passes."""
    if size <= 1:
        return image.copy()
    n = image.shape[axis]
    r = size // 2

    def cut(start: int | None, stop: int | None) -> tuple[slice, ...]:
        index = [slice(None)] * image.ndim
        index[axis] = slice(start, stop)
        return tuple(index)

    # the border replicated (np.pad's "edge", by three copies: np.pad's own overhead is ~10x on a small image)
    shape = list(image.shape)
    shape[axis] += size - 1
    buf = np.empty(shape, image.dtype)
    buf[cut(r, r + n)] = image
    buf[cut(0, r)] = image[cut(0, 1)]
    buf[cut(r + n, None)] = image[cut(n - 1, n)]
    other = np.empty_like(buf)

    span, length = 1, buf.shape[axis]
    while span * 2 <= size:
        op(buf[cut(0, length - span)], buf[cut(span, length)], out=other[cut(0, length - span)])
        buf, other = other, buf
        length -= span
        span *= 2
    return op(buf[cut(0, n)], buf[cut(size - span, size - span + n)])


def running_min(image: np.ndarray, size: int) -> np.ndarray:
    """Grey erosion by a flat ``size`` x ``size`` square (border replicated); same dtype."""
    return _running_1d(_running_1d(image, size, 0, np.minimum), size, 1, np.minimum)


def running_max(image: np.ndarray, size: int) -> np.ndarray:
    """Grey dilation by a flat ``size`` x ``size`` square (border replicated); same dtype."""
    return _running_1d(_running_1d(image, size, 0, np.maximum), size, 1, np.maximum)


def grey_opening(image: np.ndarray, size: int) -> np.ndarray:
    """Grey opening by a flat square: removes bright objects narrower than ``size`` pixels."""
    return running_max(running_min(image, size), size)


def _block_min(image: np.ndarray, block: int) -> np.ndarray:
    """Minimum over ``block`` x ``block`` blocks (the last ones partial): strided minima, about one pass."""
    rows, cols = image.shape
    out = image[::block].copy()
    for i in range(1, block):
        part = image[i::block]
        np.minimum(out[: part.shape[0]], part, out=out[: part.shape[0]])
    result = out[:, ::block].copy()
    for j in range(1, block):
        part = out[:, j::block]
        np.minimum(result[:, : part.shape[1]], part, out=result[:, : part.shape[1]])
    return result


def background_opening(image: np.ndarray, size: int, max_window: int = 16) -> np.ndarray:
    """The grey opening by a ``size`` square, on a coarser lattice when the window is large.

    Above ``max_window`` pixels, the image is reduced to the minima of ``c x c`` blocks (``c = size //
    (max_window / 2)``), eroded there by ``k = ceil(size / c)`` blocks, dilated by ``k + 2`` (a block-aligned
    erosion reaches up to a block too far; the wider dilation brings a step edge back to its place) and expanded
    back, never above the image: the background is constant over ``c x c`` pixels (a few microns at fine pixels)
    at a fraction of the cost of the exact opening.
    """
    if size <= max_window:
        return grey_opening(image, size)
    c = max(2, size // (max_window // 2))
    window = int(math.ceil(size / c)) | 1
    coarse = running_max(running_min(_block_min(image, c), window), window + 2)
    rows, cols = image.shape
    background = np.repeat(np.repeat(coarse, c, axis=0)[:rows], c, axis=1)[:, :cols]
    return np.minimum(background, image, out=background)


# -- tissue ---------------------------------------------------------------------------------------------------
def _subsample(image: np.ndarray, target: int = 65_536) -> np.ndarray:
    step = max(1, int(math.sqrt(image.size / target)))
    return image[::step, ::step]


def _otsu(values: np.ndarray, bins: int = 256, weights: np.ndarray | None = None) -> float:
    """Otsu's threshold of a 1-D sample (``weights``: how many times each value occurs)."""
    hist, edges = np.histogram(values, bins=bins, weights=weights)
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def tissue_threshold(tissue_counts: np.ndarray, level_fraction: float = 0.1,
                     noise_sigmas: float | None = None) -> float:
    """Automatic tissue threshold (counts) of a tissue-channel image.

    Otsu on ``log(1 + counts)`` of a subsample splits glass from tissue; the threshold is
    ``glass + level_fraction * (tissue - glass)`` with the two classes' medians. If the classes differ by less
    than a factor 2.5 the image is one class (e.g. a crop inside the brain, all tissue): the threshold is then a
    quarter of the median, so only holes are not tissue. With ``noise_sigmas`` the threshold is lowered to the
    glass's noise floor where that is lower: the mode of the glass class plus ``noise_sigmas`` times its noise
    sigma, measured on the mode's dark side (1.4826 x the median distance below the mode: what lies above the
    mode may be dim tissue), at least the counts' quantum. Where the glass class is dim tissue (an image with almost no
    glass) its floor lies above the level threshold and nothing changes.
    """
    counts = _subsample(np.asarray(tissue_counts)).ravel()
    sample = counts.astype(np.float32)
    if sample.size == 0:
        return 0.0
    integral = counts.dtype.kind == "u" and counts.dtype.itemsize <= 2  # (np.bincount takes no negatives)
    if integral:
        # whole counts: Otsu and the class medians from the histogram of the counts, each value's logarithm
        # taken once (the same numbers as on every pixel: ~3x less on a small image)
        hist = np.bincount(counts)
        levels = np.flatnonzero(hist)
        level_logs = np.log1p(levels.astype(np.float32))
        if float(level_logs[-1]) - float(level_logs[0]) < 1e-6:
            return float(sample[0]) * 0.25
        below = level_logs < _otsu(level_logs, weights=hist[levels])
        in_low = np.zeros(hist.size, bool)
        in_low[levels[below]] = True
        low = sample[np.take(in_low, counts)] if noise_sigmas is not None else sample
        if not below.any() or below.all():
            return _median_of_counts(levels, hist[levels]) * 0.25
        glass = _median_of_counts(levels[below], hist[levels[below]])
        tissue = _median_of_counts(levels[~below], hist[levels[~below]])
    else:
        logs = np.log1p(sample)
        if float(logs.max()) - float(logs.min()) < 1e-6:
            return float(sample[0]) * 0.25
        split = _otsu(logs)
        low, high = sample[logs < split], sample[logs >= split]
        if low.size == 0 or high.size == 0:
            return float(np.median(sample)) * 0.25
        glass, tissue = float(np.median(low)), float(np.median(high))
    if tissue < 2.5 * max(glass, 1.0):
        return (_median_of_counts(levels, hist[levels]) if integral else float(np.median(sample))) * 0.25
    threshold = glass + level_fraction * (tissue - glass)
    if noise_sigmas is not None:
        # the counts' quantum (1 for a camera's counts, 257 for 8-bit values scaled to 16 bits): glass saturated
        # white reads one value, and a pale mark one quantum from it (a scale bar) is not tissue
        steps = np.diff(np.unique(sample[:: max(1, sample.size // 4096)]))  # a few thousand values tell it
        threshold = min(threshold, _glass_floor(low, noise_sigmas, float(steps.min()) if steps.size else 1.0))
    return threshold


def _median_of_counts(values: np.ndarray, counts: np.ndarray) -> float:
    """``np.median`` of the whole numbers ``values[i]`` each occurring ``counts[i]`` times (``values`` ascending,
    distinct, ``counts`` > 0): the mean of the two middle ones."""
    return _middle_pair_sum(values, counts) / 2.0


def _middle_pair_sum(values: np.ndarray, counts: np.ndarray) -> int:
    """The sum of the two middle values (the middle one twice when the total is odd) of ``counts[i]`` copies of
    ``values[i]`` (``values`` ascending): twice their median, as ``np.median`` takes it."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    upper = int(values[np.searchsorted(cumulative, n // 2, side="right")])  # the (n // 2)-th smallest, from 0
    lower = upper if n % 2 else int(values[np.searchsorted(cumulative, n // 2 - 1, side="right")])
    return lower + upper


#: :attr:`DetectionParams.tissue_noise_sigmas` of ISH: the glass's noise floor, in glass noise sigmas. Far enough
#: out that glass noise is not tissue (Gaussian tail ~1e-9), near enough to keep tissue of a few percent of the
#: full tissue signal (the second family's dim edges: ~7 sigma above its glass).
TISSUE_NOISE_SIGMAS = 6.0


def _glass_floor(glass: np.ndarray, sigmas: float, quantum: float) -> float:
    """The mode of the glass class's counts plus ``sigmas`` noise sigmas (its dark side's spread, at least the
    counts' ``quantum``), counts; +inf where the class is too small to tell."""
    if glass.size < 100:
        return float("inf")
    glass = glass[:: max(1, glass.size // 16384)]  # the mode and the spread of a few thousand values suffice
    lo, hi = np.percentile(glass, [0.5, 99.5])
    hist, edges = np.histogram(glass, bins=128, range=(float(lo), float(hi) + 1.0))
    top = int(np.argmax(hist))
    mode = float(edges[top] + edges[top + 1]) / 2.0
    below = mode - glass[glass <= mode]
    if below.size < 20:
        return float("inf")
    return mode + sigmas * max(1.4826 * float(np.median(below)), quantum, 1.0)


def detect_tissue(tissue_counts: np.ndarray, params: DetectionParams) -> tuple[np.ndarray, float]:
    """``(tissue mask, threshold)``: tissue-channel pixels above the threshold (counts; automatic unless
    ``params.tissue_threshold`` is set)."""
    threshold = (params.tissue_threshold if params.tissue_threshold is not None
                 else tissue_threshold(tissue_counts, params.tissue_level_fraction, params.tissue_noise_sigmas))
    return np.asarray(tissue_counts) > threshold, float(threshold)


# -- large-scale background -----------------------------------------------------------------------------------
def _fill_from_neighbours(values: np.ndarray, valid: np.ndarray, fallback: float,
                          needed: np.ndarray | None = None) -> np.ndarray:
    """Replace invalid entries of a small 2-D array by the mean of valid neighbours, growing outwards
    (normalized 3 x 3 box, repeated); ``fallback`` if nothing is valid. With ``needed`` (bool, the entries whose
    value is used) the growth stops once those are filled: the others keep ``fallback`` (an entry's value depends
    only on the steps before it was filled, so the needed ones are what they would be)."""
    if not valid.any():
        return np.full(values.shape, fallback, dtype=np.float64)
    out = np.where(valid, values, 0.0).astype(np.float64)
    have = valid.astype(np.float64)
    todo = ~valid
    for _ in range(sum(values.shape)):
        if not (todo.any() if needed is None else (todo & needed).any()):
            break
        sums = ndimage.uniform_filter(out * have, 3, mode="nearest")
        weights = ndimage.uniform_filter(have, 3, mode="nearest")
        grow = todo & (weights > 1e-9)
        out[grow] = sums[grow] / weights[grow]
        have[grow] = 1.0
        todo &= ~grow
    out[todo] = fallback
    return out


def large_scale_background(counts: np.ndarray, tissue: np.ndarray, params: DetectionParams
                           ) -> tuple[np.ndarray, int]:
    """``(levels, block)``: the large-scale background (counts) per block of ``block`` pixels, float64
    ``(ceil(rows / block), ceil(cols / block))``.

    Per block, ``params.background_quantile`` of its tissue pixels (a subsample of at most 16 x 16); blocks with
    under a quarter tissue, and outliers (above ``Q50 + 4 (Q50 - Q05)`` of the blocks: full of signal), take the
    mean of their valid neighbours, spreading outwards; blocks without any tissue pixel may be left at the median
    of the valid blocks (nothing of theirs is detected).
    """
    rows, cols = counts.shape
    block = max(2, params._px(params.background_block_um, 2))
    step = max(1, -(-block // 16))
    m = -(-block // step)
    block = m * step
    nby, nbx = -(-rows // block), -(-cols // block)
    sub = np.full((nby * m, nbx * m), np.inf, dtype=np.float32)
    part = counts[::step, ::step]
    sub[: part.shape[0], : part.shape[1]] = np.where(tissue[::step, ::step], part, np.inf)
    values = sub.reshape(nby, m, nbx, m).transpose(0, 2, 1, 3).reshape(nby, nbx, m * m)
    values.sort(axis=-1)
    count = np.isfinite(values).sum(axis=-1)
    pick = np.floor(params.background_quantile * np.maximum(count - 1, 0)).astype(np.intp)
    level = np.take_along_axis(values, pick[..., None], -1)[..., 0].astype(np.float64)
    valid = count >= (m * m) // 4
    if valid.any():
        q05, q50 = np.quantile(level[valid], [0.05, 0.5])
        valid &= level <= q50 + 4.0 * (q50 - q05) + 1.0
    fallback = float(np.median(level[valid])) if valid.any() else 0.0
    # only blocks holding tissue are used (nothing outside the tissue is detected): the growth into the glass
    # stops there (half the fill's passes on a whole section)
    # (the tissue's rows ORed per block as bits, 8 pixels a byte: ~6x less than on the bool image)
    tissue_rows = np.bitwise_or.reduceat(np.packbits(tissue, axis=1), np.arange(0, rows, block), axis=0)
    needed = np.logical_or.reduceat(np.unpackbits(tissue_rows, axis=1, count=cols).view(bool),
                                    np.arange(0, cols, block), axis=1)
    return _fill_from_neighbours(level, valid, fallback, needed), block


# -- noise ----------------------------------------------------------------------------------------------------
def _block_samples(image: np.ndarray, step: int, m: int) -> np.ndarray:
    """``(nby, nbx, m*m)``: the subsample ``image[::step, ::step]`` grouped by blocks of ``m`` x ``m`` samples
    (blocks that do not fit whole are dropped)."""
    sub = image[::step, ::step]
    nby, nbx = sub.shape[0] // m, sub.shape[1] // m
    sub = sub[: nby * m, : nbx * m]
    return sub.reshape(nby, m, nbx, m).transpose(0, 2, 1, 3).reshape(nby, nbx, m * m)


def _block_quantile(values: np.ndarray, valid: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Per block (last axis) ``q`` quantile (lower) of the valid entries, and their count."""
    (quantile,), count = _block_quantiles(values, valid, (q,))
    return quantile, count


def _block_quantiles(values: np.ndarray, valid: np.ndarray, qs: tuple[float, ...]
                     ) -> tuple[list[np.ndarray], np.ndarray]:
    """Per block (last axis) the ``qs`` quantiles (lower) of the valid entries (one sort), and their count."""
    work = np.where(valid, values, np.inf)
    work.sort(axis=-1)
    count = valid.sum(axis=-1)
    picks = [np.floor(q * np.maximum(count - 1, 0)).astype(np.intp) for q in qs]
    return [np.take_along_axis(work, pick[..., None], -1)[..., 0] for pick in picks], count


def _lower_envelope_fit(level: np.ndarray, variance: np.ndarray, bins: int = 8, q: float = 0.3
                        ) -> tuple[float, float]:
    """Fit ``variance = a + b * level`` to the lower envelope of per-block estimates: signal only ever inflates a
    block's variance, so in each of ``bins`` level bins (equal counts) the ``q`` quantile of the variance and the
    median level are taken, and a line with ``a >= 0.25``, ``b >= 0`` is fitted to those points."""
    order = np.argsort(level)
    # np.array_split's groups (the first n % k one longer) as the rows of two arrays: one call per statistic and
    # length instead of one per group (the same numbers: the statistics are taken row by row alike)
    k = min(bins, level.size)
    size, longer = divmod(level.size, k)
    rows = [part for part in (order[: longer * (size + 1)].reshape(longer, size + 1),
                              order[longer * (size + 1):].reshape(k - longer, size)) if part.size]
    # each row of ``level[order]`` is sorted: its median is its middle (np.median's mean of the middle two)
    x = np.concatenate([(level[part[:, (part.shape[1] - 1) // 2]] + level[part[:, part.shape[1] // 2]]) / 2
                        for part in rows])
    y = np.concatenate([np.quantile(variance[part], q, axis=1) for part in rows])
    if x.size >= 2 and np.ptp(x) > 0:
        b, a = np.polyfit(x, y, 1)
        if b < 0:
            a, b = float(np.median(y)), 0.0
    else:
        a, b = float(np.median(y)), 0.0
    return max(float(a), 0.25), max(float(b), 0.0)


def _noise_grid(shape: tuple[int, int], params: DetectionParams) -> tuple[int, int]:
    """``(block, step)`` in pixels of the noise fit: blocks of at least ``noise_block_um`` and at most
    :data:`NOISE_MAX_BLOCKS` of them, sampled every ``step`` pixels (``noise_samples`` per block side)."""
    rows, cols = shape
    block = max(params._px(params.noise_block_um, 2), int(math.ceil(math.sqrt(rows * cols / NOISE_MAX_BLOCKS))))
    step = max(1, block // params.noise_samples)
    return step * max(2, -(-block // step)), step


def fit_noise_model(counts: np.ndarray, background: np.ndarray, tissue: np.ndarray,
                    params: DetectionParams) -> NoiseModel:
    """Fit :class:`NoiseModel` to one image (module docstring, step 3).

    ``counts`` raw signal counts, ``background`` the opening, ``tissue`` the tissue mask, all ``(rows, cols)``.
    With ``params.noise_low_pairs`` the pairs are :data:`NOISE_PAIR_LAG_PX` apart and, per block, only those whose
    sum is at most the block's :data:`NOISE_PAIR_FRACTION` quantile of sums enter: for two values of one Gaussian
    noise (equal variances) the sum and the difference are independent, so the choice leaves the differences'
    distribution -- and the half-normal constant -- unchanged, while a fibre, which only adds light, raises the
    sum of every pair it touches. Their spread is the half-width of their central quarter (the 0.375 and 0.625
    quantiles): a slope of the background offsets them all alike and cancels.
    """
    rows, cols = counts.shape
    lag = NOISE_PAIR_LAG_PX if params.noise_low_pairs else 1
    if cols <= lag or rows < 1:
        return NoiseModel(1.0, 0.0, 0.0)
    block, step = _noise_grid((rows, cols - 1), params)
    m = block // step
    # Only the samples are needed: take them, then difference the pixels ``lag`` apart along a row.
    lsub = _block_samples(counts[:, :-lag], step, m).astype(np.float32)
    rsub = _block_samples(counts[:, lag:], step, m).astype(np.float32)
    tsub = _block_samples(tissue[:, :-lag], step, m) & _block_samples(tissue[:, lag:], step, m)
    bsub = _block_samples(background[:, :-lag], step, m).astype(np.float32)
    if tsub.size == 0 or not tsub.any():
        return NoiseModel(1.0, 0.0, 0.0)
    level, count = _block_quantile(bsub, tsub, 0.5)
    if params.noise_low_pairs:
        sums = lsub + rsub
        cut, _ = _block_quantile(sums, tsub, NOISE_PAIR_FRACTION)
        # the half-width of the differences' central quarter: the background's slope over a block offsets every
        # pair's difference alike (3x an adjacent pair's: the glow around an injection site) and cancels; for a
        # noise symmetric about 0 it is the quartile of |difference|
        (lower, upper), _ = _block_quantiles(lsub - rsub, tsub & (sums <= cut[..., None]), (0.375, 0.625))
        with np.errstate(invalid="ignore"):  # blocks without a pair: inf - inf (left out below, by their count)
            low_diff = (upper - lower) / 2
    else:
        low_diff, _ = _block_quantile(np.abs(lsub - rsub), tsub, 0.25)
    # |difference of two pixels| is half-normal with scale sigma * sqrt(2); its quartile is 0.4506 sigma.
    variance = (low_diff / 0.4506) ** 2
    use = count >= max(8, (m * m) // 4)
    if int(use.sum()) < 3:
        a, b = max(float(np.median(variance[count > 0])), 0.25), 0.0
    else:
        a, b = _lower_envelope_fit(level[use].astype(np.float64), variance[use].astype(np.float64))
    return NoiseModel(a, b, tophat_noise_offset(params.background_window_px))


@lru_cache(maxsize=64)
def tophat_noise_offset(window_px: int) -> float:
    """The median of the top-hat ``x - opening(x)`` of white Gaussian noise of unit variance, for an opening by a
    ``window_px`` square: the top-hat of pure noise is not centred on 0 (the opening sits below the mean), and
    this is its offset in sigmas. Computed once per window on a fixed simulated image (deterministic)."""
    rng = np.random.default_rng(20240611)
    noise = rng.standard_normal((256, 256)).astype(np.float32)
    tophat = noise - grey_opening(noise, int(window_px))
    return float(np.median(tophat))


# -- injection ------------------------------------------------------------------------------------------------
def saturation_level(counts: np.ndarray, params: DetectionParams, top: float | None = None) -> float:
    """The saturation level (counts): ``params.saturation_counts`` or the full scale of the smallest of 8, 10,
    12, 14, 16 bits that holds the image's maximum."""
    if params.saturation_counts is not None:
        return float(params.saturation_counts)
    top = float(np.max(counts)) if top is None else top
    for bits in _BIT_DEPTHS:
        if top <= 2**bits - 1:
            return float(2**bits - 1)
    return top


def detect_injection(counts: np.ndarray, tissue: np.ndarray, level: float, params: DetectionParams
                     ) -> np.ndarray | None:
    """The injection site (bool) of an image, or ``None`` if it holds none.

    The site is the *bright* pixels (counts >= ``level``, a plateau the top-hat cannot see) opened by a square of
    ``params.injection_window_um`` -- axons, however bright, are far narrower and vanish -- with its holes
    filled, within the tissue.
    """
    bright = counts >= level
    window = max(3, int(round(params.injection_window_um / params.pixel_size_um)) | 1)
    if np.count_nonzero(bright) < window * window:
        return None
    core = running_min(bright.view(np.uint8), window)
    if not core.any():
        return None
    site = running_max(core, window).view(bool)
    rows, cols = np.nonzero(site.any(axis=1))[0], np.nonzero(site.any(axis=0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    site[box] = ndimage.binary_fill_holes(site[box])
    site &= tissue
    return site if site.any() else None


# -- one section ----------------------------------------------------------------------------------------------
def detect_section(image_arrays: Mapping[str, np.ndarray], params: DetectionParams) -> DetectionResult:
    """Detect signal in one section image (module docstring for the method).

    Parameters
    ----------
    image_arrays : mapping channel name -> ``(rows, cols)`` array
        At least ``params.signal_channel`` and ``params.tissue_channel``: unsigned integer counts (uint16),
        one shape.
    params : DetectionParams
        Method parameters (units in :class:`DetectionParams`); :meth:`DetectionParams.for_dataset` gives a data
        set's defaults.

    Returns
    -------
    DetectionResult
        The grayscale signal mask (uint16, the image's shape), the tissue mask, the injection site
        (connectivity, when the image saturates) and the fitted noise model.
    """
    for name in (params.signal_channel, params.tissue_channel):
        if name not in image_arrays:
            raise KeyError(f"detect_section: no channel {name!r} (have {', '.join(image_arrays)})")
    counts = np.asarray(image_arrays[params.signal_channel])
    tissue_counts = np.asarray(image_arrays[params.tissue_channel])
    if counts.ndim != 2 or counts.shape != tissue_counts.shape:
        raise ValueError(f"detect_section: the channels must be 2-D images of one shape, got {counts.shape} and "
                         f"{tissue_counts.shape}")
    if counts.dtype.kind != "u" or counts.dtype.itemsize > 2:
        if counts.size and (counts.min() < 0 or counts.max() > 65535):
            raise ValueError("detect_section: signal counts must lie in 0..65535")
        counts = counts.astype(np.uint16)
    work = counts.astype(np.uint16, copy=False)

    rows, cols = work.shape
    tissue, threshold = detect_tissue(tissue_counts, params)
    if params.product == "ish" and params.cell_diameter_um is None:
        from brainmap.pipeline.detect.cell_size import estimate_cell_diameter_um

        params = params.with_(cell_diameter_um=estimate_cell_diameter_um(work, tissue, params.pixel_size_um))
    background = background_opening(work, params.background_window_px)
    if params.background_excess is not None:
        levels, block = large_scale_background(work, tissue, params)
        cap = np.minimum(np.ceil(levels * (1.0 + params.background_excess)), 65535).astype(np.uint16)
        cap = np.repeat(np.repeat(cap, block, axis=0)[:rows], block, axis=1)[:, :cols]
        np.minimum(background, cap, out=background)
    injection = None
    saturation = None
    level = 0.0
    if params.detect_injection and params.product == "connectivity":
        saturation = saturation_level(work, params)
        sub_tissue = _subsample(tissue)
        typical = float(np.median(_subsample(background)[sub_tissue])) if sub_tissue.any() else 0.0
        level = typical + params.injection_level * (saturation - typical)
        injection = detect_injection(work, tissue, level, params)
    # the site is signal, not background: its bright texture is not the camera's noise
    noise_tissue = tissue if injection is None else tissue & ~injection
    noise = fit_noise_model(work, background, noise_tissue, params)
    levels_used = int(background.max()) + 1 if background.size else 1  # the table up to the highest background
    table = noise.threshold_table(params.threshold_sigmas, levels_used)
    detected = work > np.take(table, background)  # np.take: ~2x a fancy index here
    detected &= tissue
    for _ in range(params.noise_refits):
        # Signal inflates the variance of the blocks it covers; where it is dense (a mesh of axons) whole level
        # bins of the fit are signal and the noise comes out far too high: refit on the pixels not yet signal.
        sub_tissue = _subsample(tissue)
        if np.count_nonzero(_subsample(detected)) <= REFIT_DENSITY * np.count_nonzero(sub_tissue):
            break  # sparse signal: the first fit's lower envelope is clear of it
        clear = noise_tissue & ~running_max(detected.view(np.uint8), 3).view(bool)
        if np.count_nonzero(_subsample(clear)) < 0.25 * np.count_nonzero(sub_tissue):
            break  # too little tissue left clear of signal to fit on: keep the first fit
        noise = fit_noise_model(work, background, clear, params)
        table = noise.threshold_table(params.threshold_sigmas, levels_used)
        detected = work > np.take(table, background)
        detected &= tissue
    contrast = work - background  # the opening never exceeds the image: no wrap-around
    subpixel: dict[str, float] = {}
    info: dict[str, Any] = {}
    if params.peak_fraction > 0 and params.subpixel_cells and params.cell_window_px <= 3:
        # cells of 1-3 pixels: the sub-pixel peak and the spot's measured width set the cut (module docstring)
        detected &= _subpixel_cell_rule(contrast, detected, params, subpixel,
                                        (table, background) if params.cut_above_noise else None)
    elif params.peak_fraction > 0:
        # contrast >= fraction * local maximum, in integers: a lookup table of ceil(fraction * level)
        fraction_table = np.ceil(np.arange(65536) * params.effective_peak_fraction).astype(np.uint16)
        peak_source = contrast
        if params.peak_smooth_px >= 2:
            # the cell's level, not one bright granule: the local maximum of the contrast averaged over a few um
            peak_source = _box_mean(contrast, params.peak_smooth_px)
        cut = fraction_table[running_max(peak_source, params.cell_window_px)]
        detected &= contrast >= cut
        if params.cut_above_noise:
            at = np.flatnonzero(detected)
            detected.ravel()[at] = _cut_above_noise(np.take(cut.ravel(), at), at, table, background)
    if params.peak_fraction > 0:
        detected = _binary_opening(detected, params.speck_px)
        detected = _fill_small_holes(detected, 0.6 * math.pi * (params.diameter_um / 2 / params.pixel_size_um) ** 2)
    if params.product == "connectivity" and (params.axon_fraction > 0 or params.axon_cover > 0):
        # a pixel an axon only clips holds a fraction of the light of the pixels it crosses
        local_max = running_max(contrast, 3)
        if params.axon_fraction > 0:
            axon_table = np.ceil(np.arange(65536) * params.axon_fraction).astype(np.uint16)
            detected &= contrast >= axon_table[local_max]
        if params.axon_cover > 0:
            detected &= _axon_cover_rule(contrast, detected, local_max, params.axon_cover, info)

    info.update(background_window_px=params.background_window_px, cell_diameter_um=params.cell_diameter_um,
                **subpixel)
    if saturation is not None:
        info["injection_level_counts"] = level
        if injection is not None:
            bright = injection & (work >= level)
            detected |= bright
            # the top-hat is ~0 on the plateau: measure the site's signal over the typical background
            np.copyto(contrast, np.clip(work.astype(np.int32) - int(typical), 1, 65535).astype(np.uint16),
                      where=bright)

    # a detected pixel exceeds its background, so its contrast is >= 1 (the site's was clipped to >= 1)
    mask = contrast * detected
    return DetectionResult(mask=mask, tissue=tissue, injection=injection, signal_counts=counts, noise=noise,
                           tissue_threshold=threshold, saturation_counts=saturation, info=info)


def _axon_cover_rule(contrast: np.ndarray, candidates: np.ndarray, local_max: np.ndarray, fraction: float,
                     info: dict[str, Any]) -> np.ndarray:
    """The coverage rule for axons narrower than a pixel (bool, the pixels kept among ``candidates``).

    A pixel's light is the length of fibre in it times the fibre's brightness. A pixel is kept where its contrast
    is at least ``fraction`` of its fibre's *full crossing*, so that the brightness drops out:

    * a connected group (8-neighbours) of 2 to :data:`AXON_SEGMENT_PX` candidates is one fibre segment: its
      full crossing is its brightest pixel (pixels it only clips, and its ends, hold less);
    * a lone candidate has no fibre to compare with (a noise singleton or a segment's one visible pixel): it is
      judged, as the pixels of large groups, against the image's typical full crossing;
    * a larger group (crossing or overlapping fibres, a mesh, the injection site) has no one fibre brightness: its
      pixels are judged against the image's typical full crossing, the median contrast of the isolated peaks
      (:data:`AXON_MIN_PEAKS`), which overlaps and varicosities (bright) do not inflate as the local maximum does.

    ``local_max`` is the contrast's 3 x 3 running maximum. ``docs/detection-bounds.md`` gives what it gains on
    the second render family and why a per-pixel rule stops short of 0.9 / 0.9 there.
    """
    rows, cols = contrast.shape
    cy, cx = np.nonzero(candidates)
    keep = candidates.copy()
    if cy.size == 0:
        return keep
    value = contrast[cy, cx]
    peak = value >= local_max[cy, cx]
    py, px = cy[peak], cx[peak]
    if py.size == 0:
        return keep
    crowd = np.zeros(py.size, np.int32)  # candidates within 2 pixels of each peak (itself included)
    flat = candidates.ravel()
    rows_at = {d: np.clip(py + d, 0, rows - 1) * cols for d in range(-2, 3)}  # the border replicated
    cols_at = {d: np.clip(px + d, 0, cols - 1) for d in range(-2, 3)}
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            crowd += np.take(flat, rows_at[dy] + cols_at[dx])
    isolated = crowd <= AXON_SEGMENT_PX
    peaks = value[peak][isolated] if np.count_nonzero(isolated) >= AXON_MIN_PEAKS else value[peak]
    typical = float(np.median(peaks))
    labels, n = ndimage.label(candidates, structure=np.ones((3, 3), bool))
    own = labels[cy, cx]
    size = np.bincount(own, minlength=n + 1)
    brightest = np.asarray(ndimage.maximum(value, own, np.arange(n + 1)), np.float64)
    reference = np.where((size >= 2) & (size <= AXON_SEGMENT_PX), brightest, typical)
    keep[cy, cx] = value >= fraction * reference[own]
    info.update(axon_full_crossing=typical, axon_isolated_peaks=float(np.count_nonzero(isolated)))
    return keep


def _cut_above_noise(cut: np.ndarray, at: np.ndarray, table: np.ndarray, background: np.ndarray) -> np.ndarray:
    """bool, for the pixels of flat indices ``at``: whether the cut a cell rule puts them to (``cut``, contrast
    counts) lies above the noise threshold there (``table[B] - B``, the contrast a candidate exceeds at its
    background ``B``; ``table`` the :meth:`NoiseModel.threshold_table`).

    A candidate is kept by a cell rule where its contrast reaches the cut, a fraction of its cell's peak. Where the
    cut lies at or under the noise threshold, the cell's outline is not in the image: the pixels kept are those
    over the threshold, whatever the cell's shape, and the peak is no further over the noise than its outline
    would be under it. So the peak must exceed the threshold by the rule's own factor (1 / fraction) to make a
    cell: a hysteresis whose two levels both follow from the rule (the threshold for a pixel, the threshold over
    the cut fraction for a cell's peak), no new constant. Measured where the false positives are:
    ``docs/detection-bounds.md`` (round 9).
    """
    level = np.take(background.ravel(), at)
    return cut > np.take(table, level).astype(np.int32) - level  # the table is >= its level: no wrap-around


def _subpixel_cell_rule(contrast: np.ndarray, candidates: np.ndarray, params: DetectionParams,
                        info: dict[str, float], noise: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The cell rule where a cell spans 1-3 pixels (bool, the pixels kept among ``candidates``).

    The pixels are too coarse to show a cell's outline, and the brightest pixel is not its peak (the cell's centre
    lies anywhere in it). Each local maximum (3 x 3) of the candidates' contrast ``F`` gets a parabola through it
    and its 4 neighbours, per axis, whose vertex is its sub-pixel peak ``P``; a pixel is kept where ``F`` reaches
    ``fraction`` of the largest of ``P`` and ``F`` over its 3 x 3 neighbourhood. Which parabola and which fraction
    follow the cells' profile, told apart by the spread of the log-curvature ``2 ln F0 - ln F- - ln F+`` over the
    image's peaks (interquartile range over median, :data:`GAUSSIAN_SPREAD`):

    * **Gaussian-like spots** (a uniform log-curvature: every spot has one shape, only its sub-pixel offset and
      brightness vary, neither of which changes ``ln F``'s curvature): the parabola is through ``ln F``, its
      curvature ``1 / w`` for a spot of variance ``w`` px^2 as the pixels record it (blur, pixel integration and
      the cell's profile together; the median over the peaks). A pixel at the cell's edge, ``R = diameter / 2``
      from its centre (the diameter measured from the image's autocorrelation), holds ``exp(-R^2 / (2 w))`` of
      the peak.
    * **Flat cells** (a plateau with a steep edge, each pixel recording the fraction of it the cell covers: the
      log-curvature depends on where the edge falls in the pixels and spreads widely): the parabola is through
      ``F`` itself and the edge, the pixel half covered, holds half the plateau: ``params.peak_fraction``.

    ``noise``: ``(threshold table, background)``: a pixel is kept only where its cut lies above the noise threshold
    (:func:`_cut_above_noise`); ``None``: no such test.
    """
    rows, cols = contrast.shape
    # Only the candidates are looked at (a few percent of the pixels): their 3 x 3 neighbourhoods are gathered, by
    # flat indices (np.nonzero's two index arrays and 2-D gathers cost ~5x more).
    flat = contrast.ravel()
    at = np.flatnonzero(candidates)
    cy, cx = np.divmod(at, cols)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    rows_at = {d: np.clip(cy + d, 0, rows - 1) * cols for d in (-1, 0, 1)}  # the border replicated
    cols_at = {d: np.clip(cx + d, 0, cols - 1) for d in (-1, 0, 1)}
    local = np.take(flat, at)
    for dy, dx in offsets:
        if dy or dx:
            np.maximum(local, np.take(flat, rows_at[dy] + cols_at[dx]), out=local)
    value = np.take(flat, at)
    inner = (cy > 0) & (cy < rows - 1) & (cx > 0) & (cx < cols - 1)
    is_peak = (value >= local) & inner
    peaks = at[is_peak]
    keep = candidates.copy()
    if peaks.size < 10:
        fraction = params.effective_peak_fraction
        info.update(cut_fraction=float(fraction))
        cut = np.ceil(local * fraction)
        keep.ravel()[at] = (value >= cut) & (_cut_above_noise(cut, at, *noise) if noise is not None else True)
        return keep

    def values(dy: int, dx: int) -> np.ndarray:
        return np.maximum(np.take(flat, peaks + (dy * cols + dx)), 1).astype(np.float64)  # peaks are inner

    linear = values(0, 0), values(0, -1), values(0, 1), values(-1, 0), values(1, 0)
    logs = tuple(np.log(v) for v in linear)
    centre, left, right, up, down = logs
    log_curve = np.concatenate([2 * centre - left - right, 2 * centre - up - down])
    q1, q2, q3 = np.percentile(log_curve, [25, 50, 75])
    spread = float((q3 - q1) / q2) if q2 > 0 else float("inf")
    gaussian = spread <= GAUSSIAN_SPREAD
    centre, left, right, up, down = logs if gaussian else linear
    floor = 1e-3 if gaussian else 1e-6 * centre
    curve_x = np.maximum(2 * centre - left - right, floor)
    curve_y = np.maximum(2 * centre - up - down, floor)
    # the vertex of each axis' parabola lies at most half a pixel away: its rise is at most curve / 8
    rise = np.minimum((right - left) ** 2 / (8 * curve_x), curve_x / 8) + np.minimum((down - up) ** 2 / (8 * curve_y),
                                                                                      curve_y / 8)
    # each peak's sub-pixel peak reaches its 3 x 3 neighbours (all inside the image: a peak is inner); a pixel's
    # reference is the largest of them and its own local maximum
    crest = (np.exp(centre + rise) if gaussian else centre + rise).astype(np.float32)
    reach = np.zeros(rows * cols, np.float32)
    for dy, dx in offsets:  # the peaks are distinct pixels: no index repeats within one offset
        near = peaks + (dy * cols + dx)
        reach[near] = np.maximum(reach[near], crest)
    reference = np.maximum(local.astype(np.float32), np.take(reach, at))
    if gaussian:
        width = float(1.0 / np.median(np.concatenate([curve_x, curve_y])))  # px^2
        radius = params.diameter_um / 2.0 / params.pixel_size_um
        fraction = float(np.clip(math.exp(-radius * radius / (2.0 * width)), 0.2, 0.9))
        info.update(spot_variance_px2=width)
    else:
        fraction = float(params.peak_fraction)
    info.update(cut_fraction=fraction, log_curvature_spread=spread, flat_cells=float(not gaussian),
                cells=float(peaks.size))
    cut = fraction * reference
    keep.ravel()[at] = (value >= cut) & (_cut_above_noise(cut, at, *noise) if noise is not None else True)
    return keep


#: The log-curvature's spread over the peaks (interquartile range / median) up to which :func:`_subpixel_cell_rule`
#: takes the cells for Gaussian-like spots. Spots of one shape give a nearly uniform log-curvature (measured 0.08 on
#: the virtual microscope's, each integrated over the pixels' boxes; 0.29-0.32 when it splatted them bilinearly) and
#: flat cells a wide one (0.76-0.93 on the second family's ellipses); 0.5 lies between.
GAUSSIAN_SPREAD = 0.5


def _box_mean(image: np.ndarray, size: int) -> np.ndarray:
    """uint16 mean over ``size`` x ``size`` squares (odd ``size``, border replicated), by shifted integer adds
    (scipy's uniform_filter goes through float64 and costs several times more on a large image)."""
    half = size // 2
    padded = np.pad(image, half, mode="edge").astype(np.uint32)
    rows, cols = image.shape
    columns = padded[:, 0:cols].copy()
    for k in range(1, size):
        columns += padded[:, k: k + cols]
    total = columns[0:rows].copy()
    for k in range(1, size):
        total += columns[k: k + rows]
    return (total // np.uint32(size * size)).astype(np.uint16)


def _fill_small_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """``mask`` with its holes of at most ``max_area_px`` pixels filled (a cell's dimmer nucleus inside its
    stained soma is part of the cell); larger holes (between cells, regions without expression) stay."""
    if max_area_px < 4 or not mask.any():  # at coarse pixels a nucleus is under a pixel: no holes
        return mask
    # Runs of the complement joined across rows (compiled), not ndimage.label's label image counted and gathered
    # (47 -> 3 ms on a 2048 x 2048 section at 1 um) nor ndimage.binary_fill_holes' iterated dilations.
    return fill_small_holes(mask, max_area_px)


def _binary_opening(mask: np.ndarray, side: int) -> np.ndarray:
    """Binary opening by a ``side`` x ``side`` square: the union of the squares that fit in ``mask`` (pixels
    outside the image are not in it). ``side`` < 2: the mask unchanged. Shifted ANDs (erosion, the squares'
    corners) then shifted ORs (dilation), one axis at a time: ``4 (side - 1)`` passes over the image."""
    if side < 2:
        return mask
    if side == 2:
        return _opening_2x2(mask)
    rows, cols = mask.shape
    if rows < side or cols < side:
        return np.zeros_like(mask)
    corners = mask[: rows - side + 1].copy()
    for i in range(1, side):
        corners &= mask[i: rows - side + 1 + i]
    fitted = corners[:, : cols - side + 1].copy()
    for j in range(1, side):
        fitted &= corners[:, j: cols - side + 1 + j]
    spread = np.zeros((fitted.shape[0], cols), dtype=bool)
    for j in range(side):
        spread[:, j: j + fitted.shape[1]] |= fitted
    out = np.zeros_like(mask)
    for i in range(side):
        out[i: i + spread.shape[0]] |= spread
    return out


def _opening_2x2(mask: np.ndarray) -> np.ndarray:
    """Binary opening by a 2 x 2 square (erosion then dilation), by shifted ANDs and ORs."""
    eroded = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]
    out = np.zeros_like(mask)
    out[:-1, :-1] |= eroded
    out[1:, :-1] |= eroded
    out[:-1, 1:] |= eroded
    out[1:, 1:] |= eroded
    return out
