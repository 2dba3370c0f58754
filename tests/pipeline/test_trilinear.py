"""The compiled trilinear sampling against scipy's map_coordinates, which it replaces in the ISH gridding."""

import numpy as np
import pytest
from scipy import ndimage

from brainmap.pipeline.grid._trilinear import add_trilinear


@pytest.mark.parametrize("shape", [(5, 7, 9), (1, 4, 6), (3, 1, 5), (2, 3, 1)])
def test_the_bits_of_map_coordinates_order_1_constant(shape):
    rng = np.random.default_rng(sum(shape))
    volumes = rng.random((4, *shape)) * np.array([1e-3, 1.0, 7.0, 1e5])[:, None, None, None]
    n = 100_000
    coords = np.stack([rng.uniform(-1.5, s + 0.5, n) for s in shape])
    coords[:, :5000] = np.stack([rng.integers(-1, s + 1, 5000) for s in shape])  # on planes, edges and beyond
    coords[rng.integers(0, 3), 5000:5020] = np.nan
    # fractions whose weights 1 - (1 - f) are not f in floating point (0.1 -> 0.09999999999999998)
    tenths = np.stack([rng.integers(0, max(s - 1, 1), 5000) + rng.integers(1, 10, 5000) / 10 for s in shape])
    coords[:, 6000:11000] = np.minimum(tenths, np.array(shape)[:, None] - 1)
    expected, out = np.zeros((4, n)), np.zeros((4, n))
    for shift in (0.0, 0.25, -0.5):  # sums over several calls, as the gridding adds its supersamples
        for q in range(4):
            expected[q] += ndimage.map_coordinates(volumes[q], coords + shift, order=1, mode="constant", cval=0.0,
                                                   prefilter=False)
        add_trilinear(out, volumes, coords + shift)
    assert np.count_nonzero(out[1]) >= 300  # points inside (an axis of length 1: only those on its plane)
    assert np.array_equal(out.view(np.int64), expected.view(np.int64))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="contiguous float64"):
        add_trilinear(np.zeros((2, 3)), np.zeros((1, 2, 2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="coords"):
        add_trilinear(np.zeros((1, 3)), np.zeros((1, 2, 2, 2)), np.zeros((2, 3)))
