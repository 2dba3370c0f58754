"""The search back-ends of one server process: the expression matrices and the connectivity search.

Files in the data directory:

* ``search/mouse/`` and ``search/mouse_coronal/``: :class:`~brainmap.search.MatrixStore` folders of ISH
  expression energy on the 200 um grid (Allen's ``set`` values of ``mouse_differential`` and
  ``mouse_correlation``);
* ``search/connectivity/``: a projection-density store on the 100 um grid
  (:func:`brainmap.search.connectivity.create_projection_store`), one row per connectivity experiment of the
  database; optional (the spatial and correlation searches need it, source and target searches do not).

The connectivity search also needs the experiments and their ProjectionStructureUnionize rows, which are read
from the database: every connectivity SectionDataSet (product 5) that is not failed and has an injection, with
its injection structures, primary structure, coordinates (``coordinates_ap/dv/ml`` as ``injection_x/y/z``),
volume, specimen name, donor strain and sex and first transgenic line. A store is opened once and reopened when
its ``matrix.json`` changes; the connectivity search is rebuilt when the database's change token
(:class:`~brainmap.server.state.DataVersion`) or the store changes.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any, Hashable

from sqlalchemy import Connection, and_, select

from brainmap.server.errors import ApiError, NotFound
from brainmap.store import models as m

__all__ = ["CONNECTIVITY_STORE", "EXPRESSION_SETS", "SearchBackends", "experiments_frame", "search_backends",
           "unionizes_frame", "warm_up"]

log = logging.getLogger("brainmap.server")

#: Allen's ``set`` values of the expression services -> store folders under ``search/``.
EXPRESSION_SETS = ("mouse", "mouse_coronal")
#: The projection-density store's folder under ``search/``.
CONNECTIVITY_STORE = "connectivity"
CONNECTIVITY_PRODUCT_ID = 5

_UNIONIZE_METRICS = ("projection_volume", "normalized_projection_volume", "projection_density",
                     "projection_energy", "projection_intensity")


def experiments_frame(connection: Connection) -> Any:
    """The connectivity experiments of the database as :class:`~brainmap.search.connectivity.ConnectivitySearch`
    wants them (see the module docstring)."""
    import pandas as pd

    sds, inj, spec, donor = m.SectionDataSet, m.Injection, m.Specimen, m.Donor
    products = m.section_data_sets_products
    rows = connection.execute(
        select(sds.id, spec.name, donor.strain, donor.sex, inj.structure_id, inj.primary_injection_structure_id,
               inj.coordinates_ap, inj.coordinates_dv, inj.coordinates_ml, inj.injection_volume)
        .join(products, and_(products.c.section_data_set_id == sds.id,
                             products.c.product_id == CONNECTIVITY_PRODUCT_ID))
        .join(spec, spec.id == sds.specimen_id)
        .join(inj, inj.specimen_id == spec.id)
        .outerjoin(donor, donor.id == spec.donor_id)
        .where(sds.failed.is_(False))
        .order_by(sds.id, inj.id)).all()
    lines = {}
    line_rows = connection.execute(
        select(sds.id, m.TransgenicLine.name)
        .join(spec, spec.id == sds.specimen_id)
        .join(m.donors_transgenic_lines, m.donors_transgenic_lines.c.donor_id == spec.donor_id)
        .join(m.TransgenicLine, m.TransgenicLine.id == m.donors_transgenic_lines.c.transgenic_line_id)
        .order_by(sds.id, m.TransgenicLine.name))
    for data_set_id, name in line_rows:
        lines.setdefault(data_set_id, name)
    experiments: dict[int, dict[str, Any]] = {}
    for r in rows:
        e = experiments.get(r[0])
        if e is None:
            primary = r.primary_injection_structure_id if r.primary_injection_structure_id is not None \
                else r.structure_id
            e = experiments[r[0]] = {
                "id": r[0], "specimen_name": r.name, "strain": r.strain, "gender": r.sex,
                "transgenic_line": lines.get(r[0], ""), "product_id": CONNECTIVITY_PRODUCT_ID,
                "primary_injection_structure": primary, "injection_structures": [],
                "injection_x": r.coordinates_ap, "injection_y": r.coordinates_dv, "injection_z": r.coordinates_ml,
                "injection_volume": r.injection_volume}
        e["injection_structures"].append(r.structure_id)
    frame = pd.DataFrame(list(experiments.values()), columns=[
        "id", "specimen_name", "strain", "gender", "transgenic_line", "product_id", "primary_injection_structure",
        "injection_structures", "injection_x", "injection_y", "injection_z", "injection_volume"])
    for column in ("injection_x", "injection_y", "injection_z", "injection_volume"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def unionizes_frame(connection: Connection, experiment_ids: list[int]) -> Any:
    """The ProjectionStructureUnionize rows of those experiments (``experiment_id`` = the data set id)."""
    import pandas as pd

    u = m.ProjectionStructureUnionize
    columns = [u.section_data_set_id.label("experiment_id"), u.structure_id, u.hemisphere_id, u.is_injection,
               *[getattr(u, c) for c in _UNIONIZE_METRICS]]
    names = ["experiment_id", "structure_id", "hemisphere_id", "is_injection", *_UNIONIZE_METRICS]
    parts = []
    for start in range(0, len(experiment_ids), 500):
        chunk = experiment_ids[start:start + 500]
        parts.extend(connection.execute(select(*columns).where(u.section_data_set_id.in_(chunk))).all())
    frame = pd.DataFrame([tuple(r) for r in parts], columns=names)
    frame["is_injection"] = frame["is_injection"].astype(bool)
    for c in _UNIONIZE_METRICS:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
    return frame


class SearchBackends:
    """The stores and the connectivity search of one process, opened or built on first use."""

    def __init__(self, state: Any):
        self.state = state
        self.root = Path(state.data_dir) / "search"
        self._stores: dict[str, tuple[int, Any]] = {}
        self._connectivity: tuple[Hashable, Any] | None = None
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()

    def _store_stamp(self, name: str) -> int | None:
        try:
            return (self.root / name / "matrix.json").stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def store(self, name: str, what: str) -> Any:
        """The matrix store ``search/NAME`` (:class:`NotFound` if absent), reopened after an append."""
        from brainmap.search import MatrixStore

        stamp = self._store_stamp(name)
        if stamp is None:
            from brainmap.search.results import BUILD_HINT

            raise NotFound(f"{what}: this server has no search store {name!r} (search/{name} in its data "
                           f"directory): {BUILD_HINT}")
        with self._lock:
            found = self._stores.get(name)
            if found is None or found[0] != stamp:
                found = (stamp, MatrixStore.open(self.root / name))
                self._stores[name] = found
            return found[1]

    def expression_store(self, set_name: str) -> Any:
        """The expression store of Allen's ``set`` (``mouse`` or ``mouse_coronal``)."""
        return self.store(set_name, f"expression search set {set_name!r}")

    def connectivity(self) -> Any:
        """The :class:`~brainmap.search.connectivity.ConnectivitySearch` of the database and the projection
        store, rebuilt when either changes."""
        key = (self.state.data_version.current(), self._store_stamp(CONNECTIVITY_STORE))
        current = self._connectivity
        if current is not None and key[0] is not None and current[0] == key:
            return current[1]
        with self._build_lock:
            current = self._connectivity
            if current is not None and key[0] is not None and current[0] == key:
                return current[1]
            search = self._build_connectivity()
            self._connectivity = (key, search)
            return search

    def _build_connectivity(self) -> Any:
        from brainmap.search.connectivity import ConnectivitySearch
        from brainmap.search.results import SearchInputError

        def read(connection: Connection) -> tuple[Any, Any]:
            experiments = experiments_frame(connection)
            return experiments, unionizes_frame(connection, experiments["id"].tolist())

        experiments, unionizes = self.state.run(read)
        if experiments.empty:
            raise NotFound("this server has no connectivity experiments (product 5, not failed, with an injection)")
        store = self.store(CONNECTIVITY_STORE, "projection density") \
            if self._store_stamp(CONNECTIVITY_STORE) is not None else None
        try:
            return ConnectivitySearch(experiments, unionizes, store)
        except SearchInputError as exc:
            raise ApiError(f"the connectivity search data are inconsistent: {exc}", 503) from None


def search_backends(state: Any) -> SearchBackends:
    """The process's :class:`SearchBackends` (made on first use)."""
    backends = getattr(state, "searches", None)
    if backends is None:
        with state._lock:
            backends = getattr(state, "searches", None)
            if backends is None:
                backends = SearchBackends(state)
                state.searches = backends
    return backends


def warm_up(state: Any) -> None:
    """Load what first requests would otherwise wait for (run in a background thread at start-up): the sync
    reference space with its label index, each expression store with its grid (and the search kernels, by a
    one-row search), and the connectivity search; then freeze the loaded objects out of the garbage collector
    (:func:`gc.freeze`). Failures are logged, not raised: requests report them."""
    started = time.perf_counter()
    steps: list[tuple[str, Any]] = [("sync reference space",
                                     lambda: state.reference_space(state.settings.sync_resolution_um).label_index)]
    backends = search_backends(state)
    for name in EXPRESSION_SETS:
        if backends._store_stamp(name) is not None:
            def expression(name: str = name) -> None:
                from brainmap.search import differential_search

                differential_search(backends.expression_store(name), [997], [997], num_rows=1)
            steps.append((f"expression search {name}", expression))
    steps.append(("connectivity search", backends.connectivity))
    try:
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - reported when a request needs it
                log.info("warm-up: %s not ready (%s)", what, exc)
        # What was loaded lives as long as the process: keep it out of every later garbage collection (a full
        # collection traversing millions of long-lived objects pauses all requests for tens of milliseconds).
        gc.collect()
        gc.freeze()
        log.info("warm-up done in %.1f s", time.perf_counter() - started)
    finally:
        state.warmed.set()
