"""Conformance fixtures: the demo's data loaded and served by a real ``brainmap serve`` on loopback, and the
scenarios (``scenarios.py``) run once per session by the real AllenSDK 2.16.2 (its own Python 3.11 environment,
``allensdk_venv.py``) and by brainmap's own SDK, each in a subprocess.

The demo's data: ``$BRAINMAP_DEMO_DIR`` (the output folder of a ``brainmap demo`` run; ``.ci/run`` passes the one it
made), else ``brainmap demo`` runs here once per session (a few minutes). Its specimen folders are copied into a
fresh data directory, loaded with ``brainmap load`` and served with ``brainmap serve`` -- the commands a user runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

HERE = Path(__file__).resolve().parent
ENV_DEMO = "BRAINMAP_DEMO_DIR"
STARTUP_TIMEOUT_S = 120.0
DEMO_TIMEOUT_S = 1800.0
SCENARIO_TIMEOUT_S = 1800.0


def _command(name: str) -> list[str]:
    """The installed ``brainmap`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", "brainmap.cli"]


def _run(args: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get(ENV_DEMO)
    if given:
        folder = Path(given)
        if not (folder / "specimens").is_dir():
            pytest.fail(f"{ENV_DEMO}={given} is not a brainmap demo output (no specimens/ folder)")
        return folder
    folder = tmp_path_factory.mktemp("demo") / "brainmap-demo"
    _run(_command("brainmap") + ["demo", "--out", str(folder)], DEMO_TIMEOUT_S)
    return folder


@dataclass
class Served:
    """A running ``brainmap serve`` over the demo's data."""

    base: str
    data_dir: Path
    process: subprocess.Popen

    def get(self, path: str, **params: Any) -> Any:
        import httpx

        return httpx.get(self.base + path, params=params or None, timeout=120)

    def rma(self, query: str) -> list[dict[str, Any]]:
        body = self.get("/api/v2/data/query.json", criteria=query).json()
        assert body["success"] is True, body
        return body["msg"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _add_channel_volumes(specimens: Path) -> None:
    """``brainmap run --channel-volumes`` on the copied connectivity data sets, as a user adds Allen's
    ImagesResampledTo25MicronARA to finished data: the alignment is kept and the grids are asked for at the
    resolutions the demo wrote, so only the channels stage runs."""
    folders = [f for f in sorted(specimens.iterdir())
               if (f / "dataset.json").exists() and json.loads((f / "dataset.json").read_text())["product"]
               == "connectivity"]
    grid = json.loads((folders[0] / "pipeline" / "grid.record.json").read_text())
    main = int(round(grid["summary"]["resolution_um"]))
    extra = sorted({int(name.rsplit("_", 1)[1].split(".")[0]) for name in grid["outputs"]
                    if name.startswith("grids/projection_density_")} - {main})
    command = _command("brainmap") + ["run", *map(str, folders), "--keep-alignment", "--channel-volumes",
                                      "--grid-resolution", str(main), "--workers", "2"]
    done = _run(command + (["--extra-grid-resolution", *map(str, extra)] if extra else []), 1800)
    assert done.stdout.count("grid skipped") == len(folders), done.stdout  # only the channels stage ran


@pytest.fixture(scope="session")
def served(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import httpx

    data_dir = tmp_path_factory.mktemp("conformance") / "data"
    data_dir.mkdir()
    shutil.copytree(demo_dir / "specimens", data_dir / "specimens")
    _add_channel_volumes(data_dir / "specimens")
    _run(_command("brainmap") + ["load", str(data_dir / "specimens"), "--data-dir", str(data_dir)], 900)
    port = _free_port()
    log = open(data_dir.parent / "serve.log", "w")
    process = subprocess.Popen(_command("brainmap") + ["serve", "--data", str(data_dir), "--port", str(port),
                                                       "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"brainmap serve exited ({process.returncode}): "
                                   f"{(data_dir.parent / 'serve.log').read_text()[-3000:]}")
            try:
                if httpx.get(base + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"brainmap serve did not answer within {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.3)
        yield Served(base, data_dir, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def ids(served: Served) -> dict[str, Any]:
    """The ids the scenarios use, from the server: the connectivity experiments (the Isocortex one first), the
    ISH data sets, a usable section image of the first experiment and its neighbour, an atlas plate, seeds."""
    experiments = served.rma("model::ApiConnectivity,rma::options[num_rows$eq'all'][order$eq'id']")
    isocortex = {int(s["id"]) for s in served.rma("model::Structure,rma::criteria,[structure_id_path$li'*/315/*'],"
                                                  "rma::options[num_rows$eq'all'][only$eq'id']")}
    experiments.sort(key=lambda e: (e["structure_id"] not in isocortex, e["id"]))
    first = experiments[0]
    ish = [r["id"] for r in served.rma("model::SectionDataSet,rma::criteria,products[id$eq1],"
                                       "rma::options[num_rows$eq'all'][order$eq'id']")]
    images = served.rma(f"model::SectionImage,rma::criteria,[data_set_id$eq{first['id']}][failed$eqfalse],"
                        "alignment2d,rma::options[num_rows$eq'all'][order$eq'section_number']")
    middle = len(images) // 2
    ish_images = served.rma(f"model::SectionImage,rma::criteria,[data_set_id$eq{ish[0]}],"
                            "rma::options[num_rows$eq1][order$eq'section_number']")
    seed = [first["injection_x"], first["injection_y"], first["injection_z"]]
    return {"connectivity": [e["id"] for e in experiments], "ish": ish,
            "section_image": images[middle]["id"], "section_number": images[middle]["section_number"],
            "neighbour_image": images[middle + 1]["id"], "ish_image": ish_images[0]["id"],
            "atlas_image": 90_000_071, "spatial_seed": seed, "injection_seed": seed,
            "experiments": experiments}


def _scenarios(python: str, sdk: str, served: Served, ids: dict[str, Any], work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    ids_file = work / "ids.json"
    ids_file.write_text(json.dumps(ids))
    out = work / "results.json"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    _run([python, str(HERE / "scenarios.py"), "--sdk", sdk, "--base-uri", served.base, "--work", str(work / "files"),
          "--ids", str(ids_file), "--out", str(out)], SCENARIO_TIMEOUT_S, env=env, cwd=str(work))
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def allensdk_results(served: Served, ids: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict:
    sys.path.insert(0, str(HERE))
    try:
        from allensdk_venv import AllenSdkUnavailable, allensdk_python
    finally:
        sys.path.remove(str(HERE))
    try:
        python = allensdk_python()
    except AllenSdkUnavailable as exc:
        pytest.skip(f"the AllenSDK conformance suite needs AllenSDK 2.16.2: {exc}")
    return _scenarios(str(python), "allensdk", served, ids, tmp_path_factory.mktemp("allensdk"))


@pytest.fixture(scope="session")
def brainmap_results(served: Served, ids: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _scenarios(sys.executable, "brainmap", served, ids, tmp_path_factory.mktemp("brainmap_sdk"))
