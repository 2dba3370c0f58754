"""Structure unionize tables: filtering, ranking and the experiments x structures projection matrix.

The projection matrix is a pivot done with NumPy on the concatenated columns of the experiments' cached
tables (no loop over rows): a row's matrix row is its table's position (its ``experiment_id`` checked), its
column one hash lookup of the key ``hemisphere_id * 2**32 + structure_id``; one fancy assignment fills the
matrix.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from brainmap.atlas import StructureTree

__all__ = ["HEMISPHERE_LABELS", "filter_unionizes", "projection_matrix", "rank_unionizes"]

#: Column labels of the projection matrix: ``{acronym}-{L|R|B}`` (1 left, 2 right, 3 both).
HEMISPHERE_LABELS = {1: "L", 2: "R", 3: "B"}
_KEY_SHIFT = np.int64(1) << np.int64(32)


def _id_list(values: Any, name: str) -> list[int]:
    if values is None:
        return []
    if isinstance(values, (int, np.integer)):
        return [int(values)]
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be integer ids, got {values!r}") from None


def structure_id_set(structure_ids: Any, include_descendants: bool, tree: StructureTree | None) -> np.ndarray:
    """The structure ids (with their descendants when asked), as a sorted array."""
    ids = _id_list(structure_ids, "structure_ids")
    if include_descendants:
        if tree is None:
            raise ValueError("include_descendants needs the structure tree")
        ids = [d for group in tree.descendant_ids(ids) for d in group]
    return np.unique(np.asarray(ids, dtype=np.int64))


def filter_unionizes(unionizes: pd.DataFrame, is_injection: bool | None = None, structure_ids: Any = None,
                     include_descendants: bool = False, hemisphere_ids: Any = None,
                     tree: StructureTree | None = None) -> pd.DataFrame:
    """The rows of ``unionizes`` that are injection (or projection) rows, of the given structures (with their
    descendants) and hemispheres (1 left, 2 right, 3 both). None leaves a criterion out."""
    keep = np.ones(len(unionizes), dtype=bool)
    if is_injection is not None:
        keep &= unionizes["is_injection"].to_numpy(dtype=bool) == bool(is_injection)
    if structure_ids is not None:
        keep &= np.isin(unionizes["structure_id"].to_numpy(), structure_id_set(structure_ids, include_descendants,
                                                                                tree))
    if hemisphere_ids is not None:
        keep &= np.isin(unionizes["hemisphere_id"].to_numpy(), _id_list(hemisphere_ids, "hemisphere_ids"))
    return unionizes[keep]


def rank_unionizes(unionizes: pd.DataFrame, rank_on: str, n: int, threshold: float) -> list[dict[str, Any]]:
    """The ``n`` rows of largest ``rank_on`` above ``threshold`` (AllenSDK's "exceeds"), largest first (ties by
    structure id, then hemisphere), as records."""
    if rank_on not in unionizes.columns:
        raise ValueError(f"rank_on: no column {rank_on!r}; columns are {', '.join(map(str, unionizes.columns))}")
    values = unionizes[rank_on].to_numpy(dtype=np.float64)
    keep = np.flatnonzero(values > threshold)
    order = np.lexsort((unionizes["hemisphere_id"].to_numpy()[keep], unionizes["structure_id"].to_numpy()[keep],
                        -values[keep]))
    return unionizes.iloc[keep[order[:n]]].to_dict("records")


def projection_matrix(tables: Sequence[Mapping[str, np.ndarray]], experiment_ids: Sequence[int], structure_ids: Any,
                      hemisphere_ids: Any, parameter: str, acronyms: Mapping[int, str] | None = None,
                      graph_order: Mapping[int, int] | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``(matrix, columns)``: ``matrix[i, j]`` is ``parameter`` of the projection (non-injection) row of
    experiment ``experiment_ids[i]`` in column ``j`` (NaN where there is no row); columns are hemisphere-major
    (all structures of the first hemisphere, then the next), each ``{hemisphere_id, structure_id, label}``
    with ``label`` ``{acronym}-{L|R|B}``.

    ``tables[i]`` holds experiment ``experiment_ids[i]``'s rows: columns ``experiment_id``, ``structure_id``,
    ``hemisphere_id``, ``is_injection`` and ``parameter``. ``structure_ids`` / ``hemisphere_ids`` None: every
    one present (structures in ``graph_order`` when given, else by id).
    """
    if len(tables) != len(experiment_ids):
        raise ValueError(f"{len(tables)} tables for {len(experiment_ids)} experiments")
    for table in tables:
        if parameter not in table:
            raise ValueError(f"parameter: no unionize column {parameter!r}; columns are {', '.join(table)}")

    def column(name: str, dtype: Any) -> np.ndarray:
        parts = [np.asarray(t[name], dtype=dtype) for t in tables]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    rows = np.asarray(_id_list(experiment_ids, "experiment_ids"), dtype=np.int64)
    for experiment_id, table in zip(rows, tables):  # table i holds experiment i's rows: checked, not assumed
        ids = np.asarray(table["experiment_id"])
        if ids.size and not (ids == experiment_id).all():
            raise ValueError(f"the unionize table read for experiment {experiment_id} holds rows of experiment "
                             f"{int(ids[ids != experiment_id][0])}")
    lengths = np.array([len(t["experiment_id"]) for t in tables], dtype=np.int64)
    row_of = np.repeat(np.arange(rows.size), lengths)
    sid = column("structure_id", np.int64)
    hid = column("hemisphere_id", np.int64)
    projection = ~column("is_injection", bool)
    values = column(parameter, np.float64)

    if structure_ids is None:
        structures = np.unique(sid[projection])
        if graph_order:
            big = np.iinfo(np.int64).max
            order = np.array([graph_order.get(int(s), big) for s in structures], dtype=np.int64)
            structures = structures[np.lexsort((structures, order))]
    else:
        structures = np.asarray(_id_list(structure_ids, "projection_structure_ids"), dtype=np.int64)
    hemispheres = np.unique(hid[projection]) if hemisphere_ids is None else \
        np.asarray(_id_list(hemisphere_ids, "hemisphere_ids"), dtype=np.int64)

    col_keys = np.repeat(hemispheres, structures.size) * _KEY_SHIFT + np.tile(structures, hemispheres.size)
    matrix = np.full((rows.size, col_keys.size), np.nan)
    if col_keys.size and sid.size:
        # one hash lookup per row (pandas' hash table: linear time, no sort)
        col = pd.Index(col_keys).get_indexer(hid * _KEY_SHIFT + sid)
        ok = projection & (col >= 0)
        matrix[row_of[ok], col[ok]] = values[ok]

    acronyms = acronyms or {}
    columns = [{"hemisphere_id": int(h), "structure_id": int(s),
                "label": f"{acronyms.get(int(s), s)}-{HEMISPHERE_LABELS.get(int(h), h)}"}
               for h in hemispheres for s in structures]
    return matrix, columns
