"""The command-line options that every command reading or writing a data directory shares (``load``, ``serve``,
``search``): one name for one thing. Importing this module imports nothing heavy (no SQLAlchemy), so the
``brainmap`` command can build its parser quickly."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_data_arguments", "add_load_arguments"]


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--database-url``: the same two options, with the same names, on every command that
    reads or writes a data directory (``load``, ``serve``, ``search``)."""
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data directory (default $BRAINMAP_DATA_DIR, else ./brainmap-data)")
    parser.add_argument("--data", dest="data_dir", type=Path, help=argparse.SUPPRESS)  # the old name
    parser.add_argument("--database-url", default=None,
                        help="database URL (default $BRAINMAP_DATABASE_URL, else SQLite in the data directory)")
    parser.add_argument("--database", dest="database_url", help=argparse.SUPPRESS)  # the old name


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``brainmap load``."""
    parser.add_argument("dirs", nargs="*", type=Path,
                        help="data set folders, folders holding them, unionize tables or volumes")
    add_data_arguments(parser)
