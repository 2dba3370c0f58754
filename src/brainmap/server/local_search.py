"""``brainmap search SERVICE``: the server's search services, run in this process on a data directory.

Each command is one of Allen's services (:data:`COMMANDS`); its options are the service's parameters
(:data:`brainmap.server.routes_services.SERVICES`), written as Allen writes their values (``--structures1
TH,MOp``, ``--seed-point 6900,5050,6450``), checked and answered by exactly the code that answers
``/api/v2/data/query.json?criteria=service::...`` on a server, so the command line and the API cannot disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

__all__ = ["COMMANDS", "add_search_commands", "criteria_text", "format_rows", "run_search", "run_search_command"]

#: ``brainmap search NAME`` -> Allen's service name.
COMMANDS = {
    "differential": "mouse_differential",
    "correlation": "mouse_correlation",
    "agea": "mouse_agea",
    "source": "mouse_connectivity_injection_structure",
    "target": "mouse_connectivity_target",
    "spatial": "mouse_connectivity_target_spatial",
    "injection-coordinate": "mouse_connectivity_injection_coordinate",
    "connectivity-correlation": "mouse_connectivity_correlation",
}
_PLAIN = re.compile(r"[A-Za-z0-9_.+\-]+")


def add_search_commands(commands: Any) -> None:
    """One sub-command per service on ``commands`` (an argparse sub-parsers object)."""
    from brainmap.server.routes_services import SERVICES
    from brainmap.store.database import add_data_arguments

    for command, name in COMMANDS.items():
        service = SERVICES[name]
        parser = commands.add_parser(command, help=f"{service.doc} (service::{name})",
                                     description=f"{service.doc} Allen's service::{name}, run on a data directory.")
        for param in service.params:
            words = [param.doc or param.kind]
            if param.values:
                words.append("one of " + ", ".join(param.values))
            if param.default not in (None, False):
                words.append(f"default {param.default}")
            parser.add_argument("--" + param.name.replace("_", "-"), dest=param.name, required=param.required,
                                metavar=param.kind.upper(), help="; ".join(words))
        add_data_arguments(parser)
        parser.add_argument("--start-row", type=int, default=0, help="first row of the page (default 0)")
        parser.add_argument("--num-rows", type=int, default=50, help="rows in the page (default 50)")
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table",
                            help="table (default; nested fields such as paths left out), csv, or json (Allen's "
                                 "envelope, every field)")
        parser.set_defaults(service=name, service_params=[p.name for p in service.params])


def criteria_text(service: str, values: dict[str, Any], start_row: int = 0, num_rows: int = 50) -> str:
    """The RMA text of a service call: ``service::NAME[param$eqVALUE]...`` (values quoted where needed).

    Examples
    --------
    >>> criteria_text("mouse_differential", {"structures1": "TH", "structures2": "Isocortex"})
    "service::mouse_differential[structures1$eqTH][structures2$eqIsocortex][start_row$eq0][num_rows$eq50]"
    """
    parts = [f"service::{service}"]
    for name, value in values.items():
        if value is None:
            continue
        atoms = [a.strip() for a in str(value).split(",")]
        text = ",".join(a if _PLAIN.fullmatch(a) else "'" + a.replace("'", "''") + "'" for a in atoms)
        parts.append(f"[{name}$eq{text}]")
    parts.append(f"[start_row$eq{int(start_row)}][num_rows$eq{int(num_rows)}]")
    return "".join(parts)


def run_search(service: str, values: dict[str, Any], *, data_dir: str | os.PathLike[str] | None = None,
               database_url: str | None = None, start_row: int = 0, num_rows: int = 50) -> Any:
    """One page of ``service`` on the data directory: an :class:`~brainmap.store.rma.RmaResult`."""
    from brainmap.server.routes_services import service_result
    from brainmap.server.state import ServerState, settings_for
    from brainmap.errors import BrainmapError
    from brainmap.store.database import DATABASE_FILE, data_directory
    from brainmap.store.rma.parser import parse_rma

    root = data_directory(data_dir)
    if not (root.is_dir() and (database_url or (root / DATABASE_FILE).is_file())):
        raise BrainmapError(f"no brainmap data directory at {root}; make one with brainmap load "
                            f"DATA_SET_FOLDERS --data-dir {data_dir or root}")
    text = criteria_text(service, values, start_row, num_rows)
    state = ServerState(settings_for(root, database_url, warm_up=False), create_schema=False)
    try:
        return service_result(state, parse_rma(text).stages[0], text)
    finally:
        state.close()


def _cell(value: Any) -> Any:
    if isinstance(value, list) and all(not isinstance(v, (list, dict)) for v in value):
        return ",".join(str(v) for v in value)
    return value


def format_rows(result: Any, fmt: str) -> str:
    """The page as a text table, CSV or JSON (Allen's envelope)."""
    if fmt == "json":
        return json.dumps({"success": True, "id": 0, "start_row": result.start_row, "num_rows": result.num_rows,
                           "total_rows": result.total_rows, "msg": result.rows}, indent=1, default=str)
    import pandas as pd

    frame = pd.DataFrame([{k: _cell(v) for k, v in row.items()} for row in result.rows])
    nested = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, (list, dict))).any()]
    frame = frame.drop(columns=nested)
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n")
    shown = f"rows {result.start_row + 1}-{result.start_row + result.num_rows} of {result.total_rows}" \
        if result.num_rows else f"no rows (of {result.total_rows})"
    note = f"; left out: {', '.join(nested)} (use --format json)" if nested else ""
    body = frame.to_string(index=False, max_colwidth=40) if len(frame) else ""
    return f"{result.model}: {shown}{note}\n{body}".rstrip("\n")


def run_search_command(args: argparse.Namespace) -> int:
    """What ``brainmap search NAME ...`` does with its parsed arguments; prints the page, returns 0."""
    values = {name: getattr(args, name) for name in args.service_params}
    result = run_search(args.service, values, data_dir=args.data_dir, database_url=args.database_url,
                        start_row=args.start_row, num_rows=args.num_rows)
    print(format_rows(result, args.format))
    return 0
