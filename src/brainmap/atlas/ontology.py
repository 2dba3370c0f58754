"""The Allen structure ontology as a tree: :class:`StructureTree`.

A structure ontology ("structure graph") is a tree of brain structures. Each structure is a plain ``dict``
(a *node*) with at least these keys, named as in the Allen API and AllenSDK:

``id`` (int), ``acronym`` (str), ``name`` (str), ``structure_id_path`` (list of int, root first, ending with
the node's own id), ``rgb_triplet`` ([r, g, b], 0-255), ``graph_id`` (int or None), ``graph_order`` (int),
``structure_set_ids`` (list of int, possibly empty).

Loaders read the three formats Allen publishes:

* :meth:`StructureTree.from_structures_json` -- the flat list (``structures.json``), which carries structure
  set membership; :meth:`StructureTree.bundled` is this format for the copy shipped in the package.
* :meth:`StructureTree.from_structure_graph` -- the nested API format ``{success, msg: [{..., children}]}``.
  Wrapper nodes above the real root (such as id 0 "universe") are dropped.
* :meth:`StructureTree.from_csv` -- the flat 21-column export (``structure_id_path`` as ``"/997/8/"``).

The nested and CSV formats carry no structure set membership: by default the loaded nodes have empty
``structure_set_ids``; pass ``structure_sets_from=StructureTree.bundled()`` (or any tree) to copy membership
over by structure id.

Node indices and array helpers
------------------------------
Nodes are held sorted by ``graph_order``; a node's *index* is its position in that order (for the Allen
ontology, index == graph_order, and graph order is a preorder walk of the tree, so the descendants of a node
are a contiguous run of indices starting at the node). The vectorized helpers, built once per tree and
returned read-only, all speak indices: :meth:`~StructureTree.ids_array`, :meth:`~StructureTree.index_of`,
:meth:`~StructureTree.parent_index`, :meth:`~StructureTree.depth_array`,
:meth:`~StructureTree.ancestor_closure` (CSR pair) and :meth:`~StructureTree.ancestor_matrix` (dense bool).

Returned nodes are copies: mutating them does not change the tree.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import operator
import os
from enum import IntEnum
from functools import cache
from importlib import resources
from typing import Any, Iterable, Literal, TextIO, Union

import numpy as np
import numpy.typing as npt
import pandas as pd

from brainmap.errors import FormatError, UnknownStructureError, UnknownStructureSetError

__all__ = ["Node", "StructureSetId", "StructureTree"]

#: A structure: a plain dict with at least the keys listed in the module docstring.
Node = dict[str, Any]
PathOrFile = Union[str, "os.PathLike[str]", TextIO]

#: Keys that :class:`StructureTree` derives itself and therefore drops from incoming nodes (after checking them).
_DERIVED_KEYS = ("children", "parent_structure_id", "depth", "color_hex_triplet")
#: Extra columns of the CSV export kept on the nodes (as int or None), as the nested API format carries them.
_CSV_EXTRA_INT_COLUMNS = ("atlas_id", "ontology_id", "st_level", "hemisphere_id")


class StructureSetId(IntEnum):
    """Ids of well-known structure sets of the adult mouse ontology (structure graph 1).

    Members are ints, usable anywhere a set id is expected (``tree.structure_set_member_ids(StructureSetId.SUMMARY)``).
    """

    SUMMARY = 167587189  #: "Brain – Summary Structures": 316 non-overlapping structures covering the brain
    MAJOR_DIVISIONS = 687527670  #: "Brain - Major Divisions": 12 structures
    TARGET_SEARCH = 184527634  #: "Mouse Connectivity - Target Search": 840 structures
    DIFFERENTIAL_SEARCH = 12  #: "ABA - Differential Search": 843 structures
    FINE_STRUCTURE_SEARCH = 10  #: "ABA - Fine Structure Search": 74 structures
    CONNECTIVITY_SUMMARY = 687527945  #: "Mouse Connectivity - Summary": 293 structures
    HAS_SURFACE_MESH = 691663206  #: "Mouse Brain - Has Surface Mesh": 840 structures
    PROJECTION_PRIMARY_INJECTION = 114512891  #: "Mouse Connectivity - Projection Primary Injection Structures"
    PROJECTION_ALL_INJECTION = 112905828  #: "Mouse Connectivity - Projection All Injection Structures"
    MOUSE_AREAS = 3  #: "Mouse - Areas": 51 structures
    MOUSE_COARSE = 2  #: "Mouse - Coarse": 12 structures
    CELL_TYPES = 396673091  #: "Mouse Cell Types - Structures": visual areas with layers
    BRAIN_OBSERVATORY = 514166994  #: "Allen Brain Observatory targeted structure set": 7 visual areas


# ---------------------------------------------------------------------------------------------- helpers


def _read_json(path_or_obj: Any) -> Any:
    """JSON from a path or an open text file; any other object is returned as already parsed."""
    if isinstance(path_or_obj, (str, os.PathLike)):
        with open(path_or_obj, encoding="utf-8") as fh:
            try:
                return json.load(fh)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{os.fspath(path_or_obj)}: not valid JSON ({exc})") from exc
    if hasattr(path_or_obj, "read"):
        return json.load(path_or_obj)
    return path_or_obj


def _unwrap_api_envelope(data: Any, where: str) -> Any:
    """The ``msg`` of an Allen API response ``{success, msg, ...}``; other data unchanged."""
    if isinstance(data, dict) and "msg" in data:
        if data.get("success") is False:
            raise FormatError(f"{where}: the API response reports failure: {data.get('msg')!r}")
        return data["msg"]
    return data


def _as_int(value: Any, field: str, where: str, *, optional: bool = False) -> int | None:
    """``value`` as an int: ints, numpy integers, integral floats and decimal strings; None/''/NaN if optional."""
    if value is None or (isinstance(value, str) and value.strip() == "") or (
        isinstance(value, float) and value != value
    ):
        if optional:
            return None
        raise FormatError(f"{where}: missing {field}")
    if isinstance(value, bool):
        raise FormatError(f"{where}: {field} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if number.is_integer():
                    return int(number)
    raise FormatError(f"{where}: {field} must be an integer, got {value!r}")


def _parse_path(value: Any, where: str) -> list[int]:
    """A structure_id_path given as a list of ints or as the string form ``"/997/8/567/"``."""
    if isinstance(value, str):
        parts = [p for p in value.strip().split("/") if p != ""]
    elif isinstance(value, (list, tuple, np.ndarray)):
        parts = list(value)
    else:
        raise FormatError(f"{where}: structure_id_path must be a list of ids or '/a/b/c/', got {value!r}")
    if not parts:
        raise FormatError(f"{where}: empty structure_id_path")
    return [_as_int(p, "structure_id_path entry", where) for p in parts]  # type: ignore[misc]


def _hex_to_rgb(value: Any, where: str) -> list[int]:
    """``"B0F0FF"`` or ``"#b0f0ff"`` as ``[176, 240, 255]``."""
    text = str(value).strip().lstrip("#")
    if len(text) != 6:
        raise FormatError(f"{where}: color_hex_triplet must be 6 hex digits, got {value!r}")
    try:
        return [int(text[k : k + 2], 16) for k in (0, 2, 4)]
    except ValueError:
        raise FormatError(f"{where}: color_hex_triplet must be 6 hex digits, got {value!r}") from None


def _rgb_to_hex(rgb: Iterable[int]) -> str:
    """``[176, 240, 255]`` as ``"B0F0FF"`` (Allen's spelling: upper case, no '#')."""
    r, g, b = rgb
    return f"{r:02X}{g:02X}{b:02X}"


def _as_list(values: Any) -> list[Any]:
    """A list of the values asked for; a single id, acronym or name counts as a list of one."""
    if isinstance(values, (str, bytes, int, np.integer)) or (isinstance(values, np.ndarray) and values.ndim == 0):
        return [values.item() if isinstance(values, np.ndarray) else values]
    return list(values)


def _copy_node(node: Node) -> Node:
    """A copy of ``node`` whose lists are copies too (so callers cannot change the tree)."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in node.items()}


def _quoted(items: Iterable[Any]) -> str:
    return ", ".join(repr(x) for x in items)


@cache
def _bundled_structure_sets() -> dict[int, tuple[str, str]]:
    """Set id -> (name, description) from the package's ``structure_sets.csv``.

    Note: in that table the descriptions and four long names were truncated ("...") when it was printed.
    """
    text = resources.files("brainmap").joinpath("data", "ccf2017", "structure_sets.csv").read_text(encoding="utf-8")
    table: dict[int, tuple[str, str]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        table[int(row["id"])] = (row["name"], row.get("description_as_printed") or row.get("description") or "")
    return table


_BUNDLED_TREES: dict[type, "StructureTree"] = {}


# ---------------------------------------------------------------------------------------------- the tree


class StructureTree:
    """A structure ontology: lookups, relations, structure sets and vectorized index arrays.

    Parameters
    ----------
    nodes
        One dict per structure with at least ``id``, ``acronym``, ``name`` and ``structure_id_path`` (list of
        ints or ``"/997/8/"``), and a colour as ``rgb_triplet`` or ``color_hex_triplet``. ``graph_order``
        (if no node has one, the input order is used), ``graph_id`` (default None) and ``structure_set_ids``
        (default empty) are optional. Other keys are kept on the nodes; ``children``, ``parent_structure_id``,
        ``depth`` and ``color_hex_triplet`` are checked against the path/colour and then dropped (they are
        derived: see :meth:`parent_ids`, :meth:`depth`, :meth:`get_hex_colormap`).

    Raises
    ------
    FormatError
        Duplicate ids, acronyms, names or graph orders; a path not ending with the node's id; a path naming a
        structure absent from ``nodes`` (the tree must be closed under ancestors) or disagreeing with its
        parent's path; a bad colour.
    """

    def __init__(self, nodes: Iterable[Node]):
        raw = list(nodes)
        if not raw:
            raise FormatError("a StructureTree needs at least one structure")
        has_order = [isinstance(n, dict) and n.get("graph_order") is not None for n in raw]
        if any(has_order) and not all(has_order):
            missing = [n.get("id") for n, h in zip(raw, has_order) if not h]
            raise FormatError(f"graph_order is missing for {len(missing)} structure(s), e.g. id {missing[0]}")
        normalized = [self._normalize(n, position, all(has_order)) for position, n in enumerate(raw)]

        orders = [n["graph_order"] for n in normalized]
        if len(set(orders)) != len(orders):
            raise FormatError("graph_order values are not unique")
        normalized.sort(key=lambda n: n["graph_order"])
        self._nodes: list[Node] = normalized

        self._index: dict[int, int] = {}
        for i, n in enumerate(normalized):
            if n["id"] in self._index:
                raise FormatError(f"structure id {n['id']} appears more than once")
            self._index[n["id"]] = i
        self._by_acronym = self._unique_map("acronym")
        self._by_name = self._unique_map("name")

        n_nodes = len(normalized)
        parent = np.full(n_nodes, -1, dtype=np.intp)
        children: list[list[int]] = [[] for _ in range(n_nodes)]
        for i, node in enumerate(normalized):
            path = node["structure_id_path"]
            absent = [p for p in path if p not in self._index]
            if absent:
                raise FormatError(
                    f"structure {node['id']} ({node['acronym']}): its structure_id_path {path} names "
                    f"{_quoted(absent)}, not in the tree (a tree must include every ancestor of its structures)"
                )
            if len(path) > 1:
                p = self._index[path[-2]]
                if normalized[p]["structure_id_path"] != path[:-1]:
                    raise FormatError(
                        f"structure {node['id']}: structure_id_path {path} disagrees with its parent's "
                        f"{normalized[p]['structure_id_path']}"
                    )
                parent[i] = p
                children[p].append(i)  # in index (graph) order, since i increases
        self._parent = parent
        self._children = children
        self._depth = np.fromiter((len(n["structure_id_path"]) - 1 for n in normalized), np.intp, n_nodes)
        self._ids = np.fromiter((n["id"] for n in normalized), np.int64, n_nodes)

        # Preorder (children in graph order) and subtree sizes: descendants are preorder[pos[i] : pos[i] + size[i]].
        roots = [i for i in range(n_nodes) if parent[i] < 0]
        preorder: list[int] = []
        stack = roots[::-1]
        while stack:
            i = stack.pop()
            preorder.append(i)
            stack.extend(reversed(children[i]))
        self._preorder = np.asarray(preorder, dtype=np.intp)
        self._preorder_pos = np.empty(n_nodes, dtype=np.intp)
        self._preorder_pos[self._preorder] = np.arange(n_nodes)
        size = np.ones(n_nodes, dtype=np.intp)
        for i in preorder[::-1]:
            if parent[i] >= 0:
                size[parent[i]] += size[i]
        self._subtree_size = size

        # Ancestor closure, CSR: node i's ancestors (itself first, root last) are indices[indptr[i]:indptr[i+1]].
        indptr = np.zeros(n_nodes + 1, dtype=np.intp)
        np.cumsum(self._depth + 1, out=indptr[1:])
        indices = np.fromiter(
            (self._index[a] for n in normalized for a in reversed(n["structure_id_path"])), np.intp, int(indptr[-1])
        )
        self._closure = (indptr, indices)

        self._set_members: dict[int, list[int]] = {}
        for i, node in enumerate(normalized):
            for s in node["structure_set_ids"]:
                self._set_members.setdefault(s, []).append(i)

        for array in (self._parent, self._depth, self._ids, self._preorder, indptr, indices):
            array.flags.writeable = False
        self._sorted_ids: tuple[np.ndarray, np.ndarray] | None = None
        self._ancestor_matrix: np.ndarray | None = None
        self._lowercase_keys: dict[str, list[str]] | None = None

    @staticmethod
    def _normalize(raw: Node, position: int, use_graph_order: bool) -> Node:
        where = f"structure #{position}" + (f" (id {raw['id']!r})" if isinstance(raw, dict) and "id" in raw else "")
        if not isinstance(raw, dict):
            raise FormatError(f"{where}: a structure must be a dict, got {type(raw).__name__}")
        for key in ("id", "acronym", "name", "structure_id_path"):
            if key not in raw:
                raise FormatError(f"{where}: missing {key!r}")
        sid = _as_int(raw["id"], "id", where)
        path = _parse_path(raw["structure_id_path"], where)
        if path[-1] != sid:
            raise FormatError(f"{where}: structure_id_path {path} does not end with the structure's id {sid}")
        if raw.get("rgb_triplet") is not None:
            rgb = [_as_int(c, "rgb_triplet", where) for c in raw["rgb_triplet"]]
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):  # type: ignore[operator]
                raise FormatError(f"{where}: rgb_triplet must be three values in 0..255, got {raw['rgb_triplet']!r}")
            if raw.get("color_hex_triplet") and _hex_to_rgb(raw["color_hex_triplet"], where) != rgb:
                raise FormatError(
                    f"{where}: rgb_triplet {rgb} disagrees with color_hex_triplet {raw['color_hex_triplet']!r}"
                )
        elif raw.get("color_hex_triplet") is not None:
            rgb = _hex_to_rgb(raw["color_hex_triplet"], where)
        else:
            raise FormatError(f"{where}: no colour (rgb_triplet or color_hex_triplet)")
        if "parent_structure_id" in raw:
            declared = _as_int(raw["parent_structure_id"], "parent_structure_id", where, optional=True)
            if declared != (path[-2] if len(path) > 1 else None):
                raise FormatError(f"{where}: parent_structure_id {declared} disagrees with structure_id_path {path}")
        if "depth" in raw and raw["depth"] is not None and _as_int(raw["depth"], "depth", where) != len(path) - 1:
            raise FormatError(f"{where}: depth {raw['depth']} disagrees with structure_id_path {path}")
        node: Node = {
            "id": sid,
            "acronym": str(raw["acronym"]),
            "name": str(raw["name"]),
            "structure_id_path": path,
            "rgb_triplet": rgb,
            "graph_id": _as_int(raw.get("graph_id"), "graph_id", where, optional=True),
            "graph_order": _as_int(raw["graph_order"], "graph_order", where) if use_graph_order else position,
            "structure_set_ids": [
                _as_int(s, "structure_set_ids entry", where) for s in (raw.get("structure_set_ids") or [])
            ],
        }
        for key, value in raw.items():
            if key not in node and key not in _DERIVED_KEYS:
                node[key] = list(value) if isinstance(value, list) else value
        return node

    def _unique_map(self, key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, n in enumerate(self._nodes):
            if n[key] in out:
                first = self._nodes[out[n[key]]]["id"]
                raise FormatError(f"structure {key} {n[key]!r} is used by ids {first} and {n['id']}")
            out[n[key]] = i
        return out

    # ------------------------------------------------------------------------------------------ loaders

    @classmethod
    def from_structures_json(cls, path_or_obj: Any) -> "StructureTree":
        """Load the flat list format (``structures.json``, or an API response ``{success, msg: [...]}``).

        ``path_or_obj`` is a path, an open text file, or the already-parsed list.
        """
        where = os.fspath(path_or_obj) if isinstance(path_or_obj, (str, os.PathLike)) else "structures"
        data = _unwrap_api_envelope(_read_json(path_or_obj), where)
        if not isinstance(data, list):
            raise FormatError(f"{where}: expected a list of structures, got {type(data).__name__}")
        if any(isinstance(n, dict) and n.get("children") for n in data):
            raise FormatError(f"{where}: structures have children: this is the nested format, use from_structure_graph")
        return cls(data)

    @classmethod
    def from_structure_graph(
        cls, path_or_obj: Any, *, structure_sets_from: "StructureTree | None" = None, graph_id: int | None = 1
    ) -> "StructureTree":
        """Load the nested API format ``{success, msg: [{..., children: [...]}]}``.

        ``path_or_obj`` is a path, an open text file, the parsed response, its ``msg`` list or one root dict.

        Wrapper nodes above the real root are dropped: a top-level node is a wrapper if its id is 0 or None,
        its acronym is "universe", or one of its children declares ``parent_structure_id`` null (that child
        is the real root). ``structure_id_path`` is derived from the nesting, ``rgb_triplet`` from
        ``color_hex_triplet``, ``graph_order`` from the file if every kept node has one, else from a preorder
        walk in file order. ``graph_id`` fills nodes that lack one (the format does not carry it; graph 1 is
        the adult mouse). The format has no structure set membership: ``structure_set_ids`` are empty unless
        ``structure_sets_from`` is given, whose membership is copied by structure id.
        """
        where = os.fspath(path_or_obj) if isinstance(path_or_obj, (str, os.PathLike)) else "structure graph"
        data = _unwrap_api_envelope(_read_json(path_or_obj), where)
        tops = [data] if isinstance(data, dict) else data
        if not isinstance(tops, list) or not all(isinstance(t, dict) for t in tops):
            raise FormatError(f"{where}: expected a structure dict or a list of them")

        def is_wrapper(node: dict) -> bool:
            if node.get("id") in (0, None) or str(node.get("acronym", "")).lower() == "universe":
                return True
            kids = node.get("children") or []
            return any("parent_structure_id" in c and c["parent_structure_id"] is None for c in kids)

        roots: list[dict] = []
        pending = list(tops)
        while pending:
            top = pending.pop(0)
            if is_wrapper(top):
                pending[:0] = list(top.get("children") or [])
            else:
                roots.append(top)
        if not roots:
            raise FormatError(f"{where}: no structures below the wrapper node(s)")

        flat: list[Node] = []
        stack: list[tuple[dict, list[int]]] = [(r, []) for r in reversed(roots)]
        while stack:
            raw, parent_path = stack.pop()
            node_where = f"{where}: structure {raw.get('id')!r}"
            sid = _as_int(raw.get("id"), "id", node_where)
            assert sid is not None
            declared = raw.get("parent_structure_id", parent_path[-1] if parent_path else None)
            declared = _as_int(declared, "parent_structure_id", node_where, optional=True)
            if declared != (parent_path[-1] if parent_path else None):
                raise FormatError(
                    f"{node_where}: parent_structure_id {declared} but nested under "
                    f"{parent_path[-1] if parent_path else 'nothing (a root)'}"
                )
            node = {k: v for k, v in raw.items() if k not in _DERIVED_KEYS}
            node["structure_id_path"] = parent_path + [sid]
            if "rgb_triplet" not in node and raw.get("color_hex_triplet") is not None:
                node["rgb_triplet"] = _hex_to_rgb(raw["color_hex_triplet"], node_where)
            if node.get("graph_id") is None:
                node["graph_id"] = graph_id
            flat.append(node)
            stack.extend((c, node["structure_id_path"]) for c in reversed(raw.get("children") or []))
        if not all(isinstance(n.get("graph_order"), int) and not isinstance(n.get("graph_order"), bool) for n in flat):
            for position, n in enumerate(flat):
                n["graph_order"] = position
        return cls(_attach_sets(flat, structure_sets_from))

    @classmethod
    def from_csv(
        cls, path_or_file: PathOrFile, *, structure_sets_from: "StructureTree | None" = None
    ) -> "StructureTree":
        """Load the flat CSV export (``structure_tree_safe_2017.csv`` and the like).

        Required columns: ``id``, ``acronym``, ``name``, ``structure_id_path`` (``"/997/8/"``),
        ``color_hex_triplet``; ``graph_order`` (else file order), ``graph_id``, ``parent_structure_id`` and
        ``depth`` (checked against the path) are used if present, and ``atlas_id``, ``ontology_id``,
        ``st_level``, ``hemisphere_id`` are kept on the nodes (int or None). Other columns are ignored. The
        format has no structure set membership: ``structure_set_ids`` are empty unless ``structure_sets_from``
        is given, whose membership is copied by structure id.
        """
        where = os.fspath(path_or_file) if isinstance(path_or_file, (str, os.PathLike)) else "CSV"
        if isinstance(path_or_file, (str, os.PathLike)):
            with open(path_or_file, encoding="utf-8-sig", newline="") as fh:
                rows = list(csv.DictReader(fh))
        else:
            rows = list(csv.DictReader(path_or_file))
        if not rows:
            raise FormatError(f"{where}: no rows")
        required = ("id", "acronym", "name", "structure_id_path", "color_hex_triplet")
        missing = [c for c in required if c not in rows[0]]
        if missing:
            raise FormatError(f"{where}: missing column(s) {_quoted(missing)}")
        flat: list[Node] = []
        for line, row in enumerate(rows, start=2):
            row_where = f"{where}, line {line}"
            node: Node = {
                "id": row["id"],
                "acronym": row["acronym"],
                "name": row["name"],
                "structure_id_path": row["structure_id_path"],
                "color_hex_triplet": row["color_hex_triplet"],
                "graph_id": _as_int(row.get("graph_id"), "graph_id", row_where, optional=True),
                "graph_order": (
                    _as_int(row["graph_order"], "graph_order", row_where) if "graph_order" in row else line - 2
                ),
            }
            for key in ("parent_structure_id", "depth"):
                if key in row:
                    node[key] = row[key] if row[key] != "" else None
            for key in _CSV_EXTRA_INT_COLUMNS:
                if key in row:
                    node[key] = _as_int(row[key], key, row_where, optional=True)
            flat.append(node)
        return cls(_attach_sets(flat, structure_sets_from))

    @classmethod
    def bundled(cls) -> "StructureTree":
        """The CCF 2017 ontology shipped with the package (structure graph 1, 1327 structures, 33 sets).

        Read once and cached: every call returns the same tree.
        """
        tree = _BUNDLED_TREES.get(cls)
        if tree is None:
            resource = resources.files("brainmap").joinpath("data", "ccf2017", "structures.json")
            text = resource.read_text(encoding="utf-8")
            tree = cls.from_structures_json(json.loads(text))
            _BUNDLED_TREES[cls] = tree
        return tree

    # ------------------------------------------------------------------------------------------ dunder

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, structure_id: object) -> bool:
        try:
            return operator.index(structure_id) in self._index  # type: ignore[arg-type]
        except TypeError:
            return False

    def __repr__(self) -> str:
        roots = ", ".join(
            f"{self._nodes[i]['id']} {self._nodes[i]['acronym']!r}" for i in np.flatnonzero(self._parent < 0)[:3]
        )
        return f"StructureTree({len(self)} structures, root {roots}, {len(self._set_members)} structure sets)"

    # ------------------------------------------------------------------------------------------ internals

    def _indices_of_ids(self, structure_ids: Any) -> list[int]:
        out: list[int] = []
        unknown: list[Any] = []
        for value in _as_list(structure_ids):
            try:
                key = operator.index(value)
            except TypeError:
                raise TypeError(f"structure ids must be integers, got {value!r}") from None
            i = self._index.get(key)
            if i is None:
                unknown.append(key)
            else:
                out.append(i)
        if unknown:
            what = "id" if len(unknown) == 1 else "ids"
            raise UnknownStructureError(f"unknown structure {what} {', '.join(map(str, unknown))}")
        return out

    def _index_of_id(self, structure_id: int) -> int:
        return self._indices_of_ids([structure_id])[0]

    def _indices_by_key(self, values: Any, table: dict[str, int], kind: str) -> list[int]:
        out: list[int] = []
        unknown: list[str] = []
        for value in _as_list(values):
            i = table.get(value) if isinstance(value, str) else None
            if i is None:
                unknown.append(value)
            else:
                out.append(i)
        if unknown:
            described = []
            for value in unknown:
                hint = self._suggest(value, kind) if isinstance(value, str) else []
                described.append(f"{value!r}" + (f" (did you mean {_quoted(hint)}?)" if hint else ""))
            what = kind if len(unknown) == 1 else kind + "s"
            raise UnknownStructureError(f"unknown structure {what} {', '.join(described)}")
        return out

    def _suggest(self, value: str, kind: str) -> list[str]:
        """Up to three close acronyms or names: case-insensitive matches first, then difflib's."""
        table = self._by_acronym if kind == "acronym" else self._by_name
        if self._lowercase_keys is None:
            lower: dict[str, list[str]] = {}
            for key in list(self._by_acronym) + list(self._by_name):
                lower.setdefault(key.lower(), []).append(key)
            self._lowercase_keys = lower
        hits = [k for k in self._lowercase_keys.get(value.lower(), []) if k in table]
        for k in difflib.get_close_matches(value, list(table), n=3, cutoff=0.6):
            if k not in hits:
                hits.append(k)
        return hits[:3]

    def _set_indices(self, set_id: Any) -> list[int]:
        try:
            key = operator.index(set_id)
        except TypeError:
            raise TypeError(f"structure set ids must be integers, got {set_id!r}") from None
        members = self._set_members.get(key)
        if members is None:
            known = _bundled_structure_sets().get(key)
            if known is not None:
                raise UnknownStructureSetError(
                    f"structure set {key} ({known[0]!r}) has no members in this tree"
                    + ("" if self._set_members else "; it was loaded without structure set membership "
                       "(pass structure_sets_from=StructureTree.bundled() to the loader)")
                )
            raise UnknownStructureSetError(
                f"unknown structure set id {key} "
                f"(this tree has {len(self._set_members)} sets: see get_structure_sets())"
            )
        return members

    # ------------------------------------------------------------------------------------------ lookups

    def nodes(self, structure_ids: Iterable[int] | None = None) -> list[Node]:
        """Nodes for ``structure_ids`` in the order asked, or all nodes in graph order if None."""
        if structure_ids is None:
            return [_copy_node(n) for n in self._nodes]
        return [_copy_node(self._nodes[i]) for i in self._indices_of_ids(structure_ids)]

    def node_ids(self) -> list[int]:
        """All structure ids in graph order."""
        return [n["id"] for n in self._nodes]

    @property
    def root_id(self) -> int:
        """The id of the root (997 for the Allen mouse ontology); ValueError if the tree has several roots."""
        roots = self.root_ids()
        if len(roots) != 1:
            raise ValueError(f"this tree has {len(roots)} roots: {roots}")
        return roots[0]

    def root_ids(self) -> list[int]:
        """Ids of the structures without a parent, in graph order."""
        return [self._nodes[i]["id"] for i in np.flatnonzero(self._parent < 0)]

    def get_structures_by_id(self, structure_ids: Iterable[int]) -> list[Node]:
        """Nodes for ``structure_ids`` (a single id is accepted too), in the order asked.

        Raises :class:`UnknownStructureError` naming every unknown id (AllenSDK returns None for them).
        """
        return [_copy_node(self._nodes[i]) for i in self._indices_of_ids(structure_ids)]

    def get_structures_by_acronym(self, acronyms: Iterable[str]) -> list[Node]:
        """Nodes for ``acronyms`` (exact, case-sensitive: ``CM`` and ``cm`` are different structures).

        A single acronym string is accepted too. Raises :class:`UnknownStructureError` naming every unknown
        acronym, with close matches.
        """
        return [_copy_node(self._nodes[i]) for i in self._indices_by_key(acronyms, self._by_acronym, "acronym")]

    def get_structures_by_name(self, names: Iterable[str]) -> list[Node]:
        """Nodes for full ``names`` (exact), in the order asked; a single name string is accepted too."""
        return [_copy_node(self._nodes[i]) for i in self._indices_by_key(names, self._by_name, "name")]

    def get_id_acronym_map(self) -> dict[str, int]:
        """Acronym -> id (AllenSDK's name and direction; see :meth:`get_acronym_map` for id -> acronym)."""
        return {n["acronym"]: n["id"] for n in self._nodes}

    def get_acronym_map(self) -> dict[int, str]:
        """Id -> acronym."""
        return {n["id"]: n["acronym"] for n in self._nodes}

    def get_name_map(self) -> dict[int, str]:
        """Id -> name."""
        return {n["id"]: n["name"] for n in self._nodes}

    def get_colormap(self) -> dict[int, list[int]]:
        """Id -> ``[r, g, b]`` (0-255)."""
        return {n["id"]: list(n["rgb_triplet"]) for n in self._nodes}

    def get_hex_colormap(self, prefix: str = "") -> dict[int, str]:
        """Id -> colour as Allen's ``color_hex_triplet`` (``"B0F0FF"``); ``prefix="#"`` for ``"#B0F0FF"``."""
        return {n["id"]: prefix + _rgb_to_hex(n["rgb_triplet"]) for n in self._nodes}

    # ------------------------------------------------------------------------------------------ relations

    def parent_ids(self, structure_ids: Iterable[int]) -> list[int | None]:
        """The parent id of each structure (None for a root)."""
        parent = self._parent
        return [int(self._ids[parent[i]]) if parent[i] >= 0 else None for i in self._indices_of_ids(structure_ids)]

    def child_ids(self, structure_ids: Iterable[int]) -> list[list[int]]:
        """The children ids of each structure, in graph order (empty for a leaf)."""
        return [[self._nodes[c]["id"] for c in self._children[i]] for i in self._indices_of_ids(structure_ids)]

    def ancestor_ids(self, structure_ids: Iterable[int]) -> list[list[int]]:
        """For each structure: itself, its parent, ..., the root (AllenSDK's order)."""
        return [self._nodes[i]["structure_id_path"][::-1] for i in self._indices_of_ids(structure_ids)]

    def descendant_ids(self, structure_ids: Iterable[int]) -> list[list[int]]:
        """For each structure: itself and all its descendants, in preorder (children in graph order)."""
        out = []
        for i in self._indices_of_ids(structure_ids):
            start = self._preorder_pos[i]
            out.append(self._ids[self._preorder[start : start + self._subtree_size[i]]].tolist())
        return out

    def parents(self, structure_ids: Iterable[int]) -> list[Node | None]:
        """The parent node of each structure (None for a root)."""
        return [
            _copy_node(self._nodes[self._parent[i]]) if self._parent[i] >= 0 else None
            for i in self._indices_of_ids(structure_ids)
        ]

    def children(self, structure_ids: Iterable[int]) -> list[list[Node]]:
        """The child nodes of each structure, in graph order."""
        return [[_copy_node(self._nodes[c]) for c in self._children[i]] for i in self._indices_of_ids(structure_ids)]

    def ancestors(self, structure_ids: Iterable[int]) -> list[list[Node]]:
        """For each structure: the nodes of itself, its parent, ..., the root."""
        return [self.nodes(ids) for ids in self.ancestor_ids(structure_ids)]

    def descendants(self, structure_ids: Iterable[int]) -> list[list[Node]]:
        """For each structure: the nodes of itself and all its descendants, in preorder."""
        return [self.nodes(ids) for ids in self.descendant_ids(structure_ids)]

    def structure_descends_from(self, child_id: int, parent_id: int) -> bool:
        """True if ``child_id`` is ``parent_id`` or one of its descendants (AllenSDK: equal counts as True)."""
        i = self._index_of_id(child_id)
        self._index_of_id(parent_id)
        return operator.index(parent_id) in self._nodes[i]["structure_id_path"]

    def depth(self, structure_id: int) -> int:
        """Number of steps from the root: ``len(structure_id_path) - 1`` (root: 0)."""
        return int(self._depth[self._index_of_id(structure_id)])

    def get_structure_path(self, structure_id: int) -> list[str]:
        """Acronyms from the root to ``structure_id``, e.g. ``['root', 'grey', ..., 'VIS', 'VISp']``."""
        path = self._nodes[self._index_of_id(structure_id)]["structure_id_path"]
        return [self._nodes[self._index[a]]["acronym"] for a in path]

    # ------------------------------------------------------------------------------------------ structure sets

    def get_structure_sets(self) -> list[int]:
        """Ids of the structure sets that at least one structure of this tree belongs to, ascending."""
        return sorted(self._set_members)

    def get_structure_set_names(self) -> dict[int, str | None]:
        """Set id -> name (from the bundled ``structure_sets.csv``; None if the set is not in that table)."""
        table = _bundled_structure_sets()
        return {s: (table[s][0] if s in table else None) for s in self.get_structure_sets()}

    def structure_set_table(self) -> pd.DataFrame:
        """The sets of this tree: columns ``id``, ``name``, ``description``, ``member_count`` (in this tree).

        Names and descriptions come from the bundled table, where the descriptions (and a few long names)
        are truncated with "...".
        """
        table = _bundled_structure_sets()
        rows = [
            (s, *(table.get(s) or (None, None)), len(self._set_members[s])) for s in self.get_structure_sets()
        ]
        return pd.DataFrame(rows, columns=["id", "name", "description", "member_count"])

    def structure_set_ids_of(self, structure_id: int) -> list[int]:
        """The ids of the sets ``structure_id`` belongs to (as listed on the node)."""
        return list(self._nodes[self._index_of_id(structure_id)]["structure_set_ids"])

    def structure_set_member_ids(self, set_id: int) -> list[int]:
        """Ids of the members of one structure set, in graph order.

        Raises :class:`UnknownStructureSetError` if no structure of this tree belongs to ``set_id``.
        """
        return [self._nodes[i]["id"] for i in self._set_indices(set_id)]

    def get_structures_by_set_id(self, set_ids: Iterable[int]) -> list[Node]:
        """Nodes belonging to any of ``set_ids`` (a single id is accepted too), each once, in graph order."""
        members: set[int] = set()
        for s in _as_list(set_ids):
            members.update(self._set_indices(s))
        return [_copy_node(self._nodes[i]) for i in sorted(members)]

    def summary_structure_ids(self) -> list[int]:
        """Members of "Brain – Summary Structures" (set 167587189; 316 structures in CCF 2017)."""
        return self.structure_set_member_ids(StructureSetId.SUMMARY)

    # ------------------------------------------------------------------------------------------ arrays

    def ids_array(self) -> npt.NDArray[np.int64]:
        """Structure ids by node index (graph order), int64, read-only."""
        return self._ids

    def index_of(self, structure_ids: npt.ArrayLike, missing: int | None = None) -> npt.NDArray[np.intp]:
        """Node indices of an array of ids (any shape, e.g. an annotation volume), vectorized.

        Ids not in the tree raise :class:`UnknownStructureError` naming them (up to 20), unless ``missing``
        is given, which fills their places instead (``missing=-1`` for an annotation whose 0 = outside).
        Returns an ``intp`` array of the input's shape.
        """
        values = np.asarray(structure_ids)
        if values.dtype.kind not in "iu":
            if values.size == 0:
                values = values.astype(np.int64)
            else:
                raise TypeError(f"structure ids must be integers, got an array of {values.dtype}")
        if self._sorted_ids is None:
            order = np.argsort(self._ids, kind="stable")
            self._sorted_ids = (self._ids[order], order)
        sorted_ids, order = self._sorted_ids
        info = np.iinfo(values.dtype)
        if sorted_ids[0] >= info.min and sorted_ids[-1] <= info.max:
            sorted_ids = sorted_ids.astype(values.dtype)  # cast the small table, not the (possibly huge) input
        else:
            values = values.astype(np.int64)
        pos = np.searchsorted(sorted_ids, values)
        np.minimum(pos, len(sorted_ids) - 1, out=pos)
        found = sorted_ids[pos] == values
        result = order[pos]
        if not found.all():
            if missing is None:
                bad = np.unique(values[~found])
                shown = ", ".join(map(str, bad[:20].tolist())) + (f" and {bad.size - 20} more" if bad.size > 20 else "")
                what = "id" if bad.size == 1 else "ids"
                raise UnknownStructureError(f"unknown structure {what} {shown}")
            result = np.where(found, result, missing)
        return np.asarray(result).astype(np.intp, copy=False)

    def parent_index(self) -> npt.NDArray[np.intp]:
        """For each node index, its parent's index, or -1 for a root; read-only."""
        return self._parent

    def depth_array(self) -> npt.NDArray[np.intp]:
        """For each node index, its depth (root 0); read-only."""
        return self._depth

    def ancestor_closure(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """All ancestors of every node, as a CSR pair ``(indptr, indices)``, read-only.

        The ancestors of node ``i`` (itself first, then its parent, ..., the root; the order of
        :meth:`ancestor_ids`) are ``indices[indptr[i]:indptr[i + 1]]``. ``len(indptr) == len(tree) + 1``;
        ``np.diff(indptr) == depth_array() + 1``. To roll per-structure counts up the tree::

            indptr, indices = tree.ancestor_closure()
            totals = np.zeros(len(tree)); np.add.at(totals, indices, np.repeat(direct_counts, np.diff(indptr)))
        """
        return self._closure

    def ancestor_matrix(self) -> npt.NDArray[np.bool_]:
        """Dense ``(n, n)`` bool matrix ``M`` with ``M[i, j]`` true when node ``j`` is ``i`` or an ancestor of ``i``.

        Built on first use (1.8 MB for 1327 structures) and cached, read-only. ``M.T @ counts`` sums
        per-structure counts over each structure's subtree.
        """
        if self._ancestor_matrix is None:
            indptr, indices = self._closure
            matrix = np.zeros((len(self), len(self)), dtype=bool)
            matrix[np.repeat(np.arange(len(self)), np.diff(indptr)), indices] = True
            matrix.flags.writeable = False
            self._ancestor_matrix = matrix
        return self._ancestor_matrix

    # ------------------------------------------------------------------------------------------ export

    def to_dataframe(self) -> pd.DataFrame:
        """One row per structure in graph order, with Allen's column names.

        Columns: ``id``, ``acronym``, ``name``, ``parent_structure_id`` (nullable Int64, <NA> for the root),
        ``depth``, ``graph_id`` (nullable Int64), ``graph_order``, ``structure_id_path`` (``"/997/8/"``),
        ``color_hex_triplet`` (``"B0F0FF"``), ``structure_set_ids`` (lists).
        """
        nodes = self._nodes
        return pd.DataFrame(
            {
                "id": self._ids.copy(),
                "acronym": [n["acronym"] for n in nodes],
                "name": [n["name"] for n in nodes],
                "parent_structure_id": pd.array(
                    [n["structure_id_path"][-2] if len(n["structure_id_path"]) > 1 else None for n in nodes],
                    dtype="Int64",
                ),
                "depth": self._depth.astype(np.int64),
                "graph_id": pd.array([n["graph_id"] for n in nodes], dtype="Int64"),
                "graph_order": np.array([n["graph_order"] for n in nodes], dtype=np.int64),
                "structure_id_path": ["/" + "/".join(map(str, n["structure_id_path"])) + "/" for n in nodes],
                "color_hex_triplet": [_rgb_to_hex(n["rgb_triplet"]) for n in nodes],
                "structure_set_ids": [list(n["structure_set_ids"]) for n in nodes],
            }
        )

    def to_itksnap_label_description(
        self,
        path_or_file: PathOrFile,
        *,
        label: Literal["acronym", "name"] = "acronym",
        index: Literal["id", "position"] = "id",
    ) -> None:
        """Write an ITK-SNAP label description file (the text format of ITK-SNAP's label editor).

        Header comments, then one row per label, ``IDX -R- -G- -B- -A-- VIS MSH "LABEL"``: first index 0
        ``"Clear Label"`` (transparent), then every structure in graph order, opaque and visible.

        ``label``: the acronym (default: short, unique and free of quotes) or the full name.
        ``index``: ``"id"`` (default) writes Allen structure ids, matching an Allen annotation volume as is;
        ITK-SNAP stores labels as 16-bit integers, so ids above 65535 (128 of the 1327) cannot be shown there.
        ``"position"`` writes node index + 1 (1..n; for the Allen ontology graph_order + 1), which fits; pair
        it with the annotation relabelled as ``tree.index_of(annotation, missing=-1) + 1``.
        """
        if label not in ("acronym", "name"):
            raise ValueError(f"label must be 'acronym' or 'name', got {label!r}")
        if index not in ("id", "position"):
            raise ValueError(f"index must be 'id' or 'position', got {index!r}")
        lines = [
            "################################################",
            "# ITK-SnAP Label Description File",
            "# Written by brainmap from an Allen structure ontology",
            f"# {len(self)} structures; IDX = {'Allen structure id' if index == 'id' else 'graph-order position + 1'};"
            f" LABEL = structure {label}",
            "# File format: ",
            "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
            "# Fields: ",
            "#    IDX:   Zero-based index ",
            "#    -R-:   Red color component (0..255)",
            "#    -G-:   Green color component (0..255)",
            "#    -B-:   Blue color component (0..255)",
            "#    -A-:   Label transparency (0.00 .. 1.00)",
            "#    VIS:   Label visibility (0 or 1)",
            "#    MSH:   Label mesh visibility (0 or 1)",
            "#  LABEL:   Label description ",
            "################################################",
            _itksnap_row(0, (0, 0, 0), 0.0, 0, 0, "Clear Label"),
        ]
        for i, n in enumerate(self._nodes):
            idx = n["id"] if index == "id" else i + 1
            text = str(n[label]).replace('"', "'")
            lines.append(_itksnap_row(idx, n["rgb_triplet"], 1.0, 1, 1, text))
        content = "\n".join(lines) + "\n"
        if isinstance(path_or_file, (str, os.PathLike)):
            with open(path_or_file, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(content)
        else:
            path_or_file.write(content)


def _itksnap_row(idx: int, rgb: Iterable[int], alpha: float, vis: int, msh: int, text: str) -> str:
    r, g, b = rgb
    return f"{idx:5d} {r:5d} {g:4d} {b:4d} {alpha:8.2f} {vis:2d} {msh:2d}    \"{text}\""


def _attach_sets(nodes: list[Node], source: StructureTree | None) -> list[Node]:
    """Give ``nodes`` the structure set membership ``source`` lists for the same ids (empty when absent)."""
    for node in nodes:
        if source is None:
            node.setdefault("structure_set_ids", [])
        else:
            sid = _as_int(node.get("id"), "id", "structure")
            node["structure_set_ids"] = source.structure_set_ids_of(sid) if sid in source else []  # type: ignore
    return nodes
