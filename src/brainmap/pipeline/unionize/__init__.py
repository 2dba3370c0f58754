"""Structure unionization: per-structure, per-hemisphere sums of gridded signal, rolled up the ontology."""

from brainmap.pipeline.unionize.grids import GridFolder, unionize_annotation
from brainmap.pipeline.unionize.ish import (
    ISH_HEMISPHERE_COLUMNS,
    ISH_UNIONIZE_COLUMNS,
    unionize_expression,
    unionize_expression_by_hemisphere,
)
from brainmap.pipeline.unionize.projection import (
    PROJECTION_GRID_NAMES,
    PROJECTION_UNIONIZE_COLUMNS,
    unionize_projection,
)

__all__ = [
    "GridFolder",
    "ISH_HEMISPHERE_COLUMNS",
    "ISH_UNIONIZE_COLUMNS",
    "PROJECTION_GRID_NAMES",
    "PROJECTION_UNIONIZE_COLUMNS",
    "unionize_expression",
    "unionize_expression_by_hemisphere",
    "unionize_annotation",
    "unionize_projection",
]
