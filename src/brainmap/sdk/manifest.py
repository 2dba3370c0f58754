"""The cache manifest: where each file lives, relative to the manifest's folder.

A JSON file in AllenSDK's layout -- ``{"manifest": [{"key", "type": "file", "spec"}, ...]}`` -- plus a
``brainmap`` section naming the server the files came from and the manifest version. ``spec`` is a path
template relative to the manifest's folder; every file that depends on the resolution has ``{resolution}`` in
its path (``experiment_{experiment_id}/projection_density_{resolution}.nrrd``), so caches of several
resolutions share a folder without clashing. Edit a ``spec`` to move files; the keys must stay.

One folder caches one server: opening a manifest written for another ``base_uri`` raises
:class:`~brainmap.sdk.errors.CacheError` (files of two servers with the same ids would otherwise mix).
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any, Mapping

from brainmap.io.atomic import atomic_write
from brainmap.sdk.download import file_lock
from brainmap.sdk.errors import CacheError

__all__ = ["MANIFEST_VERSION", "Manifest"]

MANIFEST_VERSION = 1


def _fields(spec: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(spec) if name}


class Manifest:
    """The manifest at ``path`` (created with ``entries`` if absent; missing keys are added)."""

    def __init__(self, path: str | os.PathLike[str], entries: Mapping[str, str], base_uri: str) -> None:
        self.path = Path(path).expanduser().absolute()
        self.base_dir = self.path.parent
        self.base_uri = base_uri
        self.specs: dict[str, str] = {}
        self._load_or_create(dict(entries))

    def _load_or_create(self, entries: dict[str, str]) -> None:
        with file_lock(self.path):
            existing: dict[str, Any] | None = None
            if self.path.exists():
                try:
                    existing = json.loads(self.path.read_text(encoding="utf-8"))
                    specs = {e["key"]: e["spec"] for e in existing["manifest"] if e.get("type", "file") == "file"}
                except (ValueError, KeyError, TypeError) as exc:
                    raise CacheError(f"{self.path}: not a cache manifest ({exc}); move it away or pass another "
                                     "manifest_file") from None
                info = existing.get("brainmap") or {}
                if info.get("base_uri") not in (None, self.base_uri):
                    raise CacheError(f"{self.path} caches files of {info['base_uri']}, not {self.base_uri}; use "
                                     "another manifest_file (folder) for this server")
            else:
                specs = {}
            changed = existing is None or any(key not in specs for key in entries)
            for key, spec in entries.items():
                specs.setdefault(key, spec)
            for key, spec in specs.items():
                if Path(spec).is_absolute() or ".." in Path(spec).parts:
                    raise CacheError(f"{self.path}: the spec of {key} ({spec!r}) must be a path inside the "
                                     "manifest's folder")
            self.specs = specs
            if changed:
                body = {"manifest": [{"key": key, "type": "file", "spec": spec} for key, spec in specs.items()],
                        "brainmap": {"base_uri": self.base_uri, "version": MANIFEST_VERSION}}
                with atomic_write(self.path, "w", encoding="utf-8") as fh:
                    json.dump(body, fh, indent=2)

    def file(self, key: str, **fields: Any) -> Path:
        """The path of file ``key`` with its fields (``resolution``, ``experiment_id``, ...) filled in."""
        if key not in self.specs:
            raise CacheError(f"{self.path} has no entry {key!r}; it has {', '.join(sorted(self.specs))}")
        spec = self.specs[key]
        missing = _fields(spec) - set(fields)
        if missing:
            raise CacheError(f"the path of {key} needs {', '.join(sorted(missing))}")
        return self.base_dir / spec.format(**fields)
