"""The exceptions brainmap raises.

Every error names what was wrong (the file, field, parameter or structure) and what was expected,
so that a user can fix the input without reading the source.
"""

from __future__ import annotations


class BrainmapError(Exception):
    """Base class of every error raised deliberately by brainmap."""


class FormatError(BrainmapError, ValueError):
    """A file is malformed: a bad header, truncated data, an unknown type or encoding, a missing part."""


class UnknownStructureError(BrainmapError, LookupError):
    """A structure id, acronym or name is not in the ontology."""

    def __str__(self) -> str:  # LookupError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else "unknown structure"


class UnknownStructureSetError(BrainmapError, LookupError):
    """A structure set id is not in the ontology."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown structure set"
