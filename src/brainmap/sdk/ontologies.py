"""``OntologiesApi``: structures, structure sets and the nested structure graph, with AllenSDK's names."""

from __future__ import annotations

from typing import Any

from brainmap.sdk.rma import RmaApi

__all__ = ["OntologiesApi"]


def _in(values: Any) -> str:
    values = [values] if isinstance(values, (int, str)) else list(values)
    return ",".join(str(v) for v in values)


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
            criteria.append(f"structure_graph[name$in{_in(repr(n) for n in structure_graph_names)}]")
        if structure_set_ids is not None:
            criteria.append(f"structure_sets[id$in{_in(structure_set_ids)}]")
        if structure_set_names is not None:
            names = [structure_set_names] if isinstance(structure_set_names, str) else structure_set_names
            criteria.append(f"structure_sets[name$in{','.join(repr(n) for n in names)}]")
        order = ["graph_order" if o == "structures.graph_order" else o for o in
                 ([order] if isinstance(order, str) else list(order or ()))] or None
        return self.model_query("Structure", criteria=",".join(criteria) or None, order=order, num_rows=num_rows,
                                **kwargs)

    def get_structures_with_sets(self, structure_graph_ids: Any = 1, **kwargs: Any) -> list[dict[str, Any]]:
        """Structures with ``structure_set_ids`` (the ids of the sets each belongs to)."""
        rows = self.model_query("Structure", criteria=f"[graph_id$in{_in(structure_graph_ids)}]",
                                include="structure_sets", order="graph_order", num_rows="all",
                                page_size=self.page_size // 10, **kwargs)  # included sets count as rows
        for row in rows:
            row["structure_set_ids"] = [s["id"] for s in row.pop("structure_sets", [])]
        return rows

    def get_structure_sets(self, structure_set_ids: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        """StructureSet rows (id, name, description)."""
        criteria = f"[id$in{_in(structure_set_ids)}]" if structure_set_ids is not None else None
        return self.model_query("StructureSet", criteria=criteria, num_rows="all", **kwargs)

    def get_structure_graph(self, structure_graph_id: int = 1) -> list[dict[str, Any]]:
        """The nested structure graph (``msg``: the roots, each with ``children``)."""
        return self.json_msg_query(f"/api/v2/structure_graph_download/{int(structure_graph_id)}.json")
