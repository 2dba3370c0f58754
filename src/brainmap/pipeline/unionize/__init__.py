"""Structure unionization: per-structure, per-hemisphere sums of gridded signal, rolled up the ontology."""

from brainmap.pipeline.unionize.grids import GridFolder
from brainmap.pipeline.unionize.ish import ISH_UNIONIZE_COLUMNS, unionize_expression
from brainmap.pipeline.unionize.projection import (
    PROJECTION_GRID_NAMES,
    PROJECTION_UNIONIZE_COLUMNS,
    unionize_projection,
)

__all__ = [
    "GridFolder",
    "ISH_UNIONIZE_COLUMNS",
    "PROJECTION_GRID_NAMES",
    "PROJECTION_UNIONIZE_COLUMNS",
    "unionize_expression",
    "unionize_projection",
]
