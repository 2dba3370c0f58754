"""store: the database and the RMA query language.

- :mod:`~brainmap.store.models` -- SQLAlchemy models named as Allen's API names them (SectionDataSet,
  SectionImage, Structure, ProjectionStructureUnionize, WellKnownFile, ...);
- :mod:`~brainmap.store.database` -- :func:`open_database`: SQLite in the data directory by default,
  ``BRAINMAP_DATABASE_URL`` (PostgreSQL) otherwise;
- :mod:`~brainmap.store.load` -- :func:`load_paths`: pipeline outputs and the bundled ontology, idempotently
  (``brainmap load DIR...``);
- :mod:`~brainmap.store.rma` -- the RMA query language: :func:`parse_rma`, :func:`execute_rma`, envelopes.

Names are imported on first use, so ``import brainmap.store`` does not import SQLAlchemy.
"""

from __future__ import annotations

from brainmap._lazy import lazy_exports

_EXPORTS = {
    "Database": "brainmap.store.database",
    "DatabaseError": "brainmap.store.database",
    "data_directory": "brainmap.store.database",
    "database_url": "brainmap.store.database",
    "open_database": "brainmap.store.database",
    "LoadError": "brainmap.store.load",
    "LoadReport": "brainmap.store.load",
    "load_paths": "brainmap.store.load",
    "run_load_command": "brainmap.store.load",
    "execute_rma": "brainmap.store.rma",
    "parse_rma": "brainmap.store.rma",
    "parse_rma_params": "brainmap.store.rma",
    "render": "brainmap.store.rma",
    "render_error": "brainmap.store.rma",
    "RmaError": "brainmap.store.rma",
    "RmaSyntaxError": "brainmap.store.rma",
    "RmaUnknownNameError": "brainmap.store.rma",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
