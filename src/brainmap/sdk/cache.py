"""The cache machinery shared by the SDK's caches: a manifest, verified files, offline mode.

Every cached item -- a downloaded volume, a JSON answer, a table -- is served only when its verification
record matches it (:func:`brainmap.sdk.download.is_verified`; ``verify="full"`` also re-hashes the file).
Online, a missing or unverified item is fetched under the file's lock and written atomically with its record;
offline (``offline=True``), it raises :class:`~brainmap.sdk.errors.OfflineError` naming the missing file and
the URL it would come from. ``cache=False`` keeps nothing: metadata is fetched on every call, and files need a
``file_name``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from brainmap.sdk.download import file_lock, is_verified, read_verified, write_verified
from brainmap.sdk.errors import CacheError, OfflineError
from brainmap.sdk.http import HttpClient
from brainmap.sdk.tables import read_table, table_bytes

__all__ = ["Cache"]

_VERIFY = ("quick", "full")


class Cache:
    """Manifest + verified files for one server (``api``: an :class:`~brainmap.sdk.rma.Api` subclass)."""

    def __init__(self, api: Any, manifest_file: str | os.PathLike[str], entries: Mapping[str, str], *,
                 cache: bool = True, offline: bool = False, verify: str = "quick") -> None:
        if verify not in _VERIFY:
            raise CacheError(f"verify must be 'quick' (size and time against the record) or 'full' (sha256), "
                             f"got {verify!r}")
        if offline and not cache:
            raise CacheError("offline=True needs cache=True: offline mode serves only cached files")
        self.api = api
        self.http: HttpClient = api.http
        self.cache, self.offline, self.verify = cache, offline, verify
        if offline:
            self.http.offline = True  # a guarantee: nothing below may touch the network
        self.manifest = Manifest(manifest_file, entries, self.http.base_uri)
        self._tables: dict[Path, tuple[tuple[int, int], dict[str, np.ndarray], bool]] = {}

    # -- paths --------------------------------------------------------------------------------------------------
    def path(self, key: str, file_name: str | os.PathLike[str] | None = None, **fields: Any) -> Path:
        """Where item ``key`` lives: ``file_name`` if given, else the manifest's path with ``fields``."""
        if file_name is not None:
            return Path(file_name).expanduser().absolute()
        if not self.cache:
            raise CacheError(f"cache=False keeps no files: pass file_name= to say where {key} goes")
        return self.manifest.file(key, **fields)

    def verified(self, path: Path) -> bool:
        return is_verified(path, full=self.verify == "full")

    def _missing(self, what: str, path: Path, url: str) -> OfflineError:
        return OfflineError(what, [(path, url)])

    # -- files --------------------------------------------------------------------------------------------------
    def file(self, what: str, url: str, path: Path) -> Path:
        """A verified copy of ``url`` at ``path``: from the cache, else downloaded (online only)."""
        if self.verified(path):
            return path
        if self.offline:
            raise self._missing(what, path, url)
        self.api.downloader.fetch(url, path, full=self.verify == "full")
        return path

    # -- JSON answers ---------------------------------------------------------------------------------------------
    def json(self, what: str, path: Path | None, url: str, fetch: Callable[[], Any]) -> Any:
        """A JSON answer: from its cached file if the file's sha256 is its record's (checked on every read, in
        either verify mode: answers are small), else ``fetch()`` (saved at ``path`` unless it is None)."""
        if path is not None:
            payload = read_verified(path)
            if payload is not None:
                try:
                    return json.loads(payload.decode("utf-8"))
                except ValueError:  # a record written for a bad answer: fetch it again
                    pass
        if self.offline:
            raise self._missing(what, path if path is not None else Path("(not cached)"), url)
        data = fetch()
        if path is not None:
            with file_lock(path):
                write_verified(path, json.dumps(data).encode("utf-8"), url)
        return data

    # -- tables -----------------------------------------------------------------------------------------------------
    def cached_table(self, path: Path, columns: list[str] | None = None) -> dict[str, np.ndarray] | None:
        """The verified table at ``path`` (its ``columns``, or all), kept in memory while the file is unchanged;
        None when it is not in the cache."""
        try:
            stat = path.stat()
        except OSError:
            return None
        stamp = (stat.st_size, stat.st_mtime_ns)
        kept = self._tables.get(path)
        if kept is not None and kept[0] == stamp and self.verify == "quick" and \
                (columns is None and kept[2] or columns is not None and set(columns) <= kept[1].keys()):
            # verified when it was read, and the file's size and time (what a quick check compares with its
            # record) are unchanged since
            return kept[1] if columns is None else {c: kept[1][c] for c in columns}
        if not self.verified(path):
            return None
        table = read_table(path, columns)
        if kept is not None and kept[0] == stamp:
            table = {**kept[1], **table}
        self._tables[path] = (stamp, table, columns is None or bool(kept and kept[2]))
        return table if columns is None else {c: table[c] for c in columns}

    def table(self, what: str, path: Path | None, url: str, fetch: Callable[[], dict[str, np.ndarray]],
              columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """A table (dict of columns): from its verified file, else ``fetch()`` (saved at ``path`` unless None)."""
        if path is not None:
            table = self.cached_table(path, columns)
            if table is not None:
                return table
        if self.offline:
            raise self._missing(what, path if path is not None else Path("(not cached)"), url)
        table = fetch()
        if path is not None:
            self.save_table(path, table, url)
        return table if columns is None else {c: table[c] for c in columns}

    def save_table(self, path: Path, table: dict[str, np.ndarray], url: str) -> None:
        """Write a table atomically with its verification record."""
        with file_lock(path):
            write_verified(path, table_bytes(table), url)


from brainmap.sdk.manifest import Manifest  # noqa: E402  (manifest imports download, not cache)
