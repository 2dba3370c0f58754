"""Expression grid search: Allen's differential, correlation and seed-point (AGEA) searches over a data sets x
voxels matrix, on the 200 um grid's coverage set or on the full grid.

    from brainmap.search import MatrixStore, ExpressionSearch, SearchGrid, coverage_voxels

    store = MatrixStore.open("ish_energy")                      # 25,000 data sets x 159,326 voxels, uint8
    search = ExpressionSearch(store)
    page = search.differential("TH", "Isocortex").page(0, 50)   # fold change, descending
    page = search.correlation(69782969, domain=["HPF"]).page()  # Pearson's r with a seed data set
    page = search.seed_point([6800, 4200, 5600]).page()         # AGEA: voxels correlated with a seed voxel

Modules: :mod:`~brainmap.search.grid` (the 200 um grid annotation, structure voxel sets, coverage),
:mod:`~brainmap.search.matrix` (the store), :mod:`~brainmap.search.expression` (the searches),
:mod:`~brainmap.search.results` (typed rows, paging, errors), :mod:`~brainmap.search.distributed` (the same
searches on a dask.distributed cluster), :mod:`~brainmap.search.synthetic` (generated data for tests).
"""

from brainmap.search.expression import (
    ExpressionSearch,
    SeedPointRanking,
    correlation_search,
    differential_search,
    seed_point_search,
)
from brainmap.search.grid import (
    GRID_RESOLUTION_UM,
    GRID_SHAPE,
    GRID_VOXELS,
    SearchGrid,
    coverage_voxels,
    expression_grid_annotation,
    read_coverage_mask,
)
from brainmap.search.matrix import GridSpec, MatrixStore
from brainmap.search.results import (
    CorrelationRow,
    DifferentialRow,
    Ranking,
    MissingSearchDataError,
    SearchInputError,
    SearchPage,
    UnknownDataSetError,
    VoxelCorrelationRow,
)

__all__ = [
    "GRID_RESOLUTION_UM",
    "GRID_SHAPE",
    "GRID_VOXELS",
    "CorrelationRow",
    "DifferentialRow",
    "ExpressionSearch",
    "GridSpec",
    "MatrixStore",
    "Ranking",
    "SearchGrid",
    "MissingSearchDataError",
    "SearchInputError",
    "SearchPage",
    "SeedPointRanking",
    "UnknownDataSetError",
    "VoxelCorrelationRow",
    "correlation_search",
    "coverage_voxels",
    "differential_search",
    "expression_grid_annotation",
    "read_coverage_mask",
    "seed_point_search",
]
