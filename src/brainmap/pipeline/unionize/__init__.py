"""Structure unionization: per-structure, per-hemisphere sums of gridded signal, rolled up the ontology.

The names below load their modules when first used (PEP 562), so that ``brainmap unionize`` can start decoding its
grid files (:mod:`~brainmap.pipeline.unionize.grids`, no numba or pandas) before it imports the unionizers.
"""

from __future__ import annotations

from brainmap._lazy import lazy_exports

_EXPORTS = {name: f"{__name__}.{module}" for module, names in {
    "grids": ["GridFolder", "PROJECTION_GRID_NAMES", "unionize_annotation"],
    "ish": ["ISH_HEMISPHERE_COLUMNS", "ISH_UNIONIZE_COLUMNS", "unionize_expression",
            "unionize_expression_by_hemisphere"],
    "projection": ["PROJECTION_UNIONIZE_COLUMNS", "unionize_projection"],
}.items() for name in names}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
