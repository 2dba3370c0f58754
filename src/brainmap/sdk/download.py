"""Verified, resumable, process-safe downloads into the cache.

A file is downloaded to ``{name}.part`` beside its target, under an exclusive lock on ``{name}.lock``
(:func:`fcntl.flock`: released by the kernel when the holder dies, so a killed process never blocks the
next one). When the body is complete its size is checked against Content-Length (or Content-Range) and its
sha256 against the server's ``X-Checksum-SHA256`` header (brainmap's servers send it; Allen's do not, where the
size is all there is); only then is it renamed onto the target, and a record ``{name}.verified.json``
(url, size, sha256, mtime) written. The cache serves a file only when that record matches the file on disk
(:func:`is_verified`), so a download killed at any point leaves nothing that would be served.

Resume: ``{name}.part.json`` remembers the URL and the server's validator (checksum or ETag) of the partial
file. The next attempt asks for ``Range: bytes={size}-`` with ``If-Range``; a 206 answer is appended, a 200
(the file changed, or no range support) starts again, and a changed checksum discards the partial file.
Transport errors, time-outs and HTTP 429/5xx are retried with exponential backoff, each retry resuming where
the last stopped. Several processes (or threads) asking for the same file wait for the lock; the first
downloads it, the others find it verified.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

from brainmap.io.atomic import atomic_write
from brainmap.sdk.errors import ApiError, ChecksumError, DownloadError
from brainmap.sdk.http import HttpClient, RetryableStatus, check

__all__ = ["CHECKSUM_HEADER", "DownloadResult", "Downloader", "file_lock", "is_verified", "lock_path",
           "part_path", "read_record", "read_verified", "record_local_file", "record_path", "sha256_of",
           "write_verified"]

CHECKSUM_HEADER = "X-Checksum-SHA256"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_HASH_BLOCK = 1 << 22
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _part_state_path(target: Path) -> Path:
    return target.with_name(target.name + ".part.json")


def record_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


def sha256_of(path: Path, prefix_bytes: int | None = None) -> "hashlib._Hash":
    """A sha256 object fed with the file (or its first ``prefix_bytes``)."""
    hasher = hashlib.sha256()
    remaining = prefix_bytes
    with open(path, "rb") as fh:
        while remaining is None or remaining > 0:
            block = fh.read(_HASH_BLOCK if remaining is None else min(_HASH_BLOCK, remaining))
            if not block:
                break
            hasher.update(block)
            if remaining is not None:
                remaining -= len(block)
    return hasher


@contextmanager
def file_lock(target: Path) -> Iterator[None]:
    """An exclusive lock on ``target`` between processes (flock) and between threads of this process."""
    target.parent.mkdir(parents=True, exist_ok=True)
    key = str(target.resolve())
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(key, threading.Lock())
    with thread_lock:
        fd = os.open(lock_path(target), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def read_record(target: Path) -> dict[str, Any] | None:
    """The verification record of ``target``, or None (absent or unreadable)."""
    try:
        record = json.loads(record_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_verified(target: Path, full: bool = False) -> bool:
    """Whether ``target`` is a complete, verified download: its record matches its size and modification time
    (and, with ``full``, its sha256 -- a re-read of the whole file). A file of the recorded size whose time
    changed (a cache folder copied without keeping times) is re-hashed, and its record renewed if it matches."""
    record = read_record(target)
    if record is None:
        return False
    try:
        stat = target.stat()
    except OSError:
        return False
    if stat.st_size != record.get("size"):
        return False
    if stat.st_mtime_ns != record.get("mtime_ns"):
        if sha256_of(target).hexdigest() != record.get("sha256"):
            return False
        renewed = {**record, "mtime_ns": stat.st_mtime_ns}
        try:
            with atomic_write(record_path(target), "w", encoding="utf-8") as fh:
                json.dump(renewed, fh)
        except OSError:  # a read-only cache is still served
            pass
        return True
    return not full or sha256_of(target).hexdigest() == record.get("sha256")


def _write_record(target: Path, url: str, sha256: str, verified_by: str) -> dict[str, Any]:
    stat = target.stat()
    record = {"url": url, "size": stat.st_size, "sha256": sha256, "mtime_ns": stat.st_mtime_ns,
              "verified_by": verified_by, "saved_at": time.time()}
    with atomic_write(record_path(target), "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    return record


def read_verified(target: Path) -> bytes | None:
    """The bytes of ``target`` if their sha256 is its record's (checked on every read: for small files such as
    cached JSON answers, where a flipped byte of the same size and time would pass the quick check); else None."""
    record = read_record(target)
    if record is None:
        return None
    try:
        payload = target.read_bytes()
    except OSError:
        return None
    if len(payload) != record.get("size") or hashlib.sha256(payload).hexdigest() != record.get("sha256"):
        return None
    return payload


def write_verified(target: Path, payload: bytes, url: str) -> None:
    """Write ``payload`` (e.g. a JSON answer) atomically to ``target`` with its verification record."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target, "wb") as fh:
        fh.write(payload)
    _write_record(target, url, hashlib.sha256(payload).hexdigest(), "local sha256 of the answer")


def record_local_file(target: Path, source: str) -> None:
    """Write the verification record of a file this process has just written (atomically) itself."""
    _write_record(target, source, sha256_of(target).hexdigest(), "written here")


@dataclass(frozen=True)
class DownloadResult:
    """What :meth:`Downloader.fetch` did: ``cached`` (already verified, nothing fetched), ``resumed_from``
    (bytes of an earlier partial download kept), ``transferred`` (bytes received now), ``seconds``."""

    url: str
    path: Path
    size: int
    sha256: str
    cached: bool
    resumed_from: int = 0
    transferred: int = 0
    seconds: float = 0.0
    verified_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


class _Restart(Exception):
    """The partial file cannot be resumed (changed on the server, bad range): start from byte 0."""


class Downloader:
    """Downloads files for a cache (see the module docstring).

    ``progress``: True shows a tqdm bar per file, False never, None (default) only on a terminal.
    ``rate_limit``: at most this many bytes per second (None: no limit) -- to be gentle with a shared server.
    Data are written as they arrive, so a dropped connection keeps every byte received for the resume.
    """

    def __init__(self, http: HttpClient, *, progress: bool | None = None, rate_limit: float | None = None
                 ) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError(f"rate_limit must be a positive number of bytes per second, got {rate_limit}")
        self.http, self.progress, self.rate_limit = http, progress, rate_limit

    def fetch(self, url: str, target: str | os.PathLike[str], params: dict[str, Any] | None = None, *,
              full: bool = False) -> DownloadResult:
        """Make ``target`` a verified copy of ``url`` (absolute, or a path on the API server): nothing to do if
        it already is, else download (resuming a partial download) under the file's lock. With ``full`` the
        cached file's sha256 is checked against its record too (a corrupt file of the right size and time is
        downloaded again, not handed on)."""
        target = Path(target)
        full_url = str(httpx.URL(self.http.url(url), params=params)) if params else self.http.url(url)
        with file_lock(target):
            record = read_record(target) if is_verified(target, full=full) else None
            if record is not None:
                return DownloadResult(full_url, target, record["size"], record["sha256"], cached=True,
                                      verified_by=record.get("verified_by", ""))
            return self._download(full_url, target)

    # -- the download, under the lock ---------------------------------------------------------------------------
    def _download(self, url: str, target: Path) -> DownloadResult:
        part = part_path(target)
        attempt, restarts, checksum_failures = 0, 0, 0
        started = time.monotonic()
        resumed_from = part.stat().st_size if part.exists() and self._saved_state(target, url) else 0
        while True:
            try:
                _offset, transferred, digest, verified_by = self._attempt(url, target)
                break
            except _Restart:
                self._discard(target)
                resumed_from = 0
                restarts += 1
                if restarts > 3:
                    raise DownloadError(f"{url}: the server keeps changing the file or refusing ranges") from None
            except ChecksumError:
                self._discard(target)
                resumed_from = 0
                checksum_failures += 1
                if checksum_failures > 1:
                    raise
            except (httpx.TransportError, RetryableStatus) as exc:
                if attempt >= self.http.retries:
                    kept = part.stat().st_size if part.exists() else 0
                    tail = f"; {kept:,} bytes kept in {part} for the next call to resume" if kept else ""
                    if isinstance(exc, RetryableStatus):
                        raise ApiError(f"{exc.message} (after {attempt + 1} attempts{tail})", url=url,
                                       status=exc.status) from None
                    raise DownloadError(f"{url}: {type(exc).__name__}: {exc} (after {attempt + 1} attempts{tail})"
                                        ) from exc
                time.sleep(self.http.wait_s(attempt, getattr(exc, "response", None)))
                attempt += 1
        os.replace(part, target)
        record = _write_record(target, url, digest, verified_by)
        try:
            _part_state_path(target).unlink()
        except FileNotFoundError:
            pass
        return DownloadResult(url, target, record["size"], digest, cached=False, resumed_from=resumed_from,
                              transferred=transferred, seconds=time.monotonic() - started, verified_by=verified_by)

    def _discard(self, target: Path) -> None:
        for path in (part_path(target), _part_state_path(target)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def _saved_state(self, target: Path, url: str) -> dict[str, Any] | None:
        try:
            state = json.loads(_part_state_path(target).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("url") == url else None

    def _attempt(self, url: str, target: Path) -> tuple[int, int, str, str]:
        """One request: (offset resumed from, bytes received, sha256 of the whole file, how it was verified)."""
        part = part_path(target)
        state = self._saved_state(target, url)
        offset = part.stat().st_size if part.exists() and state is not None else 0
        if offset == 0:
            self._discard(target)
        headers = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            validator = state.get("etag") if state else None
            if validator and not validator.startswith("W/"):
                headers["If-Range"] = validator
        with self.http.client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416:
                raise _Restart
            check(response)
            checksum = response.headers.get(CHECKSUM_HEADER)
            checksum = checksum.lower() if checksum and _HEX64.fullmatch(checksum) else None
            total: int | None
            if response.status_code == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
                if match is None or int(match.group(1)) != offset:
                    raise _Restart
                total = int(match.group(3)) if match.group(3) != "*" else None
                if state is not None and state.get("checksum") and checksum and checksum != state["checksum"]:
                    raise _Restart  # the file changed on the server since the partial download
                mode = "ab"
            else:
                offset, mode = 0, "wb"
                length = response.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
            part.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(_part_state_path(target), "w", encoding="utf-8") as fh:
                json.dump({"url": url, "etag": response.headers.get("etag"), "checksum": checksum,
                           "total": total}, fh)
            hasher = sha256_of(part, offset) if offset else hashlib.sha256()
            transferred = self._receive(response, part, mode, hasher, offset, total, target.name)
        size = part.stat().st_size
        if total is not None and size != total:
            raise ChecksumError(f"{url}: received {size:,} bytes, the server announced {total:,}")
        digest = hasher.hexdigest()
        if checksum is not None and digest != checksum:
            raise ChecksumError(f"{url}: sha256 {digest} of the {size:,} bytes received is not the server's "
                                f"{checksum}")
        verified_by = f"{CHECKSUM_HEADER}" if checksum else ("Content-Length" if total is not None else "none")
        return offset, transferred, digest, verified_by

    def _receive(self, response: httpx.Response, part: Path, mode: str, hasher: Any, offset: int,
                 total: int | None, name: str) -> int:
        from tqdm import tqdm

        disable = None if self.progress is None else not self.progress
        transferred = 0
        started = time.monotonic()
        with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=name, disable=disable, leave=False) as bar:
            for chunk in response.iter_bytes():  # as received: a dropped connection keeps what arrived
                fh.write(chunk)
                hasher.update(chunk)
                transferred += len(chunk)
                bar.update(len(chunk))
                if self.rate_limit is not None:
                    fh.flush()  # what is received is on disk for a resume, whatever happens next
                    ahead = transferred / self.rate_limit - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            fh.flush()
            os.fsync(fh.fileno())
        return transferred
