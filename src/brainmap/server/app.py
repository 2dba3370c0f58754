"""The FastAPI application: :func:`create_app` builds it for one data directory and database.

Routes (``/docs`` has them all, with their parameters; ``/openapi.json`` is the machine-readable form):

==================================================================  ===========================================
``/api/v2/data/query.{json,xml,csv}?criteria=``  (``q=``)          RMA model queries and ``service::`` calls
``/api/v2/data/{Model}/query.{fmt}``, ``/api/v2/data/{Model}/{id}``  the model forms
``/grid_data/download/{id}?include=energy,density,intensity``      a zip of MetaImage grid volumes
``/grid_data/download_file/{id}?image=...&resolution=...``         one NRRD grid volume
``/api/v2/well_known_file_download/{id}``                          any registered file
``/api/v2/structure_graph_download/1.json``                        the ontology, nested
``/api/v2/annotation/{resolution}``, ``/informatics-archive/...``  the annotation volumes
``/api/v2/image_to_reference/{section_image_id}.json`` and the      image sync
other image sync routes
``/viewer``                                                        the web viewer
``/health``                                                        liveness (no token needed; no paths, no PID)
==================================================================  ===========================================
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from starlette.responses import RedirectResponse, Response

from brainmap.server.errors import install_error_handlers
from brainmap.server.limits import LimitsMiddleware
from brainmap.server.logging import RequestLogMiddleware
from brainmap.server.state import ENV_SETTINGS, ServerSettings, ServerState, settings_for

__all__ = ["app_from_environment", "create_app"]

_DESCRIPTION = """An Allen Brain Atlas compatible API for brainmap data: RMA queries over the database,
the expression and connectivity search services, grid-data downloads, the structure ontology, annotation volumes
and image synchronization. Errors are Allen's envelope `{success: false, msg, error}` with a 4xx status."""


def create_app(data_dir: str | os.PathLike[str], database_url: str | None = None, *,
               settings: ServerSettings | None = None, **overrides: Any) -> FastAPI:
    """The API for ``data_dir`` (files are served from it and only from it) and ``database_url`` (default
    ``$BRAINMAP_DATABASE_URL``, else SQLite in the data directory).

    ``overrides`` set :class:`~brainmap.server.state.ServerSettings` fields (``max_rows``,
    ``query_timeout_s``, ...); or pass a whole ``settings``. The database schema is created if it is missing;
    a database of another schema version is refused.
    """
    from brainmap import __version__
    from brainmap.server import routes_data, routes_files, routes_images, routes_services, routes_sync, viewer

    if settings is None:
        settings = settings_for(data_dir, database_url, **overrides)
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.warm_up:
            from brainmap.server.searches import warm_up

            threading.Thread(target=warm_up, args=(state,), name="brainmap-warm-up", daemon=True).start()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="brainmap", version=__version__, description=_DESCRIPTION, lifespan=lifespan)
    app.state.brainmap = state
    install_error_handlers(app)
    for module in (routes_data, routes_services, routes_files, routes_images, routes_sync, viewer):
        app.include_router(module.router)
    viewer.mount_static(app)
    __import__("brainmap.server.portal", fromlist=["install"]).install(app)  # pages, /docs, /redoc, /
    routes_data.install_fast_routes(app)

    @app.get("/health", tags=["server"], summary="Liveness")
    def health() -> dict[str, Any]:
        """Says only that the server is up (it needs no token; it shows no paths, versions or process ids).
        ``warm`` is false while the start-up warm-up (search grids, connectivity search) still runs; the server
        answers meanwhile, the first searches more slowly."""
        return {"success": True, "warm": state.warmed.is_set()}

    @app.get("/", include_in_schema=False)
    def root(request: Request) -> Response:
        return RedirectResponse(url="/viewer")

    app.add_middleware(LimitsMiddleware, token=settings.token)
    app.add_middleware(RequestLogMiddleware)  # outermost: refusals are logged too
    return app


def app_from_environment() -> FastAPI:
    """The app of one uvicorn worker process, from the settings ``brainmap serve`` put in
    ``$BRAINMAP_SERVER_SETTINGS`` (JSON)."""
    raw = os.environ.get(ENV_SETTINGS)
    if not raw:
        raise RuntimeError(f"${ENV_SETTINGS} is not set; start the server with brainmap serve")
    settings = ServerSettings.from_env(json.loads(raw))
    return create_app(Path(settings.data_dir), settings=settings)
