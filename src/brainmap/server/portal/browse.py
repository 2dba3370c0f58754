"""The experiment browser: ``/experiments?product=&injection=&line=&gene=&plane=&strain=&sort=&order=&page=``.

Every filter is in the URL. ``injection`` takes an acronym, a name, words of a name or an id, and matches data
sets with an injection in that structure or any of its descendants. ``line=wild type`` keeps data sets without a
transgenic line. Sorting is by any column (``sort``, ``order`` asc/desc); pages hold ``per_page`` rows (25).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse

from brainmap.errors import BrainmapError
from brainmap.server.portal.catalog import SORT_KEYS, Catalog, DataSetRecord, catalog_of
from brainmap.server.portal.render import page as render_page
from brainmap.server.routes_data import state_of

__all__ = ["Filters", "filter_records", "router"]

router = APIRouter(include_in_schema=False)

COLUMNS = (("id", "Id"), ("product", "Product"), ("injection", "Injection"), ("line", "Line"), ("gene", "Gene"),
           ("plane", "Plane"), ("strain", "Strain"), ("sections", "Sections"))
PER_PAGE = 25


@dataclass(frozen=True)
class Filters:
    """The browser's filters, as typed (empty = any)."""

    product: str = ""
    injection: str = ""
    line: str = ""
    gene: str = ""
    plane: str = ""
    strain: str = ""

    def items(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


def _acronyms(tree: Any, ids: list[int]) -> list[str]:
    names = tree.get_acronym_map()
    return [names.get(i, str(i)) for i in ids]


def filter_records(catalog: Catalog, filters: Filters, tree: Any) -> tuple[list[DataSetRecord], str]:
    """The records passing ``filters``, and a note on the injection structure matched (raises
    :class:`~brainmap.errors.UnknownStructureError` naming an unknown structure)."""
    from brainmap.atlas.describe import resolve_structure

    records = catalog.records
    note = ""
    if filters.injection:
        node = resolve_structure(tree, filters.injection)
        wanted = {int(node["id"]), *(int(i) for i in tree.descendant_ids([int(node["id"])])[0])}
        records = [r for r in records if wanted.intersection(r.injection_ids)]
        note = f"injections in {node['acronym']} ({node['name']}) or its descendants"
    if filters.product:
        records = [r for r in records if r.product == filters.product]
    if filters.line:
        if filters.line == "wild type":
            records = [r for r in records if not r.lines and r.is_connectivity]
        else:
            records = [r for r in records if filters.line in r.lines]
    if filters.gene:
        gene = filters.gene.casefold()
        records = [r for r in records if gene in (g.casefold() for g in r.genes)]
    for name in ("plane", "strain"):
        value = getattr(filters, name)
        if value:
            records = [r for r in records if getattr(r, name) == value]
    return records, note


def _sort_value(record: DataSetRecord, key: str, acronyms: dict[int, str]) -> Any:
    if key == "injection":
        return acronyms.get(record.primary_injection_id or -1, "").casefold()
    value = getattr(record, key)
    return value.casefold() if isinstance(value, str) else value


@router.get("/experiments", response_class=HTMLResponse)
def experiments(request: Request, product: str = "", injection: str = "", line: str = "", gene: str = "",
                plane: str = "", strain: str = "", sort: str = "id", order: str = "asc",
                page_number: str = Query("1", alias="page"), per_page: int = PER_PAGE) -> HTMLResponse:
    state = state_of(request)
    number = int(page_number) if page_number.isdigit() else 1
    sort = sort if sort in SORT_KEYS else "id"
    order = order if order in ("asc", "desc") else "asc"
    per_page = min(max(per_page, 1), 500)
    catalog = catalog_of(state)
    tree = state.structure_tree
    filters = Filters(product, injection.strip(), line, gene, plane, strain)
    error = ""
    try:
        records, note = filter_records(catalog, filters, tree)
    except BrainmapError as exc:
        records, note, error = [], "", f"Injection structure: {exc}"
    acronyms = tree.get_acronym_map()
    records = sorted(records, key=lambda r: (_sort_value(r, sort, acronyms) in (None, ""),
                                             _sort_value(r, sort, acronyms) or 0, r.id),
                     reverse=order == "desc")
    pages = max(1, math.ceil(len(records) / per_page))
    number = min(max(number, 1), pages)
    shown = records[(number - 1) * per_page: number * per_page]
    base: dict[str, Any] = filters.items()
    if per_page != PER_PAGE:
        base["per_page"] = per_page

    def sort_url(key: str) -> str:
        flip = "desc" if key == sort and order == "asc" else "asc"
        return "/experiments?" + urlencode({**base, "sort": key, "order": flip})

    def page_url(number: int) -> str:
        return "/experiments?" + urlencode({**base, "sort": sort, "order": order, "page": number})

    def injection_text(r: DataSetRecord) -> str:
        return ", ".join(_acronyms(tree, r.injection_ids))

    choices = {k: catalog.choices(k) for k in ("product", "line", "gene", "plane", "strain")}
    return render_page("experiments.html", status=200 if not error else 400, nav="experiments", f=filters,
                rows=shown, total=len(records), total_all=len(catalog.records), columns=COLUMNS, sort=sort,
                order=order, page=number, pages=pages, sort_url=sort_url, page_url=page_url,
                injection_text=injection_text, choices=choices, error=error, injection_note=note,
                data_dir=state.data_dir)
