"""Rendering the portal's pages: the Jinja2 environment, HTML answers and the HTML error page."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse

__all__ = ["TEMPLATES", "error_page", "page"]

TEMPLATES = Path(__file__).resolve().parent / "templates"


@lru_cache(maxsize=1)
def _environment() -> Environment:
    from brainmap import __version__

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "svg"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals["version"] = __version__
    env.globals["structure_choices"] = structure_choices
    return env


@lru_cache(maxsize=1)
def structure_choices() -> list[tuple[str, str]]:
    """(acronym, name) of every structure of the bundled ontology, in graph order (the pickers' list)."""
    from brainmap.atlas import StructureTree

    tree = StructureTree.bundled()
    nodes = sorted(tree.nodes(), key=lambda n: n.get("graph_order", 0))
    return [(str(n["acronym"]), str(n["name"])) for n in nodes]


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context``, as an HTML answer."""
    html = _environment().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status)


def error_page(status: int, heading: str, message: str, nav: str = "") -> HTMLResponse:
    """A page saying what went wrong (never a traceback)."""
    return page("error.html", status=status, heading=heading, message=message, nav=nav)
