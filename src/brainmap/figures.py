"""Readable figures from raw pictures: title, orientation letters, scale bar and colour bar around an image.

Pillow and numpy only. The image is pasted pixel for pixel (never resampled, never drawn over); every other
element is laid out around it from measured text sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from brainmap.io.png import write_png

__all__ = ["Colorbar", "figure", "heat_colormap", "write_figure"]

_SIDES = ("top", "bottom", "left", "right")
_MARGIN = 12  # px around everything
_GAP = 6  # px between an element and its neighbour
_TITLE_PX, _SUBTITLE_PX, _LABEL_PX, _TICK_PX = 18, 13, 14, 12  # font sizes, px
_BAR_THICKNESS = 4  # px, scale bar
_COLORBAR_WIDTH = 16  # px
_COLORBAR_MIN_HEIGHT = 80  # px
_TICK_LENGTH = 4  # px


def heat_colormap(t: np.ndarray) -> np.ndarray:
    """Black-red-yellow-white ("hot") colours of ``t``.

    Parameters
    ----------
    t : numpy.ndarray
        Values in [0, 1] (dimensionless), any shape; values outside are clipped and NaN is drawn as 0 (black).

    Returns
    -------
    numpy.ndarray
        uint8 array of shape ``t.shape + (3,)``: RGB = 255 * [clip(3t), clip(3t - 1), clip(3t - 2)], rounded.

    Examples
    --------
    >>> heat_colormap(np.array([0.0, 0.5, 1.0])).tolist()
    [[0, 0, 0], [255, 128, 0], [255, 255, 255]]
    """
    values = np.asarray(t, dtype=np.float64)
    values = np.where(np.isnan(values), 0.0, values)
    rgb = np.stack([3 * values, 3 * values - 1, 3 * values - 2], axis=-1)
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


@dataclass(frozen=True)
class Colorbar:
    """A vertical colour bar drawn to the right of a figure's image.

    Parameters
    ----------
    vmin, vmax : float
        The data values (in the units of ``label``) drawn with ``colormap(0)`` and ``colormap(1)``; vmin < vmax.
    label : str
        The quantity and its units, e.g. ``"projection density (fraction of voxel)"``.
    colormap : callable
        Maps an array of t in [0, 1] to uint8 RGB of shape ``t.shape + (3,)``; :func:`heat_colormap` by default.
    gamma : float
        The image was drawn with ``colormap(t ** gamma)``, t = (value - vmin) / (vmax - vmin); ticks sit where
        their values' colours are. Positive.

    Examples
    --------
    >>> bar = Colorbar(0.0, 1.0, "projection density (fraction of voxel)", gamma=0.5)
    >>> [(label, round(fraction, 3)) for _, label, fraction in bar.ticks()]
    [('0', 0.0), ('0.5', 0.707), ('1', 1.0)]
    """

    vmin: float
    vmax: float
    label: str
    colormap: Callable[[np.ndarray], np.ndarray] = heat_colormap
    gamma: float = 1.0

    def __post_init__(self) -> None:
        for name in ("vmin", "vmax", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"Colorbar {name} must be a finite number, got {value!r}")
        if self.vmin >= self.vmax:
            raise ValueError(f"Colorbar vmin ({self.vmin!r}) must be less than vmax ({self.vmax!r})")
        if self.gamma <= 0:
            raise ValueError(f"Colorbar gamma must be positive, got {self.gamma!r}")
        if not isinstance(self.label, str):
            raise ValueError(f"Colorbar label must be a string, got {type(self.label).__name__}")
        if not callable(self.colormap):
            raise ValueError(f"Colorbar colormap must be callable, got {type(self.colormap).__name__}")

    def ticks(self) -> list[tuple[float, str, float]]:
        """The (value, label, fraction of the bar's height from its bottom) of the min, mid and max ticks."""
        values = [float(self.vmin), (float(self.vmin) + float(self.vmax)) / 2, float(self.vmax)]
        labels = _tick_labels(values)
        fractions = [0.0, 0.5**self.gamma, 1.0]
        return list(zip(values, labels, fractions))


def _tick_labels(values: list[float]) -> list[str]:
    """Short labels exact to 0.5% of the range: fixed decimals matched to the spacing, else scientific."""
    step = abs(values[1] - values[0])
    largest = max(abs(v) for v in values)
    if largest >= 1e5 or largest < 1e-3:
        span = abs(values[-1] - values[0])
        for digits in range(1, 10):  # the fewest significant digits that show each value within 0.5% of the span
            labels = [f"{v:.{digits}g}" for v in values]
            if all(abs(float(label) - v) <= 0.005 * span for label, v in zip(labels, values)):
                break
    else:
        decimals = min(max(0, 1 - math.floor(math.log10(step))), 8)
        labels = [f"{v:.{decimals}f}" for v in values]
        if decimals:
            labels = [label.rstrip("0").rstrip(".") for label in labels]
    return ["0" if label in ("-0", "-0.0") else label for label in labels]


def _nice_length_um(target_um: float) -> float:
    """The 1, 2 or 5 x 10^k microns nearest (in ratio) to ``target_um``."""
    exponent = math.floor(math.log10(target_um))
    candidates = [m * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 2, 5)]
    return min(candidates, key=lambda c: abs(math.log(c / target_um)))


def _length_text(length_um: float, micro: str) -> str:
    if length_um >= 1000:
        return f"{length_um / 1000:g} mm"
    return f"{length_um:g} {micro}m"


@lru_cache(maxsize=None)
def _font(size: int) -> Any:
    """Pillow's bundled scalable font at ``size`` px, or its fixed bitmap font where FreeType is unavailable."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError, AttributeError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


@lru_cache(maxsize=None)
def _has_micro(font: Any) -> bool:
    """Whether ``font`` draws "µ" (Pillow's bundled Aileron does not: it draws the same box as for U+E000)."""
    try:
        return np.asarray(font.getmask("µ")).tobytes() != np.asarray(font.getmask("\ue000")).tobytes()
    except (UnicodeError, ValueError, OSError):
        return False


def _printable(text: str, font: Any) -> str:
    return text if _has_micro(font) else text.replace("µ", "u")


class _Canvas:
    """Elements positioned relative to the image's top-left corner, drawn once the bounds are known."""

    def __init__(self) -> None:
        self.boxes: list[tuple[int, int, int, int]] = []  # left, top, right, bottom (exclusive)
        self.ops: list[Callable[[ImageDraw.ImageDraw, Image.Image, int, int], None]] = []
        self._measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(self, text: str, font: Any) -> tuple[int, int]:
        left, top, right, bottom = _int_box(self._measure.textbbox((0, 0), text, font=font))
        return right - left, bottom - top

    def text(self, x: int, y: int, text: str, font: Any, fill: tuple[int, int, int]) -> tuple[int, int]:
        """Put ``text`` with its ink box's top-left corner at (x, y); returns its (width, height)."""
        left, top, right, bottom = _int_box(self._measure.textbbox((0, 0), text, font=font))
        self.boxes.append((x, y, x + right - left, y + bottom - top))
        self.ops.append(lambda draw, _, dx, dy: draw.text((x + dx - left, y + dy - top), text, font=font, fill=fill))
        return right - left, bottom - top

    def pixels(self, x: int, y: int, rgb: np.ndarray) -> None:
        """Paste the uint8 (rows, cols, 3) ``rgb`` with its top-left corner at (x, y)."""
        self.boxes.append((x, y, x + rgb.shape[1], y + rgb.shape[0]))
        self.ops.append(lambda _, image, dx, dy: image.paste(Image.fromarray(rgb), (x + dx, y + dy)))

    def rectangle(self, x0: int, y0: int, x1: int, y1: int, fill: tuple[int, int, int] | None,
                  outline: tuple[int, int, int] | None = None) -> None:
        """A rectangle covering pixels x0..x1, y0..y1 inclusive."""
        self.boxes.append((x0, y0, x1 + 1, y1 + 1))
        self.ops.append(lambda draw, _, dx, dy: draw.rectangle((x0 + dx, y0 + dy, x1 + dx, y1 + dy), fill=fill,
                                                               outline=outline))

    def rotated_text(self, x: int, y: int, lines: list[str], font: Any, fill: tuple[int, int, int]) -> None:
        """Lines turned 90 degrees anticlockwise (read bottom to top), top-left corner at (x, y)."""
        text = "\n".join(lines)
        left, top, right, bottom = _int_box(self._measure.multiline_textbbox((0, 0), text, font=font, spacing=2,
                                                                                align="center"))
        mask = Image.new("L", (right - left, bottom - top), 0)
        ImageDraw.Draw(mask).multiline_text((-left, -top), text, font=font, fill=255, spacing=2, align="center")
        mask = mask.transpose(Image.Transpose.ROTATE_90)
        self.boxes.append((x, y, x + mask.width, y + mask.height))
        self.ops.append(lambda _, image, dx, dy: image.paste(Image.new("RGB", mask.size, fill), (x + dx, y + dy),
                                                             mask))

    def rotated_size(self, lines: list[str], font: Any) -> tuple[int, int]:
        left, top, right, bottom = _int_box(self._measure.multiline_textbbox((0, 0), "\n".join(lines), font=font,
                                                                                spacing=2, align="center"))
        return bottom - top, right - left


def _int_box(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """A text bounding box on whole pixels (Pillow may give fractions for centred multi-line text)."""
    return math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])


def _wrap(text: str, font: Any, width: int, canvas: _Canvas) -> list[str]:
    """Greedy word wrap of ``text`` into lines at most ``width`` px long (a longer single word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and canvas.size(f"{lines[-1]} {word}", font)[0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D (rows, cols) grey or 3-D (rows, cols, 3) RGB, got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] != 3:
        raise ValueError(f"image must be (rows, cols) grey or (rows, cols, 3) RGB, got {array.shape[2]} channels")
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (colour it first, e.g. with heat_colormap), got {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {array.shape}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def figure(image: np.ndarray, *, title: str, pixel_size_um: float, subtitle: str | None = None,
           colorbar: Colorbar | None = None, orientation: dict[str, str] | None = None,
           scale_bar_um: float | None = None, dark: bool = False) -> np.ndarray:
    """A figure: ``image`` with a title, orientation letters, a scale bar and optionally a colour bar.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (rows, cols) grey or (rows, cols, 3) RGB picture; it appears unchanged (not resampled) in the figure.
    title : str
        The title, drawn above the image (~18 px font).
    pixel_size_um : float
        Size of one image pixel, microns (e.g. 25 / 4 for a 25 um volume drawn 4 pixels per voxel). Positive.
    subtitle : str, optional
        A second, smaller line under the title, e.g. ``"synthetic data from the virtual microscope"``.
    colorbar : Colorbar, optional
        Draw a vertical colour bar (as tall as the image, at least 80 px; ``colormap(1)`` at its top row,
        ``colormap(0)`` at its bottom row) with min/mid/max ticks and the units label to the right of the image.
    orientation : dict of str to str, optional
        Words or letters at the image's sides, keys among "top", "bottom", "left", "right",
        e.g. ``{"top": "A", "bottom": "P", "left": "L", "right": "R"}`` for a top view.
    scale_bar_um : float, optional
        Length of the scale bar, microns; by default a round 1/2/5 x 10^k length near 20% of the image's width.
        The bar (4 px thick, in the text colour) is round(scale_bar_um / pixel_size_um) px long, starts under the
        image's left edge and is labelled ("500 um", "1 mm") under it.
    dark : bool
        Light text on a near-black canvas instead of black text on white.

    Returns
    -------
    numpy.ndarray
        uint8 (rows, cols, 3) RGB figure, larger than ``image``.

    Raises
    ------
    ValueError
        If ``image`` is not uint8 2-D/3-D RGB, ``pixel_size_um`` or ``scale_bar_um`` is not a positive number (or
        the bar would be under 1 px or wider than the image), ``orientation`` has an unknown side, or ``title``,
        ``subtitle`` or ``colorbar`` has the wrong type.

    Examples
    --------
    >>> gradient = heat_colormap(np.tile(np.linspace(0, 1, 132), (114, 1)))
    >>> out = figure(gradient, title="Projection density, top view", pixel_size_um=25.0,
    ...              orientation={"top": "A", "bottom": "P", "left": "L", "right": "R"},
    ...              colorbar=Colorbar(0.0, 1.0, "projection density (fraction of voxel)"))
    >>> out.dtype, out.ndim, out.shape[0] > 114 and out.shape[1] > 132
    (dtype('uint8'), 3, True)
    """
    rgb = _check_image(image)
    height, width = rgb.shape[:2]
    if not isinstance(title, str):
        raise ValueError(f"title must be a string, got {type(title).__name__}")
    if subtitle is not None and not isinstance(subtitle, str):
        raise ValueError(f"subtitle must be a string or None, got {type(subtitle).__name__}")
    if (isinstance(pixel_size_um, bool) or not isinstance(pixel_size_um, (int, float, np.number))
            or not math.isfinite(pixel_size_um) or pixel_size_um <= 0):
        raise ValueError(f"pixel_size_um must be a positive number of microns per pixel, got {pixel_size_um!r}")
    if colorbar is not None and not isinstance(colorbar, Colorbar):
        raise ValueError(f"colorbar must be a Colorbar or None, got {type(colorbar).__name__}")
    sides = dict(orientation or {})
    unknown = sorted(set(sides) - set(_SIDES), key=str)
    if unknown:
        raise ValueError(f"orientation has unknown side(s) {unknown}; expected keys among {list(_SIDES)}")
    if not all(isinstance(v, str) for v in sides.values()):
        raise ValueError(f"orientation values must be strings, got {sides!r}")
    if scale_bar_um is None:
        scale_bar_um = _nice_length_um(0.2 * width * float(pixel_size_um))
    elif (isinstance(scale_bar_um, bool) or not isinstance(scale_bar_um, (int, float, np.number))
          or not math.isfinite(scale_bar_um) or scale_bar_um <= 0):
        raise ValueError(f"scale_bar_um must be a positive length in microns, got {scale_bar_um!r}")
    bar_px = round(float(scale_bar_um) / float(pixel_size_um))
    if not 1 <= bar_px <= width:
        raise ValueError(f"scale_bar_um={scale_bar_um!r} is {bar_px} px at pixel_size_um={pixel_size_um!r}; "
                         f"it must be between 1 px and the image's width ({width} px)")

    background = (24, 24, 24) if dark else (255, 255, 255)
    ink = (235, 235, 235) if dark else (0, 0, 0)
    label_font, tick_font = _font(_LABEL_PX), _font(_TICK_PX)
    canvas = _Canvas()
    canvas.pixels(0, 0, rgb)

    # Orientation letters at the four sides, centred on them.
    if sides.get("top"):
        w, h = canvas.size(sides["top"], label_font)
        canvas.text((width - w) // 2, -_GAP - h, sides["top"], label_font, ink)
    bottom_box = None
    if sides.get("bottom"):
        w, h = canvas.size(sides["bottom"], label_font)
        bottom_box = ((width - w) // 2, height + _GAP, (width + w) // 2, height + _GAP + h)
        canvas.text(bottom_box[0], bottom_box[1], sides["bottom"], label_font, ink)
    if sides.get("left"):
        w, h = canvas.size(sides["left"], label_font)
        canvas.text(-_GAP - w, (height - h) // 2, sides["left"], label_font, ink)
    right_edge = width
    if sides.get("right"):
        w, h = canvas.size(sides["right"], label_font)
        canvas.text(width + _GAP, (height - h) // 2, sides["right"], label_font, ink)
        right_edge = width + _GAP + w

    # Scale bar under the image's left corner (below the bottom label if they would collide), label under it.
    scale_text = _length_text(float(scale_bar_um), "µ" if _has_micro(label_font) else "u")
    text_w, text_h = canvas.size(scale_text, label_font)
    block_w = max(bar_px, text_w)
    bar_top = height + _GAP
    if bottom_box is not None and bottom_box[0] < block_w + _GAP:
        bar_top = bottom_box[3] + _GAP
    canvas.rectangle(0, bar_top, bar_px - 1, bar_top + _BAR_THICKNESS - 1, fill=ink)
    text_x = max(0, (bar_px - text_w) // 2)
    canvas.text(text_x, bar_top + _BAR_THICKNESS + 3, scale_text, label_font, ink)

    if colorbar is not None:
        _add_colorbar(canvas, colorbar, right_edge + 2 * _GAP, height, ink, tick_font)

    # Canvas bounds: the content's union box, the title block above it, margins around.
    left = min(b[0] for b in canvas.boxes)
    top = min(b[1] for b in canvas.boxes)
    right = max(b[2] for b in canvas.boxes)
    bottom = max(b[3] for b in canvas.boxes)
    headings = [(title, _font(_TITLE_PX))] if title else []
    if subtitle:
        headings.append((_printable(subtitle, _font(_SUBTITLE_PX)), _font(_SUBTITLE_PX)))
    sizes = [canvas.size(text, font) for text, font in headings]
    heading_h = sum(h for _, h in sizes) + 4 * max(0, len(sizes) - 1) + (2 * _GAP if sizes else 0)
    content_w = right - left
    canvas_w = max([content_w] + [w for w, _ in sizes]) + 2 * _MARGIN
    canvas_h = _MARGIN + heading_h + (bottom - top) + _MARGIN
    dx = (canvas_w - content_w) // 2 - left
    dy = _MARGIN + heading_h - top

    picture = Image.new("RGB", (canvas_w, canvas_h), background)
    draw = ImageDraw.Draw(picture)
    y = _MARGIN
    for (text, font), (w, h) in zip(headings, sizes):
        l, t, _, _ = _int_box(draw.textbbox((0, 0), text, font=font))
        draw.text(((canvas_w - w) // 2 - l, y - t), text, font=font, fill=ink)
        y += h + 4
    for op in canvas.ops:
        op(draw, picture, dx, dy)
    return np.asarray(picture, dtype=np.uint8).copy()


def _add_colorbar(canvas: _Canvas, colorbar: Colorbar, x: int, image_height: int, ink: tuple[int, int, int],
                  font: Any) -> None:
    """The bar (framed), its tick marks and labels and the rotated units label, starting at column ``x``."""
    bar_h = max(image_height, _COLORBAR_MIN_HEIGHT)
    top = (image_height - bar_h) // 2
    t = np.linspace(1.0, 0.0, bar_h)
    colours = np.asarray(colorbar.colormap(t))
    if colours.shape != (bar_h, 3) or colours.dtype != np.uint8:
        raise ValueError(f"Colorbar colormap must return uint8 RGB of shape t.shape + (3,), got {colours.dtype} "
                         f"{colours.shape} for t of shape {t.shape}")
    strip = np.ascontiguousarray(np.repeat(colours[:, None, :], _COLORBAR_WIDTH, axis=1))
    canvas.rectangle(x, top - 1, x + _COLORBAR_WIDTH + 1, top + bar_h, fill=None, outline=ink)
    canvas.pixels(x + 1, top, strip)

    tick_x = x + _COLORBAR_WIDTH + 2
    labels_x = tick_x + _TICK_LENGTH + 3
    ticks = colorbar.ticks()
    placed = [(top + round((1.0 - fraction) * (bar_h - 1)), label) for _, label, fraction in ticks]
    label_h = canvas.size("0", font)[1]
    mid_row = placed[1][0]
    if mid_row - placed[2][0] < label_h + 2 or placed[0][0] - mid_row < label_h + 2:
        placed.pop(1)  # the mid tick would collide with an end label (extreme gamma): leave it out
    labels_right = labels_x
    for row, label in placed:
        canvas.rectangle(tick_x, row, tick_x + _TICK_LENGTH - 1, row, fill=ink)
        w, _ = canvas.text(labels_x, row - label_h // 2, label, font, ink)
        labels_right = max(labels_right, labels_x + w)

    if colorbar.label.strip():
        units_font = _font(_SUBTITLE_PX)
        lines = _wrap(_printable(colorbar.label, units_font), units_font, bar_h, canvas)
        w, h = canvas.rotated_size(lines, units_font)
        canvas.rotated_text(labels_right + _GAP, top + (bar_h - h) // 2, lines, units_font, ink)


def write_figure(path: str | Path, image: np.ndarray, *, title: str, pixel_size_um: float,
                 subtitle: str | None = None, colorbar: Colorbar | None = None,
                 orientation: dict[str, str] | None = None, scale_bar_um: float | None = None,
                 dark: bool = False) -> Path:
    """Write :func:`figure` of ``image`` as a PNG at ``path`` (atomically); returns the path.

    Parameters are those of :func:`figure`; ``path`` (relative or absolute) is the PNG file to write. Nothing is
    written if the arguments are invalid.

    Examples
    --------
    >>> import tempfile
    >>> grey = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (100, 1))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_figure(Path(folder) / "grey.png", grey, title="A grey ramp", pixel_size_um=10.0).name
    'grey.png'
    """
    picture = figure(image, title=title, pixel_size_um=pixel_size_um, subtitle=subtitle, colorbar=colorbar,
                     orientation=orientation, scale_bar_um=scale_bar_um, dark=dark)
    return write_png(path, picture)
