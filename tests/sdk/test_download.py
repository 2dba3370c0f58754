"""Downloads and the cache's guarantees: atomic, verified, resumable, retried, process-safe, offline."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from brainmap.sdk import ApiError, ChecksumError, Downloader, HttpClient, OfflineError
from brainmap.sdk.download import is_verified, part_path, read_record

KILL_SCRIPT = """
import sys
from brainmap.sdk import MouseConnectivityCache
mcc = MouseConnectivityCache(resolution=100, manifest_file=sys.argv[2], base_uri=sys.argv[1], progress=False,
                             rate_limit=float(sys.argv[3]))
mcc.get_projection_density(101)
print("finished")
"""

FILL_SCRIPT = """
import hashlib, json, sys
from brainmap.sdk import MouseConnectivityCache
mcc = MouseConnectivityCache(resolution=100, manifest_file=sys.argv[2], base_uri=sys.argv[1], progress=False,
                             rate_limit=float(sys.argv[3]))
experiments = mcc.get_experiments()
ids = [e["id"] for e in experiments]
out = {"experiments": len(experiments)}
for name in ("projection_density", "injection_density", "data_mask"):
    volume, _ = getattr(mcc, "get_" + name)(101)
    out[name] = hashlib.sha256(volume.tobytes()).hexdigest()
out["unionizes"] = int(len(mcc.get_structure_unionizes(ids)))
out["annotation"] = hashlib.sha256(mcc.get_annotation_volume()[0].tobytes()).hexdigest()
out["tree"] = len(mcc.get_structure_tree())
print(json.dumps(out))
"""


def _grid_file(sdk_server, name: str = "projection_density") -> Path:
    return sdk_server.data.store.folders[101] / "grids" / f"{name}_100.nrrd"


def test_killed_download_leaves_nothing_served_and_next_call_resumes(sdk_server, mcc_factory, tmp_path):
    source = _grid_file(sdk_server)
    size = source.stat().st_size
    manifest = tmp_path / "cache" / "manifest.json"
    rate = size / 4.0  # about four seconds for the whole file
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, sdk_server.base_uri, str(manifest), str(rate)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    target = tmp_path / "cache" / "experiment_101" / "projection_density_100.nrrd"
    part = part_path(target)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if part.exists() and size * 0.2 < part.stat().st_size < size * 0.8:
                break
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the download never got halfway")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    kept = part.stat().st_size
    assert 0 < kept < size
    assert not target.exists() and not is_verified(target)

    # Nothing is served: offline, the cache says what is missing and where it would come from.
    offline = mcc_factory(offline=True)
    with pytest.raises(OfflineError) as missing:
        offline.get_projection_density(101)
    assert str(target) in str(missing.value) and "download_file/101" in str(missing.value)

    # The next call resumes from the partial file and ends with the server's bytes, verified.
    mcc = mcc_factory()
    url = mcc.api.projection_grid_url(101, "projection_density", 100)
    result = mcc.api.downloader.fetch(url, target)
    assert result.resumed_from == kept and result.transferred == size - kept and not result.cached
    assert target.read_bytes() == source.read_bytes() and not part.exists()
    record = read_record(target)
    assert record["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert record["verified_by"] == "X-Checksum-SHA256"
    volume, _ = mcc.get_projection_density(101)
    np.testing.assert_array_equal(volume, sdk_server.data.projection_101["projection_density"])


def test_two_processes_filling_one_cache(sdk_server, tmp_path):
    manifest = tmp_path / "shared" / "manifest.json"
    rate = 4_000_000.0  # slow enough that the two processes overlap on the volumes
    processes = [subprocess.Popen([sys.executable, "-c", FILL_SCRIPT, sdk_server.base_uri, str(manifest), str(rate)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()[-3000:]
        outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    expected = sdk_server.data.projection_101
    for name in ("projection_density", "injection_density", "data_mask"):
        assert outputs[0][name] == hashlib.sha256(np.ascontiguousarray(expected[name]).tobytes()).hexdigest()
    # Every file in the cache is complete and verified (sha256 re-read), and no partial file is left.
    folder = manifest.parent
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".lock", ".json"))
             or p.name in ("experiments.json",) or p.name.startswith("structures_graph")]
    files = [p for p in files if not p.name.endswith((".lock", ".verified.json"))]
    assert len(files) >= 5
    for path in files:
        assert is_verified(path, full=True), path
    assert not list(folder.rglob("*.part"))
    assert (folder / "experiment_101" / "projection_density_100.nrrd").read_bytes() == \
        _grid_file(sdk_server).read_bytes()


def test_resume_within_one_call_after_dropped_connections(flaky_files, tmp_path):
    flaky_files.cut = 2
    downloader = Downloader(HttpClient(flaky_files.url, backoff_s=0.01), progress=False)
    target = tmp_path / "file.bin"
    result = downloader.fetch("/file", target)
    assert target.read_bytes() == flaky_files.payload
    # whole file, cut at half; then from the half, cut at three quarters; then the rest
    n = len(flaky_files.payload)
    assert flaky_files.requests == [None, f"bytes={n // 2}-", f"bytes={n // 2 + (n - n // 2) // 2}-"]
    assert result.sha256 == hashlib.sha256(flaky_files.payload).hexdigest()
    again = downloader.fetch("/file", target)
    assert again.cached and len(flaky_files.requests) == 3


def test_retries_with_backoff_then_gives_up_clearly(flaky_files, tmp_path):
    flaky_files.fail = 2
    downloader = Downloader(HttpClient(flaky_files.url, retries=3, backoff_s=0.01), progress=False)
    downloader.fetch("/file", tmp_path / "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == flaky_files.payload and len(flaky_files.requests) == 3

    flaky_files.fail = 10
    stubborn = Downloader(HttpClient(flaky_files.url, retries=2, backoff_s=0.01), progress=False)
    with pytest.raises(ApiError) as error:
        stubborn.fetch("/file", tmp_path / "b.bin")
    assert error.value.status == 503 and "after 3 attempts" in str(error.value)
    assert not (tmp_path / "b.bin").exists()
    flaky_files.fail = 0
    with pytest.raises(ApiError) as missing:
        stubborn.fetch("/nothing", tmp_path / "c.bin")
    assert missing.value.status == 404 and "no such file" in str(missing.value)


def test_wrong_checksum_is_never_served(flaky_files, tmp_path):
    flaky_files.bad_checksum = True
    downloader = Downloader(HttpClient(flaky_files.url, backoff_s=0.01), progress=False)
    target = tmp_path / "bad.bin"
    with pytest.raises(ChecksumError, match="sha256"):
        downloader.fetch("/file", target)
    assert not target.exists() and not part_path(target).exists() and not is_verified(target)


def test_a_changed_cached_file_is_not_served(sdk_server, mcc_factory):
    mcc = mcc_factory()
    mcc.get_data_mask(101)
    path = mcc.store.path("VOLUME", experiment_id=101, volume="data_mask", resolution=100)
    assert is_verified(path)
    with open(path, "ab") as fh:
        fh.write(b"garbage")
    assert not is_verified(path)
    with pytest.raises(OfflineError):
        mcc_factory(offline=True).get_data_mask(101)
    volume, _ = mcc_factory().get_data_mask(101)  # online: downloaded again
    np.testing.assert_array_equal(volume, sdk_server.data.projection_101["data_mask"])
    assert is_verified(path, full=True)


def test_offline_mode_with_and_without_files(sdk_server, mcc_factory):
    offline = mcc_factory(offline=True)
    for call, words in [(lambda: offline.get_experiments(), "experiments.json"),
                        (lambda: offline.get_structure_tree(), "structures_graph_1.json"),
                        (lambda: offline.get_annotation_volume(), "annotation_100.nrrd"),
                        (lambda: offline.get_experiment_structure_unionizes(100), "structure_unionizes.columns"),
                        (lambda: offline.get_projection_density(101), "projection_density_100.nrrd"),
                        (lambda: offline.get_affine_parameters(100), "alignment3d.json")]:
        with pytest.raises(OfflineError) as error:
            call()
        assert words in str(error.value) and "offline=False" in str(error.value)
        assert error.value.missing and error.value.missing[0][1].startswith(sdk_server.base_uri)

    online = mcc_factory()
    experiments = online.get_experiments()
    density, _ = online.get_projection_density(101)
    unionizes = online.get_experiment_structure_unionizes(100)
    matrix = online.get_projection_matrix([100], [385, 997], [1, 2, 3])["matrix"]
    affine = online.get_affine_parameters(100)

    offline = mcc_factory(offline=True)  # the same folder, now filled
    assert offline.get_experiments() == experiments
    np.testing.assert_array_equal(offline.get_projection_density(101)[0], density)
    assert offline.get_experiment_structure_unionizes(100).equals(unionizes)
    np.testing.assert_array_equal(offline.get_projection_matrix([100], [385, 997], [1, 2, 3])["matrix"], matrix)
    np.testing.assert_array_equal(offline.get_affine_parameters(100), affine)
    with pytest.raises(OfflineError, match="data_mask_100.nrrd"):
        offline.get_data_mask(101)  # not downloaded: still missing
    with pytest.raises(OfflineError, match="needs the network"):
        offline.api.experiment_source_search(injection_structures="VISp")  # no request leaves an offline cache


def test_json_requests_are_retried_too(flaky_files):
    flaky_files.fail = 2
    http = HttpClient(flaky_files.url, retries=3, backoff_s=0.01)
    with pytest.raises(ApiError) as error:
        http.get_json("/nothing")
    assert error.value.status == 404 and len(flaky_files.requests) == 3  # two 503s, then the real answer


def test_progress_bar(flaky_files, tmp_path, capsys):
    Downloader(HttpClient(flaky_files.url), progress=True).fetch("/file", tmp_path / "p.bin")
    shown = capsys.readouterr().err
    assert "p.bin" in shown and "293k" in shown.lower()  # the file's name and its size (300,000 B = 293 KiB)


def test_a_copied_cache_is_rehashed_not_refetched(flaky_files, tmp_path):
    downloader = Downloader(HttpClient(flaky_files.url), progress=False)
    target = tmp_path / "f.bin"
    downloader.fetch("/file", target)
    os.utime(target, ns=(1, 1))  # what a copy that does not keep times does
    assert is_verified(target)  # same bytes: the record is renewed
    assert read_record(target)["mtime_ns"] == 1
    with open(target, "r+b") as fh:  # same size, other bytes
        fh.write(b"\x00\x01\x02")
    os.utime(target, ns=(2, 2))
    assert not is_verified(target)
    assert not downloader.fetch("/file", target).cached and target.read_bytes() == flaky_files.payload


def _flip_keeping_size_and_time(path) -> None:
    """Change one byte of ``path`` and put back its modification time: what the quick check cannot see."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_full_verification_downloads_a_corrupt_file_again(sdk_server, mcc_factory):
    """verify="full" saw the corrupt file but ``Downloader.fetch`` re-checked quickly and handed it on."""
    mcc_factory().get_data_mask(101)
    path = mcc_factory().store.path("VOLUME", experiment_id=101, volume="data_mask", resolution=100)
    _flip_keeping_size_and_time(path)
    assert is_verified(path) and not is_verified(path, full=True)
    volume, _ = mcc_factory(verify="full").get_data_mask(101)
    np.testing.assert_array_equal(volume, sdk_server.data.projection_101["data_mask"])
    assert is_verified(path, full=True)


def test_full_verification_in_the_downloader_itself(flaky_files, tmp_path):
    downloader = Downloader(HttpClient(flaky_files.url), progress=False)
    target = tmp_path / "f.bin"
    downloader.fetch("/file", target)
    _flip_keeping_size_and_time(target)
    assert downloader.fetch("/file", target).cached  # the quick check cannot see it (by design)
    result = downloader.fetch("/file", target, full=True)
    assert not result.cached and target.read_bytes() == flaky_files.payload


def test_a_flipped_byte_in_a_cached_json_answer_is_not_served(sdk_server, mcc_factory):
    """In quick mode a flipped byte in a cached JSON answer was served (an altered structure id)."""
    tree = mcc_factory().get_structure_tree().get_structures_by_id([385])[0]
    path = mcc_factory().store.path("STRUCTURE_TREE", structure_graph_id=1)
    text = path.read_bytes()
    at = text.index(b'"id": 385') + len(b'"id": 38')
    altered = text[:at] + b"6" + text[at + 1:]  # id 385 -> 386, same size
    stat = path.stat()
    path.write_bytes(altered)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert is_verified(path)  # the quick check passes ...
    again = mcc_factory().get_structure_tree().get_structures_by_id([385])[0]
    assert again == tree  # ... but the answer's checksum does not: it is fetched again
    assert path.read_bytes() == text
