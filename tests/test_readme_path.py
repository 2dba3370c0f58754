"""The newcomer's path, as the README writes it: demo -> load -> serve -> every service, download and overlay.

The commands are read from README.md (the demo is the last part of its first line; load, serve and search are
its second code block) and run as written, in a fresh temporary folder, with the ``brainmap`` installed beside
this interpreter in place of ``.venv/bin/brainmap``; the server gets a free port (``--port``) and is a real
uvicorn on loopback. Then every search service answers with rows, through httpx and through brainmap's SDK;
every registered file downloads whole; every grid volume of every data set downloads and draws.

A README's demo already run in the project (``./brainmap-demo``, as CI's first command leaves it) is linked in
first, so the demo resumes (its stages verified as done) instead of starting over; without it the demo runs
whole.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


def _code_blocks(text: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [[re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.strip()] for block in blocks]


def readme_commands() -> dict[str, list[str]]:
    """The README's own commands: ``demo`` (the end of its first line), ``load``, ``serve``, ``search``."""
    blocks = _code_blocks(README.read_text(encoding="utf-8"))
    demo = blocks[0][0].split("&&")[-1].strip()
    found = {"demo": shlex.split(demo)}
    for line in blocks[1]:
        words = shlex.split(line)
        found[words[1]] = words
    assert {"demo", "load", "serve", "search"} <= set(found), f"README's commands changed: {found}"
    for words in found.values():
        assert words[0] == ".venv/bin/brainmap", words
    return found


def _run(words: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    command = [str(BIN / "brainmap"), *words[1:]]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(words)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def walked(tmp_path_factory, brainmap_serve):
    """The README's commands run in a fresh folder; yields (folder, base URL, outputs) while the server runs."""
    commands = readme_commands()
    here = tmp_path_factory.mktemp("newcomer")
    earlier = ROOT / "brainmap-demo" / "specimens"
    if earlier.is_dir():
        shutil.copytree(earlier, here / "brainmap-demo" / "specimens", copy_function=os.link,
                        ignore=shutil.ignore_patterns("*.tmp", ".*"))
    outputs = {"demo": _run(commands["demo"], here).stdout}
    outputs["load"] = _run(commands["load"], here).stdout
    with brainmap_serve(commands["serve"][1:], here) as base:  # the README's serve, on a free port
        outputs["search"] = _run(commands["search"], here).stdout
        yield here, base, outputs


def _query(base: str, criteria: str, **params: str) -> list[dict]:
    answer = httpx.get(f"{base}/api/v2/data/query.json", params={"criteria": criteria, **params}, timeout=120)
    assert answer.status_code == 200, f"{criteria}: {answer.status_code} {answer.text[:500]}"
    body = answer.json()
    assert body["success"] is True, body
    return body["msg"]


def _data_sets(base: str) -> dict[int, dict]:
    rows = _query(base, "model::SectionDataSet,rma::include,products,genes,plane_of_section,rma::options"
                        "[num_rows$eqall]")
    return {int(r["id"]): r for r in rows}


def test_the_readme_commands_make_a_served_data_directory(walked):
    here, base, outputs = walked
    assert "synthetic" in outputs["demo"] and "brainmap load" in outputs["demo"]  # says what it is, what is next
    data = here / "brainmap-data"
    assert (data / "brainmap.sqlite").is_file() and (data / "search" / "connectivity" / "matrix.json").is_file()
    assert "VISp" in outputs["search"] and "100141219" in outputs["search"]  # the README's own search
    data_sets = _data_sets(base)
    assert len(data_sets) == 6
    for row in data_sets.values():  # every data set's folder is inside the data directory, none of its truth
        folder = data / row["storage_directory"]
        assert folder.is_dir() and not (folder / "truth").exists()
    # each virtual specimen is its own draw: the two connectivity experiments are not one brain's images
    specimens = here / "brainmap-demo" / "specimens"
    seeds = {json.loads((f / "dataset.json").read_text())["metadata"]["seed"] for f in specimens.iterdir()}
    assert len(seeds) == 6
    first = [sorted((specimens / f"connectivity_{e}" / "images").glob("*_tissue.tif"))[0].read_bytes()
             for e in (112672974, 100141219)]
    assert first[0] != first[1]


def test_every_search_service_answers_with_rows(walked):
    _, base, _ = walked
    by_gene = {r["genes"][0]["acronym"]: int(i) for i, r in _data_sets(base).items() if r["genes"]}
    from brainmap.search import MatrixStore

    # AGEA's seed: a voxel where every coronal data set has data (read from the store the server uses).
    from brainmap.search.grid import SearchGrid

    grid = SearchGrid.ish()
    store = MatrixStore.open(walked[0] / "brainmap-data" / "search" / "mouse_coronal")
    full = store.columns[(store.raw != 0).all(axis=0)]
    full = full[np.isin(full, grid.brain_voxels())]
    assert full.size, "no brain voxel where all coronal ISH data sets have data"
    seed = grid.voxel_center_um(full[full.size // 2])
    calls = {
        "mouse_differential": "[set$eqmouse][structures1$eqHPF][structures2$eqIsocortex]",
        "mouse_differential ": "[set$eqmouse_coronal][structures1$eqHPF][structures2$eqIsocortex]",
        "mouse_correlation": f"[set$eqmouse_coronal][row$eq{by_gene['Calb1']}]",
        "mouse_correlation ": f"[set$eqmouse][row$eq{by_gene['Pvalb']}]",
        "mouse_agea": "[set$eqmouse_coronal][seed_point$eq{}]".format(",".join(f"{v:g}" for v in seed)),
        "mouse_connectivity_injection_structure": "[injection_structures$eqIsocortex]",
        "mouse_connectivity_target": "[target_domain$eqVISp]",
        "mouse_connectivity_target_spatial": "[seed_point$eq8800,910,8070]",
        "mouse_connectivity_injection_coordinate": "[seed_point$eq8800,910,8070]",
        "mouse_connectivity_correlation": "[row$eq100141219]",
    }
    for name, params in calls.items():
        rows = _query(base, f"service::{name.strip()}{params}")
        assert rows, f"{name}{params}: no rows"
    spatial = _query(base, "service::mouse_connectivity_target_spatial[seed_point$eq8800,910,8070]")
    assert all(len(r["path"]) >= 1 for r in spatial)
    source = _query(base, "service::mouse_connectivity_injection_structure[injection_structures$eqVISp]")
    assert [r["id"] for r in source] == [100141219] and source[0]["injection-volume"] > 0


def test_every_file_download_and_overlay_works(walked):
    here, base, _ = walked
    from brainmap.io.grid_bundle import read_grid_bundle
    from brainmap.io.nrrd import read_nrrd

    files = _query(base, "model::WellKnownFile,rma::include,well_known_file_type,rma::options[num_rows$eqall]")
    assert files and not any("truth" in f["path"] for f in files)
    for f in files:
        answer = httpx.get(f"{base}/api/v2/well_known_file_download/{f['id']}", timeout=60)
        assert answer.status_code == 200, (f["path"], answer.status_code, answer.text[:300])
        assert len(answer.content) == f["file_size"]
    for data_set_id, row in _data_sets(base).items():
        volumes = httpx.get(f"{base}/viewer/volumes/{data_set_id}.json", timeout=30).json()["msg"]
        names = {v["name"] for v in volumes}
        assert "signal_density" not in names and volumes
        overlay = httpx.get(f"{base}/viewer/slice/{data_set_id}.png", params={"plane": "sagittal", "position": 4000},
                            timeout=60)
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
        from PIL import Image

        drawn = np.asarray(Image.open(io.BytesIO(overlay.content)))
        assert drawn[..., 3].any(), f"data set {data_set_id}: the overlay draws nothing"
        if row["products"][0]["id"] == 1:  # ISH: Allen's grid-data zip of MetaImages
            answer = httpx.get(f"{base}/grid_data/download/{data_set_id}", params={"include": "energy,density"},
                               timeout=60)
            assert answer.status_code == 200, answer.text[:300]
            with zipfile.ZipFile(io.BytesIO(answer.content)) as bundle:
                assert {"energy.mhd", "energy.raw"} <= set(bundle.namelist())
            path = here / "bundle.zip"
            path.write_bytes(answer.content)
            grids = read_grid_bundle(path)
            assert (grids["energy"][0] > 0).any()
        else:
            for image in ("projection_density", "injection_fraction", "injection_density", "data_mask"):
                answer = httpx.get(f"{base}/grid_data/download_file/{data_set_id}",
                                   params={"image": image, "resolution": 100}, timeout=60)
                assert answer.status_code == 200, (image, answer.text[:300])
            served = here / "injection_fraction.nrrd"
            served.write_bytes(answer.content if image == "injection_fraction" else httpx.get(
                f"{base}/grid_data/download_file/{data_set_id}", params={"image": "injection_fraction"}).content)
            pipeline = here / "brainmap-data" / row["storage_directory"] / "pipeline" / "grids"
            assert served.read_bytes() == (pipeline / "injection_fraction_100.nrrd").read_bytes()
            assert read_nrrd(served)[0].shape == (132, 80, 114)


def test_brainmaps_sdk_walks_the_readme_example(walked):
    here, base, _ = walked
    from brainmap.sdk import MouseConnectivityCache, MouseIshCache

    mcc = MouseConnectivityCache(resolution=100, manifest_file=str(here / "cache" / "manifest.json"), base_uri=base)
    experiments = mcc.get_experiments(cre=False, injection_structure_ids=[315])  # the README's example
    assert {e["id"] for e in experiments} == {100141219}
    density, header = mcc.get_projection_density(experiments[0]["id"])
    assert density.shape == (132, 80, 114) and density.max() > 0
    matrix = mcc.get_projection_matrix([e["id"] for e in experiments], [385, 409], hemisphere_ids=[1, 2])
    assert np.isfinite(matrix["matrix"]).any()
    ish = MouseIshCache(manifest_file=str(here / "ish-cache" / "manifest.json"), base_uri=base)
    genes = {e["id"]: e for e in ish.get_experiments()}
    assert len(genes) == 4
    energy = ish.get_expression_volume(next(iter(genes)))[0]
    assert (energy > 0).any()
