"""atomic_write: the target is replaced only when writing succeeds."""

from __future__ import annotations

import os
import stat

import pytest

from brainmap.io import atomic_write, write_atomically


def test_success_replaces_target(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as fh:
        fh.write(b"new content")
        assert target.read_bytes() == b"old"  # nothing visible under the real name until the block ends
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_error_keeps_target_and_removes_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_error_creates_nothing_when_target_did_not_exist(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "new.bin") as fh:
            fh.write(b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_text_mode_and_callable_form(tmp_path):
    target = tmp_path / "table.csv"
    with atomic_write(target, "w", encoding="utf-8", newline="") as fh:
        fh.write("id,name\r\n997,root – µ\n")
    assert target.read_bytes().decode("utf-8") == "id,name\r\n997,root – µ\n"  # newline="" honoured
    write_atomically(target, lambda fh: fh.write(b"bytes"))
    assert target.read_bytes() == b"bytes"
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(target, "ab"):
            pass


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_permissions(tmp_path):
    target = tmp_path / "shared.bin"
    with atomic_write(target) as fh:
        fh.write(b"1")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as open() would create it, not 0600
    target.chmod(0o640)
    with atomic_write(target) as fh:
        fh.write(b"2")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # an existing file keeps its mode


def test_not_durable_is_still_atomic_and_fsync_paths(tmp_path, monkeypatch):
    from brainmap.io import atomic

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "image.tif"
    with pytest.raises(RuntimeError):
        with atomic_write(target, durable=False) as fh:
            fh.write(b"half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with atomic_write(target, durable=False) as fh:
        fh.write(b"pixels")
    assert target.read_bytes() == b"pixels" and synced == []  # renamed into place, not fsync'ed
    others = [tmp_path / f"{k}.bin" for k in range(9)]
    for path in others:
        with atomic_write(path, durable=False) as fh:
            fh.write(b"x")
    atomic.fsync_paths([target, *others], [tmp_path])
    assert len(synced) == 11  # each file and the folder
    with pytest.raises(FileNotFoundError):
        atomic.fsync_paths([tmp_path / "gone.bin"])
