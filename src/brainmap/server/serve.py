"""``brainmap serve``: run the API with uvicorn.

    brainmap serve --data-dir DIR [--database-url URL] [--host 127.0.0.1] [--port 8000] [--workers 2] [--log-file F]
                   [--token TOKEN]

:func:`run_server` checks the data directory and the database first (creating the schema of an empty database,
refusing one of another schema version), then starts uvicorn with ``workers`` processes (2 by default: one per
core of a small machine; each process has its own engine and caches) on uvloop and httptools. Settings reach
the worker processes through ``$BRAINMAP_SERVER_SETTINGS``. Each request is logged as one JSON line (stderr, or
``--log-file``); uvicorn's own access log is off.

Access: the server listens on loopback by default; another ``--host`` prints a warning (the API then answers
anyone who can reach the port). ``--token`` (or ``$BRAINMAP_TOKEN``) makes every route but ``/health`` require
``Authorization: Bearer TOKEN``. Slow or oversized requests are cut off by :mod:`brainmap.server.limits` (uvicorn
runs its HTTP protocol class with a header deadline; the middleware bounds URL, parameters and bodies).

For the lead's ``cli.py``: ``add_serve_arguments(parser)`` adds the options to a subparser and
``run_serve_command(args)`` runs it (returns the exit status).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from brainmap.errors import BrainmapError

__all__ = ["ENV_LOG_FILE", "ENV_TOKEN", "add_serve_arguments", "is_loopback", "main", "run_serve_command",
           "run_server"]

#: Where worker processes send the request log ("-" for stderr).
ENV_LOG_FILE = "BRAINMAP_SERVER_LOG"
#: The read-only token every route but /health requires, if set (``--token`` overrides it).
ENV_TOKEN = "BRAINMAP_TOKEN"
DEFAULT_WORKERS = 2


def run_server(data_dir: str | os.PathLike[str], database_url: str | None = None, host: str = "127.0.0.1",
               port: int = 8000, *, workers: int = DEFAULT_WORKERS, log_file: str | os.PathLike[str] | None = None,
               log_level: str = "warning", **settings: Any) -> None:
    """Serve ``data_dir`` (and ``database_url``) on ``host:port`` until interrupted.

    ``settings`` are :class:`~brainmap.server.state.ServerSettings` fields (``max_rows``, ``query_timeout_s``,
    ``sync_resolution_um``, ...). ``log_level`` is uvicorn's own (start-up, errors); requests are logged as JSON
    lines to ``log_file`` or stderr.
    """
    import uvicorn

    from brainmap.server.limits import http_protocol
    from brainmap.server.state import ENV_SETTINGS, ServerState, settings_for

    chosen = settings_for(data_dir, database_url, **settings)
    ServerState(chosen).close()  # fail here, with a clear message, rather than in every worker
    print(f"brainmap: serving {chosen.data_dir} on http://{host}:{port} (viewer at /viewer, API docs at /docs)",
          file=sys.stderr, flush=True)
    os.environ[ENV_SETTINGS] = json.dumps(chosen.to_env())
    os.environ[ENV_LOG_FILE] = os.fspath(log_file) if log_file is not None else "-"
    uvicorn.run("brainmap.server.serve:worker_app", factory=True, host=host, port=int(port),
                workers=max(1, int(workers)), access_log=False, log_level=log_level, server_header=False,
                timeout_keep_alive=30, loop="auto", http=http_protocol(), h11_max_incomplete_event_size=64 * 1024)


def worker_app() -> Any:
    """The app of one uvicorn worker: logging as :func:`run_server` asked, then the app of the settings."""
    from brainmap.server.app import app_from_environment
    from brainmap.server.logging import configure_logging

    target = os.environ.get(ENV_LOG_FILE, "-")
    configure_logging(path=None if target == "-" else target)
    return app_from_environment()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brainmap serve``."""
    from brainmap.store.options import add_data_arguments

    add_data_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"worker processes (default {DEFAULT_WORKERS})")
    parser.add_argument("--log-file", type=Path, default=None, help="request log file (default stderr)")
    parser.add_argument("--max-rows", type=int, default=None, help="most rows one query may return")
    parser.add_argument("--query-timeout", type=float, default=None, help="seconds one query may run")
    parser.add_argument("--token", default=None,
                        help=f"require 'Authorization: Bearer TOKEN' on every route but /health (default "
                             f"${ENV_TOKEN}; none: open read-only access)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) only listens on this machine."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_serve_command(args: argparse.Namespace) -> int:
    """What ``brainmap serve`` does with its parsed arguments; the exit status."""
    from brainmap.store.database import data_directory

    overrides: dict[str, Any] = {}
    if getattr(args, "max_rows", None) is not None:
        overrides["max_rows"] = args.max_rows
    if getattr(args, "query_timeout", None) is not None:
        overrides["query_timeout_s"] = args.query_timeout
    token = getattr(args, "token", None) or os.environ.get(ENV_TOKEN) or None
    if token is not None:
        overrides["token"] = token
    if not is_loopback(args.host):
        print(f"brainmap: WARNING: listening on {args.host}, not loopback: anyone who can reach port {args.port} "
              f"can read this data{'' if token else ' (no --token / $' + ENV_TOKEN + ' is set)'}", file=sys.stderr,
              flush=True)
    data_dir = data_directory(args.data_dir)
    if not data_dir.is_dir():
        raise BrainmapError(f"data directory {data_dir} does not exist; make one with brainmap load "
                            f"DATA_SET_FOLDERS --data-dir {args.data_dir or data_dir}")
    run_server(data_dir, args.database_url, args.host, args.port, workers=args.workers, log_file=args.log_file,
               **overrides)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m brainmap.server.serve --data-dir DIR``."""
    parser = argparse.ArgumentParser(prog="brainmap serve", description="Serve the brainmap API.")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_serve_command(args)
    except BrainmapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
