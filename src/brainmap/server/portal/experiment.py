"""The experiment page: ``/experiment/{id}?hemisphere=3``.

Metadata (donor, strain, lines, injection structures and coordinates, volume, gene, probe, plane, section count,
alignment), the maximum-intensity previews (:mod:`~brainmap.server.portal.previews`), the summary-structure bar
graph for the chosen hemisphere (:mod:`~brainmap.server.portal.bargraph`), links to every download (grid volumes,
registered files, unionize CSV) and to the data set's searches and section images.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse

from brainmap.server.portal.bargraph import HEMISPHERES, bar_svg, bars_of
from brainmap.server.portal.catalog import DataSetRecord, catalog_of, synthetic_note
from brainmap.server.portal.render import error_page, page
from brainmap.server.routes_data import state_of
from brainmap.server.routes_files import _files_of

__all__ = ["router", "searches_of"]

router = APIRouter(include_in_schema=False)


def _unionize_csv(record: DataSetRecord) -> str:
    model = "ProjectionStructureUnionize" if record.is_connectivity else "StructureUnionize"
    criteria = f"model::{model},rma::criteria,[section_data_set_id$eq{record.id}],rma::options[num_rows$eqall]"
    return "/api/v2/data/query.csv?" + urlencode({"criteria": criteria})


def searches_of(record: DataSetRecord, acronyms: dict[int, str]) -> list[tuple[str, str]]:
    """(label, URL) of the searches that start from this data set."""
    links: list[tuple[str, str]] = []
    if record.is_connectivity:
        if record.primary_injection_id is not None:
            acronym = acronyms.get(record.primary_injection_id, str(record.primary_injection_id))
            links.append((f"Experiments injected in {acronym} (source search)",
                          "/search/source?" + urlencode({"injection_structures": acronym})))
            links.append((f"Experiments projecting to {acronym} (target search)",
                          "/search/target?" + urlencode({"target_domain": acronym})))
        links.append(("Experiments with a similar projection (connectivity correlation)",
                      f"/search/connectivity_correlation?row={record.id}"))
        coords = record.injection_coordinates
        if coords and None not in coords:
            point = ",".join(f"{c:g}" for c in coords)
            links.append(("Experiments injected near this injection (injection coordinate)",
                          "/search/injection_coordinate?" + urlencode({"seed_point": point})))
            links.append(("Experiments projecting to this injection site (spatial search)",
                          "/search/spatial?" + urlencode({"seed_point": point})))
    else:
        expression_set = "mouse_coronal" if record.plane == "coronal" else "mouse"
        links.append((f"Genes with a similar expression pattern (gene correlation, {expression_set})",
                      "/search/correlation?" + urlencode({"row": record.id, "set": expression_set})))
        links.append(("Genes enriched in a structure (differential search)",
                      "/search/differential?" + urlencode({"set": expression_set})))
        links.append(("Voxels co-expressed with a seed (AGEA)", "/search/agea?" + urlencode({"set": expression_set})))
    return links


@router.get("/experiment/{section_data_set_id}", response_class=HTMLResponse)
def experiment(request: Request, section_data_set_id: int, hemisphere: int = 3) -> HTMLResponse:
    state = state_of(request)
    catalog = catalog_of(state)
    record = catalog.by_id(section_data_set_id)
    if record is None:
        return error_page(404, "No such data set", f"There is no data set {section_data_set_id} on this server "
                          f"({len(catalog.records)} loaded).")
    hemisphere = hemisphere if hemisphere in HEMISPHERES else 3
    tree = state.structure_tree
    acronyms, names = tree.get_acronym_map(), tree.get_name_map()
    bars, label = state.run(lambda c: bars_of(c, tree, record.id, record.is_connectivity, hemisphere))
    files = state.run(lambda c: _files_of(c, record.id))
    grids = [f for f in files if f.suffix in (".nrrd", ".mhd", ".mha")]
    others = [f for f in files if f not in grids and f.suffix != ".raw"]
    has_preview = any(f.type_name.startswith(("projection_density", "energy", "density")) for f in grids)
    volume_names = list(dict.fromkeys(
        f.type_name.rsplit("_", 1)[0] if f.type_name.rsplit("_", 1)[-1].isdigit() else f.type_name for f in grids))
    grid_zip = f"/grid_data/download/{record.id}?" + urlencode({"include": ",".join(volume_names)})
    injections = [(i, acronyms.get(i, str(i)), names.get(i, "")) for i in record.injection_ids]
    top = sorted(bars, key=lambda b: -b.value)[:15]
    return page("experiment.html", nav="experiments", r=record, injections=injections, svg=bar_svg(bars, label),
                label=label, top=top, hemisphere=hemisphere, hemispheres=HEMISPHERES, grids=grids, others=others,
                unionize_csv=_unionize_csv(record), searches=searches_of(record, acronyms),
                has_preview=has_preview, quote=quote, grid_zip=grid_zip,
                synthetic=synthetic_note(state, record))
