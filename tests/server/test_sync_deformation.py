"""A data set aligned WITH the non-linear stage, the way a user gets there: ``brainmap align`` (non-linear on, the
default), ``brainmap load``, ``brainmap serve``. The server's sync routes, brainmap's SDK and the real AllenSDK
2.16.2 answer exactly what folder-level sync (:mod:`brainmap.specimen.sync` on the data set folder, deformation
included) computes -- and that differs from the affine part alone, so the deformation is really used. The
deformation field downloads in Allen's form (``DeformationFieldHeader`` / ``DeformationFieldVoxels``, fetched by
AllenSDK's own ``download_deformation_field`` and read with SimpleITK).

The specimen comes from the virtual microscope with an appearance and a warp the aligner does not share.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainmap.specimen import sync
from brainmap.specimen.folder import read_dataset
from brainmap.specimen.synthetic.geometry import DamageRates
from brainmap.specimen.synthetic.make import make_specimen

BRAINMAP = Path(sys.executable).parent / "brainmap"
DATA_SET_ID_KEY = "id"


def _run(*args: str, cwd: Path) -> str:
    done = subprocess.run([str(BRAINMAP), *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"brainmap {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> Path:
    """A coronal ISH specimen (RGB brightfield, a 250-300 um warp), aligned by ``brainmap align`` (non-linear on)."""
    if not BRAINMAP.exists():
        pytest.skip(f"no brainmap command beside {sys.executable} (pip install -e . makes it)")
    here = tmp_path_factory.mktemp("deformed")
    folder = here / "specimen"
    make_specimen("ish", folder, gene="Pvalb", seed=3, pixel_size_um=50.0, truth_resolution_um=100,
                  damage=DamageRates(fold=0.05), progress=False, appearance="rgb", warp=(250.0, 300.0))
    _run("align", "specimen", "--reference-resolution", "100", cwd=here)  # a relative path, as a user types it
    return folder


@pytest.fixture(scope="module")
def served(aligned, brainmap_serve):
    here = aligned.parent
    _run("load", "specimen", "--data-dir", "data", cwd=here)
    with brainmap_serve(["serve", "--data-dir", "data"], here) as base:
        yield base


@pytest.fixture(scope="module")
def folder_data_set(aligned):
    dataset = read_dataset(aligned)
    assert dataset.deformation is not None, "brainmap align with the non-linear stage wrote no deformation.nrrd"
    return dataset


def _affine_only(dataset):
    from dataclasses import replace

    return replace(dataset, deformation=None)


def _queries(dataset):
    """Pixels on three sections (a quarter, the middle, three quarters through), inside the tissue."""
    images = dataset.usable_images()
    picked = [images[len(images) // 4], images[len(images) // 2], images[3 * len(images) // 4]]
    return [(image, x * image.width, y * image.height) for image in picked for x, y in ((0.5, 0.5), (0.3, 0.6))]


def _get(base: str, path: str, **params):
    import httpx

    answer = httpx.get(f"{base}/api/v2/{path}", params=params, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True, body
    return body["msg"]


def test_server_sync_goes_through_the_deformation(served, folder_data_set):
    dataset = folder_data_set
    affine = _affine_only(dataset)
    moved = []
    for image, x, y in _queries(dataset):
        got = _get(served, f"image_to_reference/{image.id}.json", x=x, y=y)["image_to_reference"]
        want = sync.image_to_reference(dataset, image, x, y)
        assert got == pytest.approx(want.to_dict(), abs=1e-3)
        moved.append(float(np.linalg.norm(want.to_array() - sync.image_to_reference(affine, image, x, y).to_array())))
        # and back: the reference point to this data set's image and pixel
        back = _get(served, "reference_to_image/9.json", x=want.x, y=want.y, z=want.z,
                    section_data_set_ids=str(dataset.id))[0]["image_sync"]
        assert back == pytest.approx(sync.reference_to_image(dataset, want).to_dict(), abs=1e-3)
        assert back["section_image_id"] == image.id and back["x"] == pytest.approx(x, abs=0.1)
        across = _get(served, f"image_to_image/{image.id}.json", x=x, y=y,
                      section_data_set_ids=str(dataset.id))[0]["image_sync"]
        assert across == pytest.approx(sync.image_to_image(dataset, image, x, y, [dataset])[0].to_dict(), abs=1e-3)
    # the deformation matters here: the affine part alone puts these pixels elsewhere
    assert max(moved) > 20.0, moved


def test_structure_to_image_goes_through_the_deformation(served, folder_data_set, space25):
    dataset = folder_data_set
    body = _get(served, f"structure_to_image/{dataset.id}.json", structure_ids="CP,MOp", hemisphere_id=2)
    tree = space25.structure_tree
    for record, acronym in zip(body, ("CP", "MOp")):
        sid = tree.get_structures_by_acronym([acronym])[0]["id"]
        # the server's centroid is on the 25 um annotation (sync_resolution_um)
        want = sync.structure_to_image(dataset, sid, space25, hemisphere_id=2)
        assert record["image_sync"] == pytest.approx(want.to_dict(), abs=1e-3)


def test_brainmap_sdk_agrees(served, folder_data_set):
    from brainmap.sdk import SynchronizationApi

    api = SynchronizationApi(base_uri=served)
    image, x, y = _queries(folder_data_set)[0]
    want = sync.image_to_reference(folder_data_set, image, x, y)
    assert api.get_image_to_reference(image.id, x, y)["image_to_reference"] == pytest.approx(want.to_dict(), abs=1e-3)
    records = api.get_reference_to_image(9, want.x, want.y, want.z, [folder_data_set.id])
    assert records[0]["image_sync"] == pytest.approx(sync.reference_to_image(folder_data_set, want).to_dict(),
                                                     abs=1e-3)


def _allensdk_python() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
    try:
        from allensdk_venv import AllenSdkUnavailable, allensdk_python
    finally:
        sys.path.pop(0)
    try:
        return allensdk_python(build=False)
    except AllenSdkUnavailable as exc:
        pytest.skip(f"no AllenSDK 2.16.2 interpreter: {exc}")


_ALLENSDK_SCRIPT = """
import json, sys
import numpy as np
import SimpleITK as sitk
from allensdk.api.api import Api
from allensdk.api.queries.synchronization_api import SynchronizationApi
from allensdk.core.mouse_connectivity_cache import MouseConnectivityCache
from allensdk.mouse_connectivity.grid.utilities import image_utilities as iu
base, data_set_id, image_id, x, y, manifest, points = sys.argv[1:]
data_set_id = int(data_set_id)
Api.download_url = base
sync = SynchronizationApi(base_uri=base)
point = sync.get_image_to_reference(int(image_id), float(x), float(y))["image_to_reference"]
back = sync.get_reference_to_image(9, point["x"], point["y"], point["z"], [data_set_id])
mcc = MouseConnectivityCache(manifest_file=manifest, base_uri=base, resolution=25)
field = mcc.get_deformation_field(data_set_id)  # downloads experiment_{id}/dfmfld.mhd + .raw, reads with SimpleITK
trv = mcc.get_affine_parameters(data_set_id, direction="trv")
# AllenSDK's own gridder transform: CCF point -> the data set's image-space stack, affine after the field
header = mcc.get_cache_path(None, mcc.DEFORMATION_FIELD_HEADER_KEY, data_set_id)
transform = iu.build_composite_transform(sitk.ReadImage(str(header)), trv.flatten())
mapped = [transform.TransformPoint([float(v) for v in q]) for q in json.loads(points)]
print(json.dumps({"point": point, "back": back, "field_shape": list(field.shape),
                  "field_max": float(np.abs(field).max()), "mapped": mapped}))
"""


def test_real_allensdk_agrees_and_composes_the_deformation_field_as_allen_does(served, folder_data_set, aligned,
                                                                              tmp_path):
    """The real AllenSDK: its SynchronizationApi answers as folder-level sync; its MouseConnectivityCache fetches
    and reads the deformation field, and its own gridder's composite transform (``image_utilities.
    build_composite_transform``: the affine ``trv`` after the displacement field) maps CCF points to the specimen
    points brainmap's ``reference_to_specimen`` gives (the inverse of the deformation, then ``trv``)."""
    from brainmap.specimen.model import reference_to_specimen

    python = _allensdk_python()
    dataset = folder_data_set
    image, x, y = _queries(dataset)[1]
    points = np.array([sync.image_to_reference(dataset, i, px, py).to_array() for i, px, py in _queries(dataset)])
    done = subprocess.run([str(python), "-c", _ALLENSDK_SCRIPT, served, str(dataset.id), str(image.id), str(x),
                           str(y), str(tmp_path / "allensdk" / "manifest.json"), json.dumps(points.tolist())],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    want = sync.image_to_reference(dataset, image, x, y)
    assert answer["point"] == pytest.approx(want.to_dict(), abs=1e-3)
    assert answer["back"][0]["image_sync"] == pytest.approx(sync.reference_to_image(dataset, want).to_dict(),
                                                            abs=1e-3)
    assert len(answer["field_shape"]) == 4 and answer["field_shape"][3] == 3 and answer["field_max"] > 20.0
    expected = reference_to_specimen(dataset, points)
    affine_only = reference_to_specimen(_affine_only(dataset), points)
    assert np.abs(expected - affine_only).max() > 20.0  # the field matters at these points
    # the download is sampled every 200 um and interpolated linearly: within a few microns of the exact inverse
    assert np.abs(np.array(answer["mapped"]) - expected).max() < 5.0, (answer["mapped"], expected)


def test_brainmap_sdk_reads_the_deformation_field_as_allensdk_does(served, folder_data_set, aligned, tmp_path):
    from brainmap.sdk import MouseConnectivityCache
    from brainmap.specimen.deformation import ALLEN_HEADER_FILE

    cache = MouseConnectivityCache(resolution=25, base_uri=served, manifest_file=tmp_path / "manifest.json",
                                   progress=False)
    field = cache.get_deformation_field(folder_data_set.id)  # (LR, DV, AP, component), SimpleITK's order
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK reads the Allen-form field as AllenSDK does")
    assert np.array_equal(field, sitk.GetArrayFromImage(sitk.ReadImage(str(aligned / ALLEN_HEADER_FILE))))
    # at each grid point q (AP, DV, LR um), the deformation takes q + D(q) back to q
    image = sitk.ReadImage(str(aligned / ALLEN_HEADER_FILE))
    origin, spacing = np.array(image.GetOrigin()), np.array(image.GetSpacing())
    index = np.stack(np.meshgrid(*[np.arange(n) for n in field.shape[2::-1]], indexing="ij"), -1).reshape(-1, 3)
    q = origin + index * spacing
    d = field.transpose(2, 1, 0, 3).reshape(-1, 3)
    assert np.abs(folder_data_set.deformation.apply(q + d) - q).max() < 0.5


def test_the_deformation_is_registered_as_allen_names_it(served, folder_data_set):
    rows = _get(served, "data/query.json",
                criteria=f"model::WellKnownFile,rma::criteria,[attachable_id$eq{folder_data_set.id}],"
                         "well_known_file_type,rma::include,well_known_file_type,rma::options[num_rows$eqall]")
    types = {r["well_known_file_type"]["name"] for r in rows}
    assert {"DeformationFieldHeader", "DeformationFieldVoxels", "deformation"} <= types, types


def test_an_unreadable_deformation_field_is_a_clear_error_not_the_affine_answer(aligned, served):
    """The database says the data set has a deformation field; where the file cannot be read the sync answer is
    a clear error naming it, never the affine part alone."""
    from brainmap.server.errors import ApiError
    from brainmap.server.routes_sync import load_data_set
    from brainmap.store.database import open_database

    data = aligned.parent / "data"
    broken = aligned.parent / "broken"
    shutil.copytree(data, broken)
    nrrd = next(broken.rglob("deformation.nrrd"))
    nrrd.write_bytes(b"NRRD0004\nnot a field\n")
    database = open_database(None, broken, create=False)
    dataset_id = read_dataset(aligned, check_files=False).id
    with database.engine.connect() as connection:
        with pytest.raises(ApiError) as caught:
            load_data_set(connection, dataset_id, broken)
        assert caught.value.status == 503 and "deformation.nrrd" in str(caught.value)
        assert load_data_set(connection, dataset_id, data).deformation is not None
