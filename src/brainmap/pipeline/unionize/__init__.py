"""Structure unionization: per-structure, per-hemisphere sums of gridded signal, rolled up the ontology.

The names below load their modules when first used (PEP 562), so that ``brainmap unionize`` can start decoding its
grid files (:mod:`~brainmap.pipeline.unionize.grids`, no numba or pandas) before it imports the unionizers.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "GridFolder": "grids",
    "PROJECTION_GRID_NAMES": "grids",
    "unionize_annotation": "grids",
    "ISH_HEMISPHERE_COLUMNS": "ish",
    "ISH_UNIONIZE_COLUMNS": "ish",
    "unionize_expression": "ish",
    "unionize_expression_by_hemisphere": "ish",
    "PROJECTION_UNIONIZE_COLUMNS": "projection",
    "unionize_projection": "projection",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
