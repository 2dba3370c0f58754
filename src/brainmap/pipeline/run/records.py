"""Stage records: what a pipeline stage was run on, with which parameters, and what it wrote.

Every stage of a run writes its artefacts atomically (temporary file, then rename) and, last of all, a record
``<stage>.record.json`` holding

* ``fingerprint``: a digest of the stage's inputs (the checksums of the files it read, and its parameters);
* ``outputs``: every artefact it wrote, with size and sha256.

A stage is *done* when its record exists, its fingerprint equals the one computed now from the current inputs and
parameters, and every listed output is still there with the same size and checksum. Anything else -- no
record (the stage was killed before finishing), changed inputs or parameters, a missing or altered output --
makes the runner redo it. Because the record is written after the outputs and atomically, a kill at any moment
leaves either a complete, verified stage or one that will be redone; never a corrupt file taken for done.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from brainmap.io.atomic import atomic_write

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(inputs: Iterable[str | Path] = (), parameters: dict[str, Any] | None = None) -> str:
    """A digest of input files (by name and content) and JSON-serializable parameters."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in inputs):
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    digest.update(json.dumps(parameters or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@dataclass
class StageRecord:
    """The record of one finished stage (see the module docstring)."""

    stage: str
    fingerprint: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def path_for(folder: str | Path, stage: str) -> Path:
        return Path(folder) / f"{stage}.record.json"

    @classmethod
    def describe_outputs(cls, folder: str | Path, outputs: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
        """Size and sha256 of each output, keyed by its path relative to ``folder``."""
        folder = Path(folder)
        described = {}
        for output in outputs:
            path = Path(output)
            path = path if path.is_absolute() else folder / path
            described[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        return described

    def write(self, folder: str | Path) -> Path:
        """Write the record atomically; call it only after every output is in place."""
        path = self.path_for(folder, self.stage)
        with atomic_write(path, "w", encoding="utf-8") as fh:
            json.dump({"stage": self.stage, "fingerprint": self.fingerprint, "outputs": self.outputs,
                       "summary": self.summary}, fh, indent=1, sort_keys=True)
        return path

    @classmethod
    def read(cls, folder: str | Path, stage: str) -> "StageRecord | None":
        """The stage's record, or None if there is none or it cannot be read."""
        path = cls.path_for(folder, stage)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return cls(doc["stage"], doc["fingerprint"], doc.get("outputs", {}), doc.get("summary", {}))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def is_valid(self, folder: str | Path, expected_fingerprint: str, verify_checksums: bool = True) -> bool:
        """True if the record matches the inputs now and every output is intact."""
        if self.fingerprint != expected_fingerprint:
            return False
        folder = Path(folder)
        for name, meta in self.outputs.items():
            path = folder / name
            try:
                if path.stat().st_size != meta["bytes"]:
                    return False
            except OSError:
                return False
            if verify_checksums and file_sha256(path) != meta["sha256"]:
                return False
        return True


def stage_is_done(folder: str | Path, stage: str, expected_fingerprint: str) -> bool:
    """Whether ``stage`` finished in ``folder`` on exactly these inputs and its outputs are intact."""
    record = StageRecord.read(folder, stage)
    return record is not None and record.is_valid(folder, expected_fingerprint)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporary files an interrupted atomic write leaves behind (``.name.XXXX.tmp``)."""
    removed = 0
    for path in Path(folder).rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
