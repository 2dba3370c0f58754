"""The portal's view of the database: every data set as one flat record, filtered, sorted and paged.

One query per table reads the catalog (data sets, products, planes, specimens and donors, lines, genes and probes,
injections, image counts); the experiment browser filters the records in Python. The catalog is kept per
process with the database's version token (:class:`~brainmap.server.state.DataVersion`), so a ``brainmap load``
is seen at the next request and nothing is read twice in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from brainmap.store import models as m

__all__ = ["Catalog", "DataSetRecord", "SORT_KEYS", "catalog_of"]

#: Columns the browser can sort by, and their record attribute.
SORT_KEYS = ("id", "product", "injection", "line", "gene", "plane", "strain", "sections")


@dataclass
class DataSetRecord:
    """One data set, flattened for listing (ids and names only; strings are empty where Allen has none)."""

    id: int
    product: str = ""
    product_id: int = 0
    plane: str = ""
    failed: bool = False
    specimen: str = ""
    donor: str = ""
    sex: str = ""
    strain: str = ""
    lines: list[str] = field(default_factory=list)
    genes: list[str] = field(default_factory=list)
    gene_names: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    injection_ids: list[int] = field(default_factory=list)
    primary_injection_id: int | None = None
    injection_coordinates: tuple[float | None, float | None, float | None] | None = None
    injection_volume: float | None = None
    sections: int = 0
    section_thickness: float | None = None
    storage_directory: str | None = None
    aligned: bool = False

    @property
    def line(self) -> str:
        return ", ".join(self.lines)

    @property
    def gene(self) -> str:
        return ", ".join(self.genes)

    @property
    def is_connectivity(self) -> bool:
        return self.product_id == 5 or "connectivity" in self.product.lower()


@dataclass
class Catalog:
    """Every data set of the database, with the names the browser's filters offer."""

    records: list[DataSetRecord]

    def by_id(self, data_set_id: int) -> DataSetRecord | None:
        return next((r for r in self.records if r.id == data_set_id), None)

    def choices(self, what: str) -> list[str]:
        """The distinct values of one filter (``product``, ``plane``, ``strain``, ``line``, ``gene``)."""
        values: set[str] = set()
        for r in self.records:
            if what == "line":
                values.update(r.lines)
            elif what == "gene":
                values.update(r.genes)
            else:
                value = getattr(r, what)
                if value:
                    values.add(value)
        return sorted(values, key=str.casefold)


def _read(connection: Connection) -> Catalog:
    sds = m.SectionDataSet
    records: dict[int, DataSetRecord] = {}
    for r in connection.execute(
            select(sds.id, sds.failed, sds.section_thickness, sds.storage_directory, m.PlaneOfSection.name,
                   m.Specimen.name, m.Donor.name, m.Donor.sex, m.Donor.strain)
            .outerjoin(m.PlaneOfSection, m.PlaneOfSection.id == sds.plane_of_section_id)
            .outerjoin(m.Specimen, m.Specimen.id == sds.specimen_id)
            .outerjoin(m.Donor, m.Donor.id == m.Specimen.donor_id)
            .order_by(sds.id)):
        records[r[0]] = DataSetRecord(id=r[0], failed=bool(r[1]), section_thickness=r[2], storage_directory=r[3],
                                      plane=r[4] or "", specimen=r[5] or "", donor=r[6] or "", sex=r[7] or "",
                                      strain=r[8] or "")
    products = m.section_data_sets_products
    for data_set_id, product_id, name in connection.execute(
            select(products.c.section_data_set_id, m.Product.id, m.Product.name)
            .join(m.Product, m.Product.id == products.c.product_id).order_by(m.Product.id)):
        record = records.get(data_set_id)
        if record is not None and not record.product:
            record.product, record.product_id = name, product_id
    genes = m.section_data_sets_genes
    for data_set_id, acronym, name in connection.execute(
            select(genes.c.section_data_set_id, m.Gene.acronym, m.Gene.name)
            .join(m.Gene, m.Gene.id == genes.c.gene_id).order_by(m.Gene.acronym)):
        if data_set_id in records:
            records[data_set_id].genes.append(acronym)
            records[data_set_id].gene_names.append(name or "")
    probes = m.section_data_sets_probes
    for data_set_id, name in connection.execute(
            select(probes.c.section_data_set_id, m.Probe.name).join(m.Probe, m.Probe.id == probes.c.probe_id)):
        if data_set_id in records:
            records[data_set_id].probes.append(name)
    for data_set_id, name in connection.execute(
            select(sds.id, m.TransgenicLine.name)
            .join(m.Specimen, m.Specimen.id == sds.specimen_id)
            .join(m.donors_transgenic_lines, m.donors_transgenic_lines.c.donor_id == m.Specimen.donor_id)
            .join(m.TransgenicLine, m.TransgenicLine.id == m.donors_transgenic_lines.c.transgenic_line_id)
            .order_by(m.TransgenicLine.name)):
        records[data_set_id].lines.append(name)
    inj = m.Injection
    for r in connection.execute(
            select(sds.id, inj.structure_id, inj.primary_injection_structure_id, inj.coordinates_ap,
                   inj.coordinates_dv, inj.coordinates_ml, inj.injection_volume)
            .join(inj, inj.specimen_id == sds.specimen_id).order_by(sds.id, inj.id)):
        record = records[r[0]]
        record.injection_ids.append(r[1])
        if record.primary_injection_id is None:
            record.primary_injection_id = r[2] if r[2] is not None else r[1]
            record.injection_coordinates = (r[3], r[4], r[5])
            record.injection_volume = r[6]
    for data_set_id, count in connection.execute(
            select(m.SectionImage.data_set_id, func.count()).group_by(m.SectionImage.data_set_id)):
        if data_set_id in records:
            records[data_set_id].sections = int(count)
    for (data_set_id,) in connection.execute(select(m.Alignment3d.section_data_set_id)):
        if data_set_id in records:
            records[data_set_id].aligned = True
    return Catalog(list(records.values()))


def catalog_of(state: Any) -> Catalog:
    """The catalog of the server's database, read again only after the database changed."""
    version = state.data_version.current()
    found = getattr(state, "_portal_catalog", None)
    if version is not None and found is not None and found[0] == version:
        return found[1]
    catalog = state.run(_read)
    if version is not None:
        state._portal_catalog = (version, catalog)
    return catalog


def synthetic_note(state: Any, record: DataSetRecord) -> str:
    """What the data set's folder says of where its images came from, when they are synthetic (the virtual
    microscope's); empty otherwise."""
    import json

    if not record.storage_directory:
        return ""
    try:
        path = state.resolve_data_path(f"{record.storage_directory.rstrip('/')}/dataset.json")
        metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError):
        return ""
    if not metadata.get("synthetic"):
        return ""
    return (f"synthetic data: images made by the virtual microscope ({metadata.get('generator', 'brainmap')}), "
            "not Allen's")
