"""Loading pipeline outputs and the bundled ontology into the database: ``brainmap load DIR...``.

What is loaded, from each path given (a folder is searched recursively; hidden files, ``*.tmp`` and
``*.record.json`` are skipped):

* the bundled ontology, always: Structure rows (graph_order, ``structure_id_path`` as ``"/997/8/"``, colour,
  parent, depth), StructureSet rows and their members;
* the fixed rows Allen's queries expect: Products 1 "Mouse Brain" (``Mouse``, the ISH product) and 5 "Mouse
  Connectivity Projection" (``MouseConn``), PlaneOfSection 1 coronal and 2 sagittal, ReferenceSpace 9;
* data set folders (``dataset.json``, see ``docs/dataset-format.md``): the SectionDataSet (plane, product,
  ``failed`` from its metadata), its SectionImages with their Alignment2d, its Alignment3d, and from
  ``metadata``: ``gene`` / ``genes`` (an acronym or ``{acronym, name, entrez_id, id}``), ``probe``,
  ``specimen_id`` / ``specimen_name``, ``donor_name``, ``sex``, ``strain``, ``transgenic_line(s)``,
  ``injection_structures`` (ids or acronyms), ``primary_injection_structure``, ``injection_coordinates_um``
  ([AP, DV, LR] um; or ``injection_x/y/z``) and ``injection_volume``;
* unionize tables (``*unionize*.csv``, ``.csv.gz`` or ``.parquet``) with the columns of
  :data:`~brainmap.pipeline.unionize.PROJECTION_UNIONIZE_COLUMNS` (ProjectionStructureUnionize, recognised by
  ``is_injection``) or :data:`~brainmap.pipeline.unionize.ISH_UNIONIZE_COLUMNS` (StructureUnionize); an empty
  ``experiment_id`` / ``section_data_set_id`` is the id of the data set folder the table sits in; other columns
  (a pandas index, ...) are ignored;
* volumes (``.nrrd``, ``.mhd``, ``.raw``, ``.mha``, ``.zip``; not the section TIFFs under ``images/``, nor the
  virtual microscope's ``truth/``): WellKnownFile rows with the path relative to the data directory, size and
  sha256, attached to the data set whose folder holds them; the file type is the name without extension
  (``projection_density_100``; a deformation field's ``dfmfld.mhd`` and ``dfmfld.raw`` get Allen's
  ``DeformationFieldHeader`` and ``DeformationFieldVoxels``).

The data directory is the server's: a data set folder given from outside it is first copied into it
(hard-linked where possible) as ``DATA_DIR/{product}/{id}/`` (:mod:`brainmap.store.data_dir`), and what is
registered is the copy. A loose volume outside the data directory is refused. After the database, the search
stores under ``DATA_DIR/search/`` are brought up to date (:mod:`brainmap.search.build`).

Loading is idempotent: every row is upserted by its id or natural key (a gene by acronym, a unionize row by
data set, structure, hemisphere and ``is_injection``, a file by path) and only rows whose values differ are
written, so loading the same folders twice changes nothing. What a data set no longer has (an image, a gene link,
a unionize row, a file) is deleted with it. Everything is read and checked first and written in one transaction:
a malformed folder fails with an error naming the file and leaves the database and the data directory as they
were (nothing is created before every input has been read and checked).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, text, tuple_
from sqlalchemy import update as update_

from brainmap.atlas import StructureTree
from brainmap.errors import BrainmapError, FormatError
from brainmap.store import models as m
from brainmap.specimen.deformation import ALLEN_FILE_TYPES as ALLEN_DEFORMATION_TYPES
from brainmap.store.data_dir import EXCLUDED_FOLDERS, FolderImport, dataset_target, is_inside
from brainmap.store.database import Database, data_directory, open_database
from brainmap.store.options import add_load_arguments
from brainmap.store.validate import check_csv_table, load_lock

__all__ = [
    "CONNECTIVITY_PRODUCT_ID",
    "ISH_PRODUCT_ID",
    "PLANE_IDS",
    "REFERENCE_SPACE_ID",
    "LoadError",
    "LoadPlan",
    "LoadReport",
    "apply_load",
    "load_paths",
    "plan_load",
    "main",
    "run_load_command",
]

ISH_PRODUCT_ID = 1
CONNECTIVITY_PRODUCT_ID = 5
REFERENCE_SPACE_ID = 9
PLANE_IDS = {"coronal": 1, "sagittal": 2}

_PRODUCTS = [
    {"id": ISH_PRODUCT_ID, "name": "Mouse Brain", "abbreviation": "Mouse",
     "description": "In situ hybridization gene expression in the adult mouse brain"},
    {"id": CONNECTIVITY_PRODUCT_ID, "name": "Mouse Connectivity Projection", "abbreviation": "MouseConn",
     "description": "Axonal projections imaged by serial two-photon tomography"},
]
_PRODUCT_OF = {"ish": ISH_PRODUCT_ID, "connectivity": CONNECTIVITY_PRODUCT_ID}
_PLANES = [{"id": i, "name": name} for name, i in PLANE_IDS.items()]
_REFERENCE_SPACES = [{"id": REFERENCE_SPACE_ID, "name": "Mouse CCF v3 (PIR)",
                      "description": "Allen Common Coordinate Framework v3, 2017 annotation; (AP, DV, LR) microns. "
                                     "Sagittal data are registered into it directly (Allen's space 10 flip folded "
                                     "into tvr)."}]

_VOLUME_SUFFIXES = (".nrrd", ".mhd", ".raw", ".mha", ".zip")
_TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")
_CHUNK = 1000


class LoadError(FormatError):
    """An input that cannot be loaded; nothing was written."""


@dataclass
class LoadReport:
    """What a load did: rows per table before and after, rows written (inserted, updated or deleted)."""

    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    data_sets: list[int] = field(default_factory=list)
    unionize_files: list[str] = field(default_factory=list)
    volume_files: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)

    @property
    def total_written(self) -> int:
        """Rows inserted, updated or deleted in all tables (0 for a load that changed nothing)."""
        return sum(self.written.values())

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [f"{len(self.data_sets)} data set(s) ({', '.join(map(str, self.data_sets)) or 'none'}), "
                 f"{len(self.unionize_files)} unionize table(s), {len(self.volume_files)} volume file(s); "
                 f"{self.total_written:,} row(s) written"]
        lines += [f"  copied into the data directory: {c}" for c in self.copied]
        for table in sorted(self.after):
            if self.after[table] != self.before.get(table) or self.written.get(table):
                lines.append(f"  {table}: {self.before.get(table, 0):,} -> {self.after[table]:,} rows "
                             f"({self.written.get(table, 0):,} written)")
        if self.total_written == 0:
            lines.append("  nothing changed")
        lines += [f"  {line}" for line in self.search]
        return "\n".join(lines)


# -- values ------------------------------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """Plain Python values: numpy scalars unwrapped, NaN / infinity / pandas NA -> None."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return value


def _as_bool(value: Any, where: str) -> bool:
    value = _clean(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "t", "f", "1", "0"):
        return value.strip().lower() in ("true", "t", "1")
    raise LoadError(f"{where}: expected true or false, got {value!r}")


def _as_int(value: Any, where: str, optional: bool = False) -> int | None:
    value = _clean(value)
    if value is None and optional:
        return None
    if isinstance(value, bool):
        raise LoadError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise LoadError(f"{where}: expected an integer, got {value!r}")


def _as_float(value: Any, where: str) -> float | None:
    value = _clean(value)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LoadError(f"{where}: expected a number, got {value!r}") from None
    return number if math.isfinite(number) else None


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _differs(new: Any, current: Any) -> bool:
    """Whether a loaded value differs from the stored one (floats exactly, NULL only equal to NULL)."""
    if new is None or current is None:
        return (new is None) != (current is None)
    if isinstance(new, bool) or isinstance(current, bool):
        return bool(new) != bool(current)
    return new != current


def _relative(path: Path, data_dir: Path) -> str:
    path = path.resolve()
    try:
        return path.relative_to(data_dir).as_posix()
    except ValueError:
        return path.as_posix()


# -- discovery ---------------------------------------------------------------------------------------------------
@dataclass
class _Found:
    data_sets: list[Path] = field(default_factory=list)  # folders with dataset.json
    tables: list[tuple[Path, Path | None]] = field(default_factory=list)  # (file, enclosing data set folder)
    volumes: list[tuple[Path, Path | None]] = field(default_factory=list)


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.endswith(".tmp") or name.endswith(".record.json")


def _is_table(name: str) -> bool:
    lower = name.lower()
    return "unionize" in lower and lower.endswith(_TABLE_SUFFIXES)


def _discover(paths: Sequence[Path]) -> _Found:
    found = _Found()
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw).resolve()
        if not path.exists():
            raise LoadError(f"{raw}: no such file or folder")
        if path.is_file():
            enclosing = next((p for p in path.parents if (p / "dataset.json").is_file()), None)
            if path.name == "dataset.json":
                if path.parent not in seen:
                    seen.add(path.parent)
                    found.data_sets.append(path.parent)
            elif _is_table(path.name):
                found.tables.append((path, enclosing))
            elif path.name.lower().endswith(_VOLUME_SUFFIXES):
                found.volumes.append((path, enclosing))
            else:
                raise LoadError(f"{raw}: not a dataset.json, a unionize table (*unionize*.csv/.parquet) or a "
                                f"volume ({', '.join(_VOLUME_SUFFIXES)})")
            continue
        outer = next((p for p in path.parents if (p / "dataset.json").is_file()), None)
        for folder, dirs, files in os.walk(path):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not _skipped(d))
            is_data_set = "dataset.json" in files
            if is_data_set:
                if here not in seen:
                    seen.add(here)
                    found.data_sets.append(here)
                dirs[:] = [d for d in dirs if d != "images" and d not in EXCLUDED_FOLDERS]
            enclosing = next((p for p in [here, *here.parents] if p in seen), None) or outer
            for name in sorted(files):
                if _skipped(name):
                    continue
                if _is_table(name):
                    found.tables.append((here / name, enclosing))
                elif name.lower().endswith(_VOLUME_SUFFIXES):
                    found.volumes.append((here / name, enclosing))
    return found


# -- reading -----------------------------------------------------------------------------------------------------
@dataclass
class _DataSetRows:
    folder: Path
    data_set: dict[str, Any]
    products: list[int]
    genes: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    specimen: dict[str, Any]
    donor: dict[str, Any] | None
    transgenic_lines: list[str]
    injections: list[dict[str, Any]]
    images: list[dict[str, Any]]
    alignment2d: list[dict[str, Any]]
    alignment3d: dict[str, Any] | None
    product: str = ""
    plane: str = ""

    def move_to(self, folder: Path, data_dir: Path) -> None:
        """The rows of the same data set read from ``folder`` (its copy in the data directory)."""
        self.folder = folder
        self.data_set["storage_directory"] = _relative(folder, data_dir)


def _names(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _gene_row(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str) and value.strip():
        return {"acronym": value.strip()}
    if isinstance(value, Mapping) and isinstance(value.get("acronym"), str) and value["acronym"].strip():
        row: dict[str, Any] = {"acronym": value["acronym"].strip()}
        if value.get("name") is not None:
            row["name"] = str(value["name"])
        if value.get("entrez_id") is not None:
            row["entrez_id"] = _as_int(value["entrez_id"], f"{where}.entrez_id")
        if value.get("id") is not None:
            row["id"] = _as_int(value["id"], f"{where}.id")
        return row
    raise LoadError(f"{where}: expected a gene acronym or an object with 'acronym', got {value!r}")


def _structure_id(tree: StructureTree, value: Any, where: str) -> int:
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        try:
            return int(tree.get_structures_by_acronym([value.strip()])[0]["id"])
        except BrainmapError as exc:
            raise LoadError(f"{where}: {exc}") from None
    sid = _as_int(value, where)
    if sid not in tree:
        raise LoadError(f"{where}: structure id {sid} is not in the ontology")
    return sid  # type: ignore[return-value]


def _read_data_set(folder: Path, tree: StructureTree, data_dir: Path) -> _DataSetRows:
    from brainmap.specimen.folder import read_dataset

    try:
        ds = read_dataset(folder)
    except BrainmapError as exc:
        raise LoadError(f"data set folder {folder}: {exc}") from exc
    meta = ds.metadata
    where = f"{folder / 'dataset.json'}: metadata"
    failed = _as_bool(meta.get("failed", False), f"{where}.failed")
    genes = [_gene_row(g, f"{where}.gene") for g in _names(meta.get("genes", meta.get("gene")), where)]
    probes = []
    for p in _names(meta.get("probes", meta.get("probe")), where):
        if isinstance(p, Mapping) and p.get("name"):
            row = {"name": str(p["name"])}
            if p.get("id") is not None:
                row["id"] = _as_int(p["id"], f"{where}.probe.id")
            probes.append(row)
        elif isinstance(p, str) and p.strip():
            probes.append({"name": p.strip()})
        else:
            raise LoadError(f"{where}.probe: expected a probe name or an object with 'name', got {p!r}")
    specimen_id = _as_int(meta.get("specimen_id", ds.id), f"{where}.specimen_id")
    specimen_name = meta.get("specimen_name", meta.get("specimen"))
    specimen = {"id": specimen_id, "name": str(specimen_name) if specimen_name else str(specimen_id)}
    lines = [str(x) for x in _names(meta.get("transgenic_lines", meta.get("transgenic_line")), where) if x]
    donor = None
    if any(meta.get(k) is not None for k in ("donor_name", "sex", "strain")) or lines:
        donor = {"name": str(meta.get("donor_name") or f"donor of specimen {specimen['name']}"),
                 "sex": None if meta.get("sex") is None else str(meta["sex"]),
                 "strain": None if meta.get("strain") is None else str(meta["strain"])}
    injections = []
    structures = [_structure_id(tree, s, f"{where}.injection_structures")
                  for s in _names(meta.get("injection_structures"), where)]
    primary = meta.get("primary_injection_structure")
    primary_id = _structure_id(tree, primary, f"{where}.primary_injection_structure") if primary is not None \
        else (structures[0] if structures else None)
    if primary_id is not None and primary_id not in structures:
        structures.insert(0, primary_id)
    coords = meta.get("injection_coordinates_um")
    if coords is None and all(meta.get(k) is not None for k in ("injection_x", "injection_y", "injection_z")):
        coords = [meta["injection_x"], meta["injection_y"], meta["injection_z"]]
    if coords is not None and (not isinstance(coords, (list, tuple)) or len(coords) != 3):
        raise LoadError(f"{where}.injection_coordinates_um: expected [AP, DV, LR] in microns, got {coords!r}")
    ap, dv, ml = (_as_float(c, f"{where}.injection_coordinates_um") for c in coords) if coords else (None,) * 3
    volume = _as_float(meta.get("injection_volume", meta.get("injection_volume_mm3")),
                       f"{where}.injection_volume")
    for sid in dict.fromkeys(structures):
        injections.append({"specimen_id": specimen_id, "structure_id": sid,
                           "primary_injection_structure_id": primary_id, "coordinates_ap": ap,
                           "coordinates_dv": dv, "coordinates_ml": ml, "injection_volume": volume})
    data_set = {
        "id": ds.id, "plane_of_section_id": PLANE_IDS[ds.plane], "specimen_id": specimen_id,
        "reference_space_id": REFERENCE_SPACE_ID if ds.alignment3d is not None else None, "failed": failed,
        "section_thickness": ds.section_thickness_um, "sampling_um": ds.sampling_um,
        "storage_directory": _relative(folder, data_dir),
    }
    images, alignment2d = [], []
    for image in ds.sorted_images():
        images.append({"id": image.id, "data_set_id": ds.id, "section_number": image.section_number,
                       "width": image.width, "height": image.height, "resolution": ds.pixel_size_um,
                       "failed": image.failed})
        if image.alignment2d is not None:
            alignment2d.append({"section_image_id": image.id, **image.alignment2d.to_allen()})
    alignment3d = ({"section_data_set_id": ds.id, **ds.alignment3d.to_allen()}
                   if ds.alignment3d is not None else None)
    return _DataSetRows(folder, data_set, [_PRODUCT_OF[ds.product]], genes, probes, specimen, donor, lines,
                        injections, images, alignment2d, alignment3d, ds.product, ds.plane)


_PROJECTION_VALUES = [c.name for c in m.ProjectionStructureUnionize.__table__.columns
                      if c.name not in ("id", "section_data_set_id", "structure_id", "hemisphere_id",
                                        "is_injection")]
_ISH_VALUES = [c.name for c in m.StructureUnionize.__table__.columns
               if c.name not in ("id", "section_data_set_id", "structure_id")]


def _read_table(path: Path) -> Any:
    import pandas as pd

    try:
        if path.name.lower().endswith(".parquet"):
            try:
                return pd.read_parquet(path)
            except ImportError as exc:
                raise LoadError(f"{path}: reading parquet needs pyarrow ({exc})") from None
        check_csv_table(path)  # whole rows only: a file cut mid-row fails here (store/validate.py)
        return pd.read_csv(path)
    except FormatError as exc:
        raise LoadError(str(exc)) from None
    except Exception as exc:  # pandas raises many kinds; name the file
        raise LoadError(f"{path}: cannot be read as a table: {exc}") from exc


def _unionize_rows(path: Path, enclosing_id: int | None, tree: StructureTree) -> tuple[str, list[dict[str, Any]]]:
    """("projection" | "ish", rows) of one unionize table, checked."""
    frame = _read_table(path)
    columns = set(frame.columns)
    projection = "is_injection" in columns or "projection_density" in columns
    kind = "projection" if projection else "ish"
    if not projection and "expression_energy" not in columns and "expression_density" not in columns:
        raise LoadError(f"{path}: neither a ProjectionStructureUnionize table (is_injection, projection_density, "
                        "...) nor a StructureUnionize table (expression_density, expression_energy, ...)")
    required = ["structure_id", "hemisphere_id", "is_injection"] if projection else ["structure_id"]
    missing = [c for c in required if c not in columns]
    if missing:
        raise LoadError(f"{path}: missing column(s) {', '.join(missing)}")
    if not projection and "hemisphere_id" in columns:
        # Allen's StructureUnionize has no hemisphere: per-hemisphere ISH tables give their both-hemisphere rows.
        frame = frame[frame["hemisphere_id"] == 3].reset_index(drop=True)
    id_column = next((c for c in ("section_data_set_id", "experiment_id") if c in columns), None)
    values = _PROJECTION_VALUES if projection else _ISH_VALUES
    lists = {c: frame[c].tolist() for c in [*required, *values, "id", id_column] if c and c in columns}
    rows = []
    known = set(int(i) for i in tree.ids_array())
    for k in range(len(frame)):
        where = f"{path}: row {k + 1}"
        data_set_id = _as_int(lists[id_column][k], f"{where}: {id_column}", optional=True) if id_column else None
        if data_set_id is None:
            data_set_id = enclosing_id
        if data_set_id is None:
            raise LoadError(f"{where}: no experiment_id / section_data_set_id, and the table is not inside a data "
                            "set folder")
        structure_id = _as_int(lists["structure_id"][k], f"{where}: structure_id")
        if structure_id not in known:
            raise LoadError(f"{where}: structure_id {structure_id} is not in the ontology")
        row: dict[str, Any] = {"section_data_set_id": data_set_id, "structure_id": structure_id}
        if projection:
            hemisphere = _as_int(lists["hemisphere_id"][k], f"{where}: hemisphere_id")
            if hemisphere not in (1, 2, 3):
                raise LoadError(f"{where}: hemisphere_id must be 1, 2 or 3, got {hemisphere}")
            row["hemisphere_id"] = hemisphere
            row["is_injection"] = _as_bool(lists["is_injection"][k], f"{where}: is_injection")
        for c in values:
            row[c] = _as_float(lists[c][k], f"{where}: {c}") if c in lists else None
        if "id" in lists:
            rid = _as_int(lists["id"][k], f"{where}: id", optional=True)
            if rid is not None:
                row["id"] = rid
        rows.append(row)
    return kind, rows


# -- writing -----------------------------------------------------------------------------------------------------
class _Writer:
    """Upserts and scoped deletions on one connection, counting the rows written per table."""

    def __init__(self, conn: Connection, report: LoadReport) -> None:
        self.conn = conn
        self.report = report
        self.dialect = conn.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise LoadError(f"loading supports SQLite and PostgreSQL, not {self.dialect}")

    def upsert(self, table: Table, rows: Sequence[dict[str, Any]], key: Sequence[str],
               update: Sequence[str] | None = None) -> None:
        """Insert the ``rows`` whose ``key`` is new; update, where a value differs, those that exist.

        The existing rows are read first and compared here, so that an unchanged row is not written at all
        (a second load writes nothing) and the number of rows written is exact on every backend.
        """
        if not rows:
            return
        rows = list({tuple(row[k] for k in key): row for row in rows}.values())
        columns = sorted({c for row in rows for c in row})
        compared = [c for c in (update if update is not None else columns) if c in columns and c not in key
                    and c != "id"]
        existing = self._existing(table, key, compared, [tuple(row[k] for k in key) for row in rows])
        new: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        changed: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            current = existing.get(tuple(row[k] for k in key))
            if current is None:
                new[tuple(sorted(row))].append(row)
                continue
            differing = tuple(c for c in compared if c in row and _differs(row[c], current[c]))
            if differing:
                changed[differing].append({**{f"key_{k}": row[k] for k in key}, **{c: row[c] for c in differing}})
        for group in new.values():
            for start in range(0, len(group), _CHUNK):
                self.conn.execute(insert(table), group[start:start + _CHUNK])
            self.report.written[table.name] += len(group)
        for differing, group in changed.items():
            stmt = (update_(table).where(*[table.c[k] == bindparam(f"key_{k}") for k in key])
                    .values({c: bindparam(c) for c in differing}))
            self.conn.execute(stmt, group)
            self.report.written[table.name] += len(group)

    def _existing(self, table: Table, key: Sequence[str], columns: Sequence[str],
                  keys: Sequence[tuple]) -> dict[tuple, dict[str, Any]]:
        """Key -> current values of ``columns`` for the rows of ``keys`` that exist."""
        found: dict[tuple, dict[str, Any]] = {}
        selected = [table.c[k] for k in key] + [table.c[c] for c in columns]
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            if len(key) == 1:
                condition = table.c[key[0]].in_([k[0] for k in chunk])
            else:
                condition = tuple_(*[table.c[k] for k in key]).in_(chunk)
            for record in self.conn.execute(select(*selected).where(condition)):
                values = tuple(record)
                found[values[:len(key)]] = dict(zip(columns, values[len(key):]))
        return found

    def sync(self, table: Table, rows: Sequence[dict[str, Any]], key: Sequence[str],
             scope: Mapping[str, Any], update: Sequence[str] | None = None) -> None:
        """Upsert ``rows`` and delete the rows in ``scope`` whose key is not among them.

        ``scope`` maps columns to a value or to a list of values (the rows whose column is one of them).
        """
        self.upsert(table, rows, key, update)
        self.delete_stale(table, {tuple(row[k] for k in key) for row in rows}, key, scope)

    def delete_stale(self, table: Table, keep: set[tuple], key: Sequence[str], scope: Mapping[str, Any]) -> None:
        """Delete the rows in ``scope`` whose ``key`` is not in ``keep``."""
        where = []
        for column, value in scope.items():
            if isinstance(value, (list, tuple, set)):
                if not value:
                    return
                where.append(table.c[column].in_(sorted(value)))
            else:
                where.append(table.c[column] == value)
        existing = self.conn.execute(select(*[table.c[k] for k in key]).where(*where)).all()
        stale = [tuple(r) for r in existing if tuple(r) not in keep]
        for start in range(0, len(stale), _CHUNK):
            chunk = stale[start:start + _CHUNK]
            if len(key) == 1:
                condition = table.c[key[0]].in_([k[0] for k in chunk])
            else:
                condition = tuple_(*[table.c[k] for k in key]).in_(chunk)
            result = self.conn.execute(delete(table).where(*where, condition))
            self.report.written[table.name] += max(result.rowcount or 0, 0)

    def ids_by(self, table: Table, column: str, values: Iterable[Any]) -> dict[Any, int]:
        values = list(dict.fromkeys(values))
        found: dict[Any, int] = {}
        for start in range(0, len(values), _CHUNK):
            chunk = values[start:start + _CHUNK]
            for value, rid in self.conn.execute(select(table.c[column], table.c.id).where(table.c[column].in_(chunk))):
                found[value] = rid
        return found

    def fix_sequence(self, table: Table) -> None:
        """After explicit ids on PostgreSQL, move the id sequence past them."""
        if self.dialect != "postgresql":
            return
        sequence = self.conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table.name}).scalar()
        if sequence:
            self.conn.execute(text("SELECT setval(CAST(:s AS regclass), GREATEST((SELECT MAX(id) FROM "
                                   f"{self.conn.dialect.identifier_preparer.quote(table.name)}), 1))"),
                              {"s": sequence})


def _tables() -> dict[str, Table]:
    return {name: table for name, table in m.Base.metadata.tables.items()}


def _load_fixed_rows(writer: _Writer) -> None:
    writer.upsert(m.Product.__table__, _PRODUCTS, ["id"])
    writer.upsert(m.PlaneOfSection.__table__, _PLANES, ["id"])
    writer.upsert(m.ReferenceSpace.__table__, _REFERENCE_SPACES, ["id"])


def _load_ontology(writer: _Writer, tree: StructureTree) -> None:
    frame = tree.to_dataframe()
    levels = _structure_levels()
    rows = []
    for record in frame.to_dict("records"):
        rows.append({**levels.get(int(record["id"]), {"atlas_id": None, "st_level": None}),
            "id": int(record["id"]), "acronym": record["acronym"], "name": record["name"],
            "parent_structure_id": _clean(record["parent_structure_id"]), "depth": int(record["depth"]),
            "graph_id": _clean(record["graph_id"]), "graph_order": int(record["graph_order"]),
            "structure_id_path": record["structure_id_path"], "color_hex_triplet": record["color_hex_triplet"],
        })
    writer.upsert(m.Structure.__table__, rows, ["id"])
    sets = tree.structure_set_table()
    writer.upsert(m.StructureSet.__table__,
                  [{"id": int(r["id"]), "name": _clean(r["name"]), "description": _clean(r["description"])}
                   for r in sets.to_dict("records")], ["id"])
    members = [{"structure_set_id": int(s), "structure_id": int(r["id"])}
               for r in frame.to_dict("records") for s in r["structure_set_ids"]]
    table = m.Base.metadata.tables["structure_sets_structures"]
    writer.upsert(table, members, ["structure_set_id", "structure_id"])
    keep = {(r["structure_set_id"], r["structure_id"]) for r in members}
    stale = [tuple(r) for r in writer.conn.execute(select(table.c.structure_set_id, table.c.structure_id))
             if tuple(r) not in keep]
    if stale:
        result = writer.conn.execute(delete(table).where(
            tuple_(table.c.structure_set_id, table.c.structure_id).in_(stale)))
        writer.report.written[table.name] += max(result.rowcount or 0, 0)


def _structure_levels() -> dict[int, dict[str, Any]]:
    """Allen's ``atlas_id`` and ``st_level`` of each bundled structure (``structure_levels.csv``)."""
    import csv

    from brainmap.atlas.bundled import structure_levels_path

    with open(structure_levels_path(), newline="") as fh:
        return {int(r["id"]): {"atlas_id": _as_int(r["atlas_id"] or None, "atlas_id", optional=True),
                               "st_level": _as_int(r["st_level"] or None, "st_level", optional=True)}
                for r in csv.DictReader(fh)}


def _merged(rows: Iterable[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows of the same ``key`` merged: a field given (not None) by any of them is kept (the last one wins)."""
    merged: dict[Any, dict[str, Any]] = {}
    for row in rows:
        target = merged.setdefault(row[key], {})
        target.update({k: v for k, v in row.items() if v is not None or k not in target})
    return list(merged.values())


def _load_data_sets(writer: _Writer, data_sets: Sequence[_DataSetRows]) -> None:
    """Every data set's rows, table by table (a few statements whatever the number of data sets)."""
    if not data_sets:
        return
    t = _tables()
    ds_ids = [d.data_set["id"] for d in data_sets]

    genes = _merged((g for d in data_sets for g in d.genes), "acronym")
    writer.upsert(t["genes"], genes, ["acronym"])
    gene_ids = writer.ids_by(t["genes"], "acronym", [g["acronym"] for g in genes])
    if any("id" in g for g in genes):
        writer.fix_sequence(t["genes"])
    probes = _merged(({**p, "gene_id": gene_ids[d.genes[0]["acronym"]] if d.genes else None}
                      for d in data_sets for p in d.probes), "name")
    writer.upsert(t["probes"], probes, ["name"])
    probe_ids = writer.ids_by(t["probes"], "name", [p["name"] for p in probes])
    if any("id" in p for p in probes):
        writer.fix_sequence(t["probes"])

    donors = list({d.donor["name"]: d.donor for d in data_sets if d.donor is not None}.values())
    writer.upsert(t["donors"], donors, ["name"])
    donor_ids = writer.ids_by(t["donors"], "name", [d["name"] for d in donors])
    line_names = sorted({n for d in data_sets for n in d.transgenic_lines})
    writer.upsert(t["transgenic_lines"], [{"name": n} for n in line_names], ["name"], update=[])
    line_ids = writer.ids_by(t["transgenic_lines"], "name", line_names)
    donor_lines = {(donor_ids[d.donor["name"]], line_ids[n]) for d in data_sets if d.donor is not None
                   for n in d.transgenic_lines}
    writer.sync(t["donors_transgenic_lines"],
                [{"donor_id": a, "transgenic_line_id": b} for a, b in sorted(donor_lines)],
                ["donor_id", "transgenic_line_id"], {"donor_id": list(donor_ids.values())})

    specimens = {d.specimen["id"]: {**d.specimen, "donor_id": donor_ids[d.donor["name"]] if d.donor else None}
                 for d in data_sets}
    writer.upsert(t["specimens"], list(specimens.values()), ["id"])
    injections = list({(i["specimen_id"], i["structure_id"]): i for d in data_sets for i in d.injections}.values())
    writer.sync(t["injections"], injections, ["specimen_id", "structure_id"], {"specimen_id": list(specimens)})

    writer.upsert(t["section_data_sets"], [d.data_set for d in data_sets], ["id"])
    for table, column, pairs in (
        ("section_data_sets_products", "product_id", [(d.data_set["id"], p) for d in data_sets for p in d.products]),
        ("section_data_sets_genes", "gene_id",
         [(d.data_set["id"], gene_ids[g["acronym"]]) for d in data_sets for g in d.genes]),
        ("section_data_sets_probes", "probe_id",
         [(d.data_set["id"], probe_ids[p["name"]]) for d in data_sets for p in d.probes]),
    ):
        rows = [{"section_data_set_id": a, column: b} for a, b in dict.fromkeys(pairs)]
        writer.sync(t[table], rows, ["section_data_set_id", column], {"section_data_set_id": ds_ids})

    # Images: stale ones go first (a section number may have moved to another image id), then the upsert.
    images = [i for d in data_sets for i in d.images]
    writer.delete_stale(t["section_images"], {(i["id"],) for i in images}, ["id"], {"data_set_id": ds_ids})
    writer.upsert(t["section_images"], images, ["id"])
    alignments = [a for d in data_sets for a in d.alignment2d]
    writer.upsert(t["alignment2ds"], alignments, ["section_image_id"])
    writer.delete_stale(t["alignment2ds"], {(a["section_image_id"],) for a in alignments}, ["section_image_id"],
                        {"section_image_id": [i["id"] for i in images]})
    writer.sync(t["alignment3ds"], [d.alignment3d for d in data_sets if d.alignment3d],
                ["section_data_set_id"], {"section_data_set_id": ds_ids})


def _load_files(writer: _Writer, volumes: list[tuple[Path, Path | None]], data_set_ids: dict[Path, int],
                data_dir: Path) -> list[str]:
    t = _tables()
    types = sorted({_file_type(p) for p, _ in volumes})
    writer.upsert(t["well_known_file_types"], [{"name": n} for n in types], ["name"], update=[])
    type_ids = writer.ids_by(t["well_known_file_types"], "name", types)
    rows_by_scope: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    paths = []
    for path, enclosing in volumes:
        attachable = data_set_ids.get(enclosing) if enclosing is not None else None
        relative = _relative(path, data_dir)
        paths.append(relative)
        rows_by_scope[attachable].append({
            "attachable_id": attachable, "attachable_type": "SectionDataSet" if attachable is not None else None,
            "well_known_file_type_id": type_ids[_file_type(path)], "path": relative,
            "file_size": path.stat().st_size, "sha256": file_sha256(path)})
    files = t["well_known_files"]
    rows = [r for group in rows_by_scope.values() for r in group]
    writer.upsert(files, rows, ["path"])
    # The files of the data sets loaded now that their folders no longer hold go.
    writer.delete_stale(files, {(r["path"],) for r in rows}, ["path"],
                        {"attachable_type": "SectionDataSet", "attachable_id": list(data_set_ids.values())})
    return paths


def _file_type(path: Path) -> str:
    name = path.name
    if name in ALLEN_DEFORMATION_TYPES:  # dfmfld.mhd/.raw: Allen's type names
        return ALLEN_DEFORMATION_TYPES[name]
    for suffix in (".nii.gz", *_VOLUME_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _count_rows(conn: Connection) -> dict[str, int]:
    return {name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in m.Base.metadata.tables.items() if name != "schema_info"}


@dataclass
class LoadPlan:
    """Everything a load will write, read and checked first (:func:`plan_load`); nothing is written yet."""

    root: Path
    tree: StructureTree
    data_sets: list[_DataSetRows]
    ids: dict[Path, int]
    unionizes: dict[tuple[str, int], list[dict[str, Any]]]
    tables: list[Path]
    volumes: list[tuple[Path, Path | None]]
    copies: dict[Path, Path]  # data set folder outside the data directory -> its place inside

    def relocate(self) -> None:
        """Point every path at the data set folders' places in the data directory (after the copy)."""
        def moved(path: Path | None) -> Path | None:
            if path is None:
                return None
            for source, target in self.copies.items():
                if path == source or path.is_relative_to(source):
                    return target / path.relative_to(source)
            return path

        for rows in self.data_sets:
            if rows.folder in self.copies:
                rows.move_to(self.copies[rows.folder], self.root)
        self.ids = {moved(folder): i for folder, i in self.ids.items()}  # type: ignore[misc]
        self.volumes = [(moved(p), moved(e)) for p, e in self.volumes]  # type: ignore[misc]


def plan_load(paths: Sequence[str | os.PathLike[str]] = (), *, data_dir: str | os.PathLike[str] | None = None,
              tree: StructureTree | None = None, progress: Callable[[str], None] | None = None) -> LoadPlan:
    """Find, read and check everything under ``paths`` (see the module docstring) without writing anything.

    Raises :class:`LoadError` naming the file and what is wrong.
    """
    tree = tree if tree is not None else StructureTree.bundled()
    root = data_directory(data_dir).resolve()
    say = progress or (lambda _message: None)
    found = _discover([Path(p) for p in paths])
    say(f"found {len(found.data_sets)} data set folder(s), {len(found.tables)} unionize table(s), "
        f"{len(found.volumes)} volume(s)")
    data_sets = [_read_data_set(folder, tree, root) for folder in found.data_sets]
    ids: dict[Path, int] = {}
    for rows in data_sets:
        ds_id = rows.data_set["id"]
        if ds_id in ids.values():
            other = next(f for f, i in ids.items() if i == ds_id)
            raise LoadError(f"{rows.folder} and {other} both hold SectionDataSet {ds_id}")
        ids[rows.folder] = ds_id
    copies = {rows.folder: dataset_target(root, rows.product, rows.data_set["id"])
              for rows in data_sets if not is_inside(rows.folder, root)}
    for path, enclosing in found.volumes:
        if enclosing is None and not is_inside(path, root):
            raise LoadError(f"{path}: a volume outside the data directory {root} and outside any data set folder; "
                            "load the data set folder that holds it (it is copied in), or put the file inside "
                            "the data directory")
    unionizes: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for path, enclosing in found.tables:
        kind, rows = _unionize_rows(path, ids.get(enclosing) if enclosing is not None else None, tree)
        for row in rows:
            unionizes[(kind, row["section_data_set_id"])].append(row)
    for (kind, ds_id), rows in unionizes.items():
        key = ("structure_id", "hemisphere_id", "is_injection") if kind == "projection" else ("structure_id",)
        seen: set[tuple] = set()
        for row in rows:
            k = tuple(row[c] for c in key)
            if k in seen:
                raise LoadError(f"the unionize rows of data set {ds_id} hold structure {k[0]}"
                                + (f", hemisphere {k[1]}, is_injection {k[2]}" if kind == "projection" else "")
                                + " more than once")
            seen.add(k)
    return LoadPlan(root, tree, data_sets, ids, unionizes, [p for p, _ in found.tables], found.volumes, copies)


def load_paths(database: Database, paths: Sequence[str | os.PathLike[str]] = (), *,
               data_dir: str | os.PathLike[str] | None = None, tree: StructureTree | None = None,
               progress: Callable[[str], None] | None = None, search: bool = True) -> LoadReport:
    """Load the bundled ontology and everything found under ``paths`` (see the module docstring).

    ``data_dir`` (default: :func:`~brainmap.store.database.data_directory`) is the data directory: data set
    folders from outside it are copied in, and file paths are stored relative to it. ``tree`` replaces the
    bundled ontology. ``search``: bring the search stores up to date. Raises :class:`LoadError` (a
    ``FormatError``) for a malformed input; then nothing is written.
    """
    plan = plan_load(paths, data_dir=data_dir, tree=tree, progress=progress)
    return apply_load(database, plan, progress=progress, search=search)


def apply_load(database: Database, plan: LoadPlan, *, progress: Callable[[str], None] | None = None,
               search: bool = True) -> LoadReport:
    """Write what :func:`plan_load` read, under the load lock (one load at a time per database,
    :func:`~brainmap.store.validate.load_lock`): copies into the data directory, the database (one
    transaction), then the search stores."""
    say = progress or (lambda _message: None)
    with load_lock(database, say):
        return _apply(database, plan, say, search)


def _apply(database: Database, plan: LoadPlan, say: Callable[[str], None], search: bool) -> LoadReport:
    report = LoadReport()
    report.data_sets = sorted(plan.ids.values())
    report.unionize_files = [str(p) for p in plan.tables]
    copies = FolderImport()
    try:
        for source, target in plan.copies.items():
            say(f"copying {source} into the data directory as {target.relative_to(plan.root)}")
            copies.stage(source, target)
            report.copied.append(f"{source} -> {target}")
        copies.swap_in()
        plan.relocate()
        database.create_schema()
        _write_database(database, plan, report, say)
    except BaseException:
        copies.rollback()
        raise
    copies.commit()
    if search:
        report.search = _update_search(plan, say)
    return report


def _write_database(database: Database, plan: LoadPlan, report: LoadReport, say: Callable[[str], None]) -> None:
    unionizes, ids = plan.unionizes, plan.ids
    with database.engine.begin() as conn:
        report.before = _count_rows(conn)
        writer = _Writer(conn, report)
        _load_fixed_rows(writer)
        say("loading the ontology")
        _load_ontology(writer, plan.tree)
        say(f"loading {len(plan.data_sets)} data set(s)")
        _load_data_sets(writer, plan.data_sets)
        referenced = sorted({ds_id for _, ds_id in unionizes})
        if referenced:
            t = m.SectionDataSet.__table__
            present = {r for (r,) in conn.execute(select(t.c.id).where(t.c.id.in_(referenced)))}
            absent = [i for i in referenced if i not in present]
            if absent:
                raise LoadError(f"unionize rows name SectionDataSet(s) {', '.join(map(str, absent[:10]))}, which are "
                                "neither in the database nor among the data set folders being loaded")
        for kind, table, key in (
            ("projection", m.ProjectionStructureUnionize.__table__,
             ["section_data_set_id", "structure_id", "hemisphere_id", "is_injection"]),
            ("ish", m.StructureUnionize.__table__, ["section_data_set_id", "structure_id"]),
        ):
            scope = sorted(ds_id for k, ds_id in unionizes if k == kind)
            rows = [row for ds_id in scope for row in unionizes[(kind, ds_id)]]
            if not rows:
                continue
            say(f"loading {len(rows):,} {kind} unionize rows of {len(scope)} data set(s)")
            writer.sync(table, rows, key, {"section_data_set_id": scope})
            if any("id" in r for r in rows):
                writer.fix_sequence(table)
        if plan.volumes or ids:
            say(f"registering {len(plan.volumes)} volume file(s)")
            report.volume_files = _load_files(writer, plan.volumes, ids, plan.root)
        report.after = _count_rows(conn)


def _update_search(plan: LoadPlan, say: Callable[[str], None]) -> list[str]:
    """The loaded data sets' rows in the search stores (:func:`brainmap.search.build.update_search_stores`)."""
    from brainmap.pipeline.run.layout import PipelineFolder
    from brainmap.search.build import search_source, update_search_stores

    sources = []
    for rows in plan.data_sets:
        if rows.data_set["failed"]:
            continue
        gene = rows.genes[0]["acronym"] if rows.genes else None
        source = search_source(rows.data_set["id"], rows.product, rows.plane, gene,
                               PipelineFolder.of(rows.folder).grids)
        if source is not None:
            sources.append(source)
    if not sources:
        return []
    say(f"updating the search stores with {len(sources)} data set(s)")
    return [str(r) for r in update_search_stores(plan.root, sources)]


# -- command line ------------------------------------------------------------------------------------------------
def _make_tiles(plan: LoadPlan, say: Callable[[str], None]) -> None:
    """The section images' Deep Zoom pyramids for the portal (:mod:`brainmap.specimen.pyramid`); a failure only
    says so (the server makes a missing pyramid on first view)."""
    import time

    from brainmap.specimen.pyramid import make_folder_pyramids

    folders = [rows.folder for rows in plan.data_sets]
    if not folders:
        return
    started = time.perf_counter()
    try:
        count = make_folder_pyramids(plan.root, folders)
    except (BrainmapError, OSError, ValueError) as exc:
        say(f"section tile pyramids not made ({exc}); the server makes each on its first view")
        return
    say(f"made the tile pyramids of {count} section image(s) in {time.perf_counter() - started:.1f} s")


def run_load_command(dirs: Sequence[str | os.PathLike[str]], *, database_url: str | None = None,
                     data_dir: str | os.PathLike[str] | None = None, out: Callable[[str], None] = print) -> int:
    """What ``brainmap load DIR...`` does: check everything, then load; print a summary; the exit status (0).

    Nothing is created (no data directory, no database file) when an input is missing or malformed."""
    if not dirs:
        raise LoadError("nothing to load: name data set folders, folders holding them, unionize tables or volumes "
                        "(e.g. brainmap load brainmap-demo/specimens)")
    say = lambda message: out(f"  {message}")  # noqa: E731
    plan = plan_load(dirs, data_dir=data_dir, progress=say)
    plan.root.mkdir(parents=True, exist_ok=True)
    database = open_database(database_url, plan.root, create=False)
    try:
        out(f"data directory: {plan.root}")
        out(f"database: {database.url}")
        report = apply_load(database, plan, progress=say)
        out(report.summary())
    finally:
        database.dispose()
    _make_tiles(plan, say)
    out(f"serve it with: brainmap serve --data-dir {data_dir if data_dir is not None else plan.root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m brainmap.store.load DIR...``."""
    parser = argparse.ArgumentParser(prog="brainmap load", description="Load pipeline outputs and the bundled "
                                     "ontology into the database (idempotent).")
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_load_command(args.dirs, database_url=args.database_url, data_dir=args.data_dir)
    except BrainmapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
