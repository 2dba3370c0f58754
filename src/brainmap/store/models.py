"""The database: SQLAlchemy models named as Allen's API names them.

Model (table)                      key attributes                                         associations
---------------------------------  -----------------------------------------------------  ----------------------------
Product (products)                 id, name, abbreviation, description                    section_data_sets
PlaneOfSection (plane_of_sections) id (1 coronal, 2 sagittal), name                       section_data_sets
ReferenceSpace (reference_spaces)  id (9: CCF v3, PIR), name, description                 section_data_sets
TransgenicLine (transgenic_lines)  id, name, description, transgenic_line_type_name       donors
Donor (donors)                     id, name, sex, strain                                  specimens, transgenic_lines
Specimen (specimens)               id, name, donor_id                                     donor, injections,
                                                                                          section_data_sets
Injection (injections)             id, specimen_id, structure_id,                         specimen, structure,
                                   primary_injection_structure_id, coordinates_ap/dv/ml,  primary_injection_structure
                                   injection_volume
Gene (genes)                       id, acronym, name, entrez_id                           probes, section_data_sets
                                                                                          (alias data_sets)
Probe (probes)                     id, name, gene_id                                      gene, section_data_sets
SectionDataSet (section_data_sets) id, plane_of_section_id, specimen_id,                  genes, probes, products,
                                   reference_space_id, failed, section_thickness,         specimen, plane_of_section,
                                   sampling_um, storage_directory                         reference_space,
                                                                                          section_images (sub_images),
                                                                                          alignment3d,
                                                                                          structure_unionizes,
                                                                                          projection_structure_unionizes,
                                                                                          well_known_files
SectionImage (section_images)      id, data_set_id, section_number, width, height,        section_data_set (data_set),
                                   resolution, failed                                     alignment2d
Alignment2d (alignment2ds)         id, section_image_id, tsv_00..tsv_05, tvs_00..tvs_05   section_image
Alignment3d (alignment3ds)         id, section_data_set_id, trv_00..trv_11, tvr_00..11    section_data_set
Structure (structures)             id, acronym, name, parent_structure_id, depth,         parent, children,
                                   graph_id, graph_order, structure_id_path "/997/8/",    structure_sets,
                                   color_hex_triplet; virtual: structure_set_id           structure_unionizes,
                                                                                          projection_structure_unionizes
StructureSet (structure_sets)      id, name, description                                  structures
StructureUnionize                  id, section_data_set_id, structure_id,                 section_data_set, structure
  (structure_unionizes)            expression_density, expression_energy, sum_pixels, ...
ProjectionStructureUnionize        Allen's columns (is_injection, projection_density,     section_data_set, structure
  (projection_structure_unionizes) normalized_projection_volume, max_voxel_x, ...)
WellKnownFileType                  id, name                                               well_known_files
WellKnownFile (well_known_files)   id, attachable_id, attachable_type, path (relative to  well_known_file_type,
                                   the data directory), file_size, sha256,                section_data_set
                                   well_known_file_type_id

Every relationship is read-only (``viewonly``): the loader writes with Core statements, the RMA compiler only
reads. The RMA-facing metadata of a model is in class attributes: ``__rma_name__`` (the model name of
``model::``), ``__rma_aliases__`` (extra association names Allen uses) and ``__rma_virtual__`` (attributes that
stand for an association's attribute, as ``Structure.structure_set_id``).
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    cast,
    func,
    literal,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, foreign, mapped_column, relationship

from brainmap.atlas.plates import ATLAS_STRUCTURES_GROUP, ATLASES, atlas_plates
from brainmap.store.allen_views import (
    ALLEN_NULL,
    ATLAS_IMAGE_TYPE,
    allen_constant,
    api_connectivity_select,
    atlas_images_select,
    equalization_select,
    fixed_rows_select,
    stereotaxic_injection_select,
    transgenic_mouse_select,
)

__all__ = [
    "MODELS",
    "SCHEMA_VERSION",
    "Alignment2d",
    "Alignment3d",
    "Base",
    "Donor",
    "Gene",
    "Injection",
    "PlaneOfSection",
    "Probe",
    "Product",
    "ProjectionStructureUnionize",
    "ReferenceSpace",
    "SchemaInfo",
    "SectionDataSet",
    "SectionImage",
    "Specimen",
    "Structure",
    "StructureSet",
    "StructureUnionize",
    "TransgenicLine",
    "WellKnownFile",
    "WellKnownFileType",
]

#: Version of the schema below; stored in ``schema_info`` so a later release can migrate.
SCHEMA_VERSION = 3  # 2: Structure.atlas_id, Structure.st_level; 3: StructureUnionize without hemisphere_id, with sum_pixel_intensity

#: Allen's organism id of Mus musculus.
MOUSE_ORGANISM_ID = 2

#: Ids are 64-bit (Allen's exceed 2^31 in places); on SQLite an INTEGER PRIMARY KEY so ids autoincrement.
Id = BigInteger().with_variant(Integer(), "sqlite")

_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every brainmap table."""

    metadata = MetaData(naming_convention=_NAMING)

    __rma_name__: str | None = None
    __rma_aliases__: dict[str, str] = {}
    __rma_virtual__: dict[str, tuple[str, str]] = {}
    __rma_hidden__: tuple[str, ...] = ()


def _fk(target: str, nullable: bool = True, index: bool = True) -> Mapped:
    return mapped_column(Id, ForeignKey(target), nullable=nullable, index=index)


def _join_table(name: str, left: str, right: str) -> Table:
    left_col, right_col = left.split(".")[0][:-1] + "_id", right.split(".")[0][:-1] + "_id"
    return Table(
        name, Base.metadata,
        Column(left_col, Id, ForeignKey(left, ondelete="CASCADE"), primary_key=True),
        Column(right_col, Id, ForeignKey(right, ondelete="CASCADE"), primary_key=True, index=True),
    )


section_data_sets_products = _join_table("section_data_sets_products", "section_data_sets.id", "products.id")
section_data_sets_genes = _join_table("section_data_sets_genes", "section_data_sets.id", "genes.id")
section_data_sets_probes = _join_table("section_data_sets_probes", "section_data_sets.id", "probes.id")
structure_sets_structures = _join_table("structure_sets_structures", "structure_sets.id", "structures.id")
donors_transgenic_lines = _join_table("donors_transgenic_lines", "donors.id", "transgenic_lines.id")


class SchemaInfo(Base):
    """Key/value facts about the database itself (``schema_version``); not exposed through RMA."""

    __tablename__ = "schema_info"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# -- products, planes, spaces ---------------------------------------------------------------------------------
class Product(Base):
    """An Allen product: "Mouse Brain" (ISH, id 1), "Mouse Connectivity Projection" (id 5)."""

    __tablename__ = "products"
    __rma_name__ = "Product"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    abbreviation: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[Optional[str]] = mapped_column(Text)
    section_data_sets: Mapped[list["SectionDataSet"]] = relationship(
        secondary=section_data_sets_products, viewonly=True, back_populates="products")


class PlaneOfSection(Base):
    """The cutting plane: 1 coronal, 2 sagittal (Allen's ids)."""

    __tablename__ = "plane_of_sections"
    __rma_name__ = "PlaneOfSection"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    section_data_sets: Mapped[list["SectionDataSet"]] = relationship(viewonly=True,
                                                                      back_populates="plane_of_section")


class ReferenceSpace(Base):
    """A reference space; brainmap has one (Allen's id 9, CCF v3 in PIR; sagittal data are folded into it)."""

    __tablename__ = "reference_spaces"
    __rma_name__ = "ReferenceSpace"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[Optional[str]] = mapped_column(Text)
    section_data_sets: Mapped[list["SectionDataSet"]] = relationship(viewonly=True,
                                                                      back_populates="reference_space")


# -- specimens --------------------------------------------------------------------------------------------------
class TransgenicLine(Base):
    """A transgenic (Cre) line, e.g. Syt6-Cre_KI148."""

    __tablename__ = "transgenic_lines"
    __rma_name__ = "TransgenicLine"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[Optional[str]] = mapped_column(Text)
    transgenic_line_type_name: Mapped[Optional[str]] = mapped_column(String(100))
    donors: Mapped[list["Donor"]] = relationship(secondary=donors_transgenic_lines, viewonly=True,
                                                 back_populates="transgenic_lines")


class Donor(Base):
    """The animal a specimen comes from: sex, strain and transgenic lines."""

    __tablename__ = "donors"
    __rma_name__ = "Donor"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    sex: Mapped[Optional[str]] = mapped_column(String(20))
    strain: Mapped[Optional[str]] = mapped_column(String(200))
    specimens: Mapped[list["Specimen"]] = relationship(viewonly=True, back_populates="donor")
    transgenic_lines: Mapped[list[TransgenicLine]] = relationship(secondary=donors_transgenic_lines, viewonly=True,
                                                                  back_populates="donors")
    transgenic_mouse: Mapped[Optional["TransgenicMouse"]] = relationship(
        viewonly=True, uselist=False, primaryjoin="Donor.id == foreign(TransgenicMouse.id)")


class Specimen(Base):
    """A brain that was cut into sections; its data sets and injections."""

    __tablename__ = "specimens"
    __rma_name__ = "Specimen"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    donor_id: Mapped[Optional[int]] = _fk("donors.id")
    donor: Mapped[Optional[Donor]] = relationship(viewonly=True, back_populates="specimens")
    injections: Mapped[list["Injection"]] = relationship(viewonly=True, back_populates="specimen",
                                                         order_by="Injection.id")
    section_data_sets: Mapped[list["SectionDataSet"]] = relationship(viewonly=True, back_populates="specimen")
    stereotaxic_injections: Mapped[list["StereotaxicInjection"]] = relationship(
        viewonly=True, primaryjoin="Specimen.id == foreign(StereotaxicInjection.specimen_id)")


class Injection(Base):
    """One injection structure of a specimen (one row per structure; the primary one is named on every row)."""

    __tablename__ = "injections"
    __rma_name__ = "Injection"
    __table_args__ = (UniqueConstraint("specimen_id", "structure_id"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    specimen_id: Mapped[int] = _fk("specimens.id", nullable=False, index=False)
    structure_id: Mapped[int] = _fk("structures.id", nullable=False)
    primary_injection_structure_id: Mapped[Optional[int]] = _fk("structures.id")
    coordinates_ap: Mapped[Optional[float]] = mapped_column(Float)
    coordinates_dv: Mapped[Optional[float]] = mapped_column(Float)
    coordinates_ml: Mapped[Optional[float]] = mapped_column(Float)
    injection_volume: Mapped[Optional[float]] = mapped_column(Float)
    specimen: Mapped[Specimen] = relationship(viewonly=True, back_populates="injections")
    structure: Mapped["Structure"] = relationship(viewonly=True, foreign_keys=[structure_id])
    primary_injection_structure: Mapped[Optional["Structure"]] = relationship(
        viewonly=True, foreign_keys=[primary_injection_structure_id])
    # Allen's attributes brainmap holds no data for (null): named by AllenSDK's get_manual_injection_summary.
    angle: Mapped[Optional[float]] = column_property(ALLEN_NULL(Float))
    registration_point: Mapped[Optional[str]] = column_property(ALLEN_NULL(String))
    injection_materials: Mapped[Optional[str]] = column_property(ALLEN_NULL(String))
    age: Mapped[Optional["Age"]] = relationship(viewonly=True, uselist=False,
                                                primaryjoin="Injection.id == foreign(Age.injection_id)")


# -- genes ------------------------------------------------------------------------------------------------------
class Gene(Base):
    """A gene (ISH data sets): acronym (symbol), name, Entrez id."""

    __tablename__ = "genes"
    __rma_name__ = "Gene"
    __rma_aliases__ = {"data_sets": "section_data_sets"}
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    acronym: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[Optional[str]] = mapped_column(String(400))
    entrez_id: Mapped[Optional[int]] = mapped_column(Id)
    #: Allen's organism 2 (Mus musculus): every gene of brainmap's atlases is a mouse gene.
    organism_id: Mapped[int] = column_property(allen_constant(MOUSE_ORGANISM_ID, Integer))
    chromosome_id: Mapped[Optional[int]] = column_property(ALLEN_NULL(Integer))
    chromosome: Mapped[Optional["Chromosome"]] = relationship(
        viewonly=True, uselist=False, primaryjoin="Gene.id == foreign(Chromosome.gene_id)")
    probes: Mapped[list["Probe"]] = relationship(viewonly=True, back_populates="gene", order_by="Probe.id")
    section_data_sets: Mapped[list["SectionDataSet"]] = relationship(
        secondary=section_data_sets_genes, viewonly=True, back_populates="genes")


class Probe(Base):
    """An ISH probe of a gene."""

    __tablename__ = "probes"
    __rma_name__ = "Probe"
    __rma_aliases__ = {"data_sets": "section_data_sets"}
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    gene_id: Mapped[Optional[int]] = _fk("genes.id")
    gene: Mapped[Optional[Gene]] = relationship(viewonly=True, back_populates="probes")
    section_data_sets: Mapped[list["SectionDataSet"]] = relationship(
        secondary=section_data_sets_probes, viewonly=True, back_populates="probes")


# -- section data sets ------------------------------------------------------------------------------------------
class SectionDataSet(Base):
    """A series of section images of one specimen (one ISH or connectivity experiment)."""

    __tablename__ = "section_data_sets"
    __rma_name__ = "SectionDataSet"
    __rma_aliases__ = {"sub_images": "section_images"}
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    plane_of_section_id: Mapped[int] = _fk("plane_of_sections.id", nullable=False)
    specimen_id: Mapped[Optional[int]] = _fk("specimens.id")
    reference_space_id: Mapped[Optional[int]] = _fk("reference_spaces.id", index=False)
    failed: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    section_thickness: Mapped[float] = mapped_column(Float)
    sampling_um: Mapped[Optional[float]] = mapped_column(Float)
    storage_directory: Mapped[Optional[str]] = mapped_column(Text)

    plane_of_section: Mapped[PlaneOfSection] = relationship(viewonly=True, back_populates="section_data_sets")
    specimen: Mapped[Optional[Specimen]] = relationship(viewonly=True, back_populates="section_data_sets")
    reference_space: Mapped[Optional[ReferenceSpace]] = relationship(viewonly=True,
                                                                     back_populates="section_data_sets")
    products: Mapped[list[Product]] = relationship(secondary=section_data_sets_products, viewonly=True,
                                                   back_populates="section_data_sets")
    genes: Mapped[list[Gene]] = relationship(secondary=section_data_sets_genes, viewonly=True,
                                             back_populates="section_data_sets")
    probes: Mapped[list[Probe]] = relationship(secondary=section_data_sets_probes, viewonly=True,
                                               back_populates="section_data_sets")
    section_images: Mapped[list["SectionImage"]] = relationship(viewonly=True, back_populates="section_data_set",
                                                                order_by="SectionImage.section_number")
    alignment3d: Mapped[Optional["Alignment3d"]] = relationship(viewonly=True, back_populates="section_data_set")
    structure_unionizes: Mapped[list["StructureUnionize"]] = relationship(viewonly=True,
                                                                          back_populates="section_data_set")
    projection_structure_unionizes: Mapped[list["ProjectionStructureUnionize"]] = relationship(
        viewonly=True, back_populates="section_data_set")
    well_known_files: Mapped[list["WellKnownFile"]] = relationship(
        viewonly=True, back_populates="section_data_set",
        primaryjoin="and_(SectionDataSet.id == foreign(WellKnownFile.attachable_id), "
                    "WellKnownFile.attachable_type == 'SectionDataSet')")
    equalization: Mapped[Optional["Equalization"]] = relationship(
        viewonly=True, uselist=False, primaryjoin="SectionDataSet.id == foreign(Equalization.section_data_set_id)")


class SectionImage(Base):
    """One section of a data set (Allen names its data set key ``data_set_id``)."""

    __tablename__ = "section_images"
    __rma_name__ = "SectionImage"
    __rma_aliases__ = {"data_set": "section_data_set"}
    __table_args__ = (UniqueConstraint("data_set_id", "section_number"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    data_set_id: Mapped[int] = _fk("section_data_sets.id", nullable=False, index=False)
    section_number: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    resolution: Mapped[Optional[float]] = mapped_column(Float)
    failed: Mapped[bool] = mapped_column(Boolean, default=False)
    section_data_set: Mapped[SectionDataSet] = relationship(viewonly=True, back_populates="section_images")
    alignment2d: Mapped[Optional["Alignment2d"]] = relationship(viewonly=True, back_populates="section_image")


def _affine_columns(prefix: str, count: int) -> dict[str, Mapped[float]]:
    return {f"{prefix}_{k:02d}": mapped_column(Float, nullable=False) for k in range(count)}


class Alignment2d(Base):
    """A section image's 2-D affine: ``tsv`` (pixel -> specimen volume) and ``tvs`` (the inverse)."""

    __tablename__ = "alignment2ds"
    __rma_name__ = "Alignment2d"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    section_image_id: Mapped[int] = mapped_column(Id, ForeignKey("section_images.id", ondelete="CASCADE"),
                                                  unique=True)
    locals().update(_affine_columns("tsv", 6))
    locals().update(_affine_columns("tvs", 6))
    section_image: Mapped[SectionImage] = relationship(viewonly=True, back_populates="alignment2d")


class Alignment3d(Base):
    """A data set's 3-D affine: ``tvr`` (specimen volume -> reference) and ``trv`` (the inverse)."""

    __tablename__ = "alignment3ds"
    __rma_name__ = "Alignment3d"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    section_data_set_id: Mapped[int] = mapped_column(Id, ForeignKey("section_data_sets.id", ondelete="CASCADE"),
                                                     unique=True)
    locals().update(_affine_columns("trv", 12))
    locals().update(_affine_columns("tvr", 12))
    section_data_set: Mapped[SectionDataSet] = relationship(viewonly=True, back_populates="alignment3d")


# -- the ontology -----------------------------------------------------------------------------------------------
class Structure(Base):
    """A brain structure of the ontology (structure graph 1)."""

    __tablename__ = "structures"
    __rma_name__ = "Structure"
    __rma_virtual__ = {"structure_set_id": ("structure_sets", "id")}
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    acronym: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(400))
    parent_structure_id: Mapped[Optional[int]] = mapped_column(Id, ForeignKey("structures.id"), index=True)
    depth: Mapped[int] = mapped_column(Integer)
    graph_id: Mapped[Optional[int]] = mapped_column(Id)
    graph_order: Mapped[int] = mapped_column(Integer, index=True)
    structure_id_path: Mapped[str] = mapped_column(String(400))
    color_hex_triplet: Mapped[str] = mapped_column(String(6))
    atlas_id: Mapped[Optional[int]] = mapped_column(Integer)
    st_level: Mapped[Optional[int]] = mapped_column(Integer)
    #: Allen's ontology 1 (Mouse) and hemisphere 3 (both) for every structure of graph 1.
    ontology_id: Mapped[int] = column_property(allen_constant(1, Integer))
    hemisphere_id: Mapped[int] = column_property(allen_constant(3, Integer))
    #: The name without commas (Allen's ``safe_name``).
    safe_name: Mapped[str] = column_property(func.replace(name, ",", ""))
    graph: Mapped[Optional["StructureGraph"]] = relationship(
        viewonly=True, uselist=False, primaryjoin="foreign(Structure.graph_id) == StructureGraph.id")
    parent: Mapped[Optional["Structure"]] = relationship(viewonly=True, remote_side=[id],
                                                         back_populates="children")
    children: Mapped[list["Structure"]] = relationship(viewonly=True, back_populates="parent",
                                                       order_by="Structure.graph_order")
    structure_sets: Mapped[list["StructureSet"]] = relationship(secondary=structure_sets_structures,
                                                                viewonly=True, back_populates="structures")
    structure_unionizes: Mapped[list["StructureUnionize"]] = relationship(viewonly=True,
                                                                          back_populates="structure")
    projection_structure_unionizes: Mapped[list["ProjectionStructureUnionize"]] = relationship(
        viewonly=True, back_populates="structure")


class StructureSet(Base):
    """A named set of structures ("Brain – Summary Structures", ...)."""

    __tablename__ = "structure_sets"
    __rma_name__ = "StructureSet"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    name: Mapped[Optional[str]] = mapped_column(String(400))
    description: Mapped[Optional[str]] = mapped_column(Text)
    structures: Mapped[list[Structure]] = relationship(secondary=structure_sets_structures, viewonly=True,
                                                       back_populates="structure_sets",
                                                       order_by=Structure.graph_order)


# -- pipeline results -------------------------------------------------------------------------------------------
class StructureUnionize(Base):
    """ISH expression statistics of one structure (with its descendants, both hemispheres) in one data set
    (Allen's StructureUnionize: no hemisphere)."""

    __tablename__ = "structure_unionizes"
    __rma_name__ = "StructureUnionize"
    __table_args__ = (
        UniqueConstraint("section_data_set_id", "structure_id"),
        Index("ix_structure_unionizes_structure", "structure_id"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    section_data_set_id: Mapped[int] = mapped_column(Id, ForeignKey("section_data_sets.id", ondelete="CASCADE"))
    structure_id: Mapped[int] = mapped_column(Id, ForeignKey("structures.id"))
    sum_pixels: Mapped[Optional[float]] = mapped_column(Float)
    sum_expressing_pixels: Mapped[Optional[float]] = mapped_column(Float)
    sum_pixel_intensity: Mapped[Optional[float]] = mapped_column(Float)
    sum_expressing_pixel_intensity: Mapped[Optional[float]] = mapped_column(Float)
    expression_density: Mapped[Optional[float]] = mapped_column(Float)
    expression_energy: Mapped[Optional[float]] = mapped_column(Float)
    voxel_energy_mean: Mapped[Optional[float]] = mapped_column(Float)
    voxel_energy_cv: Mapped[Optional[float]] = mapped_column(Float)
    section_data_set: Mapped[SectionDataSet] = relationship(viewonly=True, back_populates="structure_unionizes")
    structure: Mapped[Structure] = relationship(viewonly=True, back_populates="structure_unionizes")


class ProjectionStructureUnionize(Base):
    """Projection statistics of one structure and hemisphere (injection or projection record) of one data set."""

    __tablename__ = "projection_structure_unionizes"
    __rma_name__ = "ProjectionStructureUnionize"
    __table_args__ = (
        UniqueConstraint("section_data_set_id", "structure_id", "hemisphere_id", "is_injection"),
        Index("ix_projection_structure_unionizes_target", "structure_id", "is_injection", "hemisphere_id"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    section_data_set_id: Mapped[int] = mapped_column(Id, ForeignKey("section_data_sets.id", ondelete="CASCADE"))
    structure_id: Mapped[int] = mapped_column(Id, ForeignKey("structures.id"))
    hemisphere_id: Mapped[int] = mapped_column(Integer)
    is_injection: Mapped[bool] = mapped_column(Boolean)
    max_voxel_density: Mapped[Optional[float]] = mapped_column(Float)
    max_voxel_x: Mapped[Optional[float]] = mapped_column(Float)
    max_voxel_y: Mapped[Optional[float]] = mapped_column(Float)
    max_voxel_z: Mapped[Optional[float]] = mapped_column(Float)
    normalized_projection_volume: Mapped[Optional[float]] = mapped_column(Float)
    projection_density: Mapped[Optional[float]] = mapped_column(Float)
    projection_energy: Mapped[Optional[float]] = mapped_column(Float)
    projection_intensity: Mapped[Optional[float]] = mapped_column(Float)
    projection_volume: Mapped[Optional[float]] = mapped_column(Float)
    sum_pixel_intensity: Mapped[Optional[float]] = mapped_column(Float)
    sum_pixels: Mapped[Optional[float]] = mapped_column(Float)
    sum_projection_pixel_intensity: Mapped[Optional[float]] = mapped_column(Float)
    sum_projection_pixels: Mapped[Optional[float]] = mapped_column(Float)
    volume: Mapped[Optional[float]] = mapped_column(Float)
    section_data_set: Mapped[SectionDataSet] = relationship(viewonly=True,
                                                            back_populates="projection_structure_unionizes")
    structure: Mapped[Structure] = relationship(viewonly=True, back_populates="projection_structure_unionizes")


# -- files ------------------------------------------------------------------------------------------------------
class WellKnownFileType(Base):
    """What a file is: ``projection_density_100``, ``energy``, ..."""

    __tablename__ = "well_known_file_types"
    __rma_name__ = "WellKnownFileType"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    well_known_files: Mapped[list["WellKnownFile"]] = relationship(viewonly=True,
                                                                   back_populates="well_known_file_type")


class WellKnownFile(Base):
    """A volume on disk: its path relative to the data directory, its size and sha256."""

    __tablename__ = "well_known_files"
    __rma_name__ = "WellKnownFile"
    __table_args__ = (Index("ix_well_known_files_attachable", "attachable_type", "attachable_id"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    attachable_id: Mapped[Optional[int]] = mapped_column(Id)
    attachable_type: Mapped[Optional[str]] = mapped_column(String(100))
    well_known_file_type_id: Mapped[int] = _fk("well_known_file_types.id", nullable=False)
    path: Mapped[str] = mapped_column(String(1000), unique=True)
    file_size: Mapped[int] = mapped_column(Id)
    sha256: Mapped[str] = mapped_column(String(64))
    #: Where the file downloads from, relative to the API's host (Allen's ``download_link``).
    download_link: Mapped[str] = column_property(literal("/api/v2/well_known_file_download/", String)
                                                 + cast(id, String))
    well_known_file_type: Mapped[WellKnownFileType] = relationship(viewonly=True,
                                                                   back_populates="well_known_files")
    section_data_set: Mapped[Optional[SectionDataSet]] = relationship(
        viewonly=True, back_populates="well_known_files",
        primaryjoin=lambda: and_(foreign(WellKnownFile.attachable_id) == SectionDataSet.id,
                                 WellKnownFile.attachable_type == "SectionDataSet"))


# -- views: Allen's models computed from the tables above (brainmap.store.allen_views) ------------------------------
def _view(selectable, *hidden: str) -> dict:
    return {"__table__": selectable, "__rma_table__": selectable.name,
            "__mapper_args__": {"primary_key": [selectable.c.id]},
            "__rma_hidden__": hidden}


_api_connectivity = api_connectivity_select(
    SectionDataSet.__table__, section_data_sets_products, Injection.__table__, Structure.__table__,
    Specimen.__table__, Donor.__table__, donors_transgenic_lines, TransgenicLine.__table__)
_stereotaxic = stereotaxic_injection_select(Injection.__table__)


class ApiConnectivity(Base):
    """Allen's denormalized row per connectivity experiment (what ``MouseConnectivityCache.get_experiments``
    reads): ``data_set_id``, primary ``structure_id`` / ``structure_abbrev``, ``injection_structures``
    ("/"-joined ids), ``injection_volume`` (mm3), ``injection_x/y/z`` (um), ``gender``, ``strain``,
    ``transgenic_line`` (``{"name"}`` or null), ``product_id``, ``specimen_name``, ``storage_directory``."""

    locals().update(_view(_api_connectivity))
    __rma_name__ = "ApiConnectivity"
    section_data_set: Mapped[SectionDataSet] = relationship(
        viewonly=True, primaryjoin="foreign(ApiConnectivity.data_set_id) == SectionDataSet.id")
    structure: Mapped[Optional[Structure]] = relationship(
        viewonly=True, primaryjoin="foreign(ApiConnectivity.structure_id) == Structure.id")


class StereotaxicInjection(Base):
    """One injection of a specimen (brainmap's Injection rows of one specimen, one per structure, folded):
    ``primary_injection_structure``, ``structures``, ``stereotaxic_injection_coordinates``."""

    locals().update(_view(_stereotaxic))
    __rma_name__ = "StereotaxicInjection"
    specimen: Mapped[Specimen] = relationship(
        viewonly=True, primaryjoin="foreign(StereotaxicInjection.specimen_id) == Specimen.id")
    primary_injection_structure: Mapped[Optional[Structure]] = relationship(
        viewonly=True, primaryjoin="foreign(StereotaxicInjection.primary_injection_structure_id) == Structure.id")
    structures: Mapped[list[Structure]] = relationship(
        viewonly=True, secondary=Injection.__table__,
        primaryjoin=lambda: StereotaxicInjection.specimen_id == Injection.__table__.c.specimen_id,
        secondaryjoin=lambda: Injection.__table__.c.structure_id == Structure.id,
        order_by=lambda: Structure.graph_order)
    stereotaxic_injection_coordinates: Mapped[list["StereotaxicInjectionCoordinate"]] = relationship(
        viewonly=True,
        primaryjoin="StereotaxicInjection.id == foreign(StereotaxicInjectionCoordinate.stereotaxic_injection_id)")


_coordinates = select(_stereotaxic.c.id.label("id"), _stereotaxic.c.id.label("stereotaxic_injection_id"),
                      _stereotaxic.c.coordinates_ap, _stereotaxic.c.coordinates_dv, _stereotaxic.c.coordinates_ml,
                      ).where(_stereotaxic.c.coordinates_ap.is_not(None)).subquery("stereotaxic_injection_coordinates")


class StereotaxicInjectionCoordinate(Base):
    """An injection's site: ``coordinates_ap/dv/ml`` (um, CCF)."""

    locals().update(_view(_coordinates))
    __rma_name__ = "StereotaxicInjectionCoordinate"


class TransgenicMouse(Base):
    """A donor's transgenic make-up (id = the donor's): its ``name`` (its lines joined with ';') and lines."""

    locals().update(_view(transgenic_mouse_select(Donor.__table__, donors_transgenic_lines,
                                                  TransgenicLine.__table__)))
    __rma_name__ = "TransgenicMouse"
    transgenic_lines: Mapped[list[TransgenicLine]] = relationship(
        viewonly=True, secondary=donors_transgenic_lines,
        primaryjoin=lambda: TransgenicMouse.id == donors_transgenic_lines.c.donor_id,
        secondaryjoin=lambda: donors_transgenic_lines.c.transgenic_line_id == TransgenicLine.id)


class Age(Base):
    """An injection's age (``days``): brainmap holds no ages, so no rows (``injections(age)`` nests null)."""

    locals().update(_view(fixed_rows_select("ages", {"id": Integer, "name": String, "days": Float,
                                                     "injection_id": Integer}, []), "injection_id"))
    __rma_name__ = "Age"


class Chromosome(Base):
    """A gene's chromosome: brainmap holds none (``genes(chromosome)`` nests null)."""

    locals().update(_view(fixed_rows_select("chromosomes", {"id": Integer, "name": String, "organism_id": Integer,
                                                            "gene_id": Integer}, []), "gene_id"))
    __rma_name__ = "Chromosome"


class Equalization(Base):
    """The display window of a data set's images per channel (``red_lower`` ... ``blue_upper``)."""

    locals().update(_view(equalization_select(SectionDataSet.__table__, section_data_sets_products)))
    __rma_name__ = "Equalization"
    section_data_set: Mapped[SectionDataSet] = relationship(
        viewonly=True, primaryjoin="foreign(Equalization.section_data_set_id) == SectionDataSet.id")


class Ontology(Base):
    """Allen's ontology 1, "Mouse"."""

    locals().update(_view(fixed_rows_select("ontologies", {"id": Integer, "name": String, "organism_id": Integer},
                                            [{"id": 1, "name": "Mouse", "organism_id": MOUSE_ORGANISM_ID}])))
    __rma_name__ = "Ontology"


class StructureGraph(Base):
    """Allen's structure graph 1, "Mouse Brain Atlas" (the adult mouse ontology, CCF 2017 annotation)."""

    locals().update(_view(fixed_rows_select(
        "structure_graphs", {"id": Integer, "name": String, "description": String, "ontology_id": Integer},
        [{"id": 1, "name": "Mouse Brain Atlas", "ontology_id": 1,
          "description": "The adult mouse structure ontology (CCF v3, 2017 annotation)"}])))
    __rma_name__ = "StructureGraph"
    ontology: Mapped[Optional[Ontology]] = relationship(
        viewonly=True, uselist=False, primaryjoin="foreign(StructureGraph.ontology_id) == Ontology.id")


class GraphicGroupLabel(Base):
    """A group of atlas drawings; 28 holds the structure boundaries of the adult mouse atlas plates."""

    locals().update(_view(fixed_rows_select("graphic_group_labels", {"id": Integer, "name": String},
                                            [{"id": ATLAS_STRUCTURES_GROUP, "name": "Adult Mouse Structures"}])))
    __rma_name__ = "GraphicGroupLabel"


#: The graphic group of the plates' structure boundaries (``svg_download/{id}?groups=28``, as Allen's).
_atlas_groups = fixed_rows_select("atlases_graphic_group_labels", {"atlas_id": Integer,
                                                                   "graphic_group_label_id": Integer},
                                  [{"atlas_id": a, "graphic_group_label_id": ATLAS_STRUCTURES_GROUP}
                                   for a in ATLASES])


_ATLAS_COLUMNS = {"id": Integer, "name": String, "description": String, "image_type": String,
                  "structure_graph_id": Integer, "public": Boolean}


class Atlas(Base):
    """Allen's adult mouse reference atlases: 1 (coronal) and 2 (sagittal); brainmap cuts their plates from the
    CCF annotation (:mod:`brainmap.atlas.plates`)."""

    locals().update(_view(fixed_rows_select("atlases", _ATLAS_COLUMNS, [
        {"id": atlas_id, "name": atlas["name"], "image_type": ATLAS_IMAGE_TYPE, "structure_graph_id": 1,
         "public": True, "description": f"{atlas['plane']} plates cut every 100 um from the CCF 2017 annotation"}
        for atlas_id, atlas in ATLASES.items()])))
    __rma_name__ = "Atlas"
    structure_graph: Mapped[Optional[StructureGraph]] = relationship(
        viewonly=True, uselist=False, primaryjoin="foreign(Atlas.structure_graph_id) == StructureGraph.id")
    graphic_group_labels: Mapped[list[GraphicGroupLabel]] = relationship(
        viewonly=True, secondary=_atlas_groups,
        primaryjoin=lambda: Atlas.id == _atlas_groups.c.atlas_id,
        secondaryjoin=lambda: _atlas_groups.c.graphic_group_label_id == GraphicGroupLabel.id)


class AtlasDataSet(Base):
    """The plates of one atlas (id = the atlas's)."""

    locals().update(_view(fixed_rows_select("atlas_data_sets", {"id": Integer, "atlas_id": Integer,
                                                                "plane_of_section_id": Integer},
                                            [{"id": a, "atlas_id": a, "plane_of_section_id": a}
                                             for a in ATLASES]), "atlas_id"))
    __rma_name__ = "AtlasDataSet"
    atlases: Mapped[list[Atlas]] = relationship(viewonly=True,
                                                primaryjoin="foreign(AtlasDataSet.atlas_id) == Atlas.id")
    atlas_images: Mapped[list["AtlasImage"]] = relationship(
        viewonly=True, primaryjoin="AtlasDataSet.id == foreign(AtlasImage.data_set_id)",
        order_by="AtlasImage.section_number")


class AtlasImage(Base):
    """An atlas plate (Allen's table ``sub_images``): ``section_number``, ``width``, ``height`` (25 um pixels)."""

    locals().update(_view(atlas_images_select([p.to_row() for p in atlas_plates()])))
    __rma_name__ = "AtlasImage"
    atlas_data_set: Mapped[Optional[AtlasDataSet]] = relationship(
        viewonly=True, uselist=False, primaryjoin="foreign(AtlasImage.data_set_id) == AtlasDataSet.id")
    alternate_images: Mapped[list["AlternateImage"]] = relationship(
        viewonly=True, primaryjoin="AtlasImage.id == foreign(AlternateImage.sub_image_id)")


class AlternateImage(Base):
    """Another rendering of an atlas plate; each plate has one, of type "Atlas - Adult Mouse"."""

    locals().update(_view(fixed_rows_select("alternate_images", {"id": Integer, "sub_image_id": Integer,
                                                                 "image_type": String},
                                            [{"id": p.id, "sub_image_id": p.id, "image_type": ATLAS_IMAGE_TYPE}
                                             for p in atlas_plates()])))
    __rma_name__ = "AlternateImage"


#: Every model exposed to RMA, by Allen's model name.
MODELS: dict[str, type[Base]] = {
    cls.__rma_name__: cls  # type: ignore[misc]
    for cls in (Product, PlaneOfSection, ReferenceSpace, TransgenicLine, Donor, Specimen, Injection, Gene, Probe,
                SectionDataSet, SectionImage, Alignment2d, Alignment3d, Structure, StructureSet, StructureUnionize,
                ProjectionStructureUnionize, WellKnownFileType, WellKnownFile, ApiConnectivity,
                StereotaxicInjection, StereotaxicInjectionCoordinate, TransgenicMouse, Age, Chromosome,
                Equalization, Ontology, StructureGraph, GraphicGroupLabel, Atlas, AtlasDataSet, AtlasImage,
                AlternateImage)
}
