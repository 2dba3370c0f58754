"""The portal: the web application a neuroscientist works in (server-side rendered pages and small scripts).

Pages (each view's state is in its URL; every asset is served by brainmap itself, nothing from another host):

=====================================  ===========================================================================
``/experiments``                       the experiment browser (filters, sorting, pages)
``/experiment/{id}``                   an experiment: metadata, previews, structure bar graph, downloads, searches
``/search``, ``/search/{service}``     a form and a result table for every search service (CSV download)
``/sections/{id}``                     the section image viewer (Deep Zoom tiles, annotation over the image)
``/reference``                         the reference viewer (Neuroglancer: annotation, template, grid volumes)
``/docs``, ``/redoc``                  the API documentation, offline (assets from the ``fastapi-offline`` wheel)
``/favicon.ico``                       the icon
=====================================  ===========================================================================

:func:`install` adds all of it to the application (``app.py`` calls it once).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

__all__ = ["STATIC", "install"]

STATIC = Path(__file__).resolve().parent / "static"
_DOC_PATHS = ("/docs", "/redoc", "/docs/oauth2-redirect")


def _docs_static() -> Path:
    """The Swagger UI and ReDoc bundles shipped in the ``fastapi-offline`` wheel."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


@lru_cache(maxsize=1)
def _redoc_script() -> bytes:
    """ReDoc's bundle with its one outside request (the "powered by" logo from Redocly's CDN) pointed here."""
    script = (_docs_static() / "redoc.standalone.js").read_bytes()
    return script.replace(b"https://cdn.redoc.ly/redoc/logo-mini.svg", b"/portal/static/favicon.svg")


def install(app: FastAPI) -> None:
    """Add the portal's pages, its static files, the favicon and the offline ``/docs`` and ``/redoc``.

    FastAPI registers its own ``/docs`` and ``/redoc`` (which load their scripts from a CDN) when the app is made;
    they are replaced here by the same pages pointing at ``/portal/docs-static/``. ``/`` goes to the experiment
    browser (these routes come before ``app.py``'s own ``/``).
    """
    from brainmap.server.portal import browse, experiment, precomputed, previews, reference, search_pages, sections

    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in _DOC_PATHS]
    for module in (browse, experiment, precomputed, previews, reference, search_pages, sections):
        app.include_router(module.router)
    app.mount("/portal/static", StaticFiles(directory=STATIC), name="portal-static")
    app.mount("/portal/docs-static", StaticFiles(directory=_docs_static()), name="portal-docs-static")
    title = app.title

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse(url="/experiments")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon",
                            headers={"Cache-Control": "max-age=86400"})

    @app.get("/docs", include_in_schema=False)
    def swagger(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{title} API",
                                   swagger_js_url="/portal/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/portal/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/favicon.ico")

    @app.get("/portal/redoc.standalone.js", include_in_schema=False)
    def redoc_js() -> Response:
        return Response(_redoc_script(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{title} API",
                              redoc_js_url="/portal/redoc.standalone.js",
                              redoc_favicon_url="/favicon.ico", with_google_fonts=False)
