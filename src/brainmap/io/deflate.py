"""ISA-L's deflate and inflate (python-isal, a dependency) where installed, zlib's otherwise.

``isal_zlib`` is python-isal's zlib-compatible module, or None without it; ``fast_zlib`` is it or :mod:`zlib`
(the same calls, streams any inflater reads). Levels differ: ISA-L's are 0-3 (its 1 is about zlib's 6 in size on
brainmap's grids and images, ~10x faster).
"""

from __future__ import annotations

import zlib
from types import ModuleType

try:
    from isal import isal_zlib  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - python-isal is a dependency
    isal_zlib = None

try:
    from zlib_ng import zlib_ng  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - zlib-ng is a dependency
    zlib_ng = None

fast_zlib: ModuleType = isal_zlib if isal_zlib is not None else zlib

__all__ = ["fast_zlib", "isal_zlib", "zlib_ng"]
