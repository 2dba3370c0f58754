"""RMA queries: Allen's ``/api/v2/data`` routes.

``GET /api/v2/data/query.{json,xml,csv}?criteria=QUERY`` (or ``?q=QUERY``)
    A whole RMA query: ``model::Structure,rma::criteria,[acronym$eq'VISp'],rma::options[num_rows$eq10]``, or a
    service call ``service::mouse_connectivity_injection_structure[injection_structures$eqVISp]`` (answered by
    :mod:`brainmap.server.routes_services`).
``GET /api/v2/data/{Model}/query.{json,xml,csv}?criteria=[...]&include=...&num_rows=...``
    The model form: ``criteria`` and ``include`` are lists of paths; ``num_rows``, ``start_row``, ``order``,
    ``only``, ``except``, ``tabular`` and ``count`` are the options.
``GET /api/v2/data/{Model}/{id}.{json,xml,csv}?include=...``
    One row by id (an empty ``msg`` when there is none, as Allen's).

A compiled query is kept per process keyed by its text, so a repeated query skips parsing and compiling; the
query runs on a pooled read-only connection with the row cap and the time limit of the settings, and its
rendered answer is kept while the database is unchanged (:meth:`ServerState.cached_answer
<brainmap.server.state.ServerState.cached_answer>`). Errors are Allen's envelope with the position in the
query and what was expected (HTTP 400).

The hot path: :func:`install_fast_routes` puts plain Starlette endpoints for these three paths ahead of the
FastAPI router. They check the same parameters by hand and call the same :func:`answer_query`, with one
threadpool hop for the database work; the FastAPI declarations below stay for the OpenAPI documentation and
answer whatever the fast endpoints pass on. FastAPI's per-request machinery (dependency solving, validation,
its own threadpool hops for synchronous endpoints) costs 0.2-0.6 ms of CPU, more than a simple query itself.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Route
from starlette.responses import Response

from brainmap.server.errors import ApiError
from brainmap.server.state import ServerState
from brainmap.store.rma import (
    CompiledQuery,
    ModelStage,
    PipeCall,
    RmaQuery,
    RmaSyntaxError,
    ServiceCall,
    compile_stage,
    parse_rma,
    parse_rma_params,
    render,
)
from brainmap.store.rma.parser import OPTION_NAMES

__all__ = ["answer_query", "install_fast_routes", "router", "state_of"]

router = APIRouter(tags=["RMA queries"])

Format = Literal["json", "xml", "csv"]

_QUERY_HELP = ("A whole RMA query, e.g. model::Structure,rma::criteria,[acronym$eq'VISp'] or "
               "service::mouse_connectivity_injection_structure[injection_structures$eqVISp]")
_MODEL_PARAMS = ("criteria", "include", *OPTION_NAMES, "excpt")


def state_of(request: Request) -> ServerState:
    """The process's :class:`ServerState`."""
    return request.app.state.brainmap


class PipedQuery:
    """``model::A,...,pipe::list[var$is'attribute'],model::B,...$var...``: Allen's ``list`` pipe. The first
    stage runs; ``$var`` in the second is replaced by the values of ``attribute`` in its rows (quoted, comma
    separated), and the second stage is the answer (AllenSDK's ``ImageDownloadApi.atlas_image_query``)."""

    def __init__(self, state: ServerState, query: RmaQuery) -> None:
        first, pipe, second = query.stages
        assert isinstance(first, ModelStage) and isinstance(pipe, PipeCall) and isinstance(second, ModelStage)
        self.text = query.text
        self.first = compile_stage(first, query.text, max_rows=state.settings.max_rows)
        self.variables: list[tuple[str, str]] = []
        for item in pipe.params:
            if item.op != "is" or item.value is None or len(item.value.atoms) != 1:
                raise RmaSyntaxError("a pipe::list parameter [name$is'attribute']", item.position, query.text,
                                     found=item.name)
            self.variables.append((item.name, item.value.atoms[0]))
        self.rest = query.text[second.position:]
        self.max_rows = state.settings.max_rows

    def execute(self, connection: Any) -> Any:
        rows = self.first.execute(connection).rows
        text = self.rest
        for name, attribute in sorted(self.variables, key=lambda v: -len(v[0])):
            values = [row.get(attribute) for row in rows if row.get(attribute) is not None]
            if not values and rows and attribute not in rows[0]:
                raise RmaSyntaxError(f"an attribute of the first stage's rows for ${name} (they have "
                                     f"{', '.join(rows[0])})", None, self.text, found=attribute)
            quoted = ",".join("'" + str(v).replace("'", "") + "'" for v in dict.fromkeys(values)) or "''"
            text = text.replace("$" + name, quoted)
        (stage,) = parse_rma(text).stages
        return compile_stage(stage, text, max_rows=self.max_rows).execute(connection)


def _compile(state: ServerState, query: RmaQuery) -> CompiledQuery | RmaQuery | PipedQuery:
    stages = query.stages
    if any(isinstance(s, PipeCall) for s in stages):
        pipe = next(s for s in stages if isinstance(s, PipeCall))
        if (pipe.name == "list" and len(stages) == 3 and isinstance(stages[0], ModelStage)
                and stages[1] is pipe and isinstance(stages[2], ModelStage)):
            return PipedQuery(state, query)
        raise RmaSyntaxError("a model:: or service:: stage (of pipes this server runs pipe::list between two "
                             "model:: stages; for others run the model query and pass its ids on)",
                             pipe.position, query.text, found=f"pipe::{pipe.name}")
    if any(isinstance(s, ServiceCall) for s in stages):
        if len(stages) != 1:
            raise RmaSyntaxError("a single service:: stage", stages[1].position, query.text,
                                 found=f"{len(stages)} stages")
        return query
    if len(stages) != 1:
        raise RmaSyntaxError("a single model:: stage", stages[1].position, query.text, found=f"{len(stages)} stages")
    stage = stages[0]
    assert isinstance(stage, ModelStage)
    return compile_stage(stage, query.text, max_rows=state.settings.max_rows)


def answer_query(state: ServerState, key: Any, parse: Any, fmt: str, check_cache: bool = True) -> Response:
    """Answer a query: from the answer cache while the database is unchanged, else parse (once per ``key``),
    compile and run it on a read-only connection; a service call goes to its service."""
    answer_key = (key, fmt)
    if check_cache:
        hit = state.cached_answer(answer_key)
        if hit is not None:
            return Response(hit.body, media_type=hit.media_type)
    compiled = state.cached_query(key, lambda: _compile(state, parse()))
    if isinstance(compiled, RmaQuery):
        from brainmap.server.routes_services import answer_service

        call = compiled.stages[0]
        assert isinstance(call, ServiceCall)
        return answer_service(state, call, fmt, compiled.text)
    result, version = state.run_versioned(compiled.execute)
    body, media_type = render(result, fmt)
    encoded = body.encode("utf-8")
    state.keep_answer(answer_key, version, encoded, media_type)
    return Response(encoded, media_type=media_type)


@router.get("/api/v2/data/query.{fmt}", summary="An RMA query (model stage or service call)")
def query(request: Request, fmt: Format,
          criteria: str | None = Query(None, description=_QUERY_HELP, max_length=20_000),
          q: str | None = Query(None, description="The same as criteria", max_length=20_000)) -> Response:
    """Run one RMA query: a ``model::`` stage with ``rma::criteria``, ``rma::include`` and ``rma::options``, or
    one ``service::`` call. Examples::

        /api/v2/data/query.json?criteria=model::Structure,rma::criteria,[acronym$eq'VISp']
        /api/v2/data/query.json?criteria=model::SectionDataSet,rma::criteria,products[id$eq5],
            rma::include,specimen(injections),rma::options[num_rows$eq10]
        /api/v2/data/query.json?criteria=service::mouse_connectivity_injection_coordinate
            [seed_point$eq6900,5050,6450][primary_structure_only$eqtrue]
    """
    text = q if q is not None else criteria
    if text is None or not text.strip():
        raise ApiError("give the query as criteria= (or q=), e.g. "
                       "criteria=model::Structure,rma::criteria,[acronym$eq'VISp']")
    return answer_query(state_of(request), ("q", text), lambda: parse_rma(text), fmt)


def _model_params(request: Request) -> dict[str, str]:
    """The model form's parameters; each may be given once (one pass over the parameters: ``getlist`` per name
    was quadratic in their count)."""
    params = request.query_params
    counts = Counter(name for name, _ in params.multi_items())
    for name, times in counts.items():
        if times > 1:
            raise ApiError(f"parameter {name} is given {times} times; give it once")
    return {name: params[name] for name in _MODEL_PARAMS if name in params}


@router.get("/api/v2/data/{model}/query.{fmt}", summary="An RMA query on one model")
def model_query(request: Request, model: str, fmt: Format,
                criteria: str | None = Query(None, description="Filters, e.g. [acronym$eq'VISp'],parent",
                                             max_length=20_000),
                include: str | None = Query(None, description="Associations to nest, e.g. genes,specimen(donor)",
                                            max_length=20_000),
                num_rows: str | None = Query(None, description="Rows per page, or 'all' (up to the row cap)"),
                start_row: str | None = Query(None, description="First row (0-based)"),
                order: str | None = Query(None, description="e.g. acronym$desc or structures.graph_order"),
                only: str | None = Query(None, description="Attributes to return"),
                except_: str | None = Query(None, alias="except", description="Attributes to leave out"),
                tabular: str | None = Query(None, description="Flat columns, 'name as title'"),
                count: str | None = Query(None, description="false: do not count total_rows")) -> Response:
    """The model form of an RMA query: ``/api/v2/data/Structure/query.json?criteria=[acronym$eq'VISp']``."""
    params = _model_params(request)
    if "excpt" in params:
        params.setdefault("except", params.pop("excpt"))
    key = ("m", model, tuple(sorted(params.items())))
    return answer_query(state_of(request), key, lambda: parse_rma_params(params, model=model), fmt)


@router.get("/api/v2/data/{model}/{row_id}.{fmt}", summary="One row of a model by id")
def model_row(request: Request, model: str, row_id: int, fmt: Format,
              include: str | None = Query(None, description="Associations to nest, e.g. genes,specimen(donor)",
                                          max_length=20_000)) -> Response:
    """``/api/v2/data/Structure/385.json``: the row with that id (``msg`` is empty when there is none)."""
    params = {"criteria": f"[id$eq{row_id}]"}
    if include:
        params["include"] = include
    key = ("m", model, tuple(sorted(params.items())))
    return answer_query(state_of(request), key, lambda: parse_rma_params(params, model=model), fmt)


# -- the hot path ---------------------------------------------------------------------------------------------
_FORMATS = ("json", "xml", "csv")
_MAX_PARAM = 20_000


class _PassOn(Exception):
    """The fast endpoint leaves this request to the FastAPI route (which reports the problem)."""


def _fast_format(request: Request) -> str:
    fmt = request.path_params.get("fmt", "")
    if fmt not in _FORMATS:
        raise _PassOn
    for value in request.query_params.values():
        if len(value) > _MAX_PARAM:
            raise _PassOn
    return fmt


async def _fast_query(request: Request) -> Response:
    fmt = _fast_format(request)
    params = request.query_params
    text = params.get("q") if "q" in params else params.get("criteria")
    if text is None or not text.strip():
        raise _PassOn
    return await _answer(request, ("q", text), lambda: parse_rma(text), fmt)


async def _fast_model_query(request: Request) -> Response:
    fmt = _fast_format(request)
    model = request.path_params["model"]
    params = _model_params(request)
    if "excpt" in params:
        params.setdefault("except", params.pop("excpt"))
    key = ("m", model, tuple(sorted(params.items())))
    return await _answer(request, key, lambda: parse_rma_params(params, model=model), fmt)


async def _fast_model_row(request: Request) -> Response:
    fmt = _fast_format(request)
    model, row_id = request.path_params["model"], request.path_params["row_id"]
    if not row_id.isdigit() or len(row_id) > 19 or set(request.query_params) - {"include"}:
        raise _PassOn
    params = {"criteria": f"[id$eq{row_id}]"}
    if request.query_params.get("include"):
        params["include"] = request.query_params["include"]
    key = ("m", model, tuple(sorted(params.items())))
    return await _answer(request, key, lambda: parse_rma_params(params, model=model), fmt)


async def _answer(request: Request, key: Any, parse: Any, fmt: str) -> Response:
    """A cached answer straight from the event loop when checking it costs no round trip (SQLite), else
    :func:`answer_query` in the threadpool."""
    state = state_of(request)
    if state.data_version.local:
        hit = state.cached_answer((key, fmt))
        if hit is not None:
            return Response(hit.body, media_type=hit.media_type)
        return await run_in_threadpool(answer_query, state, key, parse, fmt, False)
    return await run_in_threadpool(answer_query, state, key, parse, fmt)


class _FastRoute(Route):
    """A lean route: its endpoint answers, or raises :class:`_PassOn` to hand the request to the routes after it."""

    def __init__(self, path: str, endpoint: Any, router: Any) -> None:
        super().__init__(path, endpoint, methods=["GET"], include_in_schema=False)
        self.fast = endpoint
        self.router = router

    def matches(self, scope: Any) -> Any:
        if scope.get("brainmap.pass_on") or scope.get("method") not in ("GET", "HEAD"):
            return Match.NONE, {}  # the FastAPI route answers (a 405 for other methods)
        return super().matches(scope)

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            response = await self.fast(Request(scope, receive))
        except _PassOn:
            scope["brainmap.pass_on"] = True
            await self.router(scope, receive, send)
            return
        await response(scope, receive, send)


def install_fast_routes(app: FastAPI) -> None:
    """Put the lean endpoints of the three ``/api/v2/data`` routes ahead of the FastAPI routes (see the module
    docstring); a request they pass on goes to the FastAPI route."""
    app.router.routes[:0] = [_FastRoute("/api/v2/data/query.{fmt}", _fast_query, app.router),
                             _FastRoute("/api/v2/data/{model}/query.{fmt}", _fast_model_query, app.router),
                             _FastRoute("/api/v2/data/{model}/{row_id}.{fmt}", _fast_model_row, app.router)]


# -- the schema (AllenSDK's RmaApi.get_schema) ------------------------------------------------------------------
def _schema_body(models: dict[str, Any]) -> Response:
    import json

    body = {"success": True, "id": 0, "start_row": 0, "num_rows": len(models), "total_rows": len(models),
            "msg": list(models.values())}
    return Response(json.dumps(body), media_type="application/json")


@router.get("/api/v2/data.json", summary="The RMA schema: every model's attributes and associations")
def schema() -> Response:
    """What ``model::`` may name: each model's attributes (with types), associations and aliases."""
    from brainmap.store.rma import registry

    return _schema_body(registry().describe())


@router.get("/api/v2/data/{model}.json", summary="One model's RMA schema")
def model_schema(model: str) -> Response:
    """One model's attributes, associations and aliases (an unknown model is a 400 naming the models);
    ``enumerate`` is every model (AllenSDK's ``Api.load_api_schema``)."""
    from brainmap.store.rma import registry

    if model == "enumerate":
        return _schema_body(registry().describe())
    info = registry().model(model)
    return _schema_body({model: info.describe()})
