"""Finding a structure from what a person types, and describing it in plain text."""

from __future__ import annotations

from brainmap.atlas.ontology import StructureTree
from brainmap.atlas.reference_space import HEMISPHERE_LEFT, HEMISPHERE_RIGHT, ReferenceSpace
from brainmap.errors import UnknownStructureError


def resolve_structure(tree: StructureTree, query: str | int) -> dict:
    """The structure named by ``query``: an id ("385"), an acronym ("VISp"), a full name, or words of a name.

    Acronyms and names are matched exactly first, then ignoring case, then by words: the structures whose name
    holds every word of ``query`` ("primary visual"), of which the one that holds all the others (Primary visual
    area, not its layers). Raises :class:`~brainmap.errors.UnknownStructureError` naming the query if nothing
    matches, or listing the matches if several unrelated structures do.
    """
    text = str(query).strip()
    if text.lstrip("-").isdigit():
        return tree.get_structures_by_id([int(text)])[0]
    for lookup in (tree.get_structures_by_acronym, tree.get_structures_by_name):
        try:
            return lookup([text])[0]
        except UnknownStructureError:
            pass
    folded = text.casefold()
    nodes = tree.nodes()
    for node in nodes:
        if folded in (str(node["acronym"]).casefold(), str(node["name"]).casefold()):
            return node
    words = folded.replace(",", " ").split()
    matches = [n for n in nodes if words and all(w in str(n["name"]).casefold().replace(",", " ").split()
                                                 for w in words)]
    if matches:
        top = [n for n in matches if all(int(n["id"]) in m["structure_id_path"] for m in matches)]
        if top:
            return top[0]
        listed = ", ".join(f"{n['acronym']} ({n['name']})" for n in matches[:8])
        raise UnknownStructureError(f"{text!r} matches {len(matches)} structures: {listed}"
                                    + (", ..." if len(matches) > 8 else "") + "; give an acronym or id")
    # Let the acronym lookup raise: its message names the query and suggests close acronyms.
    return tree.get_structures_by_acronym([text])[0]


def describe_structure(space: ReferenceSpace, structure_id: int) -> str:
    """A few lines about one structure: names, path, sets, colour and its voxel counts in ``space``."""
    tree = space.structure_tree
    node = tree.get_structures_by_id([structure_id])[0]
    path = " > ".join(n["acronym"] for n in tree.get_structures_by_id(list(node["structure_id_path"])))
    set_names = tree.get_structure_set_names()
    sets = [f"{set_names.get(s, '?')} ({s})" for s in node.get("structure_set_ids", [])]
    direct = space.direct_voxel_counts()
    total = {h: space.total_voxel_counts(h) for h in (HEMISPHERE_LEFT, HEMISPHERE_RIGHT)}
    voxel_mm3 = float(space.resolution.prod()) * 1e-9
    n_total = int(total[1].loc[structure_id] + total[2].loc[structure_id])
    res = "x".join(f"{r:g}" for r in space.resolution)
    lines = [
        f"{node['acronym']}  {node['name']}  (id {node['id']})",
        f"  path:      {path}",
        f"  depth:     {len(node['structure_id_path']) - 1}, graph order {node.get('graph_order')}",
        f"  colour:    rgb{tuple(node['rgb_triplet'])}",
        f"  children:  {len(tree.child_ids([structure_id])[0])}, descendants {len(tree.descendant_ids([structure_id])[0]) - 1}",
        f"  voxels at {res} um: {n_total:,} with descendants ({n_total * voxel_mm3:.4f} mm3)"
        f"; left {int(total[1].loc[structure_id]):,}, right {int(total[2].loc[structure_id]):,}"
        f"; labelled directly {int(direct.loc[structure_id]):,}",
        f"  sets ({len(sets)}):" + ("".join(f"\n    {s}" for s in sets) if sets else " none"),
    ]
    return "\n".join(lines)
