"""The size of an image's expressing cells, measured from the image (never from metadata).

The top-hat contrast of the signal channel (counts over a grey opening of ``ESTIMATE_WINDOW_UM``), less its local
mean, has its autocorrelation taken over the tissue (both axes pooled, lag by lag), in one window of the image. Cells placed at random
give an autocorrelation that is the autocorrelation of one cell's profile; white noise adds only a spike at lag 0,
which is left out. The autocorrelation of Gaussian cells of variance ``s^2`` recorded by a camera (a Gaussian of
variance ``2 s^2`` convolved with the pixel box's triangle, less what the local mean's subtraction removes) is
fitted to the lags from 1 pixel to where it has fallen to a tenth, and the cell's full width at half maximum,
``2.3548 s``, is its diameter. A flat disc of diameter ``D`` has the autocorrelation width of a Gaussian of FWHM
~0.9 ``D``, so discs and Gaussians of one size give nearly the same figure.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

#: The opening window of the estimate (um): wider than any cell, narrower than the tissue's features.
ESTIMATE_WINDOW_UM = 60.0
#: The estimate looks at one window of at most this many pixels a side, the one with the most tissue.
WINDOW_PX = 512
#: The local mean is taken over squares of this side (um).
MEAN_WINDOW_UM = 150.0
#: Bounds of the estimate (um); a figure outside is clipped (too few cells, or no cells at all).
MIN_DIAMETER_UM, MAX_DIAMETER_UM = 4.0, 40.0
#: The diameter used where the image holds too little signal to measure (um).
FALLBACK_DIAMETER_UM = 12.0


def estimate_cell_diameter_um(counts: np.ndarray, tissue: np.ndarray, pixel_size_um: float,
                              background: np.ndarray | None = None) -> float:
    """The typical diameter (um) of the bright cells of ``counts`` over ``tissue`` (module docstring).

    Parameters
    ----------
    counts : (rows, cols) array
        The signal channel (counts).
    tissue : (rows, cols) bool
        The tissue pixels.
    pixel_size_um : float
        The pixel size (um).
    background : (rows, cols) array, optional
        A grey opening of ``counts`` wider than the cells (default: one of :data:`ESTIMATE_WINDOW_UM`).
    """
    from brainmap.pipeline.detect.core import background_opening

    counts = np.asarray(counts)
    tissue = np.asarray(tissue, bool)
    # One window of at most WINDOW_PX pixels a side, where the tissue is: the estimate's cost does not grow with
    # the image (a 2048 x 2048 image at 1 um holds tens of thousands of cells; a window holds thousands).
    rows, cols = counts.shape
    side = min(WINDOW_PX, rows, cols)
    if rows > side or cols > side:
        # tissue per block of step x step pixels, counted on every sub-th pixel (the window is chosen, not measured)
        sub = max(1, side // 64)
        step = max(1, side // 4 // sub) * sub
        sample = tissue[::sub, ::sub].astype(np.int32)
        cover = np.add.reduceat(np.add.reduceat(sample, np.arange(0, sample.shape[0], step // sub), axis=0),
                                np.arange(0, sample.shape[1], step // sub), axis=1)
        k = max(1, side // step)
        window = np.lib.stride_tricks.sliding_window_view(cover, (min(k, cover.shape[0]), min(k, cover.shape[1])))
        totals = window.sum(axis=(2, 3))
        i, j = np.unravel_index(int(np.argmax(totals)), totals.shape)
        r0, c0 = min(i * step, rows - side), min(j * step, cols - side)
        counts = counts[r0: r0 + side, c0: c0 + side]
        tissue = tissue[r0: r0 + side, c0: c0 + side]
        background = None if background is None else background[r0: r0 + side, c0: c0 + side]
    if background is None:
        size = max(3, int(round(ESTIMATE_WINDOW_UM / pixel_size_um)))
        background = background_opening(counts.astype(np.uint16, copy=False), size + (size + 1) % 2)
    contrast = counts.astype(np.float32) - background.astype(np.float32)
    inside = np.asarray(tissue, bool)
    if np.count_nonzero(inside) < 1000:
        return FALLBACK_DIAMETER_UM
    values = contrast[inside]
    # whole counts over an opening (never above them): non-negative whole numbers
    integral = counts.dtype.kind in "ui" and background.dtype.kind in "ui" and float(values.min()) >= 0
    median, spread = _median_and_spread(values, integral)
    spread = 1.4826 * spread + 1e-6
    if np.count_nonzero(values > median + 5.0 * spread) < 50:  # too few bright pixels: no cells to measure
        return FALLBACK_DIAMETER_UM
    # Not clipped: at coarse pixels a cell's neighbours are below any threshold, and white noise only adds a
    # spike at lag 0, which is left out.
    excess = np.where(inside, contrast, 0.0).astype(np.float64)
    # Fluctuations about the local mean (cell density varies between structures: a global mean would add
    # correlations over their scale), over the tissue only: the mean over squares of the tissue pixels (box sums,
    # whole numbers where the counts are: exact in integers).
    window = max(3, int(round(MEAN_WINDOW_UM / pixel_size_um)))
    if integral and float(values.max()) * window * window < 2**31:
        sums = _box_sums(excess.astype(np.int32), window)
    else:
        sums = _box_sums(excess, window)
    local = sums / np.maximum(_box_sums(inside.astype(np.int32), window), 1e-9)
    excess = (excess - local) * inside
    # The autocorrelation along both axes, lag by lag until it has fallen to a tenth (a few cell diameters).
    rows, cols = excess.shape
    max_lag = min(int(math.ceil(3 * MAX_DIAMETER_UM / pixel_size_um)), rows - 1, cols - 1)
    # Each lag's sum of products is one dot product of the flattened image with itself shifted: along a row by
    # ``lag``, along a column by ``lag`` padded rows (the zero columns of the padding stop a row's end pairing
    # with the next row's start).
    width = cols + max(max_lag, 2)
    padded = np.zeros((rows, width))
    padded[:, :cols] = excess
    flat = padded.ravel()
    values_at: list[float] = []
    for lag in range(1, max(max_lag, 2) + 1):
        pairs = np.count_nonzero(inside[lag:] & inside[:-lag]) + np.count_nonzero(inside[:, lag:] & inside[:, :-lag])
        if pairs <= 0:
            break
        # einsum, not np.dot: BLAS threads spin on a busy machine (measured ~10 ms of CPU per lag here)
        total = (np.einsum("i,i->", flat[lag * width:], flat[: flat.size - lag * width])
                 + np.einsum("i,i->", flat[lag:], flat[:-lag]))
        values_at.append(float(total) / pairs)
        if len(values_at) >= 3 and values_at[-1] < 0.1 * values_at[0]:
            break
    profile = np.asarray(values_at)
    lags = np.arange(1, len(profile) + 1)
    if len(profile) < 2 or not np.isfinite(profile[0]) or profile[0] <= 0:
        return FALLBACK_DIAMETER_UM
    below = np.flatnonzero(profile < 0.1 * profile[0])
    stop = max(int(below[0]) if below.size else len(lags), 2)  # to a tenth; at least two lags
    s2_cell = _fit_cell_variance(lags[:stop], profile[:stop], window)
    diameter = 2.3548 * math.sqrt(s2_cell) * pixel_size_um
    if not math.isfinite(diameter):
        return FALLBACK_DIAMETER_UM
    return float(min(max(diameter, MIN_DIAMETER_UM), MAX_DIAMETER_UM))


def _median_and_spread(values: np.ndarray, integral: bool) -> tuple[float, float]:
    """``np.median(values)`` and ``np.median(np.abs(values - median))`` of a 1-D float32 array, the same numbers.
    ``integral``: the values are whole non-negative counts (a contrast over an opening), and both medians are read
    off one histogram instead of two partitions (~10x less)."""
    if not integral or values.size == 0 or float(values.min()) < 0:
        median = float(np.median(values))
        return median, float(np.median(np.abs(values - median)))
    from brainmap.pipeline.detect.core import _middle_pair_sum

    hist = np.bincount(values.astype(np.intp))
    levels = np.flatnonzero(hist)
    median2 = _middle_pair_sum(levels, hist[levels])  # twice the median: a whole number
    # the distances |2 v - 2 median|, doubled to stay whole, weighted by the histogram
    distance = np.bincount(np.abs(2 * levels - median2), weights=hist[levels])
    at = np.flatnonzero(distance)
    return median2 / 2.0, _middle_pair_sum(at, distance[at]) / 4.0


def _box_sums(image: np.ndarray, size: int) -> np.ndarray:
    """Sums over ``size`` x ``size`` squares, zeros outside the image, in ``image``'s dtype (which must hold them);
    the square of ``scipy.ndimage``'s filters (rows ``i - size // 2`` to ``i + (size - 1) // 2``)."""
    return _window_sums(_window_sums(image, size, 0), size, 1)


def _window_sums(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Sums over windows of ``size`` along ``axis`` (zeros outside), by doubling: the sums of 1, 2, 4, ...
    neighbours, those of ``size``'s binary digits added side by side (``2 log2(size)`` passes at most; on whole
    numbers any order of the additions gives the same sums). ~4x less than ``scipy.ndimage.uniform_filter``'s
    line-by-line running means on a 512 x 512 window."""
    n = image.shape[axis]

    def cut(array: np.ndarray, start: int, stop: int) -> np.ndarray:
        return array[start:stop] if axis == 0 else array[:, start:stop]

    shape = list(image.shape)
    shape[axis] += size - 1
    sums = np.zeros(shape, image.dtype)  # sums[i] over 1 pixel from i, then 2, 4, ...: first the image, zero-padded
    cut(sums, size // 2, size // 2 + n)[...] = image

    out: np.ndarray | None = None
    offset, span = 0, 1
    while size:
        if size & 1:  # the next ``span`` pixels of the window
            part = cut(sums, offset, offset + n)
            out = part.copy() if out is None else np.add(out, part, out=out)
            offset += span
        size >>= 1
        if size:
            length = sums.shape[axis]
            sums = cut(sums, 0, length - span) + cut(sums, span, length)
            span *= 2
    assert out is not None
    return out


def box_autocorrelation(lags: np.ndarray, cell_variance_px2: float | np.ndarray) -> np.ndarray:
    """The autocorrelation, at integer ``lags`` (pixels) along one axis and relative to its value at no lag, of
    Gaussian cells of variance ``cell_variance_px2`` (px^2; an array gives one row per variance) recorded by a
    camera (each pixel the integral of the light over its box): a Gaussian of variance ``2 v`` convolved with the
    box's own autocorrelation, the unit triangle -- the second difference of ``t Phi(t / s) + s phi(t / s)``
    (``s^2 = 2 v``). Unnormalized, its sum over all integer lags is exactly 1 (the triangle's Fourier transform
    vanishes at the nonzero integers), so the normalized sum is ``1 / f(0)``."""
    at = _camera_autocorrelation(np.concatenate([[0.0], np.asarray(lags, np.float64)]),
                                 np.atleast_1d(np.asarray(cell_variance_px2, np.float64)))
    out = at[:, 1:] / at[:, :1]
    return out[0] if np.ndim(cell_variance_px2) == 0 else out


def _camera_autocorrelation(lags: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Unnormalized :func:`box_autocorrelation`, ``(variances, lags)``."""
    s = np.sqrt(np.maximum(2.0 * variances, 1e-12))[:, None]

    def ramp(x: np.ndarray) -> np.ndarray:
        return x * ndtr(x / s) + s * np.exp(-0.5 * (x / s) ** 2) / math.sqrt(2.0 * math.pi)

    t = np.asarray(lags, np.float64)[None, :]
    return ramp(t + 1.0) - 2.0 * ramp(t) + ramp(t - 1.0)


def _fit_cell_variance(lags: np.ndarray, profile: np.ndarray, mean_window_px: int) -> float:
    """The cell variance (px^2) whose autocorrelation as the estimate sees it has the shape of ``profile`` over
    ``lags`` (least squares on the logarithm relative to the first lag: the value at no lag holds the noise).

    The model is exact for Gaussian cells at random positions recorded by a camera: :func:`box_autocorrelation`
    (the pixel's box enters as a triangle, not as its variance alone), less what subtracting the local mean over
    squares of ``W = mean_window_px`` removes, ``A(0) F^2 (1 + L / W) / W^2`` for lags ``L`` small against ``W``
    (``F`` the sum of the normalized autocorrelation over all lags of one axis). Left out, that term reads
    box-integrated Gaussian cells ~6 % small at 8 um pixels (measured: 10.39 um for 11.03 um cells on a flat
    density; 10.93 um with the local mean not subtracted). A log-spaced grid of variances, then a finer one
    around its best (vectorized: ~0.1 ms).
    """
    good = profile > 0
    lags, profile = lags[good].astype(np.float64), profile[good]
    if lags.size < 2:
        return float("inf")
    target = np.log(profile / profile[0])

    def misfit(log_v: np.ndarray) -> np.ndarray:
        at = _camera_autocorrelation(np.concatenate([[0.0], lags]), np.exp(log_v))
        total = 1.0 / at[:, :1]  # the normalized autocorrelation's sum over all lags
        model = at[:, 1:] * total - total * total * (1.0 + lags[None, :] / mean_window_px) / mean_window_px ** 2
        bad = model[:, -1] <= 0
        ratio = np.log(np.maximum(model / model[:, :1], 1e-300))
        cost = np.sum((ratio - target[None, :]) ** 2, axis=1)
        return np.where(bad, np.inf, cost)

    grid = np.linspace(math.log(1e-3), math.log(1e4), 512)
    best = int(np.argmin(misfit(grid)))
    step = grid[1] - grid[0]
    fine = np.linspace(grid[best] - step, grid[best] + step, 201)
    return float(math.exp(fine[int(np.argmin(misfit(fine)))]))
