"""server: brainmap's HTTP API (FastAPI + uvicorn), Allen-compatible.

- :mod:`~brainmap.server.app` -- :func:`create_app` (the routes are listed in its docstring);
- :mod:`~brainmap.server.routes_data` -- RMA queries (``/api/v2/data/query.json``);
- :mod:`~brainmap.server.routes_services` -- ``service::`` calls dispatched to :mod:`brainmap.search`;
- :mod:`~brainmap.server.routes_files` -- grid downloads, registered files, structure graph, annotation;
- :mod:`~brainmap.server.routes_sync` -- image synchronization;
- :mod:`~brainmap.server.viewer` -- the web viewer (``/viewer``);
- :mod:`~brainmap.server.state` -- the per-process state (settings, read-only engine, caches);
- :mod:`~brainmap.server.errors` -- Allen's error envelope and the HTTP status of each error;
- :mod:`~brainmap.server.logging` -- one JSON line per request;
- :mod:`~brainmap.server.serve` -- :func:`run_server` and the ``brainmap serve`` command.

Names are imported on first use, so ``import brainmap.server`` does not import FastAPI.
"""

from __future__ import annotations

from brainmap._lazy import lazy_exports

_EXPORTS = {
    "create_app": "brainmap.server.app",
    "ServerSettings": "brainmap.server.state",
    "add_serve_arguments": "brainmap.server.serve",
    "run_serve_command": "brainmap.server.serve",
    "run_server": "brainmap.server.serve",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
