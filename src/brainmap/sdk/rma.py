"""``Api`` and ``RmaApi``: Allen's RMA query language over HTTP, with AllenSDK's method names.

    from brainmap.sdk import RmaApi

    rma = RmaApi()                                            # the local brainmap server; or base_uri=...
    rma.model_query("Structure", criteria="[acronym$eq'VISp']")
    rma.model_query("ProjectionStructureUnionize", criteria="[section_data_set_id$eq100]", num_rows="all")
    rma.service_query("mouse_connectivity_injection_structure", parameters=[("injection_structures", "VISp")])

``num_rows="all"`` pages through every row (pages of :attr:`RmaApi.page_size`, ordered by ``id`` unless an
``order`` is given, so that no row is skipped or repeated); otherwise one page as the server returns it.
Queries go to ``{base_uri}/api/v2/data/query.json?q=...`` on a brainmap server and on Allen's API alike.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from brainmap.sdk.download import Downloader, DownloadResult
from brainmap.sdk.errors import ApiError, SdkError
from brainmap.sdk.http import HttpClient

__all__ = ["Api", "RmaApi"]


def _joined(value: Any) -> str:
    if isinstance(value, (list, tuple, set)):
        return ",".join(str(v) for v in value)
    return str(value)


class Api:
    """An HTTP client for one server: ``base_uri`` (default ``$BRAINMAP_API_URL``, else the local brainmap
    server at http://127.0.0.1:8000; ``http://api.brain-map.org`` for Allen's). ``progress`` shows download
    bars (None: on a terminal); ``retries``/``backoff_s`` govern retries; ``rate_limit`` caps download speed
    (bytes/s)."""

    def __init__(self, base_uri: str | None = None, *, http: HttpClient | None = None,
                 progress: bool | None = None, timeout: float = 60.0, retries: int = 4, backoff_s: float = 0.5,
                 rate_limit: float | None = None) -> None:
        self.http = http or HttpClient(base_uri, timeout=timeout, retries=retries, backoff_s=backoff_s)
        self.downloader = Downloader(self.http, progress=progress, rate_limit=rate_limit)

    @property
    def api_url(self) -> str:
        return self.http.base_uri

    def retrieve_parsed_json_over_http(self, url: str, params: dict[str, Any] | None = None) -> Any:
        """The parsed JSON at ``url`` (absolute, or a path on the server)."""
        return self.http.get_json(url, params)

    def retrieve_file_over_http(self, url: str, file_path: str, params: dict[str, Any] | None = None
                                ) -> DownloadResult:
        """Download ``url`` to ``file_path`` (verified, atomic, resumable; see :mod:`brainmap.sdk.download`)."""
        return self.downloader.fetch(url, file_path, params)

    def close(self) -> None:
        self.http.close()


class RmaApi(Api):
    """RMA model queries and service calls."""

    #: Rows per page when paging through all rows (Allen's and brainmap's default cap is 2000).
    page_size = 2000

    # -- building queries ---------------------------------------------------------------------------------------
    @staticmethod
    def options_clause(num_rows: Any = None, start_row: int | None = None, order: Any = None, only: Any = None,
                       except_: Any = None, tabular: Any = None, count: bool | None = None) -> str:
        """``rma::options[num_rows$eq50][order$eq'id']...`` (empty when there are no options)."""
        items = []
        if num_rows is not None:
            items.append(f"[num_rows$eq{num_rows}]")
        if start_row is not None:
            items.append(f"[start_row$eq{int(start_row)}]")
        if order is not None:
            items.append(f"[order$eq'{_joined(order)}']")
        if only is not None:
            items.append(f"[only$eq'{_joined(only)}']")
        if except_ is not None:
            items.append(f"[except$eq'{_joined(except_)}']")
        if tabular is not None:
            items.append(f"[tabular$eq'{_joined(tabular)}']")
        if count is not None:
            items.append(f"[count$eq{'true' if count else 'false'}]")
        return "rma::options" + "".join(items) if items else ""

    def model_stage(self, model: str, *, criteria: Any = None, include: Any = None, **options: Any) -> str:
        """``model::Model,rma::criteria,...,rma::include,...,rma::options[...]``."""
        if not model or not str(model).replace("_", "").isalnum():
            raise SdkError(f"model must be a model name such as 'Structure', got {model!r}")
        parts = [f"model::{model}"]
        if criteria:
            parts.append("rma::criteria," + _joined(criteria))
        if include:
            parts.append("rma::include," + _joined(include))
        clause = self.options_clause(**options)
        if clause:
            parts.append(clause)
        return ",".join(parts)

    @staticmethod
    def service_stage(service_name: str, parameters: Iterable[tuple[str, Any]] | None = None) -> str:
        """``service::name[p1$eqv1][p2$eqv2]`` (lists become comma-separated values; None is left out)."""
        text = f"service::{service_name}"
        for name, value in parameters or ():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            text += f"[{name}$eq{_joined(value)}]"
        return text

    def build_query_url(self, stages: str | Sequence[str], fmt: str = "json") -> str:
        """The URL of a query (stages joined with ``,``), without percent-encoding (see :meth:`query`)."""
        query = stages if isinstance(stages, str) else ",".join(stages)
        return f"{self.http.base_uri}/api/v2/data/query.{fmt}?q={query}"

    # -- running queries ----------------------------------------------------------------------------------------
    def query(self, query: str) -> dict[str, Any]:
        """The whole envelope ``{success, id, start_row, num_rows, total_rows, msg}`` of one RMA query."""
        body = self.http.get_json("/api/v2/data/query.json", {"q": query})
        if not isinstance(body, dict) or "msg" not in body:
            raise ApiError(f"expected Allen's envelope with 'msg', got {str(body)[:200]}",
                           url=self.build_query_url(query))
        return body

    def json_msg_query(self, url: str) -> Any:
        """The ``msg`` of the JSON envelope at ``url``."""
        body = self.http.get_json(url)
        if not isinstance(body, dict) or "msg" not in body:
            raise ApiError(f"expected Allen's envelope with 'msg', got {str(body)[:200]}", url=url)
        return body["msg"]

    def model_query(self, model: str, criteria: Any = None, include: Any = None, order: Any = None,
                    num_rows: int | str | None = None, start_row: int | None = None, only: Any = None,
                    except_: Any = None, tabular: Any = None, count: bool | None = None,
                    page_size: int | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """Rows of ``model`` (a list of dicts). ``num_rows="all"`` pages through every row, ``page_size`` rows
        per request (default :attr:`page_size`; smaller when included rows count against the server's cap)."""
        if "excpt" in kwargs:
            except_ = kwargs.pop("excpt")
        if kwargs:
            raise SdkError(f"model_query: unknown arguments {', '.join(sorted(kwargs))}; use criteria, include, "
                           "order, num_rows, start_row, only, except_, tabular, count")
        if num_rows == "all":
            return list(self.iter_model_rows(model, criteria=criteria, include=include, order=order, only=only,
                                             except_=except_, tabular=tabular, start_row=start_row or 0,
                                             page_size=page_size))
        stage = self.model_stage(model, criteria=criteria, include=include, order=order, num_rows=num_rows,
                                 start_row=start_row, only=only, except_=except_, tabular=tabular, count=count)
        return self.query(stage)["msg"]

    def iter_model_rows(self, model: str, *, criteria: Any = None, include: Any = None, order: Any = None,
                        start_row: int = 0, page_size: int | None = None, **options: Any
                        ) -> Iterator[dict[str, Any]]:
        """Every row of ``model`` from ``start_row``, page by page."""
        order = order if order is not None else "id"
        page_size = page_size or self.page_size
        while True:
            stage = self.model_stage(model, criteria=criteria, include=include, order=order,
                                     num_rows=page_size, start_row=start_row, **options)
            body = self.query(stage)
            rows = body["msg"]
            yield from rows
            start_row += len(rows)
            total = body.get("total_rows")
            if not rows or (isinstance(total, int) and start_row >= total):
                return

    def get_schema(self, clazz: str | None = None) -> Any:
        """The RMA schema: every model's attributes and associations, or one model's (``clazz``)."""
        if clazz is not None and not str(clazz).replace("_", "").isalnum():
            raise SdkError(f"clazz must be a model name such as 'Structure', got {clazz!r}")
        return self.json_msg_query(f"/api/v2/data{'/' + clazz if clazz else ''}.json")

    def load_api_schema(self) -> Any:
        """The whole RMA schema document (``/api/v2/data/enumerate.json``)."""
        return self.http.get_json("/api/v2/data/enumerate.json")

    def service_query(self, service_name: str, parameters: Iterable[tuple[str, Any]] | None = None,
                      num_rows: int | str | None = None, start_row: int | None = None, **kwargs: Any) -> Any:
        """The ``msg`` of a ``service::`` call. Parameters as a list of ``(name, value)`` and/or keywords.
        ``num_rows="all"`` pages through every row (services page with ``start_row``/``num_rows``)."""
        params = list(parameters or ()) + list(kwargs.items())
        if num_rows != "all":
            paging = [("start_row", start_row), ("num_rows", num_rows)]
            return self.query(self.service_stage(service_name, params + paging))["msg"]
        rows: list[Any] = []
        start = start_row or 0
        while True:
            body = self.query(self.service_stage(service_name, params + [("start_row", start),
                                                                         ("num_rows", self.page_size)]))
            page = body["msg"]
            if not isinstance(page, list):
                return page
            rows.extend(page)
            start += len(page)
            total = body.get("total_rows")
            if not page or not isinstance(total, int) or start >= total:
                return rows
