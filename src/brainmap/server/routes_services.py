"""The search services, called as Allen's ``service::NAME[param$eqvalue]...`` RMA stages.

``/api/v2/data/query.json?criteria=service::mouse_differential[structures1$eqTH][structures2$eqIsocortex]``

Each service checks its parameters against Allen's names and types (an unknown or mistyped parameter is an
HTTP 400 naming the valid ones), converts them, and calls a plain function of :mod:`brainmap.search`:

====================================================  =======================================================
service                                               function
====================================================  =======================================================
``mouse_differential``                                :func:`brainmap.search.differential_search`
``mouse_correlation``                                 :func:`brainmap.search.correlation_search`
``mouse_agea``                                        :func:`brainmap.search.seed_point_search`
``mouse_connectivity_injection_structure``            :func:`brainmap.search.connectivity.run_service`
                                                      (``ConnectivitySearch.source``, or ``.target`` with a
                                                      ``target_domain``)
``mouse_connectivity_target``                         the same service with ``target_domain`` required
                                                      (``ConnectivitySearch.target``)
``mouse_connectivity_target_spatial``                 ``run_service`` -> ``ConnectivitySearch.spatial`` (rows
                                                      carry the ``path`` from the seed to the injection site)
``mouse_connectivity_injection_coordinate``           ``run_service`` -> ``.injection_coordinate``
``mouse_connectivity_correlation``                    ``run_service`` -> ``.correlation``
====================================================  =======================================================

Connectivity rows use Allen's result keys (``structure-abbrev``, ``injection-coordinates``, ...,
:data:`brainmap.search.connectivity.ALLEN_FIELD_NAMES`); expression rows are the search's typed rows.

Paging is Allen's: ``start_row`` (default 0) and ``num_rows`` (default 2000, at most the server's row cap), as
service parameters or in ``rma::options``. The answer is Allen's envelope (``msg`` holds the page's rows); XML
and CSV work as for model queries.

The search data (matrices under ``search/`` in the data directory, experiments and unionizes from the
database) are described in :mod:`brainmap.server.searches`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import APIRouter
from starlette.responses import Response

from brainmap.search.results import SearchInputError
from brainmap.server.searches import EXPRESSION_SETS, search_backends
from brainmap.server.state import ServerState
from brainmap.store.rma import RmaLimitError, RmaResult, RmaUnknownNameError, RmaValueError, ServiceCall, render

__all__ = ["SERVICES", "Param", "Service", "answer_service", "router", "service_result"]

router = APIRouter(tags=["services"])

#: Allen's default page size for services.
DEFAULT_SERVICE_ROWS = 2000

_INT = re.compile(r"[+-]?\d{1,19}")
_NAME = re.compile(r"[A-Za-z0-9_\-\. /(),'+]{1,200}")


# -- parameters -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One service parameter: Allen's name, its kind, whether it is required, its default and allowed values.

    Kinds: ``int``, ``float``, ``bool``, ``str`` (one of ``values`` when given), ``point`` (three numbers, um),
    ``structures`` (ids or acronyms), ``lines`` (transgenic line ids or names; 0 = wild type only), ``ints``,
    ``pair`` (two numbers, Allen's thresholds).
    """

    name: str
    kind: str
    required: bool = False
    default: Any = None
    values: tuple[str, ...] = ()
    doc: str = ""


def _atoms(call: ServiceCall, name: str) -> list[str]:
    value = call.param(name)
    return [] if value is None else [a.strip() for a in value.atoms]


def _convert(param: Param, atoms: list[str], call: ServiceCall, text: str, given_as: str) -> Any:
    value = call.param(given_as)
    position = value.position if value is not None else call.position

    def bad(expected: str) -> RmaValueError:
        return RmaValueError(f"service::{call.name}: {given_as} must be {expected}, got {','.join(atoms)!r}",
                             position, text, expected=expected)

    kind = param.kind
    if kind in ("int", "float", "bool", "str") and len(atoms) != 1:
        raise bad(f"one {kind} value")
    if kind == "int":
        if not _INT.fullmatch(atoms[0]):
            raise bad("an integer")
        return int(atoms[0])
    if kind == "float":
        try:
            number = float(atoms[0])
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if kind == "bool":
        word = atoms[0].lower()
        if word in ("true", "t", "1"):
            return True
        if word in ("false", "f", "0"):
            return False
        raise bad("true or false")
    if kind == "str":
        if param.values and atoms[0] not in param.values:
            raise bad("one of " + ", ".join(param.values))
        return atoms[0]
    if kind in ("point", "pair"):
        n = 3 if kind == "point" else 2
        try:
            numbers = [float(a) for a in atoms]
        except ValueError:
            raise bad(f"{n} comma-separated numbers") from None
        if len(numbers) != n or not all(math.isfinite(x) for x in numbers):
            raise bad(f"{n} comma-separated finite numbers")
        return numbers
    if kind == "ints":
        if not atoms or not all(_INT.fullmatch(a) for a in atoms):
            raise bad("comma-separated integers")
        return [int(a) for a in atoms]
    if kind in ("structures", "lines"):
        out: list[int | str] = []
        for atom in atoms:
            if _INT.fullmatch(atom):
                out.append(int(atom))
            elif _NAME.fullmatch(atom):
                out.append(atom)
            else:
                raise bad("ids or names")
        if not out:
            raise bad("at least one id or name")
        return out
    raise AssertionError(f"unknown parameter kind {kind}")


@dataclass(frozen=True)
class Service:
    """A service: its parameters (paging is added to every service) and the function answering it.

    ``run(state, params, start_row, num_rows)`` returns a :class:`~brainmap.search.SearchPage` (or anything
    with ``to_dict()`` giving Allen's envelope). ``aliases`` are other names of parameters; ``allen_keys``
    renames the rows' fields to Allen's hyphenated result keys.
    """

    name: str
    params: tuple[Param, ...]
    run: Callable[[ServerState, dict[str, Any], int, int], Any]
    doc: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    allen_keys: bool = False

    def parse(self, call: ServiceCall, text: str, max_rows: int) -> tuple[dict[str, Any], int, int]:
        """``(params, start_row, num_rows)`` from the call, checked and converted."""
        names = {p.name for p in self.params}
        valid = [*names, *self.aliases, "start_row", "num_rows"]
        given: dict[str, Any] = {}
        for item in call.params:
            if item.name not in valid:
                raise RmaUnknownNameError("parameter", item.name, valid, item.position, text,
                                          context=f"service::{self.name}")
            if item.op != "eq" or item.value is None:
                raise RmaValueError(f"service::{self.name}: write parameters as [{item.name}$eqVALUE]",
                                    item.position, text, expected=f"[{item.name}$eqVALUE]")
            real = self.aliases.get(item.name, item.name)
            if real in given:
                raise RmaValueError(f"service::{self.name}: {given[real]} and {item.name} are one parameter; "
                                    "give it once", item.position, text, expected=f"one [{real}$eq...]")
            given[real] = item.name
        params: dict[str, Any] = {}
        for param in self.params:
            atoms = _atoms(call, given[param.name]) if param.name in given else []
            if not atoms:
                if param.required:
                    raise RmaValueError(f"service::{self.name} needs the parameter {param.name} ({param.doc})",
                                        call.position, text, expected=f"[{param.name}$eq...]")
                params[param.name] = param.default
                continue
            params[param.name] = _convert(param, atoms, call, text, given[param.name])
        start_row = self._paging(call, "start_row", 0, text)
        num_rows = self._paging(call, "num_rows", DEFAULT_SERVICE_ROWS, text)
        if num_rows > max_rows:
            value = call.param("num_rows")
            raise RmaLimitError(f"num_rows {num_rows:,} is more than this server returns per page ({max_rows:,}); "
                                "page with start_row", value.position if value else None, text,
                                expected=f"num_rows at most {max_rows}")
        return params, start_row, num_rows

    @staticmethod
    def _paging(call: ServiceCall, name: str, default: int, text: str) -> int:
        atoms = _atoms(call, name)
        if atoms:
            if len(atoms) != 1 or not atoms[0].isdigit() or len(atoms[0]) > 12:
                value = call.param(name)
                raise RmaValueError(f"{name} must be a non-negative integer, got {','.join(atoms)!r}",
                                    value.position if value else None, text, expected="a non-negative integer")
            return int(atoms[0])
        option = getattr(call.options, name)
        if option is None:
            return default
        if option == "all":
            raise RmaValueError("services page their rows: give num_rows a number", None, text,
                                expected="a number")
        return int(option)


# -- expression services ------------------------------------------------------------------------------------------
_PAGE_DOC = "start_row, num_rows: paging (default 0 and 2000)"
_SETS = EXPRESSION_SETS


def _expression_store(state: ServerState, params: dict[str, Any]) -> Any:
    return search_backends(state).expression_store(params.get("set") or "mouse")


def _differential(state: ServerState, p: dict[str, Any], start_row: int, num_rows: int) -> Any:
    from brainmap.search import differential_search

    return differential_search(_expression_store(state, p), p["structures1"], p["structures2"],
                               threshold1=p["threshold1"], threshold2=p["threshold2"],
                               start_row=start_row, num_rows=num_rows)


def _correlation(state: ServerState, p: dict[str, Any], start_row: int, num_rows: int) -> Any:
    from brainmap.search import correlation_search

    return correlation_search(_expression_store(state, p), p["row"], p["structures"], sort_order=p["sort_order"],
                              start_row=start_row, num_rows=num_rows)


#: The one age of brainmap's adult mouse ISH data (Allen's ``seed_age`` / ``map_age`` of ``mouse_agea``).
AGEA_AGES = ("P56",)


def _agea(state: ServerState, p: dict[str, Any], start_row: int, num_rows: int) -> Any:
    from brainmap.search import seed_point_search
    from brainmap.search.expression import ExpressionSearch

    for name in ("seed_age", "map_age"):
        if p[name] is not None and p[name].upper() not in AGEA_AGES:
            raise SearchInputError(f"service::mouse_agea: {name} {p[name]!r} is not an age of this server's "
                                   f"adult mouse data; ages: {', '.join(AGEA_AGES)}")
    thresholds = (p["correlation_threshold1"], p["correlation_threshold2"])
    if any(t is not None for t in thresholds):
        if any(t is None for t in thresholds):
            raise SearchInputError("service::mouse_agea: the gene finder needs both correlation_threshold1 and "
                                   "correlation_threshold2")
        ranking = ExpressionSearch(_expression_store(state, p)).gene_finder(
            p["seed_point"], *thresholds, threshold1=p["threshold1"], threshold2=p["threshold2"],
            domain=p["structures"])
        return ranking.page(start_row, num_rows)
    if p["threshold1"] is not None or p["threshold2"] is not None:
        raise SearchInputError("service::mouse_agea: threshold1 and threshold2 clamp the gene finder's means; give "
                               "them with correlation_threshold1 and correlation_threshold2")
    return seed_point_search(_expression_store(state, p), p["seed_point"], p["structures"],
                             start_row=start_row, num_rows=num_rows)


# -- connectivity services ---------------------------------------------------------------------------------------
def _connectivity(service: str) -> Callable[[ServerState, dict[str, Any], int, int], Any]:
    """A service answered by :func:`brainmap.search.connectivity.run_service` with Allen's parameter names."""

    def run(state: ServerState, p: dict[str, Any], start_row: int, num_rows: int) -> Any:
        from brainmap.search.connectivity import run_service

        search = search_backends(state).connectivity()
        params = {k: v for k, v in p.items() if v is not None}
        return run_service(search, service, start_row=start_row, num_rows=num_rows, **params)

    return run


_FILTERS = (
    Param("transgenic_lines", "lines", doc="transgenic line ids or names; 0 = wild type only"),
    Param("injection_structures", "structures", doc="injection structure ids or acronyms"),
    Param("primary_structure_only", "bool", default=False, doc="match the primary injection structure only"),
    Param("product_ids", "ints", doc="Product ids"),
)

SERVICES: dict[str, Service] = {}


def _register(service: Service) -> None:
    SERVICES[service.name] = service


_register(Service("mouse_differential", (
    Param("set", "str", default="mouse", values=_SETS, doc="'mouse' or 'mouse_coronal'"),
    Param("structures1", "structures", required=True, doc="target structures (ids or acronyms)"),
    Param("structures2", "structures", required=True, doc="contrast structures (ids or acronyms)"),
    Param("threshold1", "pair", doc="lo,hi clamp of the target mean"),
    Param("threshold2", "pair", doc="lo,hi clamp of the contrast mean"),
), _differential, "Data sets by fold change of mean expression energy, target over contrast."))

_register(Service("mouse_correlation", (
    Param("set", "str", default="mouse", values=_SETS, doc="'mouse' or 'mouse_coronal'"),
    Param("row", "int", required=True, doc="the seed SectionDataSet id"),
    Param("structures", "structures", doc="the domain (default the whole brain)"),
    Param("sort_order", "str", default="desc", values=("asc", "desc")),
), _correlation, "Data sets by Pearson's r with a seed data set over a domain."))

_register(Service("mouse_agea", (
    Param("set", "str", default="mouse", values=_SETS, doc="'mouse' or 'mouse_coronal'"),
    Param("seed_point", "point", required=True, doc="AP,DV,LR in um"),
    Param("structures", "structures", doc="the domain (default the whole brain)"),
    Param("seed_age", "str", doc="the seed's age: P56 (the only age of this server's data)"),
    Param("map_age", "str", doc="the map's age: P56"),
    Param("correlation_threshold1", "float", doc="gene finder: the contrast voxels, correlation >= this"),
    Param("correlation_threshold2", "float", doc="gene finder: the target voxels, correlation >= this"),
    Param("threshold1", "pair", doc="gene finder: lo,hi clamp of the target mean"),
    Param("threshold2", "pair", doc="gene finder: lo,hi clamp of the contrast mean"),
), _agea, "Voxels by correlation with a seed voxel across data sets (AGEA); with correlation_threshold1/2, the "
          "gene finder: data sets by fold change between the seed's correlated voxels."))

_register(Service("mouse_connectivity_injection_structure", (
    Param("injection_structures", "structures", required=True,
          doc="injection structure ids or acronyms (also as injection_domain, the name of Allen's examples)"),
    Param("target_domain", "structures", doc="target structures (a target search)"),
    Param("injection_hemisphere", "str", values=("left", "right")),
    Param("target_hemisphere", "str", values=("left", "right")),
    Param("transgenic_lines", "lines", doc="transgenic line ids or names; 0 = wild type only"),
    Param("primary_structure_only", "bool", default=False),
    Param("product_ids", "ints", doc="Product ids"),
), _connectivity("mouse_connectivity_injection_structure"),
    "Source search (target search with target_domain): experiments by injection structure.",
    aliases={"injection_domain": "injection_structures"}, allen_keys=True))

_register(Service("mouse_connectivity_target", (
    Param("target_domain", "structures", required=True, doc="target structures"),
    Param("injection_structures", "structures", doc="injection structure ids or acronyms"),
    Param("injection_hemisphere", "str", values=("left", "right")),
    Param("target_hemisphere", "str", values=("left", "right")),
    Param("transgenic_lines", "lines"),
    Param("primary_structure_only", "bool", default=False),
    Param("product_ids", "ints"),
), _connectivity("mouse_connectivity_injection_structure"),
    "Target search: experiments by projection volume in target structures.", allen_keys=True))

_register(Service("mouse_connectivity_target_spatial", (
    Param("seed_point", "point", required=True, doc="AP,DV,LR in um"),
    Param("section_data_set", "ints", doc="SectionDataSet id(s) to restrict to"),
    *_FILTERS,
), _connectivity("mouse_connectivity_target_spatial"),
    "Spatial search: experiments with projection density at a point, each with its path to the injection.",
    aliases={"section_data_sets": "section_data_set"}, allen_keys=True))

_register(Service("mouse_connectivity_injection_coordinate", (
    Param("seed_point", "point", required=True, doc="AP,DV,LR in um"),
    Param("injection_distance_threshold", "float", doc="largest distance of the injection site (um)"),
    *_FILTERS,
), _connectivity("mouse_connectivity_injection_coordinate"),
    "Experiments by the distance of their injection site to a point.", allen_keys=True))

_register(Service("mouse_connectivity_correlation", (
    Param("row", "int", required=True, doc="the seed SectionDataSet id"),
    Param("structures", "structures", doc="the domain (default the whole brain)"),
    Param("hemisphere", "str", values=("left", "right")),
    *_FILTERS,
    Param("sort_order", "str", default="desc", values=("asc", "desc")),
), _connectivity("mouse_connectivity_correlation"),
    "Experiments by Pearson's r of projection density with a seed experiment.", allen_keys=True))


# -- answering ----------------------------------------------------------------------------------------------------
def _rows_of(page: Any, allen_keys: bool) -> tuple[list[dict[str, Any]], int, int]:
    envelope = page.to_dict()
    rows = list(envelope["msg"])
    if allen_keys:
        from brainmap.search.connectivity import ALLEN_FIELD_NAMES

        rows = [{ALLEN_FIELD_NAMES.get(k, k): v for k, v in row.items()} for row in rows]
    return rows, int(envelope.get("start_row", 0)), int(envelope.get("total_rows", 0))


def service_result(state: ServerState, call: ServiceCall, text: str) -> RmaResult:
    """Check the call's parameters and run its service: one page of rows (``brainmap search`` uses it too)."""
    service = SERVICES.get(call.name)
    if service is None:
        raise RmaUnknownNameError("service", call.name, SERVICES, call.position, text)
    params, start_row, num_rows = service.parse(call, text, state.settings.max_rows)
    page = service.run(state, params, start_row, num_rows)
    rows, first, total = _rows_of(page, service.allen_keys)
    return RmaResult(model=f"service::{service.name}", rows=rows, start_row=first, total_rows=total,
                     table_name=service.name.replace("_", "-") + "s")


def answer_service(state: ServerState, call: ServiceCall, fmt: str, text: str) -> Response:
    """Check the call's parameters, run its service, render the page like a model query."""
    body, media_type = render(service_result(state, call, text), fmt)
    return Response(body, media_type=media_type)


@router.get("/api/v2/services.json", summary="The services and their parameters")
def list_services() -> dict[str, Any]:
    """Every ``service::`` this server answers, with Allen's parameter names, kinds and defaults."""
    def describe(service: Service) -> dict[str, Any]:
        params = [{"name": p.name, "kind": p.kind, "required": p.required, "default": p.default,
                   "values": list(p.values), "doc": p.doc} for p in service.params]
        params += [{"name": "start_row", "kind": "int", "required": False, "default": 0, "values": [], "doc": ""},
                   {"name": "num_rows", "kind": "int", "required": False, "default": DEFAULT_SERVICE_ROWS,
                    "values": [], "doc": ""}]
        return {"name": service.name, "doc": service.doc, "parameters": params}

    services = [describe(s) for s in SERVICES.values()]
    return {"success": True, "id": 0, "start_row": 0, "num_rows": len(services), "total_rows": len(services),
            "msg": services}
