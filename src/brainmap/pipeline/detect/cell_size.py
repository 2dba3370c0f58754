"""The size of an image's expressing cells, measured from the image (never from metadata).

The top-hat contrast of the signal channel (counts over a grey opening of ``ESTIMATE_WINDOW_UM``), less its local
mean, has its autocorrelation taken over the tissue (FFT, both axes pooled). Cells placed at random
give an autocorrelation that is the autocorrelation of one cell's profile; white noise adds only a spike at lag 0,
which is left out. A Gaussian ``exp(-L^2 / (4 s^2))`` is fitted to the lags from 1 pixel to where it has fallen to
a tenth, and the cell's full width at half maximum, ``2.3548 s`` with the pixel's own width (``1/12`` px^2)
removed, is its diameter. A flat disc of diameter ``D`` has the autocorrelation width of a Gaussian of FWHM
~0.9 ``D``, so discs and Gaussians of one size give nearly the same figure.
"""

from __future__ import annotations

import math

import numpy as np

#: The opening window of the estimate (um): wider than any cell, narrower than the tissue's features.
ESTIMATE_WINDOW_UM = 60.0
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
    if background is None:
        size = max(3, int(round(ESTIMATE_WINDOW_UM / pixel_size_um)))
        background = background_opening(counts.astype(np.uint16, copy=False), size + (size + 1) % 2)
    contrast = counts.astype(np.float32) - background.astype(np.float32)
    inside = np.asarray(tissue, bool)
    if inside.sum() < 1000:
        return FALLBACK_DIAMETER_UM
    values = contrast[inside]
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median))) + 1e-6
    if np.count_nonzero(values > median + 5.0 * spread) < 50:  # too few bright pixels: no cells to measure
        return FALLBACK_DIAMETER_UM
    # Not clipped: at coarse pixels a cell's neighbours are below any threshold, and white noise only adds a
    # spike at lag 0, which is left out.
    excess = np.where(inside, contrast, 0.0).astype(np.float64)
    # Fluctuations about the local mean (cell density varies between structures: a global mean would add
    # correlations over their scale), over the tissue only.
    from scipy import ndimage

    window = max(3, int(round(MEAN_WINDOW_UM / pixel_size_um)))
    weight = ndimage.uniform_filter(inside.astype(np.float64), window, mode="constant")
    local = ndimage.uniform_filter(excess, window, mode="constant") / np.maximum(weight, 1e-9)
    excess = (excess - local) * inside
    rows, cols = excess.shape
    spectrum = np.fft.rfft2(excess, s=(2 * rows, 2 * cols))
    acf = np.fft.irfft2(np.abs(spectrum) ** 2, s=(2 * rows, 2 * cols))
    support = np.fft.irfft2(np.abs(np.fft.rfft2(inside.astype(np.float64), s=(2 * rows, 2 * cols))) ** 2,
                            s=(2 * rows, 2 * cols))
    max_lag = max(4, min(rows, cols) // 4, int(math.ceil(3 * MAX_DIAMETER_UM / pixel_size_um)))
    max_lag = min(max_lag, rows - 1, cols - 1)
    lags = np.arange(1, max_lag + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        profile = 0.5 * (acf[lags, 0] / support[lags, 0] + acf[0, lags] / support[0, lags])
    if not np.isfinite(profile[0]) or profile[0] <= 0:
        return FALLBACK_DIAMETER_UM
    below = np.flatnonzero(profile < 0.1 * profile[0])
    stop = int(below[0]) if below.size else len(lags)
    if stop < 2:  # fallen to a tenth within one pixel: cells far smaller than a pixel pair
        s2 = 1.0 / (4.0 * math.log(max(profile[0] / max(profile[1], 1e-12 * profile[0]), 1.0001)))
    else:
        x = lags[:stop].astype(np.float64) ** 2
        y = np.log(profile[:stop])
        slope = np.polyfit(x, y, 1)[0]
        s2 = -1.0 / (4.0 * slope) if slope < 0 else float("inf")
    s2_cell = max(s2 - 1.0 / 12.0, 1e-3)
    diameter = 2.3548 * math.sqrt(s2_cell) * pixel_size_um
    if not math.isfinite(diameter):
        return FALLBACK_DIAMETER_UM
    return float(min(max(diameter, MIN_DIAMETER_UM), MAX_DIAMETER_UM))
