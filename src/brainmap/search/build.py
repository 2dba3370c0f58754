"""The search stores of a data directory, built and kept up to date from the data sets' grid files.

``brainmap load`` calls :func:`update_search_stores` after the database is written. Stores live under
``DATA_DIR/search/`` (the folders :mod:`brainmap.server.searches` reads):

* ``mouse`` (sagittal ISH) and ``mouse_coronal`` (coronal ISH): expression energy on Allen's 200 um grid, one row
  per data set, 8-bit companded;
* ``connectivity``: projection density on the 100 um grid (finer grids are block-averaged to 100 um), float32.

Updates are incremental: each store keeps ``sources.json`` (data set id -> sha256 of the grid file its row was
made from). A data set whose file is unchanged is skipped, a new one appended, a changed one replaced (the store
is rewritten without its old row into a new folder, which then takes the old one's place).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from brainmap.errors import FormatError
from brainmap.io.atomic import atomic_write

__all__ = ["CONNECTIVITY_STORE", "EXPRESSION_STORES", "SearchSource", "StoreUpdate", "search_source",
           "update_search_stores"]

#: Expression store folder by plane of section (Allen's ``set`` values of the expression services).
EXPRESSION_STORES = {"sagittal": "mouse", "coronal": "mouse_coronal"}
#: The projection-density store's folder.
CONNECTIVITY_STORE = "connectivity"
_SOURCES = "sources.json"


@dataclass(frozen=True)
class SearchSource:
    """One data set's row of a search store: where its grid file is and what the row's metadata say.

    Attributes
    ----------
    data_set_id : the SectionDataSet id (the store's row id).
    store : the store folder's name under ``search/`` (``mouse``, ``mouse_coronal``, ``connectivity``).
    path : the grid file (ISH ``energy.mhd`` or ``energy_200.nrrd``; ``projection_density_{res}.nrrd``).
    gene, plane : row metadata of expression stores.
    """

    data_set_id: int
    store: str
    path: Path
    gene: str = ""
    plane: str = ""


def search_source(data_set_id: int, product: str, plane: str, gene: str | None, grids: Path) -> SearchSource | None:
    """The search row of a data set whose grid files are in ``grids`` (None when it has none usable).

    Examples
    --------
    >>> search_source(1, "ish", "coronal", "Pvalb", Path("/nonexistent")) is None
    True
    """
    if product == "ish":
        for name in ("energy.mhd", "energy_200.nrrd"):
            if (grids / name).is_file():
                return SearchSource(int(data_set_id), EXPRESSION_STORES[plane], grids / name, gene or "", plane)
        return None
    for resolution in (100, 50, 25, 10):
        path = grids / f"projection_density_{resolution}.nrrd"
        if path.is_file():
            return SearchSource(int(data_set_id), CONNECTIVITY_STORE, path)
    return None


@dataclass
class StoreUpdate:
    """What one store's update did: rows appended, replaced and left as they were."""

    store: str
    appended: int = 0
    replaced: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return (f"search/{self.store}: {self.appended} row(s) added, {self.replaced} replaced, "
                f"{self.unchanged} unchanged")


def _sha256(path: Path) -> str:
    from brainmap.pipeline.run.records import file_sha256

    return file_sha256(path)


def _read_grid(source: SearchSource, shape: tuple[int, int, int]) -> np.ndarray:
    """The source's volume on the store's grid, flat in Allen's order (AP fastest)."""
    if source.path.suffix == ".mhd":
        from brainmap.io.metaimage import read_metaimage

        volume, _ = read_metaimage(source.path)
    else:
        from brainmap.io.nrrd import read_nrrd

        volume, _ = read_nrrd(source.path)
    volume = np.asarray(volume, dtype=np.float64)
    if volume.shape != shape:
        factors = [a // b if b and a % b == 0 else 0 for a, b in zip(volume.shape, shape)]
        if min(factors) < 1 or len(set(factors)) != 1:
            raise FormatError(f"{source.path}: a {volume.shape} volume does not fit the search grid {shape}")
        f = factors[0]  # block average: a 25 um grid is 4 x 4 x 4 voxels of the 100 um one
        volume = volume.reshape(shape[0], f, shape[1], f, shape[2], f).mean(axis=(1, 3, 5))
    return volume.ravel(order="F")


def _create(folder: Path, name: str):
    from brainmap.search.connectivity import create_projection_store
    from brainmap.search.matrix import MatrixStore

    if name == CONNECTIVITY_STORE:
        return create_projection_store(folder)
    return MatrixStore.create(folder)


def _read_sources(folder: Path) -> dict[int, str]:
    try:
        return {int(k): str(v) for k, v in json.loads((folder / _SOURCES).read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _write_sources(folder: Path, sources: dict[int, str]) -> None:
    with atomic_write(folder / _SOURCES, "w", encoding="utf-8") as fh:
        json.dump({str(k): v for k, v in sorted(sources.items())}, fh, indent=1)


def _update_store(root: Path, name: str, sources: Sequence[SearchSource]) -> StoreUpdate:
    from brainmap.search.matrix import MatrixStore

    folder = root / name
    report = StoreUpdate(name)
    store = MatrixStore.open(folder) if (folder / "matrix.json").is_file() else _create(folder, name)
    recorded = _read_sources(folder)
    present = set(int(i) for i in store.data_set_ids)
    digests = {s.data_set_id: _sha256(s.path) for s in sources}
    changed = [s for s in sources if s.data_set_id in present and recorded.get(s.data_set_id) != digests[s.data_set_id]]
    todo = [s for s in sources if s.data_set_id not in present] + changed
    report.unchanged = len(sources) - len(todo)
    if changed:  # rewrite the store without the changed rows, then put it in the old one's place
        gone = {s.data_set_id for s in changed}
        keep = [int(i) for i in store.data_set_ids if int(i) not in gone]
        fresh = folder.with_name(f".{name}.new")
        shutil.rmtree(fresh, ignore_errors=True)
        if keep:
            store.subset(fresh, data_set_ids=keep)
        else:
            _create(fresh, name)
        old = folder.with_name(f".{name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(fresh, folder)
        shutil.rmtree(old, ignore_errors=True)
        store = MatrixStore.open(folder)
        report.replaced = len(changed)
    for source in todo:
        values = _read_grid(source, tuple(store.grid.shape))
        if name == CONNECTIVITY_STORE:
            store.append(values[None, :], [source.data_set_id], no_data_value=None)
        else:
            store.append(values[None, :], [source.data_set_id], gene=source.gene, plane=source.plane)
        recorded[source.data_set_id] = digests[source.data_set_id]
    report.appended = len(todo) - report.replaced
    _write_sources(folder, {k: v for k, v in recorded.items() if k in set(int(i) for i in store.data_set_ids)})
    return report


def update_search_stores(data_dir: str | os.PathLike[str], sources: Sequence[SearchSource],
                         say: Callable[[str], None] | None = None) -> list[StoreUpdate]:
    """Add or replace the rows of ``sources`` in the stores under ``data_dir/search`` (see the module
    docstring); returns what was done to each store touched."""
    root = Path(data_dir) / "search"
    root.mkdir(parents=True, exist_ok=True)
    by_store: dict[str, list[SearchSource]] = {}
    for source in sources:
        by_store.setdefault(source.store, []).append(source)
    reports = []
    for name, group in sorted(by_store.items()):
        report = _update_store(root, name, group)
        if say is not None:
            say(str(report))
        reports.append(report)
    return reports
