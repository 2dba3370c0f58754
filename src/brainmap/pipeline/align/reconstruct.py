"""Section stack -> specimen volume: read and normalize the section images, place each section in the
specimen plane (centre of mass; optionally section-to-section rigid registration), and stack them into a 3-D
specimen volume.

Frames used here
----------------
* **image-um** ``q = (x, y) * pixel_size_um``: a section's pixel coordinates (``x`` = column, ``y`` = row, as
  ``docs/dataset-format.md``) scaled to microns. The aligner works with ``T``: image-um -> specimen ``(sx, sy)``
  um, one per section, nearly rigid; the Alignment2d is then ``tsv = T o diag(pixel_size_um)``.
* **working pixels**: a section image block-averaged by an integer ``factor``; working pixel ``[R, C]`` covers
  original pixels ``[R*f, (R+1)*f) x [C*f, (C+1)*f)``, so its centre is at image-um
  ``((C + 0.5) * f * pixel_size_um, (R + 0.5) * f * pixel_size_um)``.
* **specimen volume** arrays are indexed ``(slot, sy, sx)``: slot ``k`` is the plane
  ``sz = sz0 + k * dz`` (sections on a regular grid; slots without a usable section are empty and masked out).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from brainmap.errors import BrainmapError
from brainmap.pipeline.align import _morphology, _place
from brainmap.specimen.folder import read_section_image
from brainmap.specimen.model import SectionDataSet, SectionImage
from brainmap.specimen.transforms import Affine2d

from brainmap.pipeline.align.register import block_mean, image_2d, register_section

__all__ = [
    "AlignmentError",
    "SectionStack",
    "SpecimenGrid",
    "SpecimenVolume",
    "build_volume",
    "centroid_transforms",
    "choose_channel",
    "load_sections",
    "normalize_section",
    "tissue_mask",
    "place_section",
    "place_section_and_mask",
    "register_neighbours",
]

#: Preferred channels for alignment, in order (the virtual microscope's Nissl-like "tissue" channel, then
#: common names of a counterstain or autofluorescence channel).
PREFERRED_CHANNELS = ("tissue", "nissl", "red", "autofluorescence", "background")


#: Fewest tissue pixels (at the working pixel size) for a section to be registered; below, it has "no tissue".
MIN_TISSUE_PIXELS = 10


class AlignmentError(BrainmapError, RuntimeError):
    """The data set cannot be aligned (no images with tissue, no usable sections, ...)."""


@dataclass
class SectionStack:
    """A data set's sections at a working pixel size, normalized (tissue positive, background 0).

    Attributes:
        images: per section (by increasing section number), float32 ``(rows, cols)`` working images; tissue
            has values ~1 (its median), background ~0.
        masks: per section, bool tissue masks of the same shape.
        factor: working pixel = ``factor`` x ``factor`` original pixels.
        pixel_size_um: original pixel size, microns.
        section_images: the data set's SectionImage records, same order.
        sz_um: each section's cutting-axis position ``section_number * section_thickness_um``, microns.
        failed: each section's ``failed`` flag (failed sections are aligned but never used as references).
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    factor: int
    pixel_size_um: float
    section_images: list[SectionImage]
    sz_um: np.ndarray
    failed: np.ndarray

    @property
    def working_um(self) -> float:
        """Working pixel size, microns."""
        return self.factor * self.pixel_size_um

    def __len__(self) -> int:
        return len(self.images)

    def has_tissue(self, k: int) -> bool:
        """Whether section ``k`` shows tissue: at least :data:`MIN_TISSUE_PIXELS` working pixels."""
        return int(self.masks[k].sum()) >= MIN_TISSUE_PIXELS

    def image_origin(self) -> tuple[float, float]:
        """Image-um position of the centre of working pixel ``[0, 0]``."""
        return (0.5 * self.working_um, 0.5 * self.working_um)

    def sitk_image(self, k: int, smooth_px: float = 0.0):
        """Section ``k``'s working image as a SimpleITK image in image-um."""
        image = self.images[k]
        if smooth_px > 0:
            image = ndimage.gaussian_filter(image, smooth_px)
        return image_2d(image, self.image_origin(), self.working_um)

    def sitk_mask(self, k: int, dilate_px: int = 2):
        """Section ``k``'s tissue mask, dilated by ``dilate_px`` working pixels (so the tissue edge counts in
        the metric), as a uint8 SimpleITK image in image-um."""
        mask = self.masks[k]
        if dilate_px > 0:
            mask = _morphology.dilate(mask, dilate_px)
        return image_2d(mask.astype(np.uint8), self.image_origin(), self.working_um)

    def centroid_um(self, k: int) -> np.ndarray:
        """Image-um ``(x, y)`` of the tissue centre of mass of section ``k``."""
        rows, cols = np.nonzero(self.masks[k])
        return (np.array([cols.mean(), rows.mean()]) + 0.5) * self.working_um

    def downsampled(self, factor: int) -> SectionStack:
        """The same stack block-averaged by a further integer ``factor`` (masks: majority)."""
        if factor == 1:
            return self
        return SectionStack(
            images=[block_mean(image, factor) for image in self.images],
            masks=[block_mean(mask, factor) >= 0.5 for mask in self.masks],
            factor=self.factor * factor, pixel_size_um=self.pixel_size_um, section_images=self.section_images,
            sz_um=self.sz_um, failed=self.failed)


# -- loading ---------------------------------------------------------------------------------------------------
#: The pseudo-channel of a colour image stored as channels ``red``, ``green``, ``blue``: their sum.
RGB = "rgb"
RGB_CHANNELS = ("red", "green", "blue")


def choose_channel(dataset: SectionDataSet, channel: str | None = None) -> str:
    """The channel to align on: ``channel`` if given (every image must have it; ``"rgb"``: the sum of the
    ``red``, ``green`` and ``blue`` channels), else the first of :data:`PREFERRED_CHANNELS` that every image
    has -- with ``"rgb"`` before ``"red"`` when all three colours are there -- else the first channel of the first
    image."""
    common = set.intersection(*(set(image.channels) for image in dataset.images)) if dataset.images else set()
    if set(RGB_CHANNELS) <= common:
        common.add(RGB)
    if channel is not None:
        if channel not in common:
            raise AlignmentError(f"SectionDataSet {dataset.id}: not every image has channel {channel!r} "
                                 f"(channels common to all images: {sorted(common)})")
        return channel
    for name in PREFERRED_CHANNELS[:2] + (RGB,) + PREFERRED_CHANNELS[2:]:
        if name in common:
            return name
    if not common:
        raise AlignmentError(f"SectionDataSet {dataset.id}: no channel is common to all images")
    return next(name for name in dataset.images[0].channels if name in common)


def _flatten_border(a: np.ndarray) -> np.ndarray:
    """The image less a quadratic surface fitted (robustly: twice, without the points beyond 3 median absolute
    deviations) to its border strips (1/16 of each side, taken as bare slide), plus the surface's median: an
    uneven illumination of the slide evened out. Images under 16 pixels a side are returned as they are."""
    rows, cols = a.shape
    if min(rows, cols) < 16:
        return a
    br, bc = max(1, rows // 16), max(1, cols // 16)
    strip = np.zeros(a.shape, dtype=bool)
    strip[:br] = strip[-br:] = True
    strip[:, :bc] = strip[:, -bc:] = True
    r, c = np.nonzero(strip)
    r, c = r[::3], c[::3]
    y, x = r / rows - 0.5, c / cols - 0.5
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
    values = a[r, c].astype(np.float64)
    keep = np.ones(values.size, dtype=bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = values - design @ coef
        mad = 1.4826 * np.median(np.abs(residual[keep])) + 1e-9
        keep = np.abs(residual) < 3 * mad
    # a row and a column broadcast (the same values, element by element, as full coordinate grids)
    yy = np.arange(rows, dtype=np.float32)[:, None] / rows - 0.5
    xx = np.arange(cols, dtype=np.float32)[None, :] / cols - 0.5
    surface = (coef[0] + coef[1] * xx + coef[2] * yy + coef[3] * xx * xx + coef[4] * xx * yy
               + coef[5] * yy * yy).astype(np.float32)
    return a - surface + np.float32(np.median(surface))


#: The tissue mask is found on the working image smoothed by a Gaussian of this sigma (pixels).
SMOOTH_PX = 1.0
#: Lag (pixels) of the border differences :func:`_smoothed_noise_sd` reads the smoothed noise from.
NOISE_LAG_PX = 3
#: A tissue component must reach this many noise standard deviations (:func:`_smoothed_noise_sd`) somewhere. The
#: largest of ~10^4 independent values of noise lies ~4 sigmas up: an empty slide's noise kept specks of 'tissue'
#: above :func:`tissue_mask`'s floor (~3 sigmas), all of them small, so none was dropped as smaller than 2 % of the
#: largest. Tissue, faint edges included, is a component with a body far above the noise.
SEED_SIGMAS = 6.0


def normalize_section(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A working image made tissue-positive on a zero background, and its tissue mask.

    Nothing is assumed about the stain. A quadratic surface fitted to the image border (1/16 of each side) is
    evened out (:func:`_flatten_border`); the background level is then the border's median; the tissue lies on the side of it with the longer tail (the 0.5th and 99.5th percentiles: dark
    tissue on a bright slide -- brightfield -- is inverted; bright on dark -- fluorescence -- is kept). The mask
    is an Otsu-based threshold of the lightly smoothed image (:func:`tissue_mask`). Then the background is
    re-estimated as a smooth surface from the pixels away from the tissue (normalized Gaussian convolution over
    about 1/6 of the image; a bias field or uneven illumination of the slide), subtracted, and the mask found
    again. The values are divided by their median in the mask, so every section has tissue ~1 whatever its
    staining or exposure, and set to 0 farther than 3 pixels from the mask (dust, labels, glare on bare glass).
    A mask without an edge (:func:`edge_step` below :data:`MIN_EDGE_STEP`) is a smooth background, no tissue.

    Returns:
        ``(values float32, mask bool)``; an image without tissue gets an empty mask and zeros.
    """
    a = _flatten_border(np.asarray(image, dtype=np.float32))
    rows, cols = a.shape
    br, bc = max(1, rows // 16), max(1, cols // 16)
    border = np.concatenate([a[:br:2].ravel(), a[-br::2].ravel(), a[::2, :bc].ravel(), a[::2, -bc:].ravel()])
    background = float(np.median(border))
    low, high = np.percentile(a[::2, ::2], [0.5, 99.5])
    sign = 1.0 if high - background >= background - low else -1.0
    values = (a - np.float32(background)) * np.float32(sign)
    smooth = ndimage.gaussian_filter(values, SMOOTH_PX)
    mask = tissue_mask(smooth, noise=_border_noise(smooth), noise_sd=_smoothed_noise_sd(smooth))
    if 10 <= mask.sum() < mask.size * 0.9:
        # the slide's own level as a smooth surface from the pixels well away from the tissue
        away = ~_morphology.dilate(mask, 3)
        # on a grid of ~48 cells across (the surface is smooth), then interpolated back
        f = max(1, int(max(rows, cols) // 48))
        weight = block_mean(away.astype(np.float32), f)
        surface = block_mean(np.where(away, smooth, 0.0).astype(np.float32), f)
        sigma = max(weight.shape) / 6.0
        weight = ndimage.gaussian_filter(weight, sigma, mode="nearest")
        surface = ndimage.gaussian_filter(surface, sigma, mode="nearest")
        fallback = float(np.median(smooth[away])) if away.any() else 0.0
        surface = np.where(weight > 0.02, surface / np.maximum(weight, 1e-6), fallback).astype(np.float32)
        if f > 1:
            surface = ndimage.zoom(surface, (rows / surface.shape[0], cols / surface.shape[1]), order=1,
                                   mode="nearest", grid_mode=True)[:rows, :cols]
        values -= surface
        smooth = ndimage.gaussian_filter(values, SMOOTH_PX)
        mask = tissue_mask(smooth, noise=_border_noise(smooth), noise_sd=_smoothed_noise_sd(smooth))
    if mask.sum() < 10:
        return np.zeros_like(values), np.zeros(values.shape, dtype=bool)
    scale = float(np.median(values[mask][::4]))
    if scale <= 0:
        return np.zeros_like(values), np.zeros(values.shape, dtype=bool)
    values *= np.float32(1.0 / scale)
    np.clip(values, 0.0, 4.0, out=values)
    if edge_step(values, mask) < MIN_EDGE_STEP:  # a smooth background (a bias field) above the threshold
        return np.zeros_like(values), np.zeros(values.shape, dtype=bool)
    near = ndimage.uniform_filter(mask.astype(np.float32), size=7) > 0  # mask dilated by 3 pixels
    values[~near] = 0.0
    return values, mask


#: A tissue mask whose edge steps up by less than this (in units of the tissue median, :func:`edge_step`) outlines
#: no tissue: a smooth background above the threshold. Measured (25 and 50 um working pixels): the bias field of
#: the almost empty lateral-most section of the sagittal brightfield benchmark specimen (72 mm2 of 'tissue' where
#: the true transforms put no brain at all) 0.08-0.09; tissue of every other section of the seven benchmark
#: specimens >= 0.24 (the faint end sections of today's Nissl-like appearance) and of the 34 real GLTa sections
#: >= 1.0. A noisy slide (noise above ~0.5 % of its level at the working pixel) steps more at a thresholded
#: smooth background (the mask follows the noise): there the rule does not catch it, and the section keeps its
#: mask as before. On that sagittal specimen (brightfield + warp, 8 um pixels, 25 um template) the rule took the
#: alignment error from 48.6/152.2 to 43.2/88.2 um (median/p95; the section's 200 bare-slide points are no longer
#: sampled, and the first 3-D registration no longer sees a 72 mm2 slab of 'tissue').
MIN_EDGE_STEP = 0.15


def edge_step(values: np.ndarray, mask: np.ndarray, width: int = 2, gap: int = 1) -> float:
    """How sharply ``values`` (tissue-positive, tissue median 1) step up at the edge of ``mask``: the median over
    the ``width`` pixels inside the mask's edge less the median over the ``width`` pixels outside it, both
    ``gap`` pixels away from the edge (the mask's own threshold bends the pixels next to it) and from the image
    border. Tissue ends at an edge; a smooth field (a bias field, uneven illumination) has none, so its
    thresholded 'tissue' steps by its gradient over a few pixels only. ``inf`` when the edge is too short to tell
    (under 3 pixels either side)."""
    frame = np.zeros(mask.shape, dtype=bool)
    margin = 2 * (width + gap)
    frame[margin:-margin, margin:-margin] = True
    # Every mask below is within width + gap pixels of the mask (erosions with border_value=1 only reach in from
    # an image edge): on the mask's bounding box plus that much room (and one pixel) they are the same as on the
    # whole image, in the same row-major order, at a fraction of the cost.
    rows, cols = np.nonzero(np.any(mask, axis=1))[0], np.nonzero(np.any(mask, axis=0))[0]
    if rows.size:
        room = width + gap + 1
        box = (slice(max(0, rows[0] - room), rows[-1] + room + 1), slice(max(0, cols[0] - room), cols[-1] + room + 1))
        values, mask, frame = values[box], mask[box], frame[box]
    # ndimage.binary_erosion(..., border_value=1) and binary_dilation(...), iterated: the same masks compiled
    inside = _morphology.erode(mask, gap) if gap else mask
    outside = _morphology.dilate(mask, gap) if gap else mask
    inner = inside & ~_morphology.erode(inside, width) & frame
    outer = _morphology.dilate(outside, width) & ~outside & frame
    if inner.sum() < 3 or outer.sum() < 3:
        return float("inf")
    return float(np.median(values[inner]) - np.median(values[outer]))


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def _border_differences(image: np.ndarray, lag: int) -> np.ndarray:
    """Differences of pixels ``lag`` apart along the image border (1/16 of each side, at least 2 pixels), less
    their median: what a smooth bias field or uneven illumination adds to them is taken out."""
    rows, cols = image.shape
    br, bc = max(2, rows // 16), max(2, cols // 16)
    diffs = np.concatenate([(image[:br, lag:] - image[:br, :-lag]).ravel(),
                            (image[-br:, lag:] - image[-br:, :-lag]).ravel(),
                            (image[lag:, :bc] - image[:-lag, :bc]).ravel(),
                            (image[lag:, -bc:] - image[:-lag, -bc:]).ravel()])
    return diffs - np.median(diffs)


def _border_noise(image: np.ndarray) -> float:
    """The background noise's spread as neighbouring pixels differ along the image border: 1.4826 x the median
    absolute deviation of their differences over sqrt(2). The standard deviation of white noise; on the
    :data:`SMOOTH_PX`-smoothed working image, whose neighbours the smoothing correlates, 0.48 of it (0.39 for a
    camera's correlated noise): :func:`tissue_mask`'s floor of 6 of these lies ~3 noise sigmas up."""
    return float(1.4826 * np.median(np.abs(_border_differences(image, 1))) / np.sqrt(2.0))


def _smoothed_noise_sd(smooth: np.ndarray) -> float:
    """Standard deviation of the background noise of the :data:`SMOOTH_PX`-smoothed working image: the spread
    of border differences :data:`NOISE_LAG_PX` apart over ``sqrt(2 (1 - rho))``, ``rho`` the smoothing's
    correlation of white noise at that lag (``exp(-lag^2 / (4 SMOOTH_PX^2))``: 0.11 at 3 pixels)."""
    rho = np.exp(-NOISE_LAG_PX ** 2 / (4.0 * SMOOTH_PX ** 2))
    spread = 1.4826 * np.median(np.abs(_border_differences(smooth, NOISE_LAG_PX)))
    return float(spread / np.sqrt(2.0 * (1.0 - rho)))


def tissue_mask(smooth: np.ndarray, noise: float = 0.0, noise_sd: float = 0.0) -> np.ndarray:
    """Tissue of a smoothed, tissue-positive, zero-background image: above half the Otsu level between
    background and tissue (computed on every 2nd pixel) and above 6x the background ``noise`` (so that a section
    with very little tissue does not threshold its noise; :func:`_border_noise`); connected components smaller
    than 2 % of the largest dropped, and those that nowhere reach :data:`SEED_SIGMAS` x the noise's standard
    deviation ``noise_sd`` (an empty slide's noise); holes (background components not touching the image
    border) filled."""
    sub = smooth[::2, ::2]
    top = float(smooth.max())
    if top <= 6 * noise or top <= 0:
        return np.zeros(smooth.shape, dtype=bool)
    floor = 6 * noise
    above = sub[sub > floor]
    level = 0.5 * _otsu(np.clip(sub, 0, top)) if above.size < 100 else 0.5 * _otsu(above)
    mask = smooth > max(level, floor, 0.05 * top)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = sizes >= 0.02 * sizes.max()
    if noise_sd > 0:
        keep &= ndimage.maximum(smooth, labels, np.arange(n + 1)) > SEED_SIGMAS * noise_sd
    mask = keep[labels]
    holes, n_holes = ndimage.label(~mask)
    if n_holes:
        outside = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        is_hole = np.ones(n_holes + 1, dtype=bool)
        is_hole[outside] = False
        is_hole[0] = False
        mask |= is_hole[holes]
    return mask


def read_alignment_image(folder: str | os.PathLike[str], image: SectionImage, channel: str) -> np.ndarray:
    """One image's alignment channel: a stored channel's pixels, or for ``"rgb"`` the sum of its colours
    (float32)."""
    if channel == RGB:
        return sum(read_section_image(folder, image, c).astype(np.float32) for c in RGB_CHANNELS)
    return read_section_image(folder, image, channel)


def _read_working(folder: str | os.PathLike[str], image: SectionImage, channel: str, factor: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    pixels = read_alignment_image(folder, image, channel)
    return normalize_section(block_mean(pixels, factor))


def _working_factor(dataset: SectionDataSet, working_um: float) -> int:
    """The block-averaging factor that takes the data set's pixels to about ``working_um`` (never finer)."""
    return max(1, int(working_um / dataset.pixel_size_um + 0.5))


def tissue_shown(folder: str | os.PathLike[str], dataset: SectionDataSet, *, working_um: float,
                 channel: str | None = None) -> dict[int, bool]:
    """Whether each section image not failed shows tissue as :func:`load_sections` finds it (at least
    :data:`MIN_TISSUE_PIXELS` working pixels of its mask), by image id; the images are read one at a time and
    nothing of them is kept."""
    channel = choose_channel(dataset, channel)
    factor = _working_factor(dataset, working_um)

    def shows(image: SectionImage) -> bool:
        return int(_read_working(folder, image, channel, factor)[1].sum()) >= MIN_TISSUE_PIXELS

    images = [image for image in dataset.sorted_images() if not image.failed]
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:  # zlib and scipy release the GIL
        return {image.id: shown for image, shown in zip(images, pool.map(shows, images))}


def load_sections(folder: str | os.PathLike[str], dataset: SectionDataSet, *, working_um: float,
                  channel: str | None = None, progress: bool = False) -> SectionStack:
    """Read every section image's alignment channel, block-average it to about ``working_um`` microns per pixel
    (an integer factor of the original pixel; never finer than the original), normalize it and find its
    tissue.

    Raises:
        MissingFileError: an image file is missing (from :func:`read_section_image`).
        AlignmentError: no section has tissue.
    """
    channel = choose_channel(dataset, channel)
    factor = _working_factor(dataset, working_um)
    images = dataset.sorted_images()
    if not images:
        raise AlignmentError(f"SectionDataSet {dataset.id} has no section images")
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:  # zlib and scipy release the GIL
        loaded = list(tqdm(pool.map(lambda image: _read_working(folder, image, channel, factor), images),
                           total=len(images), desc=f"reading {len(images)} sections", unit="section",
                           disable=not progress, leave=False))
    stack = SectionStack(
        images=[values for values, _ in loaded], masks=[mask for _, mask in loaded], factor=factor,
        pixel_size_um=dataset.pixel_size_um, section_images=images,
        sz_um=np.array([dataset.section_position_um(image.section_number) for image in images]),
        failed=np.array([image.failed for image in images], dtype=bool))
    if not any(stack.has_tissue(k) for k in range(len(stack))):
        raise AlignmentError(f"SectionDataSet {dataset.id}: no section image shows tissue in channel "
                             f"{channel!r}; nothing to align")
    return stack


# -- in-plane placement ------------------------------------------------------------------------------------------
def centroid_transforms(stack: SectionStack) -> list[Affine2d]:
    """Initial ``T`` (image-um -> specimen um) per section: a translation putting each section's tissue centre
    of mass at the specimen origin (sections without tissue: the identity)."""
    transforms = []
    for k in range(len(stack)):
        c = stack.centroid_um(k) if stack.has_tissue(k) else np.zeros(2)
        transforms.append(Affine2d(np.eye(2), -c))
    return transforms


@dataclass(frozen=True)
class SpecimenGrid:
    """A regular grid of the specimen plane: point ``[r, c]`` is at ``(sx, sy) = origin + (c, r) * spacing``
    microns."""

    origin: tuple[float, float]
    spacing: float
    shape: tuple[int, int]  # (rows, cols)

    def points(self) -> np.ndarray:
        """``(rows, cols, 2)`` specimen ``(sx, sy)`` um of every grid point."""
        rows, cols = self.shape
        sx = self.origin[0] + np.arange(cols) * self.spacing
        sy = self.origin[1] + np.arange(rows) * self.spacing
        return np.stack(np.meshgrid(sx, sy), axis=-1)


def covering_grid(stack: SectionStack, transforms: Sequence[Affine2d], spacing: float,
                  margin_um: float = 500.0) -> SpecimenGrid:
    """A specimen-plane grid covering every section's tissue (through its ``T``), with a margin."""
    corners = []
    for k in range(len(stack)):
        if not stack.has_tissue(k):
            continue
        rows, cols = np.nonzero(stack.masks[k])
        box = np.array([[cols.min(), rows.min()], [cols.max() + 1, rows.min()], [cols.min(), rows.max() + 1],
                        [cols.max() + 1, rows.max() + 1]], dtype=np.float64) * stack.working_um
        corners.append(transforms[k].apply(box))
    allc = np.concatenate(corners)
    lo = allc.min(axis=0) - margin_um
    hi = allc.max(axis=0) + margin_um
    shape = tuple(int(np.ceil(v)) for v in (hi - lo)[::-1] / spacing)
    return SpecimenGrid(origin=(float(lo[0]), float(lo[1])), spacing=float(spacing), shape=shape)  # type: ignore[arg-type]


def place_section(stack: SectionStack, k: int, transform: Affine2d, grid: SpecimenGrid,
                  mask: bool = False, order: int = 1) -> np.ndarray:
    """Section ``k``'s working image (or its mask) resampled onto a specimen-plane grid through ``T`` (0
    outside the image); float32 ``grid.shape``."""
    source = stack.masks[k].astype(np.float32) if mask else stack.images[k]
    # grid index (r, c) -> specimen (sx, sy) -> image-um q = T^-1 (sx, sy) -> working index (row, col)
    inverse = transform.inverse()
    w = stack.working_um
    # specimen = origin + spacing * (c, r);  q = Ainv specimen + binv;  (col, row) = q / w - 0.5
    a = inverse.matrix / w
    b = (inverse.matrix @ np.asarray(grid.origin) + inverse.translation) / w - 0.5
    m_xy = a * grid.spacing  # d(col,row)/d(c,r)
    # ndimage works in (row, col) order for both input and output
    matrix = np.array([[m_xy[1, 1], m_xy[1, 0]], [m_xy[0, 1], m_xy[0, 0]]])
    offset = np.array([b[1], b[0]])
    return ndimage.affine_transform(source, matrix, offset, output_shape=grid.shape, order=order,
                                    mode="constant", cval=0.0, prefilter=False).astype(np.float32)


def place_section_and_mask(stack: SectionStack, k: int, transform: Affine2d, grid: SpecimenGrid
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Section ``k``'s working image and its tissue mask (as 0/1) resampled together onto a specimen-plane grid
    through ``T``: float32 ``grid.shape`` each, what :func:`place_section` gives for each (bilinear; 0 at points
    outside the image's first and last pixel centres, as ``ndimage.affine_transform``'s constant mode; the same up
    to float32 rounding, ~5e-7), with one set of coordinates and corner weights for both and the two values
    gathered as one item (measured 2.7x faster than the two ``affine_transform`` calls on the 124 sections of a
    demo connectivity data set)."""
    n_rows, n_cols = stack.images[k].shape
    if n_rows < 2 or n_cols < 2:
        return place_section(stack, k, transform, grid), place_section(stack, k, transform, grid, mask=True)
    # compiled (_place.place_pair): the same bits as the numpy expressions of _place_section_and_mask_numpy
    inverse = transform.inverse()
    w = stack.working_um
    a = inverse.matrix / w * grid.spacing  # d(col, row) / d(c, r)
    b = (inverse.matrix @ np.asarray(grid.origin) + inverse.translation) / w - 0.5
    image = np.ascontiguousarray(stack.images[k], dtype=np.float32)
    mask = np.ascontiguousarray(stack.masks[k], dtype=bool)
    return _place.place_pair(image, mask, a, b, *grid.shape)


def _place_section_and_mask_numpy(stack: SectionStack, k: int, transform: Affine2d, grid: SpecimenGrid
                                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`place_section_and_mask` in numpy (the expressions the compiled one reproduces; kept for its
    test)."""
    n_rows, n_cols = stack.images[k].shape
    inverse = transform.inverse()
    w = stack.working_um
    a = inverse.matrix / w * grid.spacing  # d(col, row) / d(c, r)
    b = (inverse.matrix @ np.asarray(grid.origin) + inverse.translation) / w - 0.5
    rows, cols = grid.shape
    r = np.arange(rows, dtype=np.float64)[:, None]
    c = np.arange(cols, dtype=np.float64)[None, :]
    u = (a[1, 0] * c + a[1, 1] * r + b[1]).ravel()  # the image row of every grid point
    v = (a[0, 0] * c + a[0, 1] * r + b[0]).ravel()  # and its column
    pair = np.empty((n_rows, n_cols, 2), dtype=np.float32)  # (value, mask) items, gathered as one
    pair[..., 0] = stack.images[k]
    pair[..., 1] = stack.masks[k]
    items = pair.view(np.complex64).reshape(-1)
    inside = (u >= 0) & (u <= n_rows - 1) & (v >= 0) & (v <= n_cols - 1)
    i0 = np.clip(np.floor(u), 0, n_rows - 2).astype(np.intp)
    j0 = np.clip(np.floor(v), 0, n_cols - 2).astype(np.intp)
    fu = (u - i0).astype(np.float32)
    fv = (v - j0).astype(np.float32)
    base = i0 * n_cols + j0
    one = np.float32(1.0)
    out = np.take(items, base) * ((one - fu) * (one - fv))
    out += np.take(items, base + 1) * ((one - fu) * fv)
    out += np.take(items, base + n_cols) * (fu * (one - fv))
    out += np.take(items, base + (n_cols + 1)) * (fu * fv)
    out[~inside] = 0
    return (np.ascontiguousarray(out.real).reshape(rows, cols),
            np.ascontiguousarray(out.imag).reshape(rows, cols))


def register_neighbours(stack: SectionStack, transforms: list[Affine2d], *, spacing: float,
                        progress: bool = False) -> list[Affine2d]:
    """Section-to-section rigid registration, removing each section's in-plane jitter relative to its
    neighbours.

    The sections are registered in order, outwards from the middle section that has the most tissue (so the
    chain's drift is shared by both halves): each one (fixed) to the running reference = the mean of the last
    two good sections placed before it (moving, in the specimen plane). A section that is failed, has no
    tissue, or whose registration lowers the correlation below its starting value keeps its starting
    transform (the reference is not updated from it).

    Args:
        transforms: the starting ``T`` per section (e.g. :func:`centroid_transforms`).
        spacing: specimen-plane grid spacing of the running reference, microns.

    Returns:
        The new ``T`` per section.
    """
    n = len(stack)
    result = list(transforms)
    grid = covering_grid(stack, transforms, spacing)
    areas = np.array([stack.masks[k].sum() if not stack.failed[k] else 0 for k in range(n)])
    good_sections = np.flatnonzero(areas >= 50)  # references need some substance
    if len(good_sections) < 2:
        return result
    middle = int(good_sections[np.argmax(areas[good_sections] * (1 - 0.5 * np.abs(
        good_sections - good_sections.mean()) / max(1, np.ptp(good_sections))))])
    bar = tqdm(total=n, desc="section-to-section", unit="section", disable=not progress, leave=False)
    for direction in (+1, -1):
        recent: list[np.ndarray] = [place_section(stack, middle, result[middle], grid)]
        k = middle + direction
        while 0 <= k < n:
            if stack.has_tissue(k):
                reference = image_2d(np.mean(recent, axis=0), grid.origin, grid.spacing)
                start = result[k]
                # start from the previous good transform's rotation, keep own centring translation
                outcome = register_section(
                    stack.sitk_image(k, smooth_px=1.0), stack.sitk_mask(k), reference, start,
                    center=stack.centroid_um(k), kind="rigid", samples=3000, iterations=60,
                    learning_rate=200.0, min_step=1.0)
                result[k] = outcome.transform
                if not stack.failed[k]:
                    recent = (recent + [place_section(stack, k, result[k], grid)])[-2:]
            bar.update(1)
            k += direction
    bar.update(1)
    bar.close()
    return result


# -- the volume ------------------------------------------------------------------------------------------------
@dataclass
class SpecimenVolume:
    """A specimen volume made from a section stack.

    Attributes:
        volume: float32 ``(slots, rows, cols)`` = ``(sz, sy, sx)``.
        mask: uint8, same shape: 1 on the (dilated) tissue of usable sections, 0 elsewhere and on empty slots.
        origin_um: ``(sx, sy, sz)`` of voxel ``[0, 0, 0]``'s centre.
        spacing_um: ``(sx, sy, sz)`` voxel spacing.
        slot_of_section: the slot of every section of the stack (-1 if off the grid).
        tissue: float32, same shape: each usable section's tissue mask placed on the grid (0..1, undilated);
            the shape the contrast-agnostic stage registers.
    """

    volume: np.ndarray
    mask: np.ndarray
    origin_um: tuple[float, float, float]
    spacing_um: tuple[float, float, float]
    slot_of_section: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    tissue: np.ndarray | None = None

    def centroid_um(self) -> np.ndarray:
        """Specimen ``(sx, sy, sz)`` um of the centre of mass of the mask."""
        idx = np.array(np.nonzero(self.mask), dtype=np.float64).mean(axis=1)  # (slot, row, col)
        return np.asarray(self.origin_um) + idx[::-1] * np.asarray(self.spacing_um)


def section_spacing(sz_um: np.ndarray) -> float:
    """The regular spacing of the section positions (the smallest gap between consecutive sections), um."""
    gaps = np.diff(np.unique(sz_um))
    return float(gaps.min()) if gaps.size else 100.0


def build_volume(stack: SectionStack, transforms: Sequence[Affine2d], grid: SpecimenGrid,
                 dilate_px: int = 2) -> SpecimenVolume:
    """Stack the sections placed by ``transforms`` into a specimen volume on ``grid``.

    Slots are spaced by the section spacing; a slot holds its section, or (no usable section there: missing
    or failed) the mean of its nearest neighbours' images, masked out, so that interpolation near it stays
    sensible. Only usable sections' tissue (dilated by ``dilate_px`` grid pixels) is in the mask.
    """
    dz = section_spacing(stack.sz_um)
    sz0 = float(stack.sz_um.min())
    slots = np.rint((stack.sz_um - sz0) / dz).astype(int)
    n_slots = int(slots.max()) + 1
    volume = np.zeros((n_slots,) + grid.shape, dtype=np.float32)
    mask = np.zeros((n_slots,) + grid.shape, dtype=np.uint8)
    tissue = np.zeros((n_slots,) + grid.shape, dtype=np.float32)
    filled = np.zeros(n_slots, dtype=bool)
    for k in range(len(stack)):
        if stack.failed[k] or not stack.has_tissue(k):
            continue
        s = slots[k]
        volume[s], tissue[s] = place_section_and_mask(stack, k, transforms[k], grid)
        placed_mask = tissue[s] >= 0.5
        if dilate_px:
            placed_mask = _morphology.dilate(placed_mask, dilate_px)
        mask[s] = placed_mask
        filled[s] = True
    good = np.flatnonzero(filled)
    if good.size == 0:
        raise AlignmentError("no usable section (every section is failed or shows no tissue)")
    for s in np.flatnonzero(~filled):
        below, above = good[good < s], good[good > s]
        neighbours = ([below[-1]] if below.size else []) + ([above[0]] if above.size else [])
        volume[s] = np.mean([volume[j] for j in neighbours], axis=0)
    return SpecimenVolume(volume, mask, (grid.origin[0], grid.origin[1], sz0), (grid.spacing, grid.spacing, dz),
                          slots, tissue)
