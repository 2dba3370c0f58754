"""Figures: the image is pasted unchanged, the scale bar and colour bar are where and as long as they should be."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from PIL import Image

import brainmap.figures
from brainmap.figures import Colorbar, figure, heat_colormap, write_figure

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
SIDES = {"top": "anterior", "bottom": "posterior", "left": "L", "right": "R"}


def _random_image(rows: int = 114, cols: int = 132, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(rows, cols, 3), dtype=np.uint8)


def _find(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, int]:
    """The (row, col) where ``needle`` occurs exactly in ``haystack``; fails the test if nowhere."""
    rows, cols = needle.shape[:2]
    candidates = np.argwhere(np.all(haystack == needle[0, 0], axis=-1))
    for r, c in candidates:
        if r + rows <= haystack.shape[0] and c + cols <= haystack.shape[1]:
            if np.array_equal(haystack[r:r + rows, c:c + cols], needle):
                return int(r), int(c)
    pytest.fail("the input image does not appear unchanged in the figure")


def _longest_run(mask_row: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True in a 1-D boolean array."""
    padded = np.concatenate([[False], mask_row, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[::2], edges[1::2]
    if len(starts) == 0:
        return 0, 0
    best = int(np.argmax(ends - starts))
    return int(starts[best]), int(ends[best] - starts[best])


def test_docstring_examples_run():
    result = doctest.testmod(brainmap.figures, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4
    assert result.failed == 0


def test_heat_colormap_key_points_and_shape():
    rgb = heat_colormap(np.array([0.0, 1 / 3, 2 / 3, 1.0, -0.5, 2.0, np.nan]))
    assert rgb.dtype == np.uint8 and rgb.shape == (7, 3)
    assert rgb.tolist() == [[0, 0, 0], [255, 0, 0], [255, 255, 0], [255, 255, 255], [0, 0, 0], [255, 255, 255],
                            [0, 0, 0]]
    grid = heat_colormap(np.linspace(0, 1, 12).reshape(3, 4))
    assert grid.shape == (3, 4, 3)
    # Monotonic in brightness, as a heat scale must be.
    ramp = heat_colormap(np.linspace(0, 1, 256)).astype(int).sum(axis=1)
    assert np.all(np.diff(ramp) >= 0) and ramp[0] == 0 and ramp[-1] == 765


@pytest.mark.parametrize("dark", [False, True])
def test_figure_contains_the_image_unchanged_with_labels_on_every_side(dark):
    image = _random_image()
    out = figure(image, title="Projection density, top view", pixel_size_um=25.0, subtitle="synthetic data",
                 orientation=SIDES, colorbar=Colorbar(0.0, 1.0, "projection density (fraction of voxel)"), dark=dark)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] > image.shape[0] and out.shape[1] > image.shape[1]
    r, c = _find(out, image)
    background = np.array((24, 24, 24) if dark else WHITE, dtype=np.uint8)
    assert np.array_equal(out[0, 0], background)
    # Something (the orientation words) is drawn on each side of the image.
    h, w = image.shape[:2]
    beside = {"top": out[:r, c:c + w], "bottom": out[r + h:, c:c + w], "left": out[r:r + h, :c],
              "right": out[r:r + h, c + w:]}
    for side, region in beside.items():
        assert np.any(np.any(region != background, axis=-1)), f"nothing drawn at the image's {side}"


def test_grey_image_is_drawn_as_grey_rgb():
    grey = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (90, 1))
    out = figure(grey, title="grey", pixel_size_um=10.0)
    _find(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_title_region_holds_ink_only_when_there_is_a_title():
    image = _random_image()
    with_title = figure(image, title="A title", pixel_size_um=25.0)
    r, _ = _find(with_title, image)
    assert np.any(np.any(with_title[:r] != WHITE, axis=-1))
    without = figure(image, title="", pixel_size_um=25.0)
    r, _ = _find(without, image)
    assert np.all(without[:r] == WHITE)
    # A subtitle adds a line: the image moves down.
    with_subtitle = figure(image, title="A title", subtitle="synthetic data from the virtual microscope",
                           pixel_size_um=25.0)
    assert _find(with_subtitle, image)[0] > _find(with_title, image)[0]


@pytest.mark.parametrize(("scale_bar_um", "pixel_size_um", "dark"),
                         [(1000.0, 6.25, False), (250.0, 6.25, True), (500.0, 3.3, False), (100.0, 25.0, False)])
def test_scale_bar_length_in_pixels(scale_bar_um, pixel_size_um, dark):
    image = _random_image(120, 200)
    out = figure(image, title="scale", pixel_size_um=pixel_size_um, scale_bar_um=scale_bar_um, orientation=SIDES,
                 dark=dark)
    r, c = _find(out, image)
    ink = np.array((235, 235, 235) if dark else BLACK, dtype=np.uint8)
    below = np.all(out[r + image.shape[0]:, c:c + image.shape[1]] == ink, axis=-1)
    runs = [_longest_run(row) for row in below]
    start, length = max(runs, key=lambda run: run[1])
    assert start == 0, "the scale bar starts under the image's left edge"
    assert abs(length - round(scale_bar_um / pixel_size_um)) <= 1
    assert sum(1 for run in runs if run[1] == length) >= 3, "the bar is several pixels thick"


def test_default_scale_bar_is_a_round_length_near_a_fifth_of_the_width():
    image = _random_image(114, 528)
    pixel_size_um = 25 / 4
    out = figure(image, title="default", pixel_size_um=pixel_size_um)
    r, c = _find(out, image)
    below = np.all(out[r + image.shape[0]:, c:c + image.shape[1]] == BLACK, axis=-1)
    length = max(_longest_run(row)[1] for row in below)
    length_um = length * pixel_size_um
    mantissa = length_um / 10 ** math.floor(math.log10(length_um))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 0.02 * mantissa + pixel_size_um / length_um * 10
    assert 0.1 * image.shape[1] <= length <= 0.35 * image.shape[1]


def test_heat_colour_bar_runs_from_one_at_the_top_to_zero_at_the_bottom():
    image = _random_image(114, 132)
    out = figure(image, title="bar", pixel_size_um=25.0, colorbar=Colorbar(0.0, 350.0, "density"))
    r, c = _find(out, image)
    h, w = image.shape[:2]
    expected = heat_colormap(np.linspace(1.0, 0.0, h))  # as tall as the image
    right = out[r:r + h, c + w:]
    columns = np.flatnonzero(np.all(right == expected[:, None, :], axis=(0, 2)))
    assert len(columns) >= 8, "a vertical heat-scale strip as tall as the image, to its right"


def _distinct_colormap(t: np.ndarray) -> np.ndarray:
    """Red rises with t on a fixed (50, 200) green-blue that neither a grey image nor the canvas has."""
    t = np.asarray(t, dtype=float)
    rgb = np.stack([np.rint(255 * t), np.full_like(t, 50), np.full_like(t, 200)], axis=-1)
    return rgb.astype(np.uint8)


@pytest.mark.parametrize("gamma", [1.0, 0.5, 2.0])
def test_colour_bar_ends_and_ticks_follow_gamma(gamma):
    grey = np.tile(np.linspace(0, 255, 150).astype(np.uint8), (100, 1))
    out = figure(grey, title="gamma", pixel_size_um=10.0, orientation=SIDES,
                 colorbar=Colorbar(0.0, 1.0, "fraction", colormap=_distinct_colormap, gamma=gamma))
    r, c = _find(out, np.repeat(grey[:, :, None], 3, axis=2))
    bar = np.all(out[:, :, 1:] == (50, 200), axis=-1)
    rows, cols = np.nonzero(bar)
    assert cols.min() > c + grey.shape[1], "the colour bar is right of the image"
    top_rows = np.nonzero(np.all(out == _distinct_colormap(np.array(1.0)), axis=-1))[0]
    bottom_rows = np.nonzero(np.all(out == _distinct_colormap(np.array(0.0)), axis=-1))[0]
    assert set(top_rows) == {rows.min()}, "colormap(1) is the bar's top row"
    assert set(bottom_rows) == {rows.max()}, "colormap(0) is the bar's bottom row"
    top, bottom, bar_right = rows.min(), rows.max(), cols.max()
    # Tick marks just right of the bar's frame: rows where min, mid and max values' colours are.
    expected_mid = top + (1 - 0.5**gamma) * (bottom - top)
    for x in range(bar_right + 2, bar_right + 7):
        ticks = np.flatnonzero(np.all(out[top - 2:bottom + 3, x] == BLACK, axis=-1)) + top - 2
        if len(ticks) == 3:
            break
    else:
        pytest.fail("no column of three tick marks right of the colour bar")
    assert abs(ticks[0] - top) <= 1 and abs(ticks[2] - bottom) <= 1
    assert abs(ticks[1] - expected_mid) <= 1
    # The red channel at the mid tick is the colour of 0.5 ** gamma.
    assert abs(int(out[ticks[1], bar_right, 0]) - 255 * 0.5**gamma) <= 3


@pytest.mark.parametrize(("vmin", "vmax", "labels"),
                         [(0.0, 1.0, ["0", "0.5", "1"]), (0, 350, ["0", "175", "350"]),
                          (0.0, 0.012, ["0", "0.006", "0.012"]), (-1.0, 1.0, ["-1", "0", "1"]),
                          (0.0, 2.5e6, ["0", "1.25e+06", "2.5e+06"]), (100.0, 101.0, ["100", "100.5", "101"])])
def test_tick_labels_are_short_and_distinct(vmin, vmax, labels):
    ticks = Colorbar(vmin, vmax, "x").ticks()
    assert [label for _, label, _ in ticks] == labels
    assert [fraction for _, _, fraction in ticks] == [0.0, 0.5, 1.0]


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"image": np.zeros(10, np.uint8)}, "image"),
    ({"image": np.zeros((2, 10, 10, 3), np.uint8)}, "image"),
    ({"image": np.zeros((10, 10, 4), np.uint8)}, "image"),
    ({"image": np.zeros((10, 10), np.float64)}, "image"),
    ({"image": np.zeros((0, 10), np.uint8)}, "image"),
    ({"pixel_size_um": 0.0}, "pixel_size_um"),
    ({"pixel_size_um": -25.0}, "pixel_size_um"),
    ({"pixel_size_um": float("nan")}, "pixel_size_um"),
    ({"scale_bar_um": -1.0}, "scale_bar_um"),
    ({"scale_bar_um": 1e6}, "scale_bar_um"),
    ({"orientation": {"up": "A"}}, "orientation"),
    ({"title": None}, "title"),
])
def test_bad_figure_arguments_raise_value_errors_naming_them(kwargs, name):
    arguments = {"image": _random_image(40, 60), "title": "t", "pixel_size_um": 25.0} | kwargs
    with pytest.raises(ValueError, match=name):
        figure(**arguments)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"vmin": 1.0, "vmax": 1.0}, "vmin"), ({"vmin": 2.0, "vmax": 1.0}, "vmin"),
    ({"vmax": float("inf")}, "vmax"), ({"gamma": 0.0}, "gamma"),
])
def test_bad_colorbar_arguments_raise_value_errors_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Colorbar(**({"vmin": 0.0, "vmax": 1.0, "label": "x"} | kwargs))


def test_write_figure_writes_the_figure_as_png_at_a_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = _random_image()
    arguments = {"title": "t", "pixel_size_um": 25.0, "orientation": SIDES, "colorbar": Colorbar(0, 1, "x")}
    path = write_figure("figure.png", image, **arguments)
    assert (tmp_path / "figure.png").is_file() and path.name == "figure.png"
    with Image.open(tmp_path / "figure.png") as png:
        assert png.mode == "RGB"
        assert np.array_equal(np.asarray(png), figure(image, **arguments))


def test_write_figure_with_bad_input_leaves_an_existing_file_untouched(tmp_path):
    target = tmp_path / "figure.png"
    target.write_bytes(b"previous")
    with pytest.raises(ValueError, match="pixel_size_um"):
        write_figure(target, _random_image(), title="t", pixel_size_um=0.0)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]
