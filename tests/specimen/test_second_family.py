"""The second render family's ISH cells draw their stated density (``brainmap.specimen.synthetic.second_family``)."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.specimen.synthetic import second_family


@pytest.mark.parametrize("density", [0.2, 0.5])
def test_the_second_familys_cells_cover_the_stated_density_on_average(density):
    """The true mask (pixel centres inside a cell's ellipse) covers, over many cells, the density the cells were
    drawn for: the clusters' rate comes from their mean area with the lognormal size's spread and the partners'
    overlap (a rate from the median cell's area, as first drawn, covered 3 % more). Pixels within reach of the
    window's edge are left out (cells centred outside it are not drawn)."""
    pixel_um, size, margin = 4.0, 1000, 30  # ~13000 / 28000 clusters a window: the mean to +-0.4 / 0.2 %
    covered = pixels = 0
    for seed in range(4):
        rng = np.random.default_rng([seed, 0xD5])
        cells = second_family._cells(rng, np.full((size, size), density), pixel_um)
        owner, _ = second_family._ellipses((size, size), cells, 1.0, with_nucleus=False)
        interior = owner[margin:-margin, margin:-margin] >= 0
        covered += np.count_nonzero(interior)
        pixels += interior.size
    assert covered / pixels == pytest.approx(density, rel=0.012)


def test_the_clusters_mean_area_counts_the_size_spread_and_the_partners_overlap():
    """The clusters' mean area lies between a lone median cell's area x (1 + the partner share) and the same
    with the lognormal's area factor exp(2 sigma^2) (no overlap): the partners do overlap, a little."""
    median = np.pi * second_family.CELL_DIAMETER_UM ** 2 / 4.0 * (1.0 + second_family.PARTNER_SHARE)
    area = second_family.cluster_area_um2()
    assert median < area < median * np.exp(2 * 0.2 ** 2)
    assert area > 0.97 * median * np.exp(2 * 0.2 ** 2)
