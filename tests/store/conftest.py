"""Store fixtures: a realistic data directory, and databases on both backends.

Every database test runs twice: on SQLite (a file) and on PostgreSQL (a throwaway cluster, see
``tests/store/postgres.py``; skipped, with the reason, where no server can be had).

The data directory (built once per session) holds:

* connectivity data sets 100 (coronal; injection in VISp and VISl, Syt6-Cre_KI148; projection unionize rows
  computed by :func:`unionize_projection` on random 100 um grids; two volumes) and 101 (injection in MOp, wild
  type, no unionize);
* ISH data sets 200 (sagittal, Pdyn, with StructureUnionize rows from :func:`unionize_expression`), 201
  (coronal, Adora2a, failed) and 202 (sagittal, Pdyn again);
* real experiments: 112672974 and twelve VISp wild-type experiments, with Allen's metadata (Oh et al. 2014,
  Knox et al. 2019) and their real ProjectionStructureUnionize rows (``tests/store/data``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from brainmap.specimen.folder import write_dataset
from brainmap.specimen.model import SectionDataSet, SectionImage, iter_image_files, nominal_tvr
from brainmap.specimen.transforms import Affine2d, Affine3d, Alignment2d, Alignment3d

STORE_DATA = Path(__file__).resolve().parent / "data"
REAL_PROJECTION_CSVS = ["unionizes_112672974_partial.csv", "unionizes_visp_wt_2018.csv"]


# -- the data directory ----------------------------------------------------------------------------------------
def _alignment2d(pixel_um: float, shift: float) -> Alignment2d:
    return Alignment2d.from_tsv(Affine2d(np.diag([pixel_um, pixel_um]), np.array([shift, -shift])))


def _alignment3d(plane: str, rng: np.random.Generator) -> Alignment3d:
    tvr = Affine3d(nominal_tvr(plane).matrix @ (np.eye(3) + rng.normal(scale=0.02, size=(3, 3))),
                   rng.uniform([100, 100, 100], [400, 400, 400]))
    return Alignment3d.from_tvr(tvr)


def make_data_set(folder: Path, dataset_id: int, *, plane: str, product: str, metadata: dict[str, Any],
                  n_sections: int = 3, failed_sections: tuple[int, ...] = (), unaligned_sections: tuple[int, ...] = (),
                  rng: np.random.Generator) -> SectionDataSet:
    """A small data set folder (8 x 6 pixel images) written with ``write_dataset``."""
    connectivity = product == "connectivity"
    thickness, step = (100.0, 1) if connectivity else (25.0, 8)
    pixel = 0.35 if connectivity else 1.0
    images = []
    for k in range(n_sections):
        images.append(SectionImage(
            id=dataset_id * 1000 + k, section_number=3 + k * step, channels=["red", "green"] if connectivity
            else ["ish"], width=8, height=6, failed=k in failed_sections,
            alignment2d=None if k in unaligned_sections else _alignment2d(pixel, 10.0 * k)))
    dataset = SectionDataSet(id=dataset_id, plane=plane, product=product, section_thickness_um=thickness,
                             sampling_um=100.0 if connectivity else 200.0, pixel_size_um=pixel, images=images,
                             alignment3d=_alignment3d(plane, rng), metadata=metadata)
    arrays = {(image.id, channel): rng.integers(0, 4000, image.shape, dtype=np.uint16)
              for image, channel, _ in iter_image_files(dataset)}
    write_dataset(folder, dataset, arrays)
    return dataset


@dataclass
class StoreData:
    """The built data directory and what the tests compare against."""

    root: Path
    data_sets: dict[int, SectionDataSet]
    folders: dict[int, Path]
    projection_100: pd.DataFrame  # computed rows of data set 100
    ish_200: pd.DataFrame  # computed rows of data set 200
    real_projection: pd.DataFrame  # the real rows, both files
    volumes: list[Path]


def _projection_grids(space: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shape = space.shape
    ap, dv, lr = np.indices(shape, sparse=True)
    blob = np.exp(-(((ap - 90) ** 2 + (dv - 15) ** 2 + (lr - 85) ** 2) / 12.0))
    injection_fraction = np.where(blob > 0.05, blob, 0.0)
    return {
        "data_mask": (rng.random(shape) > 0.02).astype(np.float32),
        "sum_pixels": rng.uniform(1e4, 1e5, shape),
        "injection_fraction": injection_fraction,
        "injection_density": injection_fraction * 0.8,
        "injection_energy": injection_fraction * 150,
        "injection_sum_pixel_intensities": injection_fraction * 1e6,
        "projection_density": rng.random(shape) ** 4,
        "projection_energy": rng.random(shape) * 40,
        "sum_pixel_intensities": rng.uniform(1e6, 1e7, shape),
    }


def build_store_data(root: Path, space100: Any) -> StoreData:
    from brainmap.io.metaimage import write_metaimage
    from brainmap.io.nrrd import write_nrrd
    from brainmap.pipeline.unionize import unionize_expression, unionize_projection

    rng = np.random.default_rng(20240611)
    data_sets: dict[int, SectionDataSet] = {}
    folders: dict[int, Path] = {}

    def add(dataset_id: int, sub: str, **kwargs: Any) -> Path:
        folder = root / sub / str(dataset_id)
        data_sets[dataset_id] = make_data_set(folder, dataset_id, rng=rng, **kwargs)
        folders[dataset_id] = folder
        return folder

    f100 = add(100, "connectivity", plane="coronal", product="connectivity", n_sections=5, failed_sections=(2,),
               unaligned_sections=(4,), metadata={
                   "injection_structures": [385, "VISl"], "primary_injection_structure": "VISp",
                   "injection_coordinates_um": [9230.0, 1910.0, 8430.0], "injection_volume": 0.25,
                   "transgenic_line": "Syt6-Cre_KI148", "sex": "M", "strain": "C57BL/6J",
                   "specimen_name": "Syt6-Cre_KI148-100"})
    add(101, "connectivity", plane="coronal", product="connectivity", metadata={
        "injection_structures": ["MOp"], "injection_coordinates_um": [3500.0, 1500.0, 7500.0],
        "injection_volume": 0.5, "sex": "F", "strain": "C57BL/6J", "specimen_name": "C57BL/6-101"})
    f200 = add(200, "ish", plane="sagittal", product="ish", metadata={
        "gene": {"acronym": "Pdyn", "name": "prodynorphin", "entrez_id": 18610}, "probe": "RP_Pdyn_1",
        "specimen_id": 9001, "specimen_name": "ISH-9001"})
    add(201, "ish", plane="coronal", product="ish", metadata={"gene": "Adora2a", "failed": True})
    add(202, "ish", plane="sagittal", product="ish", metadata={"gene": "Pdyn", "specimen_id": 9001,
                                                               "specimen_name": "ISH-9001"})

    # Real experiments with Allen's metadata.
    knox = json.loads((STORE_DATA / "experiments_visp_wt_knox2019.json").read_text())
    for key, e in sorted(knox.items()):
        add(int(key), "real", plane="coronal", product="connectivity", n_sections=1, metadata={
            "injection_structures": e["injection_structures"],
            "primary_injection_structure": e["primary_injection_structure"],
            "injection_x": e["injection_x"], "injection_y": e["injection_y"], "injection_z": e["injection_z"],
            "injection_volume": e["injection_volume"], "specimen_name": e["specimen_name"], "strain": e["strain"],
            "sex": e["gender"]})
    add(112672974, "real", plane="coronal", product="connectivity", n_sections=1, metadata={
        "injection_structures": ["ENTm", "VISp", "VISpl", "TEa", "PAR", "SUBv"],
        "primary_injection_structure": "ENTm", "injection_volume": 0.26903944, "specimen_name": "378-1053"})

    # Pipeline outputs inside the data set folders: unionize rows without ids (filled from the folder).
    projection = unionize_projection(_projection_grids(space100, rng), space100)
    projection.to_csv(f100 / "structure_unionizes.csv", index=False)
    shape = space100.shape
    expression = unionize_expression({
        "sum_pixels": rng.uniform(0, 1e4, shape), "sum_expressing_pixels": rng.uniform(0, 1e3, shape),
        "sum_expressing_pixel_intensity": rng.uniform(0, 1e5, shape),
        "sum_pixel_intensity": rng.uniform(1e5, 1e6, shape), "energy": rng.random(shape)}, space100)
    expression.to_csv(f200 / "structure_unionizes.csv", index=False)
    grids = f100 / "grids"
    grids.mkdir()
    write_nrrd(grids / "projection_density_100.nrrd", rng.random((10, 8, 12)).astype(np.float32), spacing_um=100)
    write_metaimage(grids / "energy.mhd", rng.random((6, 5, 4)).astype(np.float32), spacing=200.0)
    volumes = sorted(p for p in grids.iterdir())

    real = root / "real"
    frames = []
    for name in REAL_PROJECTION_CSVS:
        (real / name).write_bytes((STORE_DATA / name).read_bytes())
        frames.append(pd.read_csv(STORE_DATA / name))
    return StoreData(root, data_sets, folders, projection, expression, pd.concat(frames, ignore_index=True),
                     volumes)


@pytest.fixture(scope="session")
def store_data(tmp_path_factory: pytest.TempPathFactory, space100: Any) -> StoreData:
    return build_store_data(tmp_path_factory.mktemp("store-data"), space100)


# -- databases --------------------------------------------------------------------------------------------------
def _postgres_helper() -> Any:
    """``tests/store/postgres.py`` as a module (the tests run with --import-mode=importlib)."""
    name = "brainmap_tests_store_postgres"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("postgres.py"))
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """The PostgreSQL server of the session, or a skip saying why there is none."""
    helper = _postgres_helper()
    try:
        server = helper.postgres_server()
    except helper.PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL variant skipped: {exc}")
    try:
        yield server
    finally:
        server.stop()


def new_database_url(backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'brainmap.sqlite'}"
    return request.getfixturevalue("postgres").new_database()


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session", params=BACKENDS)
def loaded_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    store_data: StoreData) -> Iterator[Any]:
    """A database per backend with everything of :func:`store_data` loaded once (read-only for the tests)."""
    from brainmap.store.database import open_database
    from brainmap.store.load import load_paths

    database = open_database(new_database_url(request.param, request, tmp_path_factory))
    report = load_paths(database, [store_data.root], data_dir=store_data.root)
    database.first_report = report  # type: ignore[attr-defined]
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A new, empty database per test and backend (for tests that write)."""
    from brainmap.store.database import open_database

    database = open_database(new_database_url(request.param, request, tmp_path_factory))
    try:
        yield database
    finally:
        database.dispose()


def table_snapshot(database: Any) -> dict[str, list[tuple]]:
    """Every table's rows, sorted: for checking that nothing changed."""
    from sqlalchemy import select

    from brainmap.store.models import Base

    snapshot = {}
    with database.engine.connect() as connection:
        for name, table in sorted(Base.metadata.tables.items()):
            rows = connection.execute(select(table)).all()
            snapshot[name] = sorted((tuple(r) for r in rows), key=repr)
    return snapshot


def row_counts(database: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from brainmap.store.models import Base

    with database.engine.connect() as connection:
        return {name: connection.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in sorted(Base.metadata.tables.items())}


@pytest.fixture(scope="session")
def snapshot() -> Any:
    """``snapshot(database)``: every table's rows, sorted."""
    return table_snapshot


@pytest.fixture(scope="session")
def counts() -> Any:
    """``counts(database)``: rows per table."""
    return row_counts
