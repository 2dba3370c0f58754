"""``OntologiesApi``: structures, structure sets and the nested structure graph, with AllenSDK's names."""

from __future__ import annotations

from typing import Any

from brainmap.sdk.rma import RmaApi

__all__ = ["OntologiesApi"]


def _in(values: Any) -> str:
    values = [values] if isinstance(values, (int, str)) else list(values)
    return ",".join(str(v) for v in values)


def _names(values: Any) -> str:
    """Quoted names for ``$in``: a list of names, or AllenSDK's already-quoted text ("'Mouse Brain Atlas'")."""
    if isinstance(values, str):
        return values if values.startswith("'") else "'" + values.replace("'", "") + "'"
    return ",".join("'" + str(v).replace("'", "") + "'" for v in values)


class OntologiesApi(RmaApi):
    """Structures of an ontology (graph 1 is the adult mouse)."""

    def get_structures(self, structure_graph_ids: Any = None, structure_graph_names: Any = None,
                       structure_set_ids: Any = None, structure_set_names: Any = None,
                       order: Any = ("structures.graph_order",), num_rows: Any = "all", count: bool = False,
                       **kwargs: Any) -> list[dict[str, Any]]:
        """Structure rows (flat), filtered by graph and structure set, in graph order."""
        criteria = []
        if structure_graph_ids is not None:
            criteria.append(f"[graph_id$in{_in(structure_graph_ids)}]")
        if structure_graph_names is not None:
            criteria.append(f"graph[structure_graphs.name$in{_names(structure_graph_names)}]")
        if structure_set_ids is not None:
            criteria.append(f"structure_sets[id$in{_in(structure_set_ids)}]")
        if structure_set_names is not None:
            criteria.append(f"structure_sets[name$in{_names(structure_set_names)}]")
        order = ["graph_order" if o == "structures.graph_order" else o for o in
                 ([order] if isinstance(order, str) else list(order or ()))] or None
        return self.model_query("Structure", criteria=",".join(criteria) or None, order=order, num_rows=num_rows,
                                **kwargs)

    def get_structures_with_sets(self, structure_graph_ids: Any = 1, **kwargs: Any) -> list[dict[str, Any]]:
        """Structures with ``structure_set_ids`` (the ids of the sets each belongs to)."""
        rows = self.model_query("Structure", criteria=f"[graph_id$in{_in(structure_graph_ids)}]",
                                include="structure_sets", order="graph_order", num_rows="all",
                                page_size=self.page_size // 10, **kwargs)  # included sets count as rows
        for row in rows:  # AllenSDK's nested structure_sets, and their ids
            row["structure_set_ids"] = [s["id"] for s in row.get("structure_sets", [])]
        return rows

    @staticmethod
    def unpack_structure_set_ancestors(structure_dataframe: Any) -> None:
        """Add the column ``structure_set_ancestor``: each ``structure_id_path`` ("/997/8/") as a list of ids
        (in place, as AllenSDK's)."""
        structure_dataframe["structure_set_ancestor"] = [
            [int(a) for a in str(path).split("/")[1:-1]] for path in structure_dataframe["structure_id_path"]]

    def get_atlases(self) -> list[dict[str, Any]]:
        """The atlases (1: coronal, 2: sagittal plates cut from the CCF annotation)."""
        return self.model_query("Atlas", num_rows="all")

    def get_atlases_table(self, atlas_ids: Any = None, brief: bool = True) -> list[dict[str, Any]]:
        """Atlases with their structure graph (and its ontology) and graphic group labels."""
        criteria = (f"[id$in{_in(atlas_ids)}]," if atlas_ids is not None else "") + \
            "structure_graph(ontology),graphic_group_labels"
        only = (["atlases.id", "atlases.name", "atlases.image_type", "ontologies.id", "ontologies.name",
                 "structure_graphs.id", "structure_graphs.name", "graphic_group_labels.id",
                 "graphic_group_labels.name"] if brief else None)
        return self.model_query("Atlas", criteria=criteria, include="structure_graph(ontology),graphic_group_labels",
                                only=only, num_rows="all")

    def get_structure_graphs(self) -> list[dict[str, Any]]:
        """The structure graphs (1: the adult mouse ontology)."""
        return self.model_query("StructureGraph", num_rows="all")

    def get_structure_sets(self, structure_set_ids: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        """StructureSet rows (id, name, description)."""
        criteria = f"[id$in{_in(structure_set_ids)}]" if structure_set_ids is not None else None
        return self.model_query("StructureSet", criteria=criteria, num_rows="all", **kwargs)

    def get_structure_graph(self, structure_graph_id: int = 1) -> list[dict[str, Any]]:
        """The nested structure graph (``msg``: the roots, each with ``children``)."""
        return self.json_msg_query(f"/api/v2/structure_graph_download/{int(structure_graph_id)}.json")
