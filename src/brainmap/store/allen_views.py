"""Read-only RMA models computed from brainmap's tables: Allen's names over what the loader already stores.

Allen's API has models that are views of its own data (``ApiConnectivity``, one denormalized row per connectivity
experiment, which AllenSDK's ``MouseConnectivityCache.get_experiments`` reads) or that split brainmap's rows
differently (``StereotaxicInjection``: one per specimen; brainmap keeps one ``Injection`` row per injected
structure). They are SELECT statements mapped as models (:mod:`brainmap.store.models`), so they are always
consistent with the tables, need no loading and no schema change, and work on SQLite and PostgreSQL alike.

Fixed rows (the atlases, structure graph, atlas plates) are literal SELECTs, and attributes brainmap holds no
data for are typed NULLs, so a query that names them (``only$eq'angle'``) is answered as Allen's, with null.

The functions take the tables as arguments, so this module imports nothing of :mod:`brainmap.store.models`.
"""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    Table,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    null,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.sql import Subquery
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "ALLEN_NULL",
    "ATLAS_IMAGE_TYPE",
    "CONNECTIVITY_PRODUCT_IDS",
    "NameObject",
    "allen_constant",
    "api_connectivity_select",
    "atlas_images_select",
    "equalization_select",
    "fixed_rows_select",
    "stereotaxic_injection_select",
    "transgenic_mouse_select",
]

#: Allen's products of the Mouse Connectivity Atlas (AllenSDK's ``MouseConnectivityApi.PRODUCT_IDS``).
CONNECTIVITY_PRODUCT_IDS = (5, 31)
#: The image type of the adult mouse atlas plates (Allen's ``AlternateImage.image_type``).
ATLAS_IMAGE_TYPE = "Atlas - Adult Mouse"


class NameObject(TypeDecorator):
    """A name selected as text and answered as Allen's nested object ``{"name": ...}`` (null stays null).

    ``ApiConnectivity.transgenic_line`` is such an object in Allen's answer (AllenSDK reads
    ``e["transgenic_line"]["name"]``); a filter compares the name.
    """

    impl = String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else {"name": value}


def ALLEN_NULL(kind: type[TypeEngine] | TypeEngine = String) -> Any:  # noqa: N802 (reads as a constant)
    """A typed NULL: an attribute Allen has and brainmap holds no data for."""
    return cast(null(), kind)


def allen_constant(value: Any, kind: type[TypeEngine] | TypeEngine) -> Any:
    """A constant attribute (``Structure.ontology_id`` is 1 for every structure of the mouse ontology).

    A number is written into the SQL as it is (``1``); it is typed with ``type_coerce``, not given a type as a
    ``literal_column``, whose bare column an alias of the model (an RMA include's) cannot adapt: SQLAlchemy warned
    on every such include and used the expression unadapted (the same SQL, which this renders without a warning).
    """
    if isinstance(value, str):
        return literal(value, kind)
    return type_coerce(literal_column(repr(int(value)) if kind is Integer else repr(value)), kind)


def fixed_rows_select(name: str, columns: dict[str, type[TypeEngine]], rows: Sequence[dict[str, Any]]) -> Subquery:
    """Literal rows as a named subquery (a UNION ALL of one SELECT per row; no rows: an empty SELECT)."""
    def one(row: dict[str, Any] | None) -> Any:
        items = []
        for column, kind in columns.items():
            value = None if row is None else row.get(column)
            items.append((ALLEN_NULL(kind) if value is None else cast(literal(value), kind)).label(column))
        return select(*items)

    if not rows:
        return one(None).where(false()).subquery(name)
    if len(rows) == 1:
        return one(rows[0]).subquery(name)
    return union_all(*[one(r) for r in rows]).subquery(name)


def api_connectivity_select(sds: Table, products: Table, injections: Table, structures: Table, specimens: Table,
                            donors: Table, donor_lines: Table, lines: Table) -> Subquery:
    """``ApiConnectivity``: one row per connectivity experiment (products 5 or 31, not failed), with the primary
    injection structure, the "/"-joined injection structure ids, the injection site (um) and volume (mm3), the
    donor's sex and strain, and the transgenic line (``{"name"}`` or null)."""
    primary = (select(injections.c.specimen_id, func.min(injections.c.id).label("injection_id"))
               .group_by(injections.c.specimen_id).subquery("primary_injection"))
    inj = injections.alias("api_injection")
    structure = structures.alias("api_structure")
    member = injections.alias("api_member")
    injected = (select(func.aggregate_strings(cast(member.c.structure_id, String), "/"))
                .where(member.c.specimen_id == sds.c.specimen_id).scalar_subquery())
    product = (select(func.min(products.c.product_id))
               .where(products.c.section_data_set_id == sds.c.id,
                      products.c.product_id.in_(CONNECTIVITY_PRODUCT_IDS)).scalar_subquery())
    line = (select(func.min(lines.c.name)).join(donor_lines, donor_lines.c.transgenic_line_id == lines.c.id)
            .where(donor_lines.c.donor_id == specimens.c.donor_id).scalar_subquery())
    line_id = (select(func.min(lines.c.id)).join(donor_lines, donor_lines.c.transgenic_line_id == lines.c.id)
               .where(donor_lines.c.donor_id == specimens.c.donor_id).scalar_subquery())
    structure_id = func.coalesce(inj.c.primary_injection_structure_id, inj.c.structure_id)
    stmt = (
        select(
            sds.c.id.label("id"),
            sds.c.id.label("data_set_id"),
            product.label("product_id"),
            structure_id.label("structure_id"),
            structure.c.acronym.label("structure_abbrev"),
            structure.c.name.label("structure_name"),
            structure.c.color_hex_triplet.label("structure_color"),
            injected.label("injection_structures"),
            inj.c.injection_volume.label("injection_volume"),
            inj.c.coordinates_ap.label("injection_x"),
            inj.c.coordinates_dv.label("injection_y"),
            inj.c.coordinates_ml.label("injection_z"),
            donors.c.sex.label("gender"),
            donors.c.strain.label("strain"),
            specimens.c.name.label("specimen_name"),
            sds.c.storage_directory.label("storage_directory"),
            cast(line, NameObject()).label("transgenic_line"),
            line_id.label("transgenic_line_id"),
        )
        .select_from(sds)
        .join(specimens, specimens.c.id == sds.c.specimen_id)
        .outerjoin(donors, donors.c.id == specimens.c.donor_id)
        .outerjoin(primary, primary.c.specimen_id == sds.c.specimen_id)
        .outerjoin(inj, inj.c.id == primary.c.injection_id)
        .outerjoin(structure, structure.c.id == structure_id)
        .where(sds.c.failed == false(), product.is_not(None))
    )
    return stmt.subquery("api_connectivities")


def stereotaxic_injection_select(injections: Table) -> Subquery:
    """``StereotaxicInjection``: one row per specimen's injection (brainmap keeps a row per injected structure):
    the primary structure, the volume (mm3); its id is the smallest of the specimen's Injection ids."""
    return (select(func.min(injections.c.id).label("id"), injections.c.specimen_id.label("specimen_id"),
                   func.max(injections.c.primary_injection_structure_id).label("primary_injection_structure_id"),
                   func.max(injections.c.injection_volume).label("injection_volume"),
                   func.max(injections.c.coordinates_ap).label("coordinates_ap"),
                   func.max(injections.c.coordinates_dv).label("coordinates_dv"),
                   func.max(injections.c.coordinates_ml).label("coordinates_ml"),
                   ALLEN_NULL(String).label("injection_materials"), ALLEN_NULL(Float).label("angle"))
            .group_by(injections.c.specimen_id).subquery("stereotaxic_injections"))


def transgenic_mouse_select(donors: Table, donor_lines: Table, lines: Table) -> Subquery:
    """``TransgenicMouse``: one per donor with transgenic lines (its id is the donor's), named by its lines
    joined with ';'."""
    return (select(donors.c.id.label("id"),
                   func.aggregate_strings(lines.c.name, ";").label("name"))
            .select_from(donors)
            .join(donor_lines, donor_lines.c.donor_id == donors.c.id)
            .join(lines, lines.c.id == donor_lines.c.transgenic_line_id)
            .group_by(donors.c.id).subquery("transgenic_mice"))


#: The full range of brainmap's section image channels by product (their bit depth: connectivity images are
#: 12-bit, ISH 14-bit; :mod:`brainmap.specimen.synthetic.render`): the default display window.
EQUALIZATION_UPPER = {"connectivity": 4095, "ish": 16383}
ISH_PRODUCT_ID = 1


def equalization_select(sds: Table, products: Table) -> Subquery:
    """``Equalization``: the display window of each data set's images (one per data set, id = the data set's):
    each channel's whole bit depth (0-4095 for connectivity, 0-16383 for ISH)."""
    is_ish = (select(products.c.product_id).where(products.c.section_data_set_id == sds.c.id,
                                                  products.c.product_id == ISH_PRODUCT_ID).exists())
    upper = case((is_ish, EQUALIZATION_UPPER["ish"]), else_=EQUALIZATION_UPPER["connectivity"])
    bounds = []
    for channel in ("red", "green", "blue"):
        bounds += [allen_constant(0, Integer).label(f"{channel}_lower"),
                   cast(upper, Integer).label(f"{channel}_upper")]
    return select(sds.c.id.label("id"), sds.c.id.label("section_data_set_id"), *bounds).subquery("equalizations")


def atlas_images_select(plates: Sequence[dict[str, Any]]) -> Subquery:
    """``AtlasImage`` rows (Allen's table ``sub_images``) of the plates drawn from the CCF annotation."""
    columns = {"id": Integer, "data_set_id": Integer, "section_number": Integer, "annotated": Boolean,
               "width": Integer, "height": Integer, "resolution": Float, "x": Integer, "y": Integer}
    return fixed_rows_select("sub_images", columns, plates)
