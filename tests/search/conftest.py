"""Fixtures of the search tests: the 200 um grid and small synthetic stores (made once per session)."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.search import MatrixStore, SearchGrid, coverage_voxels
from brainmap.search.synthetic import SyntheticExpression


@pytest.fixture(scope="session")
def ish_grid() -> SearchGrid:
    return SearchGrid.ish()


@pytest.fixture(scope="session")
def synthetic(ish_grid) -> SyntheticExpression:
    return SyntheticExpression(ish_grid, seed=7)


@pytest.fixture(scope="session")
def stores(tmp_path_factory, synthetic):
    """240 synthetic data sets over the full grid, as uint8 and float32 stores, and the uint8 coverage subset."""
    root = tmp_path_factory.mktemp("search-stores")
    u8 = MatrixStore.create(root / "full_u8", encoding="uint8")
    f32 = MatrixStore.create(root / "full_f32", encoding="float32")
    synthetic.fill([u8, f32], 240, block_rows=120)
    u8, f32 = MatrixStore.open(u8.path), MatrixStore.open(f32.path)
    coverage = u8.subset(root / "coverage_u8", coverage_voxels(u8))
    return {"uint8": u8, "float32": f32, "coverage": coverage}


@pytest.fixture(scope="session")
def reference_pearson():
    """The plain float64 Pearson's r (see :func:`_reference_pearson`)."""
    return _reference_pearson


def _reference_pearson(x: np.ndarray, y: np.ndarray, min_n: int) -> tuple[float, int]:
    """Pearson's r of two vectors over the entries where both are not NaN, the plain float64 way."""
    both = ~np.isnan(x) & ~np.isnan(y)
    n = int(both.sum())
    if n < min_n:
        return np.nan, n
    a, b = x[both], y[both]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return np.nan, n
    return float(np.corrcoef(a, b)[0, 1]), n
