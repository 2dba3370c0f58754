"""Orientation conversions between Allen's PIR and RAS / LPS, for volumes and points."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.atlas.orientation import orientation_mapping, reorient_points, reorient_volume


def test_pir_to_ras_mapping():
    axes, flips = orientation_mapping("pir", "ras")
    assert axes == (2, 0, 1)  # R from LR, A from AP, S from DV
    assert flips == (False, True, True)


def test_volume_and_points_move_together():
    rng = np.random.default_rng(3)
    volume = rng.integers(0, 1000, size=(6, 4, 5))
    extent = np.array(volume.shape, dtype=float)
    voxels = np.argwhere(volume >= 0)
    centres = voxels + 0.5
    for target in ("ras", "lps", "pir", "asl"):
        moved = reorient_volume(volume, "pir", target)
        moved_points = reorient_points(centres, extent, "pir", target)
        idx = np.floor(moved_points).astype(int)
        np.testing.assert_array_equal(moved[tuple(idx.T)], volume[tuple(voxels.T)])


def test_round_trip_and_bad_orientation():
    points = np.array([[100.0, 200.0, 300.0], [13000.0, 7900.0, 5700.0]])
    extent = [13200, 8000, 11400]
    ras = reorient_points(points, extent, "pir", "ras")
    np.testing.assert_allclose(ras[0], [300.0, 13100.0, 7800.0])
    ras_extent = [11400, 13200, 8000]
    np.testing.assert_allclose(reorient_points(ras, ras_extent, "ras", "pir"), points)
    with pytest.raises(ValueError, match="orientation"):
        orientation_mapping("pxr", "ras")
    with pytest.raises(ValueError, match="orientation"):
        orientation_mapping("ppr", "ras")
