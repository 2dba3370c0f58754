"""The compiled hole filling of ISH detection against scipy's labelling of the complement."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import ndimage

from brainmap.pipeline.detect import _holes
from brainmap.pipeline.detect._holes import fill_small_holes


def _scipy_fill(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """The holes by scipy: 4-connected components of the complement, off the border, of at most the area."""
    labels, n = ndimage.label(~mask)
    sizes = ndimage.sum_labels(np.ones(mask.shape), labels, np.arange(n + 1))
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = (sizes <= max_area_px) & ~np.isin(np.arange(n + 1), edge)
    fill[0] = False
    return mask | fill[labels]


def _masks(rng: np.random.Generator):
    for trial in range(150):
        shape = tuple(int(v) for v in rng.integers(1, 50, size=2))
        if trial % 3 == 0:
            yield rng.uniform(size=shape) < rng.uniform(0.3, 0.8)
        elif trial % 3 == 1:  # rings and blobs with holes, some cut by the border
            yield np.abs(ndimage.gaussian_filter(rng.normal(size=shape), 1.5)) > 0.05
        else:  # cells with nuclei
            cells = ndimage.binary_dilation(rng.uniform(size=shape) < 0.03, iterations=int(rng.integers(1, 4)))
            yield cells & ~(rng.uniform(size=shape) < 0.15)


def test_the_same_masks_as_labelling_the_complement_with_scipy() -> None:
    rng = np.random.default_rng(0)
    filled_some = 0
    for mask in _masks(rng):
        for area in (0, 1, 2.5, 4, 9, 30, 10_000):
            got = fill_small_holes(mask, area)
            assert np.array_equal(got, _scipy_fill(mask, area)), (mask.shape, area)
            filled_some += int(np.count_nonzero(got & ~mask) > 0)
    assert filled_some > 100  # the masks hold holes of many sizes: the comparison is not of unchanged masks


def test_holes_are_four_connected_and_the_area_is_inclusive() -> None:
    mask = np.ones((7, 7), bool)
    mask[2, 2] = mask[3, 3] = False  # touching at a corner only: two holes of one pixel
    mask[5, 1:4] = False  # a hole of three pixels
    one_pixel = mask.copy()
    one_pixel[2, 2] = one_pixel[3, 3] = True
    assert np.array_equal(fill_small_holes(mask, 1), one_pixel)
    assert np.array_equal(fill_small_holes(mask, 2.9), one_pixel)
    assert fill_small_holes(mask, 3).all()
    open_to_the_border = np.ones((5, 5), bool)
    open_to_the_border[2, 0:3] = False
    assert np.array_equal(fill_small_holes(open_to_the_border, 100), open_to_the_border)
    for mask in (np.zeros((3, 4), bool), np.ones((3, 4), bool), np.zeros((1, 9), bool), np.zeros((0, 0), bool)):
        assert np.array_equal(fill_small_holes(mask, 50), mask)
    with pytest.raises(ValueError, match="2-D"):
        fill_small_holes(np.zeros((2, 2, 2), bool), 4)


def test_the_docstring_example_runs() -> None:
    assert doctest.testmod(_holes, extraglobs={"np": np}).failed == 0
