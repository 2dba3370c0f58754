"""The exceptions of the SDK: every one names the URL or file concerned and what to do about it."""

from __future__ import annotations

from pathlib import Path

from brainmap.errors import BrainmapError

__all__ = ["ApiError", "CacheError", "ChecksumError", "DownloadError", "OfflineError", "SdkError"]


class SdkError(BrainmapError):
    """Base class of the SDK's errors."""


class ApiError(SdkError):
    """The server answered a request with an error (HTTP 4xx/5xx or ``success: false``).

    ``status`` is the HTTP status, ``url`` the request and ``message`` the server's own ``msg``.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        self.message, self.url, self.status = message, url, status
        where = f"HTTP {status} " if status is not None else ""
        super().__init__(f"{where}from {url}: {message}")


class DownloadError(SdkError):
    """A download failed after its retries (the partial file is kept for the next call to resume)."""


class ChecksumError(DownloadError):
    """A downloaded file's size or sha256 is not what the server announced (the file is discarded)."""


class CacheError(SdkError):
    """The cache cannot be used as asked: a bad manifest, a file name that leaves the cache, ..."""


class OfflineError(SdkError, FileNotFoundError):
    """Offline mode was asked for something that is not verified in the cache.

    ``missing`` lists ``(path, url)``: where the file would be and where it would come from.
    """

    def __init__(self, what: str, missing: list[tuple[Path, str]]) -> None:
        self.missing = missing
        if not missing:
            super().__init__(f"offline: {what} needs the network; go online (offline=False)")
            return
        lines = "\n".join(f"  {path}  (from {url})" for path, url in missing)
        super().__init__(f"offline: {what} is not in the cache (or not verified there); missing:\n{lines}\n"
                         "go online (offline=False) to download it")

    def __str__(self) -> str:
        return str(self.args[0])
