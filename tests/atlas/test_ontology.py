"""Tests of brainmap.atlas.ontology.StructureTree on the real CCF 2017 ontology (structure graph 1)."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainmap.atlas.ontology import StructureSetId, StructureTree
from brainmap.errors import FormatError, UnknownStructureError, UnknownStructureSetError

DATA = Path(__file__).resolve().parents[1] / "data"
PACKAGE_DATA = Path(__file__).resolve().parents[2] / "src" / "brainmap" / "data" / "ccf2017"
NESTED = DATA / "structure_graph_1_nested.json"
CSV_EXPORT = DATA / "structure_tree_safe_2017.csv"

ROOT, VISP, VIS, ISOCORTEX, HPF = 997, 385, 669, 315, 1089


@pytest.fixture(scope="module")
def tree() -> StructureTree:
    return StructureTree.bundled()


@pytest.fixture(scope="module")
def raw_structures() -> list[dict]:
    return json.loads((PACKAGE_DATA / "structures.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def nested_tree() -> StructureTree:
    return StructureTree.from_structure_graph(NESTED)


@pytest.fixture(scope="module")
def csv_tree(tree: StructureTree) -> StructureTree:
    return StructureTree.from_csv(CSV_EXPORT, structure_sets_from=tree)


@pytest.fixture(scope="module")
def set_table() -> list[dict]:
    with open(PACKAGE_DATA / "structure_sets.csv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ basics


def test_bundled_tree_size_root_and_cache(tree: StructureTree) -> None:
    assert len(tree) == 1327
    assert tree.root_ids() == [ROOT] and tree.root_id == ROOT
    assert StructureTree.bundled() is tree
    assert VISP in tree and 0 not in tree and "VISp" not in tree
    assert repr(tree) == "StructureTree(1327 structures, root 997 'root', 33 structure sets)"
    ids = tree.node_ids()
    assert len(set(ids)) == 1327 and ids[0] == ROOT
    assert [n["graph_order"] for n in tree.nodes()] == list(range(1327))


def test_same_nodes_as_structures_json(tree: StructureTree, raw_structures: list[dict]) -> None:
    by_id = {n["id"]: n for n in tree.nodes()}
    assert len(raw_structures) == len(by_id)
    for raw in raw_structures:
        assert by_id[raw["id"]] == raw


def test_visp_parent_path_and_depth(tree: StructureTree) -> None:
    assert tree.parent_ids([VISP]) == [VIS]
    assert tree.parents([VISP])[0]["acronym"] == "VIS"
    assert tree.parent_ids([ROOT]) == [None] and tree.parents([ROOT]) == [None]
    assert tree.get_structure_path(VISP) == ["root", "grey", "CH", "CTX", "CTXpl", "Isocortex", "VIS", "VISp"]
    assert tree.depth(VISP) == 7 and tree.depth(ROOT) == 0
    assert VISP in tree.child_ids([VIS])[0]
    assert [n["id"] for n in tree.children([VIS])[0]] == tree.child_ids([VIS])[0]
    assert tree.child_ids([VISP])[0] == [593, 821, 721, 778, 33, 305]  # layers 1, 2/3, 4, 5, 6a, 6b
    assert tree.get_structures_by_acronym(["VISp"])[0]["id"] == VISP
    assert tree.get_structures_by_name(["Primary visual area"])[0]["id"] == VISP


def test_ancestors_of_visp(tree: StructureTree) -> None:
    (ancestors,) = tree.ancestor_ids([VISP])
    assert ancestors == [VISP, VIS, ISOCORTEX, 695, 688, 567, 8, ROOT]
    assert [n["acronym"] for n in tree.ancestors([VISP])[0]] == tree.get_structure_path(VISP)[::-1]


def test_descendants_of_root_cover_everything_in_preorder(tree: StructureTree) -> None:
    (everything,) = tree.descendant_ids([ROOT])
    assert len(everything) == 1327 and set(everything) == set(tree.node_ids())
    assert everything[0] == ROOT
    seen: set[int] = set()
    parents = dict(zip(tree.node_ids(), tree.parent_ids(tree.node_ids())))
    for sid in everything:  # preorder: every parent comes before its children
        assert parents[sid] is None or parents[sid] in seen
        seen.add(sid)
    (visp,) = tree.descendant_ids([VISP])
    assert visp == [VISP, 593, 821, 721, 778, 33, 305]
    assert [n["id"] for n in tree.descendants([VISP])[0]] == visp


def test_descendants_agree_with_structure_descends_from(tree: StructureTree) -> None:
    for sid in (ISOCORTEX, HPF, 8, 512):
        below = set(tree.descendant_ids([sid])[0])
        assert below == {c for c in tree.node_ids() if tree.structure_descends_from(c, sid)}


def test_structure_descends_from(tree: StructureTree) -> None:
    assert tree.structure_descends_from(VISP, ISOCORTEX)
    assert not tree.structure_descends_from(VISP, HPF)
    assert tree.structure_descends_from(VISP, VISP)
    assert not tree.structure_descends_from(ISOCORTEX, VISP)
    with pytest.raises(UnknownStructureError, match="123456"):
        tree.structure_descends_from(VISP, 123456)


def test_returned_nodes_are_copies(tree: StructureTree) -> None:
    node = tree.get_structures_by_id([VISP])[0]
    node["rgb_triplet"].append(0)
    node["structure_id_path"].clear()
    node["acronym"] = "changed"
    fresh = tree.get_structures_by_id([VISP])[0]
    assert fresh["acronym"] == "VISp" and len(fresh["rgb_triplet"]) == 3 and fresh["structure_id_path"][-1] == VISP


def test_lookups_keep_order_and_accept_a_single_value(tree: StructureTree) -> None:
    ids = [VISP, ROOT, HPF, VISP]
    assert [n["id"] for n in tree.get_structures_by_id(ids)] == ids
    assert [n["id"] for n in tree.get_structures_by_id(np.array(ids, dtype=np.uint32))] == ids
    assert [n["acronym"] for n in tree.get_structures_by_acronym(["HPF", "VISp"])] == ["HPF", "VISp"]
    assert [n["id"] for n in tree.get_structures_by_acronym("VISp")] == [VISP]
    assert [n["id"] for n in tree.get_structures_by_id(VISP)] == [VISP]
    # acronyms are case-sensitive: CM (thalamus) and cm (cranial nerves) are different structures
    upper, lower = tree.get_structures_by_acronym(["CM", "cm"])
    assert (upper["id"], lower["id"]) == (599, 967)


def test_maps(tree: StructureTree) -> None:
    assert tree.get_id_acronym_map()["VISp"] == VISP  # AllenSDK: acronym -> id
    assert tree.get_acronym_map()[VISP] == "VISp"
    assert tree.get_name_map()[VISP] == "Primary visual area"
    assert len(tree.get_id_acronym_map()) == len(tree.get_name_map()) == 1327


# ------------------------------------------------------------------------------------------ errors


def test_unknown_id_raises_naming_every_unknown(tree: StructureTree) -> None:
    with pytest.raises(UnknownStructureError) as info:
        tree.get_structures_by_id([VISP, 123456789, 42424242])
    assert "123456789" in str(info.value) and "42424242" in str(info.value) and "385" not in str(info.value)
    assert isinstance(info.value, LookupError)
    for call in (tree.parent_ids, tree.child_ids, tree.ancestor_ids, tree.descendant_ids, tree.nodes):
        with pytest.raises(UnknownStructureError, match="123456789"):
            call([123456789])
    with pytest.raises(UnknownStructureError, match="123456789"):
        tree.depth(123456789)
    with pytest.raises(TypeError):
        tree.get_structures_by_id([385.0])


def test_unknown_acronym_and_name_raise_with_suggestions(tree: StructureTree) -> None:
    with pytest.raises(UnknownStructureError) as info:
        tree.get_structures_by_acronym(["VISpX"])
    assert str(info.value).startswith("unknown structure acronym 'VISpX'") and "'VISp'" in str(info.value)
    with pytest.raises(UnknownStructureError, match="'visp' \\(did you mean 'VISp'"):
        tree.get_structures_by_acronym(["VISp", "visp"])
    with pytest.raises(UnknownStructureError) as info:
        tree.get_structures_by_name(["Primary visual area layer 4", "Nowhere"])
    message = str(info.value)
    assert "'Primary visual area layer 4'" in message and "'Nowhere'" in message
    assert "'Primary visual area, layer 4'" in message


def test_unknown_structure_set_raises(tree: StructureTree) -> None:
    with pytest.raises(UnknownStructureSetError, match="99"):
        tree.get_structures_by_set_id([99])
    with pytest.raises(UnknownStructureSetError, match="99"):
        tree.structure_set_member_ids(99)
    without_sets = StructureTree.from_csv(CSV_EXPORT)
    assert without_sets.get_structure_sets() == []
    with pytest.raises(UnknownStructureSetError, match="167587189.*structure_sets_from"):
        without_sets.summary_structure_ids()


def test_malformed_nodes_raise_format_error(raw_structures: list[dict]) -> None:
    small = copy.deepcopy(raw_structures[:3])  # root, grey, CH
    StructureTree(small)
    with pytest.raises(FormatError, match="more than once"):
        StructureTree(small + [dict(small[2], graph_order=99)])
    with pytest.raises(FormatError, match="does not end"):
        StructureTree(small[:2] + [dict(small[2], structure_id_path=[997, 8])])
    with pytest.raises(FormatError, match="not in the tree"):
        StructureTree([small[0], small[2]])  # CH without its parent grey
    with pytest.raises(FormatError, match="rgb_triplet"):
        StructureTree(small[:2] + [dict(small[2], rgb_triplet=[1, 2, 300])])
    with pytest.raises(FormatError, match="acronym 'grey'"):
        StructureTree(small[:2] + [dict(small[2], acronym="grey")])


# ------------------------------------------------------------------------------------------ structure sets


def test_structure_sets_match_the_table(tree: StructureTree, set_table: list[dict]) -> None:
    assert len(set_table) == 33
    assert tree.get_structure_sets() == sorted(int(r["id"]) for r in set_table)
    names = tree.get_structure_set_names()
    table = tree.structure_set_table().set_index("id")
    for row in set_table:
        set_id, expected = int(row["id"]), int(row["member_count_in_structures_json"])
        members = tree.structure_set_member_ids(set_id)
        assert len(members) == expected, row["name"]
        assert len(tree.get_structures_by_set_id([set_id])) == expected
        assert table.loc[set_id, "member_count"] == expected
        assert names[set_id] == row["name"]
        assert all(set_id in tree.structure_set_ids_of(m) for m in members[:5])


def test_summary_structures(tree: StructureTree) -> None:
    summary = tree.summary_structure_ids()
    assert len(summary) == 316 == len(set(summary))
    assert VISP in summary and ISOCORTEX not in summary and ROOT not in summary
    assert tree.get_structure_set_names()[StructureSetId.SUMMARY] == "Brain – Summary Structures"
    # "non-overlapping" except for one real quirk of the 2017 set: MDRN and its two children MDRNd, MDRNv
    summary_set, acronyms = set(summary), tree.get_acronym_map()
    nested = {
        acronyms[sid]: [acronyms[a] for a in tree.ancestor_ids([sid])[0][1:] if a in summary_set] for sid in summary
    }
    assert {k: v for k, v in nested.items() if v} == {"MDRNd": ["MDRN"], "MDRNv": ["MDRN"]}
    majors = tree.structure_set_member_ids(StructureSetId.MAJOR_DIVISIONS)
    assert len(majors) == 12 and ISOCORTEX in majors and HPF in majors
    assert len(tree.structure_set_member_ids(StructureSetId.TARGET_SEARCH)) == 840
    assert len(tree.structure_set_member_ids(StructureSetId.DIFFERENTIAL_SEARCH)) == 843


def test_get_structures_by_set_id_is_a_union_in_graph_order(tree: StructureTree) -> None:
    union = tree.get_structures_by_set_id([StructureSetId.MAJOR_DIVISIONS, StructureSetId.SUMMARY])
    ids = [n["id"] for n in union]
    expected = set(tree.summary_structure_ids()) | set(tree.structure_set_member_ids(StructureSetId.MAJOR_DIVISIONS))
    assert set(ids) == expected and len(ids) == len(expected)
    assert [n["graph_order"] for n in union] == sorted(n["graph_order"] for n in union)


# ------------------------------------------------------------------------------------------ other formats


def test_nested_loader_matches_structures_json(tree: StructureTree, nested_tree: StructureTree) -> None:
    assert 0 not in nested_tree and len(nested_tree) == 1327 and nested_tree.root_ids() == [ROOT]
    assert nested_tree.node_ids() == tree.node_ids()
    assert nested_tree.parent_ids(tree.node_ids()) == tree.parent_ids(tree.node_ids())
    assert nested_tree.get_acronym_map() == tree.get_acronym_map()
    assert nested_tree.get_name_map() == tree.get_name_map()
    assert nested_tree.get_colormap() == tree.get_colormap()
    assert [n["graph_order"] for n in nested_tree.nodes()] == [n["graph_order"] for n in tree.nodes()]
    assert [n["structure_id_path"] for n in nested_tree.nodes()] == [n["structure_id_path"] for n in tree.nodes()]
    assert nested_tree.get_structures_by_id([VISP])[0]["atlas_id"] == 755  # extra fields of the format are kept
    assert nested_tree.get_structure_sets() == []


def test_nested_loader_variants(tree: StructureTree) -> None:
    response = json.loads(NESTED.read_text(encoding="utf-8"))
    universe = response["msg"][0]
    assert universe["id"] == 0 and universe["acronym"] == "universe"
    real_root = universe["children"][0]
    # without the wrapper, and from a bare root dict
    assert StructureTree.from_structure_graph({"success": True, "msg": [real_root]}).node_ids() == tree.node_ids()
    assert StructureTree.from_structure_graph(real_root).node_ids() == tree.node_ids()
    # a wrapper that is not id 0, recognised because its child declares no parent
    other = dict(universe, id=5555555, acronym="top", name="top")
    assert StructureTree.from_structure_graph([other]).node_ids() == tree.node_ids()
    # no graph_order in the file: preorder is used, which is Allen's graph order
    stripped = copy.deepcopy(real_root)
    stack = [stripped]
    while stack:
        node = stack.pop()
        del node["graph_order"]
        stack.extend(node["children"])
    derived = StructureTree.from_structure_graph(stripped, structure_sets_from=tree)
    assert [n["graph_order"] for n in derived.nodes()] == list(range(1327))
    assert derived.node_ids() == tree.node_ids()
    assert derived.summary_structure_ids() == tree.summary_structure_ids()
    # a child whose declared parent disagrees with the nesting
    broken = copy.deepcopy(real_root)
    broken["children"][0]["parent_structure_id"] = 12345
    with pytest.raises(FormatError, match="parent_structure_id 12345"):
        StructureTree.from_structure_graph(broken)


def test_flat_loader_rejects_nested_data() -> None:
    with pytest.raises(FormatError, match="from_structure_graph"):
        StructureTree.from_structures_json(NESTED)


def test_csv_loader_same_ids_parents_colours(tree: StructureTree, csv_tree: StructureTree) -> None:
    assert csv_tree.node_ids() == tree.node_ids()
    assert csv_tree.parent_ids(tree.node_ids()) == tree.parent_ids(tree.node_ids())
    assert [n["structure_id_path"] for n in csv_tree.nodes()] == [n["structure_id_path"] for n in tree.nodes()]
    assert csv_tree.get_colormap() == tree.get_colormap()
    for set_id in tree.get_structure_sets():  # membership attached from the bundled tree
        assert csv_tree.structure_set_member_ids(set_id) == tree.structure_set_member_ids(set_id)
    visp = csv_tree.get_structures_by_id([VISP])[0]
    assert visp["atlas_id"] == 755 and visp["hemisphere_id"] == 3 and visp["st_level"] is None
    assert "safe_name" not in visp and "sphinx_id" not in visp


def test_csv_acronym_and_name_differences(tree: StructureTree, csv_tree: StructureTree) -> None:
    """The 2017 CSV export is older: 9 acronyms differ and every comma is stripped from names."""
    new, old = tree.get_acronym_map(), csv_tree.get_acronym_map()
    changed = {sid: (old[sid], new[sid]) for sid in new if old[sid] != new[sid]}
    assert changed == {
        732: ("Mmme", "MMme"),  # medial mammillary nucleus: "Mm" in the old export, "MM" now
        606826647: ("Mml", "MMl"),
        606826651: ("Mmm", "MMm"),
        606826655: ("Mmp", "MMp"),
        606826659: ("Mmd", "MMd"),
        1091: ("CUL4 5", "CUL4, 5"),  # lobules IV-V: the comma stripped from the acronym too
        10722: ("CUL4 5mo", "CUL4, 5mo"),
        10721: ("CUL4 5pu", "CUL4, 5pu"),
        10720: ("CUL4 5gr", "CUL4, 5gr"),
    }
    new_names, old_names = tree.get_name_map(), csv_tree.get_name_map()
    differing = [sid for sid in new_names if new_names[sid] != old_names[sid]]
    assert len(differing) == 746 == sum("," in name for name in new_names.values())
    assert all(old_names[sid] == new_names[sid].replace(",", "") for sid in differing)
    assert old_names[593] == "Primary visual area layer 1" and new_names[593] == "Primary visual area, layer 1"


def test_csv_loader_from_text_and_checks_depth(tree: StructureTree) -> None:
    text = CSV_EXPORT.read_text(encoding="utf-8")
    assert StructureTree.from_csv(io.StringIO(text)).node_ids() == tree.node_ids()
    lines = text.splitlines()
    header = lines[0].split(",")
    row = lines[2].split(",")  # grey, depth 1
    row[header.index("depth")] = "5"
    with pytest.raises(FormatError, match="depth 5"):
        StructureTree.from_csv(io.StringIO("\n".join([lines[0], lines[1], ",".join(row)]) + "\n"))


# ------------------------------------------------------------------------------------------ arrays


def test_ids_array_and_parent_index(tree: StructureTree) -> None:
    ids = tree.ids_array()
    assert ids.dtype == np.int64 and ids.tolist() == tree.node_ids() and not ids.flags.writeable
    parent = tree.parent_index()
    assert parent[0] == -1 and (parent[1:] >= 0).all() and (parent < np.arange(len(tree))).all()
    expected = [-1 if p is None else tree.node_ids().index(p) for p in tree.parent_ids(tree.node_ids())]
    assert parent.tolist() == expected
    assert tree.depth_array().tolist() == [tree.depth(s) for s in tree.node_ids()]


def test_ancestor_closure_matches_ancestor_ids(tree: StructureTree) -> None:
    ids = tree.ids_array()
    indptr, indices = tree.ancestor_closure()
    assert len(indptr) == len(tree) + 1 and indptr[0] == 0 and indptr[-1] == len(indices)
    assert (np.diff(indptr) == tree.depth_array() + 1).all()
    all_ancestors = tree.ancestor_ids(tree.node_ids())
    for i, expected in enumerate(all_ancestors):
        assert ids[indices[indptr[i] : indptr[i + 1]]].tolist() == expected
    matrix = tree.ancestor_matrix()
    assert matrix.shape == (1327, 1327) and matrix.sum() == len(indices) and not matrix.flags.writeable
    visp = tree.index_of([VISP])[0]
    assert set(ids[matrix[visp]].tolist()) == set(all_ancestors[visp])
    # rolling direct counts up the tree with the closure equals summing over descendants
    rng = np.random.default_rng(0)
    direct = rng.integers(0, 100, len(tree))
    totals = np.zeros(len(tree), dtype=np.int64)
    np.add.at(totals, indices, np.repeat(direct, np.diff(indptr)))
    assert np.array_equal(totals, matrix.T.astype(np.int64) @ direct)
    for sid in (ROOT, ISOCORTEX, VISP, HPF):
        below = tree.index_of(tree.descendant_ids([sid])[0])
        assert totals[tree.index_of([sid])[0]] == direct[below].sum()


def test_index_of(tree: StructureTree) -> None:
    volume = np.array([[0, 997], [385, 614454277]], dtype=np.uint32)
    index = tree.index_of(volume, missing=-1)
    assert index.shape == (2, 2) and index[0, 0] == -1
    assert tree.ids_array()[index[index >= 0]].tolist() == [997, 385, 614454277]
    with pytest.raises(UnknownStructureError, match="unknown structure ids 0, 5$"):
        tree.index_of(np.array([0, 5, 997, 0]))
    with pytest.raises(TypeError):
        tree.index_of(np.array([385.0]))


# ------------------------------------------------------------------------------------------ export


_ITK_ROW = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+"(.*)"\s*$')


def _parse_itksnap(text: str) -> list[tuple]:
    rows = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = _ITK_ROW.match(line)
        assert match, line
        idx, r, g, b, a, vis, msh, label = match.groups()
        rows.append((int(idx), (int(r), int(g), int(b)), float(a), int(vis), int(msh), label))
    return rows


def test_itksnap_export_parses_back(tree: StructureTree, tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    tree.to_itksnap_label_description(path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("####") and "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL" in text
    rows = _parse_itksnap(text)
    assert len(rows) == 1328
    assert rows[0] == (0, (0, 0, 0), 0.0, 0, 0, "Clear Label")
    colours, acronyms = tree.get_colormap(), tree.get_acronym_map()
    assert [r[0] for r in rows[1:]] == tree.node_ids()
    for idx, rgb, alpha, vis, msh, label in rows[1:]:
        assert list(rgb) == colours[idx] and label == acronyms[idx] and (alpha, vis, msh) == (1.0, 1, 1)
    assert len({r[0] for r in rows}) == 1328


def test_itksnap_export_by_position_and_names(tree: StructureTree) -> None:
    out = io.StringIO()
    tree.to_itksnap_label_description(out, label="name", index="position")
    rows = _parse_itksnap(out.getvalue())
    assert [r[0] for r in rows] == list(range(1328))
    assert max(r[0] for r in rows) <= 65535
    assert rows[1 + tree.index_of([VISP])[0]][5] == "Primary visual area"
    assert rows[1][5] == "root" and rows[1][1] == (255, 255, 255)
    with pytest.raises(ValueError):
        tree.to_itksnap_label_description(io.StringIO(), label="safe_name")  # type: ignore[arg-type]


def test_hex_and_rgb_colours_agree(tree: StructureTree, raw_structures: list[dict]) -> None:
    rgb, hexes = tree.get_colormap(), tree.get_hex_colormap()
    assert hexes[ROOT] == "FFFFFF" and hexes[567] == "B0F0FF" and tree.get_hex_colormap("#")[567] == "#B0F0FF"
    for sid, colour in rgb.items():
        assert [int(hexes[sid][k : k + 2], 16) for k in (0, 2, 4)] == colour
    with open(CSV_EXPORT, encoding="utf-8", newline="") as fh:
        exported = {int(r["id"]): r["color_hex_triplet"].upper() for r in csv.DictReader(fh)}
    assert exported == hexes


def test_to_dataframe(tree: StructureTree) -> None:
    df = tree.to_dataframe()
    assert list(df.columns) == [
        "id", "acronym", "name", "parent_structure_id", "depth", "graph_id", "graph_order",
        "structure_id_path", "color_hex_triplet", "structure_set_ids",
    ]
    assert len(df) == 1327 and df["id"].tolist() == tree.node_ids()
    root, visp = df.iloc[0], df.set_index("id").loc[VISP]
    assert root["structure_id_path"] == "/997/" and root["parent_structure_id"] is pd.NA and root["depth"] == 0
    assert visp["parent_structure_id"] == VIS and visp["depth"] == 7 and visp["acronym"] == "VISp"
    assert visp["structure_id_path"] == "/997/8/567/688/695/315/669/385/"
    assert df["parent_structure_id"].isna().sum() == 1
    with open(CSV_EXPORT, encoding="utf-8", newline="") as fh:
        exported = {int(r["id"]): (r["structure_id_path"], int(r["depth"])) for r in csv.DictReader(fh)}
    assert {i: (p, d) for i, p, d in zip(df["id"], df["structure_id_path"], df["depth"])} == exported
